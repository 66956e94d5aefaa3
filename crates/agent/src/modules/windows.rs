//! The Windows installers: `msi` (Windows Installer), `msu` (Windows Update standalone
//! packages) and `exe` (a vendor's setup program, run with the publisher's signed arguments and
//! read by the publisher's signed exit-code table). They build everywhere; where the installer
//! program does not exist, starting it fails and the update is reported failed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use ringfence_proto::api::{ExitCodeRule, ExitMeaning};

use super::{Job, Outcome, Staged, env};

/// Windows' "success, restart required" (`ERROR_SUCCESS_REBOOT_REQUIRED`).
pub const REBOOT_REQUIRED: u32 = 3010;
/// `ERROR_SUCCESS_REBOOT_INITIATED`: succeeded, and the installer started a restart.
pub const REBOOT_INITIATED: u32 = 1641;
/// `ERROR_UNKNOWN_PRODUCT`: what msiexec says when uninstalling something not installed.
const UNKNOWN_PRODUCT: u32 = 1605;
/// `WU_S_ALREADY_INSTALLED`.
const ALREADY_INSTALLED: u32 = 0x0024_0006;
/// `WU_E_NOT_APPLICABLE`.
const NOT_APPLICABLE: u32 = 0x8024_0017;

/// What well-known Windows Installer and Windows Update codes mean, for the failure report.
fn explain(code: u32) -> Option<&'static str> {
    Some(match code {
        1602 => "the installation was cancelled",
        1603 => "fatal error during installation (see the log)",
        1618 => "another installation is in progress",
        1619 => "the package could not be opened",
        1620 => "the package is not a valid Windows Installer package",
        1633 => "the package is for another processor architecture",
        1638 => "another version of this product is already installed",
        0x8024_0017 => "not applicable to this computer",
        0x8024_001E => "the update service is shutting down",
        _ => return None,
    })
}

/// Whose conventions give an exit code without a table row its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conventions {
    /// Windows Installer and Windows Update: 0 installed, 3010 and 1641 reboot required.
    Windows,
    /// A vendor's setup program: 0 installed, anything else is what the publisher's table says.
    Vendor,
}

/// How an installer's exit code turns into an outcome: the table first, then the conventions;
/// anything else failed.
pub fn outcome(code: Option<i32>, table: &[ExitCodeRule], conventions: Conventions, what: &str) -> Outcome {
    let Some(raw) = code else {
        return Outcome::Failed { exit_code: None, reason: format!("{what} ended without an exit code") };
    };
    let code = raw as u32;
    let described = || match explain(code) {
        Some(why) => format!("{what} exited with {code} (0x{code:08X}): {why}"),
        None => format!("{what} exited with {code} (0x{code:08X})"),
    };
    let meaning = table.iter().find(|r| r.code == code).map(|r| r.means).unwrap_or(match (code, conventions) {
        (0, _) => ExitMeaning::Installed,
        (REBOOT_REQUIRED | REBOOT_INITIATED, Conventions::Windows) => ExitMeaning::RebootRequired,
        _ => ExitMeaning::Failed,
    });
    match meaning {
        ExitMeaning::Installed => Outcome::Installed,
        ExitMeaning::RebootRequired => Outcome::RebootRequired,
        ExitMeaning::NotApplicable => Outcome::NotApplicable(described()),
        ExitMeaning::Failed => Outcome::Failed { exit_code: Some(raw), reason: described() },
    }
}

/// Where msiexec writes its verbose log for this update: `<state>\work\<what>-<update>.log`
/// (never a reserved name such as `NUL.log`: it starts with `install-` or `uninstall-`).
fn log_path(job: &Job, what: &str) -> PathBuf {
    let safe: String =
        job.update_id.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    job.work_dir.join(format!("{what}-{safe}.log"))
}

/// The signed product code, checked here too (not only by the server that took the manifest):
/// only `{GUID}` reaches `msiexec /x`.
fn product_code<'a>(job: &Job<'a>) -> anyhow::Result<Option<&'a str>> {
    match job.product_code {
        Some(code) if !ringfence_proto::api::is_product_code(code) => {
            anyhow::bail!("product code {code:?} is not {{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}}")
        }
        code => Ok(code),
    }
}

