//! Telling the other nodes what changed, so the caches each keeps in memory are never older
//! than the database for longer than a notification takes. On PostgreSQL a transaction that
//! changes what nodes cache sends `pg_notify` on [`CHANNEL`] inside itself, so the notice goes out
//! if and only if the change commits (a node killed right after its commit cannot take it back).
//! Each node listens on a connection of its own ([`ChangeListener`]) and knows that connection
//! is alive by hearing its own pings ([`crate::ClusterStore::ping_listeners`]). On SQLite there is one node:
//! nothing is sent and nobody listens.

use crate::Result;
use crate::sql::{Engine, SqlStore};

/// The notification channel (one per database).
pub const CHANNEL: &str = "ringfence_changes";

/// What changed, as a notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Newest repository metadata (a publish: timestamp, snapshot, targets, …).
    Metadata,
    /// The signed rollout holds.
    Holds,
    /// Devices whose sessions ended (revoked, rejected, forgotten).
    Sessions,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Metadata => "metadata",
            Change::Holds => "holds",
            Change::Sessions => "sessions",
        }
    }
}

/// What a listener heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Change(Change),
    /// A node's ping with its token.
    Ping(String),
    /// A payload this version does not know (a newer node's): treat it as every change.
    Unknown,
}

impl Heard {
    fn parse(payload: &str) -> Heard {
        match payload {
            "metadata" => Heard::Change(Change::Metadata),
            "holds" => Heard::Change(Change::Holds),
            "sessions" => Heard::Change(Change::Sessions),
            _ => match payload.strip_prefix("ping ") {
                Some(token) if token.len() <= 64 => Heard::Ping(token.to_owned()),
                _ => Heard::Unknown,
            },
        }
    }
}

/// Send `change` from inside the transaction that makes it (PostgreSQL only): delivered when,
/// and only if, it commits.
pub(crate) async fn notify_in(conn: &mut sqlx::AnyConnection, engine: Engine, change: Change) -> Result<()> {
    if engine == Engine::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(change.as_str()).execute(conn).await?;
    }
    Ok(())
}

/// A node's own connection listening on [`CHANNEL`].
pub struct ChangeListener {
    inner: sqlx::postgres::PgListener,
}

impl ChangeListener {
    /// The next notification; `None` when the connection was lost (whatever was sent meanwhile
    /// is lost too: the caller must forget what it kept). The next call connects again.
    pub async fn next(&mut self) -> Result<Option<Heard>> {
        Ok(self.inner.try_recv().await?.map(|n| Heard::parse(n.payload())))
    }
}

/// See [`crate::ClusterStore::listen`].
pub(crate) async fn listen(store: &SqlStore) -> Result<Option<ChangeListener>> {
    let Some(url) = store.postgres_url() else { return Ok(None) };
    let mut inner = sqlx::postgres::PgListener::connect(url).await?;
    // A lost connection is reported (Ok(None)) at once, not after a reconnection that may take
    // long; the next read connects again (the node keeps nothing until it hears itself anew).
    inner.eager_reconnect(false);
    inner.listen(CHANNEL).await?;
    Ok(Some(ChangeListener { inner }))
}

/// See [`crate::ClusterStore::ping_listeners`].
pub(crate) async fn ping(store: &SqlStore, token: &str) -> Result<()> {
    if store.engine() == Engine::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("ping {token}"))
            .execute(&store.pool)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_read_and_anything_else_counts_as_every_change() {
        assert_eq!(Heard::parse("metadata"), Heard::Change(Change::Metadata));
        assert_eq!(Heard::parse("holds"), Heard::Change(Change::Holds));
        assert_eq!(Heard::parse("sessions"), Heard::Change(Change::Sessions));
        assert_eq!(Heard::parse("ping n1-7"), Heard::Ping("n1-7".into()));
        assert_eq!(Heard::parse("ping "), Heard::Ping(String::new()));
        assert_eq!(Heard::parse(&format!("ping {}", "x".repeat(65))), Heard::Unknown);
        assert_eq!(Heard::parse("blobs"), Heard::Unknown);
        for c in [Change::Metadata, Change::Holds, Change::Sessions] {
            assert_eq!(Heard::parse(c.as_str()), Heard::Change(c));
        }
    }
}
