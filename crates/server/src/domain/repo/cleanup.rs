//! Content a cleanup may remove: uploads never published (after a day's grace), and the
//! files of updates that groups decline and none approves for install or uninstall. The
//! publisher-signed metadata keeps listing such files; the device listener then answers
//! `404` for them, which no approval asks for.

use std::collections::BTreeSet;

use ringfence_proto::api::RemovedContent;
use ringfence_proto::tuf::ApprovalAction;

use super::Repository;
use crate::domain::error::Result;

/// Uploads younger than this are never removed (a publish may be on its way).
const ORPHAN_GRACE_SECS: i64 = 86_400;
/// The most content one cleanup lists.
const MAX_LISTED: u64 = 10_000;

impl Repository {
    /// What a cleanup at `now` would remove from the content store.
    pub async fn removable_content(&self, now: i64) -> Result<Vec<RemovedContent>> {
        // A mirror keeps only what its imports verified.
        self.online_keys()?;
        let mut out: Vec<RemovedContent> = self
            .db
            .orphan_blobs(now - ORPHAN_GRACE_SECS, MAX_LISTED)
            .await?
            .into_iter()
            .map(|b| RemovedContent { sha256: b.sha256, length: b.length, reason: "uploaded, never published".into() })
            .collect();
        let mut active = BTreeSet::new();
        let mut declined = BTreeSet::new();
        for group in self.groups().await? {
            let published = self.approvals_of(&group.name).await?;
            let pending = self.pending_approvals_of(&group.name).await?.unwrap_or_default();
            for approval in published.values().chain(pending.values()) {
                match approval.action {
                    ApprovalAction::Decline => declined.insert(approval.update_id.clone()),
                    ApprovalAction::Install | ApprovalAction::Uninstall => active.insert(approval.update_id.clone()),
                };
            }
        }
        let only_declined: Vec<String> = declined.difference(&active).cloned().collect();
        if !only_declined.is_empty() {
            let reason = format!("only in updates declined where approved: {}", only_declined.join(", "));
            for b in self.db.blobs_only_of(&only_declined).await? {
                out.push(RemovedContent { sha256: b.sha256, length: b.length, reason: reason.clone() });
            }
        }
        Ok(out)
    }

    /// Remove content from the store (its file, then its record).
    pub async fn remove_content(&self, sha256: &str) -> Result<()> {
        // A mirror keeps only what its imports verified.
        self.online_keys()?;
        self.blobs.delete(sha256).await?;
        Ok(self.db.delete_blob_record(sha256).await?)
    }
}
