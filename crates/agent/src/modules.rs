//! Update modules: how a verified file gets installed. See `docs/UPDATE-MODULES.md`.
//!
//! Built in: `file`, `script`, `deb`. Any other name is an executable
//! `<state>/modules/<name>` speaking protocol version 1.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Protocol version passed to external modules as `RINGFENCE_MODULE_PROTOCOL`.
pub const PROTOCOL: &str = "1";
/// Exit code by which a module says the update needs a reboot to finish.
pub const EXIT_REBOOT_REQUIRED: i32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Installed,
    RebootRequired,
    Failed { exit_code: Option<i32>, reason: String },
}

/// What the module needs to know beyond the file.
pub struct Job<'a> {
    pub module: &'a str,
    pub arguments: &'a [String],
    pub file: &'a Path,
    pub update_id: &'a str,
    pub target: &'a str,
    pub modules_dir: &'a Path,
    pub backup_dir: &'a Path,
}

/// Undo information for modules that can roll back.
#[derive(Debug)]
pub enum Undo {
    Nothing,
    /// `file`: put the previous file back (or remove the new one when there was none).
    RestoreFile {
        dest: PathBuf,
        backup: Option<PathBuf>,
    },
}

fn valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn exit_outcome(status: std::process::ExitStatus, what: &str) -> Outcome {
    match status.code() {
        Some(0) => Outcome::Installed,
        Some(EXIT_REBOOT_REQUIRED) => Outcome::RebootRequired,
        code => Outcome::Failed { exit_code: code, reason: format!("{what} exited with {status}") },
    }
}

pub fn install(job: &Job) -> anyhow::Result<(Outcome, Undo)> {
    if !valid_module_name(job.module) {
        bail!("module name {:?} is not a-z, 0-9, '-'", job.module);
    }
    match job.module {
        "file" => install_file(job),
        "script" => {
            let status = Command::new("/bin/sh")
                .arg(job.file)
                .args(job.arguments)
                .envs(env(job))
                .status()
                .context("running the script")?;
            Ok((exit_outcome(status, "the script"), Undo::Nothing))
        }
        "deb" => {
            let status = dpkg().arg("-i").arg(job.file).status().context("running dpkg")?;
            Ok((exit_outcome(status, "dpkg"), Undo::Nothing))
        }
        name => {
            let path = job.modules_dir.join(name);
            if !path.is_file() {
                bail!("no update module {name} (looked for {})", path.display());
            }
            let status = Command::new(&path)
                .arg("install")
                .arg(job.file)
                .args(job.arguments)
                .envs(env(job))
                .status()
                .with_context(|| format!("running module {name}"))?;
            Ok((exit_outcome(status, &format!("module {name}")), Undo::Nothing))
        }
    }
}

/// Remove what `install` put in place. `installed_sha256` is the hash of the file as it was
/// installed: `file` removes its destination only while it still holds those bytes.
pub fn uninstall(job: &Job, installed_sha256: &str) -> anyhow::Result<Outcome> {
    if !valid_module_name(job.module) {
        bail!("module name {:?} is not a-z, 0-9, '-'", job.module);
    }
    match job.module {
        "file" => {
            let Some(dest) = job.arguments.first() else { bail!("module file needs a destination argument") };
            let dest = PathBuf::from(dest);
            let current = match std::fs::read(&dest) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Installed),
                Err(e) => return Err(e).with_context(|| format!("reading {}", dest.display())),
            };
            if ringfence_trust::sha256_hex(&current) != installed_sha256 {
                return Ok(Outcome::Failed {
                    exit_code: None,
                    reason: format!("{} changed since it was installed; left alone", dest.display()),
                });
            }
            std::fs::remove_file(&dest).with_context(|| format!("removing {}", dest.display()))?;
            Ok(Outcome::Installed)
        }
        "script" => bail!("the script module cannot uninstall"),
        "deb" => {
            let field = Command::new("dpkg-deb").arg("--field").arg(job.file).arg("Package").output()?;
            let package = String::from_utf8_lossy(&field.stdout).trim().to_owned();
            if !field.status.success() || package.is_empty() || package.starts_with('-') {
                bail!("dpkg-deb could not read the package name");
            }
            let status = dpkg().arg("-r").arg(&package).status().context("running dpkg")?;
            Ok(exit_outcome(status, "dpkg -r"))
        }
        name => {
            let path = job.modules_dir.join(name);
            if !path.is_file() {
                bail!("no update module {name} (looked for {})", path.display());
            }
            let status = Command::new(&path)
                .arg("uninstall")
                .arg(job.file)
                .args(job.arguments)
                .envs(env(job))
                .status()
                .with_context(|| format!("running module {name}"))?;
            Ok(exit_outcome(status, &format!("module {name} uninstall")))
        }
    }
}

