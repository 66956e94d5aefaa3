//! Update modules: how a verified file gets installed. See `docs/UPDATE-MODULES.md`.
//!
//! Built in: `file`, `script`, `deb`, and for Windows `msi`, `msu`, `exe` (`windows.rs`).
//! Any other name is an executable `<state>/modules/<name>` speaking protocol version 1.

mod windows;

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
    /// The installer found nothing to do on this device (an `.msu` for another edition, say).
    NotApplicable(String),
    Failed {
        exit_code: Option<i32>,
        reason: String,
    },
}

/// What the module needs to know beyond the file.
pub struct Job<'a> {
    pub module: &'a str,
    pub arguments: &'a [String],
    pub file: &'a Path,
    /// The signed SHA-256 of `file` (lowercase hex), checked again where a copy is run.
    pub sha256: &'a str,
    pub update_id: &'a str,
    pub target: &'a str,
    pub modules_dir: &'a Path,
    pub backup_dir: &'a Path,
    /// Installer logs and extension-named copies of the file (`<state>/work`).
    pub work_dir: &'a Path,
    /// `exe`: the publisher's exit-code table.
    pub exit_codes: &'a [ringfence_proto::api::ExitCodeRule],
    /// `msi`: the product code, for uninstalling and for checking the install.
    pub product_code: Option<&'a str>,
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

fn explained_outcome(status: std::process::ExitStatus, what: &str, said: Option<String>) -> Outcome {
    match status.code() {
        Some(0) => Outcome::Installed,
        Some(EXIT_REBOOT_REQUIRED) => Outcome::RebootRequired,
        code => {
            let reason = match said {
                Some(line) => format!("{what} exited with {status}: {line}"),
                None => format!("{what} exited with {status}"),
            };
            Outcome::Failed { exit_code: code, reason }
        }
    }
}

/// Bytes at the end of an installer's standard error that are passed on to the agent's own and
/// looked through for the line that explains a failure.
const STDERR_TAIL: u64 = 64 * 1024;
/// Characters of its last line that go into the report.
const STDERR_LINE: usize = 200;

