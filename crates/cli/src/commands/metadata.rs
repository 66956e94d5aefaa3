//! `ringfence metadata`: work on local metadata files, offline (the ceremony's root and
//! top-level targets, their next versions, signatures).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use ringfence_proto::tuf::{Root, Targets};
use ringfence_proto::{GroupName, PublisherName};
use ringfence_trust::Envelope;
use ringfence_trust::writer::{self, RoleKeySet};

use super::keys::PassphraseArgs;
use crate::{ceremony, now};

#[derive(Debug, Subcommand)]
pub enum MetadataCommand {
    /// Create root version 1 (unsigned) from public key files.
    NewRoot {
        #[arg(long)]
        out: PathBuf,
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        root_threshold: u64,
        #[arg(long = "targets-key", required = true)]
        targets_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        targets_threshold: u64,
        /// The server's online snapshot key (`online-keys/snapshot.pub.json` from `ringfence init`).
        #[arg(long)]
        snapshot_key: PathBuf,
        /// The server's online timestamp key.
        #[arg(long)]
        timestamp_key: PathBuf,
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
    /// Create top-level targets version 1 (unsigned, no delegations yet).
    NewTargets {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
    /// Start the next version of a root: same roles, version + 1, no signatures.
    NextRoot {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Replace the root keys with these public keys.
        #[arg(long = "root-key")]
        root_keys: Vec<PathBuf>,
        #[arg(long)]
        root_threshold: Option<u64>,
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
    /// Add or change a group's approval role in top-level targets (a signed file starts the
    /// next version; an unsigned draft is edited at its version).
    SetGroup {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        group: String,
        /// The approvers' public keys (required for a new group; omit to keep them).
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// How many approvers must sign (with --key).
        #[arg(long, requires = "keys")]
        threshold: Option<u64>,
        /// The group this one inherits approvals from.
        #[arg(long, conflicts_with = "no_parent")]
        parent: Option<String>,
        /// Make the group top-level again (it inherits nothing).
        #[arg(long)]
        no_parent: bool,
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
    /// Add or change a publisher in top-level targets (same versioning as set-group).
    SetPublisher {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        publisher: String,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        threshold: u64,
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
    /// Publish the transparency log's identity in top-level targets: agents then trust no
    /// approval or publisher version that is not on that log, in a checkpoint cosigned by
    /// `--quorum` of the witnesses. Starts from `online-keys/log-identity.json` (made by
    /// `ringfence init`) or the identity the file already carries.
    SetLog {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The log's identity file (`online-keys/log-identity.json`); default: keep the one in
        /// the file.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// A witness's cosignature verifier key (`ringfence witness init` prints it);
        /// repeatable. Replaces the witness list when given.
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// How many of the witnesses must cosign a checkpoint.
        #[arg(long)]
        quorum: Option<usize>,
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
    /// Add this key's signature to a metadata file, in place.
    Sign {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
}

fn read_envelope<T>(path: &Path) -> anyhow::Result<Envelope<T>>
where
    T: serde::de::DeserializeOwned + serde::Serialize + ringfence_trust::envelope::MetadataType,
{
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Envelope::parse(&bytes, ringfence_proto::limits::MAX_UPLOADED_METADATA)
        .with_context(|| format!("parsing {}", path.display()))
}

fn write_envelope<T>(path: &Path, env: &Envelope<T>) -> anyhow::Result<()>
where
    T: serde::de::DeserializeOwned + serde::Serialize + ringfence_trust::envelope::MetadataType,
{
    std::fs::write(path, env.to_bytes()?).with_context(|| format!("writing {}", path.display()))
}

fn key_set(paths: &[PathBuf], threshold: u64) -> anyhow::Result<RoleKeySet> {
    let keys = paths.iter().map(|p| ceremony::read_public(p, None)).collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        threshold >= 1 && threshold as usize <= keys.len(),
        "threshold must be between 1 and the number of keys"
    );
    Ok(RoleKeySet::new(keys, threshold))
}

/// Write the next version of the targets in `file` (see [`next_targets`]), changed by `edit`.
fn edit_targets(file: &Path, out: &Path, expires_days: i64, edit: impl FnOnce(&mut Targets)) -> anyhow::Result<()> {
    let mut next = next_targets(file, expires_days)?;
    edit(&mut next);
    write_envelope(out, &Envelope::new(next)?)?;
    println!("wrote {}; sign it with the targets keys, then propose it", out.display());
    Ok(())
}

/// The version to edit: a signed file is a published version, so its successor is started;
/// an unsigned file is a draft already being edited, so it keeps its version.
fn next_targets(file: &Path, expires_days: i64) -> anyhow::Result<Targets> {
    let current = read_envelope::<Targets>(file)?;
    let mut next = current.signed;
    if !current.signatures.is_empty() {
        next.version += 1;
    }
    next.expires = ringfence_trust::expiry::format(now() + expires_days * 86_400);
    Ok(next)
}

pub fn run(command: MetadataCommand) -> anyhow::Result<()> {
    match command {
        MetadataCommand::NewRoot {
            out,
            root_keys,
            root_threshold,
            targets_keys,
            targets_threshold,
            snapshot_key,
            timestamp_key,
            expires_days,
        } => {
            let keys = ceremony::TopLevelKeys {
                root: key_set(&root_keys, root_threshold)?,
                targets: key_set(&targets_keys, targets_threshold)?,
                snapshot: key_set(&[snapshot_key], 1)?,
                timestamp: key_set(&[timestamp_key], 1)?,
            };
            let root = ceremony::root(1, now() + expires_days * 86_400, &keys)?;
            write_envelope(&out, &root)?;
            println!("wrote {}; sign it with {root_threshold} root key(s): `ringfence metadata sign`", out.display());
        }
        MetadataCommand::NewTargets { out, expires_days } => {
            let targets = ringfence_trust::writer::targets(1, now() + expires_days * 86_400);
            write_envelope(&out, &Envelope::new(targets)?)?;
            println!("wrote {}; add groups and publishers with set-group / set-publisher, then sign it", out.display());
        }
        MetadataCommand::NextRoot { file, out, root_keys, root_threshold, expires_days } => {
            let current = read_envelope::<Root>(&file)?;
            let mut next = current.signed;
            next.version += 1;
            next.expires = ringfence_trust::expiry::format(now() + expires_days * 86_400);
            if !root_keys.is_empty() {
                let set = key_set(&root_keys, root_threshold.unwrap_or(1))?;
                for k in &set.keys {
                    next.keys.insert(k.key_id().to_string(), k.to_tuf());
                }
                if let Some(role) = next.roles.get_mut("root") {
                    role.keyids = set.keyids();
                    role.threshold = set.threshold;
                }
                let used: std::collections::BTreeSet<String> =
                    next.roles.values().flat_map(|r| r.keyids.clone()).collect();
                next.keys.retain(|id, _| used.contains(id));
            }
            write_envelope(&out, &Envelope::new(next)?)?;
            println!("wrote {}; now sign it with the old and the new root keys", out.display());
        }
        MetadataCommand::SetGroup { file, out, group, keys, threshold, parent, no_parent, expires_days } => {
            let group = GroupName::parse(&group)?;
            let role = group.approval_role();
            let set = if keys.is_empty() { None } else { Some(key_set(&keys, threshold.unwrap_or(1))?) };
            let parent = parent.as_deref().map(GroupName::parse).transpose()?;
            let mut next = next_targets(&file, expires_days)?;
            let exists = next.delegations.as_ref().is_some_and(|d| d.roles.iter().any(|r| r.name == role.as_str()));
            match set {
                Some(set) => ceremony::add_group(&mut next, &group, &set),
                None if exists => {}
                None => anyhow::bail!("{group} is a new group: name its approvers with --key and --threshold"),
            }
            if parent.is_some() || no_parent {
                writer::set_parent(&mut next, role.as_str(), parent.as_ref().map(|p| p.as_str()));
            }
            ringfence_trust::policy::check_top_level(&next).map_err(|e| anyhow::anyhow!("{e}"))?;
            write_envelope(&out, &Envelope::new(next)?)?;
            println!("wrote {}; sign it with the targets keys, then propose it", out.display());
        }
        MetadataCommand::SetPublisher { file, out, publisher, keys, threshold, expires_days } => {
            let publisher = PublisherName::parse(&publisher)?;
            let set = key_set(&keys, threshold)?;
            edit_targets(&file, &out, expires_days, |t| ceremony::add_publisher(t, &publisher, &set))?;
        }
        MetadataCommand::SetLog { file, out, identity, witnesses, quorum, expires_days } => {
            let mut next = next_targets(&file, expires_days)?;
            let current = next.targets.get(ringfence_tlog::proof::IDENTITY_TARGET).and_then(|t| t.custom.clone());
            let mut log: ringfence_tlog::proof::LogIdentity = match (identity, current) {
                (Some(path), _) => serde_json::from_slice(
                    &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                )
                .with_context(|| format!("parsing {}", path.display()))?,
                (None, Some(custom)) => serde_json::from_value(custom).context("the log identity in the file")?,
                (None, None) => {
                    anyhow::bail!("the file names no log yet: give --identity online-keys/log-identity.json")
                }
            };
            if !witnesses.is_empty() {
                log.witnesses = witnesses
                    .iter()
                    .map(|vkey| {
                        let name = vkey.split('+').next().unwrap_or_default().to_owned();
                        ringfence_tlog::proof::WitnessIdentity { name, key: vkey.clone() }
                    })
                    .collect();
            }
            if let Some(quorum) = quorum {
                log.quorum = quorum;
            }
            ceremony::set_log_identity(&mut next, &log)?;
            ringfence_trust::policy::check_top_level(&next).map_err(|e| anyhow::anyhow!("{e}"))?;
            write_envelope(&out, &Envelope::new(next)?)?;
            println!(
                "wrote {}: log {} with {} witness(es), quorum {}; sign it with the targets keys, then propose it",
                out.display(),
                log.origin,
                log.witnesses.len(),
                log.quorum
            );
        }
        MetadataCommand::Sign { file, key, passphrase } => {
            let key = passphrase.load_key(&key)?;
            let bytes = std::fs::read(&file)?;
            let value: serde_json::Value = serde_json::from_slice(&bytes)?;
            match value.pointer("/signed/_type").and_then(|v| v.as_str()) {
                Some("root") => {
                    let mut env = read_envelope::<Root>(&file)?;
                    env.sign(&key);
                    write_envelope(&file, &env)?;
                }
                Some("targets") => {
                    let mut env = read_envelope::<Targets>(&file)?;
                    env.sign(&key);
                    write_envelope(&file, &env)?;
                }
                other => anyhow::bail!("cannot sign a document of type {other:?} offline"),
            }
            println!("signed {} with {}", file.display(), key.key_id());
        }
    }
    Ok(())
}
