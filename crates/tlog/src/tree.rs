//! The log's Merkle tree (RFC 6962 / RFC 9162 hashing) and its C2SP `tlog-tiles` layout.
//!
//! The tree is kept as "stored hashes" (every complete subtree's hash, in the order
//! `tlog_tiles::stored_hash_index` gives): appending a record adds its leaf hash and the hashes of
//! the subtrees it completes, so a tree of any size is read back from what was stored. Tiles
//! are cut from the stored hashes: full tiles of 256 hashes at each level, and a partial tile
//! for the rightmost part, at the paths C2SP `tlog-tiles` names; entry bundles hold the
//! records themselves, each prefixed by its length (two bytes, big-endian).

use thiserror::Error;
use tlog_tiles::{Hash, HashReader, Tile};

/// Tile height: 256 hashes per tile, as C2SP `tlog-tiles` fixes.
pub const TILE_HEIGHT: u8 = 8;
/// Largest record an entry bundle carries (its length prefix is two bytes).
pub const MAX_RECORD_BYTES: usize = u16::MAX as usize;

#[derive(Debug, Error)]
pub enum TreeError {
    #[error("transparency log: {0}")]
    Invalid(String),
    #[error("transparency log: {0}")]
    Tlog(#[from] tlog_tiles::Error),
}

/// Where a tile is served: `tile/<L>/<N>[.p/<W>]`, or `tile/entries/<N>[.p/<W>]` for an entry
/// bundle; `<N>` in groups of three digits, all but the last prefixed with `x`.
pub fn tile_path(level: Option<u8>, index: u64, width: u32) -> String {
    let mut n = index;
    let mut digits = format!("{:03}", n % 1000);
    while n >= 1000 {
        n /= 1000;
        digits = format!("x{:03}/{digits}", n % 1000);
    }
    let level = level.map_or_else(|| "entries".to_owned(), |l| l.to_string());
    let partial = if width == 1 << TILE_HEIGHT { String::new() } else { format!(".p/{width}") };
    format!("tile/{level}/{digits}{partial}")
}

/// Whether `path` is a tile path exactly as [`tile_path`] writes one (level 0 to 63 or
/// `entries`, width 1 to 256): all a server parses of a tile request.
pub fn is_tile_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("tile/") else { return false };
    let Some((level, rest)) = rest.split_once('/') else { return false };
    let level = match level {
        "entries" => None,
        l if l.len() <= 2 && l.bytes().all(|b| b.is_ascii_digit()) => match l.parse::<u8>() {
            Ok(n) if n < 64 => Some(n),
            _ => return false,
        },
        _ => return false,
    };
    let (digits, width) = match rest.split_once(".p/") {
        Some((d, w)) if w.len() <= 3 && w.bytes().all(|b| b.is_ascii_digit()) => match w.parse::<u32>() {
            Ok(w) if (1..1 << TILE_HEIGHT).contains(&w) => (d, w),
            _ => return false,
        },
        Some(_) => return false,
        None => (rest, 1 << TILE_HEIGHT),
    };
    if digits.len() > 32 {
        return false;
    }
    let mut index: u64 = 0;
    for group in digits.split('/') {
        let group = group.strip_prefix('x').unwrap_or(group);
        if group.len() != 3 || !group.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        let Ok(n) = group.parse::<u64>() else { return false };
        let Some(next) = index.checked_mul(1000).and_then(|v| v.checked_add(n)) else { return false };
        index = next;
    }
    // One spelling only: what tile_path writes for that tile.
    tile_path(level, index, width) == path
}

/// A tree held in memory: its stored hashes and records. (The server keeps the same in its
/// database and content store; this is the reference the tests and tools use.)
#[derive(Debug, Default, Clone)]
pub struct Tree {
    hashes: Vec<Hash>,
    records: Vec<Vec<u8>>,
}

