//! The signed document of the server's rollout holds (`/repo/rollouts.json`), signed with the
//! online timestamp key: it can only narrow what approvals allow, so the key that already
//! decides freshness is enough.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ringfence_proto::tuf::RolloutHolds;
use ringfence_trust::{Envelope, expiry};

use super::Repository;
use crate::domain::error::{Error, Result};

impl Repository {
    /// Sign and store the next holds document; it expires with the timestamp policy.
    pub async fn publish_holds(
        &self,
        holds: BTreeMap<String, u8>,
        retries: BTreeMap<String, u64>,
        now: i64,
    ) -> Result<u64> {
        let version = self.db.rollout_holds().await?.map_or(0, |(v, _)| v) + 1;
        let doc = RolloutHolds {
            type_: "ringfence-rollouts".into(),
            version,
            expires: expiry::format(now + self.policy.timestamp_secs),
            holds,
            retries,
        };
        let mut env = Envelope::new(doc).map_err(Error::internal)?;
        env.sign(&self.keys.timestamp);
        let bytes = env.to_bytes().map_err(Error::internal)?;
        self.db.put_rollout_holds(version, &bytes).await?;
        self.holds.saw(version);
        Ok(version)
    }

    /// The version of the newest holds document (0: none) — what every check-in answers. On
    /// the embedded database, where only this process writes it, kept in memory once read.
    pub async fn holds_version(&self) -> Result<u64> {
        if let Some(v) = self.holds.get() {
            return Ok(v);
        }
        let v = self.db.rollout_holds_version().await?;
        self.holds.saw(v);
        Ok(v)
    }

    /// The holds document as served, if there is one.
    pub async fn holds_document(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.db.rollout_holds().await?.map(|(_, bytes)| bytes))
    }

    /// Seconds the holds document lives (the timestamp's lifetime).
    pub fn holds_lifetime(&self) -> i64 {
        self.policy.timestamp_secs
    }
}

/// The newest holds version known in memory, with one writer only (the embedded database).
/// Versions only grow, so whatever order reads and commits finish in, the largest seen is the
/// newest: a read that raced a commit never puts an older version back.
pub(super) struct HoldsVersion {
    one_writer: bool,
    known: AtomicBool,
    version: AtomicU64,
}

impl HoldsVersion {
    pub(super) fn new(one_writer: bool) -> Self {
        Self { one_writer, known: AtomicBool::new(false), version: AtomicU64::new(0) }
    }

    fn get(&self) -> Option<u64> {
        (self.one_writer && self.known.load(Ordering::Acquire)).then(|| self.version.load(Ordering::Acquire))
    }

    fn saw(&self, version: u64) {
        if self.one_writer {
            self.version.fetch_max(version, Ordering::AcqRel);
            self.known.store(true, Ordering::Release);
        }
    }

    /// Written behind this process's back (a restore, a test playing a thief): read again.
    pub(super) fn forget(&self) {
        self.known.store(false, Ordering::Release);
        self.version.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::HoldsVersion;

    #[test]
    fn the_largest_version_seen_wins_and_only_one_writer_keeps_it() {
        let kept = HoldsVersion::new(true);
        assert_eq!(kept.get(), None, "nothing known before the first read");
        kept.saw(3);
        kept.saw(2); // a read that started before version 3 was committed
        assert_eq!(kept.get(), Some(3));
        kept.forget();
        assert_eq!(kept.get(), None);
        let shared = HoldsVersion::new(false);
        shared.saw(5);
        assert_eq!(shared.get(), None, "other nodes commit too: always read");
    }
}
