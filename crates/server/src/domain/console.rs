//! The web console's sessions, and the fleet counts its dashboard shows. A browser logs in
//! with an admin token and gets a session secret (`rfcs_…`, in a cookie) that stands for that
//! token: its scopes, its name in the audit trail, and no longer than the token is unrevoked.
//! Only the SHA-256 of a session secret is stored. Each change a page asks for carries a
//! CSRF token derived from the session secret, which a page of another site cannot know.

use std::sync::Arc;

use rand_core::{OsRng, RngCore};
use ringfence_proto::api::Scope;
use ringfence_store::{ConsoleSessionRecord, Database, FleetCounts};

use super::audit::Audit;
use super::error::{Error, Result};
use super::tokens::{TokenHolder, Tokens};

/// Prefix of every console session secret.
pub const SESSION_PREFIX: &str = "rfcs_";

#[derive(Clone)]
pub struct Console {
    db: Arc<dyn Database>,
    tokens: Tokens,
    audit: Audit,
    idle_secs: i64,
    session_secs: i64,
}

/// Prefix of every one-time login code.
pub const LOGIN_CODE_PREFIX: &str = "rfol_";

fn random_secret(prefix: &str) -> String {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    format!("{prefix}{}", hex::encode(secret))
}

fn session_hash(secret: &str) -> String {
    ringfence_trust::sha256_hex(secret.as_bytes())
}

impl Console {
    pub fn new(db: Arc<dyn Database>, tokens: Tokens, audit: Audit, idle_minutes: u32, session_hours: u32) -> Self {
        Self {
            db,
            tokens,
            audit,
            idle_secs: i64::from(idle_minutes.max(1)) * 60,
            session_secs: i64::from(session_hours.max(1)) * 3600,
        }
    }

    /// Seconds a session lives at most (the cookie's `Max-Age`).
    pub fn session_secs(&self) -> i64 {
        self.session_secs
    }

    /// Log in with an admin token: a new session secret for the cookie, and who it is.
    /// `Unauthenticated` unless the token is valid and unrevoked. Audited.
    pub async fn login(&self, admin_token: &str, now: i64) -> Result<(String, TokenHolder)> {
        let holder = self.tokens.authenticate(admin_token, now).await?;
        let secret = self.new_session(&holder.id, now).await?;
        let actor = format!("{} (token {})", holder.name, holder.id);
        self.audit.record(&actor, "console", "logged in to the console", now).await?;
        Ok((secret, holder))
    }

    /// A one-time login code for the holder of `admin_token`, valid for `valid_secs`: it logs
    /// a browser in once (what `ringfence quickstart` prints as a link). Audited.
    pub async fn login_code(&self, admin_token: &str, valid_secs: i64, now: i64) -> Result<String> {
        let holder = self.tokens.authenticate(admin_token, now).await?;
        let code = random_secret(LOGIN_CODE_PREFIX);
        let record = ConsoleSessionRecord {
            secret_sha256: session_hash(&code),
            token_id: holder.id.clone(),
            login_code: true,
            created_at: now,
            last_seen: now,
            expires_at: now.saturating_add(valid_secs),
        };
        self.db.insert_console_session(&record).await?;
        let actor = format!("{} (token {})", holder.name, holder.id);
        self.audit.record(&actor, "console", "issued a one-time console login", now).await?;
        Ok(code)
    }

    /// Log in with a one-time login code: a new session, once. `Unauthenticated` for a code
    /// unknown, spent, expired, or whose token was revoked since.
    pub async fn login_once(&self, code: &str, now: i64) -> Result<String> {
        if code.len() != LOGIN_CODE_PREFIX.len() + 64 || !code.starts_with(LOGIN_CODE_PREFIX) {
            return Err(Error::Unauthenticated);
        }
        let token_id = self.db.take_login_code(&session_hash(code), now).await?.ok_or(Error::Unauthenticated)?;
        let token = self
            .db
            .list_tokens()
            .await?
            .into_iter()
            .find(|t| t.id == token_id && !t.revoked && t.expires_at > now)
            .ok_or(Error::Unauthenticated)?;
        let secret = self.new_session(&token.id, now).await?;
        let actor = format!("{} (token {})", token.name, token.id);
        self.audit.record(&actor, "console", "logged in to the console with a one-time login", now).await?;
        Ok(secret)
    }

    async fn new_session(&self, token_id: &str, now: i64) -> Result<String> {
        let secret = random_secret(SESSION_PREFIX);
        let record = ConsoleSessionRecord {
            secret_sha256: session_hash(&secret),
            token_id: token_id.to_owned(),
            login_code: false,
            created_at: now,
            last_seen: now,
            expires_at: now.saturating_add(self.session_secs),
        };
        self.db.insert_console_session(&record).await?;
        Ok(secret)
    }

    /// The token a live session stands for; `Unauthenticated` when there is none (unknown,
    /// idle too long, expired, logged out, or its token revoked or expired).
    pub async fn session(&self, secret: &str, now: i64) -> Result<TokenHolder> {
        if secret.len() != SESSION_PREFIX.len() + 64 || !secret.starts_with(SESSION_PREFIX) {
            return Err(Error::Unauthenticated);
        }
        let idle_since = now.saturating_sub(self.idle_secs);
        let token =
            self.db.console_session(&session_hash(secret), now, idle_since).await?.ok_or(Error::Unauthenticated)?;
        let scopes = token.scopes.iter().filter_map(|s| Scope::parse(s)).collect();
        Ok(TokenHolder { id: token.id, name: token.name, scopes })
    }

    /// Forget a session without a record (a browser logging in again replaces its old one).
    pub async fn discard(&self, secret: &str) -> Result<()> {
        Ok(self.db.delete_console_session(&session_hash(secret)).await?)
    }

    /// End a session. Audited.
    pub async fn logout(&self, secret: &str, actor: &str, now: i64) -> Result<()> {
        self.db.delete_console_session(&session_hash(secret)).await?;
        self.audit.record(actor, "console", "logged out of the console", now).await
    }

    /// Delete sessions that ended.
    pub async fn sweep(&self, now: i64) -> Result<u64> {
        Ok(self.db.sweep_console_sessions(now, now.saturating_sub(self.idle_secs)).await?)
    }

    /// Devices per state, and accepted devices seen in the last 24 hours.
    pub async fn fleet(&self, now: i64) -> Result<FleetCounts> {
        Ok(self.db.fleet_counts(now.saturating_sub(24 * 3600)).await?)
    }
}

/// The CSRF token of a session: a digest of its secret under a label of its own, so it reveals
/// nothing of the secret and only a holder of the cookie can compute it.
pub fn csrf_token(session_secret: &str) -> String {
    ringfence_trust::sha256_hex(format!("ringfence-console-csrf\n{session_secret}").as_bytes())
}

/// Whether `given` is the CSRF token of the session, compared in constant time.
pub fn csrf_matches(session_secret: &str, given: &str) -> bool {
    let want = csrf_token(session_secret);
    want.len() == given.len() && want.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csrf_token_belongs_to_its_session() {
        let a = format!("{SESSION_PREFIX}{}", "1".repeat(64));
        let b = format!("{SESSION_PREFIX}{}", "2".repeat(64));
        assert!(csrf_matches(&a, &csrf_token(&a)));
        assert!(!csrf_matches(&b, &csrf_token(&a)));
        assert!(!csrf_matches(&a, ""));
        assert!(!csrf_matches(&a, &csrf_token(&a)[1..]));
        assert!(!csrf_token(&a).contains(&a[SESSION_PREFIX.len()..]));
    }
}
