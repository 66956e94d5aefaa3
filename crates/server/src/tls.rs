//! TLS for both listeners (rustls with the ring provider), and the self-signed certificate a
//! new installation starts with.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::Config;
use crate::device_api::PeerAddr;

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn server_config(config: &Config) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cert_file = config.cert_file();
    let key_file = config.key_file();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
        .with_context(|| format!("reading {}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_file).with_context(|| format!("reading {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// Write a self-signed certificate for `names` (host names or IP addresses) and its key.
pub fn write_self_signed(cert_file: &Path, key_file: &Path, names: &[String]) -> anyhow::Result<()> {
    let cert = rcgen::generate_simple_self_signed(names.to_vec()).context("generating the TLS certificate")?;
    if let Some(dir) = cert_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(cert_file, cert.cert.pem())?;
    write_private(key_file, cert.key_pair.serialize_pem().as_bytes())?;
    Ok(())
}

/// Write a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Deadlines and bounds of one listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Longest a client may take to send a request's headers.
    pub header_read: Duration,
    /// A connection with nothing moving for this long is shut down gracefully (a request in
    /// flight is finished first).
    pub idle: Duration,
    /// Connections open at once from one source address (see `device_api::source_key`); more
    /// are closed at once.
    pub per_source: Option<usize>,
    /// Connections open at once from all sources together.
    pub max_connections: usize,
}

/// Open connections per source address.
#[derive(Default)]
struct Sources {
    per_source: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
}

/// One counted connection; uncounted when dropped.
struct SourceSlot {
    sources: Arc<Sources>,
    key: Option<String>,
}

impl Sources {
    /// Count a connection from `ip`, unless the total or (with `per_source`) its source's count
    /// is at the bound.
    fn take(self: &Arc<Self>, ip: IpAddr, limits: &ConnLimits) -> Option<SourceSlot> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let mut slot = SourceSlot { sources: self.clone(), key: None };
        if let Some(max) = limits.per_source {
            let key = crate::device_api::source_key(ip);
            let mut open = self.per_source.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let count = open.entry(key.clone()).or_default();
            if *count >= max {
                return None;
            }
            *count += 1;
            slot.key = Some(key);
        }
        Some(slot)
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.sources.total.fetch_sub(1, Ordering::AcqRel);
        let Some(key) = &self.key else { return };
        let mut open = self.sources.per_source.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(key);
            }
        }
    }
}

/// A stream that notes when bytes last moved, in milliseconds since `epoch`.
struct Activity<S> {
    inner: S,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Activity<S> {
    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accept TLS connections and serve `router` on them until `stop` turns true. Every request
/// carries the [`PeerAddr`] it came from.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: ConnLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let sources = Arc::new(Sources::default());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Some(slot) = sources.take(peer.ip(), &limits) else {
            tracing::debug!(%peer, "connection limit reached");
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let epoch = Instant::now();
            let last = Arc::new(AtomicU64::new(0));
            let io = Activity { inner: stream, epoch, last: last.clone() };
            let service = TowerToHyperService::new(router.map_request(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(PeerAddr(peer.ip()));
                    request
                },
            ));
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Over HTTP/1 the header deadline also ends an idle keep-alive connection.
            builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read);
            builder.http2().timer(TokioTimer::new()).max_concurrent_streams(16);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let idle_ms = limits.idle.as_millis() as u64;
            let mut closing = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    _ = tokio::time::sleep(limits.idle / 4 + Duration::from_millis(1)) => {
                        let quiet = (epoch.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed));
                        if closing && quiet >= 2 * idle_ms {
                            return;
                        }
                        if !closing && quiet >= idle_ms {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
}
