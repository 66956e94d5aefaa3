//! `ringfence audit --log URL --trusted-root FILE`: an independent audit of a server's
//! transparency log.
//!
//! From the root the auditor trusts it verifies the repository's metadata chain (TUF), takes
//! the log's identity from the signed top-level targets, verifies the newest checkpoint (log
//! key and witness quorum), reads every entry from the tiles and recomputes the tree (its root
//! must be the checkpoint's, and the root at the size it stored last time must be the one it
//! stored: otherwise the log forked or went back, and both checkpoints are the evidence), then
//! replays the entries against policy:
//! - every metadata version the server serves has an entry with its exact SHA-256 and length;
//! - every delegated role version (approvals, publishers, bins) carries a threshold of valid
//!   signatures of the keys a version of its delegator names;
//! - offline-role key changes (root versions, top-level delegation keys) are flagged.
//!
//! Findings for people, or JSON (`--json`); exit status 1 on a violation. `--watch SECS`
//! repeats it and reports only new findings; `--webhook URL` posts them as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context;
use ringfence_proto::limits::MAX_METADATA_BYTES;
use ringfence_proto::names::RoleKind;
use ringfence_proto::tuf::{Root, Targets};
use ringfence_tlog::entry::Entry;
use ringfence_tlog::proof::{IDENTITY_TARGET, LogIdentity};
use ringfence_tlog::tree::{TILE_HEIGHT, Tree, split_entry_bundle, tile_path};
use ringfence_trust::Envelope;
use ringfence_trust::client::TrustedSet;
use ringfence_trust::workflow::{Cached, Fetched, Refresh};
use serde::Serialize;

use crate::http::Client;

#[derive(Debug, clap::Args)]
pub struct LogAuditArgs {
    /// The server's device listener (`https://host:8531`), where `/log/` is served.
    #[arg(long)]
    pub log: Option<String>,
    /// Root version 1 as the auditor trusts it (from the offline ceremony).
    #[arg(long, requires = "log")]
    pub trusted_root: Option<PathBuf>,
    /// CA certificate (PEM) of the device listener.
    #[arg(long, requires = "log")]
    pub log_ca: Option<PathBuf>,
    /// Where the auditor keeps the last checkpoint it verified (to catch a fork or a log that
    /// went back between two audits).
    #[arg(long, requires = "log")]
    pub state: Option<PathBuf>,
    /// Audit again every SECS seconds, reporting new findings only.
    #[arg(long, requires = "log")]
    pub watch: Option<u64>,
    /// Post each new finding as JSON to this URL.
    #[arg(long, requires = "log")]
    pub webhook: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// `violation` or `notice`.
    pub severity: &'static str,
    pub kind: &'static str,
    pub detail: String,
    /// The notes that prove it (a fork's two checkpoints).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct AuditReport {
    pub origin: String,
    pub size: u64,
    pub root: String,
    pub cosignatures: usize,
    pub metadata_versions: usize,
    pub role_versions_verified: usize,
    pub signatures_verified: u64,
    /// Signature entries on the log (signatures received for pending versions).
    pub signature_entries: u64,
    /// Every approval decision, as its signed version says it (with the reason approvers gave).
    pub approvals: Vec<Approval>,
    pub findings: Vec<Finding>,
}

/// One approval decision: a target added to or changed in a group's approval role.
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub role: String,
    pub version: u64,
    pub target: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn violation(kind: &'static str, detail: String) -> Finding {
    Finding { severity: "violation", kind, detail, evidence: Vec::new() }
}

fn notice(kind: &'static str, detail: String) -> Finding {
    Finding { severity: "notice", kind, detail, evidence: Vec::new() }
}

/// Where the auditor reads metadata: the admin API (with a read token) or the repository.
pub enum MetadataSource {
    Admin(Client),
    Repository(Client),
}

