//! Events the domain emits for people outside the server, kept in the database's webhook
//! outbox (when a webhook is configured) and delivered by `crate::notify` on the leading node:
//! retried with backoff until the receiver takes them or they are given up on, across
//! restarts. Emitting writes one row and never waits for the receiver.

use std::sync::Arc;

use rand_core::{OsRng, RngCore};
use ringfence_store::{Database, OutboxRecord};

use super::error::Result;

/// Events waiting for delivery at most; past it an event is dropped (and logged).
pub const MAX_WAITING: u64 = 100_000;
/// Attempts before an event is given up on (the last ones an hour apart: more than a day).
pub const MAX_ATTEMPTS: u32 = 32;
/// Delivered and given-up events are kept this long for inspection, then forgotten.
pub const KEEP_SECS: i64 = 7 * 86_400;

/// Something people outside the server should hear of: `update_published`,
/// `approval_pending` (an approval prepared for a group's approvers, which the server cannot
/// sign), `rollout_halted`, `device_update_failed`, `role_near_expiry`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    pub event: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub update: String,
    /// `install` or `decline` (approvals), `halt` (rollouts).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// Who caused it: `rule <id>`, `supersedence`, `server`, an admin token, `device <id>`.
    pub by: String,
    pub at: i64,
    /// For `approval_pending`: the role and version waiting, and its signatures so far.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingRole>,
    /// For `rollout_halted`: why; for `device_update_failed`: the device's reason; for
    /// `role_near_expiry`: the warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `device_update_failed`: the device and the approval path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// For `role_near_expiry`: the role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiring_role: Option<String>,
}

impl Event {
    /// An event of kind `event` by `by` at `at`, every other field empty.
    pub fn new(event: &'static str, by: &str, at: i64) -> Event {
        Event {
            event,
            group: String::new(),
            update: String::new(),
            action: String::new(),
            by: by.to_owned(),
            at,
            pending: None,
            reason: None,
            device: None,
            target: None,
            expiring_role: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingRole {
    pub role: String,
    pub version: u64,
    pub valid_signatures: u64,
    pub threshold: u64,
}

impl Event {
    #[cfg(test)]
    pub(crate) fn test() -> Event {
        Event {
            event: "approval_pending",
            group: "production".into(),
            update: "kb-1".into(),
            action: "install".into(),
            by: "rule 00".into(),
            at: 1,
            pending: Some(PendingRole {
                role: "approvals.production".into(),
                version: 3,
                valid_signatures: 0,
                threshold: 2,
            }),
            reason: None,
            device: None,
            target: None,
            expiring_role: None,
        }
    }
}

/// The outbox, or nothing when no webhook is configured (events are then not kept).
#[derive(Clone, Default)]
pub struct Events {
    db: Option<Arc<dyn Database>>,
    retry_secs: i64,
}

impl Events {
    pub fn new(db: Option<Arc<dyn Database>>, retry_secs: u64) -> Self {
        Self { db, retry_secs: i64::try_from(retry_secs.clamp(1, 3600)).unwrap_or(10) }
    }

    /// Keep `event` for delivery. A failure to keep it is logged, never the caller's failure.
    pub async fn emit(&self, event: Event) {
        let Some(db) = &self.db else { return };
        let body = match serde_json::to_string(&event) {
            Ok(body) => body,
            Err(e) => return tracing::error!(error = %e, "encoding a webhook event failed"),
        };
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        match db.enqueue_event(&hex::encode(id), &body, event.at, MAX_WAITING).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(event = event.event, "webhook outbox full: an event was dropped"),
            Err(e) => tracing::error!(error = %e, event = event.event, "keeping a webhook event failed"),
        }
    }

    /// Events due for an attempt at `now`, at most `limit`.
    pub async fn due(&self, now: i64, limit: u64) -> Result<Vec<OutboxRecord>> {
        match &self.db {
            Some(db) => Ok(db.due_events(now, limit).await?),
            None => Ok(Vec::new()),
        }
    }

    /// The receiver took `event` (2xx).
    pub async fn delivered(&self, event: &OutboxRecord, now: i64) -> Result<()> {
        let Some(db) = &self.db else { return Ok(()) };
        Ok(db.event_delivered(&event.id, event.attempts.saturating_add(1), now).await?)
    }

    /// An attempt failed: the next one after the backoff (`retry_secs` doubling, at most an
    /// hour), or none after [`MAX_ATTEMPTS`]. Whether it was given up on.
    pub async fn failed(&self, event: &OutboxRecord, error: &str, now: i64) -> Result<bool> {
        let Some(db) = &self.db else { return Ok(false) };
        let attempts = event.attempts.saturating_add(1);
        let next = (attempts < MAX_ATTEMPTS).then(|| now.saturating_add(backoff(self.retry_secs, attempts)));
        let error: String = error.chars().take(512).collect();
        db.event_failed(&event.id, attempts, next, &error).await?;
        Ok(next.is_none())
    }

    /// Events waiting, delivered, and given up on.
    pub async fn counts(&self) -> Result<(u64, u64, u64)> {
        match &self.db {
            Some(db) => Ok(db.outbox_counts().await?),
            None => Ok((0, 0, 0)),
        }
    }

    /// Forget delivered and given-up events older than [`KEEP_SECS`].
    pub async fn prune(&self, now: i64) -> Result<u64> {
        match &self.db {
            Some(db) => Ok(db.prune_outbox(now.saturating_sub(KEEP_SECS)).await?),
            None => Ok(0),
        }
    }
}

/// Seconds before attempt `attempts + 1`: `base` doubling per failure, at most an hour.
pub fn backoff(base: i64, attempts: u32) -> i64 {
    let doublings = attempts.saturating_sub(1).min(12);
    base.saturating_mul(1 << doublings).min(3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_carries_only_its_own_fields() {
        let pending = serde_json::to_value(Event::test()).unwrap();
        assert_eq!((pending["role"].as_str(), pending["threshold"].as_u64()), (Some("approvals.production"), Some(2)));
        assert!(pending.get("reason").is_none());
        let halted =
            Event { event: "rollout_halted", pending: None, reason: Some("halted: 1 failed".into()), ..Event::test() };
        let halted = serde_json::to_value(halted).unwrap();
        assert_eq!(halted["reason"], "halted: 1 failed");
        assert!(halted.get("role").is_none() && halted.get("version").is_none());
        let failed = Event {
            device: Some("d1".into()),
            target: Some("approvals/pilot/acme/x".into()),
            ..Event::new("device_update_failed", "device d1", 5)
        };
        let failed = serde_json::to_value(failed).unwrap();
        assert_eq!(failed["device"], "d1");
        assert!(failed.get("group").is_none() && failed.get("update").is_none(), "{failed}");
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!([1, 2, 3, 4].map(|a| backoff(10, a)), [10, 20, 40, 80]);
        assert_eq!(backoff(10, 10), 3600);
        assert_eq!(backoff(10, u32::MAX), 3600);
    }
}
