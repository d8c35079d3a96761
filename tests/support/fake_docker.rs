//! A fake Docker Engine on a temporary Unix socket, for faults a real engine will not produce
//! on demand: a daemon that accepts but never answers, one that refuses every call, one that
//! drops the connection in the middle of a stream. Plain threads and blocking I/O: one thread
//! accepts, one thread per connection serves HTTP/1.1 requests (keep-alive) through a handler.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the fake read it.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    pub method: String,
    /// Path and query, e.g. `/v1.41/containers/create?name=x`.
    pub path: String,
    pub body: Vec<u8>,
}

impl FakeRequest {
    /// The path without the `/v1.NN` prefix and without the query.
    pub fn route(&self) -> &str {
        let p = self.path.split('?').next().unwrap_or("");
        match p.strip_prefix("/v1.") {
            Some(rest) => rest.find('/').map(|i| &rest[i..]).unwrap_or(p),
            None => p,
        }
    }
}

/// What the fake does with a request.
pub enum Reply {
    /// A complete answer with a Content-Length; the connection stays open.
    Respond {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// Never write anything; keep the connection open until the peer closes it.
    Hang,
    /// Write these raw bytes (head and all), then close the connection.
    RawThenClose(Vec<u8>),
}

impl Reply {
    pub fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply::Respond {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    pub fn text(status: u16, text: &str) -> Reply {
        Reply::Respond {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.as_bytes().to_vec(),
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply::Respond {
            status,
            content_type: "text/plain",
            body: Vec::new(),
        }
    }
}

type Handler = dyn Fn(&FakeRequest) -> Reply + Send + Sync;

pub struct FakeDocker {
    /// Temporary directory holding the socket; removed on drop.
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// `METHOD path` of every request read, in order.
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FakeDocker {
    /// A fake that answers every request through `handler`.
    pub fn start(handler: impl Fn(&FakeRequest) -> Reply + Send + Sync + 'static) -> FakeDocker {
        FakeDocker::spawn(Some(Arc::new(handler)))
    }

    /// A fake that accepts connections and reads whatever comes, but never writes a byte.
    pub fn silent() -> FakeDocker {
        FakeDocker::spawn(None)
    }

    fn spawn(handler: Option<Arc<Handler>>) -> FakeDocker {
        // Short path: Unix socket paths are limited to 108 bytes.
        let dir = PathBuf::from(format!("/tmp/{}", super::unique("fd")));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock");
        let listener = UnixListener::bind(&socket).expect("bind fake docker socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let seen = seen.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let handler = handler.clone();
                    let seen = seen.clone();
                    let stop = stop.clone();
                    std::thread::spawn(move || serve(conn, handler, seen, stop));
                }
            });
        }
        FakeDocker {
            dir,
            socket,
            seen,
            stop,
        }
    }

    pub fn socket_str(&self) -> String {
        self.socket.to_str().unwrap().to_string()
    }

    /// `METHOD path` of every request read so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeDocker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and lets go of the listener.
        let _ = UnixStream::connect(&self.socket);
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn serve(
    mut conn: UnixStream,
    handler: Option<Arc<Handler>>,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    // Wake up now and then to notice the fake was dropped, so threads do not outlive it.
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let Some(handler) = handler else {
        // The silent fake: swallow input until the peer goes away.
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let Some(req) = read_request(&mut conn, &mut pending, &stop) else {
            return;
        };
        seen.lock()
            .unwrap()
            .push(format!("{} {}", req.method, req.path));
        match handler(&req) {
            Reply::Respond {
                status,
                content_type,
                body,
            } => {
                let head = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nApi-Version: 1.41\r\nServer: fake-docker\r\n\r\n",
                    reason(status),
                    body.len()
                );
                if conn.write_all(head.as_bytes()).is_err() || conn.write_all(&body).is_err() {
                    return;
                }
            }
            Reply::Hang => {
                let mut buf = [0u8; 4096];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if is_timeout(&e) => {
                            if stop.load(Ordering::SeqCst) {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            }
            Reply::RawThenClose(bytes) => {
                let _ = conn.write_all(&bytes);
                let _ = conn.flush();
                let _ = conn.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Reads one request (head, then a Content-Length or chunked body); None at EOF.
fn read_request(
    conn: &mut UnixStream,
    pending: &mut Vec<u8>,
    stop: &AtomicBool,
) -> Option<FakeRequest> {
    let mut buf = [0u8; 8192];
    let mut fill = |pending: &mut Vec<u8>| -> bool {
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    return true;
                }
                Err(e) if is_timeout(&e) => {
                    if stop.load(Ordering::SeqCst) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    };
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !fill(pending) {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
    pending.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let mut length = 0usize;
    let mut chunked = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
        }
    }
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let eol = loop {
                if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if !fill(pending) {
                    return None;
                }
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&pending[..eol])
                    .split(';')
                    .next()
                    .unwrap_or("0")
                    .trim(),
                16,
            )
            .unwrap_or(0);
            while pending.len() < eol + 2 + size + 2 {
                if !fill(pending) {
                    return None;
                }
            }
            body.extend_from_slice(&pending[eol + 2..eol + 2 + size]);
            pending.drain(..eol + 2 + size + 2);
            if size == 0 {
                break body;
            }
        }
    } else {
        while pending.len() < length {
            if !fill(pending) {
                return None;
            }
        }
        pending.drain(..length).collect()
    };
    Some(FakeRequest { method, path, body })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

/// One frame of Docker's multiplexed exec stream: 1 stdout, 2 stderr.
pub fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![stream, 0, 0, 0];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}
