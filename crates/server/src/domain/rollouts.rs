//! Rollouts the server runs on top of approvals. The approvers' signed schedule (stages) is the
//! most a rollout may reach; the server can only hold it back: its own stages (a share it
//! advances once the devices admitted so far installed and the stage soaked), pause, stop, or
//! halt by itself when failures pass a count or a share, a device stuck on its way past a
//! timeout counting as failed. What it holds to is published signed
//! (`Repository::publish_holds`) and agents take the smaller of that and the approvers'
//! schedule. A device's place in line is a hash of its own key and the update
//! (`ringfence_trust::rollout::place`), so the server counts stages exactly as agents place
//! themselves, devices that join mid-rollout included.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ringfence_proto::GroupName;
use ringfence_proto::api::{RolloutStatus, StageCount, StartRollout};
use ringfence_proto::tuf::ApprovalAction;
pub use ringfence_store::RolloutSample;
use ringfence_store::{Bucket, Database, RolloutDevice, RolloutRecord};

use super::audit::Audit;
use super::error::{Error, Result};
use super::events::{Event, Events};
use super::repo::Repository;

/// The failure count bound of a rollout started without one: no bound on the count, only the
/// share (what people are told).
pub const NO_COUNT_BOUND: u64 = 1_000_000_000;

/// Whether a rollout halts: more failed (or stuck) devices than allowed, or a larger share of
/// those that finished or got stuck.
pub fn must_halt(failed: u64, stuck: u64, installed: u64, max_failures: u64, max_percent: u8) -> bool {
    let bad = failed + stuck;
    let seen = installed + bad;
    bad > max_failures || (seen > 0 && bad.saturating_mul(100) > u64::from(max_percent).saturating_mul(seen))
}

/// Rollouts whose group has not approved the update for install for this long are archived
/// (their record stays in the audit trail).
pub const ARCHIVE_AFTER_SECS: i64 = 7 * 86_400;

/// Check the server's stages: 1 to 16 growing shares from 1 to 100, the last 100.
pub fn check_stages(stages: &[u8]) -> Result<()> {
    let growing = stages.iter().zip(stages.iter().skip(1)).all(|(a, b)| a < b);
    let bounded = stages.len() <= ringfence_trust::rollout::MAX_STAGES;
    if !growing || !bounded || stages.first().is_none_or(|p| *p == 0) || stages.last() != Some(&100) {
        return Err(Error::invalid("stages: 1 to 16 growing percents from 1, the last 100"));
    }
    Ok(())
}

/// How the devices admitted so far fared, and each stage's devices (by place).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StageTally {
    pub stages: Vec<StageCount>,
    /// Devices whose place is below the share held to, and those of them that installed.
    pub admitted: u64,
    pub succeeded: u64,
}

/// Count `devices` into `stages` by their place for `update`. A device succeeded when every
/// approval path it reported on is installed (or does not apply) and it reported on all of
/// `targets`; it failed when any path failed.
pub fn tally(devices: &[RolloutDevice], update: &str, targets: &[String], stages: &[u8], hold: u8) -> StageTally {
    let mut out = StageTally {
        stages: stages.iter().map(|p| StageCount { percent: *p, devices: 0, installed: 0, failed: 0 }).collect(),
        ..StageTally::default()
    };
    for device in devices {
        let place = ringfence_trust::rollout::place(&device.public_key, update);
        let bucket = |t: &String| device.states.get(t).map(|s| Bucket::of_state(s));
        let failed = targets.iter().any(|t| bucket(t) == Some(Bucket::Failed));
        let installed = !targets.is_empty()
            && targets.iter().all(|t| matches!(bucket(t), Some(Bucket::Installed | Bucket::NotApplicable)));
        if let Some(stage) = out.stages.iter_mut().find(|s| place < u32::from(s.percent) * 100) {
            stage.devices += 1;
            stage.installed += u64::from(installed);
            stage.failed += u64::from(failed);
        }
        if place < u32::from(hold) * 100 {
            out.admitted += 1;
            out.succeeded += u64::from(installed);
        }
    }
    out
}

/// Whether a running rollout moves on from its stage: not the last, soaked, and at least
/// `success_percent` of the devices admitted so far installed (none admitted: nothing failed).
pub fn may_advance(r: &RolloutRecord, tally: &StageTally, now: i64) -> bool {
    let last = usize::from(r.stage) + 1 >= r.stages.len();
    let soaked = now.saturating_sub(r.stage_started_at) >= i64::try_from(r.soak_secs).unwrap_or(i64::MAX);
    let succeeded = tally.succeeded.saturating_mul(100) >= u64::from(r.success_percent).saturating_mul(tally.admitted);
    !last && soaked && succeeded
}