impl MetadataSource {
    /// `role` version `version` (`None`: the newest), or `None` when there is none.
    fn get(&self, role: &str, version: Option<u64>) -> anyhow::Result<Option<Vec<u8>>> {
        let answer = match (self, version) {
            (MetadataSource::Admin(c), Some(v)) => c.get(&format!("/api/v1/metadata/{role}/{v}"))?,
            (MetadataSource::Admin(c), None) => c.get(&format!("/api/v1/metadata/{role}"))?,
            (MetadataSource::Repository(c), Some(v)) => c.get(&format!("/repo/metadata/{v}.{role}.json"))?,
            (MetadataSource::Repository(c), None) => c.get(&format!("/repo/metadata/{role}.json"))?,
        };
        match answer.status {
            404 => Ok(None),
            _ => Ok(Some(answer.ok()?)),
        }
    }

    /// A metadata file by its repository name (`2.root.json`, `timestamp.json`, …).
    fn file(&self, file: &str) -> anyhow::Result<Fetched> {
        let (role, version) =
            ringfence_proto::repo_path::metadata_file(file).with_context(|| format!("not a metadata file: {file}"))?;
        Ok(match self.get(role.as_str(), version)? {
            Some(bytes) => Fetched::Bytes(bytes),
            None => Fetched::NotFound,
        })
    }
}

/// The trusted set from `root` to the newest timestamp, snapshot and top-level targets.
fn refresh(source: &MetadataSource, root: &[u8], now: i64) -> anyhow::Result<TrustedSet> {
    let set = TrustedSet::new(root, now).context("the trusted root does not verify")?;
    let mut refresh = Refresh::new(set, Cached { timestamp: None, snapshot: None, targets: None });
    while let Some(need) = refresh.need() {
        let fetched = source.file(&need.file)?;
        refresh.supply(fetched).with_context(|| format!("{} refused", need.file))?;
    }
    Ok(refresh.finish()?)
}

/// What the auditor keeps between audits.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    note: String,
}

/// The log as read: the tree, and what its entries say.
struct Replay {
    note: Vec<u8>,
    size: u64,
    root: ringfence_tlog::Hash,
    tree: Tree,
    /// (role, version) → (sha256, length, index) of each metadata entry.
    metadata: BTreeMap<(String, u64), (String, u64, u64)>,
    /// (role, version) → the SHA-256s of its pending entries.
    pending: BTreeMap<(String, u64), BTreeSet<String>>,
    /// (role, version, key id, signed sha256) of each signature entry.
    signatures: Vec<(String, u64, String, String)>,
}

/// Read the newest checkpoint and every entry, and rebuild the tree.
fn read_log(log: &Client, identity: &LogIdentity, findings: &mut Vec<Finding>) -> anyhow::Result<Replay> {
    let note = log.get("/log/checkpoint")?.ok()?;
    let checkpoint = identity.verify_checkpoint(&note).context("the log's checkpoint")?;
    let size = checkpoint.size();
    let mut tree = Tree::new();
    let per_tile = 1u64 << TILE_HEIGHT;
    for n in 0..size.div_ceil(per_tile) {
        let width = u32::try_from((size - n * per_tile).min(per_tile)).unwrap_or(0);
        let bundle = log.get(&format!("/log/{}", tile_path(None, n, width)))?.ok()?;
        let records = split_entry_bundle(&bundle)?;
        anyhow::ensure!(records.len() == width as usize, "entry bundle {n}: {} entries, not {width}", records.len());
        for record in records {
            tree.append(record)?;
        }
    }
    let root = tree.root(size)?;
    if root != *checkpoint.hash() {
        findings.push(violation("tiles", "the entries served do not make the tree the checkpoint signs".into()));
    }
    let mut replay =
        Replay { note, size, root, tree, metadata: BTreeMap::new(), pending: BTreeMap::new(), signatures: Vec::new() };
    for index in 0..size {
        let record = replay.tree.record(index).map(<[u8]>::to_vec).with_context(|| format!("no entry {index}"))?;
        match Entry::parse(&record) {
            Ok(Entry::Metadata { role, version, sha256, length }) => {
                if let Some(old) = replay.metadata.get(&(role.clone(), version))
                    && (&old.0, old.1) != (&sha256, length)
                {
                    findings.push(violation(
                        "two-versions",
                        format!("{role} version {version} is logged twice, differently"),
                    ));
                }
                replay.metadata.entry((role, version)).or_insert((sha256, length, index));
            }
            Ok(Entry::Pending { role, version, sha256 }) => {
                replay.pending.entry((role, version)).or_default().insert(sha256);
            }
            Ok(Entry::Signature { role, version, key_id, signed_sha256, .. }) => {
                replay.signatures.push((role, version, key_id, signed_sha256));
            }
            Ok(_) => {}
            Err(e) => findings.push(violation("entry", format!("entry {index}: {e}"))),
        }
    }
    Ok(replay)
}

