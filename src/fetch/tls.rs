//! The TLS client configuration for https downloads: rustls with the ring provider and compiled-in roots.
//!
//! Root certificates come from `webpki-roots`, Mozilla's CA bundle compiled into the binary.
//! Lessl ships as one static musl binary that also runs inside arbitrary container images, so
//! it must not depend on a host CA store that may be missing, stale or somewhere unexpected;
//! the cost is that a CA change reaches Lessl only with a rebuild against a newer
//! `webpki-roots`. ring (not aws-lc-rs) keeps the build free of cmake and C++ toolchains.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::addr::Host;
use super::FetchError;

/// Built once: parsing the roots and checking the provider is the same work for every download.
fn config() -> Result<Arc<ClientConfig>, FetchError> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            // hyper's client connection here speaks only HTTP/1.1.
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(FetchError::Tls)
}

/// Runs the TLS handshake, verifying the certificate against the URL's host (not the
/// address connected to), which is also the name sent as SNI.
pub(crate) async fn connect(
    host: &Host,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, FetchError> {
    let name = match host {
        Host::Name(name) => ServerName::try_from(name.clone())
            .map_err(|e| FetchError::Tls(format!("{name}: {e}")))?,
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
    };
    TlsConnector::from(config()?)
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Tls(format!("{host}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_builds_with_ring_and_bundled_roots() {
        let config = config().unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(webpki_roots::TLS_SERVER_ROOTS.len() > 50);
    }
}
