//! Rollouts the server runs on top of approvals. The approvers' signed schedule (stages) is the
//! most a rollout may reach; the server can only hold it back: pause, stop, or halt by itself
//! when failures pass a count or a share, a device stuck on its way past a timeout counting as
//! failed. What it holds to is published signed (`Repository::publish_holds`) and agents take
//! the smaller of that and the approvers' schedule.

use std::collections::BTreeMap;
use std::sync::Arc;

use ringfence_proto::GroupName;
use ringfence_proto::api::{RolloutStatus, StartRollout};
use ringfence_proto::tuf::ApprovalAction;
use ringfence_store::{Bucket, Database, RolloutRecord};

use super::audit::Audit;
use super::error::{Error, Result};
use super::events::{Event, Events};
use super::repo::Repository;

/// Whether a rollout halts: more failed (or stuck) devices than allowed, or a larger share of
/// those that finished or got stuck.
pub fn must_halt(failed: u64, stuck: u64, installed: u64, max_failures: u64, max_percent: u8) -> bool {
    let bad = failed + stuck;
    let seen = installed + bad;
    bad > max_failures || (seen > 0 && bad.saturating_mul(100) > u64::from(max_percent).saturating_mul(seen))
}

pub struct Rollouts {
    db: Arc<dyn Database>,
    audit: Audit,
    events: Events,
    /// One change at a time: state changes and the holds document they publish stay in step.
    lock: tokio::sync::Mutex<()>,
}

impl Rollouts {
    pub fn new(db: Arc<dyn Database>, audit: Audit, events: Events) -> Self {
        Self { db, audit, events, lock: tokio::sync::Mutex::new(()) }
    }

    /// The share the approvers' schedule of `group`'s approval of `update` allows at `now`:
    /// 100 without a schedule, 0 when the group does not approve it for install.
    async fn approved_share(&self, repo: &Repository, group: &GroupName, update: &str, now: i64) -> Result<u8> {
        let approvals = repo.approvals_of(group).await?;
        let mut share = None;
        for a in approvals.values().filter(|a| a.update_id == update && a.action == ApprovalAction::Install) {
            let s = a.rollout.as_deref().map_or(100, |stages| ringfence_trust::rollout::share(stages, now));
            share = Some(share.map_or(s, |x: u8| x.min(s)));
        }
        Ok(share.unwrap_or(0))
    }

    /// The group's approval paths of the update.
    async fn targets(&self, group: &GroupName, update: &str) -> Result<Vec<String>> {
        Ok(self
            .db
            .update_files(update)
            .await?
            .into_iter()
            .map(|f| format!("approvals/{group}/{}", f.target_path))
            .collect())
    }

    pub async fn start(
        &self,
        repo: &Repository,
        request: StartRollout,
        actor: &str,
        now: i64,
    ) -> Result<RolloutStatus> {
        if self.db.update(&request.update).await?.is_none() {
            return Err(Error::Invalid(format!("update: no update {}", request.update)));
        }
        if !repo.groups().await?.iter().any(|g| g.name == request.group) {
            return Err(Error::Invalid(format!("group: unknown group {}", request.group)));
        }
        let pct = request.max_failure_percent.unwrap_or(5);
        if pct > 100 || request.stuck_hours.is_some_and(|h| h == 0 || h > 24 * 30) {
            return Err(Error::invalid("max_failure_percent: 0 to 100; stuck_hours: 1 to 720"));
        }
        if request.max_failures.is_some_and(|n| n > 1_000_000_000) {
            return Err(Error::invalid("max_failures: 0 to 1000000000"));
        }
        let _one = self.lock.lock().await;
        let record = RolloutRecord {
            group: request.group.to_string(),
            update_id: request.update.clone(),
            state: "running".into(),
            hold: 100,
            max_failures: request.max_failures.unwrap_or(1_000_000_000),
            max_failure_percent: pct,
            stuck_secs: u64::from(request.stuck_hours.unwrap_or(24)) * 3600,
            reason: "started".into(),
            started_at: now,
            changed_at: now,
        };
        self.db.insert_rollout(&record).await?;
        self.audit.record(actor, "rollout", &format!("started {} in {}", request.update, request.group), now).await?;
        self.publish(repo, now).await?;
        self.status_of(repo, &record, now).await
    }

    /// Pause, resume, or stop. Paused, halted and stopped rollouts hold at none: no device that
    /// has not installed yet starts; a resumed one counts its failures afresh.
    pub async fn act(
        &self,
        repo: &Repository,
        group: &GroupName,
        update: &str,
        action: &str,
        actor: &str,
        now: i64,
    ) -> Result<RolloutStatus> {
        let _one = self.lock.lock().await;
        let record = self
            .db
            .rollouts()
            .await?
            .into_iter()
            .find(|r| r.group == group.as_str() && r.update_id == update)
            .ok_or(Error::NotFound)?;
        let (state, hold, reason) = match action {
            "pause" => ("paused", 0, format!("paused by {actor}")),
            "resume" => ("running", 100, format!("resumed by {actor}")),
            "stop" => ("stopped", 0, format!("stopped by {actor}")),
            _ => return Err(Error::NotFound),
        };
        if record.state == "stopped" && action != "stop" {
            return Err(Error::Conflict("a stopped rollout is started again, not resumed".into()));
        }
        self.db.set_rollout_state(group.as_str(), update, state, hold, &reason, now).await?;
        let mut record = record;
        if action == "resume" {
            // Failures before the resume were seen and acted on: counted afresh from now.
            self.db.restart_rollout_clock(group.as_str(), update, now).await?;
            record.started_at = now;
        }
        self.audit.record(actor, "rollout", &format!("{action} {update} in {group}"), now).await?;
        self.publish(repo, now).await?;
        let record = RolloutRecord { state: state.into(), hold, reason, changed_at: now, ..record };
        self.status_of(repo, &record, now).await
    }

