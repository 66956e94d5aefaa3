//! What differs between Linux and Windows, in one place: where the state lives and who may
//! read it, how a private file is made, how a script runs, how a reboot is noticed, what the
//! device says about itself, and the Windows service. The rest of the agent has no `cfg`.

use std::io::Write;
use std::path::Path;

#[cfg(unix)]
#[path = "unix.rs"]
mod imp;
#[cfg(windows)]
#[path = "windows.rs"]
mod imp;

pub use imp::{
    SCRIPT_EXTENSION, access_of, create_private, create_private_dir, default_state_dir, hostname, installed_products,
    msi_product_code, msi_property, open_locked, os_version, program_replaced, same_file, script_command, secure_dir,
    service, set_mode, system_program,
};

/// The agent's service loop: runs cycles in the state directory, waiting between them with
/// `wait`, which returns `true` when the service is asked to stop.
pub type RunLoop = fn(&Path, &dyn Fn(std::time::Duration) -> bool) -> anyhow::Result<()>;

/// A product the operating system lists as installed (Windows: the registry's uninstall keys,
/// both 64- and 32-bit views; Linux lists none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// The uninstall key's name: an MSI product code such as `{…}`, or the installer's own.
    pub key: String,
    pub name: String,
    pub version: String,
}

impl Product {
    /// Whether a publisher's product name refers to this one: the key or the display name,
    /// compared without regard to case.
    pub fn is(&self, wanted: &str) -> bool {
        !wanted.trim().is_empty()
            && (self.key.eq_ignore_ascii_case(wanted) || self.name.to_lowercase() == wanted.to_lowercase())
    }
}

/// This boot, as a mark to compare later: the file `RINGFENCE_BOOT_ID_FILE` names (images and
/// tests), else Linux's boot id, else Windows' boot counter, else the Windows boot time.
pub fn boot_mark() -> Option<String> {
    if let Some(path) = std::env::var_os("RINGFENCE_BOOT_ID_FILE") {
        return std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    }
    imp::boot_mark()
}

/// How far apart two readings of one boot time may be (the clock is read twice and may be
/// corrected in between) and still count as the same boot.
const BOOT_TIME_SLACK_SECONDS: i64 = 60;

/// Whether a mark taken earlier is of this boot. Boot times (`boot-time:SECONDS`, computed from
/// the clock and the time since boot) match within a minute; every other mark exactly.
pub fn same_boot(recorded: &str, current: &str) -> bool {
    let time = |mark: &str| mark.strip_prefix("boot-time:").and_then(|s| s.parse::<i64>().ok());
    match (time(recorded), time(current)) {
        (Some(a), Some(b)) => a.abs_diff(b) <= BOOT_TIME_SLACK_SECONDS as u64,
        _ => recorded == current,
    }
}

/// SYSTEM and Administrators, as SDDL writes them (an alias, or the SID).
const TRUSTED_SIDS: [&str; 4] = ["SY", "BA", "S-1-5-18", "S-1-5-32-544"];

/// Whether the owner in an SDDL string (`O:...D:...`) is SYSTEM or Administrators.
#[cfg_attr(not(windows), allow(dead_code))]
pub fn sddl_owner_is_trusted(sddl: &str) -> bool {
    sddl.strip_prefix("O:")
        .and_then(|rest| rest.split_once("D:"))
        .is_some_and(|(owner, _)| TRUSTED_SIDS.contains(&owner))
}

/// Whether an owner and DACL in SDDL (as Windows writes them back) are what the agent sets on
/// its state: owned by SYSTEM or Administrators, a DACL protected from inheritance, and
/// nobody but SYSTEM and Administrators allowed anything.
/// (Here, not in `windows.rs`, so that its tests run on Linux too.)
#[cfg_attr(not(windows), allow(dead_code))]
pub fn sddl_is_private(sddl: &str) -> bool {
    let Some((_, dacl)) = sddl.strip_prefix("O:").and_then(|rest| rest.split_once("D:")) else { return false };
    if !sddl_owner_is_trusted(sddl) {
        return false;
    }
    let (flags, aces) = dacl.split_at(dacl.find('(').unwrap_or(dacl.len()));
    if !flags.contains('P') || aces.is_empty() {
        return false;
    }
    aces.split_terminator(')').all(|ace| {
        let fields: Vec<&str> = ace.trim_start_matches('(').split(';').collect();
        match fields.as_slice() {
            [kind, .., sid] if *kind == "A" => TRUSTED_SIDS.contains(sid),
            [kind, ..] => *kind == "D",
            [] => false,
        }
    })
}

