//! `ringfence backup` and the checks of `ringfence restore`: an online, consistent copy of the
//! embedded database (SQLite `VACUUM INTO`), the content store's manifest (every blob the
//! catalog references, by hash and length), and optionally the content itself, described by
//! `backup.json`. What happens after a restore so that devices go on is `domain::restore`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use futures::TryStreamExt;
use ringfence_store::{BlobStore, SqlStore, Store};
use sha2::{Digest, Sha256};

use super::error::{Error, Result};

/// What a backup's manifest says it is.
pub const FORMAT: &str = "ringfence-backup/1";
/// The manifest's name in a backup directory; the database's; the content's directory.
pub const MANIFEST: &str = "backup.json";
pub const DATABASE: &str = "ringfence.db";
pub const CONTENT: &str = "content";
/// The largest manifest read (a million blobs fit).
const MAX_MANIFEST: u64 = 256 << 20;

/// `backup.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub created_at: i64,
    /// SHA-256 and length of `ringfence.db`.
    pub database_sha256: String,
    pub database_bytes: u64,
    /// The newest version of every role in the copy.
    pub roles: BTreeMap<String, u64>,
    /// The transparency log's size in the copy.
    pub log_size: u64,
    /// Every blob the catalog references; whether the backup holds their bytes (`content/`).
    pub blobs: Vec<BlobEntry>,
    pub content_included: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobEntry {
    pub sha256: String,
    pub length: u64,
}

/// SHA-256 (hex) and length of a file, read in chunks.
pub fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let (mut hasher, mut buf, mut total) = (Sha256::new(), vec![0u8; 1 << 20], 0u64);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// Copy `store` (SQLite) into `dir/ringfence.db` while the server runs, read what the copy
/// holds, copy the content it references into `dir/content/` when `with_content`, and write
/// the manifest. `dir` must be new or empty.
pub async fn backup(store: &SqlStore, blobs: &BlobStore, dir: &Path, with_content: bool, now: i64) -> Result<Manifest> {
    let database = dir.join(DATABASE);
    store.backup_into(&database).await?;
    let copy = SqlStore::open(&database).await?;
    let roles = copy.latest_all().await?.into_iter().map(|r| (r.role, r.version)).collect();
    let log_size = ringfence_store::LogStore::log_size(&copy).await?;
    let referenced = copy.referenced_blobs().await?;
    copy.close().await;
    let (database_sha256, database_bytes) = file_sha256(&database).map_err(Error::internal)?;
    if with_content {
        std::fs::create_dir_all(dir.join(CONTENT)).map_err(Error::internal)?;
        for (sha256, length) in &referenced {
            copy_blob_out(blobs, sha256, *length, &dir.join(CONTENT).join(sha256)).await?;
        }
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        created_at: now,
        database_sha256,
        database_bytes,
        roles,
        log_size,
        blobs: referenced.into_iter().map(|(sha256, length)| BlobEntry { sha256, length }).collect(),
        content_included: with_content,
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(Error::internal)?;
    std::fs::write(dir.join(MANIFEST), bytes).map_err(Error::internal)?;
    Ok(manifest)
}

/// One blob out of the store into `path`, checked against its hash and length on the way.
async fn copy_blob_out(blobs: &BlobStore, sha256: &str, length: u64, path: &Path) -> Result<()> {
    use std::io::Write;
    let mut chunks = blobs.get_stream(sha256, None).await?;
    let mut file = std::fs::File::create(path).map_err(Error::internal)?;
    let (mut hasher, mut total) = (Sha256::new(), 0u64);
    while let Some(chunk) = chunks.try_next().await? {
        hasher.update(&chunk);
        total += chunk.len() as u64;
        file.write_all(&chunk).map_err(Error::internal)?;
    }
    file.sync_all().map_err(Error::internal)?;
    if total != length || hex::encode(hasher.finalize()) != sha256 {
        return Err(Error::Conflict(format!("blob {sha256} in the content store does not match its record")));
    }
    Ok(())
}

/// Read and check a backup's manifest and database file: the format, and the database's hash
/// and length.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let file = std::fs::File::open(&path).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST + 1).read_to_end(&mut bytes).map_err(Error::internal)?;
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(Error::invalid(format!("{} is larger than {MAX_MANIFEST} bytes", path.display())));
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(Error::invalid(format!("{}: format {:?}, not {FORMAT}", path.display(), manifest.format)));
    }
    let (sha256, length) = file_sha256(&dir.join(DATABASE)).map_err(|e| Error::invalid(format!("{DATABASE}: {e}")))?;
    if sha256 != manifest.database_sha256 || length != manifest.database_bytes {
        return Err(Error::invalid(format!(
            "{DATABASE} is not the database the manifest describes (SHA-256 {sha256}, {length} bytes)"
        )));
    }
    Ok(manifest)
}

