//! Approvals: a new version of a group's approval role that pins what the publisher signed.

use ringfence_proto::api::{ApprovalRequest, RoleState};
use ringfence_proto::tuf::{ApprovalCustom, Targets};
use ringfence_trust::{expiry, writer};

use super::{Repository, bad};
use crate::domain::error::{Error, Result};

impl Repository {
    /// Propose an approval: a new version of the group's approval role carrying the same
    /// length and hashes as the publisher signed.
    pub async fn approve(&self, request: ApprovalRequest, actor: &str, now: i64) -> Result<RoleState> {
        if let Some(deadline) = &request.deadline {
            expiry::parse(deadline).map_err(bad)?;
        }
        let _guard = self.write_lock.lock().await;
        let publisher = request.target.publisher().ok_or_else(|| bad("target must be <publisher>/<file>"))?;
        let file = self
            .db
            .file_by_target_path(request.target.as_str())
            .await?
            .ok_or_else(|| bad(format!("unknown target {}", request.target)))?;
        let prefix_len = self.bin_prefix_len(&publisher).await?;
        let bin = publisher.bin_role(&ringfence_trust::paths::bin_prefix_of(request.target.as_str(), prefix_len));
        let signed_entry = self
            .latest::<Targets>(bin.as_str())
            .await?
            .and_then(|b| b.signed.targets.get(request.target.as_str()).cloned())
            .ok_or_else(|| {
                Error::Conflict(format!("{} is not published yet: its publisher has not signed it", request.target))
            })?;
        let role = request.group.approval_role();
        let path = request.target.approval(&request.group).map_err(bad)?;
        let custom = ApprovalCustom {
            action: request.action,
            deadline: request.deadline.clone(),
            update_id: file.update_id.clone(),
            published_entry_sha256: writer::entry_digest(&signed_entry),
        };
        let custom = serde_json::to_value(&custom).map_err(Error::internal)?;
        let mut entry = signed_entry;
        entry.custom = Some(custom);
        let state = self
            .change_delegated(&role, now, move |t| {
                t.targets.insert(path.to_string(), entry);
                Ok(())
            })
            .await
            .map_err(|e| match e {
                Error::NotFound => bad(format!("unknown group {}", request.group)),
                other => other,
            })?;
        let detail = format!("{} for {} ({:?})", request.target, request.group, request.action);
        self.audit.record(actor, "approve", &detail, now).await?;
        Ok(state)
    }
}
