//! `--quickstart`: a server of the simulator's own — `ringfence quickstart` in a temporary
//! directory, served by `ringfence serve` as a child process (so its CPU and memory can be
//! watched apart from the simulator's), with one update published, signed and approved for the
//! group, so the download phases have a target.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A running quickstart server; stopped and deleted when dropped.
pub struct Quickstart {
    child: Child,
    pub admin_url: String,
    pub device_url: String,
    pub token: String,
    pub ca: PathBuf,
    /// `repo/targets/...` of the published file, and its size.
    pub target: (String, u64),
    _dir: tempfile::TempDir,
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Quickstart {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A loopback port free right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    anyhow::ensure!(out.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Set up and start a server with `ringfence` (the binary at that path), and publish a target
/// of `target_size` bytes approved for `group`.
pub fn start(ringfence: &Path, group: &str, target_size: u64) -> anyhow::Result<Quickstart> {
    let dir = tempfile::tempdir()?;
    let (device_port, admin_port) = (free_port()?, free_port()?);
    run(Command::new(ringfence)
        .args(["quickstart", "--no-serve", "--dir"])
        .arg(dir.path())
        .args(["--device-addr", &format!("127.0.0.1:{device_port}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")]))?;
    let data = dir.path().join("ringfence-data");
    let keys = dir.path().join("ringfence-keys");
    // Every simulated device comes from 127.0.0.1: lift the per-address bounds that would
    // (rightly) stop one address from opening a fleet's sessions and connections.
    let config = data.join("ringfence.toml");
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(
        "\n[devices]\nmax_connections_per_source = 4096\nmax_concurrent_requests = 4096\n\
         sessions_per_minute = 100000000\n",
    );
    std::fs::write(&config, text)?;
    let child = Command::new(ringfence)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RINGFENCE_ALLOW_ROOT", "1")
        .env("RINGFENCE_LOG", "warn,rustls=error")
        .stdin(Stdio::null())
        .spawn()
        .context("starting ringfence serve")?;
    let mut server = Quickstart {
        child,
        admin_url: format!("https://127.0.0.1:{admin_port}"),
        device_url: format!("https://127.0.0.1:{device_port}"),
        token: std::fs::read_to_string(data.join("admin.token"))?.trim().to_owned(),
        ca: data.join("tls/cert.pem"),
        target: (String::new(), target_size),
        _dir: dir,
    };
    wait_until_healthy(&mut server)?;
    server.target.0 = publish(&server, ringfence, &keys, group, target_size)?;
    Ok(server)
}

fn wait_until_healthy(server: &mut Quickstart) -> anyhow::Result<()> {
    let agent = crate::connect(&server.ca)?;
    let started = Instant::now();
    loop {
        if let Ok(r) = agent.get(format!("{}/healthz", server.device_url)).call()
            && r.status() == 200
        {
            return Ok(());
        }
        if let Some(status) = server.child.try_wait()? {
            anyhow::bail!("ringfence serve exited: {status}");
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the server did not answer within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Publish `target_size` bytes as `acme/bench.bin`, sign with the quickstart's publisher key,
/// approve for `group`; the file's path under the device listener.
fn publish(server: &Quickstart, ringfence: &Path, keys: &Path, group: &str, size: u64) -> anyhow::Result<String> {
    let work = server._dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    let file = work.join("bench.bin");
    // Bytes that do not compress (a TLS record is not compressed, but be honest anyway).
    let mut content = Vec::with_capacity(usize::try_from(size)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while (content.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        content.extend_from_slice(&x.to_le_bytes());
    }
    content.truncate(usize::try_from(size)?);
    std::fs::write(&file, &content)?;
    let manifest = work.join("bench.json");
    let body = serde_json::json!({
        "id": "bench-1", "publisher": "acme", "title": "simulator download", "product": "bench",
        "classification": "tool", "severity": "low", "release_date": "2026-11-26",
        "installer": {"module": "noop"}
    });
    std::fs::write(&manifest, serde_json::to_vec(&body)?)?;
    let cli = || {
        let mut c = Command::new(ringfence);
        c.env("RINGFENCE_ADMIN_URL", &server.admin_url)
            .env("RINGFENCE_CA", &server.ca)
            .env("RINGFENCE_TOKEN", &server.token)
            .env("RINGFENCE_SIGNER_STATE", work.join("signer-state"));
        c
    };
    run(cli().args(["publish", "--manifest"]).arg(&manifest).arg(&file))?;
    run(cli()
        .args(["pending", "sign-all", "--yes", "--key"])
        .arg(keys.join("publisher-acme.key"))
        .arg("--trusted-root")
        .arg(keys.join("1.root.json")))?;
    run(cli().args(["approve", "--group", group, "--target", "acme/bench.bin"]))?;
    let sha = ringfence_trust::sha256_hex(&content);
    Ok(format!("repo/targets/acme/{sha}.bench.bin"))
}