/// Write `bytes` to `path` through a fresh private file renamed into place.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = create_private(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_times_match_within_the_slack_and_other_marks_exactly() {
        assert!(same_boot("boot-time:1000", "boot-time:1059"));
        assert!(same_boot("boot-time:1059", "boot-time:1000"));
        assert!(!same_boot("boot-time:1000", "boot-time:1061"));
        assert!(same_boot("2b4c", "2b4c"));
        assert!(!same_boot("2b4c", "2b4d"));
        // A boot counter and a boot time never match each other.
        assert!(!same_boot("boot-counter:7", "boot-time:7"));
    }

    #[test]
    fn only_an_admin_owned_protected_dacl_for_system_and_administrators_is_private() {
        assert!(sddl_is_private("O:BAD:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"));
        assert!(sddl_is_private("O:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"));
        assert!(sddl_is_private("O:S-1-5-32-544D:PAI(A;OICI;FA;;;S-1-5-18)(D;;FA;;;WD)"));
        // Owned by a user, who could change the ACL back.
        assert!(!sddl_is_private("O:S-1-5-21-1-2-3-1001D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"));
        // Inherited from the parent: whoever may read C:\ProgramData may read the key.
        assert!(!sddl_is_private("O:BAD:AI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"));
        // What Wine reports: its user owns it and everyone may read.
        assert!(!sddl_is_private(
            "O:S-1-5-21-0-0-0-1000D:(A;OICI;FA;;;SY)(A;OICI;FA;;;S-1-5-21-0-0-0-1000)(A;OICI;0x1200a9;;;WD)"
        ));
        assert!(!sddl_is_private("O:BAD:P(A;OICI;FA;;;SY)(A;OICI;0x1200a9;;;BU)"));
        assert!(!sddl_is_private("O:BAD:P"));
        assert!(!sddl_is_private("D:P(A;OICI;FA;;;SY)"));
        assert!(sddl_owner_is_trusted("O:SYD:(A;;FA;;;WD)"));
        assert!(!sddl_owner_is_trusted("O:S-1-5-21-1-2-3-1001D:P(A;OICI;FA;;;SY)"));
        assert!(!sddl_owner_is_trusted("D:P(A;OICI;FA;;;SY)"));
    }

    #[test]
    fn products_match_by_key_or_display_name_without_case() {
        let p = Product {
            key: "{0123ABCD-0000-0000-0000-000000000000}".into(),
            name: "Acme Hello".into(),
            version: "1".into(),
        };
        assert!(p.is("{0123abcd-0000-0000-0000-000000000000}"));
        assert!(p.is("acme hello"));
        assert!(!p.is("Acme"));
        // A product without a display name is not named by an empty string.
        let nameless = Product { name: String::new(), ..p };
        assert!(!nameless.is("") && !nameless.is(" "));
    }

    #[test]
    fn a_private_directory_is_born_private_and_one_already_there_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert!(create_private_dir(&state).unwrap());
        assert!(!create_private_dir(&state).unwrap(), "there already");
        #[cfg(unix)]
        assert_eq!(access_of(&state).unwrap(), "mode 0700");
        assert!(create_private_dir(&dir.path().join("no/parent")).is_err());
    }

    #[test]
    fn a_private_file_is_written_whole_and_replaces_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.json");
        write_private(&path, b"one").unwrap();
        // A stale temporary file from an interrupted write is not reused.
        std::fs::write(path.with_extension("tmp"), b"stale").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!path.with_extension("tmp").exists());
        assert!(access_of(&path).is_ok());
    }
}
