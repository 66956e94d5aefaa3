//! The signed document of the server's rollout holds (`/repo/rollouts.json`), signed with the
//! online timestamp key: it can only narrow what approvals allow, so the key that already
//! decides freshness is enough.

use std::collections::BTreeMap;

use ringfence_proto::tuf::RolloutHolds;
use ringfence_trust::{Envelope, expiry};

use super::Repository;
use crate::domain::error::{Error, Result};

/// The name the holds document's floor is kept under (no role can have it).
pub const HOLDS_FLOOR: &str = "#holds";

impl Repository {
    /// Sign and store the next holds document; it expires with the timestamp policy.
    pub async fn publish_holds(
        &self,
        holds: BTreeMap<String, u8>,
        retries: BTreeMap<String, u64>,
        now: i64,
    ) -> Result<u64> {
        let version = self.next_version(HOLDS_FLOOR, self.db.rollout_holds().await?.map_or(0, |(v, _)| v)).await?;
        let doc = RolloutHolds {
            type_: "ringfence-rollouts".into(),
            version,
            expires: expiry::format(now + self.policy.timestamp_secs),
            holds,
            retries,
        };
        let mut env = Envelope::new(doc).map_err(Error::internal)?;
        env.sign(&self.online_keys()?.timestamp);
        let bytes = env.to_bytes().map_err(Error::internal)?;
        self.db.put_rollout_holds(version, &bytes).await?;
        self.holds.saw(version);
        Ok(version)
    }

    /// Sign the holds in force again under the next version (past its floor, after a restore):
    /// the new version, none when there is no holds document.
    pub async fn republish_holds(&self, now: i64) -> Result<Option<u64>> {
        let Some((_, bytes)) = self.db.rollout_holds().await? else { return Ok(None) };
        let current = Envelope::<RolloutHolds>::parse(&bytes, 1 << 22).map_err(Error::internal)?;
        Ok(Some(self.publish_holds(current.signed.holds, current.signed.retries, now).await?))
    }

    /// The version of the newest holds document (0: none) — what every check-in answers. On
    /// the embedded database, where only this process writes it, kept in memory once read.
    pub async fn holds_version(&self) -> Result<u64> {
        let generation = match self.holds.get() {
            Ok(v) => return Ok(v),
            Err(generation) => generation,
        };
        let v = self.db.rollout_holds_version().await?;
        self.holds.read(generation, v);
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
/// Versions only grow, so the largest seen is the newest: a read that raced a commit never
/// puts an older version back. A read that raced `forget` (something wrote behind this
/// process's back) is not kept: the generation it started in is gone.
pub(super) struct HoldsVersion {
    /// Until when the version may be kept: for ever with one writer (this node), else while
    /// this node hears the other writers.
    kept_until: crate::domain::kept::KeptUntil,
    /// Other nodes write too: a version this node committed is not kept as the newest (another
    /// node may have committed a newer one in the meantime, and its notice come first).
    shared: bool,
    /// (known, version, generation)
    state: std::sync::Mutex<(bool, u64, u64)>,
}

impl HoldsVersion {
    pub(super) fn new(one_writer: bool) -> Self {
        Self {
            kept_until: crate::domain::kept::KeptUntil::new(one_writer),
            shared: !one_writer,
            state: std::sync::Mutex::new((false, 0, 0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, u64, u64)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The version if known; else the generation a read should start in.
    fn get(&self) -> std::result::Result<u64, u64> {
        let (known, version, generation) = *self.lock();
        if self.kept() && known { Ok(version) } else { Err(generation) }
    }

    /// A read from the database that started in `generation`.
    fn read(&self, generation: u64, version: u64) {
        let mut s = self.lock();
        if self.kept() && s.2 == generation {
            *s = (true, s.1.max(version), generation);
        }
    }

    /// A version this process just committed.
    fn saw(&self, version: u64) {
        if self.shared {
            self.forget();
        } else if self.kept() {
            let mut s = self.lock();
            *s = (true, s.1.max(version), s.2);
        }
    }

    fn kept(&self) -> bool {
        self.kept_until.holds()
    }

    /// Keep the version until a moment, or stop; starting and stopping forget it.
    pub(super) fn keep_until(&self, keep: crate::domain::kept::Keep) {
        self.kept_until.apply(keep, || self.forget());
    }

    /// Written behind this process's back (a restore, a test playing a thief, another node):
    /// read again.
    pub(super) fn forget(&self) {
        let mut s = self.lock();
        *s = (false, 0, s.2.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::HoldsVersion;

    #[test]
    fn the_largest_version_seen_wins_and_only_one_writer_keeps_it() {
        let kept = HoldsVersion::new(true);
        let generation = kept.get().unwrap_err();
        kept.saw(3);
        kept.read(generation, 2); // a read that started before version 3 was committed
        assert_eq!(kept.get(), Ok(3));
        // A read that started before something wrote behind the process is not kept.
        kept.forget();
        kept.read(generation, 9);
        assert!(kept.get().is_err());
        let after = kept.get().unwrap_err();
        kept.read(after, 4);
        assert_eq!(kept.get(), Ok(4));
        let shared = HoldsVersion::new(false);
        shared.saw(5);
        assert!(shared.get().is_err(), "other nodes commit too: always read");
    }
}
