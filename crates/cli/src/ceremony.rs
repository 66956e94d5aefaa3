//! Offline ceremony steps: key files, root and top-level targets, delegated roles.
//! Everything here runs on the administrator's machine; nothing talks to the server.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ringfence_proto::tuf::{Key, Root, Targets};
use ringfence_proto::{GroupName, PublisherName};
use ringfence_trust::writer::{self, Coverage, RoleKeySet};
use ringfence_trust::{Envelope, PublicKey, SigningKey};

/// Write `key` as `<dir>/<name>.key` (encrypted when a passphrase is given) and its public
/// half as `<dir>/<name>.pub.json`. Returns the private key path.
pub fn write_key(dir: &Path, name: &str, key: &SigningKey, passphrase: Option<&str>) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let pem = match passphrase {
        Some(p) => key.to_encrypted_pem(p)?,
        None => key.to_unencrypted_pem()?,
    };
    let path = dir.join(format!("{name}.key"));
    write_private(&path, pem.as_bytes())?;
    std::fs::write(dir.join(format!("{name}.pub.json")), serde_json::to_vec_pretty(&key.public().to_tuf())?)?;
    Ok(path)
}

/// Write a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

pub fn read_key(path: &Path, passphrase: Option<&str>) -> anyhow::Result<SigningKey> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SigningKey::from_pem(&pem, passphrase).with_context(|| format!("loading {}", path.display()))
}

/// A public key from a `.pub.json` file (or, for convenience, from a private key file).
pub fn read_public(path: &Path, passphrase: Option<&str>) -> anyhow::Result<PublicKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.contains("PRIVATE KEY") {
        return Ok(read_key(path, passphrase)?.public());
    }
    let key: Key = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(PublicKey::from_tuf(&key)?)
}

/// The keys of the four top-level roles.
pub struct TopLevelKeys {
    pub root: RoleKeySet,
    pub targets: RoleKeySet,
    pub snapshot: RoleKeySet,
    pub timestamp: RoleKeySet,
}

pub fn root(version: u64, expires: i64, keys: &TopLevelKeys) -> anyhow::Result<Envelope<Root>> {
    let root = writer::root(
        version,
        expires,
        &[
            ("root", &keys.root),
            ("targets", &keys.targets),
            ("snapshot", &keys.snapshot),
            ("timestamp", &keys.timestamp),
        ],
    );
    Ok(Envelope::new(root)?)
}

/// Delegate `<publisher>/*` to the publisher's role.
pub fn add_publisher(targets: &mut Targets, publisher: &PublisherName, keys: &RoleKeySet) {
    writer::set_delegation(
        targets,
        publisher.role().as_str(),
        keys,
        Coverage::Patterns(vec![publisher.pattern()]),
        true,
    );
}

/// Delegate `approvals/<group>/*/*` to the group's approval role.
/// Publish the transparency log's identity in top-level targets (the one file it may list):
/// agents then check every approval and publisher version they act on against that log.
pub fn set_log_identity(targets: &mut Targets, identity: &ringfence_tlog::proof::LogIdentity) -> anyhow::Result<()> {
    identity.check()?;
    let bytes = serde_json::to_vec(identity)?;
    let sha = ringfence_proto::Sha256Hex::parse(&ringfence_trust::sha256_hex(&bytes))?;
    let custom = serde_json::to_value(identity)?;
    targets.targets.insert(
        ringfence_tlog::proof::IDENTITY_TARGET.to_owned(),
        writer::target_file(bytes.len() as u64, &sha, Some(custom)),
    );
    Ok(())
}

pub fn add_group(targets: &mut Targets, group: &GroupName, keys: &RoleKeySet) {
    writer::set_delegation(
        targets,
        group.approval_role().as_str(),
        keys,
        Coverage::Patterns(vec![group.approval_pattern()]),
        true,
    );
}

/// Bins per publisher as a hex prefix length: 2 means 256 bins (the server uses the same).
pub const DEFAULT_BIN_PREFIX_LEN: usize = 2;

/// The publisher role and its empty bins, signed with `keys`.
pub fn publisher_roles(
    publisher: &PublisherName,
    set: &RoleKeySet,
    signers: &[&SigningKey],
    expires: i64,
) -> anyhow::Result<Vec<(ringfence_proto::RoleName, Envelope<Targets>)>> {
    let role = writer::publisher_role(publisher, set, DEFAULT_BIN_PREFIX_LEN, 1, expires);
    let mut out = Vec::new();
    let bins: Vec<String> = role.delegations.iter().flat_map(|d| d.roles.iter().map(|r| r.name.clone())).collect();
    let mut env = Envelope::new(role)?;
    signers.iter().for_each(|k| env.sign(k));
    out.push((publisher.role(), env));
    for bin in bins {
        let mut env = Envelope::new(writer::targets(1, expires))?;
        signers.iter().for_each(|k| env.sign(k));
        out.push((ringfence_proto::RoleName::parse(&bin)?, env));
    }
    Ok(out)
}