/// Make sure the content store holds every blob the restored database references: present with
/// its length, or put back from the backup's `content/` (hash-checked on arrival). Returns (found, put
/// back); a blob neither present nor in the backup is an error naming how many are missing.
pub async fn restore_content(
    blobs: &BlobStore,
    dir: &Path,
    manifest: &Manifest,
    referenced: &[(String, u64)],
) -> Result<(u64, u64)> {
    let (mut found, mut restored, mut missing) = (0u64, 0u64, Vec::new());
    for (sha256, length) in referenced {
        let blob = BlobEntry { sha256: sha256.clone(), length: *length };
        if blobs.len(&blob.sha256).await? == Some(blob.length) {
            found += 1;
            continue;
        }
        let source = dir.join(CONTENT).join(&blob.sha256);
        if !manifest.content_included || !source.is_file() {
            missing.push(blob.sha256.clone());
            continue;
        }
        let mut file = std::fs::File::open(&source).map_err(Error::internal)?;
        let mut writer = blobs.writer(blob.length)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(Error::internal)?;
            if n == 0 {
                break;
            }
            writer.write(buf.get(..n).unwrap_or_default()).await?;
        }
        let (_, written) = writer
            .finish(Some(&blob.sha256))
            .await
            .map_err(|e| Error::Conflict(format!("blob {} in the backup: {e}", blob.sha256)))?;
        if written != blob.length {
            return Err(Error::Conflict(format!("blob {} in the backup has {written} bytes", blob.sha256)));
        }
        restored += 1;
    }
    if let Some(first) = missing.first() {
        return Err(Error::Conflict(format!(
            "{} blobs the catalog references are neither in the content store nor in the backup (the first: {first})",
            missing.len()
        )));
    }
    Ok((found, restored))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_dir(manifest: &str, database: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST), manifest).unwrap();
        std::fs::write(dir.path().join(DATABASE), database).unwrap();
        dir
    }

    #[test]
    fn a_manifest_is_read_only_in_its_schema_and_format_and_with_its_database() {
        let db = b"not really sqlite";
        let sha = hex::encode(Sha256::digest(db));
        let good = format!(
            r#"{{"format":"{FORMAT}","created_at":1,"database_sha256":"{sha}","database_bytes":{},"roles":{{}},"log_size":0,"blobs":[],"content_included":false}}"#,
            db.len()
        );
        assert!(read_manifest(manifest_dir(&good, db).path()).is_ok());
        let refused = |manifest: &str, database: &[u8]| read_manifest(manifest_dir(manifest, database).path()).is_err();
        assert!(refused(&good, b"another database"), "the database's hash");
        assert!(refused(&good.replace(FORMAT, "ringfence-backup/2"), db), "another format");
        assert!(refused(&good.replace(r#""log_size":0"#, r#""log_size":0,"extra":1"#), db), "an unknown field");
        assert!(refused(&good.replace(r#""log_size":0"#, r#""log_size":-1"#), db), "a negative size");
        assert!(refused("{", db), "not JSON");
        assert!(refused(&good, b""), "an empty database file");
    }
}
