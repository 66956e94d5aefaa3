//! Content-addressed blobs through `object_store`: on local disk (the embedded default) or in
//! an S3-compatible bucket.
//!
//! Objects live at `blobs/<first two hex digits>/<sha256 hex>` under the store directory (or
//! the bucket). An upload is streamed into a file under `tmp/`, hashed on the way, and only
//! once it is complete and verified renamed into place (local disk) or sent to the bucket as
//! a multipart upload, which S3 makes visible only when complete; so a reader never sees a
//! partial object.
//!
//! **Invariant:** no filesystem path is built from a hash that has not been checked to be
//! exactly 64 lower-case hex digits.

use std::fmt;
use std::io::ErrorKind;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{Result, StoreError};

const OBJECTS_DIR: &str = "blobs";
const TEMP_DIR: &str = "tmp";
/// Attempts at a fresh temporary name before giving up (names only clash with leftovers of a
/// crashed process that had the same pid).
const TEMP_NAME_ATTEMPTS: u32 = 64;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Uploads spooled longer ago than this were left by a process that stopped mid-upload: removed
/// when a store is opened (an upload in progress is far younger; several nodes may share the
/// directory).
const STALE_SPOOL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Remove spool files older than [`STALE_SPOOL`]; returns how many.
fn sweep_spool(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age > STALE_SPOOL);
        if name.to_string_lossy().starts_with("upload-") && stale && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %dir.display(), "removed uploads left by a stopped process");
    }
    removed
}

fn invalid_input(message: String) -> StoreError {
    StoreError::Io(std::io::Error::new(ErrorKind::InvalidInput, message))
}

/// A blob address checked to be exactly 64 lower-case hex digits, so it is safe in a path.
struct BlobKey<'a>(&'a str);

impl<'a> BlobKey<'a> {
    fn parse(sha256: &'a str) -> Result<BlobKey<'a>> {
        if sha256.len() == 64 && sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(BlobKey(sha256))
        } else {
            Err(invalid_input("a blob address must be 64 lower-case hex digits".to_owned()))
        }
    }

    fn location(&self) -> ObjectPath {
        let fan_out = self.0.get(..2).unwrap_or_default();
        ObjectPath::from_iter([OBJECTS_DIR, fan_out, self.0])
    }
}

/// Map read errors: a missing object is `NotFound`, not a storage failure.
fn read_error(err: object_store::Error) -> StoreError {
    match err {
        object_store::Error::NotFound { .. } => StoreError::NotFound,
        other => StoreError::Blob(other),
    }
}

/// Parts of a multipart upload to S3 (S3 takes 5 MiB to 5 GiB, at most 10,000 parts: 80 GiB).
const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Where an S3-compatible content store is. Credentials are not here: they come from the
/// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), as do defaults for the rest
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP`).
#[derive(Debug, Clone, Default)]
pub struct S3Location {
    /// `s3://bucket`.
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Plain HTTP to the endpoint (a server on loopback or a private network only).
    pub allow_http: bool,
}

/// Content-addressed blob storage in a local directory or an S3 bucket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    objects: Arc<dyn ObjectStore>,
    /// The bucket, when the objects are in one: it signs download URLs.
    bucket: Option<Arc<object_store::aws::AmazonS3>>,
    /// The local directory's store, when the objects are on local disk.
    local: Option<Arc<LocalFileSystem>>,
    temp_dir: PathBuf,
}

impl BlobStore {
    /// Open the store in `dir`, creating the directory and its layout if missing.
    pub fn open(dir: &Path) -> Result<BlobStore> {
        std::fs::create_dir_all(dir.join(OBJECTS_DIR))?;
        std::fs::create_dir_all(dir.join(TEMP_DIR))?;
        // Absolute from here on, like the paths `LocalFileSystem` derives, so that a later
        // change of working directory cannot split uploads from objects.
        let dir = std::fs::canonicalize(dir)?;
        let objects = Arc::new(LocalFileSystem::new_with_prefix(&dir)?);
        let temp_dir = dir.join(TEMP_DIR);
        sweep_spool(&temp_dir);
        Ok(BlobStore { objects: objects.clone(), bucket: None, local: Some(objects), temp_dir })
    }

