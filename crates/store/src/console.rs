//! What the web console keeps and asks for beyond the other stores: its sessions (a browser
//! logged in with an admin token, kept as the SHA-256 of the session's secret) and the fleet's
//! counts for its dashboard, each an index lookup, never a scan of the fleet.

use sqlx::Row;

use crate::sql::{SqlStore, conflict_or, count_from_row, token_from_row};
use crate::{Result, TokenRecord};

/// A console session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSessionRecord {
    pub secret_sha256: String,
    pub token_id: String,
    /// A session, or a one-time login code that becomes one.
    pub login_code: bool,
    pub created_at: i64,
    pub last_seen: i64,
    pub expires_at: i64,
}

/// The fleet at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub pending: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub revoked: u64,
    /// Accepted devices that checked in at or after the time asked about.
    pub seen: u64,
}

#[async_trait::async_trait]
pub trait ConsoleStore: Send + Sync + 'static {
    async fn insert_console_session(&self, session: &ConsoleSessionRecord) -> Result<()>;
    /// The token of a live session: not past its expiry, seen at or after `idle_since`, and
    /// its token not revoked. A session found is marked seen at `now`.
    async fn console_session(&self, secret_sha256: &str, now: i64, idle_since: i64) -> Result<Option<TokenRecord>>;
    /// Spend a one-time login code that has not expired: the id of its token, once.
    async fn take_login_code(&self, secret_sha256: &str, now: i64) -> Result<Option<String>>;
    async fn delete_console_session(&self, secret_sha256: &str) -> Result<()>;
    /// Delete sessions past their expiry or idle since before `idle_since`.
    async fn sweep_console_sessions(&self, now: i64, idle_since: i64) -> Result<u64>;
    /// Devices per state, and accepted devices seen since `seen_since`.
    async fn fleet_counts(&self, seen_since: i64) -> Result<FleetCounts>;
    /// Devices whose id starts with `id_prefix` (lower-case hex) or whose host name is exactly
    /// `hostname`, in `state` (any when empty), ordered by id, after `after`, at most `limit`:
    /// their ids.
    async fn find_devices(
        &self,
        id_prefix: &str,
        hostname: &str,
        state: &str,
        after: &str,
        limit: u64,
    ) -> Result<Vec<String>>;
}

#[async_trait::async_trait]
impl ConsoleStore for SqlStore {
    async fn insert_console_session(&self, s: &ConsoleSessionRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO console_sessions (secret_sha256, token_id, kind, created_at, last_seen, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&s.secret_sha256)
        .bind(&s.token_id)
        .bind(if s.login_code { "login" } else { "session" })
        .bind(s.created_at)
        .bind(s.last_seen)
        .bind(s.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict_or(e, || "console session exists".into()))?;
        Ok(())
    }

