//! Pending versions and offline signatures: proposals of whole documents, signatures added one
//! upload at a time, each checked before anything is kept.

use std::collections::BTreeMap;

use ringfence_proto::RoleName;
use ringfence_proto::api::{PendingSummary, RoleState, SignatureUpload};
use ringfence_proto::limits::MAX_UPLOADED_METADATA;
use ringfence_proto::names::RoleKind;
use ringfence_proto::tuf::{Key, Root, Targets};
use ringfence_store::PendingRecord;
use ringfence_trust::{Envelope, policy};

use super::{Authority, Repository, bad, parse, pending_entry, signature_entries};
use crate::domain::error::{Error, Result};

impl Repository {
    pub async fn list_pending(&self) -> Result<Vec<PendingSummary>> {
        let mut out = Vec::new();
        for p in self.db.list_pending().await? {
            let role = RoleName::parse(&p.role).map_err(Error::internal)?;
            let (signed_by, waiting_for, threshold) = self.signers_of(&role, &p.bytes).await?;
            out.push(PendingSummary {
                role,
                version: p.version,
                created_at: p.created_at,
                signed_by,
                waiting_for,
                threshold,
            });
        }
        Ok(out)
    }

    /// Who validly signed a pending document, who may still sign it, and the threshold (for
    /// root: its old and new root keys, and the larger of the two thresholds).
    async fn signers_of(&self, role: &RoleName, bytes: &[u8]) -> Result<(Vec<String>, Vec<String>, u64)> {
        let (message, signatures, keys, keyids, threshold) = if let RoleKind::Root = role.kind() {
            let env = Envelope::<Root>::parse(bytes, MAX_UPLOADED_METADATA).map_err(Error::internal)?;
            let current = self.latest_root().await?;
            let old = current.signed.roles.get("root").cloned();
            let new = env.signed.roles.get("root").cloned();
            let mut keys = current.signed.keys.clone();
            keys.extend(env.signed.keys.clone());
            let mut keyids: Vec<String> = old.iter().chain(new.iter()).flat_map(|r| r.keyids.clone()).collect();
            keyids.sort();
            keyids.dedup();
            let threshold = old.map_or(0, |r| r.threshold).max(new.map_or(0, |r| r.threshold));
            (env.canonical_signed().to_vec(), env.signatures, keys, keyids, threshold)
        } else {
            let env = parse::<Targets>(bytes)?;
            let authority = self.authority(role).await?;
            (env.canonical_signed().to_vec(), env.signatures, authority.keys, authority.keyids, authority.threshold)
        };
        let signed: Vec<String> = signatures
            .iter()
            .filter(|s| ringfence_trust::envelope::count_valid(&message, std::slice::from_ref(*s), &keys, &keyids) == 1)
            .map(|s| s.keyid.clone())
            .collect();
        let waiting = keyids.into_iter().filter(|k| !signed.contains(k)).collect();
        Ok((signed, waiting, threshold))
    }

    pub async fn pending_bytes(&self, role: &RoleName) -> Result<Vec<u8>> {
        Ok(self.db.pending(role.as_str()).await?.ok_or(Error::NotFound)?.bytes)
    }