    /// Open the S3 bucket `location` names; uploads are spooled in `spool_dir` (created) while
    /// they are hashed.
    pub fn open_s3(location: &S3Location, spool_dir: &Path) -> Result<BlobStore> {
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(&location.url);
        if let Some(endpoint) = &location.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &location.region {
            builder = builder.with_region(region);
        }
        if location.allow_http {
            builder = builder.with_allow_http(true);
        }
        let bucket = Arc::new(builder.build()?);
        std::fs::create_dir_all(spool_dir)?;
        sweep_spool(spool_dir);
        let objects: Arc<dyn ObjectStore> = bucket.clone();
        Ok(BlobStore { objects, bucket: Some(bucket), local: None, temp_dir: std::fs::canonicalize(spool_dir)? })
    }

    /// A URL that lets whoever holds it GET the blob from the bucket for `valid` (AWS SigV4
    /// query parameters), or `None` when the blobs are on local disk.
    pub async fn signed_download(&self, sha256: &str, valid: std::time::Duration) -> Result<Option<String>> {
        use object_store::signer::Signer;
        let key = BlobKey::parse(sha256)?;
        let Some(bucket) = &self.bucket else { return Ok(None) };
        Ok(Some(bucket.signed_url(http::Method::GET, &key.location(), valid).await?.to_string()))
    }

    /// Whether the store holds no blob.
    pub async fn is_empty(&self) -> Result<bool> {
        let mut listing = self.objects.list(Some(&ObjectPath::from(OBJECTS_DIR)));
        Ok(listing.next().await.transpose()?.is_none())
    }

    /// Whether the objects are in a bucket (not on local disk).
    pub fn is_remote(&self) -> bool {
        self.local.is_none()
    }

