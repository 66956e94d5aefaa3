//! A replica's link to its upstream (`[mirror] upstream`): every `sync_secs` the node that
//! leads the jobs fetches what is new from the upstream's device listener (root versions, the
//! timestamp, the snapshot and every role whose version it does not hold, the content they
//! list that it does not hold, the log's entries past its own and the checkpoint, the rollout
//! holds) into a bundle directory and imports it through exactly the checks of `ringfence
//! import` (`domain::mirror`): nothing fetched is served before it verified. Then it forwards
//! its devices' signed report batches (each once; kept until the upstream answered) and
//! brings its devices' states up to date. A device enrolls through the replica at the
//! upstream (`device_api`), so the upstream knows every device's key and a replica can only
//! delay or drop its reports.
//!
//! Fetching is blocking HTTPS (ureq, trusting only `upstream_ca`, `client-net`), on the
//! blocking pool; every answer is bounded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ringfence_proto::api::{BUNDLE_FORMAT, BundleManifest};
use ringfence_proto::device::{
    DeviceAnswers, DeviceQuestion, EnrollRequest, EnrollResponse, ForwardedAck, ForwardedReports, MAX_FORWARDED_BATCHES,
};
use ringfence_proto::limits::{MAX_METADATA_BYTES, MAX_ROOT_BYTES, MAX_ROOT_ROTATIONS, MAX_TIMESTAMP_BYTES};
use ringfence_proto::tuf::{Snapshot, Targets, Timestamp};
use ringfence_tlog::tree;
use ringfence_trust::Envelope;
use ringfence_trust::workflow::encode_role;

use crate::{AppState, Config};

/// Entries in one entry bundle, and the most bytes one can have.
const BUNDLE: u64 = 1 << tree::TILE_HEIGHT;
const MAX_BUNDLE_BYTES: u64 = BUNDLE * (2 + ringfence_tlog::entry::MAX_ENTRY_BYTES as u64);
const MAX_ANSWER: u64 = 8 << 20;
/// Forwarding requests per sync at most (each up to [`MAX_FORWARDED_BATCHES`] batches).
const FORWARDS_PER_SYNC: usize = 100;
const DEVICES_PER_QUESTION: u64 = 1000;
/// A device waits for its enrollment through the replica at most this long.
const ENROLL_WITHIN: Duration = Duration::from_secs(10);
const POST_WITHIN: Duration = Duration::from_secs(60);

/// The upstream's device listener, as this replica reaches it.
pub struct Upstream {
    base: String,
    agent: ureq::Agent,
    token: String,
}

