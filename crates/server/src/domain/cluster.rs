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
use std::time::{Duration, Instant};

use ringfence_store::{Change, ChangeListener, Database, Heard};

use super::devices::Devices;
use super::error::Result;
use super::repo::Repository;

/// How often a node pings its own listening connection.
const PING_EVERY: Duration = Duration::from_millis(500);
/// A node that has not heard its own ping for this long stops keeping what others can change.
const DEAF_AFTER: Duration = Duration::from_secs(2);

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
    /// Whether this node keeps in memory what other nodes change (it hears them).
    coherent: AtomicBool,
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
            coherent: AtomicBool::new(false),
        }
    }

    /// Whether this node keeps in memory, on a shared database, what other nodes change.
    pub fn caches_coherent(&self) -> bool {
        self.coherent.load(Ordering::SeqCst)
    }

    /// On a shared database (PostgreSQL), keep this node's caches no older than what other
    /// nodes commit, until `stop`: listen on a connection of its own, keep caches on only while
    /// it hears its own pings (sent every [`PING_EVERY`], deaf after [`DEAF_AFTER`]), drop what
    /// each notification makes old, and turn them off (dropping everything) when the connection
    /// is lost. On SQLite this node is the only writer: returns at once, caches stay on.
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
        // The listener runs in a task of its own that nothing cancels (a read given up half-way
        // could lose the news that the connection was lost).
        let listening = tokio::spawn(listen(self.db.clone(), first, tx));
        let set = |on: bool| {
            repo.keep_in_memory(on);
            devices.keep_sessions_in_memory(on);
            if self.coherent.swap(on, Ordering::SeqCst) != on {
                if on {
                    tracing::info!("hearing the other nodes: caches on");
                } else {
                    tracing::warn!("not hearing the other nodes: caches off");
                }
            }
        };
        set(false);
        let mut heard_own: Option<Instant> = None;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                listened = rx.recv() => match listened {
                    Some(Listened::Heard(Heard::Ping(token))) if token == self.ping_token => {
                        heard_own = Some(Instant::now());
                        if !self.caches_coherent() {
                            set(true);
                        }
                    }
                    Some(Listened::Heard(Heard::Ping(_))) => {}
                    Some(Listened::Heard(Heard::Change(change))) => changed(repo, devices, change),
                    Some(Listened::Heard(Heard::Unknown)) => {
                        for change in [Change::Metadata, Change::Holds, Change::Sessions] {
                            changed(repo, devices, change);
                        }
                    }
                    Some(Listened::Lost) | None => {
                        heard_own = None;
                        set(false);
                    }
                },
                _ = ping.tick() => {
                    if self.caches_coherent() && heard_own.is_none_or(|at| at.elapsed() > DEAF_AFTER) {
                        set(false);
                    }
                    if let Err(e) = self.db.ping_listeners(&self.ping_token).await {
                        tracing::debug!(error = %e, "pinging the listeners");
                    }
                }
                _ = stop.changed() => break,
            }
        }
        listening.abort();
        set(false);
    }

    /// This node's name (host, process and a random part, new at every start).
    pub fn node(&self) -> &str {
        &self.node
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