/// Run an installer and take its outcome from its exit code; a failure says the last line the
/// installer wrote to standard error (control characters replaced, at most 200 characters),
/// so whoever reads the report sees why. Standard error goes to a file in the work directory,
/// not a pipe: a process the installer leaves running keeps writing there without ever being
/// stopped by a closed pipe, and nothing waits for it. The file's end is passed on to the
/// agent's standard error once the installer exited, and the file removed.
fn run_explained(command: &mut Command, what: &str, work_dir: &Path) -> anyhow::Result<Outcome> {
    use std::io::{Read, Seek, Write};
    std::fs::create_dir_all(work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    // A name of its own each time: a file an earlier installer's leftover process still holds
    // open may not be removable yet (Windows), and is swept later.
    sweep_stderr_logs(work_dir);
    let log_path = work_dir.join(format!("installer-stderr-{}.log", crate::cycle::random_id()));
    let log = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let status = command.stderr(log.try_clone()?).status().with_context(|| format!("running {what}"));
    let mut tail = Vec::new();
    let mut reader = log;
    let length = reader.metadata().map(|m| m.len()).unwrap_or(0);
    if reader.seek(std::io::SeekFrom::Start(length.saturating_sub(STDERR_TAIL))).is_ok() {
        let _ = reader.take(STDERR_TAIL).read_to_end(&mut tail);
    }
    let _ = std::io::stderr().write_all(&tail);
    let _ = std::fs::remove_file(&log_path);
    Ok(explained_outcome(status?, what, last_line(&tail)))
}

/// Remove the standard-error files of earlier installers (those still held open on Windows
/// stay until a later sweep).
fn sweep_stderr_logs(work_dir: &Path) {
    for entry in std::fs::read_dir(work_dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("installer-stderr-") && name.ends_with(".log") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The last non-blank line of `bytes`, printable and bounded.
fn last_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    Some(line.chars().map(|c| if c.is_control() { '?' } else { c }).take(STDERR_LINE).collect())
}

pub fn install(job: &Job) -> anyhow::Result<(Outcome, Undo)> {
    if !valid_module_name(job.module) {
        bail!("module name {:?} is not a-z, 0-9, '-'", job.module);
    }
    match job.module {
        "file" => install_file(job),
        "script" => {
            let script = Staged::new(job, crate::platform::SCRIPT_EXTENSION)?;
            let mut command = crate::platform::script_command(script.path());
            command.args(job.arguments).envs(env(job));
            Ok((run_explained(&mut command, "the script", job.work_dir)?, Undo::Nothing))
        }
        "msi" => Ok((windows::install_msi(job)?, Undo::Nothing)),
        "msu" => Ok((windows::install_msu(job)?, Undo::Nothing)),
        "exe" => Ok((windows::install_exe(job)?, Undo::Nothing)),
        "deb" =>
        // dpkg passes the environment to the package's scripts: a package can tell the agent
        // installs it (ringfence-agent's own postinst does not restart the agent under it).
        {
            Ok((run_explained(dpkg().arg("-i").arg(job.file).envs(env(job)), "dpkg", job.work_dir)?, Undo::Nothing))
        }
        name => {
            let path = job.modules_dir.join(name);
            if !path.is_file() {
                bail!("no update module {name} (looked for {})", path.display());
            }
            let mut command = Command::new(&path);
            command.arg("install").arg(job.file).args(job.arguments).envs(env(job));
            Ok((run_explained(&mut command, &format!("module {name}"), job.work_dir)?, Undo::Nothing))
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
        "file" => uninstall_file(job, installed_sha256),
        "script" => bail!("the script module cannot uninstall"),
        "msi" => windows::uninstall_msi(job),
        "msu" => windows::uninstall_msu(job),
        "exe" => bail!("the exe module cannot uninstall: publish the vendor's uninstaller as an update of its own"),
        "deb" => {
            let field = |name: &str| -> anyhow::Result<String> {
                let out = Command::new("dpkg-deb").arg("--field").arg(job.file).arg(name).output()?;
                let value = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                let plain = value.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.:~".contains(&b));
                if !out.status.success() || value.is_empty() || value.starts_with('-') || !plain {
                    bail!("dpkg-deb could not read the {name} field");
                }
                Ok(value)
            };
            let (package, version) = (field("Package")?, field("Version")?);
            // Only the version this update installed is removed, not a later one.
            let mut query = Command::new("dpkg-query");
            if let Some(root) = std::env::var_os("RINGFENCE_DPKG_ROOT") {
                query.arg(format!("--admindir={}", PathBuf::from(root).join("var/lib/dpkg").display()));
            }
            let installed = query.args(["--show", "--showformat=${Version}"]).arg(&package).output()?;
            let installed = String::from_utf8_lossy(&installed.stdout).trim().to_owned();
            if installed.is_empty() {
                return Ok(Outcome::Installed);
            }
            if installed != version {
                return Ok(Outcome::Failed {
                    exit_code: None,
                    reason: format!("{package} {installed} is installed, not this update's {version}; left alone"),
                });
            }
            run_explained(dpkg().arg("-r").arg(&package).envs(env(job)), "dpkg -r", job.work_dir)
        }
        name => {
            let path = job.modules_dir.join(name);
            if !path.is_file() {
                bail!("no update module {name} (looked for {})", path.display());
            }
            let mut command = Command::new(&path);
            command.arg("uninstall").arg(job.file).args(job.arguments).envs(env(job));
            run_explained(&mut command, &format!("module {name} uninstall"), job.work_dir)
        }
    }
}

/// `DEST` as `file` accepts it: absolute, without `..`.
fn file_destination(job: &Job) -> anyhow::Result<PathBuf> {
    let Some(dest) = job.arguments.first() else { bail!("module file needs a destination argument") };
    let dest = PathBuf::from(dest);
    if !dest.is_absolute() || dest.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        bail!("module file: destination must be absolute, without '..'");
    }
    Ok(dest)
}

/// Remove `DEST` only while it is a regular file (not a link) holding exactly the installed
/// bytes; a missing `DEST` counts as removed.
fn uninstall_file(job: &Job, installed_sha256: &str) -> anyhow::Result<Outcome> {
    let dest = file_destination(job)?;
    let before = match std::fs::symlink_metadata(&dest) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Installed),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", dest.display())),
    };
    let left_alone =
        |why: &str| Outcome::Failed { exit_code: None, reason: format!("{} {why}; left alone", dest.display()) };
    if !before.file_type().is_file() {
        return Ok(left_alone("is not a regular file"));
    }
    let mut file = std::fs::File::open(&dest).with_context(|| format!("opening {}", dest.display()))?;
    let opened = file.metadata()?;
    if !crate::platform::same_file(&opened, &before) {
        return Ok(left_alone("changed while it was checked"));
    }
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", dest.display()))?;
    if hex::encode(sha2::Digest::finalize(hasher)) != installed_sha256 {
        return Ok(left_alone("changed since it was installed"));
    }
    std::fs::remove_file(&dest).with_context(|| format!("removing {}", dest.display()))?;
    Ok(Outcome::Installed)
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

/// A copy of the verified file under a name with the extension its program needs (`.msi`,
/// `.ps1`), in the private work directory, held open so that nobody can change it (on Windows)
/// and checked against the signed hash through that handle: the program runs exactly the
/// signed bytes. Removed when dropped. No extension needed: the file itself, checked the same.
pub(crate) struct Staged {
    path: PathBuf,
    copied: bool,
    held: Option<std::fs::File>,
}

const STAGED_NONCE_BYTES: usize = 8;

/// Remove staged copies an earlier run left behind (a crash, or a file an installer still held
/// when its copy was to be removed); logs stay.
pub fn sweep_staged(work_dir: &Path) {
    for entry in std::fs::read_dir(work_dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let staged = name.split_once('.').is_some_and(|(stem, ext)| {
            stem.len() == 2 * STAGED_NONCE_BYTES
                && stem.bytes().all(|b| b.is_ascii_hexdigit())
                && ["msi", "msu", "exe", "ps1"].contains(&ext)
        });
        if staged {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Staged {
    pub(crate) fn new(job: &Job, extension: &str) -> anyhow::Result<Self> {
        let (path, copied) = if extension.is_empty() {
            (job.file.to_path_buf(), false)
        } else {
            let mut nonce = [0u8; STAGED_NONCE_BYTES];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
            let path = job.work_dir.join(format!("{}.{extension}", hex::encode(nonce)));
            let mut source =
                std::fs::File::open(job.file).with_context(|| format!("opening {}", job.file.display()))?;
            let mut out =
                crate::platform::create_private(&path).with_context(|| format!("creating {}", path.display()))?;
            let copied = std::io::copy(&mut source, &mut out).and_then(|_| out.sync_all());
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&path);
                return Err(e).with_context(|| format!("copying the verified file to {}", path.display()));
            }
            (path, true)
        };
        // From here on the staged struct owns the copy: any failure below removes it.
        let held = match crate::platform::open_locked(&path) {
            Ok(f) => f,
            Err(e) => {
                if copied {
                    let _ = std::fs::remove_file(&path);
                }
                return Err(e).with_context(|| format!("opening {}", path.display()));
            }
        };
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let read = std::io::copy(&mut &held, &mut hasher);
        let staged = Self { path, copied, held: Some(held) };
        read.with_context(|| format!("reading {}", staged.path.display()))?;
        let actual = hex::encode(sha2::Digest::finalize(hasher));
        if !actual.eq_ignore_ascii_case(job.sha256) {
            bail!("{} changed on disk after it was verified (sha256 {actual}): not run", staged.path.display());
        }
        Ok(staged)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Closed first: Windows removes no file that is open without delete sharing.
        drop(self.held.take());
        if self.copied {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `file DEST [MODE]`: place the file at DEST (absolute), with MODE in octal (default 0644;
/// ignored on Windows, where the file takes its directory's ACL).
fn install_file(job: &Job) -> anyhow::Result<(Outcome, Undo)> {
    let dest = file_destination(job)?;
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
        .and_then(|_| crate::platform::set_mode(&out, mode))
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

#[cfg(test)]
mod uninstall_tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_failing_installer_says_why_in_its_last_line_of_standard_error() {
        let work = tempfile::tempdir().unwrap();
        let run = |script: &str| {
            run_explained(Command::new("/bin/sh").arg("-c").arg(script), "the script", work.path()).unwrap()
        };
        let failed = run("echo progress >&2; printf 'agentd 2.2 needs libfoo 1.4\\n\\n' >&2; exit 4");
        assert_eq!(
            failed,
            Outcome::Failed {
                exit_code: Some(4),
                reason: "the script exited with exit status: 4: agentd 2.2 needs libfoo 1.4".into()
            }
        );
        assert_eq!(run("echo fine >&2"), Outcome::Installed);
        // Control characters are written out, the line is bounded, silence says nothing more.
        let Outcome::Failed { reason, .. } = run("printf 'bad\\033[2Jthing' >&2; printf '%0500d' 0 >&2; exit 1") else {
            panic!("not a failure")
        };
        assert!(reason.starts_with("the script exited with exit status: 1: bad?[2Jthing000"), "{reason}");
        assert_eq!(reason.chars().count(), "the script exited with exit status: 1: ".len() + STDERR_LINE);
        assert_eq!(
            run("exit 1"),
            Outcome::Failed { exit_code: Some(1), reason: "the script exited with exit status: 1".into() }
        );
        // A process the installer left running, writing to standard error after the installer
        // exited, is not waited for and not stopped: it writes on (to the removed file).
        let marker = work.path().join("still-running");
        let outcome =
            run(&format!("echo starting >&2; (sleep 3; echo later >&2; touch {}) & exit 2", marker.display()));
        assert!(
            matches!(outcome, Outcome::Failed { exit_code: Some(2), ref reason } if reason.ends_with(": starting"))
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !marker.exists() {
            assert!(std::time::Instant::now() < deadline, "the left-behind process was stopped");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("still-running")], "the file is removed");
        // More than the tail: only its end is looked at.
        let many = "i=0; while [ $i -lt 20000 ]; do echo line $i >&2; i=$((i+1)); done; exit 1";
        let Outcome::Failed { reason, .. } = run(many) else { panic!("not a failure") };
        assert!(reason.ends_with(": line 19999"), "{reason}");
    }

    fn job<'a>(dest: &'a [String], file: &'a Path) -> Job<'a> {
        Job {
            module: "file",
            arguments: dest,
            file,
            sha256: "",
            update_id: "u",
            target: "approvals/g/acme/f",
            modules_dir: file,
            backup_dir: file,
            work_dir: file,
            exit_codes: &[],
            product_code: None,
        }
    }

    #[test]
    fn file_uninstall_removes_only_the_bytes_it_installed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("app.txt");
        let args = vec![dest.display().to_string()];
        let installed = ringfence_trust::sha256_hex(b"v1");
        std::fs::write(&dest, b"v1").unwrap();
        // Changed since: left alone.
        std::fs::write(&dest, b"edited by hand").unwrap();
        assert!(matches!(uninstall(&job(&args, dir.path()), &installed).unwrap(), Outcome::Failed { .. }));
        assert!(dest.exists());
        // A link is not followed, whatever it points at.
        std::fs::remove_file(&dest).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"v1").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dest).unwrap();
        assert!(matches!(uninstall(&job(&args, dir.path()), &installed).unwrap(), Outcome::Failed { .. }));
        assert!(elsewhere.exists() && dest.exists());
        // The installed bytes: removed; then missing counts as removed.
        std::fs::remove_file(&dest).unwrap();
        std::fs::write(&dest, b"v1").unwrap();
        assert_eq!(uninstall(&job(&args, dir.path()), &installed).unwrap(), Outcome::Installed);
        assert!(!dest.exists());
        assert_eq!(uninstall(&job(&args, dir.path()), &installed).unwrap(), Outcome::Installed);
        // A relative destination is refused before anything is touched.
        let relative = vec!["app.txt".to_owned()];
        assert!(uninstall(&job(&relative, dir.path()), &installed).is_err());
        // The script module cannot uninstall.
        let script = Job { module: "script", ..job(&args, dir.path()) };
        assert!(uninstall(&script, &installed).is_err());
    }
}
