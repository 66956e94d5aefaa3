//! `ringfence key`: generate and inspect signing keys.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use ringfence_trust::SigningKey;

use crate::ceremony;

#[derive(Debug, Args, Clone)]
pub struct PassphraseArgs {
    /// File holding the key passphrase (else $RINGFENCE_KEY_PASSPHRASE, else a prompt when the key is encrypted).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

impl PassphraseArgs {
    pub(crate) fn get(&self, prompt_if_missing: bool) -> anyhow::Result<Option<String>> {
        if let Some(p) = &self.passphrase_file {
            let s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            return Ok(Some(s.trim_end_matches(['\r', '\n']).to_owned()));
        }
        if let Ok(s) = std::env::var("RINGFENCE_KEY_PASSPHRASE") {
            return Ok(Some(s));
        }
        if prompt_if_missing {
            return Ok(Some(rpassword::prompt_password("key passphrase: ")?));
        }
        Ok(None)
    }

    pub(crate) fn load_key(&self, path: &Path) -> anyhow::Result<SigningKey> {
        let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let passphrase = self.get(SigningKey::pem_is_encrypted(&pem))?;
        ceremony::read_key(path, passphrase.as_deref())
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate an ed25519 key: `<dir>/<name>.key` and `<dir>/<name>.pub.json`.
    Generate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// Write the private key unencrypted (development only).
        #[arg(long)]
        unencrypted: bool,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Print the key id and TUF public key of a key file.
    Show {
        file: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
}

pub fn run(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Generate { dir, name, unencrypted, passphrase } => {
            let key = SigningKey::generate();
            let passphrase = if unencrypted {
                eprintln!("WARNING: writing an UNENCRYPTED private key; use it for development only");
                None
            } else {
                Some(passphrase.get(true)?.filter(|p| !p.is_empty()).context("an empty passphrase is not allowed")?)
            };
            let path = ceremony::write_key(&dir, &name, &key, passphrase.as_deref())?;
            println!("{}  {}", key.key_id(), path.display());
        }
        KeyCommand::Show { file, passphrase } => {
            let text = std::fs::read_to_string(&file)?;
            let public = if text.contains("PRIVATE KEY") {
                passphrase.load_key(&file)?.public()
            } else {
                ceremony::read_public(&file, None)?
            };
            println!("key id: {}", public.key_id());
            println!("{}", serde_json::to_string_pretty(&public.to_tuf())?);
        }
    }
    Ok(())
}