fn env(job: &Job) -> Vec<(&'static str, String)> {
    vec![
        ("RINGFENCE_MODULE_PROTOCOL", PROTOCOL.into()),
        ("RINGFENCE_UPDATE_ID", job.update_id.into()),
        ("RINGFENCE_TARGET", job.target.into()),
    ]
}

/// `dpkg`, working in the throwaway root `RINGFENCE_DPKG_ROOT` names, if any (tests, images).
fn dpkg() -> Command {
    let mut cmd = Command::new("dpkg");
    if let Some(root) = std::env::var_os("RINGFENCE_DPKG_ROOT") {
        let mut admindir = PathBuf::from(&root);
        admindir.push("var/lib/dpkg");
        cmd.arg(format!("--root={}", PathBuf::from(&root).display()))
            .arg(format!("--admindir={}", admindir.display()))
            .arg("--force-not-root")
            .arg("--force-script-chrootless")
            .arg("--log=/dev/null");
    }
    cmd
}

/// `file DEST [MODE]`: place the file at DEST (absolute), with MODE in octal (default 0644).
fn install_file(job: &Job) -> anyhow::Result<(Outcome, Undo)> {
    use std::os::unix::fs::PermissionsExt;
    let Some(dest) = job.arguments.first() else { bail!("module file needs a destination argument") };
    let dest = PathBuf::from(dest);
    if !dest.is_absolute() || dest.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        bail!("module file: destination must be absolute, without '..'");
    }
    let mode = match job.arguments.get(1) {
        Some(m) => u32::from_str_radix(m, 8).context("module file: mode is octal, like 0644")?,
        None => 0o644,
    };
    let backup = if dest.exists() {
        let b =
            job.backup_dir.join(format!("{}.previous", crate::tuf_client::encode_name(&dest.display().to_string())));
        std::fs::copy(&dest, &b).with_context(|| format!("backing up {}", dest.display()))?;
        Some(b)
    } else {
        None
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // A fresh name, created exclusively (never through a link someone planted), filled and
    // given its mode through the handle, then renamed over the destination.
    let mut nonce = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let tmp = dest.with_extension(format!("ringfence-{}", hex::encode(nonce)));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = std::io::copy(&mut std::fs::File::open(job.file)?, &mut out)
        .and_then(|_| out.set_permissions(std::fs::Permissions::from_mode(mode)))
        .and_then(|()| out.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    std::fs::rename(&tmp, &dest)?;
    Ok((Outcome::Installed, Undo::RestoreFile { dest, backup }))
}

/// Roll back what `install` did, where the module can. Returns whether anything was undone.
pub fn roll_back(undo: Undo) -> anyhow::Result<bool> {
    match undo {
        Undo::Nothing => Ok(false),
        Undo::RestoreFile { dest, backup: Some(backup) } => {
            std::fs::rename(&backup, &dest)?;
            Ok(true)
        }
        Undo::RestoreFile { dest, backup: None } => {
            std::fs::remove_file(&dest)?;
            Ok(true)
        }
    }
}

/// Run a health check command; `Ok(())` when it exits 0.
pub fn health_check(command: &[String]) -> Result<(), (Option<i32>, String)> {
    let Some((program, args)) = command.split_first() else { return Ok(()) };
    match Command::new(program).args(args).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err((s.code(), format!("health check {program} exited with {s}"))),
        Err(e) => Err((None, format!("health check {program} could not run: {e}"))),
    }
}
