//! The TLS setup of every Ringfence client (the agent and the CLI): trust exactly the
//! certificates of one CA file, the ring crypto provider, nothing from the system store.
//!
//! **Invariant:** this is the only place a client decides which certificates it trusts.

use std::sync::Arc;

use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// A TLS configuration trusting only the certificates in `ca_pem` (PEM; other items ignored).
/// A file without a certificate is an error, never "trust the defaults".
pub fn pinned_tls(ca_pem: &[u8]) -> anyhow::Result<TlsConfig> {
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(ca_pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    anyhow::ensure!(!certs.is_empty(), "no certificate in the CA file");
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::new_with_certs(&certs))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}

/// HTTPS trusting the public web PKI (Mozilla's roots, compiled in): for content the server
/// redirects to a bucket, whose bytes are checked against signed hashes anyway.
pub fn web_pki_tls() -> TlsConfig {
    TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::WebPki)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let err = super::pinned_tls(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        assert!(super::pinned_tls(b"").is_err());
    }
}