/// A tally as kept: when it was counted, for which stages, and the counts.
type KeptTally = (i64, Vec<u8>, StageTally);

pub struct Rollouts {
    db: Arc<dyn Database>,
    audit: Audit,
    events: Events,
    /// One change at a time: state changes and the holds document they publish stay in step.
    lock: tokio::sync::Mutex<()>,
    /// The newest tally of each rollout this node computed (group, update → when, its stages,
    /// the tally): what the console shows instead of placing the whole group again on every
    /// page. The job loop and `status` refresh it; decisions never read it.
    tallies: std::sync::Mutex<HashMap<(String, String), KeptTally>>,
}

impl Rollouts {
    pub fn new(db: Arc<dyn Database>, audit: Audit, events: Events) -> Self {
        Self { db, audit, events, lock: tokio::sync::Mutex::new(()), tallies: std::sync::Mutex::new(HashMap::new()) }
    }

    /// The share the approvers' schedule of `group`'s approval of `update` allows at `now`:
    /// 100 without a schedule, none when the group does not approve it for install.
    async fn approved_share(&self, repo: &Repository, group: &GroupName, update: &str, now: i64) -> Result<Option<u8>> {
        let approvals = repo.approvals_of(group).await?;
        let mut share = None;
        for a in approvals.values().filter(|a| a.update_id == update && a.action == ApprovalAction::Install) {
            let s = a.rollout.as_deref().map_or(100, |stages| ringfence_trust::rollout::share(stages, now));
            share = Some(share.map_or(s, |x: u8| x.min(s)));
        }
        Ok(share)
    }

    /// `group` and the groups below it whose devices follow its decision on `update`: a group
    /// that lists the update itself (install, uninstall or decline) decides for itself and
    /// for the groups below it, as the agents' precedence rule says, so its devices are not
    /// this rollout's.
    async fn subtree(&self, repo: &Repository, group: &GroupName, update: &str) -> Result<Vec<String>> {
        let groups = repo.groups().await?;
        let mut out = vec![group.to_string()];
        let mut next = vec![group.clone()];
        // Parents are checked acyclic and at most 8 deep.
        while let Some(parent) = next.pop() {
            for child in groups.iter().filter(|g| g.parent.as_ref() == Some(&parent)) {
                let decides = repo.approvals_of(&child.name).await?.values().any(|a| a.update_id == update);
                if !decides && !out.contains(&child.name.to_string()) {
                    out.push(child.name.to_string());
                    next.push(child.name.clone());
                }
            }
        }
        Ok(out)
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
        if request.max_failures.is_some_and(|n| n > NO_COUNT_BOUND) {
            return Err(Error::invalid("max_failures: 0 to 1000000000"));
        }
        let success = request.success_percent.unwrap_or(95);
        if success > 100 || request.soak_hours.is_some_and(|h| h > 24 * 30) {
            return Err(Error::invalid("success_percent: 0 to 100; soak_hours: 0 to 720"));
        }
        let stages = request.stages.unwrap_or_else(|| vec![100]);
        check_stages(&stages)?;
        let _one = (self.lock.lock().await, self.db.exclusive(ringfence_store::Section::Rollouts).await?);
        let record = RolloutRecord {
            group: request.group.to_string(),
            update_id: request.update.clone(),
            state: "running".into(),
            hold: stages.first().copied().unwrap_or(100),
            max_failures: request.max_failures.unwrap_or(NO_COUNT_BOUND),
            max_failure_percent: pct,
            stuck_secs: u64::from(request.stuck_hours.unwrap_or(24)) * 3600,
            reason: "started".into(),
            started_at: now,
            changed_at: now,
            stages,
            stage: 0,
            stage_started_at: now,
            soak_secs: u64::from(request.soak_hours.unwrap_or(24)) * 3600,
            success_percent: success,
            retries: 0,
            retry_mark: 0,
            unapproved_since: None,
        };
        self.db.insert_rollout(&record).await?;
        self.audit.record(actor, "rollout", &format!("started {} in {}", request.update, request.group), now).await?;
        self.publish(repo, now).await?;
        self.status_of(repo, &record, now).await
    }

