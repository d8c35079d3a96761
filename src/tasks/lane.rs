//! The agent's lane: a Unix socket per container, past the engine, for requests and answers
//! that would otherwise take two extra copies through dockerd and the runtime's shim. Owns the
//! lane directories (`<state-dir>/<instance>/lanes/<key>`, bind-mounted read-only at
//! [`LANE_DIR`] in the container), the listener offered for one attach, and the token check
//! that tells the agent from anything else in the container. Never talks to Docker.
//!
//! Why it is safe to offer: the directory is read-only in the container, so nothing there can
//! replace or redirect the socket; Lessl listens only from an offer until the agent's
//! connection (seconds at most), then unlinks the socket; a connection counts only once it
//! sent the offer's one-time token, which travels on the agent's stdin, readable by no
//! command (the agent is non-dumpable). A command that connects gets nothing and learns
//! nothing; at most [`MAX_CHECKS`] such connections are read at once, each for
//! [`TOKEN_WAIT`] at most.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};

use crate::agent::protocol::LANE_DIR;
use crate::log;
use crate::metrics::{LaneOutcome, METRICS};

/// Name of the socket in a lane's directory (the agent connects to `LANE_SOCKET`).
const SOCKET: &str = "s";
/// How long one connection has to send the token.
const TOKEN_WAIT: Duration = Duration::from_secs(1);
/// Connections whose token is being read at once; more wait in the backlog.
const MAX_CHECKS: usize = 8;
/// A lane directory that no container names is removed once it is this old: one being
/// created right now (its container not made yet) is younger.
const SWEEP_AGE: Duration = Duration::from_secs(120);

/// The lane directories of this instance, and which container each belongs to.
pub struct Lanes {
    /// `<state-dir>/<instance>/lanes`; None: no lanes (no usable state directory, or a path
    /// a bind cannot name).
    root: Option<PathBuf>,
    /// Lane key of each container with one, by container id: its directory goes with it.
    keys: Mutex<HashMap<String, String>>,
}

/// A listener offered to one container's agent, with the token it must send.
pub struct Offer {
    listener: UnixListener,
    path: PathBuf,
    token: String,
}

/// Why an offer ended without a lane.
#[derive(Debug, PartialEq, Eq)]
pub enum LaneError {
    /// No connection sent the token in time (an older agent, or a runtime without host
    /// sockets): the attach stream carries everything, as before lanes.
    NoAgent,
}

impl Lanes {
    /// No lanes: every request goes over the attach stream.
    pub fn disabled() -> Lanes {
        Lanes {
            root: None,
            keys: Mutex::default(),
        }
    }

