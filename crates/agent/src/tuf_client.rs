//! `ringfence-agent tuf`: the agent's TUF client behind the command-line interface TUF client
//! test harnesses drive (`init`, `refresh`, `download`).
//!
//! Trusted metadata lives in the metadata directory under non-versioned names (`root.json`,
//! `timestamp.json`, `snapshot.json`, `targets.json`, `<role>.json` for delegated roles) and
//! is written only after it verified. Targets are written only after their length and hash
//! matched, under the percent-encoded target path.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ringfence_proto::limits::MAX_METADATA_BYTES;
use ringfence_trust::client::TrustedSet;
use ringfence_trust::digest::Hasher;
use ringfence_trust::policy::{LayoutError, Lookup};
use ringfence_trust::workflow::{Cached, Fetched, Refresh, SearchStep, TargetSearch, target_file_name, verify_target};

use crate::fetch::Fetcher;

/// Percent-encode everything but unreserved characters, as file names for roles and targets.
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // "." and ".." would name directories.
    if out == "." || out == ".." { out.replace('.', "%2E") } else { out }
}

/// Write `bytes` to `path` through a temporary file and a rename: never half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    // A name of its own per process and write: two processes writing one file (a `check` by
    // hand and the service) never rename each other's half-written file.
    // A failed write leaves nothing behind.
    let tmp = path.with_extension(format!("tmp-{}", crate::cycle::random_id()));
    let written = (|| -> anyhow::Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A TUF client over a metadata directory and a metadata base URL.
pub struct Client {
    pub metadata_dir: PathBuf,
    pub metadata_url: String,
    pub fetcher: Fetcher,
    /// The transparency-log check for delegated roles (the agent's; not the test harness's).
    pub log: Option<crate::log::LogCheck>,
}

fn join_url(base: &str, file: &str) -> String {
    if base.ends_with('/') { format!("{base}{file}") } else { format!("{base}/{file}") }
}

impl Client {
    fn read(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.metadata_dir.join(name)).ok()
    }

    fn store(&self, role: &str, bytes: &[u8]) -> anyhow::Result<()> {
        write_atomic(&self.metadata_dir.join(format!("{}.json", encode_name(role))), bytes)
    }

    /// Refresh the top-level metadata; every accepted file is stored.
    pub fn refresh(&self, now: i64) -> anyhow::Result<TrustedSet> {
        let root = self.read("root.json").context("no trusted root.json in the metadata directory: run init")?;
        let set = TrustedSet::new(&root, now).context("the trusted root does not verify")?;
        let cached = Cached {
            timestamp: self.read("timestamp.json"),
            snapshot: self.read("snapshot.json"),
            targets: self.read("targets.json"),
        };
        let mut refresh = Refresh::new(set, cached);
        while let Some(need) = refresh.need() {
            let fetched = self.fetcher.fetch(&join_url(&self.metadata_url, &need.file), need.max_length)?;
            let bytes = match &fetched {
                Fetched::Bytes(b) => Some(b.clone()),
                Fetched::NotFound => None,
            };
            let accepted = refresh.supply(fetched).with_context(|| format!("{} refused", need.file));
            if refresh.discard_cached() {
                // Fast-forward recovery: the timestamp or snapshot keys rotated, so the stored
                // copies must never serve as rollback references again.
                for name in ["timestamp.json", "snapshot.json"] {
                    match std::fs::remove_file(self.metadata_dir.join(name)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e)?,
                        _ => {}
                    }
                }
            }
            if accepted? && let Some(bytes) = bytes {
                self.store(&need.role, &bytes)?;
            }
        }
        Ok(refresh.finish()?)
    }

    /// Run a [`policy`](ringfence_trust::policy) lookup to its answer, loading the roles it
    /// asks for.
    pub fn lookup<T>(
        &self,
        set: &mut TrustedSet,
        mut step: impl FnMut(&TrustedSet) -> Result<Lookup<T>, LayoutError>,
    ) -> anyhow::Result<T> {
        // targets → publisher → bin is the longest path: three loads at most.
        for _ in 0..4 {
            match step(set)? {
                Lookup::Done(answer) => return Ok(answer),
                Lookup::Load { role, delegator } => {
                    if !self.load_delegated(set, &role, &delegator)? {
                        bail!("{role} is not in the snapshot");
                    }
                }
            }
        }
        bail!("the lookup did not finish")
    }

    /// Load delegated `role` into `set`: the stored copy if it is the version the snapshot
    /// names (it is verified again), else fetched. `false` if the snapshot does not list it.
    pub fn load_delegated(&self, set: &mut TrustedSet, role: &str, delegator: &str) -> anyhow::Result<bool> {
        if set.targets(&TrustedSet::chain(delegator, role)).is_some() {
            return Ok(true);
        }
        let Some(meta) = set.snapshot().and_then(|s| s.signed.meta.get(&format!("{role}.json")).cloned()) else {
            return Ok(false);
        };
        // Once top-level targets names a transparency log, a delegated role's version is
        // trusted only when it is on that log: checked before the role joins the trusted set.
        let log = match &self.log {
            Some(check) => crate::log::identity(set)?.map(|identity| (check, identity)),
            None => None,
        };
        if let Some(cached) = self.read(&format!("{}.json", encode_name(role)))
            && let Ok(version) =
                ringfence_trust::Envelope::<ringfence_proto::tuf::Targets>::parse(&cached, MAX_METADATA_BYTES as usize)
                    .map(|e| e.signed.version)
            && version == meta.version
        {
            if let Some((check, identity)) = &log
                && !check.already_checked(identity, role, &cached)
            {
                check.check(&self.fetcher, identity, role, version, &cached)?;
            }
            if set.update_delegated_targets(&cached, role, delegator).is_ok() {
                return Ok(true);
            }
        }
        let file = if set.root().signed.consistent_snapshot {
            format!("{}.{}.json", meta.version, encode_name(role))
        } else {
            format!("{}.json", encode_name(role))
        };
        let max = meta.length.unwrap_or(MAX_METADATA_BYTES).min(MAX_METADATA_BYTES);
        let Fetched::Bytes(bytes) = self.fetcher.fetch(&join_url(&self.metadata_url, &file), max)? else {
            bail!("{file} is missing on the server");
        };
        if let Some((check, identity)) = &log {
            check.check(&self.fetcher, identity, role, meta.version, &bytes)?;
        }
        set.update_delegated_targets(&bytes, role, delegator).with_context(|| format!("{file} refused"))?;
        self.store(role, &bytes)?;
        Ok(true)
    }

    /// Find `path` through the delegations, loading (and storing) only the roles on the way.
    pub fn find_target(&self, set: &mut TrustedSet, path: &str) -> anyhow::Result<ringfence_proto::tuf::TargetFile> {
        let mut search = TargetSearch::new(path);
        loop {
            match search.next(set)? {
                SearchStep::Found(target) => return Ok(target),
                SearchStep::NotFound => bail!("{path} is not a trusted target"),
                SearchStep::Need { need, delegator } => {
                    if !self.load_delegated(set, &need.role, &delegator)? {
                        bail!("{} is not in the snapshot", need.role);
                    }
                }
            }
        }
    }
}

