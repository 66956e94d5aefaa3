//! Ringfence's administrator commands: the offline ceremony (keys, root, top-level targets,
//! signing pending roles) and the admin API client (publish, approve, propose).
//!
//! **Invariant:** before it signs anything, `pending sign` verifies what it is shown: it
//! walks the published repository from a root the operator trusts, shows the complete
//! difference from the published version, and refuses an approval whose length or hashes
//! are not the ones the publisher role signed.

pub mod ceremony;
pub mod http;
pub mod review;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use ringfence_proto::api::{
    ApprovalRequest, BlobUploaded, PendingSummary, RoleState, Scope, TokenCreated, TokenInfo, TokenRequest, UpdateFile,
    UpdateManifest,
};
use ringfence_proto::tuf::{ApprovalAction, Root, Targets};
use ringfence_proto::{GroupName, PublisherName, RoleName, TargetPath};
use ringfence_trust::writer::RoleKeySet;
use ringfence_trust::{Envelope, SigningKey};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate and inspect signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Work on local metadata files (offline).
    #[command(subcommand)]
    Metadata(MetadataCommand),
    /// Upload a file to the content store.
    Upload {
        #[command(flatten)]
        server: ServerArgs,
        file: PathBuf,
    },
    /// Publish an update: upload its files and post its manifest.
    Publish {
        #[command(flatten)]
        server: ServerArgs,
        /// Update manifest (JSON) without `files`; the files are added from the arguments.
        #[arg(long)]
        manifest: PathBuf,
        files: Vec<PathBuf>,
        /// Print the server's answer as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Propose an approval of a published file for a group.
    Approve {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        group: String,
        /// Published path, `<publisher>/<file>`.
        #[arg(long)]
        target: String,
        #[arg(long, default_value = "install")]
        action: String,
        /// Deadline, `YYYY-MM-DDTHH:MM:SSZ`.
        #[arg(long)]
        deadline: Option<String>,
    },
    /// Role versions waiting for signatures.
    #[command(subcommand)]
    Pending(PendingCommand),
    /// Admin API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Devices: enrollment tokens, the fleet list, accept / reject / revoke.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Save the published version of a role to a file (to start its next version offline).
    Fetch {
        #[command(flatten)]
        server: ServerArgs,
        role: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Propose a new version of an offline role (root, targets, ...) from a signed file.
    Propose {
        #[command(flatten)]
        server: ServerArgs,
        role: String,
        file: PathBuf,
    },
}

#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// Admin API URL.
    #[arg(long, env = "RINGFENCE_ADMIN_URL", default_value = "https://127.0.0.1:8532")]
    pub server: String,
    /// API token.
    #[arg(long, env = "RINGFENCE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// CA certificate (PEM) to trust for the admin listener.
    #[arg(long, env = "RINGFENCE_CA")]
    pub ca: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct PassphraseArgs {
    /// File holding the key passphrase (else $RINGFENCE_KEY_PASSPHRASE, else a prompt when the key is encrypted).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

impl PassphraseArgs {
    fn get(&self, prompt_if_missing: bool) -> anyhow::Result<Option<String>> {
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

    fn load_key(&self, path: &Path) -> anyhow::Result<SigningKey> {
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

#[derive(Debug, Subcommand)]
pub enum MetadataCommand {
    /// Create root version 1 (unsigned) from public key files.
    NewRoot {
        #[arg(long)]
        out: PathBuf,
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        root_threshold: u64,
        #[arg(long = "targets-key", required = true)]
        targets_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        targets_threshold: u64,
        /// The server's online snapshot key (`online-keys/snapshot.pub.json` from `ringfence init`).
        #[arg(long)]
        snapshot_key: PathBuf,
        /// The server's online timestamp key.
        #[arg(long)]
        timestamp_key: PathBuf,
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
    /// Create top-level targets version 1 (unsigned, no delegations yet).
    NewTargets {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
    /// Start the next version of a root: same roles, version + 1, no signatures.
    NextRoot {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Replace the root keys with these public keys.
        #[arg(long = "root-key")]
        root_keys: Vec<PathBuf>,
        #[arg(long)]
        root_threshold: Option<u64>,
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
    /// Add or change a group's approval role in top-level targets (a signed file starts the
    /// next version; an unsigned draft is edited at its version).
    SetGroup {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        group: String,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        threshold: u64,
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
    /// Add or change a publisher in top-level targets (same versioning as set-group).
    SetPublisher {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        publisher: String,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        threshold: u64,
        #[arg(long, default_value_t = 365)]
        expires_days: i64,
    },
    /// Add this key's signature to a metadata file, in place.
    Sign {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Create an enrollment token scoped to a group; printed once.
    EnrollmentToken {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        #[arg(long, default_value_t = 1)]
        uses: u64,
        #[arg(long, default_value_t = 86_400)]
        expires_in_secs: u64,
    },
    /// Devices with their groups, last check-in and the state of each update, fetched a page
    /// at a time.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Only devices in this state (pending, accepted, rejected, revoked).
        #[arg(long)]
        state: Option<String>,
        /// Stop after this many devices (all by default).
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Accept a pending device.
    Accept {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Reject a pending device.
    Reject {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Revoke a device: its sessions end at once.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        name: String,
        /// publish, approve, read or admin; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a token at once.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PendingCommand {
    /// List role versions waiting for signatures.
    List {
        #[command(flatten)]
        server: ServerArgs,
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
    #[arg(long, default_value_t = 400)]
    pub max_expiry_days: i64,
    /// Sign a version number this signer already signed a different document under (needed
    /// after a change to a version while it was pending).
    #[arg(long)]
    pub resign_version: bool,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

impl SignerArgs {
    fn load(&self) -> anyhow::Result<(SigningKey, Vec<u8>, review::SignerState, review::ReviewOptions)> {
        let key = self.passphrase.load_key(&self.key)?;
        let path = &self.trusted_root;
        let root = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let state = review::SignerState::open(self.state_dir.as_deref(), &root)?;
        let options = review::ReviewOptions {
            yes: self.yes,
            max_expiry_secs: self.max_expiry_days.saturating_mul(86_400),
            resign_version: self.resign_version,
        };
        Ok((key, root, state, options))
    }
}

fn client(server: &ServerArgs) -> anyhow::Result<http::Client> {
    http::Client::new(&server.server, Some(server.token.clone()), &server.ca)
}

#[allow(clippy::disallowed_methods)]
fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn read_envelope<T>(path: &Path) -> anyhow::Result<Envelope<T>>
where
    T: serde::de::DeserializeOwned + serde::Serialize + ringfence_trust::envelope::MetadataType,
{
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Envelope::parse(&bytes, ringfence_proto::limits::MAX_UPLOADED_METADATA)
        .with_context(|| format!("parsing {}", path.display()))
}

fn write_envelope<T>(path: &Path, env: &Envelope<T>) -> anyhow::Result<()>
where
    T: serde::de::DeserializeOwned + serde::Serialize + ringfence_trust::envelope::MetadataType,
{
    std::fs::write(path, env.to_bytes()?).with_context(|| format!("writing {}", path.display()))
}

fn key_set(paths: &[PathBuf], threshold: u64) -> anyhow::Result<RoleKeySet> {
    let keys = paths.iter().map(|p| ceremony::read_public(p, None)).collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        threshold >= 1 && threshold as usize <= keys.len(),
        "threshold must be between 1 and the number of keys"
    );
    Ok(RoleKeySet::new(keys, threshold))
}

/// Write the next version of the targets in `file` (see [`next_targets`]), changed by `edit`.
fn edit_targets(file: &Path, out: &Path, expires_days: i64, edit: impl FnOnce(&mut Targets)) -> anyhow::Result<()> {
    let mut next = next_targets(file, expires_days)?;
    edit(&mut next);
    write_envelope(out, &Envelope::new(next)?)?;
    println!("wrote {}; sign it with the targets keys, then propose it", out.display());
    Ok(())
}

/// The version to edit: a signed file is a published version, so its successor is started;
/// an unsigned file is a draft already being edited, so it keeps its version.
fn next_targets(file: &Path, expires_days: i64) -> anyhow::Result<Targets> {
    let current = read_envelope::<Targets>(file)?;
    let mut next = current.signed;
    if !current.signatures.is_empty() {
        next.version += 1;
    }
    next.expires = ringfence_trust::expiry::format(now() + expires_days * 86_400);
    Ok(next)
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Key(KeyCommand::Generate { dir, name, unencrypted, passphrase }) => {
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
        Command::Key(KeyCommand::Show { file, passphrase }) => {
            let text = std::fs::read_to_string(&file)?;
            let public = if text.contains("PRIVATE KEY") {
                passphrase.load_key(&file)?.public()
            } else {
                ceremony::read_public(&file, None)?
            };
            println!("key id: {}", public.key_id());
            println!("{}", serde_json::to_string_pretty(&public.to_tuf())?);
        }
        Command::Metadata(MetadataCommand::NewRoot {
            out,
            root_keys,
            root_threshold,
            targets_keys,
            targets_threshold,
            snapshot_key,
            timestamp_key,
            expires_days,
        }) => {
            let keys = ceremony::TopLevelKeys {
                root: key_set(&root_keys, root_threshold)?,
                targets: key_set(&targets_keys, targets_threshold)?,
                snapshot: key_set(&[snapshot_key], 1)?,
                timestamp: key_set(&[timestamp_key], 1)?,
            };
            let root = ceremony::root(1, now() + expires_days * 86_400, &keys)?;
            write_envelope(&out, &root)?;
            println!("wrote {}; sign it with {root_threshold} root key(s): `ringfence metadata sign`", out.display());
        }
        Command::Metadata(MetadataCommand::NewTargets { out, expires_days }) => {
            let targets = ringfence_trust::writer::targets(1, now() + expires_days * 86_400);
            write_envelope(&out, &Envelope::new(targets)?)?;
            println!("wrote {}; add groups and publishers with set-group / set-publisher, then sign it", out.display());
        }
        Command::Metadata(MetadataCommand::NextRoot { file, out, root_keys, root_threshold, expires_days }) => {
            let current = read_envelope::<Root>(&file)?;
            let mut next = current.signed;
            next.version += 1;
            next.expires = ringfence_trust::expiry::format(now() + expires_days * 86_400);
            if !root_keys.is_empty() {
                let set = key_set(&root_keys, root_threshold.unwrap_or(1))?;
                for k in &set.keys {
                    next.keys.insert(k.key_id().to_string(), k.to_tuf());
                }
                if let Some(role) = next.roles.get_mut("root") {
                    role.keyids = set.keyids();
                    role.threshold = set.threshold;
                }
                let used: std::collections::BTreeSet<String> =
                    next.roles.values().flat_map(|r| r.keyids.clone()).collect();
                next.keys.retain(|id, _| used.contains(id));
            }
            write_envelope(&out, &Envelope::new(next)?)?;
            println!("wrote {}; now sign it with the old and the new root keys", out.display());
        }
        Command::Metadata(MetadataCommand::SetGroup { file, out, group, keys, threshold, expires_days }) => {
            let group = GroupName::parse(&group)?;
            let set = key_set(&keys, threshold)?;
            edit_targets(&file, &out, expires_days, |t| ceremony::add_group(t, &group, &set))?;
        }
        Command::Metadata(MetadataCommand::SetPublisher { file, out, publisher, keys, threshold, expires_days }) => {
            let publisher = PublisherName::parse(&publisher)?;
            let set = key_set(&keys, threshold)?;
            edit_targets(&file, &out, expires_days, |t| ceremony::add_publisher(t, &publisher, &set))?;
        }
        Command::Metadata(MetadataCommand::Sign { file, key, passphrase }) => {
            let key = passphrase.load_key(&key)?;
            let bytes = std::fs::read(&file)?;
            let value: serde_json::Value = serde_json::from_slice(&bytes)?;
            match value.pointer("/signed/_type").and_then(|v| v.as_str()) {
                Some("root") => {
                    let mut env = read_envelope::<Root>(&file)?;
                    env.sign(&key);
                    write_envelope(&file, &env)?;
                }
                Some("targets") => {
                    let mut env = read_envelope::<Targets>(&file)?;
                    env.sign(&key);
                    write_envelope(&file, &env)?;
                }
                other => anyhow::bail!("cannot sign a document of type {other:?} offline"),
            }
            println!("signed {} with {}", file.display(), key.key_id());
        }
        Command::Upload { server, file } => {
            let uploaded = upload(&client(&server)?, &file)?;
            println!("{}  {}  {}", uploaded.sha256, uploaded.length, file.display());
        }
        Command::Publish { server, manifest, files, json } => {
            let client = client(&server)?;
            let mut value: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest)?)?;
            let mut list = Vec::new();
            for file in &files {
                let uploaded = upload(&client, file)?;
                let name = file.file_name().and_then(|n| n.to_str()).context("file name must be UTF-8")?.to_owned();
                list.push(UpdateFile { name, sha256: uploaded.sha256, length: uploaded.length });
            }
            value
                .as_object_mut()
                .context("the manifest must be a JSON object")?
                .insert("files".into(), serde_json::to_value(list)?);
            let manifest: UpdateManifest =
                serde_json::from_value(value).context("the manifest does not fit the schema")?;
            let answer = client.send_json("POST", "/api/v1/updates", &manifest)?.ok()?;
            if json {
                println!("{}", String::from_utf8_lossy(&answer));
            } else {
                print_published(&serde_json::from_slice(&answer)?);
            }
        }
        Command::Approve { server, group, target, action, deadline } => {
            let action = match action.as_str() {
                "install" => ApprovalAction::Install,
                "uninstall" => ApprovalAction::Uninstall,
                other => anyhow::bail!("action must be install or uninstall, not {other}"),
            };
            let request = ApprovalRequest {
                group: GroupName::parse(&group)?,
                target: TargetPath::parse(&target)?,
                action,
                deadline,
            };
            let answer = client(&server)?.send_json("POST", "/api/v1/approvals", &request)?.ok()?;
            let state: RoleState = serde_json::from_slice(&answer)?;
            print_state(&state);
        }
        Command::Pending(PendingCommand::List { server }) => {
            let answer = client(&server)?.get("/api/v1/pending")?.ok()?;
            let list: Vec<PendingSummary> = serde_json::from_slice(&answer)?;
            if list.is_empty() {
                println!("nothing is waiting for signatures");
            }
            for p in list {
                println!("{} version {}", p.role, p.version);
            }
        }
        Command::Pending(PendingCommand::Sign { server, role, signer }) => {
            let role = RoleName::parse(&role)?;
            let (key, trusted, state, options) = signer.load()?;
            let client = client(&server)?;
            match review::review_and_sign(&client, &role, &key, &trusted, &state, options, now())? {
                review::Signed::Signed(state) => print_state(&state),
                review::Signed::NotAuthorised(why) => anyhow::bail!("{why}"),
            }
        }
        Command::Pending(PendingCommand::SignAll { server, signer }) => {
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
                        review::Signed::Signed(state) => print_state(&state),
                        review::Signed::NotAuthorised(_) => {}
                    }
                }
            }
        }
        Command::Token(TokenCommand::Create { server, name, scopes }) => {
            let scopes = scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).with_context(|| format!("unknown scope {s}; use publish, approve, read or admin"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let answer = client(&server)?.send_json("POST", "/api/v1/tokens", &TokenRequest { name, scopes })?.ok()?;
            let created: TokenCreated = serde_json::from_slice(&answer)?;
            println!("id {}\n{}", created.id, created.token);
        }
        Command::Token(TokenCommand::List { server }) => {
            let answer = client(&server)?.get("/api/v1/tokens")?.ok()?;
            let tokens: Vec<TokenInfo> = serde_json::from_slice(&answer)?;
            for t in tokens {
                let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                let state = if t.revoked { "revoked" } else { "active" };
                println!("{}  {}  {}  {state}", t.id, t.name, scopes.join(","));
            }
        }
        Command::Token(TokenCommand::Revoke { server, id }) => {
            client(&server)?.send("DELETE", &format!("/api/v1/tokens/{id}"), &[], "application/json")?.ok()?;
            println!("revoked {id}");
        }
        Command::Device(command) => device(command)?,
        Command::Fetch { server, role, out } => {
            let role = RoleName::parse(&role)?;
            let bytes = client(&server)?.get(&format!("/api/v1/metadata/{role}"))?.ok()?;
            std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {}", out.display());
        }
        Command::Propose { server, role, file } => {
            let role = RoleName::parse(&role)?;
            let bytes = std::fs::read(&file)?;
            let answer =
                client(&server)?.send("PUT", &format!("/api/v1/pending/{role}"), &bytes, "application/json")?.ok()?;
            let state: RoleState = serde_json::from_slice(&answer)?;
            print_state(&state);
        }
    }
    Ok(())
}

fn upload(client: &http::Client, file: &Path) -> anyhow::Result<BlobUploaded> {
    let answer = client.put_file("/api/v1/content", file)?.ok()?;
    Ok(serde_json::from_slice(&answer)?)
}

fn print_published(outcome: &ringfence_proto::api::PublishOutcome) {
    let targets: Vec<&str> = outcome.targets.iter().map(|t| t.as_str()).collect();
    println!("update {} ({} file(s)): {}", outcome.update_id, targets.len(), targets.join(", "));
    for r in &outcome.published {
        println!("{} version {} is published", r.role, r.version);
    }
    for r in &outcome.pending {
        println!("{} version {} waits for its publisher's signature", r.role, r.version);
    }
    if !outcome.pending.is_empty() {
        println!("next: the publisher signs it, then approvers approve the files for their groups:");
        println!("  ringfence pending sign-all --key <publisher key> --trusted-root <trusted 1.root.json>");
        println!("  ringfence approve --group <group> --target {}", targets.first().copied().unwrap_or("<target>"));
    } else {
        println!("next: ringfence approve --group <group> --target {}", targets.first().copied().unwrap_or("<target>"));
    }
}

fn print_state(state: &RoleState) {
    if state.published {
        println!(
            "{} version {} is published ({} of {} signatures)",
            state.role, state.version, state.valid_signatures, state.threshold
        );
    } else {
        println!(
            "{} version {} waits for signatures: {} of {}; approvers run `ringfence pending sign {}`",
            state.role, state.version, state.valid_signatures, state.threshold, state.role
        );
    }
}

fn device(command: DeviceCommand) -> anyhow::Result<()> {
    use ringfence_proto::device::{DeviceInfo, EnrollmentTokenCreated, EnrollmentTokenRequest};
    match command {
        DeviceCommand::EnrollmentToken { server, groups, uses, expires_in_secs } => {
            let groups = groups.iter().map(|g| GroupName::parse(g)).collect::<Result<Vec<_>, _>>()?;
            let request = EnrollmentTokenRequest { groups, expires_in_secs, max_uses: uses };
            let answer = client(&server)?.send_json("POST", "/api/v1/enrollment-tokens", &request)?.ok()?;
            let created: EnrollmentTokenCreated = serde_json::from_slice(&answer)?;
            println!("{}", created.token);
            eprintln!(
                "(token {}, {uses} use(s), expires at {})",
                created.id,
                ringfence_trust::expiry::format(created.expires_at)
            );
        }
        DeviceCommand::List { server, state, limit } => {
            let client = client(&server)?;
            let mut after = String::new();
            let mut left = limit.unwrap_or(u64::MAX);
            while left > 0 {
                const PAGE: u64 = 500;
                let page = left.min(PAGE);
                let mut path = format!("/api/v1/devices?limit={page}");
                if !after.is_empty() {
                    path.push_str(&format!("&after={after}"));
                }
                if let Some(s) = &state {
                    if !s.bytes().all(|b| b.is_ascii_lowercase()) {
                        anyhow::bail!("--state: pending, accepted, rejected or revoked");
                    }
                    path.push_str(&format!("&state={s}"));
                }
                let devices: Vec<DeviceInfo> = serde_json::from_slice(&client.get(&path)?.ok()?)?;
                let fetched = devices.len() as u64;
                left = left.saturating_sub(fetched);
                if let Some(last) = devices.last() {
                    after = last.id.clone();
                }
                print_devices(devices);
                if fetched < page {
                    break;
                }
            }
        }
        DeviceCommand::Accept { server, id } => change_device(&server, &id, "accept")?,
        DeviceCommand::Reject { server, id } => change_device(&server, &id, "reject")?,
        DeviceCommand::Revoke { server, id } => change_device(&server, &id, "revoke")?,
    }
    Ok(())
}

fn print_devices(devices: Vec<ringfence_proto::device::DeviceInfo>) {
    for d in devices {
        let seen = d.last_checkin.map_or("never".to_owned(), ringfence_trust::expiry::format);
        println!("{}  {}  {}  groups {}  last check-in {seen}", d.id, d.state, d.hostname, d.groups.join(","));
        for u in d.updates {
            let reason = u.reason.map(|r| format!(" ({r})")).unwrap_or_default();
            println!("    {}: {}{reason}", u.target, u.state.as_str());
        }
    }
}

fn change_device(server: &ServerArgs, id: &str, action: &str) -> anyhow::Result<()> {
    client(server)?.send("POST", &format!("/api/v1/devices/{id}/{action}"), b"", "application/json")?.ok()?;
    println!("{action}: {id}");
    Ok(())
}
