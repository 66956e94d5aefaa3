//! The repository as plain files (`ringfence export --static DIR`): what a web server, a CDN or
//! an air-gapped mirror serves, and any TUF client reads — the same paths as the device
//! listener's `/repo/`.

use ringfence_proto::tuf::Targets;

use super::{Repository, parse};
use crate::domain::error::{Error, Result};

/// The files of the current repository.
pub struct StaticRepository {
    /// `metadata/<file>` and its bytes: every root version, and the newest version of every
    /// other role under its consistent-snapshot name. `metadata/timestamp.json` comes last, so
    /// a mirror written in this order never serves a timestamp before what it names.
    pub metadata: Vec<(String, Vec<u8>)>,
    /// `targets/<dir>/<sha256>.<name>` and the content's SHA-256: every file a current
    /// targets-type role lists.
    pub targets: Vec<(String, String)>,
}

impl Repository {
    pub async fn static_repository(&self) -> Result<StaticRepository> {
        let mut metadata = Vec::new();
        let latest = self.db.latest_all().await?;
        let mut timestamp = None;
        let mut targets = std::collections::BTreeMap::new();
        for record in latest {
            match record.role.as_str() {
                "timestamp" => timestamp = Some(record.bytes),
                "root" => {
                    for version in 1..=record.version {
                        let root = self.db.metadata_version("root", version).await?;
                        let root = root.ok_or_else(|| Error::internal(format!("root version {version} is missing")))?;
                        metadata.push((format!("metadata/{version}.root.json"), root.bytes));
                    }
                }
                role => {
                    if role != "snapshot" {
                        for (path, file) in parse::<Targets>(&record.bytes)?.signed.targets {
                            let Some(sha) = file.hashes.get("sha256") else { continue };
                            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
                            let served =
                                if dir.is_empty() { format!("{sha}.{name}") } else { format!("{dir}/{sha}.{name}") };
                            targets.insert(format!("targets/{served}"), sha.clone());
                        }
                    }
                    metadata.push((format!("metadata/{}.{role}.json", record.version), record.bytes));
                }
            }
        }
        let timestamp = timestamp.ok_or_else(|| Error::internal("the repository has no timestamp"))?;
        metadata.push(("metadata/timestamp.json".into(), timestamp));
        // Only content the server holds (the log identity's target, say, has none).
        let mut held = Vec::new();
        for (path, sha) in targets {
            if self.db.blob_length(&sha).await?.is_some() {
                held.push((path, sha));
            }
        }
        Ok(StaticRepository { metadata, targets: held })
    }

    /// Put content `sha256` at `dest`: with `link`, a hard link to the stored file when the
    /// content is on the same local disk, else a copy streamed out of the store (through a
    /// temporary file). A bundle that travels is a copy: writing into it never changes the store.
    pub async fn export_content(&self, sha256: &str, dest: &std::path::Path, link: bool) -> Result<()> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        if dest.exists() {
            return Ok(());
        }
        if link
            && let Some(stored) = self.blobs.path_of(sha256)
            && std::fs::hard_link(&stored, dest).is_ok()
        {
            return Ok(());
        }
        let tmp = dest.with_extension("partial");
        let mut out = tokio::fs::File::create(&tmp).await.map_err(Error::internal)?;
        let mut chunks = self.blobs.get_stream(sha256, None).await?;
        while let Some(chunk) = chunks.next().await {
            out.write_all(&chunk?).await.map_err(Error::internal)?;
        }
        out.sync_all().await.map_err(Error::internal)?;
        drop(out);
        tokio::fs::rename(&tmp, dest).await.map_err(Error::internal)?;
        Ok(())
    }
}
