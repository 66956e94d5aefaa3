//! Until when this node may serve what it keeps in memory of what other nodes can change (the
//! newest metadata, the holds version, verified sessions). With one writer (the embedded
//! database) that is for ever; on a shared database only until a moment the node's listener
//! extends each time it hears its own ping (`domain::cluster`), so a node whose listener stalls,
//! falls behind or dies stops serving from memory by itself, whatever its tasks do.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Milliseconds on this process's monotonic clock.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A "kept until" mark in [`now_ms`] milliseconds (0: not kept; `u64::MAX`: for ever).
#[derive(Debug)]
pub struct KeptUntil(AtomicU64);

impl KeptUntil {
    pub fn new(one_writer: bool) -> Self {
        Self(AtomicU64::new(if one_writer { u64::MAX } else { 0 }))
    }

    /// Whether what is kept may be served now.
    pub fn holds(&self) -> bool {
        now_ms() < self.0.load(Ordering::SeqCst)
    }

    pub fn set(&self, until: u64) {
        self.0.store(until, Ordering::SeqCst);
    }

    /// Change the mark as `keep` says, calling `forget` (the cache's own drop) where it must:
    /// before a start (nothing read before counts), after a stop (nothing kept is served again).
    pub fn apply(&self, keep: Keep, forget: impl Fn()) {
        match keep {
            Keep::Start(until) => {
                forget();
                self.set(until);
            }
            Keep::Extend(until) => self.set(until),
            Keep::Stop => {
                self.set(0);
                forget();
            }
        }
    }
}

/// How a cache's mark changes: see each cache's `keep_until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Start keeping (after a loss): forget everything first, then keep until the moment.
    Start(u64),
    /// Go on keeping until a later moment (everything heard so far applied in order).
    Extend(u64),
    /// Stop keeping and forget everything.
    Stop,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_holds_until_its_moment() {
        assert!(KeptUntil::new(true).holds());
        let shared = KeptUntil::new(false);
        assert!(!shared.holds(), "off until the listener hears itself");
        shared.set(now_ms() + 60_000);
        assert!(shared.holds());
        shared.set(now_ms().saturating_sub(1));
        assert!(!shared.holds(), "past its moment: off by itself");
    }

    #[test]
    fn starting_and_stopping_forget_and_extending_does_not() {
        let mark = KeptUntil::new(false);
        let forgotten = std::cell::Cell::new(0);
        let later = now_ms() + 60_000;
        mark.apply(Keep::Start(later), || forgotten.set(forgotten.get() + 1));
        assert!(mark.holds() && forgotten.get() == 1);
        mark.apply(Keep::Extend(later + 1), || forgotten.set(forgotten.get() + 1));
        assert!(mark.holds() && forgotten.get() == 1, "an extension keeps what is kept");
        mark.apply(Keep::Stop, || {
            assert!(!mark.holds(), "off before the drop: nothing is put back after it");
            forgotten.set(forgotten.get() + 1);
        });
        assert!(!mark.holds() && forgotten.get() == 2);
    }
}
