//! A small HTTPS client for the admin API, trusting only the CA file it is given.

use anyhow::Context;

/// An answer: status and body, whatever the status.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// Response headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body if the status is 2xx, else an error carrying the server's message — with its
    /// control characters written out, so a server cannot put terminal codes on the screen.
    pub fn ok(self) -> anyhow::Result<Vec<u8>> {
        if (200..300).contains(&self.status) {
            Ok(self.body)
        } else {
            anyhow::bail!("server answered {}: {}", self.status, ringfence_trust::review::shown(&self.text()))
        }
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// An agent trusting the certificates in `ca_pem` only (`ringfence_client_net`).
pub fn agent(ca_pem: &[u8]) -> anyhow::Result<ureq::Agent> {
    let config = ureq::Agent::config_builder()
        .tls_config(ringfence_client_net::pinned_tls(ca_pem)?)
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(600)))
        .build();
    Ok(config.into())
}

impl Client {
    pub fn new(base: &str, token: Option<String>, ca_file: &std::path::Path) -> anyhow::Result<Self> {
        let ca = std::fs::read(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), token, agent: agent(&ca)? })
    }

    /// The same client (and connection pool) with another bearer token.
    pub fn with_token(&self, token: &str) -> Self {
        Self { base: self.base.clone(), token: Some(token.to_owned()), agent: self.agent.clone() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.get_with(path, &[])
    }

    /// GET with extra request headers.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Answer> {
        let mut req = self.agent.get(self.url(path));
        if let Some(a) = self.auth() {
            req = req.header("authorization", a);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        finish(req.call())
    }

    pub fn send(&self, method: &str, path: &str, body: &[u8], content_type: &str) -> anyhow::Result<Answer> {
        let url = self.url(path);
        if method == "DELETE" {
            let mut req = self.agent.delete(url);
            if let Some(a) = self.auth() {
                req = req.header("authorization", a);
            }
            return finish(req.call());
        }
        let mut req = match method {
            "PUT" => self.agent.put(url),
            _ => self.agent.post(url),
        };
        req = req.header("content-type", content_type);
        if method == "PUT" {
            req = req.header("expect", "100-continue");
        }
        if let Some(a) = self.auth() {
            req = req.header("authorization", a);
        }
        finish(req.send(body))
    }

    pub fn send_json<T: serde::Serialize>(&self, method: &str, path: &str, body: &T) -> anyhow::Result<Answer> {
        self.send(method, path, &serde_json::to_vec(body)?, "application/json")
    }

    /// Upload a file as the request body, streamed; on a terminal, its progress is shown on
    /// standard error.
    ///
    /// Uploads (here and in [`Client::send`] with `PUT`) declare their length and ask
    /// `Expect: 100-continue`, so a server that refuses one by its headers (too large, no
    /// permission) answers before any of the body is sent and the caller reads that answer,
    /// instead of a connection reset while still writing.
    pub fn put_file(&self, path: &str, file: &std::path::Path) -> anyhow::Result<Answer> {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let total = f.metadata().map(|m| m.len()).unwrap_or(0);
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut req = self
            .agent
            .put(self.url(path))
            .header("content-type", "application/octet-stream")
            .header("content-length", total.to_string())
            .header("expect", "100-continue");
        if let Some(a) = self.auth() {
            req = req.header("authorization", a);
        }
        let shown = std::io::IsTerminal::is_terminal(&std::io::stderr()) && total >= PROGRESS_FROM;
        let reader = Progress { inner: f, name, total, done: 0, shown, last: 0 };
        finish(req.send(ureq::SendBody::from_owned_reader(reader)))
    }
}

/// Files smaller than this upload without a progress line.
const PROGRESS_FROM: u64 = 4 << 20;

/// A reader that shows how much of a file was read, as a line redrawn on standard error.
struct Progress<R> {
    inner: R,
    name: String,
    total: u64,
    done: u64,
    shown: bool,
    /// Percent last drawn.
    last: u64,
}

impl<R: std::io::Read> std::io::Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.shown {
            let percent = (self.done * 100).checked_div(self.total).unwrap_or(100).min(100);
            if percent != self.last || n == 0 {
                self.last = percent;
                let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
                eprint!(
                    "\ruploading {}: {percent:>3}% ({:.1} of {:.1} MiB)",
                    self.name,
                    mib(self.done),
                    mib(self.total)
                );
                if n == 0 {
                    eprintln!();
                    self.shown = false;
                }
            }
        }
        Ok(n)
    }
}

fn finish(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> anyhow::Result<Answer> {
    let mut response = result?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = response.body_mut().with_config().limit(64 * 1024 * 1024).read_to_vec()?;
    Ok(Answer { status, body, headers })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    #[test]
    fn a_server_message_cannot_reach_the_terminal_raw() {
        let answer = super::Answer { status: 400, body: b"bad\x1b[2J\rrequest".to_vec(), headers: vec![] };
        let message = answer.ok().unwrap_err().to_string();
        assert_eq!(message, "server answered 400: bad\\u{1b}[2J\\u{d}request");
    }

    #[test]
    fn progress_passes_every_byte_through() {
        let data = vec![7u8; 10_000];
        let mut p =
            super::Progress { inner: &data[..], name: "f".into(), total: 10_000, done: 0, shown: false, last: 0 };
        let mut out = Vec::new();
        p.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(p.done, 10_000);
    }
}