/// The newest version of every role a trusted set shows.
fn newest(set: &TrustedSet) -> anyhow::Result<BTreeMap<String, u64>> {
    let snapshot = set.snapshot().context("no snapshot")?;
    let mut latest: BTreeMap<String, u64> = snapshot
        .signed
        .meta
        .iter()
        .filter_map(|(file, meta)| file.strip_suffix(".json").map(|r| (r.to_owned(), meta.version)))
        .collect();
    latest.insert("root".into(), set.root().signed.version);
    latest.insert("snapshot".into(), snapshot.signed.version);
    latest.insert("timestamp".into(), set.timestamp().map_or(0, |t| t.signed.version));
    Ok(latest)
}

/// One audit.
pub fn audit(
    source: &MetadataSource,
    log: &Client,
    root: &[u8],
    state: Option<&PathBuf>,
    now: i64,
) -> anyhow::Result<AuditReport> {
    let mut findings = Vec::new();
    let set = refresh(source, root, now)?;
    let top = set.targets("targets").context("no top-level targets")?;
    let identity = match top.signed.targets.get(IDENTITY_TARGET) {
        Some(file) => LogIdentity::from_custom(file.custom.clone()).context("the log identity in top-level targets")?,
        None => anyhow::bail!("top-level targets names no transparency log"),
    };
    let shown = newest(&set)?;

    // A version is published a moment before it is logged: one the server shows that is not
    // on the log yet may be a second old. Read the log again (three times at most) first.
    let mut replay = read_log(log, &identity, &mut findings)?;
    for _ in 0..3 {
        if shown.iter().all(|(role, v)| replay.metadata.contains_key(&(role.clone(), *v))) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1000));
        findings.clear();
        replay = read_log(log, &identity, &mut findings)?;
    }
    // What the server shows after the checkpoint was read: nothing on the log may be newer (a
    // version logged but kept from the auditor was served to someone else).
    let after = newest(&refresh(source, root, now)?)?;

    // Against the checkpoint kept from the last audit: the same tree at its size, or a fork.
    let note_text = String::from_utf8_lossy(&replay.note).into_owned();
    let mut keep = true;
    if let Some(path) = state
        && let Ok(kept) = std::fs::read(path)
    {
        let stored = serde_json::from_slice::<Stored>(&kept)
            .map_err(anyhow::Error::from)
            .and_then(|s| Ok((ringfence_tlog::proof::Trusted::from_note(&identity, s.note.as_bytes())?, s)));
        match stored {
            Ok((None, _)) => {
                findings.push(notice("new-log", "the kept checkpoint is of another log key; starting afresh".into()));
            }
            Ok((Some(before), stored)) => {
                let evidence = vec![stored.note.clone(), note_text.clone()];
                if before.size > replay.size {
                    let detail = format!("the log went back from {} to {} entries", before.size, replay.size);
                    findings.push(Finding { evidence, ..violation("rollback", detail) });
                    keep = false;
                } else if replay.tree.root(before.size)? != before.root {
                    let detail = format!("two different trees of {} entries: the log forked", before.size);
                    findings.push(Finding { evidence, ..violation("fork", detail) });
                    keep = false;
                }
            }
            Err(e) => {
                findings.push(violation("state", format!("the kept checkpoint: {e:#}")));
                keep = false;
            }
        }
    }

    // Every version served and every version logged: the two must agree.
    let mut wanted: BTreeSet<(String, u64)> = replay.metadata.keys().cloned().collect();
    for (role, newest) in &after {
        wanted.extend((1..=*newest).map(|v| (role.clone(), v)));
    }
    let mut versions = Versions::new();
    let mut metadata_versions = 0usize;
    for (role, version) in wanted {
        let logged = replay.metadata.get(&(role.clone(), version));
        let served = match source.get(&role, Some(version)) {
            Ok(b) => b,
            Err(e) => {
                findings.push(violation("unreadable", format!("{role} version {version}: {e:#}")));
                continue;
            }
        };
        if let Some((_, _, index)) = logged
            && after.get(&role).is_none_or(|newest| version > *newest)
        {
            let detail =
                format!("{role} version {version} is on the log (entry {index}) but the server does not show it");
            findings.push(violation("hidden", detail));
        }
        match (logged, served) {
            (None, None) => {}
            (Some((_, _, index)), None) => {
                let detail =
                    format!("{role} version {version} is on the log (entry {index}) but its bytes are not served");
                findings.push(violation("withheld", detail));
            }
            (None, Some(_)) => {
                findings.push(violation("unlogged", format!("{role} version {version} is served but not on the log")));
            }
            (Some((sha, len, index)), Some(b)) => {
                metadata_versions += 1;
                if (ringfence_trust::sha256_hex(&b), b.len() as u64) != (sha.clone(), *len) {
                    let detail = format!("{role} version {version} is served with other bytes than logged");
                    findings.push(violation("mismatch", detail));
                } else if role != "timestamp" && role != "snapshot" {
                    versions.entry(role).or_default().push((version, Some(*index), b));
                }
            }
        }
    }
    let (role_versions_verified, signatures_verified) = check_thresholds(&versions, &mut findings);
    key_changes(&versions, &mut findings);
    // Every signature the server received was for bytes it had put on the record as pending.
    for (role, version, key_id, signed) in &replay.signatures {
        if !replay.pending.get(&(role.clone(), *version)).is_some_and(|shas| shas.contains(signed)) {
            let detail =
                format!("a signature by {key_id} for {role} version {version} is for bytes never logged as pending");
            findings.push(violation("signature", detail));
        }
    }

    if keep && let Some(path) = state {
        write_atomic(path, &serde_json::to_vec(&Stored { note: note_text })?)?;
    }
    let cosignatures =
        replay.note.split(|b| *b == b'\n').filter(|l| l.starts_with("\u{2014}".as_bytes())).count().saturating_sub(1);
    let approvals = approvals(&versions);
    findings.sort();
    findings.dedup();
    Ok(AuditReport {
        origin: identity.origin,
        size: replay.size,
        root: hex::encode(replay.root.0),
        cosignatures,
        metadata_versions,
        role_versions_verified,
        signatures_verified,
        signature_entries: replay.signatures.len() as u64,
        approvals,
        findings,
    })
}