impl Upstream {
    /// The upstream `[mirror]` names, if any: its URL (HTTPS), CA file and token file.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Arc<Upstream>>> {
        let mirror = &config.mirror;
        let Some(url) = &mirror.upstream else { return Ok(None) };
        anyhow::ensure!(mirror.enabled, "[mirror] upstream needs [mirror] enabled = true");
        anyhow::ensure!(url.starts_with("https://"), "[mirror] upstream: an https:// URL");
        let ca = mirror.upstream_ca.as_ref().context("[mirror] upstream_ca: the upstream's CA certificate")?;
        let token = mirror.token_file.as_ref().context("[mirror] token_file: the replica's upstream token")?;
        let ca = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let token = std::fs::read_to_string(token).with_context(|| format!("reading {}", token.display()))?;
        // No redirects (content must come through the upstream's node, which the pinned CA
        // covers); a connection and an answer's head within a minute, a body within an hour.
        let agent = ureq::Agent::config_builder()
            .tls_config(ringfence_client_net::pinned_tls(&ca)?)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(Some(Duration::from_secs(3600)))
            .build()
            .into();
        Ok(Some(Arc::new(Upstream {
            base: url.trim_end_matches('/').to_owned(),
            agent,
            token: token.trim().to_owned(),
        })))
    }

    /// `path`'s body (at most `max` bytes), or None on 404.
    fn get(&self, path: &str, max: u64) -> anyhow::Result<Option<Vec<u8>>> {
        let mut answer = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .call()
            .with_context(|| format!("GET {path}"))?;
        match answer.status().as_u16() {
            200 => Ok(Some(
                answer.body_mut().with_config().limit(max).read_to_vec().with_context(|| format!("GET {path}"))?,
            )),
            404 => Ok(None),
            other => bail!("GET {path}: the upstream answered {other}"),
        }
    }

    /// `path`'s body (at most `max` bytes) into `dest`, through `dest.partial`: a download cut
    /// off is resumed where it stopped (`Range`), at most `rate` bytes a second (0: no limit).
    /// False on 404.
    fn get_to_file(&self, path: &str, dest: &Path, max: u64, rate: u64) -> anyhow::Result<bool> {
        use std::io::Write;
        let partial = dest.with_extension("partial");
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0).min(max);
        let mut request =
            self.agent.get(format!("{}{path}", self.base)).header("authorization", format!("Bearer {}", self.token));
        if have > 0 {
            request = request.header("range", format!("bytes={have}-"));
        }
        let mut answer = request.call().with_context(|| format!("GET {path}"))?;
        let (mut file, left) = match answer.status().as_u16() {
            206 if have > 0 => {
                let file = std::fs::OpenOptions::new().append(true).open(&partial)?;
                (file, max - have)
            }
            200 => (std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?, max),
            404 => return Ok(false),
            other => bail!("GET {path}: the upstream answered {other}"),
        };
        let mut reader = answer.body_mut().with_config().limit(left).reader();
        let mut pace = crate::throttle::Pace::new(rate);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = std::io::Read::read(&mut reader, &mut buf).with_context(|| format!("GET {path}"))?;
            if n == 0 {
                break;
            }
            file.write_all(buf.get(..n).unwrap_or_default())?;
            std::thread::sleep(pace.after(n as u64));
        }
        file.sync_all()?;
        std::fs::rename(&partial, dest)?;
        Ok(true)
    }

    /// POST `body` as JSON: the status and the answer (at most [`MAX_ANSWER`] bytes), within
    /// `within` in all.
    fn post<T: serde::Serialize>(&self, path: &str, body: &T, within: Duration) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut answer = self
            .agent
            .post(format!("{}{path}", self.base))
            .config()
            .timeout_global(Some(within))
            .build()
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .send(&serde_json::to_vec(body)?)
            .with_context(|| format!("POST {path}"))?;
        let status = answer.status().as_u16();
        let body = answer.body_mut().with_config().limit(MAX_ANSWER).read_to_vec()?;
        Ok((status, body))
    }
}

/// Relay what a site's caller asks for the groups this replica owns to the upstream's
/// `/replica/v1/` route `path` (a POST when there is a body): the upstream decides whether the
/// replica may (`PUT /api/v1/replicas/{name}/groups` there), and the answer comes back as is.
pub async fn relay(
    upstream: &Arc<Upstream>,
    path: String,
    body: Option<Vec<u8>>,
    actor: String,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let up = upstream.clone();
    blocking(move || {
        let url = format!("{}{path}", up.base);
        let auth = format!("Bearer {}", up.token);
        // What the upstream takes as a name: at most 64 bytes of visible ASCII.
        let actor: String = actor.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(64).collect();
        let mut answer = match body {
            Some(body) => up
                .agent
                .post(url)
                .config()
                .timeout_global(Some(POST_WITHIN))
                .build()
                .header("authorization", auth)
                .header("x-ringfence-actor", actor)
                .header("content-type", "application/json")
                .send(&body[..]),
            None => up
                .agent
                .get(url)
                .config()
                .timeout_global(Some(POST_WITHIN))
                .build()
                .header("authorization", auth)
                .header("x-ringfence-actor", actor)
                .call(),
        }
        .with_context(|| format!("relaying to {path}"))?;
        let status = answer.status().as_u16();
        Ok((status, answer.body_mut().with_config().limit(MAX_ANSWER).read_to_vec()?))
    })
    .await
}

