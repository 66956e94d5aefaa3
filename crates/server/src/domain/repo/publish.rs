//! Content and updates: uploads streamed into the content store, updates published into their
//! publisher's hashed bins, the catalog, and the content the device listener serves.

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use ringfence_proto::api::{BlobUploaded, PublishOutcome, RoleVersion, UpdateManifest};
use ringfence_proto::limits::{MAX_FILES_PER_UPDATE, MAX_LIST, MAX_TEXT};
use ringfence_proto::tuf::Targets;
use ringfence_proto::{RoleName, Sha256Hex, TargetPath};
use ringfence_store::{UpdateFileRecord, UpdateRecord};
use ringfence_trust::writer;

use super::{Repository, bad};
use crate::domain::error::{Error, Result};

impl Repository {
    /// Stream an upload into the content store, hashing as it goes. Refused past `limit`
    /// bytes, or when the content's sha256 is not `expected`; nothing is kept then.
    pub async fn upload_content<E: std::fmt::Display>(
        &self,
        mut chunks: impl Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        expected: Option<&str>,
        limit: u64,
        actor: &str,
        now: i64,
    ) -> Result<BlobUploaded> {
        // A mirror keeps only what its imports verified.
        self.online_keys()?;
        let mut writer = self.blobs.writer(limit)?;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| Error::Invalid(format!("upload interrupted: {e}")))?;
            writer.write(&chunk).await?;
        }
        let (sha256, length) = writer.finish(expected).await?;
        self.db.insert_blob(&sha256, length, now).await?;
        self.audit.record(actor, "upload", &format!("content {sha256} ({length} bytes)"), now).await?;
        let sha256 = Sha256Hex::parse(&sha256).map_err(Error::internal)?;
        Ok(BlobUploaded { sha256, length })
    }

    /// The catalog, ordered by id: the manifests of at most `limit` updates after `after`.
    pub async fn list_updates(&self, after: &str, limit: u64) -> Result<Vec<serde_json::Value>> {
        let mut manifests = Vec::new();
        for u in self.db.list_updates(after, limit).await? {
            manifests.push(serde_json::from_str(&u.manifest).map_err(Error::internal)?);
        }
        Ok(manifests)
    }

    /// Updates of the catalog that `matches` accepts, ordered by id after `after`, at most
    /// `limit`; and the id to continue after when more of the catalog is left to look at. At
    /// most 5,000 updates are looked at per call (a catalog is thousands, not a fleet).
    pub async fn find_updates(
        &self,
        matches: impl Fn(&UpdateManifest) -> bool,
        after: &str,
        limit: u64,
    ) -> Result<(Vec<UpdateManifest>, Option<String>)> {
        const CHUNK: u64 = 500;
        let mut found = Vec::new();
        let mut cursor = after.to_owned();
        for _ in 0..10 {
            let chunk = self.db.list_updates(&cursor, CHUNK).await?;
            let full = chunk.len() as u64 == CHUNK;
            for u in chunk {
                cursor = u.id.clone();
                let manifest: UpdateManifest = serde_json::from_str(&u.manifest).map_err(Error::internal)?;
                if matches(&manifest) {
                    found.push(manifest);
                    if found.len() as u64 == limit {
                        return Ok((found, Some(cursor)));
                    }
                }
            }
            if !full {
                return Ok((found, None));
            }
        }
        Ok((found, Some(cursor)))
    }

    /// One update's manifest and its files' target paths.
    pub async fn update(&self, id: &str) -> Result<Option<(UpdateManifest, Vec<String>)>> {
        let Some(record) = self.db.update(id).await? else { return Ok(None) };
        let manifest: UpdateManifest = serde_json::from_str(&record.manifest).map_err(Error::internal)?;
        let paths = self.db.update_files(id).await?.into_iter().map(|f| f.target_path).collect();
        Ok(Some((manifest, paths)))
    }

    /// The length of the content served under `published` with hash `sha256`, if that is what
    /// was published under that path: never whatever happens to be in the content store under
    /// a hash.
    pub async fn served_content(&self, published: &TargetPath, sha256: &Sha256Hex) -> Result<Option<u64>> {
        // A mirror has no catalog of its own: it holds only content its imports found listed,
        // under that hash, in metadata it verified.
        if self.is_mirror() {
            return Ok(self.db.blob_length(sha256.as_str()).await?);
        }
        let Some(file) = self.db.file_by_target_path(published.as_str()).await? else { return Ok(None) };
        if file.sha256 != sha256.as_str() {
            return Ok(None);
        }
        Ok(self.db.blob_length(sha256.as_str()).await?)
    }

    /// A pre-signed URL of the bucket for content `sha256`, valid for five minutes; `None`
    /// when content is on local disk.
    pub async fn content_url(&self, sha256: &Sha256Hex) -> Result<Option<String>> {
        Ok(self.blobs.signed_download(sha256.as_str(), std::time::Duration::from_secs(300)).await?)
    }

    /// The content of `sha256`, or bytes `range` of it, as a stream of chunks.
    pub async fn content_stream(
        &self,
        sha256: &Sha256Hex,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, ringfence_store::Result<Bytes>>> {
        Ok(self.blobs.get_stream(sha256.as_str(), range).await?)
    }

    /// Add an update's files to its publisher's hashed bins.
    ///
    /// Publishing the same manifest again finishes what an interrupted publish left (a node
    /// that died after recording the update, before its bins were signed; or an answer lost on
    /// the way) and changes nothing when it is all there; another manifest under a taken id is
    /// refused.
    pub async fn publish_update(&self, manifest: UpdateManifest, actor: &str, now: i64) -> Result<PublishOutcome> {
        // A mirror keeps only what its imports verified.
        self.online_keys()?;
        validate_manifest(&manifest)?;
        let _guard = self.exclusive().await?;
        let manifest_json = serde_json::to_string(&manifest).map_err(Error::internal)?;
        let again = match self.db.update(&manifest.id).await? {
            Some(u) if u.manifest == manifest_json => true,
            Some(_) => {
                return Err(Error::Conflict(format!("update {} already exists with another manifest", manifest.id)));
            }
            None => false,
        };
        // An update supersedes only its own publisher's updates: supersedence declines the old
        // one, and no publisher decides that for another's.
        for old in &manifest.supersedes {
            match self.db.update(old).await? {
                Some(u) if u.publisher == manifest.publisher.as_str() => {}
                Some(_) => return Err(bad(format!("supersedes: {old} is another publisher's update"))),
                None => return Err(bad(format!("supersedes: no update {old}"))),
            }
        }
        let prefix_len = self.bin_prefix_len(&manifest.publisher).await?;

        let mut files = Vec::new();
        let mut by_bin: BTreeMap<String, Vec<(TargetPath, UpdateFileRecord)>> = BTreeMap::new();
        for f in &manifest.files {
            let path = TargetPath::published(&manifest.publisher, &f.name).map_err(bad)?;
            match self.db.blob_length(f.sha256.as_str()).await? {
                Some(len) if len == f.length => {}
                Some(len) => {
                    return Err(bad(format!(
                        "{}: uploaded content {} has length {len}, not {}",
                        f.name, f.sha256, f.length
                    )));
                }
                None => return Err(bad(format!("{}: no uploaded content with sha256 {}", f.name, f.sha256))),
            }
            match self.db.file_by_target_path(path.as_str()).await? {
                Some(rec) if again && rec.update_id == manifest.id && rec.sha256 == f.sha256.as_str() => {}
                Some(_) => return Err(Error::Conflict(format!("target {path} is already published"))),
                None if again => return Err(Error::internal(format!("update {} lacks its file {path}", manifest.id))),
                None => {}
            }
            let rec = UpdateFileRecord {
                update_id: manifest.id.clone(),
                target_path: path.to_string(),
                sha256: f.sha256.to_string(),
                length: f.length,
            };
            let prefix = ringfence_trust::paths::bin_prefix_of(path.as_str(), prefix_len);
            by_bin.entry(prefix).or_default().push((path, rec.clone()));
            files.push(rec);
        }
        if !again {
            self.db
                .insert_update(
                    &UpdateRecord {
                        id: manifest.id.clone(),
                        publisher: manifest.publisher.to_string(),
                        manifest: manifest_json,
                        created_at: now,
                    },
                    &files,
                    &manifest.cves,
                )
                .await?;
        }

        // Signed by the publisher with the bytes: how to install and where it applies.
        let custom = serde_json::to_value(ringfence_proto::tuf::PublishedCustom {
            update_id: manifest.id.clone(),
            installer: manifest.installer.clone(),
            applicability: manifest.applicability.clone(),
            prerequisites: manifest.prerequisites.clone(),
        })
        .map_err(Error::internal)?;
        let mut outcome = PublishOutcome {
            update_id: manifest.id.clone(),
            targets: Vec::new(),
            published: Vec::new(),
            pending: Vec::new(),
        };
        for (prefix, entries) in by_bin {
            let bin = manifest.publisher.bin_role(&prefix);
            if again && let Some((version, published)) = self.bin_holds(&bin, &entries).await? {
                outcome.targets.extend(entries.into_iter().map(|(p, _)| p));
                let rv = RoleVersion { role: bin, version };
                if published {
                    outcome.published.push(rv)
                } else {
                    outcome.pending.push(rv)
                }
                continue;
            }
            let state = self
                .change_delegated(&bin, now, |t| {
                    for (path, rec) in &entries {
                        let sha = ringfence_proto::Sha256Hex::parse(&rec.sha256).map_err(Error::internal)?;
                        t.targets.insert(path.to_string(), writer::target_file(rec.length, &sha, Some(custom.clone())));
                    }
                    Ok(())
                })
                .await?;
            outcome.targets.extend(entries.into_iter().map(|(p, _)| p));
            let rv = RoleVersion { role: state.role, version: state.version };
            if state.published { outcome.published.push(rv) } else { outcome.pending.push(rv) }
        }
        let what = if again { "publish (again)" } else { "publish" };
        self.audit.record(actor, what, &format!("update {} ({} files)", manifest.id, files.len()), now).await?;
        Ok(outcome)
    }

    /// Whether `bin`'s newest version (pending, else published) lists every entry with its
    /// hash: that version and whether it is published.
    async fn bin_holds(
        &self,
        bin: &RoleName,
        entries: &[(TargetPath, UpdateFileRecord)],
    ) -> Result<Option<(u64, bool)>> {
        let (targets, published) = match self.db.pending(bin.as_str()).await? {
            Some(p) => (super::parse::<Targets>(&p.bytes)?.signed, false),
            None => match self.latest::<Targets>(bin.as_str()).await? {
                Some(env) => (env.signed, true),
                None => return Ok(None),
            },
        };
        let holds = entries.iter().all(|(path, rec)| {
            targets
                .targets
                .get(path.as_str())
                .is_some_and(|t| t.length == rec.length && t.hashes.get("sha256").is_some_and(|h| h == &rec.sha256))
        });
        Ok(holds.then_some((targets.version, published)))
    }
}

