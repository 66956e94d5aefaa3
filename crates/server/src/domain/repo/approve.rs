//! Approvals: a new version of a group's approval role that pins what the publisher signed,
//! and withdrawals, which take entries out of it. Every file of a request goes into one
//! version, and requests made while a version is pending join it (one signing round).

use ringfence_proto::api::{ApprovalRequest, ApprovalSubject, GroupInfo, MAX_REASON, RoleState, WithdrawalRequest};
use ringfence_proto::tuf::{ApprovalCustom, TargetFile, Targets};
use std::collections::BTreeMap;

use ringfence_proto::{GroupName, TargetPath};
use ringfence_trust::{expiry, writer};

use super::{Repository, bad};
use crate::domain::error::{Error, Result};

impl Repository {
    /// The computer groups top-level targets defines: parent, approvers, threshold, and
    /// whether the server's online keys may approve for it.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>> {
        let Some(top) = self.latest::<Targets>("targets").await? else { return Ok(Vec::new()) };
        let Some(delegations) = &top.signed.delegations else { return Ok(Vec::new()) };
        let online = self.delegated_signers();
        let auto: std::collections::BTreeSet<&str> = delegations
            .roles
            .iter()
            .filter(|d| {
                let online_count = d.keyids.iter().filter(|id| online.contains_key(*id)).count() as u64;
                d.threshold > 0 && online_count >= d.threshold
            })
            .map(|d| d.name.as_str())
            .collect();
        let mut out = Vec::new();
        for d in &delegations.roles {
            let Some(name) = d.name.strip_prefix("approvals.").and_then(|g| GroupName::parse(g).ok()) else { continue };
            let inherits_auto_approval_from = ringfence_trust::policy::lineage(&top.signed, &name)
                .into_iter()
                .skip(1)
                .find(|ancestor| auto.contains(ancestor.approval_role().as_str()));
            let windows = self
                .latest::<Targets>(name.approval_role().as_str())
                .await?
                .and_then(|role| role.signed.windows)
                .unwrap_or_default();
            out.push(GroupInfo {
                windows,
                parent: d.parent.as_deref().and_then(|p| GroupName::parse(p).ok()),
                approvers: d.keyids.clone(),
                threshold: d.threshold,
                auto_approve: auto.contains(d.name.as_str()),
                inherits_auto_approval_from,
                name,
            });
        }
        Ok(out)
    }

    /// `groups` and every ancestor top-level targets gives them: whose approvals a device of
    /// those groups follows.
    pub async fn followed_groups(&self, groups: &[String]) -> Result<std::collections::BTreeSet<String>> {
        let top = self.latest::<Targets>("targets").await?;
        let mut out = std::collections::BTreeSet::new();
        for g in groups {
            let Ok(group) = GroupName::parse(g) else { continue };
            match &top {
                Some(top) => {
                    out.extend(ringfence_trust::policy::lineage(&top.signed, &group).iter().map(|g| g.to_string()))
                }
                None => {
                    out.insert(group.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Set a group's maintenance windows (none: install any time): a new version of its
    /// approval role, for its approvers to sign unless the server signs for the group.
    pub async fn set_windows(
        &self,
        group: &GroupName,
        windows: Vec<ringfence_proto::tuf::Window>,
        actor: &str,
        now: i64,
    ) -> Result<RoleState> {
        // A mirror keeps only what its imports verified.
        self.online_keys()?;
        ringfence_trust::windows::check_all(&windows).map_err(|e| bad(format!("windows: {e}")))?;
        let _guard = self.exclusive().await?;
        let detail = if windows.is_empty() {
            format!("no maintenance windows for {group}")
        } else {
            let texts: Vec<String> =
                windows.iter().map(|w| format!("{} {}-{} {}", w.days.join(","), w.start, w.end, w.tz)).collect();
            format!("maintenance windows for {group}: {}", texts.join("; "))
        };
        let state = self
            .change_delegated(&group.approval_role(), now, move |t| {
                t.windows = if windows.is_empty() { None } else { Some(windows) };
                Ok(())
            })
            .await
            .map_err(|e| unknown_group(e, group))?;
        self.audit.record(actor, "windows", &detail, now).await?;
        Ok(state)
    }

    /// The published approvals of `group`: per published path, the approval's fields.
    pub async fn approvals_of(&self, group: &GroupName) -> Result<BTreeMap<String, ApprovalCustom>> {
        let Some(role) = self.latest::<Targets>(group.approval_role().as_str()).await? else {
            return Ok(BTreeMap::new());
        };
        Ok(approval_fields(role.signed))
    }

    /// The approvals of `group`'s version waiting for signatures, if there is one.
    pub async fn pending_approvals_of(&self, group: &GroupName) -> Result<Option<BTreeMap<String, ApprovalCustom>>> {
        let Some(pending) = self.db.pending(group.approval_role().as_str()).await? else { return Ok(None) };
        Ok(Some(approval_fields(super::parse::<Targets>(&pending.bytes)?.signed)))
    }

    /// The published paths an approval or withdrawal is about.
    async fn subject_paths(&self, subject: &ApprovalSubject) -> Result<Vec<TargetPath>> {
        match subject {
            ApprovalSubject::Target(path) => {
                self.db
                    .file_by_target_path(path.as_str())
                    .await?
                    .ok_or_else(|| bad(format!("unknown target {path}")))?;
                Ok(vec![path.clone()])
            }
            ApprovalSubject::Update(id) => {
                let files = self.db.update_files(id).await?;
                if files.is_empty() {
                    return Err(bad(format!("unknown update {id}")));
                }
                files.iter().map(|f| TargetPath::parse(&f.target_path).map_err(Error::internal)).collect()
            }
        }
    }

    /// The entry the publisher signed for `path`, as published now.
    async fn signed_entry(&self, path: &TargetPath) -> Result<TargetFile> {
        let publisher = path.publisher().ok_or_else(|| bad("target must be <publisher>/<file>"))?;
        let prefix_len = self.bin_prefix_len(&publisher).await?;
        let bin = publisher.bin_role(&ringfence_trust::paths::bin_prefix_of(path.as_str(), prefix_len));
        self.latest::<Targets>(bin.as_str())
            .await?
            .and_then(|b| b.signed.targets.get(path.as_str()).cloned())
            .ok_or_else(|| Error::Conflict(format!("{path} is not published yet: its publisher has not signed it")))
    }

    /// Propose an approval: the group's approval role gets, for every file of the update (or
    /// the one target), an entry with the length and hashes the publisher signed and the
    /// digest of the publisher's whole entry, plus the action, deadline and reason.
    pub async fn approve(&self, request: ApprovalRequest, actor: &str, now: i64) -> Result<RoleState> {
        // A mirror keeps only what its imports verified.
        self.online_keys()?;
        if let Some(deadline) = &request.deadline {
            expiry::parse(deadline).map_err(bad)?;
        }
        if let Some(reason) = &request.reason {
            let printable = reason.chars().all(|c| !c.is_control());
            if reason.is_empty() || reason.chars().count() > MAX_REASON || !printable {
                return Err(bad(format!("reason: 1 to {MAX_REASON} printable characters")));
            }
        }
        if let Some(stages) = &request.rollout {
            if request.action != ringfence_proto::tuf::ApprovalAction::Install {
                return Err(bad("rollout: only an install is rolled out in stages"));
            }
            ringfence_trust::rollout::check(stages).map_err(bad)?;
        }
        let subject = request.subject().map_err(bad)?;
        let _guard = self.exclusive().await?;
        let mut entries = Vec::new();
        for path in self.subject_paths(&subject).await? {
            let file = self
                .db
                .file_by_target_path(path.as_str())
                .await?
                .ok_or_else(|| bad(format!("unknown target {path}")))?;
            let signed_entry = self.signed_entry(&path).await?;
            let custom = ApprovalCustom {
                action: request.action,
                deadline: request.deadline.clone(),
                reason: request.reason.clone(),
                rollout: request.rollout.clone(),
                update_id: file.update_id.clone(),
                published_entry_sha256: writer::entry_digest(&signed_entry),
            };
            let mut entry = signed_entry;
            entry.custom = Some(serde_json::to_value(&custom).map_err(Error::internal)?);
            entries.push((path.approval(&request.group).map_err(bad)?, entry));
        }
        let count = entries.len();
        let state = self
            .change_delegated(&request.group.approval_role(), now, move |t| {
                for (path, entry) in entries {
                    t.targets.insert(path.to_string(), entry);
                }
                Ok(())
            })
            .await
            .map_err(|e| unknown_group(e, &request.group))?;
        let what = describe(&subject, count);
        let mut detail = format!("{} {what} for {}", request.action.as_str(), request.group);
        if let Some(deadline) = &request.deadline {
            detail.push_str(&format!(" by {deadline}"));
        }
        if let Some(reason) = &request.reason {
            detail.push_str(&format!(" ({reason})"));
        }
        self.audit.record(actor, "approve", &detail, now).await?;
        Ok(state)
    }

    /// Take approvals back: the group's approval role loses the entries of the update (or the
    /// one target). `Conflict` when the group has none of them.
    pub async fn withdraw(&self, request: WithdrawalRequest, actor: &str, now: i64) -> Result<RoleState> {
        // A mirror keeps only what its imports verified.
        self.online_keys()?;
        let subject = request.subject().map_err(bad)?;
        let _guard = self.exclusive().await?;
        let paths: Vec<String> = self
            .subject_paths(&subject)
            .await?
            .iter()
            .map(|p| p.approval(&request.group).map(|a| a.to_string()).map_err(bad))
            .collect::<Result<_>>()?;
        let group = request.group.clone();
        let state = self
            .change_delegated(&request.group.approval_role(), now, move |t| {
                let before = t.targets.len();
                t.targets.retain(|path, _| !paths.contains(path));
                if t.targets.len() == before {
                    return Err(Error::Conflict(format!("group {group} has no approval of it to withdraw")));
                }
                Ok(())
            })
            .await
            .map_err(|e| unknown_group(e, &request.group))?;
        let detail = format!("{} for {}", describe(&subject, 0), request.group);
        self.audit.record(actor, "withdraw", &detail, now).await?;
        Ok(state)
    }
}

/// Per published path, the fields of each approval entry of an approval role.
fn approval_fields(role: Targets) -> BTreeMap<String, ApprovalCustom> {
    let mut out = BTreeMap::new();
    for (path, entry) in role.targets {
        let Some(published) = TargetPath::parse(&path).ok().and_then(|p| p.split_approval()).map(|(_, p)| p) else {
            continue;
        };
        let Some(custom) = entry.custom else { continue };
        if let Ok(custom) = serde_json::from_value::<ApprovalCustom>(custom) {
            out.insert(published.to_string(), custom);
        }
    }
    out
}

fn unknown_group(e: Error, group: &GroupName) -> Error {
    match e {
        Error::NotFound => bad(format!("unknown group {group}")),
        other => other,
    }
}

fn describe(subject: &ApprovalSubject, files: usize) -> String {
    match subject {
        ApprovalSubject::Update(id) if files > 0 => format!("update {id} ({files} file(s))"),
        ApprovalSubject::Update(id) => format!("update {id}"),
        ApprovalSubject::Target(path) => path.to_string(),
    }
}
