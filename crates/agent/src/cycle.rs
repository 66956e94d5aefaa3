//! Enrollment and one check cycle: session, reports, check-in, TUF refresh, and for every
//! approval of the device's groups the decision rule, download, install and report.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use ringfence_proto::GroupName;
use ringfence_proto::TargetPath;
use ringfence_proto::api::Applicability;
use ringfence_proto::device::{
    ChallengeRequest, ChallengeResponse, CheckinRequest, CheckinResponse, EnrollRequest, EnrollResponse, EnrollState,
    Inventory, ReportBatch, ReportState, ReportsAck, SessionRequest, SessionResponse, StatusReport, session_message,
};
use ringfence_proto::limits::MAX_ROOT_BYTES;
use ringfence_proto::tuf::{ApprovalAction, ApprovalCustom, PublishedCustom, TargetFile, Timestamp};
use ringfence_trust::client::TrustedSet;
use ringfence_trust::policy::{self, Lookup};
use ringfence_trust::precedence::{self, Decision, Listing};
use ringfence_trust::workflow::{Fetched, target_file_name, verify_target};

use crate::fetch::Fetcher;
use crate::modules::{self, Job, Outcome};
use crate::state::{AgentConfig, Installed, StateDir};
use crate::tuf_client::{Client, write_atomic};

/// How a cycle ended; `check` turns it into its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CycleResult {
    /// Everything approved is installed (or not applicable).
    UpToDate { installed: usize },
    /// The server has not accepted this device yet.
    Pending,
    /// Something was refused or failed; the rest went on.
    Problems(Vec<String>),
    /// The server is busy: come back after this many seconds.
    Busy(u64),
}

/// How a clean cycle's summary starts (the next cycle may then skip the refresh).
pub const UP_TO_DATE: &str = "up to date";

impl std::fmt::Display for CycleResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CycleResult::UpToDate { installed } => write!(f, "{UP_TO_DATE}: {installed} update(s) installed"),
            CycleResult::Pending => write!(f, "pending: an administrator has not accepted this device yet"),
            CycleResult::Problems(problems) => {
                write!(f, "problems ({}):", problems.len())?;
                problems.iter().try_for_each(|p| write!(f, "\n  - {p}"))
            }
            CycleResult::Busy(secs) => write!(f, "busy: the server asked to come back in {secs} s"),
        }
    }
}