    /// Pause, resume, stop, or retry the failed. Paused, halted and stopped rollouts hold at
    /// none: no device that has not installed yet starts; a resumed one goes on from the stage
    /// it reached and counts its failures afresh. A retry asks the devices that failed to try
    /// again (signed in the holds document) and counts failures afresh; it changes no state.
    pub async fn act(
        &self,
        repo: &Repository,
        group: &GroupName,
        update: &str,
        action: &str,
        actor: &str,
        now: i64,
    ) -> Result<RolloutStatus> {
        let _one = (self.lock.lock().await, self.db.exclusive(ringfence_store::Section::Rollouts).await?);
        let record = self
            .db
            .rollouts()
            .await?
            .into_iter()
            .find(|r| r.group == group.as_str() && r.update_id == update)
            .ok_or(Error::NotFound)?;
        let stage_share = record.stages.get(usize::from(record.stage)).copied().unwrap_or(0);
        let (state, hold, reason) = match action {
            "pause" => ("paused", 0, format!("paused by {actor}")),
            "resume" => ("running", stage_share, format!("resumed by {actor}")),
            "stop" => ("stopped", 0, format!("stopped by {actor}")),
            "retry" => (record.state.as_str(), record.hold, format!("{actor} asked the failed devices to try again")),
            _ => return Err(Error::NotFound),
        };
        let (state, reason) = (state.to_owned(), reason);
        if record.state == "stopped" && action != "stop" {
            return Err(Error::Conflict("a stopped rollout is started again, not resumed or retried".into()));
        }
        let mut record = record;
        if action == "retry" {
            // Failures before the retry were seen and acted on: counted afresh from now.
            // Devices act on a retry mark they have not seen: the holds version it is published
            // in, which only grows (a restarted rollout's count starts again, its mark does not).
            let mark = repo.next_version(super::repo::HOLDS_FLOOR, self.db.rollout_holds_version().await?).await?;
            record.retries = self.db.retry_rollout(group.as_str(), update, mark, now).await?;
            record.retry_mark = mark;
            record.started_at = now;
        }
        self.db.set_rollout_state(group.as_str(), update, &state, hold, &reason, now).await?;
        if action == "resume" {
            // Failures before the resume were seen and acted on: counted afresh from now.
            self.db.restart_rollout_clock(group.as_str(), update, now).await?;
            record.started_at = now;
        }
        self.audit.record(actor, "rollout", &format!("{action} {update} in {group}"), now).await?;
        self.publish(repo, now).await?;
        let record = RolloutRecord { state, hold, reason, changed_at: now, ..record };
        self.status_of(repo, &record, now).await
    }

    /// The stage counts of a rollout: its groups' devices placed by their keys.
    /// The rollout's tally: computed afresh (and kept), or with `reuse_within` Some(secs), the
    /// one kept if it was computed that recently for the same stages.
    async fn tally_of(
        &self,
        repo: &Repository,
        r: &RolloutRecord,
        targets: &[String],
        now: i64,
        reuse_within: Option<i64>,
    ) -> Result<StageTally> {
        let key = (r.group.clone(), r.update_id.clone());
        if let Some(secs) = reuse_within
            && let Ok(kept) = self.tallies.lock()
            && let Some((at, stages, tally)) = kept.get(&key)
            && *stages == r.stages
            && now.saturating_sub(*at) <= secs
        {
            return Ok(tally.clone());
        }
        let group = GroupName::parse(&r.group).map_err(Error::internal)?;
        let devices = self.db.rollout_devices(&self.subtree(repo, &group, &r.update_id).await?, targets).await?;
        let counted = tally(&devices, &r.update_id, targets, &r.stages, r.hold);
        if let Ok(mut kept) = self.tallies.lock() {
            // Rollouts are few; a bound all the same.
            if kept.len() > 10_000 {
                kept.clear();
            }
            kept.insert(key, (now, r.stages.clone(), counted.clone()));
        }
        Ok(counted)
    }

    async fn status_of(&self, repo: &Repository, r: &RolloutRecord, now: i64) -> Result<RolloutStatus> {
        Ok(self.evaluate(repo, r, now, None).await?.0)
    }

