//! What a signer's tool checks and shows before it signs a pending role version.
//!
//! The server prepares what signers sign, so nothing the server says is taken on trust:
//! - the published repository is refreshed with the same sans-IO TUF workflow the agent runs
//!   (`ringfence_trust::workflow`), from the signer's own trusted state (root, timestamp,
//!   snapshot and every role version it has seen or signed, kept per repository in a local
//!   directory), so an older repository cannot be passed off as current;
//! - the pending version must be the published version + 1 and newer than any version of
//!   that role this signer has seen or signed;
//! - it must keep Ringfence's layout (`ringfence_trust::policy`), expire within the signer's
//!   maximum, and every approval it adds must carry exactly the entry its publisher signed in
//!   the bin the path hashes into;
//! - the complete difference from the published version is printed (every field of every
//!   entry, `--yes` included), with the count and digest of what is unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ringfence_proto::api::{RoleState, SignatureUpload};
use ringfence_proto::limits::MAX_UPLOADED_METADATA;
use ringfence_proto::names::RoleKind;
use ringfence_proto::tuf::{Key, Root, Targets};
use ringfence_proto::{RoleName, TargetPath};
use ringfence_trust::client::TrustedSet;
use ringfence_trust::policy::{self, LayoutError, Lookup};
use ringfence_trust::workflow::{Cached, Fetched, Refresh, delegated_need};
use ringfence_trust::{Envelope, PublicKey, SigningKey};

use crate::http::Client;

/// A signer's trusted state for one repository: the newest root, timestamp and snapshot it
/// verified, and the highest version of every role it has seen published or has signed.
pub struct SignerState {
    dir: PathBuf,
}

const SEEN: &str = "seen.json";
const SIGNED: &str = "signed.json";

impl SignerState {
    /// `dir`, or `$XDG_STATE_HOME/ringfence/signer/<first 16 hex of the trusted root's
    /// sha256>` (`~/.local/state/...` without `XDG_STATE_HOME`).
    pub fn open(dir: Option<&Path>, trusted_root: &[u8]) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(d) => d.to_owned(),
            None => {
                let base = std::env::var_os("XDG_STATE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
                    .context("no HOME: pass --state-dir")?;
                let fingerprint = ringfence_trust::sha256_hex(trusted_root);
                base.join("ringfence/signer").join(fingerprint.get(..16).unwrap_or(&fingerprint))
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    fn read(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(name)).ok()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, self.dir.join(name)).with_context(|| format!("writing {name}"))
    }

