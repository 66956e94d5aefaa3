//! Verified device sessions kept in memory, so a check-in does not read the database to learn
//! who is calling. Kept only when this node is the only one that changes devices (the embedded
//! database) or hears the other nodes' changes (PostgreSQL: `domain::cluster`'s listener, which
//! drops them all when another node ends a device's sessions); dropped all at once when any device leaves `accepted` or is forgotten — in the
//! same call, so a revocation takes effect at once — and each one at its own expiry. A lookup
//! that began before such a drop is not kept after it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::devices::SessionDevice;

/// Sessions kept at most; past it the map starts afresh (each comes back with its next
/// request).
const MAX_KEPT: usize = 200_000;

#[derive(Debug)]
pub struct SessionCache {
    /// Until when sessions may be kept (for ever with one writer).
    enabled: super::kept::KeptUntil,
    /// SHA-256 of the secret → the device and the session's expiry (Unix seconds).
    kept: Mutex<HashMap<String, (SessionDevice, i64)>>,
    /// Drops so far.
    generation: AtomicU64,
}

impl SessionCache {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled: super::kept::KeptUntil::new(enabled),
            kept: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The device of a kept session that has not expired at `now`.
    pub fn get(&self, secret_sha256: &str, now: i64) -> Option<SessionDevice> {
        if !self.enabled.holds() {
            return None;
        }
        let kept = self.kept.lock().ok()?;
        kept.get(secret_sha256).filter(|(_, until)| now < *until).map(|(d, _)| d.clone())
    }

    /// Keep a session verified in the database, unless a drop came since `read_at`.
    pub fn put(&self, secret_sha256: String, device: SessionDevice, until: i64, read_at: u64) {
        if !self.enabled.holds() {
            return;
        }
        if let Ok(mut kept) = self.kept.lock()
            && self.generation() == read_at
        {
            if kept.len() >= MAX_KEPT {
                kept.clear();
            }
            kept.insert(secret_sha256, (device, until));
        }
    }

    /// A guard that drops every kept session now and again when it goes: around a change that
    /// ends a device's sessions, so it takes effect even if the change's future is dropped
    /// half-way (a client gone) after the database changed.
    pub fn changing(&self) -> Changing<'_> {
        self.drop_all();
        Changing(self)
    }

    /// Keep sessions until a moment, or stop; starting and stopping drop those kept.
    pub fn keep_until(&self, keep: super::kept::Keep) {
        self.enabled.apply(keep, || self.drop_all());
    }

    /// A device left `accepted` or was forgotten: no kept session survives it.
    pub fn drop_all(&self) {
        if let Ok(mut kept) = self.kept.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            kept.clear();
        }
    }
}

/// See [`SessionCache::changing`].
pub struct Changing<'a>(&'a SessionCache);

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.0.drop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> SessionDevice {
        SessionDevice { id: "d1".into(), public_key: "ab".into(), groups: Vec::new() }
    }

    #[test]
    fn sessions_last_until_they_expire_or_any_device_leaves() {
        let cache = SessionCache::new(true);
        cache.put("s".into(), device(), 100, cache.generation());
        assert!(cache.get("s", 99).is_some());
        assert!(cache.get("s", 100).is_none(), "expired");
        let before = cache.generation();
        cache.drop_all();
        assert!(cache.get("s", 50).is_none(), "dropped");
        cache.put("s".into(), device(), 100, before);
        assert!(cache.get("s", 50).is_none(), "a lookup from before the drop is not kept");
        let off = SessionCache::new(false);
        off.put("s".into(), device(), 100, off.generation());
        assert!(off.get("s", 50).is_none());
    }
}
