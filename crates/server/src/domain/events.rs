//! Events the domain emits for people outside the server (the webhook in `crate::notify`
//! delivers them). Emitting never waits: with no listener configured, or the queue full, an
//! event is dropped (and logged).

/// Something people outside the server should hear of: `approval_pending` (an approval
/// prepared for a group's approvers, which the server cannot sign) or `rollout_halted`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    pub event: &'static str,
    pub group: String,
    pub update: String,
    /// `install` or `decline` (approvals), `halt` (rollouts).
    pub action: String,
    /// Who caused it: `rule <id>`, `supersedence`, `server`.
    pub by: String,
    pub at: i64,
    /// For `approval_pending`: the role and version waiting, and its signatures so far.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingRole>,
    /// For `rollout_halted`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    pub fn test() -> Event {
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
        }
    }
}

#[derive(Clone, Default)]
pub struct Events {
    tx: Option<tokio::sync::mpsc::Sender<Event>>,
}

impl Events {
    pub fn new(tx: Option<tokio::sync::mpsc::Sender<Event>>) -> Self {
        Self { tx }
    }

    pub fn emit(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(event).is_err() {
            tracing::warn!("webhook queue full or closed: an event was dropped");
        }
    }
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
    }
}
