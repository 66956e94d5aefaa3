//! The audit trail: every change the server makes is recorded here, naming the actor that
//! caused it — an admin token as `<name> (token <id>)`, a device as `device <id>`, the server's
//! own jobs as `server`.

use std::sync::Arc;

use ringfence_store::{AuditRecord, Database};

use super::error::Result;

pub use ringfence_proto::api::AuditEntry;

#[derive(Clone)]
pub struct Audit {
    db: Arc<dyn Database>,
}

impl Audit {
    pub fn new(db: Arc<dyn Database>) -> Self {
        Self { db }
    }

    /// Append a record: the one place records are written.
    pub async fn record(&self, actor: &str, action: &str, detail: &str, now: i64) -> Result<()> {
        let rec = AuditRecord { at: now, actor: actor.into(), action: action.into(), detail: detail.into() };
        Ok(self.db.append_audit(&rec).await?)
    }

    /// Records newest first, older than `before` (all when `None`), at most `limit`.
    pub async fn page(&self, before: Option<i64>, limit: u64) -> Result<Vec<AuditEntry>> {
        let page = self.db.audit_page(before, limit).await?;
        Ok(page
            .into_iter()
            .map(|(seq, a)| AuditEntry { seq, at: a.at, actor: a.actor, action: a.action, detail: a.detail })
            .collect())
    }
}