/// Run blocking work on the blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work).await.context("a blocking task")?
}

/// Enroll a device through the upstream (the device's own signed request and the upstream's
/// token in it), and keep the device as the upstream answered.
pub async fn enroll(
    state: &AppState,
    upstream: &Arc<Upstream>,
    request: &EnrollRequest,
) -> anyhow::Result<EnrollOutcome> {
    let (up, body) = (upstream.clone(), request.clone());
    let (status, answer) = blocking(move || up.post("/replica/v1/enroll", &body, ENROLL_WITHIN)).await?;
    if status != 200 {
        let text = String::from_utf8_lossy(&answer).chars().take(512).collect();
        return Ok(EnrollOutcome::Refused { status, text });
    }
    let response: EnrollResponse = ringfence_proto::api::parse_body_limited(&answer, MAX_ANSWER as usize)
        .map_err(|e| anyhow::anyhow!("the upstream's answer: {e}"))?;
    let identity = ringfence_proto::device::DeviceIdentity {
        id: response.device_id.clone(),
        public_key: request.public_key.to_ascii_lowercase(),
        state: match response.state {
            ringfence_proto::device::EnrollState::Accepted => "accepted".into(),
            ringfence_proto::device::EnrollState::Pending => "pending".into(),
        },
        groups: response.groups.clone(),
    };
    state.mirror.adopt_device(&identity, &request.inventory, crate::unix_now()).await?;
    Ok(EnrollOutcome::Done(response))
}

/// What the upstream made of an enrollment.
pub enum EnrollOutcome {
    Done(EnrollResponse),
    /// Refused there: its status and message, passed on to the device.
    Refused {
        status: u16,
        text: String,
    },
}

