//! systemd integration, by hand over std: readiness messages on `$NOTIFY_SOCKET` (sd_notify)
//! and the listening socket systemd passes by socket activation (`LISTEN_FDS`, fd 3).
//!
//! Both read their variables once at start, while the process still has one thread, and unset
//! them, so nothing Lessl might start later inherits a claim on a socket or fd that is not its.

use std::ffi::{c_int, OsStr, OsString};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::path::PathBuf;

use crate::log;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Longest `sun_path`, NUL or not: a longer address cannot be a Unix socket's.
const SUN_PATH_MAX: usize = 108;

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A socket file (`/run/systemd/notify`).
    Path(PathBuf),
    /// An abstract name: `@name` in the variable, a leading NUL on the wire.
    Abstract(Vec<u8>),
}

/// Parses `$NOTIFY_SOCKET` the way sd_notify does: an absolute path, or `@` and an abstract
/// name. `vsock:` addresses (systemd in a VM talking to its host) are not supported.
pub fn parse_notify_socket(value: &OsStr) -> Result<NotifyAddr, String> {
    let bytes = value.as_bytes();
    let shown = value.to_string_lossy();
    // One byte of sun_path goes to the leading NUL of an abstract name, or to the NUL
    // terminating a path.
    if bytes.len() >= SUN_PATH_MAX {
        return Err(format!(
            "`{shown}` is longer than a Unix socket address ({} bytes at most)",
            SUN_PATH_MAX - 1
        ));
    }
    match bytes.first() {
        Some(b'/') => Ok(NotifyAddr::Path(PathBuf::from(value))),
        Some(b'@') if bytes.len() > 1 => Ok(NotifyAddr::Abstract(bytes[1..].to_vec())),
        _ if bytes.starts_with(b"vsock:") => Err(format!(
            "`{shown}`: vsock notification sockets are not supported"
        )),
        _ => Err(format!(
            "`{shown}` is neither an absolute path nor @abstract-name"
        )),
    }
}

/// A readiness channel to the service manager.
#[derive(Debug)]
pub struct Notifier {
    addr: SocketAddr,
    socket: UnixDatagram,
}

impl Notifier {
    /// Reads and unsets `$NOTIFY_SOCKET`; `None` when Lessl does not run under a service
    /// manager that asked for notifications. Call before starting threads.
    pub fn take_from_env() -> Result<Option<Notifier>, String> {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        std::env::remove_var("NOTIFY_SOCKET");
        let addr = parse_notify_socket(&value).map_err(|e| format!("NOTIFY_SOCKET: {e}"))?;
        Notifier::connect(&addr)
            .map(Some)
            .map_err(|e| format!("NOTIFY_SOCKET: {e}"))
    }

    /// A notifier sending to `addr`. Nothing is sent yet, so a missing socket shows at the
    /// first message, as with sd_notify.
    pub fn connect(addr: &NotifyAddr) -> io::Result<Notifier> {
        let addr = match addr {
            NotifyAddr::Path(p) => SocketAddr::from_pathname(p)?,
            NotifyAddr::Abstract(name) => SocketAddr::from_abstract_name(name)?,
        };
        Ok(Notifier {
            addr,
            socket: UnixDatagram::unbound()?,
        })
    }

    /// `READY=1`: the API accepts connections. MAINPID tells the manager which process that
    /// is, should Lessl ever be started through a wrapper.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!(
            "READY=1\nMAINPID={}\nSTATUS={}",
            std::process::id(),
            one_line(status)
        ))
    }

    /// `STOPPING=1`: shutdown began; the manager waits for the exit (TimeoutStopSec).
    pub fn stopping(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)))
    }

    /// One datagram, whole: the manager reads each message as one `recvmsg`.
    pub fn send(&self, message: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(message.as_bytes(), &self.addr)?;
        if sent != message.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                message.len()
            )));
        }
        Ok(())
    }
}

