//! The repository's life: bootstrap from the offline-signed root, first versions of newly
//! delegated roles, renewal of what the server signs, expiry health, and the self-check.

use std::collections::BTreeMap;

use ringfence_proto::RoleName;
use ringfence_proto::api::{Health, RoleExpiry, RoleVersion};
use ringfence_proto::limits::MAX_UPLOADED_METADATA;
use ringfence_proto::names::RoleKind;
use ringfence_proto::tuf::{Root, Targets, Timestamp};
use ringfence_store::PendingRecord;
use ringfence_trust::client::TrustedSet;
use ringfence_trust::{Envelope, expiry, policy, writer};

use super::{Authority, DEFAULT_BIN_PREFIX_LEN, Repository, SERVER, bad, parse};
use crate::domain::error::{Error, Result};

impl Repository {
    /// Import a new repository: root version 1 and the offline-signed targets-type roles,
    /// each verified against the role that delegates it, then snapshot and timestamp 1.
    pub async fn bootstrap(&self, root_bytes: &[u8], roles: &[(RoleName, Vec<u8>)], now: i64) -> Result<()> {
        let _guard = self.exclusive().await?;
        if self.db.latest_metadata("root").await?.is_some() {
            return Err(Error::Conflict("the repository is already initialised".into()));
        }
        let root = Envelope::<Root>::parse(root_bytes, MAX_UPLOADED_METADATA).map_err(bad)?;
        let root_keys = root.signed.roles.get("root").ok_or_else(|| bad("root lists no root role"))?;
        root.verify("root", &root.signed.keys, &root_keys.keyids, root_keys.threshold).map_err(bad)?;
        if root.signed.version != 1 {
            return Err(bad("a new repository starts at root version 1"));
        }
        self.check_online_keys_listed(&root.signed)?;
        let mut verified: BTreeMap<String, Envelope<Targets>> = BTreeMap::new();
        let mut ordered = Vec::new();
        for (name, bytes) in roles {
            let env = Envelope::<Targets>::parse(bytes, MAX_UPLOADED_METADATA).map_err(bad)?;
            let authority = match name.kind() {
                RoleKind::Targets => {
                    let k = root.signed.roles.get("targets").ok_or_else(|| bad("root lists no targets role"))?;
                    Authority { keys: root.signed.keys.clone(), keyids: k.keyids.clone(), threshold: k.threshold }
                }
                RoleKind::Publisher(_) | RoleKind::Approval(_) => delegated_by(verified.get("targets"), name)?,
                RoleKind::PublisherBin(p, _) => delegated_by(verified.get(p.role().as_str()), name)?,
                _ => return Err(bad(format!("{name} cannot be imported"))),
            };
            env.verify(name.as_str(), &authority.keys, &authority.keyids, authority.threshold).map_err(bad)?;
            policy::check_role(name, &env.signed, verified.get("targets").map(|t| &t.signed)).map_err(bad)?;
            verified.insert(name.to_string(), env.clone());
            ordered.push((name.clone(), env));
        }
        self.commit(ordered, Some(root), now).await?;
        self.create_missing_roles(now).await?;
        self.audit.record(SERVER, "bootstrap", "initialised the repository", now).await
    }

    pub(super) fn check_online_keys_listed(&self, root: &Root) -> Result<()> {
        let keys = self.online_keys()?;
        for (role, key) in [("timestamp", &keys.timestamp), ("snapshot", &keys.snapshot)] {
            let listed =
                root.roles.get(role).is_some_and(|r| r.keyids.contains(&key.key_id().to_string()) && r.threshold == 1);
            if !listed {
                return Err(bad(format!(
                    "root must give the {role} role this server's online {role} key {} with threshold 1",
                    key.key_id()
                )));
            }
        }
        Ok(())
    }

