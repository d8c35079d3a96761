//! The listener and its connections: accepts on TCP or a Unix socket, serves each connection
//! with HTTP/1, and on shutdown stops accepting and gives in-flight requests a grace period.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, UnixListener};

use crate::api::Api;
use crate::config::{Config, ListenAddr, ServerConfig};
use crate::docker::Docker;
use crate::log;
use crate::systemd::{Inherited, Supervision};
use crate::tasks::Tasks;

/// A bound listener, so callers (and tests) choose the address, port 0 included.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Binds what the configuration names.
    pub async fn bind(config: &ServerConfig) -> std::io::Result<Listener> {
        match &config.listen {
            ListenAddr::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => {
                // A stale socket from an earlier run would make bind fail.
                if std::fs::symlink_metadata(path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    std::fs::remove_file(path)?;
                }
                // The socket is born 0660: set the umask around bind so there is no moment
                // when it is wider, which a chmod after bind would leave.
                // SAFETY: umask only swaps the process's file mode mask.
                let old = unsafe { libc::umask(0o117) };
                let bound = UnixListener::bind(path);
                unsafe { libc::umask(old) };
                Ok(Listener::Unix(bound?))
            }
        }
    }

    /// Adopts the socket systemd passed (socket activation) instead of binding `--listen`.
    /// The rule for `--listen` holds here too: a TCP socket on a non-loopback address needs a
    /// token, whoever bound it.
    pub fn inherit(socket: Inherited, config: &ServerConfig) -> Result<Listener, String> {
        let step = |what: &str, e: std::io::Error| format!("socket activation: {what}: {e}");
        match socket {
            Inherited::Tcp(l) => {
                let addr = l
                    .local_addr()
                    .map_err(|e| step("reading the inherited address", e))?;
                if !addr.ip().is_loopback() && config.token.is_none() {
                    return Err(format!(
                        "socket activation: refusing to serve the inherited socket on \
                         non-loopback {addr} without --token-file"
                    ));
                }
                l.set_nonblocking(true)
                    .map_err(|e| step("making the socket non-blocking", e))?;
                Ok(Listener::Tcp(
                    TcpListener::from_std(l).map_err(|e| step("registering the socket", e))?,
                ))
            }
            Inherited::Unix(l) => {
                l.set_nonblocking(true)
                    .map_err(|e| step("making the socket non-blocking", e))?;
                Ok(Listener::Unix(
                    UnixListener::from_std(l).map_err(|e| step("registering the socket", e))?,
                ))
            }
        }
    }

    /// Where it listens, for the log line tests and operators read.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|e| format!("tcp (unknown: {e})")),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| {
                    // An inherited socket may have an abstract name (ListenStream=@name).
                    a.as_pathname()
                        .map(|p| format!("unix:{}", p.display()))
                        .or_else(|| {
                            a.as_abstract_name()
                                .map(|n| format!("unix:@{}", String::from_utf8_lossy(n)))
                        })
                })
                .unwrap_or_else(|| "unix".into()),
        }
    }
}

/// Runs Lessl on `listener` until `shutdown` resolves, then drains and cleans up.
pub async fn run(listener: Listener, config: Config, shutdown: impl Future<Output = ()>) {
    run_supervised(listener, config, shutdown, Supervision::default()).await
}

/// [`run`], telling a service manager when the API is up and when shutdown begins.
pub async fn run_supervised(
    listener: Listener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    supervision: Supervision,
) {
    let Config {
        server,
        docker,
        tasks: settings,
        log: _,
    } = config;
    let instance = settings.instance.clone();
    let engine = Docker::new(docker.endpoint, docker.timeout);
    let tasks = Tasks::new(Arc::new(engine), settings);
    tasks.spawn_background();
    // Large blocks kept by the allocator go back to the system once Lessl is idle.
    crate::alloc::keep_large_blocks();
    tokio::spawn(async {
        let mut seen = 0;
        let mut tick = tokio::time::interval(crate::alloc::TRIM_EVERY);
        loop {
            tick.tick().await;
            crate::alloc::trim_if_idle(&mut seen);
        }
    });
    let api = Arc::new(Api {
        tasks: tasks.clone(),
        token: server.token.clone(),
        max_body_bytes: server.max_body_bytes,
        request_timeout: server.request_timeout,
        instance,
    });
    let listening = listener.describe();
    log!(notice: "listening on {listening}");
    // The socket accepts from here on (connections queue until the loop below takes them).
    supervision.ready(&listening);

    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // Slow clients (slowloris) are cut off instead of holding a connection forever. hyper
    // starts this timer whenever it waits for a request head, so it is also the idle
    // timeout of a keep-alive connection between requests.
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(server.request_timeout);
    // Past the cap: one request per connection, which must arrive quickly.
    let mut overflow_http = hyper::server::conn::http1::Builder::new();
    overflow_http
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(OVERFLOW_HEAD_TIMEOUT.min(server.request_timeout))
        .keep_alive(false);
    let slots = Slots::new(server.max_connections);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = accept(&listener) => a,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log!(warn: "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let api = api.clone();
        let max = server.max_connections;
        match slots.admit() {
            Some(Slot::Full(guard)) => {
                let service = service_fn(move |req| api.clone().handle(req));
                let conn = graceful.watch(http.serve_connection(io, service));
                tokio::spawn(async move {
                    let _guard = guard;
                    let _ = conn.await;
                });
            }
            Some(Slot::Overflow(guard)) => {
                let service = service_fn(move |req| api.clone().handle_overflow(req, max));
                let conn = graceful.watch(overflow_http.serve_connection(io, service));
                tokio::spawn(async move {
                    let _guard = guard;
                    let _ = conn.await;
                });
            }
            // Closed at once: holding it would spend the fds the cap is there to keep.
            None => drop(io),
        }
    }
    supervision.stopping();
    log!(
        "shutting down: no new connections, {:?} for in-flight requests",
        server.shutdown_grace
    );
    if tokio::time::timeout(server.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        log!(warn: "shutdown: requests still running after the grace period");
    }
    tasks.shutdown(server.shutdown_grace).await;
    // An inherited socket's file belongs to its .socket unit, which keeps listening for the
    // next start; only a socket Lessl bound itself is Lessl's to remove.
    if let (ListenAddr::Unix(path), false) = (&server.listen, supervision.socket_inherited) {
        let _ = std::fs::remove_file(path);
    }
    log!(notice: "stopped");
}

