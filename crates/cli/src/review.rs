//! What an approver's tool checks before it signs a pending role version.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use ringfence_proto::api::{RoleState, SignatureUpload};
use ringfence_proto::limits::MAX_UPLOADED_METADATA;
use ringfence_proto::names::RoleKind;
use ringfence_proto::tuf::{Root, TargetFile, Targets, Timestamp};
use ringfence_proto::{RoleName, TargetPath};
use ringfence_trust::client::TrustedSet;
use ringfence_trust::{Envelope, SigningKey};

use crate::http::Client;

fn fetch(client: &Client, role: &str, version: Option<u64>) -> anyhow::Result<Option<Vec<u8>>> {
    let path = match version {
        Some(v) => format!("/api/v1/metadata/{role}/{v}"),
        None => format!("/api/v1/metadata/{role}"),
    };
    let answer = client.get(&path)?;
    if answer.status == 404 {
        return Ok(None);
    }
    answer.ok().map(Some)
}

/// Walk the published repository from `trusted_root` exactly as a device would.
pub fn verified_repository(client: &Client, trusted_root: &[u8], now: i64) -> anyhow::Result<TrustedSet> {
    let mut set = TrustedSet::new(trusted_root, now).context("the trusted root does not verify")?;
    loop {
        let next = set.root().signed.version + 1;
        match fetch(client, "root", Some(next))? {
            Some(bytes) => set.update_root(&bytes).with_context(|| format!("root version {next} does not verify"))?,
            None => break,
        }
    }
    let ts = fetch(client, "timestamp", None)?.context("no timestamp")?;
    set.update_timestamp(&ts).context("timestamp does not verify")?;
    let snapshot_version =
        Envelope::<Timestamp>::parse(&ts, 1 << 16)?.signed.meta.get("snapshot.json").map_or(0, |m| m.version);
    let snapshot = fetch(client, "snapshot", Some(snapshot_version))?.context("no snapshot")?;
    set.update_snapshot(&snapshot, false).context("snapshot does not verify")?;
    load_role(client, &mut set, "targets", "root")?;
    Ok(set)
}

/// Load `role` as delegated by the role at chain `delegator` (`root` for targets).
fn load_role(client: &Client, set: &mut TrustedSet, role: &str, delegator: &str) -> anyhow::Result<()> {
    if set.targets(&TrustedSet::chain(delegator, role)).is_some() {
        return Ok(());
    }
    let version = set
        .snapshot()
        .and_then(|s| s.signed.meta.get(&format!("{role}.json")))
        .map(|m| m.version)
        .with_context(|| format!("{role} is not in the snapshot"))?;
    let bytes = fetch(client, role, Some(version))?.with_context(|| format!("{role} version {version} missing"))?;
    set.update_delegated_targets(&bytes, role, delegator).with_context(|| format!("{role} does not verify"))?;
    Ok(())
}

/// The entry the publisher signed for `path`, found through verified metadata only.
fn publisher_entry(client: &Client, set: &mut TrustedSet, path: &TargetPath) -> anyhow::Result<Option<TargetFile>> {
    let Some(publisher) = path.publisher() else { return Ok(None) };
    let publisher_role = publisher.role();
    if !set.delegations_for("targets", path.as_str()).iter().any(|d| d.name == publisher_role.as_str()) {
        return Ok(None);
    }
    load_role(client, set, publisher_role.as_str(), "targets")?;
    let publisher_chain = TrustedSet::chain("targets", publisher_role.as_str());
    for bin in set.delegations_for(&publisher_chain, path.as_str()) {
        load_role(client, set, &bin.name, &publisher_chain)?;
        let bin_chain = TrustedSet::chain(&publisher_chain, &bin.name);
        if let Some(entry) = set.targets(&bin_chain).and_then(|b| b.signed.targets.get(path.as_str())) {
            return Ok(Some(entry.clone()));
        }
        if bin.terminating {
            break;
        }
    }
    Ok(None)
}

fn describe(t: &TargetFile) -> String {
    let sha = t.hashes.get("sha256").map_or("-", String::as_str);
    let custom = t.custom.as_ref().map(|c| format!(" {c}")).unwrap_or_default();
    format!("{} bytes sha256:{sha}{custom}", t.length)
}