impl HashReader for Tree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|i| {
                usize::try_from(*i).ok().and_then(|i| self.hashes.get(i)).copied().ok_or(tlog_tiles::Error::InvalidTile)
            })
            .collect()
    }
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record `index`, if the tree has it.
    pub fn record(&self, index: u64) -> Option<&[u8]> {
        usize::try_from(index).ok().and_then(|i| self.records.get(i)).map(Vec::as_slice)
    }

    /// Records in the tree.
    pub fn size(&self) -> u64 {
        self.records.len() as u64
    }

    /// Append a record; returns its index.
    pub fn append(&mut self, record: &[u8]) -> Result<u64, TreeError> {
        if record.len() > MAX_RECORD_BYTES {
            return Err(TreeError::Invalid(format!("a record of {} bytes, at most {MAX_RECORD_BYTES}", record.len())));
        }
        let index = self.size();
        let new = tlog_tiles::stored_hashes(index, record, self)?;
        self.hashes.extend(new);
        self.records.push(record.to_vec());
        Ok(index)
    }

    /// The tree hash (root) at `size` records (at most the current size).
    pub fn root(&self, size: u64) -> Result<Hash, TreeError> {
        self.check_size(size)?;
        Ok(tlog_tiles::tree_hash(size, self)?)
    }

    /// The proof that the tree of `size` records contains record `index`.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
        self.check_size(size)?;
        if index >= size {
            return Err(TreeError::Invalid(format!("record {index} is not in a tree of {size}")));
        }
        Ok(tlog_tiles::prove_record(size, index, self)?)
    }

    /// The proof that the tree of `size` records extends the tree of its first `old` records.
    pub fn prove_consistency(&self, old: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
        self.check_size(size)?;
        if old > size {
            return Err(TreeError::Invalid(format!("a tree of {old} is not a prefix of one of {size}")));
        }
        // The empty tree and the tree itself are prefixes that need no proof.
        if old == 0 || old == size {
            return Ok(Vec::new());
        }
        Ok(tlog_tiles::prove_tree(size, old, self)?)
    }

    /// The tiles (hash tiles and entry bundles) that change when the tree grows from `old` to
    /// its current size, as (path, bytes). A full tile never changes once written.
    pub fn tiles_since(&self, old: u64) -> Result<Vec<(String, Vec<u8>)>, TreeError> {
        let size = self.size();
        if old > size {
            return Err(TreeError::Invalid(format!("the tree has {size} records, not {old}")));
        }
        let mut out = Vec::new();
        for tile in Tile::new_tiles(TILE_HEIGHT, old, size) {
            let data = tile.read_data(self)?;
            out.push((tile_path(Some(tile.level()), tile.level_index(), tile.width()), data));
            if tile.level() == 0 {
                // The records under this level-0 tile, each with its two-byte length.
                let start = usize::try_from(tile.level_index() << TILE_HEIGHT).unwrap_or(usize::MAX);
                let width = usize::try_from(tile.width()).unwrap_or(0);
                let records: Vec<&[u8]> = self.records.iter().skip(start).take(width).map(Vec::as_slice).collect();
                out.push((tile_path(None, tile.level_index(), tile.width()), entry_bundle(&records)?));
            }
        }
        Ok(out)
    }

    fn check_size(&self, size: u64) -> Result<(), TreeError> {
        if size > self.size() {
            return Err(TreeError::Invalid(format!("the tree has {} records, not {size}", self.size())));
        }
        Ok(())
    }
}

/// An entry bundle: each record prefixed by its length (two bytes, big-endian).
pub fn entry_bundle(records: &[&[u8]]) -> Result<Vec<u8>, TreeError> {
    let mut bundle = Vec::new();
    for record in records {
        let len = u16::try_from(record.len()).map_err(|_| TreeError::Invalid("record too long".into()))?;
        bundle.extend_from_slice(&len.to_be_bytes());
        bundle.extend_from_slice(record);
    }
    Ok(bundle)
}

