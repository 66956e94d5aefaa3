//! The agent's state directory (mode 0700; on Windows an ACL for SYSTEM and Administrators): its key, configuration, trusted metadata,
//! downloads, installed updates and the queue of reports not yet sent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ringfence_proto::GroupName;
use ringfence_proto::device::StatusReport;
use ringfence_trust::SigningKey;
use serde::{Deserialize, Serialize};

use crate::tuf_client::write_atomic;

/// What `enroll` recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Device listener base URL, e.g. `https://updates.example:8531`.
    pub server: String,
    pub device_id: String,
    /// The groups whose approvals this device follows; decided here, never by the server.
    pub groups: Vec<GroupName>,
    /// Last poll interval the server suggested.
    pub poll_seconds: u64,
    /// Health check run after every install, in addition to the update's own.
    #[serde(default)]
    pub health_check: Vec<String>,
    /// Where a download may be redirected to (the bucket the server's content is in):
    /// `https://host[:port]` origins, or `http://` on a loopback address (labs, tests). Empty,
    /// the default: a redirected download is not followed.
    #[serde(default)]
    pub content_origins: Vec<String>,
}

/// One installed update, by approval-independent published path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installed {
    pub sha256: String,
    pub update_id: String,
    /// `installed`, `reboot_required` or `not_applicable`.
    pub state: String,
    pub at: i64,
    /// For `reboot_required`: the approval path to report, the boot it was installed in, and
    /// the health check to run once the device has booted again.
    #[serde(default)]
    pub approval: String,
    #[serde(default)]
    pub boot_id: Option<String>,
    #[serde(default)]
    pub health_check: Vec<String>,
    /// For `failed`: install attempts made with these bytes, and the earliest time to try again
    /// (`i64::MAX` once the attempts are used up). For `not_applicable`: when the publisher's
    /// rules are looked at again (a week on when the installer itself said so).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub retry_at: i64,
    /// The operator's retries of this update's rollout this device has acted on (each starts
    /// its attempts afresh once).
    #[serde(default)]
    pub retried: u64,
    /// How many of those this device acted on for these bytes (bounded).
    #[serde(default)]
    pub operator_retries: u32,
}

pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// Open (creating, and making private) the state directory. Each directory inside is made
    /// private too: one created beforehand by someone else keeps no access of theirs.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        for dir in std::iter::once(root.to_path_buf())
            .chain(["metadata", "downloads", "outbox", "backup", "work", "modules"].map(|sub| root.join(sub)))
        {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            // Born private when the agent makes it; one that was there already is looked at.
            let created =
                crate::platform::create_private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            crate::platform::secure_dir(&dir, !created).with_context(|| format!("making {} private", dir.display()))?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    pub fn metadata_dir(&self) -> PathBuf {
        self.root.join("metadata")
    }
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }
    pub fn ca_file(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("modules")
    }
    /// Installer logs and the copies of verified files that need an extension to run.
    pub fn work_dir(&self) -> PathBuf {
        self.root.join("work")
    }

    /// The device key, generated on first use; it never leaves this file.
    pub fn device_key(&self) -> anyhow::Result<SigningKey> {
        let path = self.root.join("device.key");
        if let Ok(pem) = std::fs::read_to_string(&path) {
            return SigningKey::from_pem(&pem, None).context("loading the device key");
        }
        let key = SigningKey::generate();
        let mut f = crate::platform::create_private(&path)?;
        std::io::Write::write_all(&mut f, key.to_unencrypted_pem()?.as_bytes())?;
        Ok(key)
    }

    pub fn config(&self) -> anyhow::Result<AgentConfig> {
        let bytes =
            std::fs::read(self.root.join("config.json")).context("not enrolled: run `ringfence-agent enroll`")?;
        serde_json::from_slice(&bytes).context("config.json")
    }

    pub fn save_config(&self, config: &AgentConfig) -> anyhow::Result<()> {
        write_atomic(&self.root.join("config.json"), &serde_json::to_vec_pretty(config)?)
    }

    pub fn installed(&self) -> BTreeMap<String, Installed> {
        std::fs::read(self.root.join("installed.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save_installed(&self, installed: &BTreeMap<String, Installed>) -> anyhow::Result<()> {
        write_atomic(&self.root.join("installed.json"), &serde_json::to_vec_pretty(installed)?)
    }

    /// Queue a report; it stays on disk until the server acknowledged it.
    /// Hold the cycle lock of this state directory until the file is dropped; another cycle
    /// holding it is an error, not a wait.
    pub fn lock_cycle(&self) -> anyhow::Result<std::fs::File> {
        let path = self.root.join("cycle.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                anyhow::bail!("another cycle is running on {} (the service, or a check)", self.root.display())
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    pub fn queue_report(&self, report: &StatusReport) -> anyhow::Result<()> {
        // File names sort in the order reports were made: the server takes that as their order.
        let last = self
            .queued_reports()
            .last()
            .and_then(|(p, _)| p.file_name()?.to_str()?.split('-').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let seq = (report.at.max(0) as u64).saturating_mul(1_000_000).max(last + 1);
        let name = format!("{seq:020}-{}.json", report.id);
        write_atomic(&self.root.join("outbox").join(name), &serde_json::to_vec(report)?)
    }

    /// Queued reports, oldest first, with their files.
    pub fn queued_reports(&self) -> Vec<(PathBuf, StatusReport)> {
        let mut out: Vec<(PathBuf, StatusReport)> = std::fs::read_dir(self.root.join("outbox"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| {
                let report = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                Some((e.path(), report))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Why the last cycle ended as it did, for `status`.
    pub fn save_last_cycle(&self, summary: &str) -> anyhow::Result<()> {
        write_atomic(&self.root.join("last-cycle.txt"), summary.as_bytes())
    }

    pub fn last_cycle(&self) -> Option<String> {
        std::fs::read_to_string(self.root.join("last-cycle.txt")).ok()
    }
}
