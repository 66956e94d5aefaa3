//! Metadata as the device listener serves it, from memory.
//!
//! A versioned file (`7.snapshot.json`) never changes once published, so it is kept once read,
//! on every node. The newest version of a role (`timestamp.json`) changes with each commit: it
//! is kept only when this node is the only writer (the embedded database), or, with several
//! nodes (PostgreSQL), while this node hears the others' commits (`domain::cluster`'s listener
//! turns keeping on and off), and dropped by every commit, this node's before the commit returns,
//! another node's as soon as its notification arrives. While this node does not hear the others
//! the newest is read from the database each time: a client that saw a newer timestamp there
//! must not be shown an older one here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use bytes::Bytes;

use crate::domain::kept::Keep;

/// Bytes of versioned files kept at most; past it the map starts afresh (the newest files are
/// asked for most, and come back at once).
const MAX_VERSIONED_BYTES: usize = 64 << 20;
/// Larger files are not kept (the listing roles of a big catalog): read each time.
const MAX_KEPT_BYTES: usize = 1 << 20;

/// A file as served: its bytes and its strong entity tag (`"<sha256>"`).
#[derive(Debug, Clone)]
pub struct Served {
    pub bytes: Bytes,
    pub etag: String,
    /// `signed.version` (0 when the document has none: never for what the server signed).
    pub version: u64,
}

/// Only what serving needs of a document: its version.
#[derive(serde::Deserialize)]
struct Versioned {
    signed: VersionOnly,
}

#[derive(serde::Deserialize)]
struct VersionOnly {
    version: u64,
}

impl Served {
    pub fn new(bytes: Vec<u8>) -> Self {
        let etag = format!("\"{}\"", ringfence_trust::sha256_hex(&bytes));
        let version = serde_json::from_slice::<Versioned>(&bytes).map_or(0, |v| v.signed.version);
        Self { bytes: Bytes::from(bytes), etag, version }
    }
}

/// Versioned files by (role, version).
type VersionedFiles = HashMap<(String, u64), Served>;

#[derive(Debug)]
pub struct ServedCache {
    /// Until when the newest versions may be kept (one writer, this node: for ever; else while
    /// this node hears the other writers).
    keep_newest: crate::domain::kept::KeptUntil,
    /// The files and their total size.
    versioned: Mutex<(VersionedFiles, usize)>,
    newest: RwLock<HashMap<String, Served>>,
    /// Commits so far: a newest version read before a commit is never kept after it.
    generation: AtomicU64,
}

impl ServedCache {
    pub fn new(keep_newest: bool) -> Self {
        Self {
            keep_newest: crate::domain::kept::KeptUntil::new(keep_newest),
            versioned: Mutex::new((HashMap::new(), 0)),
            newest: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// Taken before reading the database; [`ServedCache::put`] keeps a newest version only if
    /// no commit came in between.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn get(&self, role: &str, version: Option<u64>) -> Option<Served> {
        match version {
            Some(v) => self.versioned.lock().ok()?.0.get(&(role.to_owned(), v)).cloned(),
            None if self.keep_newest.holds() => self.newest.read().ok()?.get(role).cloned(),
            None => None,
        }
    }

    pub fn put(&self, role: &str, version: Option<u64>, served: &Served, read_at: u64) {
        if served.bytes.len() > MAX_KEPT_BYTES {
            return;
        }
        match version {
            Some(v) => {
                if let Ok(mut kept) = self.versioned.lock() {
                    let (map, bytes) = &mut *kept;
                    if *bytes + served.bytes.len() > MAX_VERSIONED_BYTES {
                        map.clear();
                        *bytes = 0;
                    }
                    if map.insert((role.to_owned(), v), served.clone()).is_none() {
                        *bytes += served.bytes.len();
                    }
                }
            }
            None if self.keep_newest.holds() => {
                if let Ok(mut map) = self.newest.write()
                    && self.generation() == read_at
                    // Never an older version over a newer one another reader put.
                    && map.get(role).is_none_or(|kept| kept.version <= served.version)
                {
                    map.insert(role.to_owned(), served.clone());
                }
            }
            None => {}
        }
    }

    /// A guard that forgets the newest versions when a commit starts and again when it ends —
    /// also when the commit's future is dropped half-way (a client gone): a commit that lands
    /// without its caller never leaves an older newest version in memory.
    pub fn committing(&self) -> Committing<'_> {
        self.committed();
        Committing(self)
    }

    /// Keep the newest versions until a moment, or stop (see [`Keep`]). Starting and stopping
    /// forget what was kept: started, nothing read before counts; stopped, nothing kept is
    /// served again.
    pub fn keep_until(&self, keep: Keep) {
        self.keep_newest.apply(keep, || self.committed());
    }

    /// Metadata changed outside this server (a restore): forget everything kept.
    pub fn forget_all(&self) {
        self.committed();
        if let Ok(mut kept) = self.versioned.lock() {
            *kept = (HashMap::new(), 0);
        }
    }

    /// A commit changed the newest versions: forget them.
    pub fn committed(&self) {
        if let Ok(mut map) = self.newest.write() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            map.clear();
        }
    }
}

/// See [`ServedCache::committing`].
pub struct Committing<'a>(&'a ServedCache);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.0.committed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_files_are_kept_and_the_newest_only_until_a_commit() {
        let cache = ServedCache::new(true);
        cache.put("snapshot", Some(3), &Served::new(b"three".to_vec()), cache.generation());
        cache.put("timestamp", None, &Served::new(b"ts 9".to_vec()), cache.generation());
        assert_eq!(cache.get("snapshot", Some(3)).unwrap().bytes, Bytes::from_static(b"three"));
        assert_eq!(cache.get("timestamp", None).unwrap().bytes, Bytes::from_static(b"ts 9"));
        cache.committed();
        assert!(cache.get("timestamp", None).is_none(), "a commit drops the newest");
        assert!(cache.get("snapshot", Some(3)).is_some(), "a versioned file stays");
        // Read before a commit, kept after it: never.
        let before = cache.generation();
        cache.committed();
        cache.put("timestamp", None, &Served::new(b"ts 9".to_vec()), before);
        assert!(cache.get("timestamp", None).is_none(), "a newest read before a commit is not kept");

        // With other writers the newest is never kept.
        let shared = ServedCache::new(false);
        shared.put("timestamp", None, &Served::new(b"ts 9".to_vec()), shared.generation());
        assert!(shared.get("timestamp", None).is_none());
        assert_eq!(Served::new(b"x".to_vec()).etag, format!("\"{}\"", ringfence_trust::sha256_hex(b"x")));
    }
}