/// Length and digests (every supported algorithm) of a file.
pub fn digest_file(path: &Path) -> anyhow::Result<(u64, ringfence_trust::digest::Digests)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Hasher::default();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finish())
}

/// Download each target in order into `target_dir`; stop at the first failure. A target
/// already there with the right length and hash is not fetched again.
pub fn download(
    client: &Client,
    now: i64,
    names: &[String],
    target_base_url: &str,
    target_dir: &Path,
) -> anyhow::Result<()> {
    let mut set = client.refresh(now)?;
    let consistent = set.root().signed.consistent_snapshot;
    std::fs::create_dir_all(target_dir)?;
    for name in names {
        let target = client.find_target(&mut set, name)?;
        let out = target_dir.join(encode_name(name));
        if out.exists() && digest_file(&out).is_ok_and(|(len, d)| verify_target(&target, len, &d).is_ok()) {
            continue;
        }
        let file = target_file_name(name, &target, consistent).context("the target lists no sha256 or sha512 hash")?;
        let partial = out.with_extension("partial-ringfence");
        let mut f = std::fs::File::create(&partial)?;
        let result = client.fetcher.fetch_to(&join_url(target_base_url, &file), target.length, 0, &mut f);
        drop(f);
        let checked = result.and_then(|_| {
            let (len, digests) = digest_file(&partial)?;
            verify_target(&target, len, &digests).with_context(|| format!("{name} refused"))
        });
        if let Err(e) = checked {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        std::fs::rename(&partial, &out)?;
    }
    Ok(())
}