    async fn console_session(&self, secret_sha256: &str, now: i64, idle_since: i64) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(
            "SELECT t.id, t.name, t.secret_sha256, t.scopes, t.created_at, t.expires_at, \
             CASE WHEN t.revoked THEN 1 ELSE 0 END AS revoked \
             FROM console_sessions s JOIN api_tokens t ON t.id = s.token_id \
             WHERE s.secret_sha256 = $1 AND s.kind = 'session' AND s.expires_at > $2 AND s.last_seen >= $3 \
             AND NOT t.revoked AND t.expires_at > $2",
        )
        .bind(secret_sha256)
        .bind(now)
        .bind(idle_since)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        // One write a minute at most per session, not one per page.
        sqlx::query(
            "UPDATE console_sessions SET last_seen = $2 WHERE secret_sha256 = $1 AND kind = 'session' \
             AND last_seen < $2 - 60",
        )
        .bind(secret_sha256)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(Some(token_from_row(&row)?))
    }

    async fn take_login_code(&self, secret_sha256: &str, now: i64) -> Result<Option<String>> {
        let row = sqlx::query(
            "DELETE FROM console_sessions WHERE secret_sha256 = $1 AND kind = 'login' AND expires_at > $2 \
             RETURNING token_id",
        )
        .bind(secret_sha256)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(r.try_get("token_id")?)).transpose()
    }

    async fn delete_console_session(&self, secret_sha256: &str) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE secret_sha256 = $1")
            .bind(secret_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn sweep_console_sessions(&self, now: i64, idle_since: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1 OR last_seen < $2")
            .bind(now)
            .bind(idle_since)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn fleet_counts(&self, seen_since: i64) -> Result<FleetCounts> {
        let mut counts = FleetCounts::default();
        for (state, slot) in [
            ("pending", &mut counts.pending),
            ("accepted", &mut counts.accepted),
            ("rejected", &mut counts.rejected),
            ("revoked", &mut counts.revoked),
        ] {
            // One index range each (devices_by_state_source).
            let row = sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE state = $1")
                .bind(state)
                .fetch_one(&self.pool)
                .await?;
            *slot = count_from_row(&row)?;
        }
        let row = sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE state = 'accepted' AND last_checkin >= $1")
            .bind(seen_since)
            .fetch_one(&self.pool)
            .await?;
        counts.seen = count_from_row(&row)?;
        Ok(counts)
    }

    async fn find_devices(
        &self,
        id_prefix: &str,
        hostname: &str,
        state: &str,
        after: &str,
        limit: u64,
    ) -> Result<Vec<String>> {
        let limit_sql = crate::sql::to_bigint(limit, "limit")?;
        // Two index ranges, merged: ids in [prefix, prefix + "g") (ids are lower-case hex, and
        // "g" sorts after every hex digit), and the host name's entries.
        let by_id = sqlx::query(
            "SELECT id FROM devices WHERE id > $1 AND id >= $2 AND id < $3 AND ($4 = '' OR state = $4) \
             ORDER BY id LIMIT $5",
        )
        .bind(after)
        .bind(id_prefix)
        .bind(format!("{id_prefix}g"))
        .bind(state)
        .bind(limit_sql)
        .fetch_all(&self.pool)
        .await?;
        let by_name = sqlx::query(
            "SELECT id FROM devices WHERE hostname = $1 AND id > $2 AND ($3 = '' OR state = $3) \
             ORDER BY id LIMIT $4",
        )
        .bind(hostname)
        .bind(after)
        .bind(state)
        .bind(limit_sql)
        .fetch_all(&self.pool)
        .await?;
        let mut ids = std::collections::BTreeSet::new();
        for row in by_id.iter().chain(&by_name) {
            ids.insert(row.try_get::<String, _>("id")?);
        }
        Ok(ids.into_iter().take(usize::try_from(limit).unwrap_or(usize::MAX)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    async fn store_with_token() -> (tempfile::TempDir, SqlStore) {
        let (dir, store) = crate::sql::test_store().await;
        let token = TokenRecord {
            id: "t1".into(),
            name: "alice".into(),
            secret_sha256: "01".repeat(32),
            scopes: vec!["read".into()],
            created_at: 0,
            revoked: false,
            expires_at: 4000,
        };
        store.insert_token(&token).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_session_lives_until_idle_expired_logged_out_or_its_token_revoked() {
        let (_dir, store) = store_with_token().await;
        let session = |secret: &str| ConsoleSessionRecord {
            secret_sha256: secret.into(),
            token_id: "t1".into(),
            login_code: false,
            created_at: 1000,
            last_seen: 1000,
            expires_at: 5000,
        };
        store.insert_console_session(&session("aa")).await.unwrap();
        store.insert_console_session(&session("bb")).await.unwrap();
        assert!(store.insert_console_session(&session("aa")).await.is_err());

        let found = store.console_session("aa", 1100, 900).await.unwrap().unwrap();
        assert_eq!(found.name, "alice");
        // Seen at 1100 (more than a minute later): idle is counted from there.
        assert!(store.console_session("aa", 1200, 1100).await.unwrap().is_some());
        assert!(store.console_session("aa", 1300, 1101).await.unwrap().is_some(), "seen again at 1200");
        assert!(store.console_session("aa", 5000, 0).await.unwrap().is_none(), "expired");
        assert!(store.console_session("bb", 1200, 1001).await.unwrap().is_none(), "idle since 1000");
        assert!(store.console_session("cc", 1100, 0).await.unwrap().is_none(), "unknown");

        // A login code is no session, and is spent once.
        let code = ConsoleSessionRecord { login_code: true, ..session("ee") };
        store.insert_console_session(&code).await.unwrap();
        assert!(store.console_session("ee", 1100, 0).await.unwrap().is_none());
        assert!(store.take_login_code("aa", 1100).await.unwrap().is_none(), "a session is no login code");
        assert!(store.take_login_code("ee", 5000).await.unwrap().is_none(), "expired");
        assert_eq!(store.take_login_code("ee", 1100).await.unwrap().as_deref(), Some("t1"));
        assert!(store.take_login_code("ee", 1100).await.unwrap().is_none(), "spent");

        store.delete_console_session("aa").await.unwrap();
        assert!(store.console_session("aa", 1300, 0).await.unwrap().is_none(), "logged out");

        // A session ends with its token's lifetime.
        assert!(store.console_session("bb", 4000, 0).await.unwrap().is_none(), "its token expired");
        store.insert_console_session(&session("dd")).await.unwrap();
        store.revoke_token("t1").await.unwrap();
        assert!(store.console_session("dd", 1100, 0).await.unwrap().is_none(), "its token was revoked");

        // bb and dd (its token revoked, never seen since 1000) are idle since 1001; a session
        // seen later stays until it expires.
        store.insert_console_session(&ConsoleSessionRecord { last_seen: 1100, ..session("ff") }).await.unwrap();
        assert_eq!(store.sweep_console_sessions(1100, 1001).await.unwrap(), 2);
        assert_eq!(store.sweep_console_sessions(4999, 0).await.unwrap(), 0);
        assert_eq!(store.sweep_console_sessions(5000, 0).await.unwrap(), 1, "expired");
    }
}
