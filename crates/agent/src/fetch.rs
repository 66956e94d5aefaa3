//! Bounded HTTP(S) fetches: never more bytes than the caller allows.

use std::io::Read;

use anyhow::{Context, bail};
use ringfence_trust::workflow::Fetched;

#[derive(Clone)]
pub struct Fetcher {
    agent: ureq::Agent,
    /// For content the server redirects elsewhere (a pre-signed bucket URL): HTTPS trusting the
    /// public web PKI, never the device's session token. What arrives is checked against the
    /// signed length and hashes like anything else.
    elsewhere: ureq::Agent,
    /// Device session token sent with every request to the server, when it needs one.
    pub bearer: Option<String>,
    /// Also follow plain-HTTP content redirects, to loopback addresses only.
    pub http_redirects_to_loopback: bool,
}

/// Whether `host` (from a URL) is this machine: `localhost`, 127.0.0.0/8 or `[::1]`.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
        let elsewhere = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(std::time::Duration::from_secs(10)))
            .timeout_recv_body(Some(std::time::Duration::from_secs(300)))
            .max_redirects(0)
            .timeout_global(Some(std::time::Duration::from_secs(3 * 3600)))
            .tls_config(ringfence_client_net::web_pki_tls())
            .build()
            .into();
        Ok(Self { agent: builder.build().into(), elsewhere, bearer: None, http_redirects_to_loopback: false })
    }

    /// GET `url`, reading at most `max_length` bytes; more is an error (endless data).
    /// (Metadata: redirects are never followed.)
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
        if matches!(response.status().as_u16(), 302 | 303 | 307 | 308) {
            let location = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default();
            let location = location.to_owned();
            response = self.redirected(url, &location, offset)?;
        }
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

impl Fetcher {
    /// Follow one redirect of a content download to `location`: HTTPS (web PKI), or plain HTTP
    /// to loopback when allowed; without the session token; no further redirect.
    fn redirected(&self, url: &str, location: &str, offset: u64) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let uri: ureq::http::Uri = location.parse().with_context(|| format!("{url}: a redirect to a bad URL"))?;
        let host = uri.host().unwrap_or_default();
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.http_redirects_to_loopback && is_loopback(host) => {}
            _ => bail!("{url}: a redirect to {location} is not followed (HTTPS only)"),
        }
        let mut request = self.elsewhere.get(location);
        if offset > 0 {
            request = request.header("range", format!("bytes={offset}-"));
        }
        request.call().with_context(|| format!("fetching {url} from {host}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_is_loopback() {
        for host in ["localhost", "127.0.0.1", "127.9.9.9", "[::1]", "::1"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["", "10.0.0.1", "example.net", "localhost.example.net", "[::2]", "128.0.0.1"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn redirects_elsewhere_are_https_unless_loopback_is_allowed() {
        let mut fetcher = Fetcher::new(None).unwrap();
        let refused = |f: &Fetcher, to: &str| f.redirected("https://server/t", to, 0).unwrap_err().to_string();
        assert!(refused(&fetcher, "http://127.0.0.1:1/x").contains("not followed"));
        assert!(refused(&fetcher, "ftp://example.net/x").contains("not followed"));
        assert!(refused(&fetcher, "/relative").contains("not followed"));
        fetcher.http_redirects_to_loopback = true;
        assert!(refused(&fetcher, "http://10.0.0.1:1/x").contains("not followed"), "loopback only");
        // Allowed: it is fetched (nothing listens on port 1, so the fetch itself fails).
        assert!(!refused(&fetcher, "http://127.0.0.1:1/x").contains("not followed"));
    }
}