/// A newline would start another `KEY=value` assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// What systemd handed this process at start. The default is "not under systemd", which is
/// what tests that run the server in-process get.
#[derive(Debug, Default)]
pub struct Supervision {
    /// Where readiness goes, when a manager asked for it.
    pub notifier: Option<Notifier>,
    /// The listener came from socket activation: its socket file, if any, belongs to the
    /// `.socket` unit and must outlive this process.
    pub socket_inherited: bool,
}

impl Supervision {
    /// Tells the manager the API is up. A failure is logged, not fatal: the manager then
    /// times the start out, which says more than Lessl refusing to serve.
    pub fn ready(&self, listening: &str) {
        if let Some(n) = &self.notifier {
            if let Err(e) = n.ready(&format!("listening on {listening}")) {
                log!("systemd notify (READY=1) failed: {e}");
            }
        }
    }

    /// Tells the manager shutdown began.
    pub fn stopping(&self) {
        if let Some(n) = &self.notifier {
            if let Err(e) = n.stopping("shutting down: draining in-flight requests") {
                log!("systemd notify (STOPPING=1) failed: {e}");
            }
        }
    }
}

/// How many fds `LISTEN_PID`/`LISTEN_FDS` pass to the process `own_pid`, as sd_listen_fds
/// counts them: none when the variables are absent or meant for another process (a parent
/// that forgot to unset them).
pub fn listen_fds_count(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    own_pid: u32,
) -> Result<usize, String> {
    let Some(pid) = listen_pid else {
        return Ok(0);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_PID `{pid}` is not a process id"))?;
    if pid != own_pid {
        return Ok(0);
    }
    let Some(fds) = listen_fds else {
        return Ok(0);
    };
    fds.trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS `{fds}` is not a count"))
}

/// A listening socket inherited from the service manager.
#[derive(Debug)]
pub enum Inherited {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Takes the socket systemd passed on fd 3, if `LISTEN_PID` names this process, and unsets
/// `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` in every case. Call before starting
/// threads: it changes the environment and adopts fd 3.
pub fn take_listen_fds() -> Result<Option<Inherited>, String> {
    let var = |k| std::env::var_os(k).map(|v: OsString| v.to_string_lossy().into_owned());
    let pid = var("LISTEN_PID");
    let fds = var("LISTEN_FDS");
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let n = listen_fds_count(pid.as_deref(), fds.as_deref(), std::process::id())
        .map_err(|e| format!("socket activation: {e}"))?;
    match n {
        0 => Ok(None),
        1 => {
            // systemd passes the fd without close-on-exec; setting it also proves fd 3 is
            // open before anything takes ownership of it.
            // SAFETY: fcntl(F_SETFD) only changes fd 3's flags, or fails with EBADF.
            if unsafe { libc::fcntl(LISTEN_FDS_START, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
                return Err(format!(
                    "socket activation: LISTEN_FDS=1 but fd {LISTEN_FDS_START} is unusable: {}",
                    io::Error::last_os_error()
                ));
            }
            // SAFETY: LISTEN_PID names this process, so by the protocol fd 3 was passed to
            // it, fcntl just showed it open, and nothing else in Lessl owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
            classify(fd)
                .map(Some)
                .map_err(|e| format!("socket activation: fd {LISTEN_FDS_START}: {e}"))
        }
        n => Err(format!(
            "socket activation: LISTEN_FDS={n}, but Lessl serves exactly one socket \
             (give the .socket unit one Listen line)"
        )),
    }
}

/// Decides what kind of socket `fd` is: a listening stream socket, TCP or Unix. Anything else
/// (a datagram socket, a connection, a file) is refused here rather than failing every
/// accept later.
pub fn classify(fd: OwnedFd) -> Result<Inherited, String> {
    let kind = sockopt(&fd, libc::SO_TYPE).map_err(|e| format!("not a socket ({e})"))?;
    if kind != libc::SOCK_STREAM {
        return Err(format!(
            "not a stream socket (SO_TYPE {kind}); use ListenStream="
        ));
    }
    if sockopt(&fd, libc::SO_ACCEPTCONN).map_err(|e| format!("SO_ACCEPTCONN: {e}"))? == 0 {
        return Err("the socket is not listening".into());
    }
    // getsockname through std: each type's local_addr fails on the other family.
    let unix = UnixListener::from(fd);
    if unix.local_addr().is_ok() {
        return Ok(Inherited::Unix(unix));
    }
    let tcp = TcpListener::from(OwnedFd::from(unix));
    match tcp.local_addr() {
        Ok(_) => Ok(Inherited::Tcp(tcp)),
        Err(e) => Err(format!("neither a TCP nor a Unix socket ({e})")),
    }
}

fn sockopt(fd: &OwnedFd, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: value and len point at an int and its size, as getsockopt requires.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut c_int).cast(),
            &mut len,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lessl-systemd-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn notify_socket_addresses() {
        assert_eq!(
            parse_notify_socket(OsStr::new("/run/systemd/notify")),
            Ok(NotifyAddr::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_notify_socket(OsStr::new("@/org/freedesktop/systemd1/notify/123")),
            Ok(NotifyAddr::Abstract(
                b"/org/freedesktop/systemd1/notify/123".to_vec()
            ))
        );
        for bad in ["", "@", "relative/notify", "vsock:2:1234"] {
            assert!(parse_notify_socket(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        let long = format!("/{}", "x".repeat(SUN_PATH_MAX));
        assert!(parse_notify_socket(OsStr::new(&long))
            .unwrap_err()
            .contains("longer"));
    }

    #[test]
    fn listen_fds_follow_sd_listen_fds() {
        assert_eq!(listen_fds_count(None, None, 7), Ok(0));
        assert_eq!(listen_fds_count(None, Some("1"), 7), Ok(0));
        assert_eq!(listen_fds_count(Some("8"), Some("1"), 7), Ok(0));
        assert_eq!(listen_fds_count(Some("7"), Some("1"), 7), Ok(1));
        assert_eq!(listen_fds_count(Some("7"), Some("2"), 7), Ok(2));
        assert_eq!(listen_fds_count(Some("7"), None, 7), Ok(0));
        assert!(listen_fds_count(Some("x"), Some("1"), 7).is_err());
        assert!(listen_fds_count(Some("7"), Some("-1"), 7).is_err());
    }

    #[test]
    fn messages_reach_path_and_abstract_sockets() {
        let dir = temp_dir("notify");
        let path = dir.join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::connect(&NotifyAddr::Path(path.clone())).unwrap();
        n.ready("listening on\nsomewhere").unwrap();
        let mut buf = [0u8; 512];
        let len = receiver.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..len]).unwrap();
        assert_eq!(
            msg,
            format!(
                "READY=1\nMAINPID={}\nSTATUS=listening on somewhere",
                std::process::id()
            )
        );

        let name = format!("lessl-test-notify-{}", std::process::id());
        let abstract_addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&abstract_addr).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let addr = parse_notify_socket(OsStr::new(&format!("@{name}"))).unwrap();
        Notifier::connect(&addr).unwrap().stopping("bye").unwrap();
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=bye");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn classify_tells_tcp_unix_and_the_rest() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        match classify(OwnedFd::from(tcp)).unwrap() {
            Inherited::Tcp(l) => assert_eq!(l.local_addr().unwrap(), addr),
            other => panic!("{other:?}"),
        }

        let dir = temp_dir("classify");
        let unix = UnixListener::bind(dir.join("s")).unwrap();
        assert!(matches!(
            classify(OwnedFd::from(unix)).unwrap(),
            Inherited::Unix(_)
        ));

        let dgram = UnixDatagram::bind(dir.join("d")).unwrap();
        assert!(classify(OwnedFd::from(dgram))
            .unwrap_err()
            .contains("not a stream"));

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let conn = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(classify(OwnedFd::from(conn))
            .unwrap_err()
            .contains("not listening"));

        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(classify(OwnedFd::from(file))
            .unwrap_err()
            .contains("not a socket"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