    /// Give every delegated role that has neither metadata nor a pending version its first
    /// version: an empty approval role, a publisher role with its hashed bins, or an empty
    /// bin. Signed at once where the online keys meet the role's threshold, else held as
    /// pending for its key holders (`ringfence pending sign-all`).
    pub(super) async fn create_missing_roles(&self, now: i64) -> Result<()> {
        // A publisher role signed online in one pass makes its bins due in the next.
        for _ in 0..2 {
            let mut delegators = vec![RoleName::targets()];
            for rec in self.db.latest_all().await? {
                if let Ok(name) = RoleName::parse(&rec.role)
                    && matches!(name.kind(), RoleKind::Publisher(_))
                {
                    delegators.push(name);
                }
            }
            let mut online_signed = Vec::new();
            let top = self.latest::<Targets>("targets").await?.map(|t| t.signed);
            for delegator in delegators {
                let Some(parent) = self.latest::<Targets>(delegator.as_str()).await? else { continue };
                // Only a delegator that keeps the layout gets roles prepared below it.
                if let Err(e) = policy::check_role(&delegator, &parent.signed, top.as_ref()) {
                    tracing::warn!("not preparing roles below {delegator}: {e}");
                    continue;
                }
                let Some(delegations) = parent.signed.delegations else { continue };
                for entry in &delegations.roles {
                    let Ok(name) = RoleName::parse(&entry.name) else { continue };
                    if self.db.latest_metadata(name.as_str()).await?.is_some()
                        || self.db.pending(name.as_str()).await?.is_some()
                    {
                        continue;
                    }
                    let authority = Authority {
                        keys: delegations.keys.clone(),
                        keyids: entry.keyids.clone(),
                        threshold: entry.threshold,
                    };
                    let online = self.online_signers(&name, &authority).await?;
                    let signable = !online.is_empty();
                    let lifetime =
                        if signable { self.policy.online_targets_secs } else { self.policy.offline_targets_secs };
                    // Version 1, or past a restore's floor (a role made after a backup, made again).
                    let version = self.next_version(name.as_str(), 0).await?;
                    let first = match name.kind() {
                        RoleKind::Approval(_) | RoleKind::PublisherBin(..) => writer::targets(version, now + lifetime),
                        RoleKind::Publisher(publisher) => {
                            let keys = authority
                                .keyids
                                .iter()
                                .filter_map(|id| delegations.keys.get(id))
                                .map(ringfence_trust::PublicKey::from_tuf)
                                .collect::<Result<Vec<_>, _>>()
                                .map_err(Error::internal)?;
                            let set = writer::RoleKeySet::new(keys, authority.threshold);
                            writer::publisher_role(&publisher, &set, DEFAULT_BIN_PREFIX_LEN, version, now + lifetime)
                        }
                        _ => continue,
                    };
                    let mut env = Envelope::new(first).map_err(Error::internal)?;
                    for key in online {
                        env.sign(key);
                    }
                    if signable {
                        online_signed.push((name, env));
                    } else {
                        let bytes = env.to_bytes().map_err(Error::internal)?;
                        let record = PendingRecord { role: name.to_string(), version, bytes, created_at: now };
                        let log = [super::pending_entry(name.as_str(), version, env.canonical_signed())?];
                        self.db.put_pending(&record, &log).await?;
                        let detail = format!("{name} version {version} waits for its key holders");
                        self.audit.record(SERVER, "create", &detail, now).await?;
                    }
                }
            }
            if online_signed.is_empty() {
                break;
            }
            self.commit(online_signed, None, now).await?;
        }
        Ok(())
    }

    /// Renew what the server signs before it expires: timestamp, snapshot, and delegated roles
    /// whose threshold the online keys meet. Returns the roles renewed.
    pub async fn renew(&self, now: i64) -> Result<Vec<RoleVersion>> {
        let _guard = self.exclusive().await?;
        let mut roles = Vec::new();
        for rec in self.db.latest_all().await? {
            let Ok(name) = RoleName::parse(&rec.role) else { continue };
            if matches!(name.kind(), RoleKind::Root | RoleKind::Targets | RoleKind::Snapshot | RoleKind::Timestamp) {
                continue;
            }
            if rec.expires - now > self.policy.online_targets_secs / 2 {
                continue;
            }
            if self.db.pending(name.as_str()).await?.is_some() {
                continue;
            }
            let authority = self.authority(&name).await?;
            let online = self.online_signers(&name, &authority).await?;
            if online.is_empty() {
                continue;
            }
            let mut next = parse::<Targets>(&rec.bytes)?.signed;
            next.version = self.next_version(name.as_str(), next.version).await?;
            next.expires = expiry::format(now + self.policy.online_targets_secs);
            let mut env = Envelope::new(next).map_err(Error::internal)?;
            for key in online {
                env.sign(key);
            }
            roles.push((name, env));
        }
        let snapshot = self.db.latest_metadata("snapshot").await?;
        let timestamp = self.db.latest_metadata("timestamp").await?;
        let (Some(snapshot), Some(timestamp)) = (snapshot, timestamp) else { return Ok(Vec::new()) };
        let snapshot_due = snapshot.expires - now <= self.policy.snapshot_secs / 2;
        let timestamp_due = timestamp.expires - now <= self.policy.timestamp_secs / 2;
        if roles.is_empty() && !snapshot_due && !timestamp_due {
            return Ok(Vec::new());
        }
        let mut renewed = self.commit(roles, None, now).await?;
        for role in [RoleName::snapshot(), RoleName::timestamp()] {
            let version = self.db.latest_metadata(role.as_str()).await?.map_or(0, |r| r.version);
            renewed.push(RoleVersion { role, version });
        }
        Ok(renewed)
    }

