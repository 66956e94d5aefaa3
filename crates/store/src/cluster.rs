//! What several server nodes sharing one database agree through it: one writer at a time for
//! what is sequenced (repository versions, rollout holds), and one leader for background jobs.

use sqlx::Row;

use crate::Result;
use crate::sql::{Engine, SqlStore};

/// The first key of every PostgreSQL advisory lock Ringfence takes ("RFNC"), so its locks never
/// meet another application's in a shared database.
pub(crate) const LOCK_NAMESPACE: i32 = 0x5246_4e43;
/// The second key of the lock pending enrollments are counted under.
pub(crate) const PENDING_ENROLLMENT_LOCK: i32 = 100;
/// How long a node waits for a section before the request fails (rather than hanging behind a
/// node that froze while holding it).
const LOCK_WAIT: &str = "60s";

/// What an exclusive section writes: each has its own lock, so holding one never waits for
/// another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Repository role versions (publish, approve, sign, renew).
    Repository = 1,
    /// Rollout state and the signed holds document.
    Rollouts = 2,
    /// The transparency log's sequencer.
    Log = 3,
}

/// Held while a node writes what `Section` names. On PostgreSQL this is a session advisory lock
/// on a connection of its own; dropping the guard closes that connection, which releases the
/// lock even if the node stops mid-way (its session ends with it). On SQLite (one node) it
/// holds nothing.
pub struct ExclusiveGuard {
    conn: Option<sqlx::AnyConnection>,
}

impl Drop for ExclusiveGuard {
    fn drop(&mut self) {
        // Closing (not returning to the pool) is what releases the lock: a connection back in
        // the pool would keep it.
        drop(self.conn.take());
    }
}

#[async_trait::async_trait]
pub trait ClusterStore: Send + Sync + 'static {
    /// Wait until no other node writes `section`, and hold it until the guard is dropped.
    async fn exclusive(&self, section: Section) -> Result<ExclusiveGuard>;
    /// Take or keep the lease `name` for `holder` for `seconds` from the database's clock:
    /// granted when it is free, has expired, or is already `holder`'s. Returns whether `holder`
    /// holds it.
    async fn lease(&self, name: &str, holder: &str, seconds: i64) -> Result<bool>;
    /// Seconds since 1970 by the database's clock.
    async fn database_now(&self) -> Result<i64>;
    /// Who holds lease `name` and until when, if anyone ever did.
    async fn lease_holder(&self, name: &str) -> Result<Option<(String, i64)>>;
    /// Give lease `name` up if `holder` holds it (a node stopping), so another takes it at once.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;
    /// Forget every lease (a restored database's belong to nodes of before the backup).
    async fn forget_leases(&self) -> Result<()>;
    /// Listen for the changes other nodes commit ([`crate::Change`]) on a connection of its
    /// own; `None` on SQLite, where this node is the only one.
    async fn listen(&self) -> Result<Option<crate::ChangeListener>>;
    /// Send a ping every listener hears (nothing on SQLite): a node that hears its own knows
    /// its listening connection is alive.
    async fn ping_listeners(&self, token: &str) -> Result<()>;
}

#[async_trait::async_trait]
impl ClusterStore for SqlStore {
    async fn listen(&self) -> Result<Option<crate::ChangeListener>> {
        crate::changes::listen(self).await
    }

    async fn ping_listeners(&self, token: &str) -> Result<()> {
        crate::changes::ping(self, token).await
    }

    async fn exclusive(&self, section: Section) -> Result<ExclusiveGuard> {
        if self.engine() != Engine::Postgres {
            return Ok(ExclusiveGuard { conn: None });
        }
        let mut conn = self.pool.acquire().await?.detach();
        // A holder whose machine froze or dropped off the network is noticed within about 25 s
        // (its session ends, and the lock with it), and nobody waits longer than LOCK_WAIT.
        for setting in [
            "SET tcp_keepalives_idle = 10".to_owned(),
            "SET tcp_keepalives_interval = 5".to_owned(),
            "SET tcp_keepalives_count = 3".to_owned(),
            format!("SET lock_timeout = '{LOCK_WAIT}'"),
        ] {
            sqlx::query(&setting).execute(&mut conn).await?;
        }
        sqlx::query("SELECT pg_advisory_lock($1, $2)")
            .bind(LOCK_NAMESPACE)
            .bind(section as i32)
            .execute(&mut conn)
            .await?;
        Ok(ExclusiveGuard { conn: Some(conn) })
    }

    async fn forget_leases(&self) -> Result<()> {
        sqlx::query("DELETE FROM leases").execute(&self.pool).await?;
        Ok(())
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn lease(&self, name: &str, holder: &str, seconds: i64) -> Result<bool> {
        // The database's clock, not the node's: nodes whose clocks disagree agree on leases.
        let now = self.database_now().await?;
        let until = now.saturating_add(seconds);
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4 \
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn database_now(&self) -> Result<i64> {
        let query = match self.engine() {
            Engine::Postgres => "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS BIGINT) AS now",
            Engine::Sqlite => "SELECT CAST(strftime('%s', 'now') AS BIGINT) AS now",
        };
        Ok(sqlx::query(query).fetch_one(&self.pool).await?.try_get("now")?)
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<(String, i64)>> {
        let row = sqlx::query("SELECT holder, expires_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("holder")?, r.try_get("expires_at")?))).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lease_has_one_holder_until_it_expires() {
        let (_dir, store) = crate::sql::test_store().await;
        assert!(store.lease("jobs", "a", 60).await.unwrap(), "free");
        assert!(!store.lease("jobs", "b", 60).await.unwrap(), "held by a");
        assert!(store.lease("jobs", "a", 60).await.unwrap(), "a renews");
        // a's last renewal ends before now (as if a stopped renewing long ago).
        assert!(store.lease("jobs", "a", -5).await.unwrap());
        assert!(store.lease("jobs", "b", 60).await.unwrap(), "expired: b takes it");
        assert!(!store.lease("jobs", "a", 60).await.unwrap(), "a lost it");
        let (holder, until) = store.lease_holder("jobs").await.unwrap().unwrap();
        let now = store.database_now().await.unwrap();
        assert_eq!(holder, "b");
        assert!((now + 55..=now + 60).contains(&until), "by the database's clock: {until} vs {now}");
        assert!(store.lease("other", "a", 60).await.unwrap(), "leases are independent");
    }

    #[tokio::test]
    async fn one_writer_at_a_time_across_connections() {
        let (_dir, store) = crate::sql::test_store().await;
        if store.engine() != Engine::Postgres {
            return; // One node: nothing to exclude.
        }
        let first = store.exclusive(Section::Repository).await.unwrap();
        // Another section is free meanwhile.
        drop(store.exclusive(Section::Rollouts).await.unwrap());
        let other = store.clone();
        let waiting = tokio::spawn(async move { other.exclusive(Section::Repository).await.map(|_| ()) });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a second writer waits while the first holds the lock");
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await.unwrap().unwrap().unwrap();
    }
}
