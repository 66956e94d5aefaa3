//! This node among the nodes that share one database: which of them runs the background jobs.
//! The leader holds the `jobs` lease and renews it every [`RENEW_SECS`]; when it stops renewing
//! (it died, or lost the database), another node takes the lease once it expires, within
//! [`LEASE_SECS`].
//!
//! It is also where a node hears what the others commit ([`Cluster::keep_caches_coherent`]):
//! the newest metadata, the holds version and verified sessions are kept in memory on a shared
//! database only while this node's listening connection is known to be alive (it hears its own
//! pings), and each notification of another node's commit drops what it makes old.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ringfence_store::{Change, ChangeListener, Database, Heard};

use super::devices::Devices;
use super::error::Result;
use super::kept::{Keep, KeptUntil, now_ms};
use super::repo::Repository;

/// How often a node pings its own listening connection.
const PING_EVERY: Duration = Duration::from_millis(500);
/// How long after sending a ping it heard a node may serve what it keeps of what others change.
const DEAF_AFTER_MS: u64 = 2_000;

/// How long a leader's lease lasts unrenewed.
pub const LEASE_SECS: i64 = 10;
/// How often every node tries to take or keep the lease.
pub const RENEW_SECS: u64 = 2;

pub struct Cluster {
    db: Arc<dyn Database>,
    node: String,
    leading: AtomicBool,
    /// What this node's pings carry (random, new at every start).
    ping_token: String,
    /// Until when this node keeps in memory what other nodes change (the caches' own mark).
    kept_until: KeptUntil,
}

/// What the listening task tells the cache keeper.
enum Listened {
    Heard(Heard),
    /// The connection was lost; whatever was sent meanwhile is lost too.
    Lost,
}

impl Cluster {
    pub fn new(db: Arc<dyn Database>, node: String) -> Self {
        let mut random = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
        Self {
            db,
            node,
            leading: AtomicBool::new(false),
            ping_token: hex::encode(random),
            kept_until: KeptUntil::new(false),
        }
    }

    /// Whether this node keeps in memory, on a shared database, what other nodes change.
    pub fn caches_coherent(&self) -> bool {
        self.kept_until.holds()
    }

    /// On a shared database (PostgreSQL), keep this node's caches no older than what other
    /// nodes commit, until `stop`. A listener task forwards the notices, in the order they were
    /// committed, and a ping task sends this node's ping (its send time inside) every
    /// [`PING_EVERY`]. Hearing its own ping sent at `t` means every notice committed before `t`
    /// was applied: the caches may then be served until `t` + [`DEAF_AFTER`], and stop being
    /// served by themselves after that (a stalled or dead listener, a node cut off from the
    /// database). A lost connection stops and forgets them at once. On SQLite this node is the
    /// only writer: returns at once, caches stay on.
    pub async fn keep_caches_coherent(
        &self,
        repo: &Repository,
        devices: &Devices,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let first = match self.db.listen().await {
            Ok(None) => return,
            Ok(Some(listener)) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "listening for other nodes' changes failed; caches stay off until it works");
                None
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        // Neither task is cancelled half-way by this loop: a read given up half-way could lose
        // the news that the connection was lost, and a slow ping must not hold the notices up.
        let listening = tokio::spawn(listen(self.db.clone(), first, tx));
        let pinging = tokio::spawn(ping(self.db.clone(), self.ping_token.clone()));
        let keep = |keep: Keep| {
            repo.keep_in_memory(keep);
            devices.keep_sessions_in_memory(keep);
            self.kept_until.set(match keep {
                Keep::Start(until) | Keep::Extend(until) => until,
                Keep::Stop => 0,
            });
        };
        keep(Keep::Stop);
        let mut started = false;
        loop {
            tokio::select! {
                listened = rx.recv() => match listened {
                    Some(Listened::Heard(Heard::Ping(ping))) => {
                        let Some(sent) = own_ping(&ping, &self.ping_token) else { continue };
                        let until = sent.saturating_add(DEAF_AFTER_MS);
                        if started {
                            keep(Keep::Extend(until));
                        } else {
                            keep(Keep::Start(until));
                            started = true;
                            tracing::info!("hearing the other nodes: caches on");
                        }
                    }
                    Some(Listened::Heard(Heard::Change(change))) => changed(repo, devices, change),
                    Some(Listened::Heard(Heard::Unknown)) => {
                        for change in [Change::Metadata, Change::Holds, Change::Sessions] {
                            changed(repo, devices, change);
                        }
                    }
                    Some(Listened::Lost) => {
                        keep(Keep::Stop);
                        if started {
                            tracing::warn!("the connection hearing the other nodes was lost: caches off");
                        }
                        started = false;
                    }
                    None => break,
                },
                _ = stop.changed() => break,
            }
        }
        listening.abort();
        pinging.abort();
        keep(Keep::Stop);
    }