    /// Expiry of every published role and warnings for offline roles expiring soon.
    pub async fn health(&self, now: i64) -> Result<Health> {
        let roles = self.role_expiries().await?;
        let mut warnings = Vec::new();
        for r in &roles {
            let expires = expiry::parse(&r.expires).map_err(Error::internal)?;
            if expires <= now {
                warnings.push(format!("{} version {} expired at {}", r.role, r.version, r.expires));
            } else if r.offline && expires - now <= self.policy.offline_warning_secs {
                warnings.push(format!(
                    "{} version {} expires at {}, in {} days; it is signed offline, so sign a new version",
                    r.role,
                    r.version,
                    r.expires,
                    (expires - now) / 86_400
                ));
            }
        }
        let status = if warnings.is_empty() { "ok" } else { "warn" }.to_owned();
        Ok(Health { status, warnings, roles })
    }

    /// Every published role's newest version, expiry and whether it is signed offline: worked
    /// out again only when the newest timestamp version changed.
    async fn role_expiries(&self) -> Result<Vec<RoleExpiry>> {
        let timestamp = self.db.latest_metadata("timestamp").await?.map_or(0, |t| t.version);
        if let Ok(kept) = self.expiries.lock()
            && let Some((version, roles)) = kept.as_ref()
            && *version == timestamp
            && timestamp > 0
        {
            return Ok(roles.clone());
        }
        let mut roles = Vec::new();
        for rec in self.db.latest_all().await? {
            let Ok(name) = RoleName::parse(&rec.role) else { continue };
            let offline = match name.kind() {
                RoleKind::Snapshot | RoleKind::Timestamp => false,
                RoleKind::Root | RoleKind::Targets => true,
                _ => match self.authority(&name).await {
                    Ok(a) => self.online_signers(&name, &a).await?.is_empty(),
                    Err(_) => true,
                },
            };
            roles.push(RoleExpiry { role: name, version: rec.version, expires: expiry::format(rec.expires), offline });
        }
        // Another node may have published meanwhile: keep what was read under the version read
        // before it, so a newer timestamp makes the next call look again.
        if let Ok(mut kept) = self.expiries.lock() {
            *kept = Some((timestamp, roles.clone()));
        }
        Ok(roles)
    }

    /// Check the published repository as a TUF client would, from root version 1.
    pub async fn self_check(&self, now: i64) -> Result<TrustedSet> {
        let first = self.db.metadata_version("root", 1).await?.ok_or(Error::NotFound)?;
        let mut set = TrustedSet::new(&first.bytes, now).map_err(Error::internal)?;
        let mut version = 2;
        while let Some(r) = self.db.metadata_version("root", version).await? {
            set.update_root(&r.bytes).map_err(Error::internal)?;
            version += 1;
        }
        let ts = self.db.latest_metadata("timestamp").await?.ok_or(Error::NotFound)?;
        set.update_timestamp(&ts.bytes).map_err(Error::internal)?;
        let ts_env = parse::<Timestamp>(&ts.bytes)?;
        let snap_version = ts_env.signed.meta.get("snapshot.json").map_or(0, |m| m.version);
        let snap = self.db.metadata_version("snapshot", snap_version).await?.ok_or(Error::NotFound)?;
        set.update_snapshot(&snap.bytes, false).map_err(Error::internal)?;
        let targets = self.db.latest_metadata("targets").await?.ok_or(Error::NotFound)?;
        set.update_targets(&targets.bytes).map_err(Error::internal)?;
        Ok(set)
    }
}

fn delegated_by(delegator: Option<&Envelope<Targets>>, role: &RoleName) -> Result<Authority> {
    let delegations = delegator
        .and_then(|d| d.signed.delegations.as_ref())
        .ok_or_else(|| bad(format!("{role} must come after the role that delegates it")))?;
    let entry = delegations
        .roles
        .iter()
        .find(|r| r.name == role.as_str())
        .ok_or_else(|| bad(format!("{role} is not delegated")))?;
    Ok(Authority { keys: delegations.keys.clone(), keyids: entry.keyids.clone(), threshold: entry.threshold })
}
