//! Webhook notifications: `[approvals] webhook_url` receives a JSON `POST` per event (an update
//! published, an approval waiting for a group's approvers, a rollout halted, a device that
//! failed an update, a role near expiry), signed with HMAC-SHA256 under the secret in
//! `webhook_secret_file` (header `X-Ringfence-Signature: sha256=<hex>`). HTTPS trusts only
//! `webhook_ca_file`; plain HTTP only to a loopback address. Events wait in the database's
//! outbox and are retried with backoff until a 2xx answer (`domain::events`), across restarts;
//! each attempt takes at most 10 s.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::ApprovalsConfig;
use crate::domain::events::Event;

const TIMEOUT: Duration = Duration::from_secs(10);

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    let hashed;
    let key = if key.len() > block.len() {
        hashed = Sha256::digest(key);
        hashed.as_slice()
    } else {
        key
    };
    for (b, k) in block.iter_mut().zip(key) {
        *b = *k;
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// `https://host[:port]/path`, or `http://` to a loopback address.
pub fn parse_url(url: &str) -> anyhow::Result<Endpoint> {
    let (tls, rest) = match url.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        _ => bail!("webhook_url: https://host[:port]/path"),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~/%?=&".contains(&b));
    if authority.is_empty() || authority.contains('@') || !plain(path) || url.len() > 512 {
        bail!("webhook_url: a host and a plain path, no user name");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']').context("webhook_url: unclosed [")?;
            (host, rest.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().context("webhook_url: port")?,
        None if tls => 443,
        None => 80,
    };
    if !tls {
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            bail!("webhook_url: plain http only to a loopback address; use https");
        }
    }
    Ok(Endpoint { tls, host: host.to_owned(), port, path: path.to_owned() })
}

/// A configured webhook.
pub struct Webhook {
    endpoint: Endpoint,
    secret: Vec<u8>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Webhook {
    /// From the configuration; `None` when no webhook is set.
    pub fn from_config(config: &ApprovalsConfig) -> anyhow::Result<Option<Webhook>> {
        let Some(url) = &config.webhook_url else { return Ok(None) };
        let endpoint = parse_url(url)?;
        let secret_file =
            config.webhook_secret_file.as_ref().context("webhook_secret_file: required with webhook_url")?;
        let secret = std::fs::read(secret_file).with_context(|| format!("reading {}", secret_file.display()))?;
        let secret = secret.trim_ascii().to_vec();
        if secret.len() < 16 {
            bail!("webhook_secret_file: at least 16 bytes");
        }
        let tls = if endpoint.tls {
            let ca = config.webhook_ca_file.as_ref().context("webhook_ca_file: required for https")?;
            Some(client_tls(ca)?)
        } else {
            None
        };
        Ok(Some(Webhook { endpoint, secret, tls }))
    }

    /// Post one event; the HTTP status.
    pub async fn post(&self, event: &Event) -> anyhow::Result<u16> {
        self.post_body(&serde_json::to_vec(event)?).await
    }

    /// Post an event's JSON body as kept, signed; the HTTP status.
    pub async fn post_body(&self, body: &[u8]) -> anyhow::Result<u16> {
        let signature = hex::encode(hmac_sha256(&self.secret, body));
        let headers = format!("Content-Type: application/json\r\nX-Ringfence-Signature: sha256={signature}\r\n");
        let (status, _) = post(&self.endpoint, self.tls.as_ref(), &headers, body).await.context("webhook")?;
        Ok(status)
    }
}

/// A TLS client configuration trusting the certificates in the PEM file `ca`.
pub fn client_tls(ca: &std::path::Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(client))
}

/// POST `body` to `endpoint` (one request, `Connection: close`) with the extra header lines
/// `headers` (each ending in CRLF); the status and at most 8 KiB of the answer's body, within
/// ten seconds.
pub async fn post(
    e: &Endpoint,
    tls: Option<&Arc<rustls::ClientConfig>>,
    headers: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let host_header =
        if e.host.contains(':') { format!("[{}]:{}", e.host, e.port) } else { format!("{}:{}", e.host, e.port) };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host_header}\r\nContent-Length: {}\r\n{headers}User-Agent: ringfence\r\nConnection: close\r\n\r\n",
        e.path,
        body.len()
    );
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((e.host.as_str(), e.port)).await?;
        let mut answer = Vec::new();
        match tls {
            Some(config) => {
                let name = ServerName::try_from(e.host.clone())?;
                let mut stream = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await?;
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(body).await?;
                stream.flush().await?;
                (&mut stream).take(8192 + 4096).read_to_end(&mut answer).await?;
            }
            None => {
                let mut stream = tcp;
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(body).await?;
                (&mut stream).take(8192 + 4096).read_to_end(&mut answer).await?;
            }
        }
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange).await.context("no answer in 10 s")??;
    let line = answer.split(|b| *b == b'\n').next().unwrap_or_default();
    let status = std::str::from_utf8(line).ok().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok());
    let status = status.context("not an HTTP answer")?;
    let body = match answer.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => answer.get(at + 4..).unwrap_or_default().to_vec(),
        None => Vec::new(),
    };
    Ok((status, body))
}

/// Deliver the outbox's due events, every second, on the node that leads the jobs: each
/// attempt a `POST` of the body as kept, signed; a 2xx answer delivers it, anything else is
/// tried again after the backoff (`domain::events`). Delivered and given-up events are pruned
/// after a week.
pub async fn deliver(state: Arc<crate::AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(webhook) = &state.webhook else { return };
    let mut last_prune = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
        if !state.cluster.leading() {
            continue;
        }
        let now = crate::unix_now();
        let due = match state.events.due(now, 16).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %crate::domain::error::chain(&e), "reading the webhook outbox failed");
                continue;
            }
        };
        for event in due {
            let outcome = match webhook.post_body(event.body.as_bytes()).await {
                Ok(status) if (200..300).contains(&status) => Ok(()),
                Ok(status) => Err(format!("answered {status}")),
                Err(e) => Err(format!("{e:#}")),
            };
            let now = crate::unix_now();
            let kept = match outcome {
                Ok(()) => {
                    state.metrics.webhook(true);
                    state.events.delivered(&event, now).await
                }
                Err(why) => {
                    state.metrics.webhook(false);
                    match state.events.failed(&event, &why, now).await {
                        Ok(true) => {
                            tracing::error!(event = %event.id, error = %why, "webhook event given up on");
                            Ok(())
                        }
                        Ok(false) => {
                            tracing::warn!(event = %event.id, error = %why, "webhook not delivered; tried again later");
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = kept {
                tracing::error!(error = %crate::domain::error::chain(&e), "recording a webhook attempt failed");
            }
        }
        if now - last_prune > 3600 {
            last_prune = now;
            if let Err(e) = state.events.prune(now).await {
                tracing::error!(error = %crate::domain::error::chain(&e), "pruning the webhook outbox failed");
            }
        }
    }
}
