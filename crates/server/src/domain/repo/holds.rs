//! The signed document of the server's rollout holds (`/repo/rollouts.json`), signed with the
//! online timestamp key: it can only narrow what approvals allow, so the key that already
//! decides freshness is enough.

use std::collections::BTreeMap;

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
        Ok(version)
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
