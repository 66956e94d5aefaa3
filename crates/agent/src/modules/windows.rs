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

/// How an installer's exit code turns into an outcome: the publisher's table first, then
/// Windows' conventions (0 installed, 3010 and 1641 reboot required), anything else failed.
pub fn outcome(code: Option<i32>, table: &[ExitCodeRule], what: &str) -> Outcome {
    let Some(raw) = code else {
        return Outcome::Failed { exit_code: None, reason: format!("{what} ended without an exit code") };
    };
    let code = raw as u32;
    let described = || match explain(code) {
        Some(why) => format!("{what} exited with {code} (0x{code:08X}): {why}"),
        None => format!("{what} exited with {code} (0x{code:08X})"),
    };
    let meaning = table.iter().find(|r| r.code == code).map(|r| r.means).unwrap_or(match code {
        0 => ExitMeaning::Installed,
        REBOOT_REQUIRED | REBOOT_INITIATED => ExitMeaning::RebootRequired,
        _ => ExitMeaning::Failed,
    });
    match meaning {
        ExitMeaning::Installed => Outcome::Installed,
        ExitMeaning::RebootRequired => Outcome::RebootRequired,
        ExitMeaning::NotApplicable => Outcome::NotApplicable(described()),
        ExitMeaning::Failed => Outcome::Failed { exit_code: Some(raw), reason: described() },
    }
}

/// Where msiexec writes its verbose log for this update: `<state>\work\<update>.<what>.log`.
fn log_path(job: &Job, what: &str) -> PathBuf {
    let safe: String =
        job.update_id.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    job.work_dir.join(format!("{safe}.{what}.log"))
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

/// `msiexec /i FILE /qn /norestart /l*v LOG ARGUMENTS…` (arguments are the publisher's
/// properties, such as `ALLUSERS=1`). With a product code, a success is checked against the
/// products Windows lists as installed.
pub fn install_msi(job: &Job) -> anyhow::Result<Outcome> {
    let package = Staged::new(job, "msi")?;
    let log = log_path(job, "install");
    let mut command = Command::new("msiexec.exe");
    command.arg("/i").arg(package.path()).args(["/qn", "/norestart", "/l*v"]).arg(&log).args(job.arguments);
    let outcome = with_log(outcome(run(command, job, "msiexec")?, &[], "msiexec"), &log);
    if let (Outcome::Installed | Outcome::RebootRequired, Some(code)) = (&outcome, job.product_code)
        && !crate::platform::installed_products().iter().any(|p| p.is(code))
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
    let package;
    let log = log_path(job, "uninstall");
    let mut command = Command::new("msiexec.exe");
    command.arg("/x");
    match job.product_code {
        Some(code) => command.arg(code),
        None => {
            package = Staged::new(job, "msi")?;
            command.arg(package.path())
        }
    };
    command.args(["/qn", "/norestart", "/l*v"]).arg(&log);
    let code = run(command, job, "msiexec")?;
    if code.map(|c| c as u32) == Some(UNKNOWN_PRODUCT) {
        return Ok(Outcome::Installed);
    }
    Ok(with_log(outcome(code, &[], "msiexec /x"), &log))
}

const WUSA_TABLE: [ExitCodeRule; 2] = [
    ExitCodeRule { code: ALREADY_INSTALLED, means: ExitMeaning::Installed },
    ExitCodeRule { code: NOT_APPLICABLE, means: ExitMeaning::NotApplicable },
];

/// `wusa FILE /quiet /norestart`.
pub fn install_msu(job: &Job) -> anyhow::Result<Outcome> {
    let package = Staged::new(job, "msu")?;
    let mut command = Command::new("wusa.exe");
    command.arg(package.path()).args(["/quiet", "/norestart"]);
    Ok(outcome(run(command, job, "wusa")?, &WUSA_TABLE, "wusa"))
}

/// `wusa /uninstall FILE /quiet /norestart`.
pub fn uninstall_msu(job: &Job) -> anyhow::Result<Outcome> {
    let package = Staged::new(job, "msu")?;
    let mut command = Command::new("wusa.exe");
    command.arg("/uninstall").arg(package.path()).args(["/quiet", "/norestart"]);
    Ok(outcome(run(command, job, "wusa /uninstall")?, &[], "wusa /uninstall"))
}

/// The vendor's setup program with the publisher's arguments, read by the publisher's table.
pub fn install_exe(job: &Job) -> anyhow::Result<Outcome> {
    let program = Staged::new(job, "exe")?;
    let mut command = Command::new(program.path());
    command.args(job.arguments);
    Ok(outcome(run(command, job, "the installer")?, job.exit_codes, "the installer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_exit_codes_map_to_outcomes_and_the_publishers_table_comes_first() {
        assert_eq!(outcome(Some(0), &[], "msiexec"), Outcome::Installed);
        assert_eq!(outcome(Some(3010), &[], "msiexec"), Outcome::RebootRequired);
        assert_eq!(outcome(Some(1641), &[], "msiexec"), Outcome::RebootRequired);
        let Outcome::Failed { exit_code, reason } = outcome(Some(1603), &[], "msiexec") else { panic!() };
        assert_eq!(exit_code, Some(1603));
        assert!(reason.contains("fatal error"), "{reason}");
        assert!(matches!(outcome(None, &[], "msiexec"), Outcome::Failed { exit_code: None, .. }));
        // HRESULTs arrive as negative i32 and are compared as the unsigned codes tables use.
        let not_applicable = NOT_APPLICABLE as i32;
        assert!(matches!(outcome(Some(not_applicable), &WUSA_TABLE, "wusa"), Outcome::NotApplicable(_)));
        assert_eq!(outcome(Some(ALREADY_INSTALLED as i32), &WUSA_TABLE, "wusa"), Outcome::Installed);
        // A publisher can say 0 is a failure and 7 a success needing a reboot.
        let table = [
            ExitCodeRule { code: 0, means: ExitMeaning::Failed },
            ExitCodeRule { code: 7, means: ExitMeaning::RebootRequired },
        ];
        assert!(matches!(outcome(Some(0), &table, "setup"), Outcome::Failed { exit_code: Some(0), .. }));
        assert_eq!(outcome(Some(7), &table, "setup"), Outcome::RebootRequired);
        assert_eq!(outcome(Some(3010), &table, "setup"), Outcome::RebootRequired);
    }

    #[test]
    fn an_installer_that_cannot_start_is_an_error_and_leaves_no_copy() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("verified");
        std::fs::write(&file, b"MZ").unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let job = Job {
            module: "msi",
            arguments: &[],
            file: &file,
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
        assert_eq!(log_path(&job, "install"), work.join("acme_.._x_y.install.log"));
    }
}
