//! The keys the server signs with unattended: timestamp, snapshot, and optionally the
//! auto-approver and publisher keys the operator chose to put online.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use ringfence_trust::SigningKey;

use crate::Config;

pub const TIMESTAMP_FILE: &str = "timestamp.key";
pub const SNAPSHOT_FILE: &str = "snapshot.key";
pub const AUTO_APPROVER_FILE: &str = "auto-approver.key";
/// The transparency log's key (signs checkpoints); without it the server keeps no log.
pub const LOG_FILE: &str = "log.key";

/// The origin the log's checkpoints carry when `[log] origin` does not name one: a name of its
/// own per installation (witnesses keep state per origin), from the log key's id. `init`
/// writes this one into the configuration it makes.
pub fn default_log_origin(log_key: &SigningKey) -> String {
    let id = log_key.key_id().to_string();
    format!("ringfence.log/{}", id.get(..16).unwrap_or(&id))
}

/// The origin the log's checkpoints carry: `[log] origin`, else the one `init` recorded in
/// `online-keys/log-identity.json` (an installation set up with `init --config`), else the one
/// derived from the log key. Both named and different: refused (checkpoints under another
/// origin would be refused by every device).
pub fn log_origin(config: &Config, log_key: Option<&SigningKey>) -> anyhow::Result<Option<String>> {
    let path = config.online_key_dir().join("log-identity.json");
    let recorded = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() <= 1 << 20 => {
            let identity: ringfence_tlog::proof::LogIdentity =
                serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?;
            Some(identity.origin)
        }
        Ok(_) => anyhow::bail!("{}: larger than 1 MiB", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match (&config.log.origin, recorded) {
        (Some(configured), Some(recorded)) if *configured != recorded => anyhow::bail!(
            "[log] origin is {configured:?} but {} records {recorded:?}: the log's checkpoints must keep one origin",
            path.display()
        ),
        (Some(configured), _) => Ok(Some(configured.clone())),
        (None, Some(recorded)) => Ok(Some(recorded)),
        (None, None) => Ok(log_key.map(default_log_origin)),
    }
}

pub struct OnlineKeys {
    pub timestamp: SigningKey,
    pub snapshot: SigningKey,
    pub auto_approver: Option<SigningKey>,
    pub log: Option<SigningKey>,
    /// Online publisher keys by key id.
    pub publishers: Vec<SigningKey>,
}

/// The online keys' passphrase, from `[keys] passphrase_file` (its line ending dropped).
pub fn passphrase(config: &Config) -> anyhow::Result<Option<String>> {
    let Some(path) = &config.keys.passphrase_file else { return Ok(None) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
}

impl OnlineKeys {
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let dir = config.online_key_dir();
        let passphrase = passphrase(config)?;
        let load = |name: &str| load_key(&dir.join(name), passphrase.as_deref());
        let optional = |name: &str| -> anyhow::Result<Option<SigningKey>> {
            let path = dir.join(name);
            if path.exists() { load_key(&path, passphrase.as_deref()).map(Some) } else { Ok(None) }
        };
        let mut publishers = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("publisher-") && name.ends_with(".key") {
                publishers.push(load_key(&entry.path(), passphrase.as_deref())?);
            }
        }
        Ok(Self {
            timestamp: load(TIMESTAMP_FILE)?,
            snapshot: load(SNAPSHOT_FILE)?,
            auto_approver: optional(AUTO_APPROVER_FILE)?,
            log: optional(LOG_FILE)?,
            publishers,
        })
    }

    /// Every online key by key id, for signing delegated roles whose keys include them.
    pub fn delegated_signers(&self) -> BTreeMap<String, &SigningKey> {
        self.auto_approver.iter().chain(self.publishers.iter()).map(|k| (k.key_id().to_string(), k)).collect()
    }
}

fn load_key(path: &Path, passphrase: Option<&str>) -> anyhow::Result<SigningKey> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SigningKey::from_pem(&pem, passphrase).with_context(|| format!("loading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_origin_is_configured_recorded_or_derived_and_never_two() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::with_data_dir(dir.path().to_path_buf());
        let key = SigningKey::generate();
        assert_eq!(log_origin(&config, Some(&key)).unwrap(), Some(default_log_origin(&key)), "derived");
        assert_eq!(log_origin(&config, None).unwrap(), None, "no key, no log");
        std::fs::create_dir_all(config.online_key_dir()).unwrap();
        let identity =
            |origin: &str| serde_json::json!({"origin": origin, "key": "k", "witnesses": [], "quorum": 0}).to_string();
        std::fs::write(config.online_key_dir().join("log-identity.json"), identity("example.org/recorded")).unwrap();
        assert_eq!(log_origin(&config, Some(&key)).unwrap().as_deref(), Some("example.org/recorded"), "recorded");
        config.log.origin = Some("example.org/recorded".into());
        assert_eq!(log_origin(&config, Some(&key)).unwrap().as_deref(), Some("example.org/recorded"), "agreeing");
        config.log.origin = Some("example.org/other".into());
        let refused = log_origin(&config, Some(&key)).unwrap_err().to_string();
        assert!(refused.contains("must keep one origin"), "{refused}");
    }
}