pub(crate) fn random_id() -> String {
    let mut b = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

/// A client trusting the pinned CA; `run` keeps one for its lifetime so connections (and
/// TLS sessions) are reused from cycle to cycle.
pub fn fetcher(state: &StateDir) -> anyhow::Result<Fetcher> {
    let ca = std::fs::read(state.ca_file()).ok();
    let mut fetcher = Fetcher::new(ca.as_deref())?;
    fetcher.content_origins = state.config().map(|c| c.content_origins).unwrap_or_default();
    Ok(fetcher)
}

pub fn local_inventory(state: &StateDir) -> Inventory {
    let version = crate::platform::os_version();
    let hostname = crate::platform::hostname();
    let mut installed: Vec<String> =
        state.installed().into_iter().filter(|(_, i)| i.state == "installed").map(|(k, _)| k).collect();
    installed.truncate(ringfence_proto::device::MAX_INSTALLED);
    Inventory {
        hostname: hostname.chars().take(ringfence_proto::device::MAX_DEVICE_TEXT).collect(),
        os: std::env::consts::OS.into(),
        os_version: version.chars().take(64).collect(),
        architecture: std::env::consts::ARCH.into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        installed,
    }
}

/// Pin the server's CA and root, make the device key, enroll.
pub fn enroll(
    state: &StateDir,
    server: &str,
    token: Option<String>,
    ca: Option<&Path>,
    root_sha256: &str,
    groups: Vec<GroupName>,
    content_origins: Vec<String>,
) -> anyhow::Result<EnrollState> {
    let server = server.trim_end_matches('/').to_owned();
    let content_origins = content_origins
        .iter()
        .map(|o| {
            crate::fetch::origin_of(o)
                .with_context(|| format!("--content-origin {o}: https://host[:port], or http:// on a loopback address"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(ca) = ca {
        std::fs::copy(ca, state.ca_file()).with_context(|| format!("copying {}", ca.display()))?;
    }
    let fetcher = fetcher(state)?;
    let Fetched::Bytes(root) = fetcher.fetch(&format!("{server}/repo/metadata/1.root.json"), MAX_ROOT_BYTES)? else {
        bail!("the server has no 1.root.json");
    };
    let actual = ringfence_trust::sha256_hex(&root);
    if !actual.eq_ignore_ascii_case(root_sha256.trim()) {
        bail!("the server's root has sha256 {actual}, not the {root_sha256} you were given: refusing to trust it");
    }
    TrustedSet::new(&root, crate::wall_clock()).context("the pinned root does not verify")?;
    write_atomic(&state.metadata_dir().join("root.json"), &root)?;

    if groups.is_empty() {
        bail!("name the groups this device follows with --group");
    }
    let key = state.device_key()?;
    let public_key = key.public().to_tuf().keyval.public;
    let signature = hex::encode(key.sign(&ringfence_proto::device::enrollment_message(&public_key, &groups)));
    let request =
        EnrollRequest { token, public_key, groups: groups.clone(), inventory: local_inventory(state), signature };
    let answer = fetcher.post_json(&format!("{server}/device/v1/enroll"), &request, None)?;
    if answer.status != 200 {
        bail!("enrollment refused: HTTP {} {}", answer.status, String::from_utf8_lossy(&answer.body));
    }
    let enrolled: EnrollResponse = serde_json::from_slice(&answer.body).context("enrollment answer")?;
    // The groups are the ones named here; the server's answer never widens them.
    if groups.is_empty() {
        bail!("name the groups this device follows with --group");
    }
    state.save_config(&AgentConfig {
        server,
        device_id: enrolled.device_id,
        groups,
        poll_seconds: 300,
        health_check: Vec::new(),
        content_origins,
    })?;
    Ok(enrolled.state)
}

/// A device session: a cached one while it lives, else challenge, sign, open.
fn session(state: &StateDir, config: &AgentConfig, fetcher: &Fetcher, now: i64) -> anyhow::Result<Option<String>> {
    let path = state.root.join("session.json");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(cached) = serde_json::from_slice::<SessionResponse>(&bytes)
        && cached.expires_at > now + 60
    {
        return Ok(Some(cached.token));
    }
    let base = &config.server;
    let answer = fetcher.post_json(
        &format!("{base}/device/v1/challenge"),
        &ChallengeRequest { device_id: config.device_id.clone() },
        None,
    )?;
    match answer.status {
        200 => {}
        401 => return Ok(None),
        status => bail!("challenge: HTTP {status}"),
    }
    let challenge: ChallengeResponse = serde_json::from_slice(&answer.body)?;
    let key = state.device_key()?;
    let signature = hex::encode(key.sign(&session_message(&config.device_id, &challenge.nonce)));
    let request = SessionRequest { device_id: config.device_id.clone(), nonce: challenge.nonce, signature };
    let answer = fetcher.post_json(&format!("{base}/device/v1/session"), &request, None)?;
    if answer.status != 200 {
        bail!("session refused: HTTP {}", answer.status);
    }
    let opened: SessionResponse = serde_json::from_slice(&answer.body)?;
    crate::platform::write_private(&path, &answer.body)?;
    Ok(Some(opened.token))
}

/// `reason` cut to what a report may carry (1024 bytes), at a character boundary.
fn bounded_reason(reason: &str) -> String {
    const MAX: usize = 1024;
    if reason.len() <= MAX {
        return reason.to_owned();
    }
    let mut end = MAX - '…'.len_utf8();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", reason.get(..end).unwrap_or_default())
}

/// Send queued reports; each is removed once the server acknowledged the batch.
/// With `within`, the whole flush gives up after that long (what is not sent stays queued).
fn flush_reports(
    state: &StateDir,
    config: &AgentConfig,
    fetcher: &Fetcher,
    within: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let mut queued = state.queued_reports();
    // What the server would refuse would stay queued for ever and hold back every report
    // after it (a queue an older agent wrote, say): reasons are cut, and a report on a target
    // too long for any approval path is dropped.
    queued.retain(|(path, report)| {
        let keep = report.target.len() <= ringfence_proto::device::MAX_DEVICE_TEXT;
        if !keep {
            let _ = std::fs::remove_file(path);
        }
        keep
    });
    if queued.is_empty() {
        return Ok(());
    }
    let key = state.device_key()?;
    let deadline = within.map(|w| std::time::Instant::now() + w);
    for chunk in queued.chunks(ringfence_proto::device::MAX_REPORTS) {
        let left = match deadline {
            Some(end) => match end.checked_duration_since(std::time::Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => bail!("reports: out of time, the rest stays queued"),
            },
            None => None,
        };
        let reports: Vec<StatusReport> = chunk
            .iter()
            .map(|(_, r)| StatusReport { reason: r.reason.as_deref().map(bounded_reason), ..r.clone() })
            .collect();
        // Signed with the device key: the server keeps the signature as evidence.
        let message = ringfence_proto::device::report_batch_message(&config.device_id, &reports);
        let batch = ReportBatch { reports, signature: hex::encode(key.sign(&message)) };
        let answer = fetcher.post_json(&format!("{}/device/v1/reports", config.server), &batch, left)?;
        if answer.status != 200 {
            bail!("reports: HTTP {}", answer.status);
        }
        let _: ReportsAck = serde_json::from_slice(&answer.body)?;
        for (path, _) in chunk {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// An approval entry as its group's approval role lists it, before the publisher's entry is
/// checked (that happens only for the decision that governs, before it is acted on).
#[derive(Debug, Clone)]
struct Listed {
    approval_path: TargetPath,
    published: TargetPath,
    entry: TargetFile,
    /// Which of the device's groups' lineages the decision came through (its windows apply).
    lineage: usize,
}

/// Read an entry of `group`'s approval role into a decision: its path must be in that group,
/// its fields (signed by the group's approvers) must parse.
fn listed_decision(
    group: &GroupName,
    depth: usize,
    path: &str,
    entry: TargetFile,
) -> Result<(String, Decision<Listed>), String> {
    let approval_path = TargetPath::parse(path).map_err(|e| format!("approval path: {e}"))?;
    let (approval_group, published) = approval_path.split_approval().ok_or("not an approval path")?;
    if &approval_group != group {
        return Err(format!("listed in {group}'s approvals but for group {approval_group}"));
    }
    let custom = entry.custom.clone().ok_or("no approval fields")?;
    let custom: ApprovalCustom = serde_json::from_value(custom).map_err(|e| format!("approval fields: {e}"))?;
    let deadline = match &custom.deadline {
        Some(d) => Some(ringfence_trust::expiry::parse(d).map_err(|e| format!("deadline: {e}"))?),
        None => None,
    };
    let decision = Decision {
        group: group.clone(),
        depth,
        action: custom.action,
        deadline,
        item: Listed { approval_path, published: published.clone(), entry, lineage: 0 },
    };
    Ok((published.to_string(), decision))
}

/// A group's approval entries, and its maintenance windows if it has any.
type GroupApprovals = (Vec<(String, TargetFile)>, Option<Vec<ringfence_proto::tuf::Window>>);

/// Install attempts with the same bytes before the agent stops trying.
pub const MAX_ATTEMPTS: u32 = 5;

/// Operator retries (signed in the server's holds) a device acts on per update bytes: each
/// starts the attempts afresh at once, so a server cannot make a failing install run more than
/// `(1 + MAX_OPERATOR_RETRIES) * MAX_ATTEMPTS` times.
pub const MAX_OPERATOR_RETRIES: u32 = 3;

/// How long an update found not applicable is left alone before its rules are looked at again
/// (the device may have changed since: an OS upgrade, a product installed).
pub const RECHECK_NOT_APPLICABLE_SECONDS: i64 = 86_400;

/// How long an update its installer found not applicable (wusa, an `exe` table) waits before it
/// is downloaded and run again.
pub const RECHECK_INSTALLER_NOT_APPLICABLE_SECONDS: i64 = 7 * 86_400;

/// The longest the `installing` report may hold up an install.
const EARLY_REPORT_WITHIN: std::time::Duration = std::time::Duration::from_secs(15);
/// Installs per cycle whose `installing` report is sent before the installer runs: with the
/// reports at the start and the end of the cycle, well inside the server's default bound of 30
/// report batches per device and minute.
const EARLY_REPORTS_PER_CYCLE: u32 = 8;

/// Wait before attempt `n + 1`: 5 minutes, doubling, at most a day.
fn backoff(attempts: u32) -> i64 {
    (300i64 << attempts.saturating_sub(1).min(10)).min(86_400)
}

struct Cycle<'a> {
    state: &'a StateDir,
    config: &'a AgentConfig,
    client: Client,
    now: i64,
    problems: Vec<String>,
    installed: BTreeMap<String, Installed>,
    /// Installs that waited for a prerequisite: tried once more at the end of the cycle.
    deferred: Vec<Decision<Listed>>,
    /// Per lineage of the device's groups, the maintenance windows of its nearest group that
    /// has any, with that group's place in the lineage (`None`: no windows, install any time;
    /// `Some` with no windows: never).
    windows: Vec<Option<(usize, Vec<ringfence_trust::windows::Checked>)>>,
    /// The device's groups' lineages, nearest first.
    lineages: Vec<Vec<GroupName>>,
    /// The server's signed holds on rollouts, per approval path (percent).
    holds: BTreeMap<String, u8>,
    /// The retries operators asked for, per approval path (a count).
    retries: BTreeMap<String, u64>,
    /// `installing` reports sent early in this cycle (see [`EARLY_REPORTS_PER_CYCLE`]).
    early_reports: u32,
}

impl Cycle<'_> {
    /// The time now on the agent's clock: the wall clock, never before the cycle's trusted
    /// start (a clock set back does not move windows, deadlines or backoffs back).
    fn clock(&self) -> i64 {
        crate::wall_clock().max(self.now)
    }

    fn report(&mut self, target: &str, state: ReportState, reason: Option<String>, exit_code: Option<i64>) {
        let reason = reason.map(|r| bounded_reason(&r));
        let report = StatusReport {
            id: random_id(),
            target: target.into(),
            state,
            reason: reason.clone(),
            exit_code,
            // When it happened, not when the cycle began: an install that waited for a long
            // download must not look stuck for that long.
            at: self.clock(),
        };
        if matches!(state, ReportState::Failed | ReportState::Refused | ReportState::RolledBack) {
            self.problems.push(format!("{target}: {} {}", state.as_str(), reason.unwrap_or_default()));
        }
        if let Err(e) = self.state.queue_report(&report) {
            self.problems.push(format!("queueing a report: {e:#}"));
        }
    }

    /// A group's approval entries and maintenance windows.
    fn group_approvals(&mut self, set: &mut TrustedSet, group: &GroupName) -> anyhow::Result<GroupApprovals> {
        // Only through targets → approvals.<g>, checked against the layout (policy).
        let (entries, windows) = self.client.lookup(set, |set| {
            Ok(match policy::approvals(set, group)? {
                Lookup::Done(doc) => {
                    Lookup::Done(doc.map(|d| (d.targets.clone(), d.windows.clone())).unwrap_or_default())
                }
                Lookup::Load { role, delegator } => Lookup::Load { role, delegator },
            })
        })?;
        Ok((entries.into_iter().collect(), windows))
    }

    /// The decision rule (`ringfence_trust::policy`): the approval is in this group's
    /// approval role, the publisher signed the path in the bin its hash falls in (and nowhere
    /// else counts), and the approval carries that entry's length, hashes and digest.
    fn decide(
        &mut self,
        set: &mut TrustedSet,
        group: &GroupName,
        path: &str,
        listed: &TargetFile,
    ) -> anyhow::Result<(TargetPath, TargetFile, ApprovalCustom, PublishedCustom)> {
        let approval_path = TargetPath::parse(path).context("approval path")?;
        let (approval_group, published) = approval_path.split_approval().context("not an approval path")?;
        if &approval_group != group {
            bail!("listed in {group}'s approvals but for group {approval_group}");
        }
        let signed = self
            .client
            .lookup(set, |set| policy::published_entry(set, &published))?
            .context("not signed by its publisher")?;
        let action = policy::check_approval(&approval_path, listed, &signed)?;
        let how: PublishedCustom =
            serde_json::from_value(signed.custom.clone().context("published file without installer")?)
                .context("publisher custom")?;
        // Both name the same update (the approval's digest pins the publisher's entry; this
        // says so plainly).
        if action.update_id != how.update_id {
            bail!("the approval is for update {}, the publisher's entry for {}", action.update_id, how.update_id);
        }
        Ok((published, signed, action, how))
    }

    fn applicable(&self, rules: &Applicability, inventory: &Inventory) -> Result<(), String> {
        // Only updates on the device: one waiting (for a stage, a window, a prerequisite) or
        // failed is not installed.
        let installed_ids: Vec<&str> = self
            .installed
            .values()
            .filter(|i| matches!(i.state.as_str(), "installed" | "reboot_required"))
            .map(|i| i.update_id.as_str())
            .collect();
        // The registry is read only for rules that name products.
        let products = if rules.products_installed.is_empty() && rules.products_absent.is_empty() {
            Vec::new()
        } else {
            crate::platform::installed_products()
        };
        applicable(rules, inventory, &installed_ids, &products)
    }

    /// Download with resume: a partial file is kept under its hash and continued with a
    /// `Range` request; the whole file is hash-checked before anything uses it.
    fn download(
        &mut self,
        set: &TrustedSet,
        published: &TargetPath,
        target: &TargetFile,
    ) -> anyhow::Result<std::path::PathBuf> {
        let sha = target.hashes.get("sha256").context("no sha256")?.to_ascii_lowercase();
        // Used as a file name: 64 hex digits and nothing else.
        ringfence_proto::Sha256Hex::parse(&sha).context("sha256 in the metadata")?;
        let done = self.state.downloads().join(&sha);
        if std::fs::symlink_metadata(&done).is_ok() {
            // Checked again before it is used: a file is trusted for its hash, not its name.
            // Anything else there (changed bytes, unreadable) is removed and fetched again.
            let digest = crate::tuf_client::digest_file(&done);
            if digest.is_ok_and(|(len, digests)| verify_target(target, len, &digests).is_ok()) {
                return Ok(done);
            }
            let _ = std::fs::remove_file(&done);
        }
        let partial = self.state.downloads().join(format!("{sha}.partial"));
        let mut offset = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if offset >= target.length {
            let _ = std::fs::remove_file(&partial);
            offset = 0;
        }
        let name =
            target_file_name(published.as_str(), target, set.root().signed.consistent_snapshot).context("file name")?;
        let url = format!("{}/repo/targets/{name}", self.config.server);
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&partial)?;
        self.client.fetcher.fetch_to(&url, target.length, offset, &mut file)?;
        file.sync_all()?;
        drop(file);
        let (len, digests) = crate::tuf_client::digest_file(&partial)?;
        if let Err(e) = verify_target(target, len, &digests) {
            if len >= target.length {
                let _ = std::fs::remove_file(&partial);
            }
            bail!("{e}");
        }
        std::fs::rename(&partial, &done)?;
        Ok(done)
    }

    /// What governs each published file for this device (`ringfence_trust::precedence`): the
    /// approvals of its groups and of their ancestors, as top-level targets signs the
    /// hierarchy. When any of those approval roles is refused, it is reported and nothing is
    /// acted on this cycle (what is installed stays).
    /// A file one of the lineages lists in a way that was refused is left alone.
    fn decisions(&mut self, set: &mut TrustedSet, groups: &[GroupName]) -> Vec<Decision<Listed>> {
        let top = match policy::top_level_targets(set) {
            Ok(top) => top.clone(),
            Err(e) => {
                self.report("targets", ReportState::Refused, Some(e.to_string()), None);
                return Vec::new();
            }
        };
        let lineages: Vec<Vec<GroupName>> = groups.iter().map(|g| policy::lineage(&top, g)).collect();
        // Per group, per published file: what it says; and the group's windows.
        let mut listed: BTreeMap<GroupName, BTreeMap<String, Listing<Listed>>> = BTreeMap::new();
        let mut windows_of: BTreeMap<GroupName, Vec<ringfence_proto::tuf::Window>> = BTreeMap::new();
        for group in lineages.iter().flatten() {
            if listed.contains_key(group) {
                continue;
            }
            let entries = match self.group_approvals(set, group) {
                Ok((entries, windows)) => {
                    if let Some(windows) = windows {
                        windows_of.insert(group.clone(), windows);
                    }
                    entries
                }
                Err(e) => {
                    // A role that cannot be trusted hides what its group decided, overrides
                    // of its ancestors' approvals included: act on nothing this cycle.
                    self.report(group.approval_role().as_str(), ReportState::Refused, Some(format!("{e:#}")), None);
                    return Vec::new();
                }
            };
            let depth = policy::depth(&top, group);
            let mut by_file = BTreeMap::new();
            for (path, entry) in entries {
                match listed_decision(group, depth, &path, entry) {
                    Ok((published, decision)) => {
                        by_file.insert(published, Listing::Decides(decision));
                    }
                    Err(why) => {
                        let published = TargetPath::parse(&path).ok().and_then(|p| p.split_approval()).map(|(_, p)| p);
                        if let Some(published) = published {
                            by_file.insert(published.to_string(), Listing::Refused);
                        }
                        self.report(&path, ReportState::Refused, Some(why), None);
                    }
                }
            }
            listed.insert(group.clone(), by_file);
        }
        self.lineages = lineages.clone();
        // Windows were checked with the role's layout; each lineage takes its nearest group's.
        self.windows = lineages
            .iter()
            .map(|lineage| {
                let nearest = lineage.iter().enumerate().find_map(|(i, g)| windows_of.get(g).map(|w| (i, w)));
                // Windows that do not check (the layout check refuses them first) never open.
                nearest.map(|(i, w)| (i, ringfence_trust::windows::check_all(w).unwrap_or_default()))
            })
            .collect();
        let files: std::collections::BTreeSet<String> = listed.values().flat_map(|m| m.keys().cloned()).collect();
        files
            .iter()
            .filter_map(|file| {
                let per_group = lineages
                    .iter()
                    .enumerate()
                    .filter_map(|(i, lineage)| {
                        let listing =
                            precedence::nearest(lineage, |g| listed.get(g).and_then(|m| m.get(file)).cloned());
                        listing.map(|l| match l {
                            Listing::Decides(mut d) => {
                                d.item.lineage = i;
                                Listing::Decides(d)
                            }
                            Listing::Refused => Listing::Refused,
                        })
                    })
                    .collect();
                precedence::governing(per_group)
            })
            .collect()
    }

    /// The server's holds on rollouts, if it serves a document signed by the root's timestamp
    /// keys, fresh, and not older than one seen before. When it serves none that passes (it
    /// does not answer, or serves something unsigned, expired or older), the last document
    /// that passed holds while it is fresh: a halt or a pause the server signed is not lifted
    /// by its next answers failing. With neither, no holds (they only narrow, so none widens
    /// nothing beyond what the approvers signed).
    fn rollout_holds(&mut self, set: &TrustedSet) -> (BTreeMap<String, u8>, BTreeMap<String, u64>) {
        use ringfence_proto::tuf::RolloutHolds;
        let seen_file = self.state.root.join("rollouts-version");
        let kept_file = self.state.root.join("rollouts.json");
        let seen: u64 = std::fs::read_to_string(&seen_file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let root = &set.root().signed;
        let now = self.now;
        let verified = |bytes: &[u8]| {
            ringfence_trust::Envelope::<RolloutHolds>::parse(bytes, 1 << 22).ok().filter(|env| {
                let Some(role) = root.roles.get("timestamp") else { return false };
                let signed = env.count_valid(&root.keys, &role.keyids) >= role.threshold && role.threshold > 0;
                let fresh = ringfence_trust::expiry::parse(&env.signed.expires).is_ok_and(|e| e > now);
                signed && fresh && env.signed.type_ == "ringfence-rollouts"
            })
        };
        let url = format!("{}/repo/rollouts.json", self.config.server);
        match self.client.fetcher.fetch(&url, 1 << 22) {
            Ok(Fetched::Bytes(bytes)) => match verified(&bytes) {
                Some(env) if env.signed.version >= seen => {
                    // The version seen moves only once the document is kept: a kept copy is
                    // never older than what later answers are measured against.
                    let kept = write_atomic(&kept_file, &bytes)
                        .and_then(|()| write_atomic(&seen_file, env.signed.version.to_string().as_bytes()));
                    if let Err(e) = kept {
                        self.problems.push(format!("rollout holds: keeping them: {e:#}"));
                    }
                    return (env.signed.holds, env.signed.retries);
                }
                Some(env) => {
                    self.problems.push(format!("rollout holds: version {} is older than {seen}", env.signed.version));
                }
                None => self.problems.push("rollout holds: not signed by the timestamp keys, or expired".into()),
            },
            Ok(Fetched::NotFound) => {
                // Gone after one was seen: said, since a hold may have been dropped with it.
                if seen > 0 {
                    self.problems.push("rollout holds: the server no longer serves them".into());
                }
            }
            Err(e) => self.problems.push(format!("rollout holds: {e:#}")),
        }
        match std::fs::read(&kept_file).ok().as_deref().and_then(verified) {
            Some(env) if env.signed.version >= seen => (env.signed.holds, env.signed.retries),
            _ => Default::default(),
        }
    }

    /// Carry out the governing decision for one file.
    fn act(&mut self, set: &mut TrustedSet, decision: Decision<Listed>, inventory: &Inventory) {
        let Listed { approval_path, published, entry, .. } = &decision.item;
        let path = approval_path.as_str();
        let listed_sha = entry.hashes.get("sha256").cloned().unwrap_or_default();
        // An operator asked the devices that failed this rollout to try again: once per retry,
        // at most MAX_OPERATOR_RETRIES times for these bytes, the attempts start afresh (the
        // stage, hold and window checks below still apply).
        let asked = self.retries.get(path).copied().unwrap_or(0);
        if let Some(failed) = self.installed.get_mut(published.as_str()).filter(|i| {
            i.sha256 == listed_sha
                && i.state == "failed"
                && i.retried < asked
                && i.operator_retries < MAX_OPERATOR_RETRIES
        }) {
            failed.attempts = 0;
            failed.retry_at = 0;
            failed.retried = asked;
            failed.operator_retries += 1;
        }
        let retry_at = self.installed.get(published.as_str()).filter(|i| i.sha256 == listed_sha).map(|i| i.retry_at);
        let recorded =
            self.installed.get(published.as_str()).filter(|i| i.sha256 == listed_sha).map(|i| i.state.clone());
        // Not applicable by the publisher's rules: looked at again once `retry_at` has come.
        let recheck = recorded.as_deref() == Some("not_applicable") && retry_at.is_some_and(|t| t <= self.now);
        match decision.action {
            // Not for this device: nothing to do, nothing to report.
            ApprovalAction::Decline => return,
            // Done with these exact bytes already: nothing to verify further or fetch.
            // Not applicable, looked at again once a day.
            ApprovalAction::Install
                if !recheck
                    && recorded
                        .as_deref()
                        .is_some_and(|s| matches!(s, "installed" | "reboot_required" | "not_applicable")) =>
            {
                return;
            }
            // Failed before: not again until its backoff ends (or, attempts used up, at all).
            ApprovalAction::Install
                if recorded.as_deref() == Some("failed") && retry_at.is_some_and(|t| self.now < t) =>
            {
                return;
            }
            // Not installed (with these bytes): nothing to remove. Nothing is written either: the
            // entry is not verified yet, and what the device recorded stays as it is.
            ApprovalAction::Uninstall if recorded.as_deref() != Some("installed") => return,
            _ => {}
        }
        let group = decision.group.clone();
        let (published, signed, approval, how) = match self.decide(set, &group, path, entry) {
            Ok(d) => d,
            Err(e) => {
                self.report(path, ReportState::Refused, Some(format!("{e:#}")), None);
                return;
            }
        };
        let sha = signed.hashes.get("sha256").cloned().unwrap_or_default();
        let key = published.to_string();
        // Outside every maintenance window, nothing is installed or removed unless the
        // deadline has passed; the file is downloaded meanwhile.
        let in_window = self.may_change_at(&decision, self.now);
        if decision.action == ApprovalAction::Uninstall {
            if in_window {
                self.uninstall(set, &decision, &published, &signed, &how);
            }
            return;
        }
        if let Err(why) = self.applicable(&how.applicability, inventory) {
            // Said once; a recheck that finds the same only notes when it looked.
            if recorded.as_deref() != Some("not_applicable") {
                self.report(path, ReportState::NotApplicable, Some(why), None);
            }
            self.remember(&key, &sha, &how.update_id, "not_applicable");
            self.look_again_later(&key);
            return;
        }
        // A staged rollout: the share the approvers signed (all without stages), held back
        // further by the server's signed holds; this device's place comes from its own key.
        let hold = self.holds.get(path).copied();
        if approval.rollout.is_some() || hold.is_some() {
            let stages = approval.rollout.clone().unwrap_or_else(|| {
                vec![ringfence_proto::tuf::RolloutStage { percent: 100, not_before: "1970-01-01T00:00:00Z".into() }]
            });
            let public = match self.state.device_key() {
                Ok(key) => key.public().to_tuf().keyval.public,
                Err(e) => {
                    self.problems.push(format!("reading the device key: {e:#}"));
                    return;
                }
            };
            let place = ringfence_trust::rollout::place(&public, &how.update_id);
            let held = hold.is_some_and(|h| place >= u32::from(h) * 100);
            let admitted = ringfence_trust::rollout::admits(&stages, place, self.now);
            if held || admitted.is_err() {
                if recorded.as_deref() != Some("rollout") {
                    let when = match admitted {
                        _ if held => "the server to release its hold on this rollout".to_owned(),
                        Err(Some(t)) => format!("its stage, from {}", ringfence_trust::expiry::format(t)),
                        _ => "no stage of this rollout".to_owned(),
                    };
                    let why = format!("staged rollout: this device (place {place} of 10000) waits for {when}");
                    self.report(path, ReportState::Waiting, Some(why), None);
                    self.remember(&key, &sha, &how.update_id, "rollout");
                }
                return;
            }
        }
        if !in_window {
            if let Err(e) = self.download(set, &published, &signed) {
                self.report(path, ReportState::Failed, Some(format!("download: {e:#}")), None);
                return;
            }
            if recorded.as_deref() != Some("window") {
                let why = "downloaded; waits for a maintenance window (or its deadline)".to_owned();
                self.report(path, ReportState::Waiting, Some(why), None);
                self.remember(&key, &sha, &how.update_id, "window");
            }
            return;
        }
        let installed_ids: Vec<&str> =
            self.installed.values().filter(|i| i.state == "installed").map(|i| i.update_id.as_str()).collect();
        if let Some(missing) = how.prerequisites.iter().find(|p| !installed_ids.contains(&p.as_str())).cloned() {
            // Said once, and tried again at the end of this cycle and in the next ones.
            if recorded.as_deref() != Some("waiting") {
                self.report(path, ReportState::Waiting, Some(format!("waits for prerequisite {missing}")), None);
                self.remember(&key, &sha, &how.update_id, "waiting");
            }
            self.deferred.push(decision.clone());
            return;
        }
        self.report(path, ReportState::Downloading, None, None);
        let file = match self.download(set, &published, &signed) {
            Ok(f) => f,
            Err(e) => {
                self.report(path, ReportState::Failed, Some(format!("download: {e:#}")), None);
                return;
            }
        };
        self.report(path, ReportState::Downloaded, None, None);
        self.report(path, ReportState::Installing, None, None);
        // Sent before the installer runs, not at the end of the cycle: an update that bricks
        // the device leaves the server this last word, and once it is older than a rollout's
        // stuck timeout the device counts as failed and the rollout halts. For the first
        // EARLY_REPORTS_PER_CYCLE installs of a cycle, while the server takes them: a batch per
        // install would run into its bound on report batches per device when a cycle installs
        // many updates. Best effort, at most EARLY_REPORT_WITHIN in all; what is not sent stays
        // queued for the end of the cycle.
        if self.early_reports < EARLY_REPORTS_PER_CYCLE {
            self.early_reports += 1;
            if flush_reports(self.state, self.config, &self.client.fetcher, Some(EARLY_REPORT_WITHIN)).is_err() {
                self.early_reports = EARLY_REPORTS_PER_CYCLE;
            }
        }
        // The download and that send took time the server controls: the window is looked at
        // again now, on the agent's clock, and nothing that talks to the server comes between
        // this look and the installer.
        if !self.may_change_at(&decision, self.clock()) {
            let why = "downloaded; the maintenance window closed before the install could start".to_owned();
            self.report(path, ReportState::Waiting, Some(why), None);
            self.remember(&key, &sha, &how.update_id, "window");
            return;
        }
        // Remembered before the installer runs: an agent that does not come back from it (the
        // update crashed it, the device went down, it was bricked until someone repaired it)
        // counts the attempt as failed when it next starts. Only an update whose publisher
        // signed that it needs a reboot keeps the boot mark: coming back in another boot, it
        // is finished as a reboot (`finish_interrupted`; the health checks decide). Not
        // recorded, not run: without the record a crash would run it again and again.
        let health_check: Vec<String> =
            how.installer.health_check.iter().chain(&self.config.health_check).cloned().collect();
        let reboots = how.installer.reboot_required;
        let recorded = self.remember_with(&key, &sha, &how.update_id, "installing", |entry| {
            entry.approval = path.to_owned();
            entry.boot_id = if reboots { crate::platform::boot_mark() } else { None };
            entry.health_check = health_check;
        });
        if !recorded {
            return;
        }
        let (outcome, undo) = match self.with_job(&how, &file, &sha, path, modules::install) {
            Ok(r) => r,
            Err(e) => {
                self.install_failed(&key, &sha, &how.update_id, path, ReportState::Failed, format!("{e:#}"), None);
                return;
            }
        };
        let needs_reboot = outcome == Outcome::RebootRequired || how.installer.reboot_required;
        match outcome {
            Outcome::Failed { exit_code, reason } => {
                let code = exit_code.map(i64::from);
                self.install_failed(&key, &sha, &how.update_id, path, ReportState::Failed, reason, code);
            }
            Outcome::NotApplicable(why) => {
                self.report(path, ReportState::NotApplicable, Some(why), None);
                self.remember(&key, &sha, &how.update_id, "not_applicable");
                // The installer's own verdict (it ran, and found nothing to do here): downloaded
                // and run again only a week later, when whatever it looked for may have come.
                if let Some(entry) = self.installed.get_mut(&key) {
                    entry.retry_at = self.now.saturating_add(RECHECK_INSTALLER_NOT_APPLICABLE_SECONDS);
                }
                self.save();
                let _ = std::fs::remove_file(&file);
            }
            Outcome::Installed | Outcome::RebootRequired if needs_reboot => {
                // Finished by `finish_reboots` in the first cycle after the device booted again.
                self.report(path, ReportState::RebootRequired, None, None);
                self.remember(&key, &sha, &how.update_id, "reboot_required");
                if let Some(entry) = self.installed.get_mut(&key) {
                    entry.approval = path.to_owned();
                    entry.boot_id = crate::platform::boot_mark();
                    entry.health_check =
                        how.installer.health_check.iter().chain(&self.config.health_check).cloned().collect();
                }
                if let Err(e) = self.state.save_installed(&self.installed) {
                    self.problems.push(format!("saving installed.json: {e:#}"));
                }
            }
            Outcome::Installed | Outcome::RebootRequired => {
                let check = modules::health_check(&how.installer.health_check)
                    .and_then(|()| modules::health_check(&self.config.health_check));
                match check {
                    Ok(()) => {
                        self.report(path, ReportState::Installed, None, None);
                        self.remember(&key, &sha, &how.update_id, "installed");
                        let _ = std::fs::remove_file(&file);
                    }
                    Err((code, reason)) => {
                        let state = match modules::roll_back(undo) {
                            Ok(true) => ReportState::RolledBack,
                            _ => ReportState::Failed,
                        };
                        self.install_failed(&key, &sha, &how.update_id, path, state, reason, code.map(i64::from));
                    }
                }
            }
        }
    }

    /// Whether `decision` may be acted on at `at`: inside one of the signed maintenance windows
    /// of its lineage, or past its deadline.
    fn may_change_at(&self, decision: &Decision<Listed>, at: i64) -> bool {
        let lineage = decision.item.lineage;
        let (open_now, windows_at) = match self.windows.get(lineage) {
            Some(Some((windows_at, windows))) => (windows.iter().any(|w| w.is_open(at)), *windows_at),
            Some(None) => (true, usize::MAX),
            None => (false, 0),
        };
        // A deadline overrides the windows only when it comes from the group that set them or
        // one below it: an ancestor's deadline (which an auto-approver may sign) does not
        // reach past a descendant's windows.
        let deciding_at = self.lineages.get(lineage).and_then(|l| l.iter().position(|g| *g == decision.group));
        let deadline_counts = deciding_at.is_some_and(|position| position <= windows_at);
        open_now || (deadline_counts && precedence::deadline_passed(decision.deadline, at))
    }

    /// An install that failed: reported with its attempt count, and not tried again with the
    /// same bytes before its backoff ends; after [`MAX_ATTEMPTS`], not at all.
    #[allow(clippy::too_many_arguments)]
    fn install_failed(
        &mut self,
        key: &str,
        sha: &str,
        update_id: &str,
        path: &str,
        state: ReportState,
        reason: String,
        exit_code: Option<i64>,
    ) {
        let before = self.installed.get(key).filter(|i| i.sha256 == sha).map_or(0, |i| i.attempts);
        let attempts = before + 1;
        let (retry_at, next) = if attempts >= MAX_ATTEMPTS {
            (i64::MAX, "no more attempts with these bytes".to_owned())
        } else {
            let at = self.clock() + backoff(attempts);
            (at, format!("next not before {}", ringfence_trust::expiry::format(at)))
        };
        self.report(path, state, Some(format!("attempt {attempts} of {MAX_ATTEMPTS} ({next}): {reason}")), exit_code);
        self.remember(key, sha, update_id, "failed");
        if let Some(entry) = self.installed.get_mut(key) {
            entry.attempts = attempts;
            entry.retry_at = retry_at;
        }
        if let Err(e) = self.state.save_installed(&self.installed) {
            self.problems.push(format!("saving installed.json: {e:#}"));
        }
    }

    /// Run `f` on the module job for the verified `file`: the publisher's module and arguments.
    fn with_job<T>(
        &self,
        how: &PublishedCustom,
        file: &Path,
        sha256: &str,
        target: &str,
        f: impl FnOnce(&Job) -> T,
    ) -> T {
        let (modules_dir, backup_dir) = (self.state.modules_dir(), self.state.root.join("backup"));
        let work_dir = self.state.work_dir();
        f(&Job {
            module: &how.installer.module,
            arguments: &how.installer.arguments,
            file,
            sha256,
            update_id: &how.update_id,
            target,
            modules_dir: &modules_dir,
            backup_dir: &backup_dir,
            work_dir: &work_dir,
            exit_codes: &how.installer.exit_codes,
            product_code: how.installer.product_code.as_deref(),
        })
    }

    /// Remove an installed update as its module can, from the verified file.
    fn uninstall(
        &mut self,
        set: &TrustedSet,
        decision: &Decision<Listed>,
        published: &TargetPath,
        signed: &TargetFile,
        how: &PublishedCustom,
    ) {
        let path = decision.item.approval_path.as_str();
        let sha = signed.hashes.get("sha256").cloned().unwrap_or_default();
        let file = match self.download(set, published, signed) {
            Ok(f) => f,
            Err(e) => {
                self.report(path, ReportState::Failed, Some(format!("download for uninstall: {e:#}")), None);
                return;
            }
        };
        // As for an install: the download took time the server controls.
        if !self.may_change_at(decision, self.clock()) {
            return;
        }
        match self.with_job(how, &file, &sha, path, |job| modules::uninstall(job, &sha)) {
            Ok(Outcome::Installed | Outcome::RebootRequired) => {
                self.report(path, ReportState::Uninstalled, None, None);
                self.remember(published.as_str(), &sha, &how.update_id, "uninstalled");
                let _ = std::fs::remove_file(&file);
            }
            Ok(Outcome::Failed { exit_code, reason }) => {
                self.report(path, ReportState::Failed, Some(format!("uninstall: {reason}")), exit_code.map(i64::from));
            }
            Ok(Outcome::NotApplicable(why)) => {
                self.report(path, ReportState::Failed, Some(format!("uninstall: {why}")), None);
            }
            Err(e) => self.report(path, ReportState::Failed, Some(format!("uninstall: {e:#}")), None),
        }
    }

    /// A `not_applicable` entry's rules are looked at again a day from now.
    fn look_again_later(&mut self, key: &str) {
        if let Some(entry) = self.installed.get_mut(key) {
            entry.retry_at = self.now.saturating_add(RECHECK_NOT_APPLICABLE_SECONDS);
        }
        self.save();
    }

    fn save(&mut self) {
        if let Err(e) = self.state.save_installed(&self.installed) {
            self.problems.push(format!("saving installed.json: {e:#}"));
        }
    }

    fn remember(&mut self, key: &str, sha: &str, update_id: &str, state: &str) {
        let _ = self.remember_with(key, sha, update_id, state, |_| {});
    }

    /// [`Self::remember`], the entry changed by `edit` before it is saved (one write); whether
    /// it was saved.
    fn remember_with(
        &mut self,
        key: &str,
        sha: &str,
        update_id: &str,
        state: &str,
        edit: impl FnOnce(&mut Installed),
    ) -> bool {
        // Install attempts with these bytes carry over (waiting for a window or a reboot does
        // not reset them); only an installed update starts from nothing.
        let (attempts, retry_at) = match self.installed.get(key) {
            Some(i) if i.sha256 == sha && state != "installed" => (i.attempts, i.retry_at),
            _ => (0, 0),
        };
        let (retried, operator_retries) =
            self.installed.get(key).filter(|i| i.sha256 == sha).map_or((0, 0), |i| (i.retried, i.operator_retries));
        let mut entry = Installed {
            sha256: sha.into(),
            update_id: update_id.into(),
            state: state.into(),
            at: self.now,
            approval: String::new(),
            boot_id: None,
            health_check: Vec::new(),
            attempts,
            retry_at,
            retried,
            operator_retries,
        };
        edit(&mut entry);
        self.installed.insert(key.into(), entry);
        match self.state.save_installed(&self.installed) {
            Ok(()) => true,
            Err(e) => {
                self.problems.push(format!("saving installed.json: {e:#}"));
                false
            }
        }
    }
}

/// Updates that waited for a reboot: once the boot id changed, run their health check and
/// report them installed (or failed: after a reboot nothing is rolled back).
fn finish_reboots(state: &StateDir, now: i64) -> anyhow::Result<()> {
    let mut installed = state.installed();
    let Some(current) = crate::platform::boot_mark() else { return Ok(()) };
    let mut changed = false;
    for entry in installed.values_mut() {
        let same_boot = entry.boot_id.as_deref().is_some_and(|mark| crate::platform::same_boot(mark, &current));
        if entry.state != "reboot_required" || same_boot {
            continue;
        }
        let (report_state, reason, exit_code) = match modules::health_check(&entry.health_check) {
            Ok(()) => (ReportState::Installed, None, None),
            Err((code, reason)) => (ReportState::Failed, Some(reason), code.map(i64::from)),
        };
        entry.state = if report_state == ReportState::Installed { "installed" } else { "failed" }.into();
        entry.at = now;
        if report_state == ReportState::Failed {
            // Counted like a failed install: not tried again before the backoff.
            entry.attempts += 1;
            entry.retry_at = if entry.attempts >= MAX_ATTEMPTS { i64::MAX } else { now + backoff(entry.attempts) };
        }
        changed = true;
        let report = StatusReport {
            id: random_id(),
            target: entry.approval.clone(),
            state: report_state,
            reason,
            exit_code,
            at: now,
        };
        state.queue_report(&report)?;
    }
    if changed {
        state.save_installed(&installed)?;
    }
    Ok(())
}

/// Installs the agent did not come back from (it crashed, the installer rebooted the device,
/// the power went): each counts as a failed attempt, reported, with the backoff and the
/// attempt bound of any failure, so an update that takes the agent down is not run again and
/// again, and the rollout counts it.
fn finish_interrupted(state: &StateDir, now: i64) -> anyhow::Result<Vec<String>> {
    let mut installed = state.installed();
    let mut said = Vec::new();
    let current = crate::platform::boot_mark();
    let mut changed = false;
    for entry in installed.values_mut().filter(|e| e.state == "installing") {
        changed = true;
        let rebooted = match (&entry.boot_id, &current) {
            (Some(then), Some(now_mark)) => !crate::platform::same_boot(then, now_mark),
            _ => false,
        };
        if rebooted {
            // An update whose publisher signed that it needs a reboot, back in another boot:
            // taken as that reboot and finished as one (`finish_reboots`: the health checks
            // decide). Without that signed word there is no boot mark, and a reboot in the
            // middle of an install is a failed attempt like any interruption.
            entry.state = "reboot_required".into();
            continue;
        }
        entry.state = "failed".into();
        entry.at = now;
        entry.attempts += 1;
        let next = if entry.attempts >= MAX_ATTEMPTS {
            entry.retry_at = i64::MAX;
            "no more attempts with these bytes".to_owned()
        } else {
            entry.retry_at = now + backoff(entry.attempts);
            format!("next not before {}", ringfence_trust::expiry::format(entry.retry_at))
        };
        let reason = format!(
            "attempt {} of {MAX_ATTEMPTS} ({next}): interrupted: the agent stopped while the installer ran \
             (it crashed or was killed, or the device went down)",
            entry.attempts
        );
        said.push(format!("{}: failed {reason}", entry.approval));
        if !entry.approval.is_empty() {
            let report = StatusReport {
                id: random_id(),
                target: entry.approval.clone(),
                state: ReportState::Failed,
                reason: Some(reason),
                exit_code: None,
                at: now,
            };
            state.queue_report(&report)?;
        }
    }
    if changed {
        state.save_installed(&installed)?;
    }
    Ok(said)
}

/// One cycle. Whatever is refused is reported and left alone; what was installed stays.
pub fn check(state: &StateDir, now: i64, connection: &Fetcher) -> anyhow::Result<CycleResult> {
    // One cycle at a time on a state directory (the service's, and a `check` run by hand).
    let _one = state.lock_cycle()?;
    let mut config = state.config()?;
    let mut fetcher = connection.clone();
    let Some(token) = session(state, &config, &fetcher, now)? else { return Ok(CycleResult::Pending) };
    fetcher.bearer = Some(token);
    let mut early_problems = finish_interrupted(state, now)?;
    finish_reboots(state, now)?;
    modules::sweep_staged(&state.work_dir());
    // Reports the server does not take now (it is busy, or throttles this device) wait for
    // the end of the cycle or the next one; the cycle goes on.
    if let Err(e) = flush_reports(state, &config, &fetcher, None) {
        early_problems.push(format!("sending reports: {e:#}"));
    }

    let inventory = local_inventory(state);
    let trusted_timestamp = std::fs::read(state.metadata_dir().join("timestamp.json")).ok().and_then(|b| {
        ringfence_trust::Envelope::<Timestamp>::parse(&b, ringfence_proto::limits::MAX_TIMESTAMP_BYTES as usize).ok()
    });
    let timestamp_version = trusted_timestamp.as_ref().map_or(0, |t| t.signed.version);
    let answer = fetcher.post_json(
        &format!("{}/device/v1/checkin", config.server),
        &CheckinRequest { inventory: inventory.clone(), timestamp_version },
        None,
    )?;
    match answer.status {
        200 => {}
        503 => return Ok(CycleResult::Busy(answer.retry_after.unwrap_or(60))),
        401 => {
            let _ = std::fs::remove_file(state.root.join("session.json"));
            bail!("the server refused the session");
        }
        status => bail!("check-in: HTTP {status}"),
    }
    let checkin: CheckinResponse = serde_json::from_slice(&answer.body)?;
    if checkin.poll_seconds != config.poll_seconds {
        config.poll_seconds = checkin.poll_seconds;
        state.save_config(&config)?;
    }
    // Same version as ours, the last cycle was clean, and what we trust stays fresh for two more polls:
    // skip the refresh. The server's word only saves work: a server that hides a new version
    // or a freeze is caught once the trusted timestamp nears its expiry, when we refresh anyway.
    let fresh_until = trusted_timestamp.and_then(|t| ringfence_trust::expiry::parse(&t.signed.expires).ok());
    let last_clean = state.last_cycle().is_some_and(|c| c.starts_with(UP_TO_DATE));
    let margin = 2 * config.poll_seconds.min(86_400) as i64;
    let same = !checkin.changed && checkin.timestamp_version == timestamp_version;
    // Something that waits for time (a rollout stage, a window, a prerequisite, a retry) is
    // looked at again every cycle, whatever the server says.
    // So is a failure once the server signed new holds: an operator may have asked for a retry.
    let holds_seen: u64 = std::fs::read_to_string(state.root.join("rollouts-version"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let new_holds = checkin.rollouts_version > holds_seen;
    let waits = state.installed().values().any(|i| {
        matches!(i.state.as_str(), "rollout" | "window" | "waiting")
            || (i.state == "failed" && (i.retry_at <= now || new_holds))
            || (i.state == "not_applicable" && i.retry_at <= now)
    });
    if same
        && last_clean
        && !waits
        && early_problems.is_empty()
        && fresh_until.is_some_and(|until| until > now + margin)
    {
        let installed = state.installed().values().filter(|i| i.state == "installed").count();
        return Ok(CycleResult::UpToDate { installed });
    }

    let client = Client {
        metadata_dir: state.metadata_dir(),
        metadata_url: format!("{}/repo/metadata/", config.server),
        fetcher,
        log: Some(crate::log::LogCheck { base_url: format!("{}/log", config.server), state_dir: state.root.clone() }),
    };
    let mut cycle = Cycle {
        state,
        config: &config,
        client,
        now,
        problems: early_problems,
        installed: state.installed(),
        deferred: Vec::new(),
        windows: Vec::new(),
        lineages: Vec::new(),
        holds: BTreeMap::new(),
        retries: BTreeMap::new(),
        early_reports: 0,
    };
    let mut set = match cycle.client.refresh(now) {
        Ok(set) => set,
        Err(e) => {
            cycle.report("repository", ReportState::Refused, Some(format!("{e:#}")), None);
            let _ = flush_reports(state, &config, &cycle.client.fetcher, None);
            return Ok(CycleResult::Problems(cycle.problems));
        }
    };
    (cycle.holds, cycle.retries) = cycle.rollout_holds(&set);
    for decision in cycle.decisions(&mut set, &config.groups) {
        cycle.act(&mut set, decision, &inventory);
    }
    // A prerequisite installed in this cycle lets what waited for it go on now.
    for decision in std::mem::take(&mut cycle.deferred) {
        cycle.act(&mut set, decision, &inventory);
    }
    // A not-applicable entry this cycle did not reach (its approval withdrawn, say) waits a day
    // too, rather than making every cycle refresh.
    let unvisited: Vec<String> = cycle
        .installed
        .iter()
        .filter(|(_, i)| i.state == "not_applicable" && i.retry_at <= now)
        .map(|(k, _)| k.clone())
        .collect();
    if !unvisited.is_empty() {
        unvisited.iter().for_each(|k| {
            if let Some(entry) = cycle.installed.get_mut(k) {
                entry.retry_at = now.saturating_add(RECHECK_NOT_APPLICABLE_SECONDS);
            }
        });
        cycle.save();
    }
    let _ = flush_reports(state, &config, &cycle.client.fetcher, None);
    let installed = cycle.installed.values().filter(|i| i.state == "installed").count();
    Ok(if cycle.problems.is_empty() {
        CycleResult::UpToDate { installed }
    } else {
        CycleResult::Problems(cycle.problems)
    })
}

/// Whether a publisher's applicability rules admit this device: OS and architecture (an empty
/// list admits any), OS version bounds compared numerically by dot-separated parts, and none
/// of the updates that must not be installed (`installed_ids`) installed, every product that
/// must be installed among `products` and none that must be absent. `Err` says why not.
fn applicable(
    rules: &Applicability,
    inventory: &Inventory,
    installed_ids: &[&str],
    products: &[crate::platform::Product],
) -> Result<(), String> {
    let any_or = |list: &Vec<String>, value: &str| list.is_empty() || list.iter().any(|v| v == value);
    if !any_or(&rules.os, &inventory.os) {
        return Err(format!("for {:?}, this is {}", rules.os, inventory.os));
    }
    if !any_or(&rules.architectures, &inventory.architecture) {
        return Err(format!("for {:?}, this is {}", rules.architectures, inventory.architecture));
    }
    let version = |s: &str| s.split('.').map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>();
    if let Some(min) = &rules.min_os_version
        && version(&inventory.os_version) < version(min)
    {
        return Err(format!("needs OS version {min} or later, this is {}", inventory.os_version));
    }
    if let Some(max) = &rules.max_os_version
        && version(&inventory.os_version) > version(max)
    {
        return Err(format!("needs OS version {max} or earlier, this is {}", inventory.os_version));
    }
    if let Some(conflict) = rules.not_installed.iter().find(|id| installed_ids.contains(&id.as_str())) {
        return Err(format!("{conflict} is installed"));
    }
    if let Some(missing) = rules.products_installed.iter().find(|want| !products.iter().any(|p| p.is(want))) {
        return Err(format!("needs product {missing}, which is not installed"));
    }
    if let Some(present) = rules.products_absent.iter().find(|unwanted| products.iter().any(|p| p.is(unwanted))) {
        return Err(format!("product {present} is installed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_to_what_the_server_takes_at_a_character_boundary() {
        assert_eq!(bounded_reason("short"), "short");
        let exact = "x".repeat(1024);
        assert_eq!(bounded_reason(&exact), exact);
        for long in ["y".repeat(5000), "é".repeat(3000), format!("a{}", "€".repeat(2000))] {
            let cut = bounded_reason(&long);
            assert!(cut.len() <= 1024 && cut.len() > 1000, "{}", cut.len());
            assert!(cut.ends_with('…'));
            assert!(long.starts_with(cut.trim_end_matches('…')));
        }
    }

    fn device(os: &str, version: &str, arch: &str) -> Inventory {
        Inventory {
            hostname: "h".into(),
            os: os.into(),
            os_version: version.into(),
            architecture: arch.into(),
            agent_version: "t".into(),
            installed: vec![],
        }
    }

    #[test]
    fn applicability_rules_admit_exactly_the_devices_they_name() {
        let any = Applicability::default();
        assert_eq!(applicable(&any, &device("linux", "12", "x86_64"), &[], &[]), Ok(()));
        let rules = Applicability {
            os: vec!["linux".into()],
            architectures: vec!["aarch64".into(), "x86_64".into()],
            min_os_version: Some("11.2".into()),
            max_os_version: Some("12.10".into()),
            not_installed: vec!["old-agent".into()],
            products_installed: vec![],
            products_absent: vec![],
        };
        assert_eq!(applicable(&rules, &device("linux", "12.9", "aarch64"), &[], &[]), Ok(()));
        // Numeric, not lexical: 12.10 is after 12.9, 11.10 after 11.2.
        assert_eq!(applicable(&rules, &device("linux", "12.10", "x86_64"), &[], &[]), Ok(()));
        assert_eq!(applicable(&rules, &device("linux", "11.10", "x86_64"), &[], &[]), Ok(()));
        let refused =
            |inventory: Inventory, installed: &[&str]| applicable(&rules, &inventory, installed, &[]).unwrap_err();
        assert!(refused(device("windows", "12", "x86_64"), &[]).starts_with("for [\"linux\"]"));
        assert!(refused(device("linux", "12", "riscv64"), &[]).contains("riscv64"));
        assert!(refused(device("linux", "11.1", "x86_64"), &[]).contains("or later"));
        assert!(refused(device("linux", "13", "x86_64"), &[]).contains("or earlier"));
        assert_eq!(refused(device("linux", "12", "x86_64"), &["old-agent"]), "old-agent is installed");
        // Windows products, by uninstall key or display name (Windows builds compare by build).
        let product = |key: &str, name: &str| crate::platform::Product {
            key: key.into(),
            name: name.into(),
            version: "1".into(),
        };
        let office = [product("{90160000-0011-0000-1000-0000000FF1CE}", "Microsoft Office Professional Plus 2016")];
        let rules = Applicability {
            os: vec!["windows".into()],
            min_os_version: Some("10.0.19045".into()),
            products_installed: vec!["microsoft office professional plus 2016".into()],
            products_absent: vec!["{AAAAAAAA-0000-0000-0000-000000000000}".into()],
            ..Applicability::default()
        };
        assert_eq!(applicable(&rules, &device("windows", "10.0.22631.2861", "x86_64"), &[], &office), Ok(()));
        let windows = device("windows", "10.0.19045.3803", "x86_64");
        assert!(
            applicable(&rules, &device("windows", "10.0.17763.1", "x86_64"), &[], &office)
                .unwrap_err()
                .contains("or later")
        );
        assert!(applicable(&rules, &windows, &[], &[]).unwrap_err().starts_with("needs product"));
        let both = [office[0].clone(), product("{aaaaaaaa-0000-0000-0000-000000000000}", "Old")];
        assert!(applicable(&rules, &windows, &[], &both).unwrap_err().ends_with("is installed"));
    }
}