/// `msiexec ACTION TARGET /qn /norestart /l*v LOG`, the form msiexec documents, then the
/// publisher's properties (install only), each checked here too and written `NAME="VALUE"`: no
/// switch, no quote and no unsigned file reaches msiexec.
fn msiexec(job: &Job, action: &str, target: &std::ffi::OsStr, log: &Path, properties: bool) -> anyhow::Result<Command> {
    let mut command = Command::new(crate::platform::system_program("msiexec.exe"));
    command.arg(action).arg(target).args(["/qn", "/norestart", "/l*v"]).arg(log);
    if properties {
        for argument in job.arguments {
            match argument.split_once('=') {
                Some((name, value)) if ringfence_proto::api::is_msi_property(argument) => {
                    crate::platform::msi_property(&mut command, name, value)
                }
                _ => anyhow::bail!("msi argument {argument:?} is not a property NAME=VALUE msiexec may take"),
            }
        }
    }
    Ok(command)
}

fn run(mut command: Command, job: &Job, program: &str) -> anyhow::Result<Option<i32>> {
    let status = command.envs(env(job)).status().with_context(|| format!("running {program}"))?;
    Ok(status.code())
}

fn with_log(outcome: Outcome, log: &Path) -> Outcome {
    match outcome {
        Outcome::Failed { exit_code, reason } => {
            Outcome::Failed { exit_code, reason: format!("{reason}; log {}", log.display()) }
        }
        other => other,
    }
}

/// `msiexec /i FILE /qn /norestart /l*v LOG PROPERTIES…` (the publisher's properties, such
/// as `ALLUSERS=1`). With a product code, the package's own ProductCode must be it, and a
/// success is checked against the products Windows lists as installed, by product code only.
pub fn install_msi(job: &Job) -> anyhow::Result<Outcome> {
    let code = product_code(job)?;
    let log = log_path(job, "install");
    let package = Staged::new(job, "msi")?;
    // The package must be the product the publisher signed: otherwise a later `msiexec /x`
    // by the signed code would remove something else (or nothing).
    if let Some(code) = code {
        let actual = crate::platform::msi_product_code(package.path())
            .with_context(|| format!("reading the ProductCode of {}", package.path().display()))?;
        if !actual.eq_ignore_ascii_case(code) {
            anyhow::bail!("the package's ProductCode is {actual}, not the signed {code}: not installed");
        }
    }
    let command = msiexec(job, "/i", package.path().as_os_str(), &log, true)?;
    let outcome = with_log(outcome(run(command, job, "msiexec")?, &[], Conventions::Windows, "msiexec"), &log);
    if let (Outcome::Installed | Outcome::RebootRequired, Some(code)) = (&outcome, code)
        && !crate::platform::installed_products().iter().any(|p| p.key.eq_ignore_ascii_case(code))
    {
        return Ok(Outcome::Failed {
            exit_code: None,
            reason: format!("msiexec succeeded but product {code} is not installed; log {}", log.display()),
        });
    }
    Ok(outcome)
}

/// `msiexec /x PRODUCT-CODE /qn /norestart /l*v LOG` (or by the package file without a product
/// code). A product that is not installed counts as removed.
pub fn uninstall_msi(job: &Job) -> anyhow::Result<Outcome> {
    let code = product_code(job)?;
    let log = log_path(job, "uninstall");
    let package;
    let command = match code {
        Some(code) => msiexec(job, "/x", std::ffi::OsStr::new(code), &log, false)?,
        None => {
            package = Staged::new(job, "msi")?;
            msiexec(job, "/x", package.path().as_os_str(), &log, false)?
        }
    };
    let code = run(command, job, "msiexec")?;
    if code.map(|c| c as u32) == Some(UNKNOWN_PRODUCT) {
        return Ok(Outcome::Installed);
    }
    Ok(with_log(outcome(code, &[], Conventions::Windows, "msiexec /x"), &log))
}

const WUSA_TABLE: [ExitCodeRule; 2] = [
    ExitCodeRule { code: ALREADY_INSTALLED, means: ExitMeaning::Installed },
    ExitCodeRule { code: NOT_APPLICABLE, means: ExitMeaning::NotApplicable },
];

/// `wusa FILE /quiet /norestart`.
pub fn install_msu(job: &Job) -> anyhow::Result<Outcome> {
    let package = Staged::new(job, "msu")?;
    let mut command = Command::new(crate::platform::system_program("wusa.exe"));
    command.arg(package.path()).args(["/quiet", "/norestart"]);
    Ok(outcome(run(command, job, "wusa")?, &WUSA_TABLE, Conventions::Windows, "wusa"))
}

