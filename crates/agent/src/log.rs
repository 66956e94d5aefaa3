//! The agent's transparency-log check: before it trusts an approval or publisher role version,
//! the version must be on the log the signed top-level targets names (its identity:
//! origin, log key, witnesses, quorum), in a checkpoint signed by the log and cosigned by the
//! witness quorum, consistent with the last checkpoint this device trusted.
//!
//! The trusted checkpoint is kept in `log-checkpoint` in the state directory (only ever moved
//! forward); the roles already checked in `log-verified.json` (role → SHA-256 of the bytes), so
//! a stored copy is not fetched or proven again. A fork's other checkpoint is kept as evidence
//! in `log-fork-evidence`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use ringfence_tlog::entry::Entry;
use ringfence_tlog::proof::{IDENTITY_TARGET, LogIdentity, ProofBundle, ProofError, Trusted};
use ringfence_trust::client::TrustedSet;
use ringfence_trust::workflow::Fetched;

use crate::fetch::Fetcher;
use crate::tuf_client::write_atomic;

/// How often, and how long apart, a version not on the log yet is asked for again.
const NOT_YET_ATTEMPTS: u32 = 20;
const NOT_YET_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// Where the log is and where this device keeps what it trusts of it.
#[derive(Debug, Clone)]
pub struct LogCheck {
    /// `https://host:port/log`.
    pub base_url: String,
    pub state_dir: PathBuf,
}

/// The log identity top-level targets publishes, if it publishes one. A malformed one is an
/// error: nothing is trusted past it.
pub fn identity(set: &TrustedSet) -> anyhow::Result<Option<LogIdentity>> {
    let Some(top) = set.targets("targets") else { return Ok(None) };
    let Some(target) = top.signed.targets.get(IDENTITY_TARGET) else { return Ok(None) };
    Ok(Some(LogIdentity::from_custom(target.custom.clone()).context("the log identity in top-level targets")?))
}

impl LogCheck {
    fn checkpoint_file(&self) -> PathBuf {
        self.state_dir.join("log-checkpoint")
    }

    fn verified_file(&self) -> PathBuf {
        self.state_dir.join("log-verified.json")
    }

    /// The checkpoint this device trusts for the log of `identity` (none for a log it never
    /// saw: another origin or log key starts afresh; both come only from offline-signed
    /// top-level targets).
    pub fn trusted(&self, identity: &LogIdentity) -> anyhow::Result<Option<Trusted>> {
        let Ok(note) = std::fs::read(self.checkpoint_file()) else { return Ok(None) };
        Trusted::from_note(identity, &note).context("the stored log checkpoint (log-checkpoint)")
    }

    fn verified(&self) -> BTreeMap<String, String> {
        std::fs::read(self.verified_file()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Whether `role`'s stored `bytes` were proven on the log already.
    pub fn already_checked(&self, identity: &LogIdentity, role: &str, bytes: &[u8]) -> bool {
        self.verified().get(&proven_key(identity, role)).is_some_and(|sha| *sha == ringfence_trust::sha256_hex(bytes))
    }

    /// Check that `role` version `version` with exactly `bytes` is on the log; then remember
    /// the newer checkpoint and the role as checked.
    pub fn check(
        &self,
        fetcher: &Fetcher,
        identity: &LogIdentity,
        role: &str,
        version: u64,
        bytes: &[u8],
    ) -> anyhow::Result<()> {
        let trusted = self.trusted(identity)?;
        let old = trusted.as_ref().map_or(0, |t| t.size);
        let url = format!("{}/proof/{role}/{version}/{old}", self.base_url);
        // A version published a moment ago is on the log within a second or two (the server
        // integrates at least every second): wait that long, no longer.
        let mut body = None;
        for attempt in 0..=NOT_YET_ATTEMPTS {
            if let Fetched::Bytes(b) = fetcher.fetch(&url, ringfence_tlog::proof::MAX_BUNDLE_BYTES as u64)? {
                body = Some(b);
                break;
            }
            if attempt < NOT_YET_ATTEMPTS {
                std::thread::sleep(NOT_YET_PAUSE);
            }
        }
        let Some(body) = body else {
            bail!("{role} version {version} is not on the transparency log: not trusted");
        };
        let bundle = ProofBundle::parse(&body)?;
        let expected = Entry::Metadata {
            role: role.to_owned(),
            version,
            sha256: ringfence_trust::sha256_hex(bytes),
            length: bytes.len() as u64,
        };
        let newer = match bundle.verify(identity, &expected, trusted.as_ref()) {
            Ok(newer) => newer,
            Err(ProofError::Fork { size, other }) => {
                let mut evidence = trusted.map(|t| t.note).unwrap_or_default();
                evidence.extend_from_slice(b"\n");
                evidence.extend_from_slice(&other);
                write_atomic(&self.state_dir.join("log-fork-evidence"), &evidence)?;
                bail!("the transparency log forked: two checkpoints of size {size} (kept in log-fork-evidence)");
            }
            Err(e) => return Err(e).with_context(|| format!("{role} version {version}")),
        };
        if newer.size > old {
            write_atomic(&self.checkpoint_file(), &newer.note)?;
        }
        let mut verified = self.verified();
        verified.insert(proven_key(identity, role), expected_sha(&expected));
        write_atomic(&self.verified_file(), &serde_json::to_vec(&verified)?)?;
        Ok(())
    }
}

/// Roles are proven on one log: another log (origin and key) proves them again.
fn proven_key(identity: &LogIdentity, role: &str) -> String {
    format!("{} {} {role}", identity.origin, identity.key)
}

fn expected_sha(entry: &Entry) -> String {
    match entry {
        Entry::Metadata { sha256, .. } => sha256.clone(),
        _ => String::new(),
    }
}

/// `ringfence-agent status`: the checkpoint this device trusts, as one line.
pub fn describe(state_dir: &std::path::Path) -> String {
    match std::fs::read_to_string(state_dir.join("log-checkpoint")) {
        Ok(note) => {
            let mut lines = note.lines();
            let origin = lines.next().unwrap_or_default();
            let size = lines.next().unwrap_or_default();
            let root = lines.next().unwrap_or_default();
            let cosigners = note.lines().filter(|l| l.starts_with('\u{2014}')).count().saturating_sub(1);
            format!("{origin}, size {size}, root {root}, {cosigners} cosignature(s)")
        }
        Err(_) => "none yet".to_owned(),
    }
}