/// The records of an entry bundle; refused unless it is exactly length-prefixed records.
pub fn split_entry_bundle(bundle: &[u8]) -> Result<Vec<&[u8]>, TreeError> {
    let mut out = Vec::new();
    let mut rest = bundle;
    while !rest.is_empty() {
        let (Some(&hi), Some(&lo)) = (rest.first(), rest.get(1)) else {
            return Err(TreeError::Invalid("an entry bundle ends inside a length".into()));
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let record =
            rest.get(2..2 + len).ok_or_else(|| TreeError::Invalid("an entry bundle ends inside a record".into()))?;
        out.push(record);
        rest = rest.get(2 + len..).unwrap_or_default();
    }
    Ok(out)
}

/// The stored-hash indexes of the complete subtrees on the right edge of a tree of `size`
/// records: all an append (and the root) needs besides the hashes it makes itself.
pub fn frontier(size: u64) -> Vec<u64> {
    (0..64u8).filter(|l| (size >> l) & 1 == 1).map(|l| tlog_tiles::stored_hash_index(l, (size >> l) - 1)).collect()
}

/// Check that `proof` shows record hash `leaf` at `index` in the tree of `size` with `root`.
pub fn check_inclusion(proof: &[Hash], size: u64, root: Hash, index: u64, leaf: Hash) -> Result<(), TreeError> {
    Ok(tlog_tiles::check_record(&proof.to_vec(), size, root, index, leaf)?)
}

/// Check that `proof` shows the tree of `size` with `root` extends the tree of `old` with
/// `old_root`.
pub fn check_consistency(proof: &[Hash], size: u64, root: Hash, old: u64, old_root: Hash) -> Result<(), TreeError> {
    Ok(tlog_tiles::check_tree(&proof.to_vec(), size, root, old, old_root)?)
}

/// A record's leaf hash: SHA-256 of `0x00 || record` (RFC 6962).
pub fn leaf_hash(record: &[u8]) -> Hash {
    tlog_tiles::record_hash(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_paths_parse_in_their_one_spelling_only() {
        for (level, index, width) in [(Some(0), 0, 256), (Some(1), 1234, 7), (None, 1_234_567, 256), (None, 5, 1)] {
            assert!(is_tile_path(&tile_path(level, index, width)), "{}", tile_path(level, index, width));
        }
        assert_eq!(tile_path(Some(0), 1_234_067, 256), "tile/0/x001/x234/067");
        for bad in [
            "tile/0/1",
            "tile/0/0001",
            "tile/0/001.p/256",
            "tile/0/001.p/0",
            "tile/0/001.p/07",
            "tile/64/000",
            "tile/entries/x001",
            "tile/0/001/002",
            "tile/0/x001/../002",
            "tile/00/001",
            "tiles/0/001",
            "tile/0/-01",
        ] {
            assert!(!is_tile_path(bad), "{bad}");
        }
    }
    use ct_merkle::mem_backed_tree::MemoryBackedTree;

    type Reference = MemoryBackedTree<sha2_next::Sha256, Vec<u8>>;

    fn records(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("record {i} {}", "x".repeat(i % 7)).into_bytes()).collect()
    }

    #[test]
    fn tile_paths_are_the_c2sp_ones() {
        assert_eq!(tile_path(Some(0), 0, 256), "tile/0/000");
        assert_eq!(tile_path(Some(1), 1234067, 256), "tile/1/x001/x234/067");
        assert_eq!(tile_path(Some(0), 5, 17), "tile/0/005.p/17");
        assert_eq!(tile_path(None, 1000, 256), "tile/entries/x001/000");
        assert_eq!(tile_path(None, 0, 3), "tile/entries/000.p/3");
    }

    #[test]
    fn roots_and_proofs_agree_with_an_independent_implementation() {
        let all = records(300);
        let mut tree = Tree::new();
        let mut reference = Reference::new();
        for (i, record) in all.iter().enumerate() {
            tree.append(record).unwrap();
            reference.push(record.clone());
            let size = i as u64 + 1;
            let root = tree.root(size).unwrap();
            assert_eq!(root.0.as_slice(), reference.root().as_bytes().as_slice(), "root at {size}");
        }
        let size = tree.size();
        let root = tree.root(size).unwrap();
        let reference_root = reference.root();
        for index in [0u64, 1, 2, 127, 128, 255, 256, 298, 299] {
            // Ours, checked by ct-merkle; and ct-merkle's, checked by ours.
            let proof = tree.prove_inclusion(index, size).unwrap();
            let bytes: Vec<u8> = proof.iter().flat_map(|h| h.0).collect();
            let as_theirs = ct_merkle::InclusionProof::<sha2_next::Sha256>::try_from_bytes(bytes).unwrap();
            reference_root.verify_inclusion(&all[index as usize], index, &as_theirs).unwrap();
            let theirs = reference.prove_inclusion(index as usize);
            let as_ours: Vec<Hash> = theirs.as_bytes().chunks(32).map(|c| Hash(c.try_into().unwrap())).collect();
            check_inclusion(&as_ours, size, root, index, leaf_hash(&all[index as usize])).unwrap();
        }
        // A proof for another record, or another root, fails.
        let proof = tree.prove_inclusion(5, size).unwrap();
        assert!(check_inclusion(&proof, size, root, 6, leaf_hash(&all[6])).is_err());
        assert!(check_inclusion(&proof, size, tree.root(size - 1).unwrap(), 5, leaf_hash(&all[5])).is_err());
    }

    #[test]
    fn consistency_proofs_agree_with_an_independent_implementation() {
        let all = records(300);
        let mut tree = Tree::new();
        for record in &all {
            tree.append(record).unwrap();
        }
        let size = tree.size();
        let root = tree.root(size).unwrap();
        for old in [1u64, 2, 3, 100, 255, 256, 257, 299] {
            let proof = tree.prove_consistency(old, size).unwrap();
            check_consistency(&proof, size, root, old, tree.root(old).unwrap()).unwrap();
            // ct-merkle, built to `old` and then grown, verifies our proof.
            let mut reference = Reference::new();
            for record in all.iter().take(old as usize) {
                reference.push(record.clone());
            }
            let old_root = reference.root();
            for record in all.iter().skip(old as usize) {
                reference.push(record.clone());
            }
            let bytes: Vec<u8> = proof.iter().flat_map(|h| h.0).collect();
            let as_theirs = ct_merkle::ConsistencyProof::<sha2_next::Sha256>::try_from_bytes(bytes).unwrap();
            reference.root().verify_consistency(&old_root, &as_theirs).unwrap();
        }
        let proof = tree.prove_consistency(100, size).unwrap();
        assert!(check_consistency(&proof, size, root, 100, tree.root(99).unwrap()).is_err(), "another old root");
    }

    #[test]
    fn tiles_hold_the_stored_hashes_and_the_records() {
        let all = records(600);
        let mut tree = Tree::new();
        for record in all.iter().take(300) {
            tree.append(record).unwrap();
        }
        let first = tree.tiles_since(0).unwrap();
        let paths: Vec<&str> = first.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["tile/0/000", "tile/entries/000", "tile/0/001.p/44", "tile/entries/001.p/44", "tile/1/000.p/1"]
        );
        // A level-0 tile is the records' leaf hashes; its bundle the records with their lengths.
        let (_, level0) = &first[0];
        assert_eq!(level0.len(), 256 * 32);
        assert_eq!(&level0[32..64], leaf_hash(&all[1]).0.as_slice());
        let (_, bundle) = &first[1];
        assert_eq!(&bundle[..2], (all[0].len() as u16).to_be_bytes().as_slice());
        assert_eq!(&bundle[2..2 + all[0].len()], all[0].as_slice());
        // The level-1 hash is the root of the first 256 records.
        let (_, level1) = &first[4];
        assert_eq!(level1.as_slice(), tree.root(256).unwrap().0.as_slice());
        for record in all.iter().skip(300) {
            tree.append(record).unwrap();
        }
        let next = tree.tiles_since(300).unwrap();
        let paths: Vec<&str> = next.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["tile/0/001", "tile/entries/001", "tile/0/002.p/88", "tile/entries/002.p/88", "tile/1/000.p/2"],
            "a full tile, once written, is not written again"
        );
        assert!(tree.append(&vec![0u8; MAX_RECORD_BYTES + 1]).is_err());
    }
}