/// `wusa /uninstall FILE /quiet /norestart`.
pub fn uninstall_msu(job: &Job) -> anyhow::Result<Outcome> {
    let package = Staged::new(job, "msu")?;
    let mut command = Command::new(crate::platform::system_program("wusa.exe"));
    command.arg("/uninstall").arg(package.path()).args(["/quiet", "/norestart"]);
    Ok(outcome(run(command, job, "wusa /uninstall")?, &[], Conventions::Windows, "wusa /uninstall"))
}

/// The vendor's setup program with the publisher's arguments, read by the publisher's table.
pub fn install_exe(job: &Job) -> anyhow::Result<Outcome> {
    let program = Staged::new(job, "exe")?;
    let mut command = Command::new(program.path());
    command.args(job.arguments);
    Ok(outcome(run(command, job, "the installer")?, job.exit_codes, Conventions::Vendor, "the installer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_exit_codes_map_to_outcomes_and_the_publishers_table_comes_first() {
        let windows = |code: i32| outcome(Some(code), &[], Conventions::Windows, "msiexec");
        assert_eq!(windows(0), Outcome::Installed);
        assert_eq!(windows(3010), Outcome::RebootRequired);
        assert_eq!(windows(1641), Outcome::RebootRequired);
        let Outcome::Failed { exit_code, reason } = windows(1603) else { panic!() };
        assert_eq!(exit_code, Some(1603));
        assert!(reason.contains("fatal error"), "{reason}");
        assert!(matches!(outcome(None, &[], Conventions::Windows, "msiexec"), Outcome::Failed { exit_code: None, .. }));
        // HRESULTs arrive as negative i32 and are compared as the unsigned codes tables use.
        let wusa = |code: u32| outcome(Some(code as i32), &WUSA_TABLE, Conventions::Windows, "wusa");
        assert!(matches!(wusa(NOT_APPLICABLE), Outcome::NotApplicable(_)));
        assert_eq!(wusa(ALREADY_INSTALLED), Outcome::Installed);
        // A vendor's setup: only 0 succeeds unless the publisher's table says otherwise, which
        // can also make 0 a failure and 7 a success needing a reboot.
        assert!(matches!(outcome(Some(3010), &[], Conventions::Vendor, "setup"), Outcome::Failed { .. }));
        let table = [
            ExitCodeRule { code: 0, means: ExitMeaning::Failed },
            ExitCodeRule { code: 7, means: ExitMeaning::RebootRequired },
            ExitCodeRule { code: 3010, means: ExitMeaning::RebootRequired },
        ];
        let vendor = |code: i32| outcome(Some(code), &table, Conventions::Vendor, "setup");
        assert!(matches!(vendor(0), Outcome::Failed { exit_code: Some(0), .. }));
        assert_eq!(vendor(7), Outcome::RebootRequired);
        assert_eq!(vendor(3010), Outcome::RebootRequired);
        assert!(matches!(vendor(1641), Outcome::Failed { .. }));
    }

    #[test]
    fn an_installer_that_cannot_start_is_an_error_and_leaves_no_copy() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("verified");
        std::fs::write(&file, b"MZ").unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let sha = ringfence_trust::sha256_hex(b"MZ");
        let job = Job {
            module: "msi",
            arguments: &[],
            file: &file,
            sha256: &sha,
            update_id: "acme/../x y",
            target: "approvals/g/acme/x.msi",
            modules_dir: dir.path(),
            backup_dir: dir.path(),
            work_dir: &work,
            exit_codes: &[],
            product_code: None,
        };
        // No msiexec here: the install is an error, not a success, and the copy is gone.
        assert!(install_msi(&job).is_err());
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
        // The log name keeps to the work directory whatever the update id holds.
        assert_eq!(log_path(&job, "install"), work.join("install-acme_.._x_y.log"));
        // A file changed after it was verified is never run: refused while staging.
        let other = Job { sha256: &"0".repeat(64), ..job };
        let refused = Staged::new(&other, "msi").err().unwrap().to_string();
        assert!(refused.contains("changed on disk after it was verified"), "{refused}");
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
        // Neither an unsigned-looking product code nor a switch reaches msiexec.
        let code = Job { product_code: Some(r"\\host\share\x.msi"), ..job };
        assert!(uninstall_msi(&code).unwrap_err().to_string().contains("is not {"));
        for bad in ["/l*v", "TRANSFORMS=C:\\x.mst", "A=\"b"] {
            let arguments = [bad.to_owned()];
            let switch = Job { arguments: &arguments, ..job };
            assert!(install_msi(&switch).unwrap_err().to_string().contains("is not a property"), "{bad}");
            assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0, "no copy left behind");
        }
    }
}