    /// Start an upload of at most `max_len` bytes.
    ///
    /// Creates the temporary file with a blocking call: one `open`, not worth a thread hop.
    pub fn writer(&self, max_len: u64) -> Result<BlobWriter> {
        let mut attempt = 0;
        let (temp_path, file) = loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self.temp_dir.join(format!("upload-{}-{n}", std::process::id()));
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(err) if err.kind() == ErrorKind::AlreadyExists && attempt < TEMP_NAME_ATTEMPTS => attempt += 1,
                Err(err) => return Err(err.into()),
            }
        };
        Ok(BlobWriter {
            objects: Arc::clone(&self.objects),
            local: self.local.clone(),
            temp_path,
            file: Some(tokio::fs::File::from_std(file)),
            hasher: Sha256::new(),
            len: 0,
            max_len,
            temp_exists: true,
        })
    }

    /// Length of the blob, or `None` if it is not stored.
    pub async fn len(&self, sha256: &str) -> Result<Option<u64>> {
        let key = BlobKey::parse(sha256)?;
        match self.objects.head(&key.location()).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Delete the blob; a blob that is not stored is already deleted.
    pub async fn delete(&self, sha256: &str) -> Result<()> {
        let key = BlobKey::parse(sha256)?;
        match self.objects.delete(&key.location()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// The whole blob in memory; `NotFound` if it is not stored.
    pub async fn read_all(&self, sha256: &str) -> Result<Bytes> {
        let key = BlobKey::parse(sha256)?;
        let result = self.objects.get(&key.location()).await.map_err(read_error)?;
        result.bytes().await.map_err(read_error)
    }

    /// Bytes `range` of the blob. The range must lie within the blob: `NotFound` if it is not
    /// stored, an `InvalidInput` I/O error if the range is reversed or reaches past the end.
    pub async fn get_range(&self, sha256: &str, range: Range<u64>) -> Result<Bytes> {
        let key = BlobKey::parse(sha256)?;
        self.check_range(&key, &range).await?;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let wanted = range.end - range.start;
        let bytes = self.objects.get_range(&key.location(), range).await.map_err(read_error)?;
        if bytes.len() as u64 != wanted {
            return Err(StoreError::Io(std::io::Error::new(ErrorKind::UnexpectedEof, "blob shorter than recorded")));
        }
        Ok(bytes)
    }

    /// Stream the blob, or bytes `range` of it (checked as in [`BlobStore::get_range`]), in
    /// chunks, for files too large to hold in memory.
    pub async fn get_stream(
        &self,
        sha256: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let key = BlobKey::parse(sha256)?;
        if let Some(local) = &self.local {
            return local_stream(local.path_to_filesystem(&key.location())?, range).await;
        }
        let range = match range {
            Some(range) => {
                self.check_range(&key, &range).await?;
                if range.is_empty() {
                    return Ok(stream::empty().boxed());
                }
                Some(GetRange::Bounded(range))
            }
            None => None,
        };
        let options = GetOptions { range, ..GetOptions::default() };
        let result = self.objects.get_opts(&key.location(), options).await.map_err(read_error)?;
        Ok(result.into_stream().map_err(read_error).boxed())
    }

    /// Keep a tile of the transparency log (C2SP `tlog-tiles` path `tile/…`) under `log/`. A
    /// tile's bytes never change for its path, so writing one again is harmless.
    pub async fn put_tile(&self, path: &str, bytes: Bytes) -> Result<()> {
        self.objects.put(&tile_location(path)?, bytes.into()).await?;
        Ok(())
    }

    /// Keep the log's newest checkpoint beside its tiles (`log/checkpoint`), so the tiles can be
    /// read back and checked against something signed (a restore).
    pub async fn put_checkpoint(&self, note: Bytes) -> Result<()> {
        self.objects.put(&ObjectPath::from("log/checkpoint"), note.into()).await?;
        Ok(())
    }

    /// The checkpoint kept beside the tiles (at most `max` bytes), if any.
    pub async fn get_checkpoint(&self, max: u64) -> Result<Option<Bytes>> {
        self.read_capped(&ObjectPath::from("log/checkpoint"), max).await
    }

    /// A tile of the transparency log of at most `max` bytes (more: refused, reading stops
    /// there), or `None` when there is none at `path`. For reading back a store that may not be
    /// trusted.
    pub async fn get_tile_at_most(&self, path: &str, max: u64) -> Result<Option<Bytes>> {
        self.read_capped(&tile_location(path)?, max).await
    }

    /// An object's bytes, read as a stream that stops past `max` bytes (whatever its metadata
    /// says), or `None` when there is none.
    async fn read_capped(&self, location: &ObjectPath, max: u64) -> Result<Option<Bytes>> {
        use futures::TryStreamExt;
        let result = match self.objects.get(location).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let mut stream = result.into_stream();
        let mut out = Vec::new();
        while let Some(chunk) = stream.try_next().await.map_err(read_error)? {
            out.extend_from_slice(&chunk);
            if out.len() as u64 > max {
                return Err(invalid_input(format!("{location}: more than {max} bytes")));
            }
        }
        Ok(Some(Bytes::from(out)))
    }

    /// A tile of the transparency log, or `None` when there is none at `path`.
    pub async fn get_tile(&self, path: &str) -> Result<Option<Bytes>> {
        match self.objects.get(&tile_location(path)?).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(read_error)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Where the blob is (or would be) on local disk, or `None` for a malformed address or a
    /// bucket. For tests that tamper with stored blobs.
    pub fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        let key = BlobKey::parse(sha256).ok()?;
        self.local.as_ref()?.path_to_filesystem(&key.location()).ok()
    }

    /// The object's key in the bucket (or under the directory): `blobs/<2 hex>/<sha256>`.
    pub fn key_of(sha256: &str) -> Option<String> {
        Some(BlobKey::parse(sha256).ok()?.location().to_string())
    }

    async fn check_range(&self, key: &BlobKey<'_>, range: &Range<u64>) -> Result<()> {
        let len = self.len(key.0).await?.ok_or(StoreError::NotFound)?;
        if range.start > range.end || range.end > len {
            return Err(invalid_input(format!(
                "range {}..{} is not within the blob of {len} bytes",
                range.start, range.end
            )));
        }
        Ok(())
    }
}

/// Bytes read per chunk from a local file (object_store's local reads take 8 KiB a time, one
/// blocking task each: a quarter of what a disk and TLS carry). A download in flight holds one
/// or two chunks.
const LOCAL_CHUNK: usize = 256 << 10;

/// A local blob file, or bytes `range` of it (checked against its length), in 256 KiB chunks.
async fn local_stream(path: PathBuf, range: Option<Range<u64>>) -> Result<BoxStream<'static, Result<Bytes>>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::NotFound),
        Err(e) => return Err(e.into()),
    };
    let len = file.metadata().await?.len();
    let range = range.unwrap_or(0..len);
    if range.start > range.end || range.end > len {
        return Err(invalid_input(format!(
            "range {}..{} is not within the blob of {len} bytes",
            range.start, range.end
        )));
    }
    file.seek(std::io::SeekFrom::Start(range.start)).await?;
    let left = range.end - range.start;
    Ok(stream::unfold((file, left), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left).unwrap_or(LOCAL_CHUNK).min(LOCAL_CHUNK);
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match file.read(buf.get_mut(filled..).unwrap_or_default()).await {
                Ok(0) => {
                    let short = std::io::Error::new(ErrorKind::UnexpectedEof, "blob shorter than recorded");
                    return Some((Err(StoreError::Io(short)), (file, 0)));
                }
                Ok(n) => filled += n,
                Err(e) => return Some((Err(StoreError::Io(e)), (file, 0))),
            }
        }
        Some((Ok(Bytes::from(buf)), (file, left - want as u64)))
    })
    .boxed())
}