/// Write through a temporary file, synced, then renamed: never half a state file.
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// (version, log index, bytes) of every version of each role, in version order.
type Versions = BTreeMap<String, Vec<(u64, Option<u64>, Vec<u8>)>>;

fn parse_targets(bytes: &[u8]) -> Option<Envelope<Targets>> {
    Envelope::<Targets>::parse(bytes, MAX_METADATA_BYTES as usize).ok()
}

/// The versions of `role` in force at log index `index`: the newest logged before it (for an
/// installation that published before it had a log there is none: then every version).
fn in_force(versions: &Versions, role: &str, index: Option<u64>) -> Vec<Vec<u8>> {
    let Some(list) = versions.get(role) else { return Vec::new() };
    let before =
        index.and_then(|i| list.iter().filter(|(_, at, _)| at.is_some_and(|a| a < i)).max_by_key(|(_, at, _)| *at));
    match before {
        Some((_, _, bytes)) => vec![bytes.clone()],
        None => list.iter().map(|(_, _, b)| b.clone()).collect(),
    }
}

/// Every version of a delegated role (approvals, publishers, bins) against the version of its
/// delegator in force when it was logged, and every top-level targets version against the root
/// in force: the keys named must meet the threshold. (Root versions are checked by the TUF
/// chain from the trusted root.)
fn check_thresholds(versions: &Versions, findings: &mut Vec<Finding>) -> (usize, u64) {
    let (mut checked, mut signatures) = (0usize, 0u64);
    for (role, list) in versions {
        let delegator = match ringfence_proto::RoleName::parse(role).map(|r| r.kind()) {
            Ok(RoleKind::PublisherBin(p, _)) => p.role().to_string(),
            Ok(RoleKind::Publisher(_) | RoleKind::Approval(_)) => "targets".into(),
            Ok(RoleKind::Targets) => "root".into(),
            _ => continue,
        };
        for (version, index, bytes) in list {
            let Some(env) = parse_targets(bytes) else {
                findings.push(violation("malformed", format!("{role} version {version} does not parse")));
                continue;
            };
            checked += 1;
            let authorities: Vec<(u64, u64)> = in_force(versions, &delegator, *index)
                .iter()
                .filter_map(|b| {
                    if delegator == "root" {
                        let root = Envelope::<Root>::parse(b, MAX_METADATA_BYTES as usize).ok()?;
                        let r = root.signed.roles.get("targets")?;
                        Some((env.count_valid(&root.signed.keys, &r.keyids), r.threshold))
                    } else {
                        let d = parse_targets(b)?.signed.delegations?;
                        let entry = d.roles.iter().find(|r| r.name == *role)?;
                        Some((env.count_valid(&d.keys, &entry.keyids), entry.threshold))
                    }
                })
                .collect();
            let best = authorities.into_iter().max_by_key(|(valid, threshold)| (*valid >= *threshold, *valid));
            match best {
                Some((valid, threshold)) if valid >= threshold && threshold > 0 => signatures += valid,
                Some((valid, threshold)) => findings.push(violation(
                    "threshold",
                    format!("{role} version {version} carries {valid} valid signatures of the {threshold} its delegation needs"),
                )),
                None => findings.push(violation(
                    "threshold",
                    format!("{role} version {version}: the {delegator} in force does not delegate it"),
                )),
            }
        }
    }
    (checked, signatures)
}