    /// Take or keep the jobs lease (by the database's clock, so nodes whose clocks disagree
    /// still agree on it); whether this node leads now. An error counts as not leading.
    pub async fn lead(&self) -> Result<bool> {
        let leading = match self.db.lease("jobs", &self.node, LEASE_SECS).await {
            Ok(leading) => leading,
            Err(e) => {
                self.leading.store(false, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        let was = self.leading.swap(leading, Ordering::Relaxed);
        if leading != was {
            if leading {
                tracing::info!(node = self.node, "this node runs the background jobs");
            } else {
                tracing::warn!(node = self.node, "another node runs the background jobs now");
            }
        }
        Ok(leading)
    }

    /// Stop leading (the node is stopping): the lease is given up, so another node (or this
    /// one restarted) runs the jobs at once rather than after the lease runs out.
    pub async fn step_down(&self) -> Result<()> {
        self.leading.store(false, Ordering::Relaxed);
        Ok(self.db.release_lease("jobs", &self.node).await?)
    }

    /// Whether this node led at its last attempt.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// Who holds the jobs lease and until when.
    pub async fn leader(&self) -> Result<Option<(String, i64)>> {
        Ok(self.db.lease_holder("jobs").await?)
    }
}

/// Drop what another node's `change` made old.
fn changed(repo: &Repository, devices: &Devices, change: Change) {
    match change {
        Change::Metadata => repo.metadata_committed_elsewhere(),
        Change::Holds => repo.holds_published_elsewhere(),
        Change::Sessions => devices.changed_elsewhere(),
    }
}

/// The send time in a ping this node sent (`<token>-<ms>`), none for another node's.
fn own_ping(ping: &str, token: &str) -> Option<u64> {
    ping.strip_prefix(token)?.strip_prefix('-')?.parse().ok()
}

/// Send this node's ping, its send time inside, every [`PING_EVERY`] (each given at most twice
/// that to go out).
async fn ping(db: Arc<dyn Database>, token: String) {
    let mut every = tokio::time::interval(PING_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let ping = format!("{token}-{}", now_ms());
        match tokio::time::timeout(PING_EVERY * 2, db.ping_listeners(&ping)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "pinging the listeners"),
            Err(_) => tracing::debug!("pinging the listeners took too long"),
        }
    }
}

/// Read notifications into `tx` until its receiver is gone, connecting again after an error.
async fn listen(db: Arc<dyn Database>, first: Option<ChangeListener>, tx: tokio::sync::mpsc::Sender<Listened>) {
    let mut listener = first;
    loop {
        let Some(current) = listener.as_mut() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match db.listen().await {
                Ok(l) => listener = l,
                Err(e) => tracing::debug!(error = %e, "listening for other nodes' changes"),
            }
            if tx.is_closed() {
                return;
            }
            continue;
        };
        let message = match current.next().await {
            Ok(Some(heard)) => Listened::Heard(heard),
            Ok(None) => Listened::Lost,
            Err(e) => {
                tracing::warn!(error = %e, "the connection listening for other nodes' changes failed");
                listener = None;
                Listened::Lost
            }
        };
        if tx.send(message).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::own_ping;

    #[test]
    fn only_this_nodes_pings_count_with_their_send_time() {
        assert_eq!(own_ping("ab12-1500", "ab12"), Some(1500));
        assert_eq!(own_ping("ab123-1500", "ab12"), None, "another node's token");
        assert_eq!(own_ping("cd34-1500", "ab12"), None);
        assert_eq!(own_ping("ab12-", "ab12"), None);
        assert_eq!(own_ping("ab12-x", "ab12"), None);
        assert_eq!(own_ping("ab12", "ab12"), None);
    }
}