/// The object a tile path names: `log/tile/…`, for paths of the C2SP shape only (digits, `x`,
/// `.p`, `entries`, at most 64 bytes).
fn tile_location(path: &str) -> Result<ObjectPath> {
    let ok = path.len() <= 64
        && path.starts_with("tile/")
        && path.bytes().all(|b| {
            b.is_ascii_digit()
                || matches!(b, b'/' | b'.' | b'x' | b'p' | b'e' | b'n' | b't' | b'r' | b'i' | b's' | b'l')
        })
        && !path.contains("..")
        && !path.contains("//");
    if !ok {
        return Err(invalid_input(format!("not a tile path: {path:?}")));
    }
    Ok(ObjectPath::from(format!("log/{path}")))
}

/// An upload in progress: bytes are hashed and spooled to a temporary file, and become a blob
/// only through [`BlobWriter::finish`]. Dropping an unfinished writer removes the temporary
/// file.
pub struct BlobWriter {
    objects: Arc<dyn ObjectStore>,
    local: Option<Arc<LocalFileSystem>>,
    temp_path: PathBuf,
    /// `None` once the upload has failed; every later call fails too.
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    len: u64,
    max_len: u64,
    temp_exists: bool,
}

impl fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobWriter")
            .field("temp_path", &self.temp_path)
            .field("len", &self.len)
            .field("max_len", &self.max_len)
            .field("failed", &self.file.is_none())
            .finish_non_exhaustive()
    }
}

fn failed_upload() -> StoreError {
    StoreError::Io(std::io::Error::other("this upload already failed"))
}