/// Each approval role's decisions, version by version: what each version adds or changes.
fn approvals(versions: &Versions) -> Vec<Approval> {
    let mut out = Vec::new();
    for (role, list) in versions.iter().filter(|(r, _)| r.starts_with("approvals.")) {
        let mut before: BTreeMap<String, ringfence_proto::tuf::TargetFile> = BTreeMap::new();
        for (_, _, bytes) in list {
            let Some(env) = parse_targets(bytes) else { continue };
            for (target, file) in &env.signed.targets {
                if before.get(target) == Some(file) {
                    continue;
                }
                let custom: Option<ringfence_proto::tuf::ApprovalCustom> =
                    file.custom.clone().and_then(|c| serde_json::from_value(c).ok());
                out.push(Approval {
                    role: role.clone(),
                    version: env.signed.version,
                    target: target.clone(),
                    action: custom.as_ref().map_or_else(|| "?".into(), |c| format!("{:?}", c.action).to_lowercase()),
                    reason: custom.and_then(|c| c.reason),
                });
            }
            before = env.signed.targets;
        }
    }
    out
}

/// Offline-role key changes: each root version after the first, and each top-level targets
/// version whose delegations name other keys than the version before.
fn key_changes(versions: &Versions, findings: &mut Vec<Finding>) {
    for (version, _, _) in versions.get("root").map(Vec::as_slice).unwrap_or_default().iter().skip(1) {
        findings.push(notice("root-keys", format!("root version {version}: the root of trust changed")));
    }
    let mut previous: Option<BTreeSet<String>> = None;
    for (_, _, bytes) in versions.get("targets").map(Vec::as_slice).unwrap_or_default() {
        let Some(targets) = parse_targets(bytes) else { continue };
        let keys: BTreeSet<String> = targets
            .signed
            .delegations
            .as_ref()
            .map(|d| d.roles.iter().map(|r| format!("{}:{}:{}", r.name, r.threshold, r.keyids.join(","))).collect())
            .unwrap_or_default();
        if let Some(before) = &previous
            && *before != keys
        {
            let changed: Vec<&str> = keys
                .symmetric_difference(before)
                .filter_map(|k| k.split(':').next())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            findings.push(notice(
                "delegation-keys",
                format!(
                    "targets version {}: the keys or threshold of {} changed",
                    targets.signed.version,
                    changed.join(", ")
                ),
            ));
        }
        previous = Some(keys);
    }
}

