//! Automatic approval rules: updates that match a rule's products, classifications and
//! severities are approved for the rule's group, optionally only "N days after they succeeded
//! on group X with at most F % failures". A rule can only ask for what the server may do: for
//! a group whose approval role the online auto-approver key signs, the approval is published at
//! once; for any other group it is prepared as a pending version for the group's approvers.
//! A new revision of an update a rule approved (one that `supersedes` it) is approved by the
//! same rule. Every approval a rule makes names it: actor and reason `rule <id>`.

use std::collections::BTreeMap;
use std::sync::Arc;

use ringfence_proto::api::{ApprovalRequest, RuleInfo, RuleRequest, UpdateManifest};
use ringfence_proto::tuf::ApprovalAction;
use ringfence_store::{Database, RuleRecord};

use super::audit::Audit;
use super::error::{Error, Result};
use super::events::{Event, Events, PendingRole};
use super::repo::Repository;
use super::reports::Reports;

/// How far back the periodic pass looks for updates.
const RECENT_SECS: i64 = 90 * 86_400;
/// The most updates one pass considers.
const MAX_RECENT: u64 = 10_000;
/// The most rules kept.
const MAX_RULES: usize = 256;

pub struct Rules {
    db: Arc<dyn Database>,
    audit: Audit,
    events: Events,
}

/// Tell the group's approvers when an approval waits for them.
async fn pending_event(
    events: &Events,
    state: &ringfence_proto::api::RoleState,
    request: &ApprovalRequest,
    by: &str,
    now: i64,
) {
    if state.published {
        return;
    }
    events
        .emit(Event {
            group: request.group.to_string(),
            update: request.update.clone().unwrap_or_default(),
            action: request.action.as_str().to_owned(),
            pending: Some(PendingRole {
                role: state.role.to_string(),
                version: state.version,
                valid_signatures: state.valid_signatures,
                threshold: state.threshold,
            }),
            ..Event::new("approval_pending", by, now)
        })
        .await;
}

/// Whether `rule` matches the update's product, classification and severity.
pub fn matches(rule: &RuleRequest, m: &UpdateManifest) -> bool {
    (rule.publishers.is_empty() || rule.publishers.contains(&m.publisher))
        && (rule.products.is_empty() || rule.products.contains(&m.product))
        && (rule.classifications.is_empty() || rule.classifications.contains(&m.classification))
        && (rule.severities.is_empty() || rule.severities.contains(&m.severity))
}

/// Whether an update succeeded on a group of `devices`: at least half of them finished it
/// (installed or failed), and failures are at most `percent` of those that finished.
pub fn succeeded(installed: u64, failed: u64, devices: u64, percent: u8) -> bool {
    let finished = installed + failed;
    installed > 0
        && finished.saturating_mul(2) >= devices
        && failed.saturating_mul(100) <= u64::from(percent).saturating_mul(finished)
}

fn rule_name(id: &str) -> String {
    format!("rule {id}")
}

impl Rules {
    pub fn new(db: Arc<dyn Database>, audit: Audit, events: Events) -> Self {
        Self { db, audit, events }
    }

    /// Store a rule after checking it names groups top-level targets defines.
    pub async fn add(&self, repo: &Repository, rule: RuleRequest, actor: &str, now: i64) -> Result<RuleInfo> {
        let groups = repo.groups().await?;
        let known = |g: &ringfence_proto::GroupName| groups.iter().any(|x| &x.name == g);
        if !known(&rule.group) {
            return Err(Error::Invalid(format!("group: unknown group {}", rule.group)));
        }
        if rule.products.len() > 16 || rule.products.iter().any(|p| p.is_empty() || p.len() > 64) {
            return Err(Error::invalid("products: at most 16, each 1 to 64 characters"));
        }
        if rule.classifications.len() > 16 || rule.severities.len() > 16 {
            return Err(Error::invalid("classifications, severities: at most 16 each"));
        }
        if let Some(after) = &rule.after {
            if !known(&after.group) || after.group == rule.group {
                return Err(Error::invalid("after.group: another group top-level targets defines"));
            }
            if after.days > 365 || after.max_failure_percent > 100 {
                return Err(Error::invalid("after: days 0 to 365, max_failure_percent 0 to 100"));
            }
        }
        if rule.deadline_days.is_some_and(|d| d > 365) {
            return Err(Error::invalid("deadline_days: 0 to 365"));
        }
        if self.db.list_rules().await?.len() >= MAX_RULES {
            return Err(Error::Conflict(format!("at most {MAX_RULES} rules")));
        }
        let id = super::devices::random_hex(8);
        let body = serde_json::to_string(&rule).map_err(Error::internal)?;
        self.db.insert_rule(&RuleRecord { id: id.clone(), body: body.clone(), created_at: now }).await?;
        self.audit.record(actor, "rule", &format!("added rule {id}: {body}"), now).await?;
        Ok(RuleInfo { id, rule, created_at: now })
    }

