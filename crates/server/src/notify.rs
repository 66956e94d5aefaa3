//! Webhook notifications: when the server prepares an approval for a group's approvers (a rule
//! or the supersedence job made it, and the server cannot sign for that group), it tells them.
//! `[approvals] webhook_url` receives a JSON `POST` per event, signed with HMAC-SHA256 under
//! the secret in `webhook_secret_file` (header `X-Ringfence-Signature: sha256=<hex>`). HTTPS
//! trusts only `webhook_ca_file`; plain HTTP only to a loopback address. Delivery is best
//! effort: one attempt, 10 s, at most 64 events waiting (more are dropped and logged).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::ApprovalsConfig;
use crate::domain::events::Event;

/// Events waiting for delivery.
pub const QUEUE: usize = 64;
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
        let body = serde_json::to_vec(event)?;
        let signature = hex::encode(hmac_sha256(&self.secret, &body));
        let headers = format!("Content-Type: application/json\r\nX-Ringfence-Signature: sha256={signature}\r\n");
        let (status, _) = post(&self.endpoint, self.tls.as_ref(), &headers, &body).await.context("webhook")?;
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

/// Deliver events until the channel closes.
pub async fn deliver(webhook: Webhook, mut events: tokio::sync::mpsc::Receiver<Event>) {
    while let Some(event) = events.recv().await {
        match webhook.post(&event).await {
            Ok(status) if (200..300).contains(&status) => tracing::debug!(status, "webhook delivered"),
            Ok(status) => tracing::warn!(status, "webhook answered with an error"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "webhook not delivered"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        let mac = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(hex::encode(mac), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // A key longer than a block is hashed first (RFC 4231 case 6).
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex::encode(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn urls_are_https_or_loopback_http() {
        let e = parse_url("https://hooks.example:8443/ringfence?x=1").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port, e.path.as_str()), (true, "hooks.example", 8443, "/ringfence?x=1"));
        assert_eq!(parse_url("https://hooks.example").unwrap().port, 443);
        assert_eq!(parse_url("http://127.0.0.1:9000/h").unwrap().port, 9000);
        assert_eq!(parse_url("http://[::1]:9000/h").unwrap().host, "::1");
        for bad in ["http://hooks.example/h", "ftp://x/y", "https://user@x/y", "https://x/a b", "hooks.example"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn https_trusts_only_the_configured_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key): (std::path::PathBuf, std::path::PathBuf) =
            (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        crate::tls::write_self_signed(&cert, &key, &["127.0.0.1".into()]).unwrap();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&cert).unwrap().map(|c| c.unwrap()).collect();
        let key_der = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let received = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = tls.read(&mut buf).await.unwrap();
            tls.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").await.unwrap();
            tls.shutdown().await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a shared secret of some length").unwrap();
        let config = ApprovalsConfig {
            decline_superseded: true,
            webhook_url: Some(format!("https://127.0.0.1:{port}/hook")),
            webhook_ca_file: Some(cert.clone()),
            webhook_secret_file: Some(secret),
        };
        let hook = Webhook::from_config(&config).unwrap().unwrap();
        let event = Event::test();
        assert_eq!(hook.post(&event).await.unwrap(), 204);
        let request = received.await.unwrap();
        assert!(request.starts_with("POST /hook HTTP/1.1\r\n"), "{request}");
        let body = serde_json::to_vec(&event).unwrap();
        let expected = format!(
            "x-ringfence-signature: sha256={}",
            hex::encode(hmac_sha256(b"a shared secret of some length", &body))
        );
        assert!(request.to_ascii_lowercase().contains(&expected), "{request}");
        // Another CA: refused before anything is sent.
        let other = dir.path().join("other.pem");
        crate::tls::write_self_signed(&other, &dir.path().join("other.key"), &["127.0.0.1".into()]).unwrap();
        let config = ApprovalsConfig { webhook_ca_file: Some(other), ..config };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let acceptor_side = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        let hook = Webhook::from_config(&config).unwrap().unwrap();
        assert!(hook.post(&event).await.is_err(), "a certificate from another CA is refused");
        let _ = acceptor_side.await;
    }
}