fn validate_manifest(m: &UpdateManifest) -> Result<()> {
    let id_ok = !m.id.is_empty()
        && m.id.len() <= 64
        && m.id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !id_ok {
        return Err(bad("id: 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'"));
    }
    for (field, text) in [
        ("title", &m.title),
        ("description", &m.description),
        ("product", &m.product),
        ("release_date", &m.release_date),
    ] {
        if text.len() > MAX_TEXT {
            return Err(bad(format!("{field}: longer than {MAX_TEXT} bytes")));
        }
    }
    if m.title.trim().is_empty() {
        return Err(bad("title: must not be empty"));
    }
    time::Date::parse(&m.release_date, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|_| bad("release_date: expected YYYY-MM-DD"))?;
    let lists = [
        ("kb", &m.kb),
        ("cves", &m.cves),
        ("supersedes", &m.supersedes),
        ("prerequisites", &m.prerequisites),
        ("installer.arguments", &m.installer.arguments),
        ("applicability.os", &m.applicability.os),
        ("applicability.architectures", &m.applicability.architectures),
        ("applicability.not_installed", &m.applicability.not_installed),
        ("applicability.products_installed", &m.applicability.products_installed),
        ("applicability.products_absent", &m.applicability.products_absent),
    ];
    for (field, list) in lists {
        if list.len() > MAX_LIST || list.iter().any(|s| s.len() > 256) {
            return Err(bad(format!("{field}: at most {MAX_LIST} items of at most 256 bytes")));
        }
    }
    for (field, list) in [
        ("applicability.products_installed", &m.applicability.products_installed),
        ("applicability.products_absent", &m.applicability.products_absent),
    ] {
        if list.iter().any(|p| p.trim().is_empty()) {
            return Err(bad(format!("{field}: a product name must not be empty")));
        }
    }
    let module = m.installer.module.as_str();
    if !m.installer.exit_codes.is_empty() && module != "exe" {
        return Err(bad("installer.exit_codes: only for the exe module (msi and msu follow Windows' own codes)"));
    }
    if m.installer.product_code.is_some() && module != "msi" {
        return Err(bad("installer.product_code: only for the msi module"));
    }
    if module == "msi" && !m.installer.arguments.iter().all(|a| ringfence_proto::api::is_msi_property(a)) {
        return Err(bad("installer.arguments: the msi module takes properties NAME=VALUE only, without quotes"));
    }
    if m.installer.exit_codes.len() > ringfence_proto::api::MAX_EXIT_CODES {
        return Err(bad(format!("installer.exit_codes: at most {} rows", ringfence_proto::api::MAX_EXIT_CODES)));
    }
    let mut codes: Vec<u32> = m.installer.exit_codes.iter().map(|r| r.code).collect();
    codes.sort_unstable();
    if codes.windows(2).any(|w| w.first() == w.get(1)) {
        return Err(bad("installer.exit_codes: a code is listed twice"));
    }
    if m.installer.product_code.as_deref().is_some_and(|c| !ringfence_proto::api::is_product_code(c)) {
        return Err(bad("installer.product_code: {XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX} in hex digits"));
    }
    if m.files.is_empty() || m.files.len() > MAX_FILES_PER_UPDATE {
        return Err(bad(format!("files: 1 to {MAX_FILES_PER_UPDATE} files")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> UpdateManifest {
        let mut value: serde_json::Value =
            serde_json::from_str(include_str!("../../../../../docs/examples/hello.manifest.json")).unwrap();
        value["files"] = serde_json::json!([{"name": "hello.txt", "sha256": "ab".repeat(32), "length": 5}]);
        serde_json::from_value(value).unwrap()
    }

    fn refusal(edit: impl FnOnce(&mut UpdateManifest)) -> String {
        let mut m = manifest();
        edit(&mut m);
        match validate_manifest(&m) {
            Err(Error::Invalid(message)) => message,
            other => panic!("not refused as invalid: {other:?}"),
        }
    }

    #[test]
    fn the_example_manifest_is_valid_and_each_bound_names_its_field() {
        assert!(validate_manifest(&manifest()).is_ok());
        assert!(refusal(|m| m.id = "a b".into()).starts_with("id:"));
        assert!(refusal(|m| m.id = "x".repeat(65)).starts_with("id:"));
        assert!(refusal(|m| m.title = " ".into()).starts_with("title:"));
        assert!(refusal(|m| m.description = "x".repeat(MAX_TEXT + 1)).starts_with("description:"));
        assert!(refusal(|m| m.release_date = "23/11/2026".into()).starts_with("release_date:"));
        assert!(refusal(|m| m.cves = vec!["CVE".into(); MAX_LIST + 1]).starts_with("cves:"));
        assert!(refusal(|m| m.kb = vec!["x".repeat(257)]).starts_with("kb:"));
        assert!(refusal(|m| m.files.clear()).starts_with("files:"));
        let msi = |m: &mut UpdateManifest| {
            m.installer.module = "msi".into();
            m.installer.arguments.clear();
        };
        let exe = |m: &mut UpdateManifest| m.installer.module = "exe".into();
        assert!(
            refusal(|m| {
                msi(m);
                m.installer.product_code = Some("{1234}".into())
            })
            .starts_with("installer.product_code:")
        );
        assert!(
            refusal(|m| m.installer.product_code = Some("{0123ABCD-4567-89ab-CDEF-0123456789AB}".into()))
                .contains("only for the msi")
        );
        for argument in
            ["/x", "A=\"b\" /l*v C:\\x", "1A=2", "NOEQUALS", "TRANSFORMS=\\\\h\\s\\x.mst", "patch=x.msp", "DIR=C:\\"]
        {
            assert!(
                refusal(|m| {
                    msi(m);
                    m.installer.arguments = vec![argument.into()]
                })
                .starts_with("installer.arguments:"),
                "{argument}"
            );
        }
        assert!(refusal(|m| m.applicability.products_installed = vec![" ".into()]).contains("must not be empty"));
        let row = ringfence_proto::api::ExitCodeRule { code: 1, means: ringfence_proto::api::ExitMeaning::Failed };
        assert!(refusal(|m| m.installer.exit_codes = vec![row.clone()]).contains("only for the exe"));
        assert!(
            refusal(|m| {
                exe(m);
                m.installer.exit_codes = vec![row.clone(), row.clone()]
            })
            .starts_with("installer.exit_codes:")
        );
        let many: Vec<_> = (0..33).map(|code| ringfence_proto::api::ExitCodeRule { code, ..row.clone() }).collect();
        assert!(
            refusal(|m| {
                exe(m);
                m.installer.exit_codes = many
            })
            .starts_with("installer.exit_codes:")
        );
        assert!(
            refusal(|m| m.applicability.products_absent = vec!["x".repeat(257)])
                .starts_with("applicability.products_absent:")
        );
        let mut good = manifest();
        msi(&mut good);
        good.installer.product_code = Some("{0123ABCD-4567-89ab-CDEF-0123456789AB}".into());
        good.installer.arguments = vec!["ALLUSERS=1".into(), "INSTALLDIR=C:\\Program Files\\Acme".into()];
        assert!(validate_manifest(&good).is_ok());
        let mut good = manifest();
        exe(&mut good);
        good.installer.exit_codes = vec![row];
        assert!(validate_manifest(&good).is_ok());
        let many = vec![manifest().files.remove(0); MAX_FILES_PER_UPDATE + 1];
        assert!(refusal(|m| m.files = many).starts_with("files:"));
    }
}