    async fn status_of(&self, repo: &Repository, r: &RolloutRecord, now: i64) -> Result<RolloutStatus> {
        let group = GroupName::parse(&r.group).map_err(Error::internal)?;
        let approved_share = self.approved_share(repo, &group, &r.update_id, now).await?;
        let targets = self.targets(&group, &r.update_id).await?;
        // Reports since the rollout (re)started: a resume does not count old failures again.
        let mut counts: BTreeMap<Bucket, u64> = BTreeMap::new();
        for (state, n) in self.db.states_since(&targets, r.started_at).await? {
            *counts.entry(Bucket::of_state(&state)).or_insert(0) += n;
        }
        let stuck = self.db.stuck_devices(&targets, now - i64::try_from(r.stuck_secs).unwrap_or(i64::MAX)).await?;
        let get = |b: Bucket| counts.get(&b).copied().unwrap_or(0);
        let share = if r.state == "running" { approved_share } else { approved_share.min(r.hold) };
        Ok(RolloutStatus {
            group,
            update: r.update_id.clone(),
            state: r.state.clone(),
            approved_share,
            share,
            installed: get(Bucket::Installed),
            failed: get(Bucket::Failed),
            stuck,
            needed: get(Bucket::Needed).saturating_sub(stuck),
            reason: r.reason.clone(),
            max_failures: r.max_failures,
            max_failure_percent: r.max_failure_percent,
            stuck_hours: r.stuck_secs / 3600,
        })
    }

    pub async fn status(&self, repo: &Repository, now: i64) -> Result<Vec<RolloutStatus>> {
        let mut out = Vec::new();
        for r in self.db.rollouts().await? {
            out.push(self.status_of(repo, &r, now).await?);
        }
        Ok(out)
    }

    /// Sign and publish what the server holds to: every rollout not running, per approval path.
    async fn publish(&self, repo: &Repository, now: i64) -> Result<()> {
        let mut holds = BTreeMap::new();
        for r in self.db.rollouts().await? {
            if r.state == "running" {
                continue;
            }
            let group = GroupName::parse(&r.group).map_err(Error::internal)?;
            for target in self.targets(&group, &r.update_id).await? {
                holds.insert(target, r.hold);
            }
        }
        repo.publish_holds(holds, now).await?;
        Ok(())
    }

    /// The job: halt running rollouts whose failures passed their bounds, and keep the signed
    /// holds fresh. Returns the rollouts halted.
    pub async fn tick(&self, repo: &Repository, now: i64) -> Result<usize> {
        let _one = self.lock.lock().await;
        let mut halted = 0;
        for r in self.db.rollouts().await?.into_iter().filter(|r| r.state == "running") {
            // One rollout that cannot be checked does not stop the others, nor the refresh.
            let status = match self.status_of(repo, &r, now).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(group = r.group, update = r.update_id, error = %super::error::chain(&e), "rollout");
                    continue;
                }
            };
            if !must_halt(status.failed, status.stuck, status.installed, r.max_failures, r.max_failure_percent) {
                continue;
            }
            let reason = format!(
                "halted: {} failed and {} stuck of {} that finished or got stuck (bounds: {} devices, {} %)",
                status.failed,
                status.stuck,
                status.installed + status.failed + status.stuck,
                r.max_failures,
                r.max_failure_percent
            );
            // No device that has not installed it yet starts; those that did keep it.
            self.db.set_rollout_state(&r.group, &r.update_id, "halted", 0, &reason, now).await?;
            self.audit.record("server", "rollout", &format!("{} in {}: {reason}", r.update_id, r.group), now).await?;
            self.events.emit(Event {
                event: "rollout_halted",
                group: r.group.clone(),
                update: r.update_id.clone(),
                action: "halt".into(),
                by: "server".into(),
                at: now,
                pending: None,
                reason: Some(reason.clone()),
            });
            halted += 1;
        }
        let stale = match repo.holds_document().await? {
            None => true,
            Some(bytes) => ringfence_trust::Envelope::<ringfence_proto::tuf::RolloutHolds>::parse(&bytes, 1 << 22)
                .ok()
                .and_then(|e| ringfence_trust::expiry::parse(&e.signed.expires).ok())
                .is_none_or(|expires| expires - now < repo.holds_lifetime() / 2),
        };
        if halted > 0 || stale {
            self.publish(repo, now).await?;
        }
        Ok(halted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halts_on_a_count_or_a_share() {
        assert!(!must_halt(0, 0, 0, 0, 0), "nothing seen yet");
        assert!(must_halt(1, 0, 10, 0, 50), "one failure over a bound of none");
        assert!(must_halt(0, 1, 10, 0, 50), "a stuck device counts as failed");
        assert!(!must_halt(1, 0, 99, 5, 1), "1 of 100 is within 1 %");
        assert!(must_halt(2, 0, 98, 5, 1), "2 of 100 is over 1 %");
    }
}
