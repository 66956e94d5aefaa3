//! This node among the nodes that share one database: which of them runs the background jobs.
//! The leader holds the `jobs` lease and renews it every [`RENEW_SECS`]; when it stops renewing
//! (it died, or lost the database), another node takes the lease once it expires, within
//! [`LEASE_SECS`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ringfence_store::Database;

use super::error::Result;

/// How long a leader's lease lasts unrenewed.
pub const LEASE_SECS: i64 = 10;
/// How often every node tries to take or keep the lease.
pub const RENEW_SECS: u64 = 2;

pub struct Cluster {
    db: Arc<dyn Database>,
    node: String,
    leading: AtomicBool,
}

impl Cluster {
    pub fn new(db: Arc<dyn Database>, node: String) -> Self {
        Self { db, node, leading: AtomicBool::new(false) }
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
