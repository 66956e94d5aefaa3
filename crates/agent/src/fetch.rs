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
    /// Origins (`scheme://host:port`, from [`origin_of`]) a content download may be redirected
    /// to; empty: none.
    pub content_origins: Vec<String>,
}

/// Whether `host` (from a URL) is a loopback address literal: 127.0.0.0/8 or `[::1]` (not a
/// name, which a resolver could point elsewhere).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The origin of `url` as `scheme://host:port`: HTTPS anywhere, plain HTTP only on a loopback
/// address; `None` for anything else.
pub fn origin_of(url: &str) -> Option<String> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    let host = uri.host()?.to_ascii_lowercase();
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let port = match (scheme.as_str(), uri.port_u16()) {
        ("https", port) => port.unwrap_or(443),
        ("http", port) if is_loopback(&host) => port.unwrap_or(80),
        _ => return None,
    };
    Some(format!("{scheme}://{host}:{port}"))
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
        Ok(Self { agent: builder.build().into(), elsewhere, bearer: None, content_origins: Vec::new() })
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
    /// Follow one redirect of a content download to `location`, only to an origin this device
    /// was configured with (HTTPS with the web PKI, or plain HTTP on loopback); without the
    /// session token; no further redirect. Errors name the origin, never the whole URL (a
    /// pre-signed URL carries credentials).
    fn redirected(&self, url: &str, location: &str, offset: u64) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let origin = origin_of(location).filter(|o| self.content_origins.contains(o));
        let Some(origin) = origin else {
            bail!(
                "{url}: the server redirected the download to a place this device does not fetch from (its --content-origin)"
            );
        };
        let mut request = self.elsewhere.get(location);
        if offset > 0 {
            request = request.header("range", format!("bytes={offset}-"));
        }
        request
            .call()
            .map_err(|e| anyhow::anyhow!("fetching {url} from {origin}: {}", e.to_string().replace(location, "…")))
    }
}

/// An answer of the device API.
pub struct ApiAnswer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: Vec<u8>,
}

impl Fetcher {
    /// POST a JSON body to the device API; the answer is bounded to 64 KiB. With `within`, the
    /// whole exchange gives up after that long.
    pub fn post_json<T: serde::Serialize>(
        &self,
        url: &str,
        body: &T,
        within: Option<std::time::Duration>,
    ) -> anyhow::Result<ApiAnswer> {
        let mut request = self.agent.post(url).header("content-type", "application/json");
        if let Some(limit) = within {
            request = request.config().timeout_global(Some(limit)).build();
        }
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
    fn only_loopback_address_literals_are_loopback() {
        for host in ["127.0.0.1", "127.9.9.9", "[::1]", "::1"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["", "localhost", "10.0.0.1", "0.0.0.0", "example.net", "[::2]", "128.0.0.1", "[::ffff:127.0.0.1]"]
        {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn origins_are_https_or_http_on_loopback() {
        assert_eq!(
            origin_of("https://S3.Example.net/bucket/key?X-Amz-Signature=1").as_deref(),
            Some("https://s3.example.net:443")
        );
        assert_eq!(origin_of("HTTPS://s3.example.net:9000").as_deref(), Some("https://s3.example.net:9000"));
        assert_eq!(origin_of("http://127.0.0.1:9000/b").as_deref(), Some("http://127.0.0.1:9000"));
        for bad in [
            "http://s3.example.net/b",
            "http://localhost:9000/",
            "http://127.0.0.1@evil.example/",
            "ftp://h/x",
            "/relative",
            "",
        ] {
            assert_eq!(origin_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_redirect_is_followed_only_to_a_configured_origin_and_never_repeated_in_full() {
        let mut fetcher = Fetcher::new(None).unwrap();
        let refused = |f: &Fetcher, to: &str| f.redirected("https://server/t", to, 0).unwrap_err().to_string();
        let signed = "http://127.0.0.1:1/b/k?X-Amz-Signature=secret";
        let said = refused(&fetcher, signed);
        assert!(said.contains("does not fetch from") && !said.contains("secret"), "{said}");
        fetcher.content_origins = vec![origin_of("http://127.0.0.1:1").unwrap()];
        assert!(refused(&fetcher, "http://127.0.0.1:2/x").contains("does not fetch from"), "another port");
        assert!(refused(&fetcher, "https://evil.example/x").contains("does not fetch from"));
        // The configured origin is fetched (nothing listens on port 1, so the fetch fails), and
        // the error names the origin, not the pre-signed URL.
        let said = refused(&fetcher, signed);
        assert!(
            !said.contains("does not fetch from") && !said.contains("secret") && said.contains("127.0.0.1:1"),
            "{said}"
        );
    }
}
