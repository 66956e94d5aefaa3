//! `ringfence pending`: role versions waiting for signatures, and signing them after review
//! (see `review`: the signer verifies what it is shown before it signs).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use ringfence_proto::RoleName;
use ringfence_proto::api::PendingSummary;
use ringfence_trust::SigningKey;

use super::keys::PassphraseArgs;
use crate::{ServerArgs, client, now, output, review};

#[derive(Debug, Subcommand)]
pub enum PendingCommand {
    /// List role versions waiting for signatures.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Sign every pending role version this key may sign, each reviewed as `sign` does.
    SignAll {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Show what a pending role version changes, verify it, sign it and upload the signature.
    Sign {
        #[command(flatten)]
        server: ServerArgs,
        role: String,
        #[command(flatten)]
        signer: SignerArgs,
    },
}

/// Who signs pending roles, and from which trusted root they verify the repository first.
#[derive(Debug, Args, Clone)]
pub struct SignerArgs {
    /// The signing key file.
    #[arg(long)]
    pub key: PathBuf,
    /// The root this signer trusts (for example the `1.root.json` from the ceremony).
    #[arg(long)]
    pub trusted_root: PathBuf,
    /// Sign without asking for confirmation (the difference is still printed and every check
    /// still runs).
    #[arg(long)]
    pub yes: bool,
    /// Where this signer keeps its trusted state for the repository (newest root, timestamp,
    /// snapshot, versions seen and signed). Default:
    /// `~/.local/state/ringfence/signer/<trusted root fingerprint>`.
    #[arg(long, env = "RINGFENCE_SIGNER_STATE")]
    pub state_dir: Option<PathBuf>,
    /// Refuse to sign a version that expires more than this many days from now.
    #[arg(long, default_value_t = DEFAULT_MAX_EXPIRY_DAYS)]
    pub max_expiry_days: i64,
    /// Sign a version number this signer already signed a different document under (needed
    /// after a change to a version while it was pending).
    #[arg(long)]
    pub resign_version: bool,
    /// After the server was restored from a backup: accept exactly this pending version though
    /// it skips versions after the published one (`ringfence restore` prints the version each
    /// offline role must be signed at; versions in between may be trusted by devices already
    /// and are never signed again). Without it, only the published version + 1 is signed.
    #[arg(long, value_name = "VERSION")]
    pub after_restore_version: Option<u64>,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

/// `--key` on a command that changes a role: review and sign the new version at once, as
/// `pending sign` does.
#[derive(Debug, Args, Clone)]
pub struct SignNow {
    /// Sign the new version with this key right away (reviewed as `pending sign` does).
    #[arg(long, requires = "trusted_root")]
    pub key: Option<PathBuf>,
    /// The root this signer trusts (with --key).
    #[arg(long)]
    pub trusted_root: Option<PathBuf>,
    /// Sign without asking for confirmation (with --key).
    #[arg(long)]
    pub yes: bool,
    /// This signer's trusted state (with --key; see `pending sign`).
    #[arg(long, env = "RINGFENCE_SIGNER_STATE")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

impl SignNow {
    /// The signer, when a key was given.
    pub fn signer(&self) -> Option<SignerArgs> {
        Some(SignerArgs {
            key: self.key.clone()?,
            trusted_root: self.trusted_root.clone()?,
            yes: self.yes,
            state_dir: self.state_dir.clone(),
            max_expiry_days: DEFAULT_MAX_EXPIRY_DAYS,
            resign_version: false,
            after_restore_version: None,
            passphrase: self.passphrase.clone(),
        })
    }
}

/// Longest a version signed here may live, unless the signer says otherwise.
const DEFAULT_MAX_EXPIRY_DAYS: i64 = 400;

impl SignerArgs {
    pub(crate) fn load(&self) -> anyhow::Result<(SigningKey, Vec<u8>, review::SignerState, review::ReviewOptions)> {
        let key = self.passphrase.load_key(&self.key)?;
        let path = &self.trusted_root;
        let root = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let state = review::SignerState::open(self.state_dir.as_deref(), &root)?;
        let options = review::ReviewOptions {
            yes: self.yes,
            max_expiry_secs: self.max_expiry_days.saturating_mul(86_400),
            resign_version: self.resign_version,
            after_restore_version: self.after_restore_version,
        };
        Ok((key, root, state, options))
    }
}

pub fn run(command: PendingCommand) -> anyhow::Result<()> {
    match command {
        PendingCommand::List { server, json } => {
            let answer = client(&server)?.get("/api/v1/pending")?.ok()?;
            let list: Vec<PendingSummary> = serde_json::from_slice(&answer)?;
            if json {
                return output::json(&list);
            }
            if list.is_empty() {
                println!("nothing is waiting for signatures");
                return Ok(());
            }
            let mut table =
                output::Table::new(&["ROLE", "VERSION", "WAITING SINCE", "SIGNED", "SIGNED BY", "MAY STILL SIGN"]);
            let short = |ids: &[String]| -> String {
                let ids: Vec<&str> = ids.iter().map(|k| k.get(..12).unwrap_or(k)).collect();
                if ids.is_empty() { "-".to_owned() } else { ids.join(",") }
            };
            for p in &list {
                table.row(vec![
                    p.role.to_string(),
                    p.version.to_string(),
                    output::time(p.created_at),
                    format!("{} of {}", p.signed_by.len(), p.threshold),
                    short(&p.signed_by),
                    short(&p.waiting_for),
                ]);
            }
            table.print();
            println!("next: each key holder reviews and signs what they may sign:");
            println!("  ringfence pending sign-all --key <key> --trusted-root <trusted 1.root.json>");
        }
        PendingCommand::Sign { server, role, signer } => {
            let role = RoleName::parse(&role)?;
            let (key, trusted, state, options) = signer.load()?;
            let client = client(&server)?;
            match review::review_and_sign(&client, &role, &key, &trusted, &state, options, now())? {
                review::Signed::Signed(state) => output::role_state(&state),
                review::Signed::NotAuthorised(why) => anyhow::bail!("{why}"),
            }
        }
        PendingCommand::SignAll { server, signer } => {
            let (key, trusted, state, options) = signer.load()?;
            let client = client(&server)?;
            let mut tried = std::collections::BTreeSet::new();
            // Publishing a role can create new pending roles (a publisher's bins): look again.
            loop {
                let answer = client.get("/api/v1/pending")?.ok()?;
                let mut list: Vec<PendingSummary> = serde_json::from_slice(&answer)?;
                list.retain(|p| !tried.contains(&(p.role.clone(), p.version)));
                if list.is_empty() {
                    break;
                }
                // Delegating roles before the roles they delegate.
                list.sort_by_key(|p| (p.role.as_str().matches('.').count(), p.role.clone()));
                for p in list {
                    tried.insert((p.role.clone(), p.version));
                    match review::review_and_sign(&client, &p.role, &key, &trusted, &state, options, now())? {
                        review::Signed::Signed(state) => output::role_state(&state),
                        review::Signed::NotAuthorised(_) => {}
                    }
                }
            }
        }
    }
    Ok(())
}