    /// A rollout's status and the tally its stages advance on (one read of its devices; with
    /// `reuse_within`, the stage counts may come from a tally that recent).
    async fn evaluate(
        &self,
        repo: &Repository,
        r: &RolloutRecord,
        now: i64,
        reuse_within: Option<i64>,
    ) -> Result<(RolloutStatus, StageTally)> {
        let group = GroupName::parse(&r.group).map_err(Error::internal)?;
        let approved_share = self.approved_share(repo, &group, &r.update_id, now).await?.unwrap_or(0);
        let targets = self.targets(&group, &r.update_id).await?;
        let tally = self.tally_of(repo, r, &targets, now, reuse_within).await?;
        // Reports since the rollout (re)started: a resume does not count old failures again.
        let mut counts: BTreeMap<Bucket, u64> = BTreeMap::new();
        for (state, n) in self.db.states_since(&targets, r.started_at).await? {
            *counts.entry(Bucket::of_state(&state)).or_insert(0) += n;
        }
        let before = now.saturating_sub(i64::try_from(r.stuck_secs).unwrap_or(i64::MAX));
        let stuck = self.db.stuck_devices(&targets, r.started_at, before).await?;
        let get = |b: Bucket| counts.get(&b).copied().unwrap_or(0);
        let share = approved_share.min(r.hold);
        let status = RolloutStatus {
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
            stages: tally.stages.clone(),
            stage: usize::from(r.stage),
            stage_since: ringfence_trust::expiry::format(r.stage_started_at),
            soak_hours: r.soak_secs / 3600,
            success_percent: r.success_percent,
            retries: r.retries,
        };
        Ok((status, tally))
    }

    pub async fn status(&self, repo: &Repository, now: i64) -> Result<Vec<RolloutStatus>> {
        let mut out = Vec::new();
        for r in self.db.rollouts().await? {
            out.push(self.status_of(repo, &r, now).await?);
        }
        Ok(out)
    }

