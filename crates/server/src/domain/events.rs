//! Events the domain emits for people outside the server (the webhook in `crate::notify`
//! delivers them). Emitting never waits: with no listener configured, or the queue full, an
//! event is dropped (and logged).

/// An approval prepared for a group's approvers, which the server cannot sign.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// `approval_pending`.
    pub event: &'static str,
    pub group: String,
    /// The role waiting for signatures and its version.
    pub role: String,
    pub version: u64,
    pub update: String,
    /// `install` or `decline`.
    pub action: String,
    /// Who prepared it: `rule <id>` or `supersedence`.
    pub by: String,
    pub valid_signatures: u64,
    pub threshold: u64,
    pub at: i64,
}

impl Event {
    #[cfg(test)]
    pub fn test() -> Event {
        Event {
            event: "approval_pending",
            group: "production".into(),
            role: "approvals.production".into(),
            version: 3,
            update: "kb-1".into(),
            action: "install".into(),
            by: "rule 00".into(),
            valid_signatures: 0,
            threshold: 2,
            at: 1,
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
