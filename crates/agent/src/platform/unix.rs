//! Linux (and other Unix): modes, `/proc`, `/etc`, `/bin/sh`.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::Product;

pub fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ringfence-agent")
}

/// Only the agent's own user may enter the state directory: mode 0700.
pub fn secure_dir(path: &Path, _existed: bool) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Create `path` (its parent must exist) with mode 0700 from the start. `Ok(false)` when it was
/// there already.
pub fn create_private_dir(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Who may use `path`, for `status`.
pub fn access_of(path: &Path) -> std::io::Result<String> {
    Ok(format!("mode {:04o}", std::fs::metadata(path)?.permissions().mode() & 0o7777))
}

/// A new file (never an existing one, never through a link) only its owner may read: 0600.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// Programs are found on `PATH` (root's, under systemd).
pub fn system_program(name: &str) -> PathBuf {
    PathBuf::from(name)
}

/// Open a file for reading. (The state directory is root's, mode 0700: nobody else can change
/// what is in it.)
pub fn open_locked(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

/// Give an open file the mode a publisher asked for (`file DEST MODE`).
pub fn set_mode(file: &File, mode: u32) -> std::io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Whether two metadata describe the same file: device and inode.
pub fn same_file(a: &Metadata, b: &Metadata) -> bool {
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

pub fn boot_mark() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Whether this program's file was replaced since it started (a package upgrade): a file
/// now at the path it was started from is not the running image. A path where nothing is now
/// (a removed build directory) is not a replacement.
pub fn program_replaced() -> bool {
    image_replaced(Path::new("/proc/self/exe"))
}

/// [`program_replaced`] for the process whose `/proc/PID/exe` is `exe`.
fn image_replaced(exe: &Path) -> bool {
    let Ok(link) = std::fs::read_link(exe) else { return false };
    let text = link.to_string_lossy();
    let path = text.strip_suffix(" (deleted)").unwrap_or(&text);
    match (std::fs::metadata(exe), std::fs::metadata(path)) {
        (Ok(running), Ok(on_disk)) => (running.dev(), running.ino()) != (on_disk.dev(), on_disk.ino()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_replaced_when_another_file_is_at_its_path_not_when_none_is() {
        // A running copy of `sleep`, its file then replaced as a package upgrade replaces it
        // (a new file renamed over the path), then removed (a deleted build directory).
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("agent");
        std::fs::copy("/bin/sleep", &program).unwrap();
        let mut child = std::process::Command::new(&program).arg("30").spawn().unwrap();
        let exe = PathBuf::from(format!("/proc/{}/exe", child.id()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_link(&exe).map_or(true, |l| l != program) {
            assert!(std::time::Instant::now() < deadline, "the copy did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!image_replaced(&exe), "the file it started from");
        let upgrade = dir.path().join("agent.new");
        std::fs::copy("/bin/sleep", &upgrade).unwrap();
        std::fs::rename(&upgrade, &program).unwrap();
        assert!(image_replaced(&exe), "another file at its path");
        std::fs::remove_file(&program).unwrap();
        assert!(!image_replaced(&exe), "nothing at its path");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// An MSI package's `ProductCode`: Windows Installer exists only on Windows.
pub fn msi_product_code(_path: &Path) -> std::io::Result<String> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "MSI packages are read on Windows only"))
}

/// An msiexec property argument (`msi` module; msiexec exists only on Windows).
pub fn msi_property(command: &mut Command, name: &str, value: &str) {
    command.arg(format!("{name}={value}"));
}

/// The `script` module's file name needs no extension here.
pub const SCRIPT_EXTENSION: &str = "";

/// The `script` module: the file run by `/bin/sh`.
pub fn script_command(file: &Path) -> Command {
    let mut command = Command::new("/bin/sh");
    command.arg(file);
    command
}

/// `VERSION_ID` from `/etc/os-release`.
pub fn os_version() -> String {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_ID="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default()
}

pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_owned()
}

/// Linux lists no products: packages are the package manager's business (`deb`).
pub fn installed_products() -> Vec<Product> {
    Vec::new()
}

/// The Windows service; on Linux the agent runs under systemd as `ringfence-agent run`.
pub mod service {
    use std::path::Path;

    const NOT_HERE: &str =
        "the Windows service exists on Windows only: here, run `ringfence-agent run` under systemd (docs/AGENT.md)";

    pub fn install(_state_dir: &Path) -> anyhow::Result<()> {
        anyhow::bail!(NOT_HERE)
    }
    pub fn uninstall() -> anyhow::Result<()> {
        anyhow::bail!(NOT_HERE)
    }
    pub fn run(_state_dir: &Path, _cycles: super::super::RunLoop) -> anyhow::Result<()> {
        anyhow::bail!(NOT_HERE)
    }
}