/// How long a connection past `--max-connections` may take to send its request head: it
/// holds one of the few overflow slots, which must not be held by idle clients.
const OVERFLOW_HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// Open client connections, counted so that neither their number nor Lessl's fds grow
/// without bound: `max` served in full, then a few on the overflow path (`/health` and 503
/// only), and none beyond.
struct Slots {
    /// Connections served in full now.
    full: Arc<AtomicUsize>,
    /// Connections on the overflow path now.
    overflow: Arc<AtomicUsize>,
    /// `--max-connections`.
    max_full: usize,
    /// An eighth of it, between 8 and 64: enough for health checks, too few to matter.
    max_overflow: usize,
}

/// An admitted connection; the slot is given back when the connection's task drops it.
enum Slot {
    Full(SlotGuard),
    Overflow(SlotGuard),
}

/// Gives a slot back on drop, however the connection ended.
struct SlotGuard(Arc<AtomicUsize>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slots {
    fn new(max_full: usize) -> Slots {
        Slots {
            full: Arc::default(),
            overflow: Arc::default(),
            max_full,
            max_overflow: (max_full / 8).clamp(8, 64),
        }
    }

    /// Takes a slot of the first kind that has one free. Only the accept loop takes slots,
    /// so a check followed by an increment cannot overshoot.
    fn admit(&self) -> Option<Slot> {
        let take = |count: &Arc<AtomicUsize>, max: usize| {
            (count.load(Ordering::SeqCst) < max).then(|| {
                count.fetch_add(1, Ordering::SeqCst);
                SlotGuard(count.clone())
            })
        };
        take(&self.full, self.max_full)
            .map(Slot::Full)
            .or_else(|| take(&self.overflow, self.max_overflow).map(Slot::Overflow))
    }
}

/// Either kind of connection, as one type hyper's IO traits are implemented for (an enum,
/// so no allocation per connection).
enum Io {
    Tcp(TokioIo<tokio::net::TcpStream>),
    Unix(TokioIo<tokio::net::UnixStream>),
}

async fn accept(listener: &Listener) -> std::io::Result<Io> {
    match listener {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok(Io::Tcp(TokioIo::new(s)))
        }
        Listener::Unix(l) => Ok(Io::Unix(TokioIo::new(l.accept().await?.0))),
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Checks before serving what only the engine can tell: that it knows `--runtime`. An engine
/// that is down now is not a reason to refuse to start (Lessl waits for it); one that answers
/// without the runtime is, since every task would fail.
pub async fn preflight(config: &Config) -> Result<(), String> {
    let Some(runtime) = &config.tasks.runtime else {
        return Ok(());
    };
    let docker = Docker::new(config.docker.endpoint.clone(), config.docker.timeout);
    match docker.has_runtime(runtime).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "--runtime {runtime}: the engine has no such runtime (configure it in the \
             engine's daemon.json `runtimes`; `docker info` lists the ones it has)"
        )),
        Err(e) => {
            log!(warn: "--runtime {runtime}: cannot ask the engine yet ({e}); tasks will fail if it lacks it");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_full_then_overflow_then_refuse() {
        let slots = Slots::new(16);
        let full: Vec<Slot> = (0..16).map(|_| slots.admit().unwrap()).collect();
        assert!(full.iter().all(|s| matches!(s, Slot::Full(_))));
        let overflow: Vec<Slot> = (0..8).map(|_| slots.admit().unwrap()).collect();
        assert!(overflow.iter().all(|s| matches!(s, Slot::Overflow(_))));
        assert!(slots.admit().is_none(), "past the hard ceiling");
        drop(overflow);
        assert!(matches!(slots.admit(), Some(Slot::Overflow(_))));
        drop(full);
        assert!(matches!(slots.admit(), Some(Slot::Full(_))));
        assert_eq!(Slots::new(4096).max_overflow, 64);
    }
}