    /// How many rollouts are in each state (running, paused, halted, stopped, …).
    pub async fn count_by_state(&self) -> Result<Vec<(String, u64)>> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for r in self.db.rollouts().await? {
            *counts.entry(r.state).or_insert(0) += 1;
        }
        Ok(counts.into_iter().collect())
    }

    /// [`Rollouts::status`] for people looking (the console): state, share, reason and the
    /// failure counts read now, each stage's device counts from a tally at most `max_age`
    /// seconds old when this node has one (the job loop computes one every interval).
    pub async fn status_for_display(&self, repo: &Repository, now: i64, max_age: i64) -> Result<Vec<RolloutStatus>> {
        let mut out = Vec::new();
        for r in self.db.rollouts().await? {
            out.push(self.evaluate(repo, &r, now, Some(max_age)).await?.0);
        }
        Ok(out)
    }

    /// Sign and publish what the server holds to (every rollout held below 100 %, per approval
    /// path) and the retries operators asked for.
    async fn publish(&self, repo: &Repository, now: i64) -> Result<()> {
        let (mut holds, mut retries) = (BTreeMap::new(), BTreeMap::new());
        for r in self.db.rollouts().await? {
            let group = GroupName::parse(&r.group).map_err(Error::internal)?;
            for target in self.targets(&group, &r.update_id).await? {
                if r.hold < 100 {
                    holds.insert(target.clone(), r.hold);
                }
                if r.retry_mark > 0 {
                    retries.insert(target, r.retry_mark);
                }
            }
        }
        repo.publish_holds(holds, retries, now).await?;
        Ok(())
    }

    /// The job: halt running rollouts whose failures passed their bounds, advance those whose
    /// stage succeeded and soaked, archive those no longer approved, and keep the signed holds
    /// fresh. Returns the rollouts halted.
    pub async fn tick(&self, repo: &Repository, now: i64) -> Result<usize> {
        let _one = (self.lock.lock().await, self.db.exclusive(ringfence_store::Section::Rollouts).await?);
        let (mut halted, mut changed) = (0, false);
        // One rollout that cannot be checked does not stop the others, nor the refresh.
        for r in self.db.rollouts().await? {
            match self.archive(repo, &r, now).await {
                Ok(gone) => changed |= gone,
                Err(e) => {
                    tracing::warn!(group = r.group, update = r.update_id, error = %super::error::chain(&e), "rollout archive");
                }
            }
        }
        for r in self.db.rollouts().await?.into_iter().filter(|r| r.state == "running") {
            let (status, tally) = match self.evaluate(repo, &r, now, None).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(group = r.group, update = r.update_id, error = %super::error::chain(&e), "rollout");
                    continue;
                }
            };
            let halting =
                must_halt(status.failed, status.stuck, status.installed, r.max_failures, r.max_failure_percent);
            self.sample(&r, &status, &tally, halting, now).await;
            if !halting {
                match self.advance(&r, &tally, now).await {
                    Ok(moved) => changed |= moved,
                    Err(e) => {
                        tracing::warn!(group = r.group, update = r.update_id, error = %super::error::chain(&e), "rollout stage");
                    }
                }
                continue;
            }
            let bounds = if r.max_failures >= NO_COUNT_BOUND {
                format!("more than {} %", r.max_failure_percent)
            } else {
                format!("more than {} devices or {} %", r.max_failures, r.max_failure_percent)
            };
            let reason = format!(
                "halted: {} failed and {} stuck of {} that finished or got stuck ({bounds})",
                status.failed,
                status.stuck,
                status.installed + status.failed + status.stuck,
            );
            // No device that has not installed it yet starts; those that did keep it.
            self.db.set_rollout_state(&r.group, &r.update_id, "halted", 0, &reason, now).await?;
            self.audit.record("server", "rollout", &format!("{} in {}: {reason}", r.update_id, r.group), now).await?;
            self.events
                .emit(Event {
                    group: r.group.clone(),
                    update: r.update_id.clone(),
                    action: "halt".into(),
                    reason: Some(reason.clone()),
                    ..Event::new("rollout_halted", "server", now)
                })
                .await;
            halted += 1;
        }
        let stale = match repo.holds_document().await? {
            None => true,
            Some(bytes) => ringfence_trust::Envelope::<ringfence_proto::tuf::RolloutHolds>::parse(&bytes, 1 << 22)
                .ok()
                .and_then(|e| ringfence_trust::expiry::parse(&e.signed.expires).ok())
                .is_none_or(|expires| expires - now < repo.holds_lifetime() / 2),
        };
        if halted > 0 || changed || stale {
            self.publish(repo, now).await?;
        }
        Ok(halted)
    }

    /// Keep what a running rollout counts now for the console's chart: every tick in its first
    /// minutes, then more sparsely (a gap of 1/200 of its age), and always when it halts.
    /// A sample that cannot be kept is only logged: the chart is not worth a decision.
    async fn sample(&self, r: &RolloutRecord, status: &RolloutStatus, tally: &StageTally, halting: bool, now: i64) {
        let sum = |count: fn(&StageCount) -> u64| tally.stages.iter().map(count).sum::<u64>();
        let sample = RolloutSample {
            at: now,
            share: if halting { 0 } else { status.share },
            devices: sum(|s| s.devices),
            installed: sum(|s| s.installed),
            failed: sum(|s| s.failed),
            stuck: status.stuck,
        };
        let gap = if halting { 0 } else { now.saturating_sub(r.started_at) / 200 };
        if let Err(e) = self.db.add_rollout_sample(&r.group, &r.update_id, &sample, gap).await {
            tracing::warn!(group = r.group, update = r.update_id, error = %e, "rollout sample");
        }
    }

    /// A rollout's samples, oldest first (the console's chart).
    pub async fn samples(&self, group: &str, update: &str) -> Result<Vec<RolloutSample>> {
        Ok(self.db.rollout_samples(group, update, 0).await?)
    }

    /// Note when a rollout's group stopped approving its update, and archive a rollout a week
    /// after that, when nothing an operator set holds it back: only one running at its last
    /// stage. A paused, halted or stopped one (or one held to an earlier stage) stays, so its
    /// hold survives the update being approved again.
    async fn archive(&self, repo: &Repository, r: &RolloutRecord, now: i64) -> Result<bool> {
        let group = GroupName::parse(&r.group).map_err(Error::internal)?;
        let approved = self.approved_share(repo, &group, &r.update_id, now).await?.is_some();
        match (approved, r.unapproved_since) {
            (true, Some(_)) => self.db.set_rollout_unapproved(&r.group, &r.update_id, None).await?,
            (false, None) => self.db.set_rollout_unapproved(&r.group, &r.update_id, Some(now)).await?,
            (false, Some(since))
                if now.saturating_sub(since) > ARCHIVE_AFTER_SECS && r.state == "running" && r.hold == 100 =>
            {
                self.db.delete_rollout(&r.group, &r.update_id).await?;
                let what =
                    format!("archived {} in {}: not approved for install there for a week", r.update_id, r.group);
                self.audit.record("server", "rollout", &what, now).await?;
                return Ok(true);
            }
            _ => {}
        }
        Ok(false)
    }

    /// Move a running rollout to its next stage when its devices succeeded and it soaked.
    async fn advance(&self, r: &RolloutRecord, tally: &StageTally, now: i64) -> Result<bool> {
        if !may_advance(r, tally, now) {
            return Ok(false);
        }
        let next = r.stage + 1;
        let share = r.stages.get(usize::from(next)).copied().ok_or_else(|| Error::internal("stage past the last"))?;
        self.db.set_rollout_stage(&r.group, &r.update_id, next, share, now).await?;
        let what = format!(
            "{} in {}: {} of {} admitted devices installed; stage {} ({share} %) begins",
            r.update_id,
            r.group,
            tally.succeeded,
            tally.admitted,
            next + 1
        );
        self.audit.record("server", "rollout", &what, now).await?;
        Ok(true)
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

    #[test]
    fn stages_grow_to_all() {
        for good in [vec![100], vec![1, 100], vec![5, 25, 50, 100]] {
            assert!(check_stages(&good).is_ok(), "{good:?}");
        }
        for bad in [vec![], vec![50], vec![0, 100], vec![50, 50, 100], vec![60, 40, 100], vec![1; 17]] {
            assert!(check_stages(&bad).is_err(), "{bad:?}");
        }
    }

    fn record(stages: Vec<u8>, stage: u8, success_percent: u8) -> RolloutRecord {
        RolloutRecord {
            group: "pilot".into(),
            update_id: "kb-1".into(),
            state: "running".into(),
            hold: stages[usize::from(stage)],
            max_failures: 10,
            max_failure_percent: 50,
            stuck_secs: 3600,
            reason: String::new(),
            started_at: 0,
            changed_at: 0,
            stages,
            stage,
            stage_started_at: 1000,
            soak_secs: 3600,
            success_percent,
            retries: 0,
            retry_mark: 0,
            unapproved_since: None,
        }
    }

    fn device(i: u32, states: &[(&str, &str)]) -> RolloutDevice {
        RolloutDevice {
            public_key: format!("{:064x}", u64::from(i) * 7919),
            states: states.iter().map(|(t, s)| ((*t).to_owned(), (*s).to_owned())).collect(),
        }
    }

    #[test]
    fn devices_are_counted_in_the_stage_their_place_gives() {
        let targets = vec!["approvals/pilot/acme/a".to_owned(), "approvals/pilot/acme/b".to_owned()];
        let devices: Vec<RolloutDevice> = (0..200)
            .map(|i| match i % 4 {
                0 => device(i, &[("approvals/pilot/acme/a", "installed"), ("approvals/pilot/acme/b", "installed")]),
                1 => device(i, &[("approvals/pilot/acme/a", "installed")]),
                2 => device(i, &[("approvals/pilot/acme/a", "installed"), ("approvals/pilot/acme/b", "failed")]),
                _ => device(i, &[]),
            })
            .collect();
        let t = tally(&devices, "kb-1", &targets, &[20, 100], 20);
        let placed = |d: &RolloutDevice| ringfence_trust::rollout::place(&d.public_key, "kb-1");
        let first: Vec<(usize, &RolloutDevice)> =
            devices.iter().enumerate().filter(|(_, d)| placed(d) < 2000).collect();
        assert_eq!(t.stages[0].devices, first.len() as u64);
        assert_eq!(t.stages[1].devices, 200 - first.len() as u64);
        // Only a device with every path installed succeeded; one failed path fails it.
        assert_eq!(t.stages[0].installed, first.iter().filter(|(i, _)| i % 4 == 0).count() as u64);
        assert_eq!(t.stages[0].failed, first.iter().filter(|(i, _)| i % 4 == 2).count() as u64);
        assert_eq!((t.admitted, t.succeeded), (t.stages[0].devices, t.stages[0].installed));
        assert_eq!(t.stages.iter().map(|s| s.devices).sum::<u64>(), 200);
    }

    #[test]
    fn a_stage_advances_only_soaked_successful_and_not_past_the_last() {
        let r = record(vec![10, 50, 100], 0, 90);
        let tally = |admitted, succeeded| StageTally { stages: Vec::new(), admitted, succeeded };
        assert!(!may_advance(&r, &tally(10, 10), 1000 + 3599), "not soaked");
        assert!(may_advance(&r, &tally(10, 9), 1000 + 3600), "90 % of 10");
        assert!(!may_advance(&r, &tally(10, 8), 1000 + 3600), "80 % of 10");
        assert!(may_advance(&r, &tally(0, 0), 1000 + 3600), "none admitted: nothing failed");
        assert!(!may_advance(&record(vec![10, 50, 100], 2, 0), &tally(10, 10), i64::MAX), "the last stage");
    }
}
