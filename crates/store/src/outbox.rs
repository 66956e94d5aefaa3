//! The webhook outbox: events stored in the same database as everything else, delivered by the
//! leading node, retried with backoff until delivered or given up on, so nothing is lost when
//! the receiver or the server is down.

use sqlx::Row;

use crate::Result;
use crate::sql::{SqlStore, conflict_or, count_from_row, to_bigint};

/// An event waiting for (another) delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub id: String,
    /// The JSON body, exactly as it is signed and posted.
    pub body: String,
    pub created_at: i64,
    /// Attempts so far.
    pub attempts: u32,
}

#[async_trait::async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Keep an event for delivery, due at once (whatever the clock of whoever made it); `false`
    /// (nothing stored) when `max_waiting` events already wait.
    async fn enqueue_event(&self, id: &str, body: &str, now: i64, max_waiting: u64) -> Result<bool>;
    /// Events due at `now`, the longest due first, at most `limit`.
    async fn due_events(&self, now: i64, limit: u64) -> Result<Vec<OutboxRecord>>;
    async fn event_delivered(&self, id: &str, attempts: u32, now: i64) -> Result<()>;
    /// An attempt failed: try again at `next_attempt_at`, or never (`None`: given up).
    async fn event_failed(&self, id: &str, attempts: u32, next_attempt_at: Option<i64>, error: &str) -> Result<()>;
    /// Events waiting, delivered, and given up on.
    async fn outbox_counts(&self) -> Result<(u64, u64, u64)>;
    /// Forget events delivered or given up on before `before`.
    async fn prune_outbox(&self, before: i64) -> Result<u64>;
}

#[async_trait::async_trait]
impl OutboxStore for SqlStore {
    async fn enqueue_event(&self, id: &str, body: &str, now: i64, max_waiting: u64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        // The write first: SQLite takes its write lock now (a transaction that read first could
        // not take it later once another connection wrote, and the event would be lost). Undone
        // below when the outbox is full.
        sqlx::query(
            "INSERT INTO webhook_outbox (id, body, created_at, attempts, next_attempt_at) VALUES ($1, $2, $3, 0, 0)",
        )
        .bind(id)
        .bind(body)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_or(e, || "event exists".into()))?;
        let waiting =
            sqlx::query("SELECT COUNT(*) AS n FROM webhook_outbox WHERE next_attempt_at IS NOT NULL AND id <> $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if count_from_row(&waiting)? >= max_waiting {
            // Dropped without a commit: the insert is undone.
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn due_events(&self, now: i64, limit: u64) -> Result<Vec<OutboxRecord>> {
        let rows = sqlx::query(
            "SELECT id, body, created_at, attempts FROM webhook_outbox \
             WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, created_at, id LIMIT $2",
        )
        .bind(now)
        .bind(to_bigint(limit, "limit")?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRecord {
                    id: r.try_get("id")?,
                    body: r.try_get("body")?,
                    created_at: r.try_get("created_at")?,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    async fn event_delivered(&self, id: &str, attempts: u32, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = $2, next_attempt_at = NULL, delivered_at = $3, last_error = NULL \
             WHERE id = $1",
        )
        .bind(id)
        .bind(i64::from(attempts))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn event_failed(&self, id: &str, attempts: u32, next_attempt_at: Option<i64>, error: &str) -> Result<()> {
        sqlx::query("UPDATE webhook_outbox SET attempts = $2, next_attempt_at = $3, last_error = $4 WHERE id = $1")
            .bind(id)
            .bind(i64::from(attempts))
            .bind(next_attempt_at)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_counts(&self) -> Result<(u64, u64, u64)> {
        let count = |sql: &'static str| async move {
            let row = sqlx::query(sql).fetch_one(&self.pool).await?;
            count_from_row(&row)
        };
        Ok((
            count("SELECT COUNT(*) AS n FROM webhook_outbox WHERE next_attempt_at IS NOT NULL").await?,
            count("SELECT COUNT(*) AS n FROM webhook_outbox WHERE delivered_at IS NOT NULL").await?,
            count("SELECT COUNT(*) AS n FROM webhook_outbox WHERE next_attempt_at IS NULL AND delivered_at IS NULL")
                .await?,
        ))
    }

    async fn prune_outbox(&self, before: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM webhook_outbox WHERE next_attempt_at IS NULL AND COALESCE(delivered_at, created_at) < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_wait_until_delivered_or_given_up_and_the_outbox_is_bounded() {
        let (_dir, store) = crate::sql::test_store().await;
        assert!(store.enqueue_event("a", "{\"n\":1}", 100, 2).await.unwrap());
        assert!(store.enqueue_event("b", "{\"n\":2}", 101, 2).await.unwrap());
        assert!(!store.enqueue_event("c", "{}", 102, 2).await.unwrap(), "two wait already");
        assert!(store.enqueue_event("a", "{}", 103, 9).await.is_err(), "ids are unique");

        let due = store.due_events(0, 10).await.unwrap();
        assert_eq!(due.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["a", "b"], "due at once, oldest first");
        assert_eq!((due[0].body.as_str(), due[0].attempts), ("{\"n\":1}", 0));
        assert_eq!(store.due_events(0, 1).await.unwrap().len(), 1, "at most the limit");

        store.event_failed("a", 1, Some(200), "503").await.unwrap();
        assert_eq!(store.due_events(150, 10).await.unwrap().iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ["b"]);
        store.event_delivered("b", 1, 150).await.unwrap();
        let again = store.due_events(200, 10).await.unwrap();
        assert_eq!((again.len(), again[0].id.as_str(), again[0].attempts), (1, "a", 1));
        assert_eq!(store.outbox_counts().await.unwrap(), (1, 1, 0));
        store.event_failed("a", 9, None, "gave up").await.unwrap();
        assert!(store.due_events(i64::MAX, 10).await.unwrap().is_empty());
        assert_eq!(store.outbox_counts().await.unwrap(), (0, 1, 1));
        assert!(store.enqueue_event("c", "{}", 300, 2).await.unwrap(), "room again");

        assert_eq!(store.prune_outbox(151).await.unwrap(), 2, "delivered at 150, given up (made at 100)");
        assert_eq!(store.outbox_counts().await.unwrap(), (1, 0, 0));
    }
}