    /// Lanes under `root` (created, `0711`: no listing of the keys), or none when it cannot
    /// be made or named in a bind.
    pub fn open(root: PathBuf) -> Lanes {
        if root.to_str().is_none_or(|s| s.contains([':', ','])) {
            log!(warn: "lanes disabled: {} cannot be named in a bind", root.display());
            return Lanes::disabled();
        }
        let made = std::fs::create_dir_all(&root)
            .and_then(|()| std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)));
        if let Err(e) = made {
            log!(warn: "lanes disabled: {}: {e}; agents are reached through the engine only", root.display());
            return Lanes::disabled();
        }
        Lanes {
            root: Some(root),
            keys: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.root.is_some()
    }

    /// A new lane directory for a container about to be made: its key (for the container's
    /// label) and the `HostConfig.Binds` entry that mounts it. None: the container gets none.
    pub fn prepare(&self) -> Option<(String, String)> {
        let root = self.root.as_ref()?;
        let key = random_hex();
        let dir = root.join(&key);
        let made = std::fs::create_dir(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)));
        if let Err(e) = made {
            log!(warn: "no lane for a new container: {}: {e}", dir.display());
            return None;
        }
        let bind = format!("{}:{LANE_DIR}:ro", dir.display());
        Some((key, bind))
    }

    /// Remembers that container `id` has the lane `key` (at creation, or read from its label
    /// after a restart). A key that is not one Lessl makes is ignored.
    pub fn adopt(&self, id: &str, key: &str) {
        if is_key(key) && self.enabled() {
            let mut keys = self.keys.lock().unwrap();
            keys.insert(id.to_string(), key.to_string());
        }
    }

    /// The key of container `id`'s lane, if it has one.
    pub fn key_of(&self, id: &str) -> Option<String> {
        self.keys.lock().unwrap().get(id).cloned()
    }

    /// Listens in container `id`'s lane directory for one agent connection. None when the
    /// container has no lane or the socket cannot be made (logged).
    pub fn offer(&self, id: &str) -> Option<Offer> {
        let dir = self.root.as_ref()?.join(self.key_of(id)?);
        let path = dir.join(SOCKET);
        // A previous process's socket, unlinked at its accept unless it crashed first.
        let _ = std::fs::remove_file(&path);
        let listener = bind(&dir, &path).and_then(|l| {
            // Any uid may connect (the agent runs as the task's user); the token decides.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
            Ok(l)
        });
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                log!(warn: "no lane offered: {}: {e}", path.display());
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        let token = random_hex();
        Some(Offer {
            listener,
            path,
            token,
        })
    }

    /// A lane made by [`Lanes::prepare`] for a container that was not made after all.
    pub fn discard(&self, key: &str) {
        if let (Some(root), true) = (&self.root, is_key(key)) {
            let _ = std::fs::remove_dir_all(root.join(key));
        }
    }

    /// Container `id` is gone: so is its lane directory.
    pub fn release(&self, id: &str) {
        let key = self.keys.lock().unwrap().remove(id);
        if let (Some(root), Some(key)) = (&self.root, key) {
            let _ = std::fs::remove_dir_all(root.join(key));
        }
    }

    /// Removes lane directories no known container names (their containers went while no
    /// Lessl watched), sparing young ones whose container is still being made.
    pub fn sweep(&self) {
        let Some(root) = &self.root else { return };
        let Ok(entries) = std::fs::read_dir(root) else {
            return;
        };
        let known: Vec<String> = self.keys.lock().unwrap().values().cloned().collect();
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let young = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() < SWEEP_AGE);
            if !known.contains(&name) && !young {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Binds a listener at `path` in `dir`. A socket path has at most 107 bytes; a longer one
/// (a deep state directory) is reached through `/proc/self/fd`, which names `dir` shortly.
fn bind(dir: &Path, path: &Path) -> std::io::Result<UnixListener> {
    if path.as_os_str().len() < 100 {
        return UnixListener::bind(path);
    }
    let handle = std::fs::File::open(dir)?;
    use std::os::fd::AsRawFd;
    let short = format!("/proc/self/fd/{}/{SOCKET}", handle.as_raw_fd());
    UnixListener::bind(short)
}

/// 128 random bits as 32 hex digits: a lane's key, an offer's token.
fn random_hex() -> String {
    let mut raw = [0u8; 16];
    super::channel::random_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_key(key: &str) -> bool {
    key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Offer {
    /// The line the agent's stdin gets: the token it must send back.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Waits up to `within` for the agent: the first connection that sends the token. Every
    /// other connection is dropped unanswered. The socket is unlinked either way.
    pub async fn accept(self, within: Duration) -> Result<UnixStream, LaneError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut checks = tokio::task::JoinSet::new();
        let got = loop {
            tokio::select! {
                accepted = self.listener.accept(), if checks.len() < MAX_CHECKS => {
                    if let Ok((stream, _)) = accepted {
                        checks.spawn(check(stream, self.token.clone()));
                    }
                }
                Some(done) = checks.join_next() => match done {
                    Ok(Some(stream)) => break Ok(stream),
                    _ => METRICS.lane_ended(LaneOutcome::Refused),
                },
                () = tokio::time::sleep_until(deadline) => break Err(LaneError::NoAgent),
            }
        };
        METRICS.lane_ended(match got {
            Ok(_) => LaneOutcome::Up,
            Err(LaneError::NoAgent) => LaneOutcome::NoAgent,
        });
        got
    }
}

impl Drop for Offer {
    /// Nobody listens any more: the socket goes, so a command finds nothing to connect to.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads the token line from one connection: the stream when it is right, None otherwise.
async fn check(mut stream: UnixStream, token: String) -> Option<UnixStream> {
    let mut got = vec![0u8; token.len() + 1];
    let read = tokio::time::timeout(TOKEN_WAIT, stream.read_exact(&mut got)).await;
    let right = matches!(read, Ok(Ok(_)))
        && got[..token.len()] == *token.as_bytes()
        && got[token.len()] == b'\n';
    right.then_some(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn temp_root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lessl-lane-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn the_connection_with_the_token_wins_and_others_get_nothing() {
        let root = temp_root("token");
        let lanes = Lanes::open(root.clone());
        let (key, bind) = lanes.prepare().unwrap();
        assert!(bind.ends_with(":/.lessl/lane:ro"), "{bind}");
        lanes.adopt("c1", &key);
        let offer = lanes.offer("c1").unwrap();
        let path = root.join(&key).join(SOCKET);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let token = offer.token().to_string();
        let accepting = tokio::spawn(offer.accept(Duration::from_secs(5)));
        // A wrong token, a silent connection and a half token are all refused...
        let mut wrong = UnixStream::connect(&path).await.unwrap();
        wrong
            .write_all(format!("{}\n", "0".repeat(32)).as_bytes())
            .await
            .unwrap();
        let _silent = UnixStream::connect(&path).await.unwrap();
        let mut half = UnixStream::connect(&path).await.unwrap();
        half.write_all(&token.as_bytes()[..16]).await.unwrap();
        drop(half);
        // ...and the right one is the lane, whatever came first.
        let mut agent = UnixStream::connect(&path).await.unwrap();
        agent
            .write_all(format!("{token}\n").as_bytes())
            .await
            .unwrap();
        let mut lane = accepting.await.unwrap().unwrap();
        lane.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        agent.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        // The wrong one was closed unanswered, and the socket is gone.
        let mut buf = [0u8; 1];
        assert_eq!(wrong.read(&mut buf).await.unwrap(), 0);
        assert!(!path.exists());
        assert!(UnixStream::connect(&path).await.is_err());
        lanes.release("c1");
        assert!(!root.join(&key).exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test(start_paused = true)]
    async fn an_offer_nobody_takes_ends_and_unlinks_its_socket() {
        let root = temp_root("nobody");
        let lanes = Lanes::open(root.clone());
        let (key, _) = lanes.prepare().unwrap();
        lanes.adopt("c", &key);
        let offer = lanes.offer("c").unwrap();
        let path = root.join(&key).join(SOCKET);
        assert!(path.exists());
        assert_eq!(
            offer.accept(Duration::from_secs(3)).await.unwrap_err(),
            LaneError::NoAgent
        );
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn keys_are_only_what_lessl_makes_and_sweeping_spares_known_and_young_lanes() {
        let root = temp_root("keys");
        let lanes = Lanes::open(root.clone());
        lanes.adopt("x", "../../etc");
        assert_eq!(lanes.key_of("x"), None);
        let (known, _) = lanes.prepare().unwrap();
        lanes.adopt("k", &known);
        let (young, _) = lanes.prepare().unwrap();
        let old = root.join("0".repeat(32));
        std::fs::create_dir(&old).unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        lanes.sweep();
        assert!(root.join(&known).exists());
        assert!(root.join(&young).exists());
        assert!(!old.exists());
        assert!(!Lanes::open(PathBuf::from("/tmp/a:b")).enabled());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_deep_directory_is_bound_through_proc() {
        let mut root = temp_root("deep");
        for _ in 0..8 {
            root.push("a-rather-long-directory-name");
        }
        let lanes = Lanes::open(root.clone());
        let (key, _) = lanes.prepare().unwrap();
        lanes.adopt("c", &key);
        let offer = lanes.offer("c").unwrap();
        let path = root.join(&key).join(SOCKET);
        assert!(path.as_os_str().len() > 108);
        assert!(std::fs::symlink_metadata(&path).is_ok());
        drop(offer);
        assert!(std::fs::symlink_metadata(&path).is_err());
        let _ = std::fs::remove_dir_all(temp_root("deep"));
    }
}
