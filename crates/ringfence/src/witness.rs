//! `ringfence witness`: a C2SP `tlog-witness` that cosigns the checkpoints of the logs it is
//! told about, only ever forward: it verifies the log's signature and the consistency proof
//! from the last checkpoint it cosigned, keeps that checkpoint durably (written and synced
//! before it answers), and refuses a checkpoint that does not extend it.
//!
//! The witness's directory holds `witness.key` (its ed25519 key, owner-only), `witness.name`
//! and `state/`, one file per log (`<sha256 of the origin>`: origin, size and root hash).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ringfence_tlog::Hash;
use ringfence_tlog::witness::{AddCheckpoint, MAX_REQUEST_BYTES, Refusal, SIZE_CONTENT_TYPE, WitnessKey, Witnessed};
use ringfence_trust::SigningKey;

#[derive(Debug, clap::Subcommand)]
pub enum WitnessCommand {
    /// Make a witness: its key and name in `--dir`; prints its verifier key (what the log's
    /// identity lists, `ringfence metadata set-log --witness`).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The witness's name, for example `witness.example.org/ringfence`.
        #[arg(long)]
        name: String,
    },
    /// Serve `POST /add-checkpoint` for the logs named by their verifier keys.
    Serve {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8533")]
        listen: String,
        /// A log to witness: its `signed-note` verifier key (the key's name is the log's
        /// origin: `[log] origin`, and `key` in `online-keys/log-identity.json`). Repeatable.
        #[arg(long = "log", required = true)]
        logs: Vec<String>,
    },
}

pub fn run(command: WitnessCommand) -> anyhow::Result<()> {
    match command {
        WitnessCommand::Init { dir, name } => {
            std::fs::create_dir_all(dir.join("state"))?;
            let key_file = dir.join("witness.key");
            anyhow::ensure!(!key_file.exists(), "{} exists already", key_file.display());
            let key = SigningKey::generate();
            ringfence_cli::ceremony::write_private(&key_file, key.to_unencrypted_pem()?.as_bytes())?;
            std::fs::write(dir.join("witness.name"), format!("{name}\n"))?;
            let witness = WitnessKey::new(&name, key)?;
            println!("{}", witness.verifier_key());
            Ok(())
        }
        WitnessCommand::Serve { dir, listen, logs } => {
            let name = std::fs::read_to_string(dir.join("witness.name"))
                .context("no witness here: run `ringfence witness init`")?;
            let pem = std::fs::read_to_string(dir.join("witness.key"))?;
            let key = WitnessKey::new(name.trim(), SigningKey::from_pem(&pem, None)?)?;
            let mut known = BTreeMap::new();
            for vkey in logs {
                let origin = vkey.split('+').next().unwrap_or_default().to_owned();
                ringfence_tlog::signed_note::StandardVerifier::new(&vkey)
                    .map_err(|e| anyhow::anyhow!("--log {vkey}: {e}"))?;
                anyhow::ensure!(!known.contains_key(&origin), "--log: two keys for the log {origin}");
                known.insert(origin, vkey);
            }
            std::fs::create_dir_all(dir.join("state"))?;
            let state =
                Arc::new(Witness { key: tokio::sync::Mutex::new(key), logs: known, state_dir: dir.join("state") });
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listening on {listen}"))?;
                tracing::info!(addr = %listener.local_addr()?, "witness listening");
                println!("witness listening on {}", listener.local_addr()?);
                axum::serve(listener, router(state)).with_graceful_shutdown(crate::stopped()).await?;
                anyhow::Ok(())
            })
        }
    }
}

struct Witness {
    /// Held for the whole check-and-update of a request: the old size check and the new state
    /// are one step (C2SP `tlog-witness` requires it).
    key: tokio::sync::Mutex<WitnessKey>,
    logs: BTreeMap<String, String>,
    state_dir: PathBuf,
}

fn router(state: Arc<Witness>) -> Router {
    Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

fn state_file(dir: &Path, origin: &str) -> PathBuf {
    dir.join(ringfence_trust::sha256_hex(origin.as_bytes()))
}

fn read_state(dir: &Path, origin: &str) -> anyhow::Result<Option<Witnessed>> {
    let text = match std::fs::read_to_string(state_file(dir, origin)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let lines: Vec<&str> = text.lines().collect();
    let [stored_origin, size, root] = lines.as_slice() else { anyhow::bail!("a malformed state file for {origin}") };
    anyhow::ensure!(*stored_origin == origin, "the state file of {origin} names {stored_origin}");
    let root: [u8; 32] = hex::decode(root)?.try_into().map_err(|_| anyhow::anyhow!("a root hash is 32 bytes"))?;
    Ok(Some(Witnessed { size: size.parse()?, root: Hash(root) }))
}

fn write_state(dir: &Path, origin: &str, held: &Witnessed) -> anyhow::Result<()> {
    use std::io::Write;
    let path = state_file(dir, origin);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{origin}\n{}\n{}\n", held.size, hex::encode(held.root.0)).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn add_checkpoint(State(w): State<Arc<Witness>>, body: Bytes) -> Response {
    let request = match AddCheckpoint::parse(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // The origin is the note's first line; only known logs go further.
    let origin = request.note.split(|b| *b == b'\n').next().map(|o| String::from_utf8_lossy(o).into_owned());
    let Some((origin, log_key)) = origin.and_then(|o| w.logs.get(&o).map(|k| (o, k.clone()))) else {
        return text(StatusCode::NOT_FOUND, "unknown log\n".into());
    };
    let mut key = w.key.lock().await;
    let held = match read_state(&w.state_dir, &origin) {
        Ok(held) => held,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reading the witness state");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".into());
        }
    };
    let checkpoint = match ringfence_tlog::witness::decide(&request, &origin, &log_key, held.as_ref()) {
        Ok(c) => c,
        Err(refusal) => {
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return match refusal {
                Refusal::StaleSize(size) => {
                    (status, [(header::CONTENT_TYPE, SIZE_CONTENT_TYPE)], format!("{size}\n")).into_response()
                }
                other => text(status, format!("{other:?}\n")),
            };
        }
    };
    let next = Witnessed { size: checkpoint.size(), root: *checkpoint.hash() };
    if held.as_ref() != Some(&next)
        && let Err(e) = write_state(&w.state_dir, &origin, &next)
    {
        tracing::error!(error = %format!("{e:#}"), "writing the witness state");
        return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".into());
    }
    let now = u64::try_from(ringfence_server::unix_now()).unwrap_or(0);
    match key.cosign(&request.note, now) {
        Ok(line) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], line).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}