    fn remove(&self, name: &str) -> anyhow::Result<()> {
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    pub fn seen(&self) -> BTreeMap<String, u64> {
        self.read(SEEN).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// The last version of each role this signer signed, with the SHA-256 of its canonical
    /// `signed` bytes.
    pub fn signed(&self) -> BTreeMap<String, (u64, String)> {
        self.read(SIGNED).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn record_signed(&self, role: &str, version: u64, digest: String) -> anyhow::Result<()> {
        let mut signed = self.signed();
        signed.insert(role.to_owned(), (version, digest));
        self.write(SIGNED, &serde_json::to_vec_pretty(&signed)?)
    }

    fn raise_seen(&self, versions: impl IntoIterator<Item = (String, u64)>) -> anyhow::Result<()> {
        let mut seen = self.seen();
        for (role, version) in versions {
            let v = seen.entry(role).or_default();
            *v = (*v).max(version);
        }
        self.write(SEEN, &serde_json::to_vec_pretty(&seen)?)
    }
}

/// How strict the review is beyond the fixed rules.
#[derive(Debug, Clone, Copy)]
pub struct ReviewOptions {
    /// Sign without asking (the difference is printed all the same).
    pub yes: bool,
    /// Refuse a version that expires later than this many seconds from now.
    pub max_expiry_secs: i64,
    /// Sign a version number this signer already signed a different document under (after
    /// a re-approval while a version was pending); refused otherwise.
    pub resign_version: bool,
    /// After a restore: the one pending version accepted although it skips versions after the
    /// published one (the signer names it; the server cannot).
    pub after_restore_version: Option<u64>,
}

fn fetch(client: &Client, role: &str, version: Option<u64>) -> anyhow::Result<Fetched> {
    // Only Ringfence role names go into an admin API path.
    let role = RoleName::parse(role).with_context(|| format!("{role:?} is not a Ringfence role name"))?;
    let path = match version {
        Some(v) => format!("/api/v1/metadata/{role}/{v}"),
        None => format!("/api/v1/metadata/{role}"),
    };
    let answer = client.get(&path)?;
    if answer.status == 404 {
        return Ok(Fetched::NotFound);
    }
    answer.ok().map(Fetched::Bytes)
}

/// The version in a workflow file name (`7.targets.json`), `None` for `timestamp.json`.
fn file_version(file: &str) -> Option<u64> {
    file.split_once('.').and_then(|(v, _)| v.parse().ok())
}

/// Refresh the published repository from the signer's trusted state, with the agent's
/// workflow; what verifies becomes the new trusted state.
pub fn refresh(client: &Client, state: &SignerState, trusted_root: &[u8], now: i64) -> anyhow::Result<TrustedSet> {
    let root = state.read("root.json").unwrap_or_else(|| trusted_root.to_vec());
    let set = TrustedSet::new(&root, now).context("the trusted root does not verify")?;
    let cached =
        Cached { timestamp: state.read("timestamp.json"), snapshot: state.read("snapshot.json"), targets: None };
    let mut refresh = Refresh::new(set, cached);
    while let Some(need) = refresh.need() {
        let version = if need.role == "timestamp" { None } else { file_version(&need.file) };
        let fetched = fetch(client, &need.role, version)?;
        let bytes = match &fetched {
            Fetched::Bytes(b) if b.len() as u64 > need.max_length => bail!("{} is longer than allowed", need.file),
            Fetched::Bytes(b) => Some(b.clone()),
            Fetched::NotFound => None,
        };
        let accepted =
            refresh.supply(fetched).with_context(|| format!("REFUSED: the server's {} does not verify", need.file));
        if refresh.discard_cached() {
            state.remove("timestamp.json")?;
            state.remove("snapshot.json")?;
        }
        if accepted?
            && let Some(bytes) = bytes
            && need.role != "targets"
        {
            state.write(&format!("{}.json", need.role), &bytes)?;
        }
    }
    let set = refresh.finish().context("REFUSED: the published repository does not verify")?;
    let mut versions: Vec<(String, u64)> = vec![("root".into(), set.root().signed.version)];
    if let Some(snapshot) = set.snapshot() {
        versions.extend(
            snapshot.signed.meta.iter().filter_map(|(f, m)| Some((f.strip_suffix(".json")?.to_owned(), m.version))),
        );
    }
    state.raise_seen(versions)?;
    Ok(set)
}

/// Load delegated `role` (delegated by the role at chain `delegator`) if the snapshot lists
/// it; `false` if it does not.
fn load(client: &Client, set: &mut TrustedSet, role: &str, delegator: &str) -> anyhow::Result<bool> {
    if set.targets(&TrustedSet::chain(delegator, role)).is_some() {
        return Ok(true);
    }
    let Some(need) = delegated_need(set, role) else { return Ok(false) };
    let Fetched::Bytes(bytes) = fetch(client, role, file_version(&need.file))? else {
        bail!("{} is missing on the server", need.file)
    };
    if bytes.len() as u64 > need.max_length {
        bail!("{} is longer than the snapshot allows", need.file);
    }
    set.update_delegated_targets(&bytes, role, delegator)
        .with_context(|| format!("REFUSED: the server's {} does not verify", need.file))?;
    Ok(true)
}

fn lookup<T>(
    client: &Client,
    set: &mut TrustedSet,
    mut step: impl FnMut(&TrustedSet) -> Result<Lookup<T>, LayoutError>,
) -> anyhow::Result<T> {
    for _ in 0..4 {
        match step(set).map_err(|e| anyhow::anyhow!("REFUSED: {e}"))? {
            Lookup::Done(answer) => return Ok(answer),
            Lookup::Load { role, delegator } => {
                if !load(client, set, &role, &delegator)? {
                    bail!("{role} is not in the snapshot");
                }
            }
        }
    }
    bail!("the lookup did not finish")
}

/// The key id under which `keyids` (names given in `keys`) list this signer's public key.
fn authorised_id(keys: &BTreeMap<String, Key>, keyids: &[String], mine: &PublicKey) -> Option<String> {
    keyids.iter().find(|id| keys.get(*id).and_then(|k| PublicKey::from_tuf(k).ok()).as_ref() == Some(mine)).cloned()
}

/// Refuse an expiry beyond the signer's maximum (or one that is not in the future).
fn check_expiry(expires: &str, now: i64, max_secs: i64) -> anyhow::Result<()> {
    let at = ringfence_trust::expiry::parse(expires).with_context(|| format!("REFUSED: expires {expires:?}"))?;
    if at > now.saturating_add(max_secs) {
        bail!(
            "REFUSED: expires {expires}, more than {} days from now (the signer's maximum; see --max-expiry-days)",
            max_secs / 86_400
        );
    }
    if at <= now {
        bail!("REFUSED: expires {expires}, which is not in the future");
    }
    Ok(())
}

/// What is about to be signed: the version, the bytes, the key id to sign under and the
/// lines to show.
struct Reviewed {
    version: u64,
    message: Vec<u8>,
    keyid: String,
    lines: Vec<String>,
}

fn review_root(
    set: &TrustedSet,
    pending: &[u8],
    mine: &PublicKey,
    options: &ReviewOptions,
    now: i64,
) -> anyhow::Result<Result<Reviewed, String>> {
    let env = Envelope::<Root>::parse(pending, MAX_UPLOADED_METADATA)?;
    let current = set.root();
    let keyid = [&env.signed, &current.signed].iter().find_map(|r| {
        let role = r.roles.get("root")?;
        authorised_id(&r.keys, &role.keyids, mine)
    });
    let Some(keyid) = keyid else {
        return Ok(Err("this key is not a root key of the current or the new root".into()));
    };
    let lines = ringfence_trust::review::diff(Some(current.signed_value()), env.signed_value()).lines();
    let shown = |result: anyhow::Result<()>| shown_refusal("root", env.signed.version, &lines, result);
    let expected = current.signed.version + 1;
    if env.signed.version != expected {
        shown(Err(anyhow::anyhow!(
            "REFUSED: root version {} pending where the trusted root is version {}; only {expected} may follow",
            env.signed.version,
            current.signed.version
        )))?;
    }
    shown(check_expiry(&env.signed.expires, now, options.max_expiry_secs))?;
    Ok(Ok(Reviewed { version: env.signed.version, message: env.canonical_signed().to_vec(), keyid, lines }))
}

/// Where and how a review runs.
struct Review<'a> {
    client: &'a Client,
    state: &'a SignerState,
    options: ReviewOptions,
    now: i64,
}

fn review_targets(
    ctx: &Review<'_>,
    set: &mut TrustedSet,
    role: &RoleName,
    pending: &[u8],
    mine: &PublicKey,
) -> anyhow::Result<Result<Reviewed, String>> {
    let (client, state, options, now) = (ctx.client, ctx.state, &ctx.options, ctx.now);
    let env = Envelope::<Targets>::parse(pending, MAX_UPLOADED_METADATA)?;
    let kind = role.kind();
    // Who delegates this role, and with which keys.
    let delegator = match &kind {
        RoleKind::Targets => "root".to_owned(),
        RoleKind::Publisher(_) | RoleKind::Approval(_) => "targets".to_owned(),
        RoleKind::PublisherBin(p, _) => {
            let publisher = p.role();
            if !load(client, set, publisher.as_str(), "targets")? {
                bail!("{publisher} is not published yet: sign it first");
            }
            let chain = TrustedSet::chain("targets", publisher.as_str());
            let top = set.targets("targets").map(|t| &t.signed);
            let doc = set.targets(&chain).map(|t| &t.signed).context("publisher role not loaded")?;
            policy::check_role(&publisher, doc, top).map_err(|e| anyhow::anyhow!("REFUSED: {e}"))?;
            chain
        }
        _ => bail!("{role} is signed by the server"),
    };
    let (keys, keyids) = if delegator == "root" {
        let root = &set.root().signed;
        (root.keys.clone(), root.roles.get("targets").map(|r| r.keyids.clone()).unwrap_or_default())
    } else {
        let parent = set.targets(&delegator).with_context(|| format!("{delegator} not loaded"))?;
        let delegations = parent.signed.delegations.as_ref();
        let entry = delegations
            .and_then(|d| d.roles.iter().find(|r| r.name == role.as_str()))
            .with_context(|| format!("REFUSED: {role} is not delegated by the published {delegator}"))?;
        (delegations.map(|d| d.keys.clone()).unwrap_or_default(), entry.keyids.clone())
    };
    let Some(keyid) = authorised_id(&keys, &keyids, mine) else {
        return Ok(Err(format!("this key may not sign {role}")));
    };

    // The baseline: the published version, which the pending one must directly follow.
    let published = set.snapshot().and_then(|s| s.signed.meta.get(&format!("{role}.json"))).map_or(0, |m| m.version);
    let current = if published == 0 {
        None
    } else if role.as_str() == "targets" {
        set.targets("targets").map(|t| t.signed_value().clone())
    } else {
        load(client, set, role.as_str(), &delegator)?;
        set.targets(&TrustedSet::chain(&delegator, role.as_str())).map(|t| t.signed_value().clone())
    };
    let mut lines = ringfence_trust::review::diff(current.as_ref(), env.signed_value()).lines();
    let version = env.signed.version;
    let shown = |lines: &[String], result: anyhow::Result<()>| shown_refusal(role.as_str(), version, lines, result);
    shown(&lines, check_baseline(state, role, &env, published, options))?;
    shown(&lines, check_expiry(&env.signed.expires, now, options.max_expiry_secs))?;
    let top = set.targets("targets").map(|t| t.signed.clone());
    let layout_top = if kind == RoleKind::Targets { None } else { top.as_ref() };
    shown(&lines, policy::check_role(role, &env.signed, layout_top).map_err(|e| anyhow::anyhow!("REFUSED: {e}")))?;
    if let RoleKind::Approval(_) = &kind {
        let old: Option<Targets> = current.as_ref().and_then(|v| serde_json::from_value(v.clone()).ok());
        for (path, entry) in &env.signed.targets {
            if old.as_ref().and_then(|c| c.targets.get(path)) == Some(entry) {
                continue;
            }
            let mut check = || -> anyhow::Result<String> {
                let path = TargetPath::parse(path)?;
                let (_, published_path) =
                    path.split_approval().with_context(|| format!("{path} is not an approval path"))?;
                let signed = lookup(client, set, |set| policy::published_entry(set, &published_path))?
                    .with_context(|| format!("REFUSED: {published_path} is not signed by its publisher in its bin"))?;
                let custom =
                    policy::check_approval(&path, entry, &signed).map_err(|e| anyhow::anyhow!("REFUSED: {e}"))?;
                Ok(format!(
                    "approves {published_path} ({:?}), signed by its publisher in its bin: {} bytes, installs with {}",
                    custom.action,
                    signed.length,
                    signed.custom.as_ref().map(|c| c.to_string()).unwrap_or_else(|| "no installer".into())
                ))
            };
            match check() {
                Ok(line) => lines.push(line),
                Err(e) => shown(&lines, Err(e))?,
            }
        }
    }
    Ok(Ok(Reviewed { version: env.signed.version, message: env.canonical_signed().to_vec(), keyid, lines }))
}

/// On a refusal, print what was about to be signed before returning the error: the signer
/// sees what the server tried.
fn shown_refusal(role: &str, version: u64, lines: &[String], result: anyhow::Result<()>) -> anyhow::Result<()> {
    if result.is_err() {
        println!("{role}, pending version {version} (REFUSED, not signed):");
        for line in lines {
            println!("  {}", ringfence_trust::review::shown(line));
        }
    }
    result
}

/// The most versions a signer skips after a restore (`--after-restore-version`).
const MAX_RESTORE_SKIP: u64 = 1_000_000;

/// The pending version must follow the published one, be newer than any version of the role
/// this signer saw published, and not replace one it signed.
fn check_baseline(
    state: &SignerState,
    role: &RoleName,
    env: &Envelope<Targets>,
    published: u64,
    options: &ReviewOptions,
) -> anyhow::Result<()> {
    // A skip is signed only at the version the signer names, and never far: a version near the
    // largest number would leave the role no room to move again.
    let skip_accepted = options.after_restore_version == Some(env.signed.version)
        && env.signed.version > published
        && env.signed.version.saturating_sub(published) <= MAX_RESTORE_SKIP;
    if options.after_restore_version == Some(env.signed.version)
        && env.signed.version.saturating_sub(published) > MAX_RESTORE_SKIP
    {
        bail!(
            "REFUSED: {role} version {} skips more than {MAX_RESTORE_SKIP} versions after the published {published}",
            env.signed.version
        );
    }
    if env.signed.version != published + 1 && !skip_accepted {
        bail!(
            "REFUSED: {role} version {} pending where version {published} is published; only {} may follow \
             (after a restore from a backup, --after-restore-version {} accepts the skip, if that is the \
             version the restore named)",
            env.signed.version,
            published + 1,
            env.signed.version
        );
    }
    let seen = state.seen().get(role.as_str()).copied().unwrap_or(0);
    if env.signed.version <= seen {
        bail!(
            "REFUSED: this signer has already seen {role} version {seen} published, yet the server shows version \
             {published} as published: the server is showing an older repository as current"
        );
    }
    check_signed_before(state, role, env, options)
}

/// Refuse a version older than one this signer signed, and another document under a version
/// number it signed before (unless `--resign-version`): two documents with one version number,
/// each signed, would let the server publish whichever it likes.
fn check_signed_before(
    state: &SignerState,
    role: &RoleName,
    env: &Envelope<Targets>,
    options: &ReviewOptions,
) -> anyhow::Result<()> {
    let Some((version, digest)) = state.signed().get(role.as_str()).cloned() else { return Ok(()) };
    let this = ringfence_trust::sha256_hex(env.canonical_signed());
    if env.signed.version < version {
        bail!(
            "REFUSED: this signer already signed {role} version {version}; the server offers version {}",
            env.signed.version
        );
    }
    if env.signed.version == version && digest != this && !options.resign_version {
        bail!(
            "REFUSED: this signer already signed a different {role} version {version} (sha256 {digest}, now {this}); \
             if that version was replaced on purpose (a change while it was pending), pass --resign-version"
        );
    }
    Ok(())
}

/// Fetch the pending version of `role`, verify and show it, sign it with `key` and upload
/// the signature.
pub fn review_and_sign(
    client: &Client,
    role: &RoleName,
    key: &SigningKey,
    trusted_root: &[u8],
    state: &SignerState,
    options: ReviewOptions,
    now: i64,
) -> anyhow::Result<Signed> {
    let pending = client
        .get(&format!("/api/v1/pending/{role}"))?
        .ok()
        .with_context(|| format!("fetching the pending version of {role}"))?;
    let mut set = refresh(client, state, trusted_root, now)?;
    let mine = key.public();
    let reviewed = match role.kind() {
        RoleKind::Root => review_root(&set, &pending, &mine, &options, now)?,
        RoleKind::Snapshot | RoleKind::Timestamp => bail!("{role} is signed by the server"),
        _ => {
            let ctx = Review { client, state, options, now };
            review_targets(&ctx, &mut set, role, &pending, &mine)?
        }
    };
    let mut reviewed = match reviewed {
        Ok(r) => r,
        Err(why) => return Ok(Signed::NotAuthorised(why)),
    };
    // On the record before it is signed: the pending version's entry on the transparency log
    // the signed top-level targets names, consistent with what this signer saw of that log.
    if let Some(line) = check_logged(client, &set, state, role, reviewed.version, &reviewed.message)? {
        reviewed.lines.push(line);
    }
    println!("{role}, pending version {}:", reviewed.version);
    for line in &reviewed.lines {
        println!("  {}", ringfence_trust::review::shown(line));
    }
    if !options.yes {
        eprint!("sign this with key {}? [y/N] ", ringfence_trust::review::shown(&reviewed.keyid));
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "yes") {
            bail!("not signed");
        }
    }
    // Recorded before the signature leaves: a server that keeps it but answers with an error
    // must not get a second, different document signed under the same version.
    state.record_signed(role.as_str(), reviewed.version, ringfence_trust::sha256_hex(&reviewed.message))?;
    let signature =
        ringfence_proto::tuf::Signature { keyid: reviewed.keyid, sig: hex::encode(key.sign(&reviewed.message)) };
    let upload = SignatureUpload { version: reviewed.version, signatures: vec![signature] };
    let answer = client.send_json("POST", &format!("/api/v1/pending/{role}/signatures"), &upload)?.ok()?;
    Ok(Signed::Signed(serde_json::from_slice(&answer)?))
}

/// The log check of a pending version: `None` when top-level targets names no log; else the
/// line the signer is shown. Refused (nothing signed) when the version is not on the log, or
/// the log does not extend what this signer saw.
fn check_logged(
    client: &Client,
    set: &TrustedSet,
    state: &SignerState,
    role: &RoleName,
    version: u64,
    message: &[u8],
) -> anyhow::Result<Option<String>> {
    use ringfence_tlog::proof::{IDENTITY_TARGET, LogIdentity, ProofBundle};
    let Some(top) = set.targets("targets") else { return Ok(None) };
    let Some(target) = top.signed.targets.get(IDENTITY_TARGET) else { return Ok(None) };
    let identity = LogIdentity::from_custom(target.custom.clone()).context("the log identity in top-level targets")?;
    let stored = state.read(LOG_CHECKPOINT);
    let trusted = match stored.as_deref() {
        Some(note) => {
            ringfence_tlog::proof::Trusted::from_note(&identity, note).context("the stored log checkpoint")?
        }
        None => None,
    };
    let old = trusted.map_or(0, |t| t.size);
    let sha256 = ringfence_trust::sha256_hex(message);
    let path = format!("/api/v1/log/pending/{role}/{version}/{sha256}/{old}");
    // A version prepared a moment ago is on the log within a second or two.
    let mut answer = client.get(&path)?;
    for _ in 0..20 {
        if answer.status != 404 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        answer = client.get(&path)?;
    }
    if answer.status == 404 {
        bail!("{role} version {version} is not on the transparency log: not signed");
    }
    let expected = ringfence_tlog::entry::Entry::Pending { role: role.to_string(), version, sha256 };
    let (bundle, newer, _) = ProofBundle::check(&answer.ok()?, &identity, &expected, stored.as_deref())
        .with_context(|| format!("{role} version {version}: not signed"))?;
    if newer.size > old {
        state.write(LOG_CHECKPOINT, &newer.note)?;
    }
    Ok(Some(format!("on the transparency log {}: entry {} of {}", identity.origin, bundle.index, newer.size)))
}

/// The newest checkpoint of the transparency log this signer verified.
const LOG_CHECKPOINT: &str = "log-checkpoint";

/// What `review_and_sign` did.
pub enum Signed {
    Signed(RoleState),
    /// The key is not one of the role's keys; nothing was signed.
    NotAuthorised(String),
}
