//! tough (the Rust TUF client by the Bottlerocket project) loads a running server's repository.

use std::path::Path;

use bytes::Bytes;
use tough::{RepositoryLoader, TargetName, Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

/// Fetches over HTTPS from the test server, trusting its self-signed certificate.
#[derive(Debug, Clone)]
struct HttpsTransport {
    agent: ureq::Agent,
}

#[async_trait::async_trait]
impl Transport for HttpsTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let mut response = self
            .agent
            .get(url.as_str())
            .call()
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.clone(), e))?;
        match response.status().as_u16() {
            200 => {}
            404 => return Err(TransportError::new(TransportErrorKind::FileNotFound, url)),
            _ => return Err(TransportError::new(TransportErrorKind::Other, url)),
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.clone(), e))?;
        let item: Result<Bytes, TransportError> = Ok(Bytes::from(body));
        Ok(Box::pin(futures::stream::iter([item])))
    }
}

/// Load the repository at `repo_url` from `root` with tough and read `target`.
pub fn read_target(repo_url: &str, ca: &Path, root: &[u8], target: &str) -> Result<Vec<u8>, String> {
    let agent =
        ringfence_cli::http::agent(&std::fs::read(ca).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let metadata = Url::parse(&format!("{repo_url}/metadata/")).map_err(|e| e.to_string())?;
        let targets = Url::parse(&format!("{repo_url}/targets/")).map_err(|e| e.to_string())?;
        let repository = RepositoryLoader::new(&root, metadata, targets)
            .transport(HttpsTransport { agent })
            .load()
            .await
            .map_err(|e| format!("load: {e}"))?;
        let name = TargetName::new(target).map_err(|e| e.to_string())?;
        let stream = repository.read_target(&name).await.map_err(|e| format!("read: {e}"))?.ok_or("no such target")?;
        use tough::IntoVec;
        stream.into_vec().await.map_err(|e| format!("stream: {e}"))
    })
}
