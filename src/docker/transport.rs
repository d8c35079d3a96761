//! How the client reaches the engine: its Unix socket, or TCP with TLS and a client
//! certificate, named the way the Docker CLI names them (`DOCKER_HOST=tcp://HOST:PORT`,
//! `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH` holding `ca.pem`, `cert.pem` and `key.pem`).
//! Owns the byte stream only: HTTP on top of it is hyper's, and nothing here knows the API.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Docker's default socket.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Why the engine's address or its TLS material was refused; each names what to fix.
#[derive(Debug)]
pub enum TransportError {
    /// `DOCKER_HOST` has a form Lessl does not speak.
    ParseHost(String),
    /// Plain TCP would hand root on the engine's host to anyone on the path.
    PlainTcp(String),
    /// A file of `DOCKER_CERT_PATH` could not be read or parsed.
    ReadCerts(String),
    /// rustls refused the configuration built from them.
    BuildTls(String),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::ParseHost(m)
            | TransportError::PlainTcp(m)
            | TransportError::ReadCerts(m)
            | TransportError::BuildTls(m) => f.write_str(m),
        }
    }
}

/// Where the engine answers.
#[derive(Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    /// TCP with TLS both ways: the engine's certificate checked against `ca.pem` and `host`,
    /// Lessl's own (`cert.pem`, `key.pem`) presented to it.
    Tls {
        host: String,
        port: u16,
        config: Arc<ClientConfig>,
    },
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tls { host, port, .. } => write!(f, "tcp://{host}:{port} (TLS)"),
        }
    }
}

impl From<PathBuf> for Endpoint {
    fn from(p: PathBuf) -> Self {
        Endpoint::Unix(p)
    }
}

impl From<&Path> for Endpoint {
    fn from(p: &Path) -> Self {
        Endpoint::Unix(p.to_path_buf())
    }
}

impl From<&str> for Endpoint {
    fn from(p: &str) -> Self {
        Endpoint::Unix(PathBuf::from(p))
    }
}

/// The parts of `DOCKER_HOST` before any file is read.
#[derive(Debug, PartialEq, Eq)]
enum HostForm {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

fn parse_host(docker_host: Option<&str>) -> Result<HostForm, TransportError> {
    let bad = |h: &str| {
        TransportError::ParseHost(format!(
            "DOCKER_HOST={h}: only unix:///path sockets and tcp://HOST:PORT (with TLS) are \
             supported"
        ))
    };
    let h = match docker_host {
        None | Some("") => return Ok(HostForm::Unix(PathBuf::from(DEFAULT_SOCKET))),
        Some(h) => h,
    };
    if let Some(p) = h.strip_prefix("unix://") {
        return match p {
            "" => Err(bad(h)),
            p => Ok(HostForm::Unix(PathBuf::from(p))),
        };
    }
    let rest = h.strip_prefix("tcp://").ok_or_else(|| bad(h))?;
    let rest = rest.trim_end_matches('/');
    // `[::1]:2376` or `host:2376`; the Docker CLI's default TLS port when none is given.
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => {
            (host, port.parse::<u16>().map_err(|_| bad(h))?)
        }
        _ => (rest, 2376),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || rest.contains('/') {
        return Err(bad(h));
    }
    Ok(HostForm::Tcp {
        host: host.to_string(),
        port,
    })
}

impl Endpoint {
    /// The engine named by `DOCKER_HOST`, `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` (values
    /// passed in; `home` is `$HOME`, whose `.docker` is the Docker CLI's default cert path).
    pub fn from_env(
        docker_host: Option<&str>,
        tls_verify: Option<&str>,
        cert_path: Option<&str>,
        home: Option<&str>,
    ) -> Result<Endpoint, TransportError> {
        let (host, port) = match parse_host(docker_host)? {
            HostForm::Unix(p) => return Ok(Endpoint::Unix(p)),
            HostForm::Tcp { host, port } => (host, port),
        };
        // The Docker CLI's rule: any non-empty DOCKER_TLS_VERIFY turns verification on.
        if tls_verify.is_none_or(str::is_empty) {
            return Err(TransportError::PlainTcp(format!(
                "DOCKER_HOST=tcp://{host}:{port} without DOCKER_TLS_VERIFY: plain TCP to an \
                 engine is refused; set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH (a directory \
                 with ca.pem, cert.pem and key.pem)"
            )));
        }
        let dir = match cert_path.filter(|p| !p.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => Path::new(home.unwrap_or("/root")).join(".docker"),
        };
        let config = tls_config(&dir)?;
        Ok(Endpoint::Tls { host, port, config })
    }