/// Print a report for people.
pub fn print(report: &AuditReport) {
    println!("log {}: {} entries, root {}", report.origin, report.size, report.root);
    println!("checkpoint verified with the log key and {} cosignature(s)", report.cosignatures);
    println!(
        "{} metadata versions served, each checked against the log; {} delegated role versions, {} signatures verified",
        report.metadata_versions, report.role_versions_verified, report.signatures_verified
    );
    println!("{} signature entries on the log", report.signature_entries);
    for a in &report.approvals {
        let reason = a.reason.as_deref().map(|r| format!(" (reason: {r})")).unwrap_or_default();
        println!("  {} version {}: {} {}{reason}", a.role, a.version, a.action, a.target);
    }
    let violations = report.findings.iter().filter(|f| f.severity == "violation").count();
    for f in &report.findings {
        println!("{}: {} ({})", f.severity.to_uppercase(), f.detail, f.kind);
        for e in &f.evidence {
            println!("  evidence:\n{}", e.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n"));
        }
    }
    if violations == 0 {
        println!("no violation");
    }
}

/// `ringfence audit --log …`: once, or every `--watch` seconds.
pub fn run(args: &LogAuditArgs, source: MetadataSource, json: bool) -> anyhow::Result<()> {
    let url = args.log.as_deref().context("--log")?;
    let root_file = args.trusted_root.as_ref().context("--trusted-root: the root you trust (1.root.json)")?;
    let root = std::fs::read(root_file).with_context(|| format!("reading {}", root_file.display()))?;
    let ca = args.log_ca.as_ref().context("--log-ca: the device listener's CA certificate")?;
    let log = Client::new(url.trim_end_matches('/'), None, ca)?;
    let mut seen: BTreeSet<Finding> = BTreeSet::new();
    loop {
        let report = match audit(&source, &log, &root, args.state.as_ref(), crate::now()) {
            Ok(report) => report,
            // Watching, a failed audit is a finding too (an answer withheld, a tile that does
            // not parse), reported, and the watch goes on.
            Err(e) if args.watch.is_some() => {
                let finding = violation("audit-failed", format!("{e:#}"));
                eprintln!("VIOLATION: {} (audit-failed)", finding.detail);
                if let Some(hook) = &args.webhook
                    && let Err(e) = post_finding(hook, url, &finding)
                {
                    eprintln!("webhook: {e:#}");
                }
                std::thread::sleep(std::time::Duration::from_secs(args.watch.unwrap_or(60).max(1)));
                continue;
            }
            Err(e) => return Err(e),
        };
        let new: Vec<Finding> = report.findings.iter().filter(|f| !seen.contains(*f)).cloned().collect();
        if json {
            crate::output::json(&report)?;
        } else {
            print(&report);
        }
        if let Some(hook) = &args.webhook {
            for f in &new {
                if let Err(e) = post_finding(hook, &report.origin, f) {
                    eprintln!("webhook: {e:#}");
                }
            }
        }
        seen.extend(new);
        let violations = report.findings.iter().any(|f| f.severity == "violation");
        match args.watch {
            Some(secs) => std::thread::sleep(std::time::Duration::from_secs(secs.max(1))),
            None if violations => anyhow::bail!("the log breaks policy (see the violations above)"),
            None => return Ok(()),
        }
    }
}

fn post_finding(url: &str, origin: &str, finding: &Finding) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&serde_json::json!({"log": origin, "finding": finding}))?;
    let agent = ureq::Agent::new_with_defaults();
    agent.post(url).header("content-type", "application/json").send(&body[..])?;
    Ok(())
}
