//! Admin API tokens: issued with scopes and a lifetime, shown once, stored only as the SHA-256
//! of the secret, revocable, and rotated without downtime (a new token with the same name and
//! scopes; the old one ends after a grace period). Every issue, rotation and revocation is
//! audited.

use std::sync::Arc;

use rand_core::{OsRng, RngCore};
use ringfence_proto::api::{
    DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS, Scope, TokenCreated, TokenInfo, TokenRequest, TokenRotation,
};
use ringfence_store::{Database, TokenRecord};

use ringfence_tlog::entry::Entry;

use super::audit::Audit;
use super::error::{Error, Result};

/// Prefix of every token secret, so a leaked token is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "rfat_";

/// Longest a token name may be.
const MAX_NAME: usize = 64;

/// How long a rotated token keeps working unless the rotation says, and at most.
const DEFAULT_GRACE_MINUTES: u64 = 60;
const MAX_GRACE_MINUTES: u64 = 7 * 24 * 60;

/// A valid, unrevoked token, as the caller it authenticates.
#[derive(Debug, Clone)]
pub struct TokenHolder {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
}

#[derive(Clone)]
pub struct Tokens {
    db: Arc<dyn Database>,
    audit: Audit,
}

fn token_hash(secret: &str) -> String {
    ringfence_trust::sha256_hex(secret.as_bytes())
}

/// A new token for `request` (checked) and its secret.
fn new_token(request: &TokenRequest, now: i64) -> Result<(TokenRecord, String)> {
    if request.name.is_empty() || request.name.len() > MAX_NAME || request.scopes.is_empty() {
        return Err(Error::Invalid(format!("name: 1 to {MAX_NAME} characters; scopes: at least one")));
    }
    let days = request.expires_in_days.unwrap_or(DEFAULT_TOKEN_DAYS);
    if !(1..=MAX_TOKEN_DAYS).contains(&days) {
        return Err(Error::Invalid(format!("expires_in_days: 1 to {MAX_TOKEN_DAYS}")));
    }
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let mut id = [0u8; 8];
    OsRng.fill_bytes(&mut id);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    let record = TokenRecord {
        id: hex::encode(id),
        name: request.name.clone(),
        secret_sha256: token_hash(&token),
        scopes: request.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        created_at: now,
        revoked: false,
        expires_at: now.saturating_add(i64::try_from(days).unwrap_or(0).saturating_mul(86_400)),
    };
    Ok((record, token))
}

impl Tokens {
    pub fn new(db: Arc<dyn Database>, audit: Audit) -> Self {
        Self { db, audit }
    }

    /// Issue a token; the answer carries the secret, which is not kept and never shown again.
    pub async fn issue(&self, request: &TokenRequest, actor: &str, now: i64) -> Result<TokenCreated> {
        let (record, token) = new_token(request, now)?;
        self.db.insert_token(&record).await?;
        self.logged(&record).await?;
        let detail = format!(
            "created token {} ({}) with scopes {:?}, expiring at {}",
            record.id,
            record.name,
            record.scopes,
            ringfence_trust::expiry::format(record.expires_at)
        );
        self.audit.record(actor, "token", &detail, now).await?;
        Ok(TokenCreated { id: record.id, token, scopes: request.scopes.clone(), expires_at: record.expires_at })
    }

    /// Put a new token on the transparency log (a name outside the log's character set is
    /// logged by the token's id alone).
    async fn logged(&self, record: &TokenRecord) -> Result<()> {
        let entry =
            Entry::AdminToken { id: record.id.clone(), name: record.name.clone(), scopes: record.scopes.clone() };
        let entry = if entry.to_bytes().is_ok() {
            entry
        } else {
            Entry::AdminToken { id: record.id.clone(), name: "-".into(), scopes: record.scopes.clone() }
        };
        super::log::enqueue(&*self.db, &[entry]).await
    }

    /// Every token, oldest first, without secrets.
    pub async fn list(&self) -> Result<Vec<TokenInfo>> {
        Ok(self
            .db
            .list_tokens()
            .await?
            .into_iter()
            .map(|t| TokenInfo {
                id: t.id,
                name: t.name,
                scopes: t.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                created_at: t.created_at,
                revoked: t.revoked,
                expires_at: t.expires_at,
            })
            .collect())
    }

    /// Revoke a token at once; `NotFound` for an id that was never issued.
    pub async fn revoke(&self, id: &str, actor: &str, now: i64) -> Result<()> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::NotFound);
        }
        self.db.revoke_token(id).await?;
        super::log::enqueue(&*self.db, &[Entry::AdminTokenRevoked { id: id.to_owned() }]).await?;
        self.audit.record(actor, "token", &format!("revoked token {id}"), now).await
    }

    /// Replace token `id` by a new one with its name and scopes (and a lifetime of its own);
    /// the old one ends `grace_minutes` from now unless it ends sooner. A revoked or expired
    /// token is not rotated (`Conflict`): create a new one. The old token's shortened life and
    /// the new token are stored in one transaction, so a revocation or another rotation racing
    /// with this one cannot leave a successor of a revoked token.
    pub async fn rotate(&self, id: &str, rotation: &TokenRotation, actor: &str, now: i64) -> Result<TokenCreated> {
        let grace = rotation.grace_minutes.unwrap_or(DEFAULT_GRACE_MINUTES);
        if grace > MAX_GRACE_MINUTES {
            return Err(Error::Invalid(format!("grace_minutes: 0 to {MAX_GRACE_MINUTES}")));
        }
        let old = self.db.list_tokens().await?.into_iter().find(|t| t.id == id).ok_or(Error::NotFound)?;
        let conflict = || Error::Conflict(format!("token {id} is revoked or expired: create a new token instead"));
        if old.revoked || old.expires_at <= now {
            return Err(conflict());
        }
        let scopes: Vec<Scope> = old.scopes.iter().filter_map(|s| Scope::parse(s)).collect();
        let request = TokenRequest { name: old.name.clone(), scopes, expires_in_days: rotation.expires_in_days };
        let (record, token) = new_token(&request, now)?;
        let ends = now.saturating_add(i64::try_from(grace).unwrap_or(0).saturating_mul(60));
        if !self.db.rotate_token(id, &record, ends, now).await? {
            return Err(conflict());
        }
        self.logged(&record).await?;
        let detail = format!(
            "rotated token {id} ({}) into {} with scopes {:?}, expiring at {}; {id} is refused from {}",
            old.name,
            record.id,
            record.scopes,
            ringfence_trust::expiry::format(record.expires_at),
            ringfence_trust::expiry::format(ends.min(old.expires_at))
        );
        self.audit.record(actor, "token", &detail, now).await?;
        Ok(TokenCreated { id: record.id, token, scopes: request.scopes, expires_at: record.expires_at })
    }

    /// The holder of `secret`: `Unauthenticated` unless it is a token issued here, not revoked
    /// and not expired at `now`.
    pub async fn authenticate(&self, secret: &str, now: i64) -> Result<TokenHolder> {
        if secret.len() > 128 || !secret.starts_with(TOKEN_PREFIX) {
            return Err(Error::Unauthenticated);
        }
        let token = self.db.token_by_secret_sha256(&token_hash(secret)).await?.ok_or(Error::Unauthenticated)?;
        if token.revoked || token.expires_at <= now {
            return Err(Error::Unauthenticated);
        }
        let scopes = token.scopes.iter().filter_map(|s| Scope::parse(s)).collect();
        Ok(TokenHolder { id: token.id, name: token.name, scopes })
    }
}