/// Every `sync_secs` on the leading node: sync, forward reports, bring device states up to date.
pub async fn run(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(upstream) = state.upstream.clone() else { return };
    let every = Duration::from_secs(state.config.mirror.sync_secs.max(1));
    loop {
        if state.cluster.leading() {
            let ok = match sync(&state, &upstream).await {
                Ok(Some(imported)) => {
                    if !imported.roles.is_empty() || imported.content > 0 {
                        tracing::info!(
                            roles = imported.roles.len(),
                            content = imported.content,
                            log = imported.log_size,
                            "synced from the upstream"
                        );
                    }
                    true
                }
                Ok(None) => true,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "syncing from the upstream failed; tried again later");
                    false
                }
            };
            state.metrics.job("replica-sync", ok);
            let forwarded = forward_reports(&state, &upstream).await;
            if let Err(e) = &forwarded {
                tracing::warn!(error = format!("{e:#}"), "forwarding reports failed; kept for the next attempt");
            }
            state.metrics.job("replica-forward", forwarded.is_ok());
            if let Err(e) = device_states(&state, &upstream).await {
                tracing::warn!(error = format!("{e:#}"), "asking the upstream about devices failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Fetch what is new and import it; None when nothing changed.
pub async fn sync(
    state: &AppState,
    upstream: &Arc<Upstream>,
) -> anyhow::Result<Option<crate::domain::mirror::Imported>> {
    let held = state.mirror.held_versions().await?;
    let log_size = state.mirror.log_size().await?;
    let holds_version = state.mirror.holds_version().await?;
    // Content fetched by an attempt that failed on the way is kept for the next (it is
    // checked against the signed hashes on import all the same); the rest starts afresh.
    let dir = state.config.data_dir.join("sync");
    let start = dir.clone();
    blocking(move || {
        for part in ["metadata", "log", "rollouts.json", crate::domain::mirror::MANIFEST] {
            let path = start.join(part);
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else if path.exists() {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    })
    .await?;
    let (up, into) = (upstream.clone(), dir.clone());
    let held_for_fetch = held.clone();
    let fetched = blocking(move || fetch_metadata(&up, &into, &held_for_fetch, log_size, holds_version)).await?;
    // Content any role served lists (those fetched now and those held) that the replica does
    // not hold: what a sync cut off missed is fetched by the next.
    let fetched_dir = dir.join("metadata");
    let mut listed = blocking(move || listed_in(&fetched_dir)).await?;
    listed.extend(state.mirror.listed_content().await?);
    let mut wanted: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for (path, sha, length) in listed {
        if !wanted.contains_key(&sha) && !state.mirror.holds_content(&sha).await? {
            wanted.insert(sha, (path, length));
        }
    }
    if fetched.unchanged && wanted.is_empty() {
        return Ok(None);
    }
    let (up, into) = (upstream.clone(), dir.clone());
    let rate = state.config.mirror.max_bytes_per_sec;
    let content = blocking(move || fetch_content(&up, &into, &wanted, rate)).await?;
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT.into(),
        created_at: crate::unix_now(),
        log_from: log_size,
        log_size: fetched.log_size,
        metadata_files: fetched.metadata_files,
        content_files: content.0,
        content_bytes: content.1,
        groups: Vec::new(),
        products: Vec::new(),
        classifications: Vec::new(),
    };
    std::fs::write(dir.join(crate::domain::mirror::MANIFEST), serde_json::to_vec(&manifest)?)?;
    let pinned_path = state.config.data_dir.join("1.root.json");
    let pinned = std::fs::read(&pinned_path).with_context(|| format!("reading {}", pinned_path.display()))?;
    let imported = state.mirror.import(&state.repo, &state.log, &dir, &pinned, crate::unix_now()).await;
    let done = dir.clone();
    blocking(move || Ok(std::fs::remove_dir_all(&done)?)).await?;
    Ok(Some(imported?))
}

struct FetchedMetadata {
    unchanged: bool,
    metadata_files: u64,
    log_size: u64,
}

/// Root versions past the newest held, the timestamp, and (when it changed) the snapshot and
/// every role it lists at a version not held, the holds, the checkpoint and the log's entries
/// past `log_size`, into `dir` laid out as a bundle.
fn fetch_metadata(
    up: &Upstream,
    dir: &Path,
    held: &BTreeMap<String, u64>,
    log_size: u64,
    holds_version: u64,
) -> anyhow::Result<FetchedMetadata> {
    let metadata = dir.join("metadata");
    std::fs::create_dir_all(&metadata)?;
    std::fs::create_dir_all(dir.join("targets"))?;
    std::fs::create_dir_all(dir.join("log"))?;
    let mut files = 0u64;
    let write = |name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        std::fs::write(metadata.join(name), bytes)?;
        Ok(())
    };
    let mut roots_new = false;
    let first = held.get("root").copied().unwrap_or(1) + 1;
    for version in (first..).take(MAX_ROOT_ROTATIONS as usize) {
        let name = format!("{version}.root.json");
        let Some(bytes) = up.get(&format!("/repo/metadata/{name}"), MAX_ROOT_BYTES)? else { break };
        write(&name, &bytes)?;
        files += 1;
        roots_new = true;
    }
    let timestamp =
        up.get("/repo/metadata/timestamp.json", MAX_TIMESTAMP_BYTES)?.context("the upstream has no timestamp")?;
    // Read here only to know what to fetch; the import verifies all of it.
    let parsed = Envelope::<Timestamp>::parse(&timestamp, MAX_TIMESTAMP_BYTES as usize)?;
    let metadata_changed = roots_new || held.get("timestamp") != Some(&parsed.signed.version);
    write("timestamp.json", &timestamp)?;
    files += 1;
    let snapshot_meta = parsed.signed.meta.get("snapshot.json").context("the timestamp names no snapshot")?;
    let name = format!("{}.snapshot.json", snapshot_meta.version);
    // Unchanged, the snapshot and every role are the ones held (the import takes them from
    // there); the holds and the log can change without a new timestamp.
    let snapshot = if metadata_changed {
        let bytes = up.get(&format!("/repo/metadata/{name}"), MAX_METADATA_BYTES)?.context("no snapshot")?;
        write(&name, &bytes)?;
        files += 1;
        Some(Envelope::<Snapshot>::parse(&bytes, MAX_METADATA_BYTES as usize)?)
    } else {
        None
    };
    for (file, meta) in snapshot.iter().flat_map(|s| &s.signed.meta) {
        let Some(role) = file.strip_suffix(".json") else { continue };
        if held.get(role) == Some(&meta.version) {
            continue;
        }
        let name = format!("{}.{}.json", meta.version, encode_role(role));
        let max = meta.length.unwrap_or(MAX_METADATA_BYTES).min(MAX_METADATA_BYTES);
        if let Some(bytes) = up.get(&format!("/repo/metadata/{name}"), max)? {
            write(&name, &bytes)?;
            files += 1;
        }
    }
    let mut holds_changed = false;
    if let Some(holds) = up.get("/repo/rollouts.json", 1 << 22)? {
        let version = Envelope::<ringfence_proto::tuf::RolloutHolds>::parse(&holds, 1 << 22)
            .map(|e| e.signed.version)
            .unwrap_or(0);
        holds_changed = version != holds_version;
        std::fs::write(dir.join("rollouts.json"), holds)?;
    }
    let mut size = log_size;
    let max_note = ringfence_tlog::checkpoint::MAX_CHECKPOINT_BYTES as u64;
    if let Some(note) = up.get("/log/checkpoint", max_note)? {
        // The size on the note's second line, to know what to fetch (verified on import).
        size = std::str::from_utf8(&note)
            .ok()
            .and_then(|t| t.lines().nth(1))
            .and_then(|l| l.parse().ok())
            .context("the log's checkpoint names no size")?;
        let entries = fetch_entries(up, log_size, size)?;
        let slices: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        std::fs::write(dir.join("log/entries"), tree::entry_bundle(&slices)?)?;
        std::fs::write(dir.join("log/checkpoint"), note)?;
    }
    let unchanged = !metadata_changed && !holds_changed && size == log_size;
    Ok(FetchedMetadata { unchanged, metadata_files: files, log_size: size })
}

/// The log's entries from `from` up to `to`, from the upstream's entry bundles.
fn fetch_entries(up: &Upstream, from: u64, to: u64) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut index = from / BUNDLE;
    while index * BUNDLE < to {
        let width = (to - index * BUNDLE).min(BUNDLE);
        let path = tree::tile_path(None, index, u32::try_from(width)?);
        let bundle = up.get(&format!("/log/{path}"), MAX_BUNDLE_BYTES)?.with_context(|| format!("no {path}"))?;
        let records = tree::split_entry_bundle(&bundle)?;
        for (i, record) in (index * BUNDLE..).zip(records) {
            if i >= from && i < to {
                out.push(record.to_vec());
            }
        }
        index += 1;
    }
    anyhow::ensure!(out.len() as u64 == to.saturating_sub(from), "the upstream's entry bundles are short");
    Ok(out)
}

/// (path, SHA-256, length) of every file the targets-type roles in `metadata` list.
fn listed_in(metadata: &Path) -> anyhow::Result<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(metadata)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name == "timestamp.json" || name.ends_with(".root.json") || name.ends_with(".snapshot.json") {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        let Ok(env) = Envelope::<Targets>::parse(&bytes, MAX_METADATA_BYTES as usize) else { continue };
        for (target, file) in env.signed.targets {
            if let Some(sha) = file.hashes.get("sha256").filter(|s| ringfence_proto::Sha256Hex::parse(s).is_ok()) {
                out.push((target.clone(), sha.clone(), file.length));
            }
        }
    }
    Ok(out)
}

/// Download each wanted file (by the consistent-snapshot name of one path listing it) into
/// `dir/targets/<sha256>`: how many and their bytes.
fn fetch_content(
    up: &Upstream,
    dir: &Path,
    wanted: &BTreeMap<String, (String, u64)>,
    rate: u64,
) -> anyhow::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for (sha, (path, length)) in wanted {
        // The consistent-snapshot name: `<dir>/<sha256>.<name>`.
        let served = match path.rsplit_once('/') {
            Some((parent, name)) => format!("{parent}/{sha}.{name}"),
            None => format!("{sha}.{path}"),
        };
        let dest: PathBuf = dir.join("targets").join(sha);
        if std::fs::metadata(&dest).is_ok_and(|m| m.len() == *length) {
            // Fetched by an attempt that failed later; checked on import like the rest.
            files += 1;
            bytes += length;
            continue;
        }
        if up.get_to_file(&format!("/repo/targets/{served}"), &dest, *length, rate)? {
            files += 1;
            bytes += length;
        }
    }
    Ok((files, bytes))
}