/// Lines describing how `next` differs from `current`.
pub fn targets_diff(current: Option<&Targets>, next: &Targets) -> Vec<String> {
    let empty = BTreeMap::new();
    let old = current.map_or(&empty, |c| &c.targets);
    let mut lines =
        vec![format!("version {} -> {}, expires {}", current.map_or(0, |c| c.version), next.version, next.expires)];
    for (path, entry) in &next.targets {
        match old.get(path) {
            None => lines.push(format!("+ {path}: {}", describe(entry))),
            Some(o) if o != entry => lines.push(format!("~ {path}: {} (was {})", describe(entry), describe(o))),
            Some(_) => {}
        }
    }
    for path in old.keys().filter(|p| !next.targets.contains_key(*p)) {
        lines.push(format!("- {path}"));
    }
    let roles = |t: Option<&Targets>| -> Vec<String> {
        t.and_then(|t| t.delegations.as_ref())
            .map(|d| {
                d.roles
                    .iter()
                    .map(|r| format!("{} keys={:?} threshold={} paths={:?}", r.name, r.keyids, r.threshold, r.paths))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (before, after) = (roles(current), roles(Some(next)));
    for r in after.iter().filter(|r| !before.contains(r)) {
        lines.push(format!("+ delegation {r}"));
    }
    for r in before.iter().filter(|r| !after.contains(r)) {
        lines.push(format!("- delegation {r}"));
    }
    lines
}

/// Fetch the pending version of `role`, show and verify it, sign it with `key` and upload
/// the signature.
pub fn review_and_sign(
    client: &Client,
    role: &RoleName,
    key: &SigningKey,
    trusted_root: &[u8],
    yes: bool,
    now: i64,
) -> anyhow::Result<Signed> {
    let pending = client
        .get(&format!("/api/v1/pending/{role}"))?
        .ok()
        .with_context(|| format!("fetching the pending version of {role}"))?;
    let mut set = verified_repository(client, trusted_root, now)?;
    let keyid = key.key_id().to_string();
    let (version, message, lines) = match role.kind() {
        RoleKind::Root => {
            let env = Envelope::<Root>::parse(&pending, MAX_UPLOADED_METADATA)?;
            let current = &set.root().signed;
            let mut lines = vec![format!(
                "root version {} -> {}, expires {}",
                current.version, env.signed.version, env.signed.expires
            )];
            for (name, keys) in &env.signed.roles {
                if current.roles.get(name) != Some(keys) {
                    lines.push(format!("~ {name}: keys {:?} threshold {}", keys.keyids, keys.threshold));
                }
            }
            let listed = env.signed.roles.get("root").is_some_and(|r| r.keyids.contains(&keyid))
                || current.roles.get("root").is_some_and(|r| r.keyids.contains(&keyid));
            if !listed {
                return Ok(Signed::NotAuthorised(format!(
                    "key {keyid} is not a root key of the current or the new root"
                )));
            }
            (env.signed.version, env.canonical_signed().to_vec(), lines)
        }
        RoleKind::Snapshot | RoleKind::Timestamp => bail!("{role} is signed by the server"),
        kind => {
            let env = Envelope::<Targets>::parse(&pending, MAX_UPLOADED_METADATA)?;
            let delegator = match &kind {
                RoleKind::Targets => "root".to_owned(),
                RoleKind::PublisherBin(p, _) => {
                    load_role(client, &mut set, p.role().as_str(), "targets")?;
                    TrustedSet::chain("targets", p.role().as_str())
                }
                _ => "targets".to_owned(),
            };
            let (keyids, _) = authority(&set, role, &delegator)?;
            if !keyids.contains(&keyid) {
                return Ok(Signed::NotAuthorised(format!("key {keyid} may not sign {role}")));
            }
            let current = if role.as_str() == "targets" {
                set.targets("targets").map(|t| t.signed.clone())
            } else {
                load_role(client, &mut set, role.as_str(), &delegator).ok();
                set.targets(&TrustedSet::chain(&delegator, role.as_str())).map(|t| t.signed.clone())
            };
            let lines = targets_diff(current.as_ref(), &env.signed);
            if let RoleKind::Approval(group) = &kind {
                for (path, entry) in &env.signed.targets {
                    if current.as_ref().and_then(|c| c.targets.get(path)) == Some(entry) {
                        continue;
                    }
                    let path = TargetPath::parse(path)?;
                    let (g, published) =
                        path.split_approval().with_context(|| format!("{path} is not an approval path"))?;
                    if &g != group {
                        bail!("{path} is outside group {group}");
                    }
                    let signed = publisher_entry(client, &mut set, &published)?
                        .with_context(|| format!("REFUSED: {published} is not signed by its publisher"))?;
                    let custom: ringfence_proto::tuf::ApprovalCustom =
                        serde_json::from_value(entry.custom.clone().context("an approval without its custom fields")?)
                            .with_context(|| format!("REFUSED: {path} does not carry valid approval fields"))?;
                    if ringfence_trust::writer::entry_digest(&signed) != custom.published_entry_sha256 {
                        bail!("REFUSED: the approval of {published} does not pin the entry its publisher signed");
                    }
                    println!(
                        "  {published}: installs with {}",
                        signed.custom.as_ref().map(|c| c.to_string()).unwrap_or_else(|| "no installer".into())
                    );
                    if signed.length != entry.length || signed.hashes != entry.hashes {
                        bail!(
                            "REFUSED: the approval of {published} does not carry the length and hashes its publisher signed"
                        );
                    }
                }
            }
            (env.signed.version, env.canonical_signed().to_vec(), lines)
        }
    };
    println!("{role}, pending version {version}:");
    for line in &lines {
        println!("  {line}");
    }
    if !yes {
        eprint!("sign this with key {keyid}? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "yes") {
            bail!("not signed");
        }
    }
    let signature = ringfence_proto::tuf::Signature { keyid, sig: hex::encode(key.sign(&message)) };
    let upload = SignatureUpload { version, signatures: vec![signature] };
    let answer = client.send_json("POST", &format!("/api/v1/pending/{role}/signatures"), &upload)?.ok()?;
    Ok(Signed::Signed(serde_json::from_slice(&answer)?))
}

/// What `review_and_sign` did.
pub enum Signed {
    Signed(RoleState),
    /// The key is not one of the role's keys; nothing was signed.
    NotAuthorised(String),
}

fn authority(set: &TrustedSet, role: &RoleName, delegator: &str) -> anyhow::Result<(Vec<String>, u64)> {
    if delegator == "root" {
        let r = set.root().signed.roles.get(role.as_str()).context("role not in root")?;
        return Ok((r.keyids.clone(), r.threshold));
    }
    let parent = set.targets(delegator).with_context(|| format!("{delegator} not loaded"))?;
    let entry = parent
        .signed
        .delegations
        .as_ref()
        .and_then(|d| d.roles.iter().find(|r| r.name == role.as_str()))
        .with_context(|| format!("{role} is not delegated by {delegator}"))?;
    Ok((entry.keyids.clone(), entry.threshold))
}
