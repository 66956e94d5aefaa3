//! Reports for the people who must show what the fleet runs: compliance per group and
//! approved file, and where a CVE stands (devices not seen for a while: `Devices::stale`). Read from the aggregates
//! the store keeps as reports arrive (`ringfence_store::ComplianceStore`): no report scans
//! the fleet.
//!
//! A group's figures count its own devices and its descendants' (they follow its approvals
//! unless they override them); a device enrolled in two groups of one subtree counts twice.
//! Devices report under the approval that governs them, so an inherited approval's reports
//! are the ancestor's.

use std::collections::BTreeMap;
use std::sync::Arc;

use ringfence_proto::api::{ComplianceReport, ComplianceRow, CveGroup, CveReport, ExposedDevice, GroupInfo};
use ringfence_proto::tuf::ApprovalAction;
use ringfence_proto::{GroupName, TargetPath};
use ringfence_store::{Bucket, Database};

use super::error::{Error, Result};
use super::repo::Repository;

pub struct Reports {
    db: Arc<dyn Database>,
}

/// `group` and every group below it.
fn subtree(groups: &[GroupInfo], group: &GroupName) -> Vec<String> {
    let mut out = vec![group.to_string()];
    let mut at = 0;
    while let Some(current) = out.get(at).cloned() {
        for g in groups {
            if g.parent.as_ref().is_some_and(|p| p.as_str() == current) && !out.contains(&g.name.to_string()) {
                out.push(g.name.to_string());
            }
        }
        at += 1;
    }
    out
}

impl Reports {
    pub fn new(db: Arc<dyn Database>) -> Self {
        Self { db }
    }

    async fn devices_below(&self, groups: &[GroupInfo], group: &GroupName) -> Result<u64> {
        Ok(self.db.group_devices(&subtree(groups, group)).await?.values().sum())
    }

    /// One page (by published path, after `after`, at most `limit`) of `group`'s compliance:
    /// every file it approves, and every file its devices reported on under its approvals.
    pub async fn compliance(
        &self,
        repo: &Repository,
        group: &GroupName,
        after: &str,
        limit: u64,
    ) -> Result<ComplianceReport> {
        let groups = repo.groups().await?;
        if !groups.iter().any(|g| &g.name == group) {
            return Err(Error::NotFound);
        }
        let devices = self.devices_below(&groups, group).await?;
        let approvals = repo.approvals_of(group).await?;
        let prefix = format!("approvals/{group}/");
        let counted = self.db.compliance_by_prefix(&prefix).await?;
        let mut rows: BTreeMap<String, ComplianceRow> = BTreeMap::new();
        let empty = |target: TargetPath| ComplianceRow {
            target,
            update_id: None,
            action: None,
            deadline: None,
            installed: 0,
            needed: 0,
            failed: 0,
            not_applicable: 0,
            uninstalled: 0,
            no_status: 0,
        };
        for (path, approval) in &approvals {
            let target = TargetPath::parse(path).map_err(Error::internal)?;
            let row = rows.entry(path.clone()).or_insert_with(|| empty(target));
            row.update_id = Some(approval.update_id.clone());
            row.action = Some(approval.action);
            row.deadline = approval.deadline.clone();
        }
        for t in counted {
            let Some(path) = t.target.strip_prefix(&prefix) else { continue };
            let Ok(target) = TargetPath::parse(path) else { continue };
            let row = rows.entry(path.to_owned()).or_insert_with(|| empty(target));
            if row.update_id.is_none() {
                row.update_id = t.update_id.clone();
            }
            for (bucket, n) in t.counts {
                let slot = match bucket {
                    Bucket::Installed => &mut row.installed,
                    Bucket::Needed => &mut row.needed,
                    Bucket::Failed => &mut row.failed,
                    Bucket::NotApplicable => &mut row.not_applicable,
                    Bucket::Uninstalled => &mut row.uninstalled,
                };
                *slot = n;
            }
        }
        let page = rows
            .into_iter()
            .filter(|(path, _)| path.as_str() > after)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(_, mut row)| {
                let reported = row.installed + row.needed + row.failed + row.not_applicable + row.uninstalled;
                row.no_status = devices.saturating_sub(reported);
                row
            })
            .collect();
        Ok(ComplianceReport { group: group.clone(), devices, rows: page })
    }

    /// Where `cve` stands: the updates that fix it, per group whether one is approved for
    /// install and how many devices installed it, and a page of devices still exposed (their
    /// newest report on a fixing file is neither installed nor not applicable), by device id,
    /// each with every fixing file it is exposed on.
    pub async fn cve(&self, repo: &Repository, cve: &str, after: &str, limit: u64) -> Result<CveReport> {
        let updates = self.db.updates_fixing(cve).await?;
        let mut published = Vec::new();
        for update in &updates {
            published.extend(self.db.update_files(update).await?.into_iter().map(|f| f.target_path));
        }
        let groups = repo.groups().await?;
        let mut per_group = Vec::new();
        let mut targets = Vec::new();
        for g in &groups {
            let approvals = repo.approvals_of(&g.name).await?;
            let approved =
                published.iter().any(|p| approvals.get(p).is_some_and(|a| a.action == ApprovalAction::Install));
            let prefix = format!("approvals/{}/", g.name);
            let mut installed = 0;
            for t in self.db.compliance_by_prefix(&prefix).await? {
                let fixing = t.target.strip_prefix(&prefix).is_some_and(|p| published.iter().any(|f| f == p));
                if fixing {
                    installed += t.counts.get(&Bucket::Installed).copied().unwrap_or(0);
                }
            }
            targets.extend(published.iter().map(|p| format!("{prefix}{p}")));
            let devices = self.devices_below(&groups, &g.name).await?;
            per_group.push(CveGroup { group: g.name.clone(), approved, installed, devices });
        }
        let exposed = self
            .db
            .devices_not_done(&targets, after, limit)
            .await?
            .into_iter()
            .map(|d| ExposedDevice {
                device_id: d.device_id,
                hostname: d.hostname,
                target: d.target,
                state: d.state,
                at: d.at,
            })
            .collect();
        Ok(CveReport { cve: cve.to_owned(), updates, groups: per_group, exposed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, parent: Option<&str>) -> GroupInfo {
        GroupInfo {
            name: GroupName::parse(name).unwrap(),
            parent: parent.map(|p| GroupName::parse(p).unwrap()),
            approvers: Vec::new(),
            threshold: 1,
            auto_approve: false,
            inherits_auto_approval_from: None,
            windows: Vec::new(),
        }
    }

    #[test]
    fn a_subtree_is_the_group_and_everything_below_it() {
        let groups =
            [group("all", None), group("eu", Some("all")), group("eu-web", Some("eu")), group("us", Some("all"))];
        let mut below = subtree(&groups, &GroupName::parse("eu").unwrap());
        below.sort();
        assert_eq!(below, ["eu", "eu-web"]);
        assert_eq!(subtree(&groups, &GroupName::parse("all").unwrap()).len(), 4);
        assert_eq!(subtree(&groups, &GroupName::parse("us").unwrap()), ["us"]);
    }
}