/// Forward the devices' signed report batches not forwarded yet, oldest first.
async fn forward_reports(state: &AppState, upstream: &Arc<Upstream>) -> anyhow::Result<u64> {
    let mut sent = 0;
    for _ in 0..FORWARDS_PER_SYNC {
        let pending = state.mirror.unforwarded(MAX_FORWARDED_BATCHES as u64).await?;
        if pending.is_empty() {
            break;
        }
        let request = ForwardedReports { batches: pending.iter().map(|p| p.batch.clone()).collect() };
        let up = upstream.clone();
        let (status, answer) = blocking(move || up.post("/replica/v1/reports", &request, POST_WITHIN)).await?;
        anyhow::ensure!(status == 200, "the upstream answered {status}: {}", String::from_utf8_lossy(&answer));
        let ack: ForwardedAck = ringfence_proto::api::parse_body_limited(&answer, MAX_ANSWER as usize)
            .map_err(|e| anyhow::anyhow!("the upstream's answer: {e}"))?;
        anyhow::ensure!(ack.results.len() == pending.len(), "the upstream answered for other batches");
        for (p, result) in pending.iter().zip(&ack.results) {
            if let Some(why) = &result.refused {
                tracing::warn!(device = %p.device_id, reason = %why, "the upstream refused a forwarded report batch");
            }
        }
        let done: Vec<(String, u64)> = pending.iter().map(|p| (p.device_id.clone(), p.seq)).collect();
        state.mirror.forwarded(&done, crate::unix_now()).await?;
        sent += done.len() as u64;
    }
    Ok(sent)
}

