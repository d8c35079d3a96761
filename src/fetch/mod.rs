//! Downloads of task resources (`src` URLs) without SSRF: parse strictly, resolve once, check every address, connect only to what was checked.
//!
//! The URLs come from semi-trusted users, so each hop of a download goes through the same
//! steps in the same order: [`parse_url`] (strict syntax, every IPv4 spelling normalised),
//! resolve the name once, [`check_ip`] on every address returned, then connect to one of
//! those very `SocketAddr`s, so a DNS answer cannot change between the check and the connect.
//! The host name is still what goes into `Host` and TLS SNI/verification. Redirects are
//! followed by hand, each `Location` parsed and checked like the first URL before anything is
//! contacted. Sizes are capped on the declared `Content-Length` and again on the bytes
//! actually streamed; one deadline covers the whole download, all hops included.
//! [`post`] sends a body (callbacks) through the same checks.

mod addr;
mod tls;
mod url;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::header::{ACCEPT_ENCODING, CONTENT_LENGTH, HOST, LOCATION, USER_AGENT};
use hyper::{HeaderMap, Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::util::error_chain;

pub use addr::{check_ip, Allow, Host};
pub use url::{parse_url, Scheme, Url};

/// What may be downloaded, how much, and for how long.
#[derive(Debug, Clone)]
pub struct Policy {
    pub allow: Allow,
    /// Largest body accepted, checked on `Content-Length` and on the bytes received.
    pub max_bytes: u64,
    /// For resolving the name, opening the TCP connection and the TLS handshake, each.
    pub connect_timeout: Duration,
    /// For the whole download: every hop, headers and body.
    pub total_timeout: Duration,
    pub max_redirects: usize,
}

impl Default for Policy {
    /// Nothing internal allowed, 100 MiB, 10 s to connect, 5 min in all, 5 redirects.
    fn default() -> Self {
        Policy {
            allow: Allow::default(),
            max_bytes: 100 << 20,
            connect_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(300),
            max_redirects: 5,
        }
    }
}

/// Why a download failed; each variant names the step that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The URL given is not one Lessl accepts (scheme, credentials, host or path form).
    ParseUrl(String),
    /// The destination is internal (loopback, private, link-local, ...) and not allowed.
    Refused(String),
    /// The name did not resolve.
    Resolve(String),
    /// No checked address accepted a TCP connection.
    Connect(String),
    /// The TLS handshake or certificate verification failed.
    Tls(String),
    /// Sending the request or reading the response head failed (not HTTP, connection reset).
    Request(String),
    /// The final answer was not 2xx.
    Status { code: u16, url: String },
    /// The body is over the cap: `declared` when `Content-Length` said so up front.
    TooLarge { limit: u64, declared: Option<u64> },
    /// `what` did not finish within `limit`.
    Timeout { what: &'static str, limit: Duration },
    /// Too many redirects, a missing or unusable `Location`, or https downgraded to http.
    Redirect(String),
    /// The connection failed while the body was streaming (e.g. closed before the end).
    ReadBody(String),
}

impl FetchError {
    /// The upstream HTTP status, when the download failed on one.
    pub fn upstream_status(&self) -> Option<u16> {
        match self {
            FetchError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, FetchError::Timeout { .. })
    }

    pub fn is_too_large(&self) -> bool {
        matches!(self, FetchError::TooLarge { .. })
    }

    /// The request itself was unacceptable (bad URL or SSRF refusal): the caller answers 400.
    pub fn is_refused(&self) -> bool {
        matches!(self, FetchError::ParseUrl(_) | FetchError::Refused(_))
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::ParseUrl(why) => write!(f, "invalid URL {why}"),
            FetchError::Refused(why) => write!(
                f,
                "refused destination: {why} (the operator can open it with --src-allow)"
            ),
            FetchError::Resolve(why) => write!(f, "cannot resolve {why}"),
            FetchError::Connect(why) => write!(f, "cannot connect to {why}"),
            FetchError::Tls(why) => write!(f, "TLS handshake failed: {why}"),
            FetchError::Request(why) => write!(f, "HTTP request failed: {why}"),
            FetchError::Status { code, url } => {
                let reason = hyper::StatusCode::from_u16(*code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                write!(f, "{url} answered HTTP {code} {reason}")
            }
            FetchError::TooLarge {
                limit,
                declared: Some(n),
            } => write!(f, "Content-Length {n} is over the {limit}-byte limit"),
            FetchError::TooLarge {
                limit,
                declared: None,
            } => write!(f, "body is over the {limit}-byte limit"),
            FetchError::Timeout { what, limit } => {
                write!(f, "{what} took longer than {}", DisplayDuration(*limit))
            }
            FetchError::Redirect(why) => write!(f, "redirect not followed: {why}"),
            FetchError::ReadBody(why) => write!(f, "reading the body failed: {why}"),
        }
    }
}

impl std::error::Error for FetchError {}

struct DisplayDuration(Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Downloads the body of `url` following at most `policy.max_redirects` redirects.
pub async fn download(url: &str, policy: &Policy) -> Result<Vec<u8>, FetchError> {
    let first = parse_url(url)?;
    match timeout(policy.total_timeout, follow(first, policy)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout {
            what: "the download",
            limit: policy.total_timeout,
        }),
    }
}

async fn follow(mut url: Url, policy: &Policy) -> Result<Vec<u8>, FetchError> {
    let mut redirects = 0;
    loop {
        let addrs = destinations(&url, policy).await?;
        let (response, conn) = request(&url, &addrs, policy.connect_timeout).await?;
        let code = response.status().as_u16();
        if matches!(code, 301 | 302 | 303 | 307 | 308) {
            let next = redirect(&url, response.headers(), &mut redirects, policy)?;
            // Closes this hop's connection before the next is opened.
            drop((response, conn));
            url = next;
            continue;
        }
        if !(200..300).contains(&code) {
            return Err(FetchError::Status {
                code,
                url: url.to_string(),
            });
        }
        let body = read_body(response, policy.max_bytes).await;
        drop(conn);
        return body;
    }
}

/// The next hop of a redirect from `url`, counted against `--max-redirects`.
fn redirect(
    url: &Url,
    headers: &HeaderMap,
    redirects: &mut usize,
    policy: &Policy,
) -> Result<Url, FetchError> {
    if *redirects >= policy.max_redirects {
        return Err(FetchError::Redirect(format!(
            "more than {} redirects (the last from {url})",
            policy.max_redirects
        )));
    }
    *redirects += 1;
    next_hop(url, headers)
}

/// Where a redirect leads: parsed like a user URL, never from https down to http.
fn next_hop(from: &Url, headers: &HeaderMap) -> Result<Url, FetchError> {
    let location = headers
        .get(LOCATION)
        .ok_or_else(|| FetchError::Redirect(format!("{from} redirected without a Location")))?
        .to_str()
        .map_err(|_| FetchError::Redirect(format!("{from} sent a non-ASCII Location")))?;
    let next = url::resolve_location(from, location).map_err(|e| {
        FetchError::Redirect(format!("{from} redirected to an unusable Location: {e}"))
    })?;
    if from.scheme == Scheme::Https && next.scheme == Scheme::Http {
        return Err(FetchError::Redirect(format!(
            "{from} redirected from https down to http ({next})"
        )));
    }
    Ok(next)
}

/// The addresses this hop may connect to: resolved once and every one checked, so the
/// connection goes to an address that passed [`check_ip`], whatever DNS says later.
async fn destinations(url: &Url, policy: &Policy) -> Result<Vec<SocketAddr>, FetchError> {
    let name = match &url.host {
        Host::Ip(ip) => {
            check_ip(*ip, &policy.allow)?;
            return Ok(vec![SocketAddr::new(*ip, url.port)]);
        }
        Host::Name(name) => name,
    };
    let found = timeout(
        policy.connect_timeout,
        tokio::net::lookup_host((name.as_str(), url.port)),
    )
    .await
    .map_err(|_| FetchError::Timeout {
        what: "resolving the name",
        limit: policy.connect_timeout,
    })?
    .map_err(|e| FetchError::Resolve(format!("{name}: {e}")))?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for sock in found {
        if !addrs.contains(&sock) {
            addrs.push(sock);
        }
    }
    if addrs.is_empty() {
        return Err(FetchError::Resolve(format!("{name}: no addresses")));
    }
    if !policy.allow.allows_host(name) {
        for found in &addrs {
            if let Some(why) = addr::refusal(found.ip(), &policy.allow) {
                return Err(FetchError::Refused(format!(
                    "{name} resolves to {}, which is {why}",
                    found.ip()
                )));
            }
        }
    }
    Ok(addrs)
}

/// The task driving one hop's connection; aborting it on drop closes the socket, so a
/// refused redirect or a blown deadline never leaves a download running in the background.
struct Conn(JoinHandle<()>);

impl Drop for Conn {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn request(
    url: &Url,
    addrs: &[SocketAddr],
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, Conn), FetchError> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(url.path_and_query.as_str())
        .header(HOST, url.authority())
        .header(USER_AGENT, "lessl")
        .header(ACCEPT_ENCODING, "identity")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Request(format!("{url}: {e}")))?;
    send(url, addrs, connect_timeout, req).await
}