    /// Whether the engine may be on another machine, where no host path of Lessl's exists.
    pub fn is_remote(&self) -> bool {
        matches!(self, Endpoint::Tls { .. })
    }
}

/// rustls with the engine's CA as the only root and Lessl's certificate as client auth.
fn tls_config(dir: &Path) -> Result<Arc<ClientConfig>, TransportError> {
    let file = |name: &str| dir.join(name);
    let read_err = |name: &str, e: &dyn fmt::Display| {
        TransportError::ReadCerts(format!("DOCKER_CERT_PATH: {}: {e}", file(name).display()))
    };
    let mut roots = RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file("ca.pem"))
        .map_err(|e| read_err("ca.pem", &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err("ca.pem", &e))?;
    if cas.is_empty() {
        return Err(read_err("ca.pem", &"no certificate in it"));
    }
    for ca in cas {
        roots.add(ca).map_err(|e| read_err("ca.pem", &e))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file("cert.pem"))
        .map_err(|e| read_err("cert.pem", &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err("cert.pem", &e))?;
    let key = PrivateKeyDer::from_pem_file(file("key.pem")).map_err(|e| read_err("key.pem", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::BuildTls(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            TransportError::BuildTls(format!("DOCKER_CERT_PATH: cert.pem and key.pem: {e}"))
        })?;
    // The engine's API is HTTP/1.1 (attach and exec hijack the connection).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// hyper's connector for one engine: every request goes to the endpoint, whatever its URI.
#[derive(Clone)]
pub struct Connector {
    endpoint: Endpoint,
}

impl Connector {
    pub fn new(endpoint: Endpoint) -> Self {
        Connector { endpoint }
    }
}

/// A connection to the engine.
pub enum Stream {
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

async fn connect(endpoint: Endpoint) -> std::io::Result<TokioIo<Stream>> {
    match endpoint {
        Endpoint::Unix(path) => Ok(TokioIo::new(Stream::Unix(
            UnixStream::connect(&path).await?,
        ))),
        Endpoint::Tls { host, port, config } => {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(Stream::Tls(Box::new(tls))))
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        Box::pin(connect(self.endpoint.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_forms() {
        assert_eq!(
            parse_host(None).unwrap(),
            HostForm::Unix(PathBuf::from("/var/run/docker.sock"))
        );
        assert_eq!(
            parse_host(Some("unix:///tmp/d.sock")).unwrap(),
            HostForm::Unix(PathBuf::from("/tmp/d.sock"))
        );
        assert_eq!(
            parse_host(Some("tcp://127.0.0.1:2376")).unwrap(),
            HostForm::Tcp {
                host: "127.0.0.1".into(),
                port: 2376
            }
        );
        assert_eq!(
            parse_host(Some("tcp://engine.example")).unwrap(),
            HostForm::Tcp {
                host: "engine.example".into(),
                port: 2376
            }
        );
        assert_eq!(
            parse_host(Some("tcp://[::1]:2376")).unwrap(),
            HostForm::Tcp {
                host: "::1".into(),
                port: 2376
            }
        );
        for bad in [
            "unix://",
            "ssh://me@host",
            "tcp://",
            "tcp://h:port",
            "tcp://h:1/x",
        ] {
            assert!(parse_host(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn tcp_without_tls_verify_is_refused() {
        let e = Endpoint::from_env(Some("tcp://127.0.0.1:2375"), None, None, None).unwrap_err();
        assert!(matches!(e, TransportError::PlainTcp(_)), "{e}");
        let e = Endpoint::from_env(
            Some("tcp://127.0.0.1:2376"),
            Some("1"),
            Some("/nonexistent"),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