    /// Propose a new version of an offline-signed role (root, targets, a publisher or
    /// approval role) as a whole document, with the signatures gathered so far.
    pub async fn propose(&self, role: &RoleName, bytes: &[u8], actor: &str, now: i64) -> Result<RoleState> {
        // A mirror keeps only what its imports verified.
        self.online_keys()?;
        let _guard = self.exclusive().await?;
        match role.kind() {
            RoleKind::Root => {
                let env = Envelope::<Root>::parse(bytes, MAX_UPLOADED_METADATA).map_err(bad)?;
                let current = self.latest_root().await?;
                expect_next(role, current.signed.version, env.signed.version)?;
                self.check_online_keys_listed(&env.signed)?;
                self.settle_root(env, &current, Vec::new(), actor, now).await
            }
            RoleKind::Snapshot | RoleKind::Timestamp => Err(bad("snapshot and timestamp are signed by the server")),
            _ => {
                let env = Envelope::<Targets>::parse(bytes, MAX_UPLOADED_METADATA).map_err(bad)?;
                let current = self.latest::<Targets>(role.as_str()).await?.ok_or(Error::NotFound)?;
                // Past a restore's floor: a version devices may trust is never proposed again.
                let floor = self.db.version_floor(role.as_str()).await?;
                expect_next(role, current.signed.version.max(floor), env.signed.version)?;
                // Nothing that breaks the layout is held for signers, let alone published.
                let top = self.latest::<Targets>("targets").await?.map(|t| t.signed);
                policy::check_role(role, &env.signed, top.as_ref()).map_err(bad)?;
                let authority = self.authority(role).await?;
                // Only valid signatures are kept, so a pending document never carries junk.
                let env = keep_valid(env, &authority)?;
                let log =
                    signature_entries(role.as_str(), env.signed.version, env.canonical_signed(), &env.signatures)?;
                let state = self.settle(role, env, &authority, log, now).await?;
                let outcome = if state.published { "published" } else { "held for signatures" };
                let detail = format!(
                    "{role} version {} with {} of {} signatures: {outcome}",
                    state.version, state.valid_signatures, state.threshold
                );
                self.audit.record(actor, "propose", &detail, now).await?;
                Ok(state)
            }
        }
    }

    pub(super) async fn settle_root(
        &self,
        env: Envelope<Root>,
        current: &Envelope<Root>,
        mut log: Vec<Vec<u8>>,
        actor: &str,
        now: i64,
    ) -> Result<RoleState> {
        let old = current.signed.roles.get("root").ok_or_else(|| Error::internal("root without root role"))?;
        let new = env.signed.roles.get("root").ok_or_else(|| bad("the new root lists no root role"))?;
        let by_old = env.count_valid(&current.signed.keys, &old.keyids);
        let by_new = env.count_valid(&env.signed.keys, &new.keyids);
        let version = env.signed.version;
        let threshold = old.threshold.max(new.threshold);
        let published = by_old >= old.threshold && by_new >= new.threshold && new.threshold > 0;
        if self.pending_changes("root", version, env.canonical_signed()).await? {
            log.insert(0, pending_entry("root", version, env.canonical_signed())?);
        }
        if published {
            self.commit_logged(Vec::new(), Some(env), log, now).await?;
            self.audit.record(actor, "root", &format!("published root version {version}"), now).await?;
        } else {
            let bytes = env.to_bytes().map_err(Error::internal)?;
            let record = PendingRecord { role: "root".into(), version, bytes, created_at: now };
            self.db.put_pending(&record, &log).await?;
        }
        Ok(RoleState { role: RoleName::root(), version, published, valid_signatures: by_old.min(by_new), threshold })
    }

