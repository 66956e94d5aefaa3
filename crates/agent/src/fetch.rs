//! Bounded HTTP(S) fetches: never more bytes than the caller allows.

use std::io::Read;

use anyhow::{Context, bail};
use ringfence_trust::workflow::Fetched;

#[derive(Clone)]
pub struct Fetcher {
    agent: ureq::Agent,
    /// Device session token sent with every request, when the repository needs one.
    pub bearer: Option<String>,
}

impl Fetcher {
    /// Plain HTTP, or HTTPS trusting only the certificates in `ca_pem` (none: HTTPS refused).
    pub fn new(ca_pem: Option<&[u8]>) -> anyhow::Result<Self> {
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(std::time::Duration::from_secs(10)))
            .timeout_recv_body(Some(std::time::Duration::from_secs(300)))
            .max_redirects(0)
            // No request hangs a cycle for ever (a 4 GiB download at 2 MB/s fits).
            .timeout_global(Some(std::time::Duration::from_secs(3 * 3600)))
            // Keep the connection between cycles of `run` (poll interval plus jitter).
            .max_idle_age(std::time::Duration::from_secs(900));
        if let Some(pem) = ca_pem {
            builder = builder.tls_config(ringfence_client_net::pinned_tls(pem)?);
        }
        Ok(Self { agent: builder.build().into(), bearer: None })
    }

    /// GET `url`, reading at most `max_length` bytes; more is an error (endless data).
    pub fn fetch(&self, url: &str, max_length: u64) -> anyhow::Result<Fetched> {
        let mut request = self.agent.get(url);
        if let Some(token) = &self.bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let mut response = request.call().with_context(|| format!("fetching {url}"))?;
        match response.status().as_u16() {
            200 => {}
            404 | 403 => return Ok(Fetched::NotFound),
            status => bail!("fetching {url}: HTTP {status}"),
        }
        let mut bytes = Vec::new();
        response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .reader()
            .take(max_length.saturating_add(1))
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {url}"))?;
        if bytes.len() as u64 > max_length {
            bail!("{url} is longer than the {max_length} bytes allowed (endless data)");
        }
        Ok(Fetched::Bytes(bytes))
    }

    /// GET `url` into `out`, at most `max_length` bytes, starting at byte `offset` with a
    /// `Range` request when `offset > 0`. Returns the bytes written by this call.
    pub fn fetch_to(
        &self,
        url: &str,
        max_length: u64,
        offset: u64,
        out: &mut impl std::io::Write,
    ) -> anyhow::Result<u64> {
        let mut request = self.agent.get(url);
        if let Some(token) = &self.bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if offset > 0 {
            request = request.header("range", format!("bytes={offset}-"));
        }
        let mut response = request.call().with_context(|| format!("fetching {url}"))?;
        let status = response.status().as_u16();
        match (status, offset) {
            (200, 0) | (206, _) => {}
            (404, _) => bail!("{url}: not found"),
            (200, _) => bail!("{url}: the server ignored the range request"),
            (status, _) => bail!("fetching {url}: HTTP {status}"),
        }
        let allowed = max_length.saturating_sub(offset);
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader().take(allowed.saturating_add(1));
        let written = std::io::copy(&mut reader, out).with_context(|| format!("reading {url}"))?;
        if written > allowed {
            bail!("{url} is longer than its metadata allows (endless data)");
        }
        Ok(written)
    }
}

/// An answer of the device API.
pub struct ApiAnswer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: Vec<u8>,
}

impl Fetcher {
    /// POST a JSON body to the device API; the answer is bounded to 64 KiB.
    pub fn post_json<T: serde::Serialize>(&self, url: &str, body: &T) -> anyhow::Result<ApiAnswer> {
        let mut request = self.agent.post(url).header("content-type", "application/json");
        if let Some(token) = &self.bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let mut response = request.send(serde_json::to_vec(body)?).with_context(|| format!("posting to {url}"))?;
        let status = response.status().as_u16();
        let retry_after =
            response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let body = response.body_mut().with_config().limit(64 * 1024).read_to_vec()?;
        Ok(ApiAnswer { status, retry_after, body })
    }
}