/// Connects to one of the checked `addrs` (TLS for https) and sends `req` on it.
async fn send<B>(
    url: &Url,
    addrs: &[SocketAddr],
    connect_timeout: Duration,
    req: Request<B>,
) -> Result<(Response<Incoming>, Conn), FetchError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = connect_any(addrs, connect_timeout).await?;
    let (mut sender, conn) = match url.scheme {
        Scheme::Http => handshake(tcp).await?,
        Scheme::Https => {
            let tls = timeout(connect_timeout, tls::connect(&url.host, tcp))
                .await
                .map_err(|_| FetchError::Timeout {
                    what: "the TLS handshake",
                    limit: connect_timeout,
                })??;
            handshake(tls).await?
        }
    };
    sender
        .ready()
        .await
        .map_err(|e| FetchError::Request(format!("{url}: {}", error_chain(&e))))?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| FetchError::Request(format!("{url}: {}", error_chain(&e))))?;
    Ok((response, conn))
}

async fn handshake<T, B>(io: T) -> Result<(http1::SendRequest<B>, Conn), FetchError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| FetchError::Request(error_chain(&e)))?;
    // Its errors surface through send_request and the body, where they are reported.
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, Conn(task)))
}

/// POSTs `body` (JSON) to `url` with the same checks as a download, and returns the 2xx
/// status it was answered with. Only 307 and 308 are followed (each hop checked like the
/// first URL): they repeat the POST with its body, where 301, 302 and 303 would turn it into
/// a GET without one, which is never what the receiver of a POST wants; those are failures
/// ([`FetchError::Status`]). `policy.total_timeout` covers every hop; the answer's body is
/// not read.
pub async fn post(
    url: &str,
    body: Bytes,
    headers: &[(&'static str, String)],
    policy: &Policy,
) -> Result<u16, FetchError> {
    let first = parse_url(url)?;
    let posting = async {
        let mut url = first;
        let mut redirects = 0;
        loop {
            let addrs = destinations(&url, policy).await?;
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(url.path_and_query.as_str())
                .header(HOST, url.authority())
                .header(USER_AGENT, "lessl")
                .header(hyper::header::CONTENT_TYPE, "application/json");
            for (name, value) in headers {
                req = req.header(*name, value.as_str());
            }
            let req = req
                .body(http_body_util::Full::new(body.clone()))
                .map_err(|e| FetchError::Request(format!("{url}: {e}")))?;
            let (response, conn) = send(&url, &addrs, policy.connect_timeout, req).await?;
            let code = response.status().as_u16();
            if matches!(code, 307 | 308) {
                let next = redirect(&url, response.headers(), &mut redirects, policy)?;
                drop((response, conn));
                url = next;
                continue;
            }
            drop((response, conn));
            if !(200..300).contains(&code) {
                return Err(FetchError::Status {
                    code,
                    url: url.to_string(),
                });
            }
            return Ok(code);
        }
    };
    match timeout(policy.total_timeout, posting).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout {
            what: "the POST",
            limit: policy.total_timeout,
        }),
    }
}