impl BlobWriter {
    /// Append `chunk`. Fails with `TooLarge` as soon as the upload exceeds its limit; after any
    /// error the temporary file is gone and the writer is spent.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(failed_upload());
        };
        let new_len = match self.len.checked_add(chunk.len() as u64) {
            Some(new_len) if new_len <= self.max_len => new_len,
            _ => {
                self.discard().await;
                return Err(StoreError::TooLarge { limit: self.max_len });
            }
        };
        if let Err(err) = file.write_all(chunk).await {
            self.discard().await;
            return Err(err.into());
        }
        self.hasher.update(chunk);
        self.len = new_len;
        Ok(())
    }

    /// Complete the upload: check the hash against `expected_sha256` (lower-case hex) if given,
    /// then store the blob under its hash. Returns the hash and length. Storing content that
    /// is already present is fine. On `HashMismatch` nothing is stored; on any error the
    /// temporary file is removed.
    pub async fn finish(mut self, expected_sha256: Option<&str>) -> Result<(String, u64)> {
        match self.commit(expected_sha256).await {
            Ok(sha256) => Ok((sha256, self.len)),
            Err(err) => {
                self.discard().await;
                Err(err)
            }
        }
    }

    async fn commit(&mut self, expected_sha256: Option<&str>) -> Result<String> {
        let mut file = self.file.take().ok_or_else(failed_upload)?;
        // Writes complete in the background; flush surfaces their errors before the fsync.
        file.flush().await?;
        file.sync_all().await?;
        drop(file);

        let actual = hex::encode(self.hasher.finalize_reset());
        if let Some(expected) = expected_sha256.filter(|&expected| expected != actual) {
            return Err(StoreError::HashMismatch { expected: expected.to_owned(), actual });
        }
        let key = BlobKey::parse(&actual)?;
        let Some(local) = &self.local else {
            self.upload(&key).await?;
            return Ok(actual);
        };
        let destination = local.path_to_filesystem(&key.location())?;
        let parent = destination.parent().ok_or_else(|| invalid_input("blob path has no parent".to_owned()))?;
        tokio::fs::create_dir_all(parent).await?;
        // Same name means same content, so replacing an existing object is harmless.
        tokio::fs::rename(&self.temp_path, &destination).await?;
        self.temp_exists = false;
        // Make the new directory entry durable before anyone records the blob as stored.
        #[cfg(unix)]
        tokio::fs::File::open(parent).await?.sync_all().await?;
        Ok(actual)
    }

    /// Send the verified spool file to the bucket as a multipart upload (skipped when an
    /// object of that name and length is there: same name, same content), then remove it.
    async fn upload(&mut self, key: &BlobKey<'_>) -> Result<()> {
        use tokio::io::AsyncReadExt;
        let location = key.location();
        let present = match self.objects.head(&location).await {
            Ok(meta) => meta.size == self.len,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(err) => return Err(err.into()),
        };
        if !present {
            let mut file = tokio::fs::File::open(&self.temp_path).await?;
            let upload = self.objects.put_multipart(&location).await?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buffer = vec![0u8; 1 << 20];
            let sent: Result<()> = async {
                loop {
                    let n = file.read(&mut buffer).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    parts.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                    parts.write(buffer.get(..n).unwrap_or_default());
                }
            }
            .await;
            // Every part but the last sent, so a failed part is aborted below too.
            let sent = match sent {
                Ok(()) => parts.wait_for_capacity(0).await.map_err(StoreError::from),
                Err(err) => Err(err),
            };
            match sent {
                Ok(()) => {
                    parts.finish().await?;
                }
                Err(err) => {
                    // The bucket keeps no parts of an upload that did not complete.
                    let _ = parts.abort().await;
                    return Err(err);
                }
            }
        }
        tokio::fs::remove_file(&self.temp_path).await?;
        self.temp_exists = false;
        Ok(())
    }

    async fn discard(&mut self) {
        self.file = None;
        if self.temp_exists {
            self.temp_exists = false;
            match tokio::fs::remove_file(&self.temp_path).await {
                Err(err) if err.kind() != ErrorKind::NotFound => {
                    tracing::warn!(path = %self.temp_path.display(), error = %err, "could not remove upload temp file");
                }
                _ => {}
            }
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.temp_exists {
            // Drop cannot await; one unlink is cheap enough to do inline.
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn temp_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join(TEMP_DIR)).unwrap().count()
    }

    async fn put(store: &BlobStore, data: &[u8]) -> String {
        let mut writer = store.writer(data.len() as u64).unwrap();
        for chunk in data.chunks(3) {
            writer.write(chunk).await.unwrap();
        }
        let (sha256, len) = writer.finish(Some(&sha256_hex(data))).await.unwrap();
        assert_eq!(len, data.len() as u64);
        sha256
    }

    #[test]
    fn uploads_left_behind_are_removed_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        BlobStore::open(dir.path()).unwrap();
        let tmp = dir.path().join(TEMP_DIR);
        let (old, fresh, other) = (tmp.join("upload-1-0"), tmp.join("upload-2-0"), tmp.join("keep-me"));
        for path in [&old, &fresh, &other] {
            std::fs::write(path, b"partial").unwrap();
        }
        let two_days_ago = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for path in [&old, &other] {
            std::fs::File::options().write(true).open(path).unwrap().set_modified(two_days_ago).unwrap();
        }
        BlobStore::open(dir.path()).unwrap();
        assert!(!old.exists(), "an old upload is removed");
        assert!(fresh.exists(), "one that may be in progress stays");
        assert!(other.exists(), "only upload spool files are touched");
    }

    #[tokio::test]
    async fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = b"the quick brown fox jumps over the lazy dog";
        let sha256 = put(&store, data).await;
        assert_eq!(sha256, sha256_hex(data));
        // Storing the same content again is fine.
        assert_eq!(put(&store, data).await, sha256);

        let path = store.path_of(&sha256).unwrap();
        assert_eq!(path, dir.path().canonicalize().unwrap().join("blobs").join(&sha256[..2]).join(&sha256));
        assert!(path.is_file());
        assert_eq!(temp_files(dir.path()), 0);

        assert_eq!(store.len(&sha256).await.unwrap(), Some(data.len() as u64));
        assert_eq!(store.read_all(&sha256).await.unwrap(), &data[..]);
        assert_eq!(store.get_range(&sha256, 4..9).await.unwrap(), &data[4..9]);
        assert_eq!(store.get_range(&sha256, 43..43).await.unwrap(), &b""[..]);
        let streamed: Vec<Bytes> = store.get_stream(&sha256, Some(10..19)).await.unwrap().try_collect().await.unwrap();
        assert_eq!(streamed.concat(), &data[10..19]);
        let streamed: Vec<Bytes> = store.get_stream(&sha256, None).await.unwrap().try_collect().await.unwrap();
        assert_eq!(streamed.concat(), &data[..]);

        let empty = put(&store, b"").await;
        assert_eq!(store.read_all(&empty).await.unwrap(), &b""[..]);
    }

    /// In an S3 bucket (the server `scripts/test` starts for its second pass): a file of three
    /// multipart parts arrives whole, ranges come back exact, a bad hash stores nothing, and
    /// the spool is empty afterwards. On the first pass (no server) there is nothing to test.
    #[tokio::test]
    async fn s3_multipart_round_trip() {
        let Some(root) = std::env::var_os("RINGFENCE_TEST_S3_ROOT") else { return };
        let bucket = format!("store-{}", std::process::id());
        std::fs::create_dir_all(Path::new(&root).join(&bucket)).unwrap();
        let spool = tempfile::tempdir().unwrap();
        let location = S3Location { url: format!("s3://{bucket}"), ..S3Location::default() };
        let store = BlobStore::open_s3(&location, spool.path()).unwrap();
        assert!(store.is_remote() && store.path_of(&"a".repeat(64)).is_none());
        let data: Vec<u8> = (0..(2 * PART_SIZE + 12_345)).map(|i| (i * 7 % 251) as u8).collect();
        let put_big = |data: Vec<u8>| {
            let store = store.clone();
            async move {
                let mut writer = store.writer(data.len() as u64).unwrap();
                for chunk in data.chunks(64 << 10) {
                    writer.write(chunk).await.unwrap();
                }
                writer.finish(Some(&sha256_hex(&data))).await.unwrap().0
            }
        };
        let sha256 = put_big(data.clone()).await;
        let on_server = Path::new(&root).join(&bucket).join(BlobStore::key_of(&sha256).unwrap());
        assert_eq!(std::fs::read(on_server).unwrap(), data, "stored whole under its hash");
        assert_eq!(store.len(&sha256).await.unwrap(), Some(data.len() as u64));
        let far = PART_SIZE as u64 - 5..PART_SIZE as u64 + 5;
        assert_eq!(store.get_range(&sha256, far).await.unwrap(), &data[PART_SIZE - 5..PART_SIZE + 5]);
        let streamed: Vec<Bytes> = store.get_stream(&sha256, None).await.unwrap().try_collect().await.unwrap();
        assert_eq!(streamed.concat(), data);
        // Stored again: the same address.
        assert_eq!(put_big(data.clone()).await, sha256);
        let mut writer = store.writer(3).unwrap();
        writer.write(b"abc").await.unwrap();
        assert!(matches!(writer.finish(Some(&"0".repeat(64))).await, Err(StoreError::HashMismatch { .. })));
        assert_eq!(store.len(&sha256_hex(b"abc")).await.unwrap(), None);
        assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0, "nothing left in the spool");
        store.delete(&sha256).await.unwrap();
        assert_eq!(store.len(&sha256).await.unwrap(), None);
    }

    #[tokio::test]
    async fn size_cap_stops_the_upload() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut writer = store.writer(10).unwrap();
        writer.write(b"123456").await.unwrap();
        writer.write(b"7890").await.unwrap();
        let err = writer.write(b"x").await.unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { limit: 10 }), "{err:?}");
        assert_eq!(temp_files(dir.path()), 0);
        assert!(writer.write(b"").await.is_err());
        assert!(writer.finish(None).await.is_err());
        assert_eq!(store.len(&sha256_hex(b"1234567890")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn hash_mismatch_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut writer = store.writer(100).unwrap();
        writer.write(b"payload").await.unwrap();
        let expected = sha256_hex(b"something else");
        match writer.finish(Some(&expected)).await {
            Err(StoreError::HashMismatch { expected: e, actual }) => {
                assert_eq!(e, expected);
                assert_eq!(actual, sha256_hex(b"payload"));
            }
            other => panic!("expected HashMismatch, got {other:?}"),
        }
        assert_eq!(store.len(&sha256_hex(b"payload")).await.unwrap(), None);
        assert_eq!(temp_files(dir.path()), 0);
    }

    #[tokio::test]
    async fn dropped_writer_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut writer = store.writer(100).unwrap();
        writer.write(b"partial").await.unwrap();
        assert_eq!(temp_files(dir.path()), 1);
        drop(writer);
        assert_eq!(temp_files(dir.path()), 0);
    }

    #[tokio::test]
    async fn bad_addresses_and_ranges_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let sha256 = put(&store, b"0123456789").await;
        let is_invalid_input =
            |r: Result<Bytes>| matches!(r, Err(StoreError::Io(e)) if e.kind() == ErrorKind::InvalidInput);

        for bad in [sha256.to_uppercase(), sha256[..63].to_owned(), format!("../{}", &sha256[3..]), String::new()] {
            assert!(store.path_of(&bad).is_none(), "{bad}");
            assert!(is_invalid_input(store.read_all(&bad).await), "{bad}");
            assert!(store.len(&bad).await.is_err(), "{bad}");
        }
        assert!(is_invalid_input(store.get_range(&sha256, 5..11).await));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 6..5;
        assert!(is_invalid_input(store.get_range(&sha256, reversed).await));
        assert!(store.get_stream(&sha256, Some(0..11)).await.is_err());

        let missing = "0".repeat(64);
        assert!(matches!(store.read_all(&missing).await, Err(StoreError::NotFound)));
        assert!(matches!(store.get_range(&missing, 0..1).await, Err(StoreError::NotFound)));
        assert!(matches!(store.get_stream(&missing, None).await, Err(StoreError::NotFound)));
        assert_eq!(store.len(&missing).await.unwrap(), None);
    }
}