    pub async fn list(&self) -> Result<Vec<RuleInfo>> {
        let mut out = Vec::new();
        for r in self.db.list_rules().await? {
            let rule: RuleRequest = serde_json::from_str(&r.body).map_err(Error::internal)?;
            out.push(RuleInfo { id: r.id, rule, created_at: r.created_at });
        }
        Ok(out)
    }

    pub async fn remove(&self, id: &str, actor: &str, now: i64) -> Result<()> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::NotFound);
        }
        self.db.delete_rule(id).await?;
        self.audit.record(actor, "rule", &format!("removed rule {id}"), now).await
    }

    /// Whether `group` already approves the update, or has it in the version waiting for
    /// signatures (which a second approval would reset).
    async fn already(&self, repo: &Repository, group: &ringfence_proto::GroupName, update: &str) -> Result<bool> {
        let has =
            |m: &BTreeMap<String, ringfence_proto::tuf::ApprovalCustom>| m.values().any(|a| a.update_id == update);
        if has(&repo.approvals_of(group).await?) {
            return Ok(true);
        }
        Ok(repo.pending_approvals_of(group).await?.is_some_and(|m| has(&m)))
    }

    /// Whether `rule` approved (in its group, as published) an update `m` supersedes.
    async fn revision_of_rule_approved(
        &self,
        repo: &Repository,
        id: &str,
        rule: &RuleRequest,
        m: &UpdateManifest,
    ) -> Result<bool> {
        if m.supersedes.is_empty() {
            return Ok(false);
        }
        let reason = rule_name(id);
        let approvals = repo.approvals_of(&rule.group).await?;
        let superseded_by_rule = approvals.values().any(|a| {
            a.action == ApprovalAction::Install
                && a.reason.as_deref() == Some(reason.as_str())
                && m.supersedes.contains(&a.update_id)
        });
        // Still only from the rule's publishers, if it names any.
        Ok(superseded_by_rule && (rule.publishers.is_empty() || rule.publishers.contains(&m.publisher)))
    }

    async fn approve(&self, repo: &Repository, id: &str, rule: &RuleRequest, update: &str, now: i64) -> Result<bool> {
        let deadline = rule.deadline_days.map(|d| ringfence_trust::expiry::format(now + i64::from(d) * 86_400));
        let request = ApprovalRequest {
            group: rule.group.clone(),
            update: Some(update.to_owned()),
            target: None,
            action: ApprovalAction::Install,
            deadline,
            reason: Some(rule_name(id)),
            rollout: None,
        };
        match repo.approve(request.clone(), &rule_name(id), now).await {
            Ok(state) => {
                pending_event(&self.events, &state, &request, &rule_name(id), now).await;
                tracing::info!(rule = id, update, group = %rule.group, published = state.published, "rule approved");
                Ok(true)
            }
            // Not signed by its publisher yet: a later pass approves it.
            Err(Error::Conflict(why)) => {
                tracing::debug!(rule = id, update, %why, "rule cannot approve yet");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// One pass over recent updates: every rule approves what it matches, rules with a
    /// condition on another group once it has held for their days. Returns the approvals made.
    pub async fn run(&self, repo: &Repository, reports: &Reports, now: i64) -> Result<usize> {
        let rules = self.list().await?;
        if rules.is_empty() {
            return Ok(0);
        }
        let mut made = 0;
        let updates = self.db.updates_since(now - RECENT_SECS, MAX_RECENT).await?;
        // The other groups' figures, per group: by update, and the group's device count.
        let mut seen: BTreeMap<String, (BTreeMap<String, Figures>, u64)> = BTreeMap::new();
        for update in &updates {
            let Ok(m) = serde_json::from_str::<UpdateManifest>(&update.manifest) else { continue };
            for info in &rules {
                // One rule or update that cannot be handled (a group removed since, say) does
                // not stop the others.
                match self.apply(repo, reports, info, &m, &mut seen, now).await {
                    Ok(true) => made += 1,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(rule = info.id, update = m.id, error = %super::error::chain(&e), "rule"),
                }
            }
        }
        Ok(made)
    }

    /// One rule on one update: whether it approved it now.
    async fn apply(
        &self,
        repo: &Repository,
        reports: &Reports,
        info: &RuleInfo,
        m: &UpdateManifest,
        seen: &mut BTreeMap<String, (BTreeMap<String, Figures>, u64)>,
        now: i64,
    ) -> Result<bool> {
        let (id, rule) = (&info.id, &info.rule);
        let wanted = matches(rule, m) || self.revision_of_rule_approved(repo, id, rule, m).await?;
        if !wanted || self.already(repo, &rule.group, &m.id).await? {
            return Ok(false);
        }
        if let Some(after) = &rule.after {
            if !seen.contains_key(after.group.as_str()) {
                seen.insert(after.group.to_string(), outcomes(reports, repo, &after.group).await?);
            }
            let (installed, failed, devices) = match seen.get(after.group.as_str()) {
                Some((by_update, devices)) => {
                    let f = by_update.get(&m.id).copied().unwrap_or_default();
                    (f.installed, f.failed, *devices)
                }
                None => (0, 0, 0),
            };
            if !succeeded(installed, failed, devices, after.max_failure_percent) {
                // The days count from a success that still holds.
                self.db.clear_rule_progress(id, &m.id).await?;
                return Ok(false);
            }
            let since = match self.db.rule_progress(id, &m.id).await? {
                Some(since) => since,
                None => {
                    self.db.set_rule_progress(id, &m.id, now).await?;
                    now
                }
            };
            if now - since < i64::from(after.days) * 86_400 {
                return Ok(false);
            }
        }
        self.approve(repo, id, rule, &m.id, now).await
    }
}

/// An update's figures in a group, summed over its files the group approves for install.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub installed: u64,
    pub needed: u64,
    pub failed: u64,
    pub no_status: u64,
}

/// Per update, the group's figures (only files the group approves for install count: reports
/// on anything else say nothing about this group's approval), and the group's device count.
async fn outcomes(
    reports: &Reports,
    repo: &Repository,
    group: &ringfence_proto::GroupName,
) -> Result<(BTreeMap<String, Figures>, u64)> {
    let mut by_update: BTreeMap<String, Figures> = BTreeMap::new();
    let report = reports.compliance(repo, group, "", u64::MAX).await?;
    for row in report.rows {
        if row.action != Some(ApprovalAction::Install) {
            continue;
        }
        if let Some(u) = row.update_id {
            let e = by_update.entry(u).or_default();
            e.installed += row.installed;
            e.needed += row.needed;
            e.failed += row.failed;
            e.no_status += row.no_status;
        }
    }
    Ok((by_update, report.devices))
}

/// Whether the superseded update `old` may be declined in a group where `new` supersedes it:
/// every device of the group reported on `new` and none still needs it or failed it, it is
/// installed on at least as many devices as had `old` installed or needed, and no device still
/// needs `old`.
pub fn may_decline(new: Figures, old: Figures) -> bool {
    new.installed > 0
        && new.needed == 0
        && new.failed == 0
        && new.no_status == 0
        && new.installed >= old.installed + old.needed
        && old.needed == 0
}

impl Rules {
    /// Decline, in every group, the updates a newer approved update supersedes, once the
    /// newer one is done ([`may_decline`]). Published at once where the server signs the
    /// group's approvals, prepared for its approvers otherwise. Returns the declines made.
    pub async fn decline_superseded(&self, repo: &Repository, reports: &Reports, now: i64) -> Result<usize> {
        let mut made = 0;
        for group in repo.groups().await? {
            let approvals = repo.approvals_of(&group.name).await?;
            let installing: std::collections::BTreeSet<&str> = approvals
                .values()
                .filter(|a| a.action == ApprovalAction::Install)
                .map(|a| a.update_id.as_str())
                .collect();
            if installing.len() < 2 {
                continue;
            }
            let pending = repo.pending_approvals_of(&group.name).await?.unwrap_or_default();
            let mut figures: Option<BTreeMap<String, Figures>> = None;
            for new in &installing {
                let Some(record) = self.db.update(new).await? else { continue };
                let Ok(m) = serde_json::from_str::<UpdateManifest>(&record.manifest) else { continue };
                // Only a publisher's own updates supersede each other (the server checks this
                // at publish; checked again here for updates published before).
                for old in m.supersedes.iter().filter(|o| installing.contains(o.as_str())) {
                    let same_publisher =
                        self.db.update(old).await?.is_some_and(|o| o.publisher == m.publisher.as_str());
                    if !same_publisher {
                        continue;
                    }
                    let declining =
                        pending.values().any(|a| &a.update_id == old && a.action == ApprovalAction::Decline);
                    if declining {
                        continue;
                    }
                    if figures.is_none() {
                        figures = Some(outcomes(reports, repo, &group.name).await?.0);
                    }
                    let get = |u: &str| figures.as_ref().and_then(|f| f.get(u)).copied().unwrap_or_default();
                    if !may_decline(get(new), get(old)) {
                        continue;
                    }
                    let request = ApprovalRequest {
                        group: group.name.clone(),
                        update: Some(old.clone()),
                        target: None,
                        action: ApprovalAction::Decline,
                        deadline: None,
                        reason: Some(format!("superseded by {new}")),
                        rollout: None,
                    };
                    let state = repo.approve(request.clone(), "supersedence", now).await?;
                    pending_event(&self.events, &state, &request, "supersedence", now).await;
                    tracing::info!(group = %group.name, old, new, published = state.published, "declined a superseded update");
                    made += 1;
                }
            }
        }
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use ringfence_proto::api::{Classification, Severity};

    use super::*;

    #[test]
    fn a_superseded_update_is_declined_only_when_nothing_needs_it() {
        let f = |installed, needed, failed, no_status| Figures { installed, needed, failed, no_status };
        assert!(may_decline(f(10, 0, 0, 0), f(3, 0, 0, 7)));
        assert!(!may_decline(f(0, 0, 0, 10), f(3, 0, 0, 7)), "the new one installed nowhere yet");
        assert!(!may_decline(f(9, 1, 0, 0), f(3, 0, 0, 7)), "the new one still on its way somewhere");
        assert!(!may_decline(f(9, 0, 1, 0), f(3, 0, 0, 7)), "the new one failed somewhere");
        assert!(!may_decline(f(9, 0, 0, 1), f(3, 0, 0, 7)), "a device has not reported on the new one");
        assert!(!may_decline(f(10, 0, 0, 0), f(3, 2, 0, 5)), "a device still needs the old one");
        assert!(!may_decline(f(2, 0, 0, 0), f(3, 0, 0, 0)), "fewer have the new one than had the old");
        assert!(may_decline(f(10, 0, 0, 0), f(0, 0, 4, 6)), "the old one failing does not keep it");
    }

    #[test]
    fn success_allows_at_most_the_failure_share_of_at_least_half_the_group() {
        assert!(!succeeded(0, 0, 0, 100), "nothing installed is no success");
        assert!(succeeded(95, 5, 100, 5));
        assert!(!succeeded(94, 6, 100, 5));
        assert!(succeeded(1, 0, 1, 0));
        assert!(!succeeded(1, 1, 2, 0));
        assert!(!succeeded(1, 0, 3, 100), "one of three devices is not half the group");
        assert!(succeeded(2, 0, 4, 0));
    }

    #[test]
    fn empty_lists_match_anything_and_each_list_narrows() {
        let mut m: UpdateManifest = serde_json::from_value(serde_json::json!({
            "id": "kb-1", "publisher": "acme", "title": "t", "product": "os", "classification": "security",
            "severity": "critical", "release_date": "2026-11-26",
            "installer": {"module": "file", "arguments": []}, "files": []
        }))
        .unwrap();
        let any = RuleRequest {
            group: ringfence_proto::GroupName::parse("pilot").unwrap(),
            publishers: vec![],
            products: vec![],
            classifications: vec![],
            severities: vec![],
            after: None,
            deadline_days: None,
        };
        assert!(matches(&any, &m));
        let security = RuleRequest { classifications: vec![Classification::Security], ..any.clone() };
        assert!(matches(&security, &m));
        let critical_tools = RuleRequest {
            classifications: vec![Classification::Tool],
            severities: vec![Severity::Critical],
            ..any.clone()
        };
        assert!(!matches(&critical_tools, &m));
        m.product = "office".into();
        assert!(!matches(&RuleRequest { products: vec!["os".into()], ..any.clone() }, &m));
        let globex = ringfence_proto::PublisherName::parse("globex").unwrap();
        assert!(!matches(&RuleRequest { publishers: vec![globex], ..any }, &m));
    }
}