/// Tries the checked addresses in resolver order, each within `connect_timeout`.
async fn connect_any(
    addrs: &[SocketAddr],
    connect_timeout: Duration,
) -> Result<TcpStream, FetchError> {
    let mut failures = Vec::new();
    let mut all_timed_out = true;
    for addr in addrs {
        match timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Requests are one small write; waiting to coalesce it only adds latency.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => {
                all_timed_out = false;
                failures.push(format!("{addr}: {e}"));
            }
            Err(_) => failures.push(format!("{addr}: timed out")),
        }
    }
    if all_timed_out {
        return Err(FetchError::Timeout {
            what: "connecting",
            limit: connect_timeout,
        });
    }
    Err(FetchError::Connect(failures.join("; ")))
}

/// Preallocation is capped: a `Content-Length` within `max_bytes` may still be a lie.
const PREALLOC_MAX: u64 = 1 << 20;

/// Reads the body without ever holding more than `max_bytes`: the declared length is
/// refused up front, and each frame is checked before it is appended.
async fn read_body(response: Response<Incoming>, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
    let header_length = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let declared = header_length.max(response.body().size_hint().lower());
    if declared > max_bytes {
        return Err(FetchError::TooLarge {
            limit: max_bytes,
            declared: Some(declared),
        });
    }
    let mut body = response.into_body();
    let capacity = usize::try_from(declared.min(PREALLOC_MAX)).unwrap_or(0);
    let mut out: Vec<u8> = Vec::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| FetchError::ReadBody(error_chain(&e)))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if out.len() as u64 + data.len() as u64 > max_bytes {
            return Err(FetchError::TooLarge {
                limit: max_bytes,
                declared: None,
            });
        }
        out.extend_from_slice(&data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Against tiny HTTP servers on 127.0.0.0/8 that the tests start; nothing else is contacted.

    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    enum Reply {
        /// Written whole, then the connection is closed.
        Raw(Vec<u8>),
        /// `head`, then `bytes` single bytes, one every `every`.
        Trickle {
            head: Vec<u8>,
            bytes: usize,
            every: Duration,
        },
        /// A chunked 200 of `count` chunks of `size` bytes, as fast as the client takes them.
        Chunked { size: usize, count: usize },
    }

    fn raw(s: &str) -> Reply {
        Reply::Raw(s.as_bytes().to_vec())
    }

    struct Server {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        /// Request heads as received, lowercased.
        heads: Arc<Mutex<Vec<String>>>,
        /// Chunks a `Chunked` reply got out before the client hung up, and whether it stopped.
        chunks_sent: Arc<AtomicUsize>,
        chunked_done: Arc<AtomicBool>,
    }

    impl Server {
        fn port(&self) -> u16 {
            self.addr.port()
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }
    }

    /// Serves one request per connection with `reply(path, port)` on `ip`:0.
    async fn serve<F>(ip: &str, reply: F) -> Server
    where
        F: Fn(&str, u16) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server {
            addr,
            accepted: Arc::default(),
            heads: Arc::default(),
            chunks_sent: Arc::default(),
            chunked_done: Arc::default(),
        };
        let (accepted, heads) = (server.accepted.clone(), server.heads.clone());
        let (chunks_sent, chunked_done) = (server.chunks_sent.clone(), server.chunked_done.clone());
        let reply = Arc::new(reply);
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (reply, heads) = (reply.clone(), heads.clone());
                let (chunks_sent, chunked_done) = (chunks_sent.clone(), chunked_done.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                        if head.first() == Some(&0x16) {
                            // A TLS ClientHello: answer in plain HTTP, as a misconfigured server would.
                            let _ = sock.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                            return;
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    heads.lock().unwrap().push(head);
                    match reply(&path, addr.port()) {
                        Reply::Raw(bytes) => {
                            let _ = sock.write_all(&bytes).await;
                        }
                        Reply::Trickle { head, bytes, every } => {
                            let _ = sock.write_all(&head).await;
                            for _ in 0..bytes {
                                tokio::time::sleep(every).await;
                                if sock.write_all(b"x").await.is_err() {
                                    return;
                                }
                            }
                        }
                        Reply::Chunked { size, count } => {
                            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                            let mut chunk = format!("{size:x}\r\n").into_bytes();
                            chunk.extend_from_slice(&vec![b'y'; size]);
                            chunk.extend_from_slice(b"\r\n");
                            if sock.write_all(head).await.is_ok() {
                                for _ in 0..count {
                                    if sock.write_all(&chunk).await.is_err() {
                                        break;
                                    }
                                    chunks_sent.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            chunked_done.store(true, Ordering::SeqCst);
                        }
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        server
    }

    fn policy(allow: &str) -> Policy {
        Policy {
            allow: Allow::parse(allow).unwrap(),
            max_bytes: 64 * 1024,
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(10),
            max_redirects: 3,
        }
    }

    const LOCAL: &str = "127.0.0.1/32";

    #[tokio::test]
    async fn posts_follow_only_307_and_308_each_hop_checked() {
        let server = serve("127.0.0.1", |path, port| match path {
            "/temp" => raw(&format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{port}/perm\r\nContent-Length: 0\r\n\r\n"
            )),
            "/perm" => raw("HTTP/1.1 308 Permanent Redirect\r\nLocation: /done\r\nContent-Length: 0\r\n\r\n"),
            "/done" => raw("HTTP/1.1 204 No Content\r\n\r\n"),
            "/see-other" => raw("HTTP/1.1 303 See Other\r\nLocation: /done\r\nContent-Length: 0\r\n\r\n"),
            "/away" => raw(&format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.2:{port}/done\r\nContent-Length: 0\r\n\r\n"
            )),
            _ => raw("HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"),
        })
        .await;
        let body = Bytes::from_static(b"{\"a\":1}");
        let headers = [("Lessl-Signature", "sha256=ab".to_string())];
        let code = post(&server.url("/temp"), body.clone(), &headers, &policy(LOCAL))
            .await
            .unwrap();
        assert_eq!(code, 204);
        let heads = server.heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 3, "{heads:?}");
        for (head, path) in heads.iter().zip(["/temp", "/perm", "/done"]) {
            assert!(
                head.starts_with(&format!("post {path} http/1.1\r\n")),
                "{head}"
            );
            assert!(
                head.contains("\r\ncontent-type: application/json\r\n"),
                "{head}"
            );
            assert!(head.contains("\r\ncontent-length: 7\r\n"), "{head}");
            assert!(
                head.contains("\r\nlessl-signature: sha256=ab\r\n"),
                "{head}"
            );
        }
        // 303 would turn the POST into a GET without its body: a failure, not followed.
        let e = post(&server.url("/see-other"), body.clone(), &[], &policy(LOCAL))
            .await
            .unwrap_err();
        assert_eq!(e.upstream_status(), Some(303), "{e}");
        // A hop to an address the policy refuses is refused before it is contacted.
        let e = post(&server.url("/away"), body.clone(), &[], &policy(LOCAL))
            .await
            .unwrap_err();
        assert!(e.is_refused(), "{e}");
        let e = post(&server.url("/busy"), body.clone(), &[], &policy(LOCAL))
            .await
            .unwrap_err();
        assert_eq!(e.upstream_status(), Some(503), "{e}");
        assert_eq!(server.accepted(), 6);
        // Without the allowance, loopback is never contacted.
        let e = post(&server.url("/done"), body, &[], &policy(""))
            .await
            .unwrap_err();
        assert!(e.is_refused(), "{e}");
        assert_eq!(server.accepted(), 6);
    }

    #[tokio::test]
    async fn downloads_from_an_allowed_server() {
        let server = serve("127.0.0.1", |_, _| {
            raw("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        })
        .await;
        let body = download(&server.url("/dir/file.txt?x=1#frag"), &policy(LOCAL))
            .await
            .unwrap();
        assert_eq!(body, b"hello");
        let heads = server.heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 1);
        let head = &heads[0];
        assert!(
            head.starts_with("get /dir/file.txt?x=1 http/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", server.port())),
            "{head}"
        );
        assert!(head.contains("\r\nuser-agent: lessl\r\n"), "{head}");
        assert!(head.contains("\r\naccept-encoding: identity\r\n"), "{head}");
    }

    #[tokio::test]
    async fn downloads_a_chunked_body_and_an_empty_one() {
        let server = serve("127.0.0.1", |path, _| match path {
            "/chunked" => raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
            "/close" => raw("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-eof"),
            _ => raw("HTTP/1.1 204 No Content\r\n\r\n"),
        })
        .await;
        let p = policy(LOCAL);
        assert_eq!(
            download(&server.url("/chunked"), &p).await.unwrap(),
            b"abcde"
        );
        assert_eq!(
            download(&server.url("/close"), &p).await.unwrap(),
            b"until-eof"
        );
        assert_eq!(download(&server.url("/empty"), &p).await.unwrap(), b"");
    }

    #[tokio::test]
    async fn allowed_host_name_reaches_what_it_resolves_to() {
        let server = serve("127.0.0.1", |_, _| {
            raw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        })
        .await;
        let url = format!("http://LocalHost:{}/", server.port());
        let body = download(&url, &policy("localhost")).await.unwrap();
        assert_eq!(body, b"ok");
        let heads = server.heads.lock().unwrap().clone();
        assert!(heads[0].contains(&format!("\r\nhost: localhost:{}\r\n", server.port())));
    }

    #[tokio::test]
    async fn refused_without_allow_and_never_contacted() {
        let server = serve("127.0.0.1", |_, _| {
            raw("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        })
        .await;
        let port = server.port();
        let none = policy("");
        for url in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://127.1:{port}/"),
            format!("http://127.0.1:{port}/"),
            format!("http://2130706433:{port}/"),
            format!("http://0x7f000001:{port}/"),
            format!("http://0177.0.0.1:{port}/"),
            format!("http://0x7f.1:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            format!("http://[::ffff:7f00:1]:{port}/"),
            format!("http://localhost:{port}/"),
            format!("https://127.0.0.1:{port}/"),
        ] {
            let err = download(&url, &none).await.unwrap_err();
            assert!(matches!(err, FetchError::Refused(_)), "{url}: {err}");
            assert!(err.is_refused());
        }
        let err = download(&format!("http://localhost:{port}/"), &none)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("localhost resolves to "), "{msg}");
        assert!(
            msg.contains("which is loopback") && msg.contains("--src-allow"),
            "{msg}"
        );
        let err = download(&format!("http://[::ffff:127.0.0.1]:{port}/"), &none)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused destination: ::ffff:127.0.0.1 is an IPv6 form of 127.0.0.1, which is \
             loopback (127.0.0.0/8) (the operator can open it with --src-allow)"
        );
        // Allowing one address does not open its neighbours.
        let err = download(&format!("http://127.0.0.2:{port}/"), &policy(LOCAL))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Refused(_)), "{err}");
        assert_eq!(server.accepted(), 0);
    }

    #[tokio::test]
    async fn bad_urls_are_refused_before_anything() {
        for url in [
            "file:///etc/passwd",
            "gopher://x",
            "http://user:pw@127.0.0.1/",
            "http://[fe80::1%25eth0]/",
        ] {
            let err = download(url, &policy(LOCAL)).await.unwrap_err();
            assert!(matches!(err, FetchError::ParseUrl(_)), "{url}: {err}");
            assert!(err.is_refused());
        }
    }

    #[tokio::test]
    async fn redirect_to_a_refused_address_stops_at_the_hop() {
        let inner = serve("127.0.0.2", |_, _| {
            raw("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
        })
        .await;
        let inner_port = inner.port();
        let outer = serve("127.0.0.1", move |path, _| {
            let to = match path {
                "/plain" => format!("http://127.0.0.2:{inner_port}/secret"),
                "/mapped" => format!("http://[::ffff:127.0.0.2]:{inner_port}/secret"),
                "/hex" => format!("http://0x7f000002:{inner_port}/secret"),
                _ => format!("//127.0.0.2.:{inner_port}/secret"),
            };
            raw(&format!(
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
            ))
        })
        .await;
        for path in ["/plain", "/mapped", "/hex", "/dot"] {
            let err = download(&outer.url(path), &policy(LOCAL))
                .await
                .unwrap_err();
            assert!(matches!(err, FetchError::Refused(_)), "{path}: {err}");
        }
        assert_eq!(outer.accepted(), 4);
        assert_eq!(inner.accepted(), 0);
    }

    #[tokio::test]
    async fn follows_absolute_and_relative_redirects() {
        let server = serve("127.0.0.1", |path, port| match path {
            "/a" => raw(&format!(
                "HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.1:{port}/dir/b\r\n\r\n"
            )),
            "/dir/b" => {
                raw("HTTP/1.1 307 Temporary\r\nLocation: c?x=1\r\nContent-Length: 0\r\n\r\n")
            }
            "/dir/c?x=1" => {
                raw("HTTP/1.1 303 See Other\r\nLocation: /done\r\nContent-Length: 0\r\n\r\n")
            }
            "/done" => raw("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"),
            _ => raw("HTTP/1.1 500 Unexpected\r\nContent-Length: 0\r\n\r\n"),
        })
        .await;
        let body = download(&server.url("/a"), &policy(LOCAL)).await.unwrap();
        assert_eq!(body, b"done");
        assert_eq!(server.accepted(), 4);
    }

    #[tokio::test]
    async fn too_many_redirects() {
        let server = serve("127.0.0.1", |path, _| {
            let n: u32 = path.trim_start_matches("/r").parse().unwrap_or(0);
            raw(&format!(
                "HTTP/1.1 302 Found\r\nLocation: /r{}\r\nContent-Length: 0\r\n\r\n",
                n + 1
            ))
        })
        .await;
        let err = download(&server.url("/r0"), &policy(LOCAL))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Redirect(_)), "{err}");
        assert!(!err.is_refused());
        // The first request and the three redirects allowed, not one more.
        assert_eq!(server.accepted(), 4);

        let mut none = policy(LOCAL);
        none.max_redirects = 0;
        let err = download(&server.url("/r0"), &none).await.unwrap_err();
        assert!(matches!(err, FetchError::Redirect(_)), "{err}");
        assert_eq!(server.accepted(), 5);
    }

    #[tokio::test]
    async fn unusable_locations() {
        let server = serve("127.0.0.1", |path, _| match path {
            "/file" => raw("HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\n\r\n"),
            "/creds" => raw("HTTP/1.1 302 Found\r\nLocation: http://u:p@127.0.0.1/\r\n\r\n"),
            _ => raw("HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n"),
        })
        .await;
        for path in ["/file", "/creds", "/missing"] {
            let err = download(&server.url(path), &policy(LOCAL))
                .await
                .unwrap_err();
            assert!(matches!(err, FetchError::Redirect(_)), "{path}: {err}");
        }
        assert_eq!(server.accepted(), 3);
    }

    #[test]
    fn https_is_never_downgraded_to_http() {
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, "http://example.com/x".parse().unwrap());
        let https = parse_url("https://example.com/").unwrap();
        let err = next_hop(&https, &headers).unwrap_err();
        assert!(matches!(err, FetchError::Redirect(_)), "{err}");
        let http = parse_url("http://example.com/").unwrap();
        assert!(next_hop(&http, &headers).is_ok());
        headers.insert(LOCATION, "https://example.com/y".parse().unwrap());
        assert!(next_hop(&https, &headers).is_ok());
        assert!(next_hop(&http, &headers).is_ok());
        headers.insert(LOCATION, "//other.example/z".parse().unwrap());
        assert_eq!(next_hop(&https, &headers).unwrap().scheme, Scheme::Https);
    }

    #[tokio::test]
    async fn content_length_over_the_cap_is_refused_up_front() {
        let server = serve("127.0.0.1", |_, _| Reply::Trickle {
            head: b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_vec(),
            bytes: 1_000_000,
            every: Duration::from_millis(100),
        })
        .await;
        let start = Instant::now();
        let err = download(&server.url("/big"), &policy(LOCAL))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            FetchError::TooLarge {
                limit: 64 * 1024,
                declared: Some(1_000_000)
            }
        );
        assert!(err.is_too_large());
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn chunked_body_over_the_cap_is_stopped_early() {
        let (size, count) = (16 * 1024, 6400); // 100 MiB offered
        let server = serve("127.0.0.1", move |_, _| Reply::Chunked { size, count }).await;
        let start = Instant::now();
        let err = download(&server.url("/stream"), &policy(LOCAL))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            FetchError::TooLarge {
                limit: 64 * 1024,
                declared: None
            }
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        // The server notices the hang-up once the socket buffers are full.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.chunked_done.load(Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(server.chunked_done.load(Ordering::SeqCst));
        let sent = server.chunks_sent.load(Ordering::SeqCst);
        assert!(sent < count / 4, "{sent} chunks of {count} were sent");
    }

    #[tokio::test]
    async fn slow_trickle_stops_at_the_total_deadline() {
        let server = serve("127.0.0.1", |_, _| Reply::Trickle {
            head: b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec(),
            bytes: 1000,
            every: Duration::from_millis(20),
        })
        .await;
        let mut p = policy(LOCAL);
        p.total_timeout = Duration::from_millis(400);
        let start = Instant::now();
        let err = download(&server.url("/slow"), &p).await.unwrap_err();
        let took = start.elapsed();
        assert!(err.is_timeout(), "{err}");
        assert_eq!(err.to_string(), "the download took longer than 400ms");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn error_status_is_reported() {
        let server = serve("127.0.0.1", |_, _| {
            raw("HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
        })
        .await;
        let url = server.url("/missing");
        let err = download(&url, &policy(LOCAL)).await.unwrap_err();
        assert_eq!(err.upstream_status(), Some(404));
        assert_eq!(
            err.to_string(),
            format!("{url} answered HTTP 404 Not Found")
        );
        assert!(!err.is_refused() && !err.is_timeout() && !err.is_too_large());
    }

    #[tokio::test]
    async fn truncated_body_and_non_http_answers() {
        let server = serve("127.0.0.1", |path, _| match path {
            "/short" => raw("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
            _ => raw("SSH-2.0-OpenSSH_9.6\r\n\r\n"),
        })
        .await;
        let err = download(&server.url("/short"), &policy(LOCAL))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::ReadBody(_)), "{err}");
        let err = download(&server.url("/ssh"), &policy(LOCAL))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Request(_)), "{err}");
    }

    #[tokio::test]
    async fn https_to_a_plain_http_server_fails_in_tls() {
        let server = serve("127.0.0.1", |_, _| {
            raw("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        })
        .await;
        let url = format!("https://127.0.0.1:{}/", server.port());
        let err = download(&url, &policy(LOCAL)).await.unwrap_err();
        assert!(matches!(err, FetchError::Tls(_)), "{err}");
        assert_eq!(server.accepted(), 1);
    }

    #[tokio::test]
    async fn closed_port_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = download(&format!("http://127.0.0.1:{port}/"), &policy(LOCAL))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Connect(_)), "{err}");
    }
}