    /// Add offline signatures to the pending version of `role`; publish when they suffice.
    /// A signature that does not verify is refused and nothing changes.
    pub async fn add_signatures(
        &self,
        role: &RoleName,
        upload: SignatureUpload,
        actor: &str,
        now: i64,
    ) -> Result<RoleState> {
        // A mirror keeps only what its imports verified.
        self.online_keys()?;
        let _guard = self.exclusive().await?;
        let pending = self.db.pending(role.as_str()).await?.ok_or(Error::NotFound)?;
        if pending.version != upload.version {
            return Err(Error::Conflict(format!(
                "pending version of {role} is {}, the signatures are for version {}",
                pending.version, upload.version
            )));
        }
        if let RoleKind::Root = role.kind() {
            let mut env = Envelope::<Root>::parse(&pending.bytes, MAX_UPLOADED_METADATA).map_err(Error::internal)?;
            let current = self.latest_root().await?;
            let mut keys = current.signed.keys.clone();
            keys.extend(env.signed.keys.clone());
            let mut keyids: Vec<String> =
                current.signed.roles.get("root").map(|r| r.keyids.clone()).unwrap_or_default();
            keyids.extend(env.signed.roles.get("root").map(|r| r.keyids.clone()).unwrap_or_default());
            check_each_signature(env.canonical_signed(), &upload.signatures, &keys, &keyids)?;
            env.add_signatures(&upload.signatures);
            let log = signature_entries("root", env.signed.version, env.canonical_signed(), &upload.signatures)?;
            return self.settle_root(env, &current, log, actor, now).await;
        }
        let mut env = parse::<Targets>(&pending.bytes)?;
        let authority = self.authority(role).await?;
        check_each_signature(env.canonical_signed(), &upload.signatures, &authority.keys, &authority.keyids)?;
        env.add_signatures(&upload.signatures);
        let log = signature_entries(role.as_str(), env.signed.version, env.canonical_signed(), &upload.signatures)?;
        let state = self.settle(role, env, &authority, log, now).await?;
        let keyids: Vec<&str> = upload.signatures.iter().map(|s| s.keyid.as_str()).collect();
        let detail = format!("signatures by key ids {keyids:?} for {role} version {}", upload.version);
        self.audit.record(actor, "sign", &detail, now).await?;
        Ok(state)
    }
}

fn expect_next(role: &RoleName, current: u64, proposed: u64) -> Result<()> {
    if proposed != current + 1 {
        return Err(Error::Conflict(format!(
            "{role} is at version {current}; a proposal must be version {}",
            current + 1
        )));
    }
    Ok(())
}

fn keep_valid(mut env: Envelope<Targets>, authority: &Authority) -> Result<Envelope<Targets>> {
    let signatures = std::mem::take(&mut env.signatures);
    check_each_signature(env.canonical_signed(), &signatures, &authority.keys, &authority.keyids)?;
    env.add_signatures(&signatures);
    Ok(env)
}

fn check_each_signature(
    message: &[u8],
    signatures: &[ringfence_proto::tuf::Signature],
    keys: &BTreeMap<String, Key>,
    keyids: &[String],
) -> Result<()> {
    for s in signatures {
        if !keyids.contains(&s.keyid) {
            return Err(bad(format!("key {} may not sign this role", s.keyid)));
        }
        let ok = ringfence_trust::envelope::count_valid(message, std::slice::from_ref(s), keys, keyids) == 1;
        if !ok {
            return Err(bad(format!("signature by {} does not verify over the pending version", s.keyid)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ringfence_proto::tuf::Signature;
    use ringfence_trust::SigningKey;

    use super::*;

    #[test]
    fn a_proposal_is_exactly_the_next_version() {
        let role = RoleName::targets();
        assert!(expect_next(&role, 4, 5).is_ok());
        for proposed in [3, 4, 6, u64::MAX] {
            assert!(matches!(expect_next(&role, 4, proposed), Err(Error::Conflict(_))), "{proposed}");
        }
    }

    #[test]
    fn one_bad_signature_refuses_the_whole_upload() {
        let (listed, other) = (SigningKey::generate(), SigningKey::generate());
        let keys: BTreeMap<String, Key> =
            [&listed, &other].iter().map(|k| (k.key_id().to_string(), k.public().to_tuf())).collect();
        let keyids = vec![listed.key_id().to_string()];
        let message = b"the pending version";
        let sign = |key: &SigningKey, msg: &[u8]| Signature {
            keyid: key.key_id().to_string(),
            sig: hex::encode(key.sign(msg)),
        };
        let good = sign(&listed, message);
        assert!(check_each_signature(message, std::slice::from_ref(&good), &keys, &keyids).is_ok());
        // A key the role does not list, and a listed key's signature over something else.
        let unlisted = sign(&other, message);
        let wrong = sign(&listed, b"another version");
        for bad in [unlisted, wrong] {
            let upload = [good.clone(), bad];
            assert!(matches!(check_each_signature(message, &upload, &keys, &keyids), Err(Error::Invalid(_))));
        }
    }
}