/// Ask the upstream about every device this replica keeps; take over state changes
/// (accepted, revoked, rejected) made there.
async fn device_states(state: &AppState, upstream: &Arc<Upstream>) -> anyhow::Result<()> {
    let mut after = None;
    loop {
        let ids = state.mirror.device_ids(after.clone(), DEVICES_PER_QUESTION).await?;
        let Some(last) = ids.last().cloned() else { return Ok(()) };
        let question = DeviceQuestion { ids: ids.clone() };
        let up = upstream.clone();
        let (status, answer) = blocking(move || up.post("/replica/v1/devices", &question, POST_WITHIN)).await?;
        anyhow::ensure!(status == 200, "the upstream answered {status}");
        let answers: DeviceAnswers = ringfence_proto::api::parse_body_limited(&answer, MAX_ANSWER as usize)
            .map_err(|e| anyhow::anyhow!("the upstream's answer: {e}"))?;
        let known: BTreeMap<&str, &ringfence_proto::device::DeviceIdentity> =
            answers.devices.iter().map(|d| (d.id.as_str(), d)).collect();
        for id in &ids {
            if let Err(e) = state.mirror.update_device_state(id, known.get(id.as_str()).copied()).await {
                tracing::warn!(device = %id, error = %e, "a device's state from the upstream not taken");
            }
        }
        after = Some(last);
    }
}
