//! The wire protocol between Lessl and the agent in a task container: requests are JSON
//! lines, answers are binary frames. They travel over the container's attach stream (the
//! agent's stdin and stdout) and, where Lessl offers one, over the agent's lane: a Unix socket
//! that bypasses the engine, where a request line may be followed by raw bytes ([`Request::payload`]).
//! Pure encoding, decoding and stream synchronisation, shared by both ends; no I/O.
//!
//! An attach stream may start anywhere in the agent's output (the previous Lessl process was
//! attached before, and its commands keep answering), so a reader first runs a [`Sync`]: it
//! sends a hello carrying a fresh random nonce and discards every byte until the exact encoded
//! [`Frame::Hello`] with that nonce; only then does the [`Decoder`] see the stream.

use serde::{Deserialize, Serialize};

/// One line for the agent: a command to run, or a hello to answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Chosen by Lessl, unique across Lessl processes (a random per-process prefix in the high
    /// 32 bits); echoed on every frame of the answer.
    pub id: u64,
    /// A hello: the agent answers [`Frame::Hello`] with these 32 hex digits and runs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<String>,
    /// Program and arguments (a shell command arrives as `/bin/sh -c ...`).
    #[serde(default)]
    pub argv: Vec<String>,
    /// Added to the container's environment for this command.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory, created if missing.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Wall-clock limit; the command's process group is killed past it.
    #[serde(default)]
    pub timeout_ms: u64,
    /// Bytes forwarded per stream; the rest is read and dropped.
    #[serde(default)]
    pub output_bytes: u64,
    /// Base64 of the bytes the command reads on stdin, then end of file; absent: end of
    /// file at once. Never sent when absent, so an older agent still reads every request
    /// without stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_base64: Option<String>,
    /// Files to place instead of a command to run: the agent writes them all (or none) and
    /// answers [`Frame::Placed`]; `argv` and the rest are then ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<Place>,
    /// An offer of the lane: the agent connects to [`LANE_SOCKET`], writes these 32 hex
    /// digits and a newline, and reads requests there too (answering each where it came from).
    /// Sent on stdin only, as a line of its own, so an older agent just ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    /// Raw bytes that follow this line on the lane (never on stdin, where a line cut by a dead
    /// Lessl is ended by the next one's empty line): the data of the [`PlaceEntry`]s that
    /// give a `size`, in order, or the command's stdin.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub payload: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where Lessl mounts the directory of a container's lane (read-only): inside the agent's
/// own directory, which every placement rule already keeps tasks out of.
pub const LANE_DIR: &str = "/.lessl/lane";
/// The socket Lessl listens on while it offers the lane, as the agent sees it.
pub const LANE_SOCKET: &str = "/.lessl/lane/s";

/// A task's resources for the agent to write, in the order of the spec. Every path was
/// checked by Lessl (the tar rules of `src/tar.rs`, nothing reserved); the agent checks them
/// again, and walks every directory itself without following a symlink out of the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    pub resources: Vec<PlaceResource>,
}

/// One resource: its entries, and the directory its `dest` names (a file's parent, an
/// archive's `dest`), so a refusal names `dest` or `data` as the API does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceResource {
    pub home: String,
    /// An archive: a fault in one of its entries is the resource's `data`, not its `dest`.
    #[serde(default)]
    pub archive: bool,
    pub entries: Vec<PlaceEntry>,
}

/// One thing to create, at an absolute, clean path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceEntry {
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (0o7777).
    #[serde(default)]
    pub mode: u32,
    /// A symlink's target, or the absolute path of an earlier entry a hard link names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link: String,
    /// A file's bytes, base64 (standard alphabet, padded): JSON lines cannot carry raw bytes,
    /// and a line cut by a dead Lessl is ended by the next one's empty line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    /// Instead of `data`: the file's bytes are the next `size` bytes of the request's payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl Place {
    /// Total of the entries' `size`s: the payload that must follow the request.
    pub fn payload_len(&self) -> u64 {
        self.entries().filter_map(|e| e.size).sum()
    }

    /// For a transport without payloads (stdin): the bytes of every entry that has a `size`
    /// (`parts`, one per such entry, in order) moved into its `data` as base64.
    pub fn inline<B: AsRef<[u8]>>(&mut self, parts: &[B]) {
        use base64::Engine as _;
        let mut parts = parts.iter();
        for e in self.resources.iter_mut().flat_map(|r| r.entries.iter_mut()) {
            if e.size.take().is_some() {
                let part = parts.next().map(AsRef::as_ref).unwrap_or_default();
                e.data = base64::engine::general_purpose::STANDARD.encode(part);
            }
        }
    }

    fn entries(&self) -> impl Iterator<Item = &PlaceEntry> {
        self.resources.iter().flat_map(|r| r.entries.iter())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Hardlink,
}

/// The answer to a [`Place`] request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Placed {
    /// None: every entry is in place. Otherwise nothing was placed, and this says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
}

/// Why a [`Place`] request placed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Index of the resource at fault in [`Place::resources`].
    pub index: usize,
    /// `dest` or `data`: the spec field of that resource at fault.
    pub field: String,
    pub reason: String,
    /// True when the rules forbid it (a symlink leading into `/.lessl`, say): the client's
    /// error. False when the file system said no (permissions, a file in the way, no space):
    /// the engine's archive upload, which writes as root, may still succeed.
    pub forbidden: bool,
}

impl Request {
    /// A hello carrying `nonce`.
    pub fn hello(nonce: Nonce) -> Request {
        Request {
            id: 0,
            hello: Some(hex(&nonce)),
            argv: Vec::new(),
            env: Vec::new(),
            cwd: None,
            timeout_ms: 0,
            output_bytes: 0,
            stdin_base64: None,
            place: None,
            lane: None,
            payload: 0,
        }
    }

    /// An offer of the lane, with its one-time token.
    pub fn lane(token: &str) -> Request {
        Request {
            lane: Some(token.to_string()),
            ..Request::hello([0; 16])
        }
        .without_hello()
    }

    /// A request to place files.
    pub fn place(place: Place) -> Request {
        Request {
            payload: place.payload_len(),
            place: Some(place),
            ..Request::hello([0; 16])
        }
        .without_hello()
    }

    fn without_hello(mut self) -> Request {
        self.hello = None;
        self
    }

    /// The request as one line for the agent's stdin.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a request always serializes");
        line.push(b'\n');
        line
    }

    /// The nonce of a hello request, if this is one and it is well-formed.
    pub fn hello_nonce(&self) -> Option<Nonce> {
        let text = self.hello.as_deref()?;
        if text.len() != 32 {
            return None;
        }
        let mut nonce = [0u8; 16];
        for (i, byte) in nonce.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(nonce)
    }
}

/// 128 random bits chosen by Lessl for each attach.
pub type Nonce = [u8; 16];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a command ended, in the last frame of its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The command's exit code, 128+N for signal N, 124 on timeout, 126/127 when it could
    /// not start.
    pub exit_code: i32,
    pub timed_out: bool,
    pub oom_killed: bool,
}

/// One frame from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Stdout(u64, Vec<u8>),
    Stderr(u64, Vec<u8>),
    Exit(u64, Exit),
    /// Answer to a hello: everything after it is this attach's to read.
    Hello(Nonce),
    /// The agent read request `id` and spawned its command (or failed to, and says so).
    Started(u64),
    /// The agent's stdin reached end of file: it reads no request any more, but finishes
    /// (and answers) the ones it started.
    Closed,
    /// The answer to a request to place files.
    Placed(u64, Placed),
}

const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const EXIT: u8 = 3;
const HELLO: u8 = 5;
const STARTED: u8 = 6;
const CLOSED: u8 = 7;
const PLACED: u8 = 8;
/// `[kind u8][id u64 BE][len u32 BE]`.
const HEADER: usize = 13;
/// Largest payload a frame may claim; the agent sends at most 64 KiB of output per frame,
/// so anything bigger is a broken stream, not something to allocate for.
pub const MAX_PAYLOAD: usize = 1 << 20;

impl Frame {
    /// `[kind u8][id u64 BE][len u32 BE][payload]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// [`Frame::encode`] appended to `out`: output payloads are copied once, not twice.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let owned;
        let (kind, id, payload): (u8, u64, &[u8]) = match self {
            Frame::Stdout(id, b) => (STDOUT, *id, b),
            Frame::Stderr(id, b) => (STDERR, *id, b),
            Frame::Exit(id, e) => {
                owned = serde_json::to_vec(e).expect("exit serializes");
                (EXIT, *id, &owned)
            }
            Frame::Hello(nonce) => (HELLO, 0, nonce),
            Frame::Started(id) => (STARTED, *id, &[]),
            Frame::Closed => (CLOSED, 0, &[]),
            Frame::Placed(id, p) => {
                owned = serde_json::to_vec(p).expect("placed serializes");
                (PLACED, *id, &owned)
            }
        };
        out.reserve(HEADER + payload.len());
        out.push(kind);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// The request this frame answers, if it answers one.
    pub fn id(&self) -> Option<u64> {
        match self {
            Frame::Stdout(id, _) | Frame::Stderr(id, _) | Frame::Exit(id, _) => Some(*id),
            Frame::Started(id) | Frame::Placed(id, _) => Some(*id),
            Frame::Hello(_) | Frame::Closed => None,
        }
    }
}

/// Why a byte stream is not a sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    UnknownKind(u8),
    Oversized(usize),
    /// A frame whose payload cannot have that length (a hello not of 16 bytes, say).
    BadLength {
        kind: u8,
        len: usize,
    },
    BadExit(String),
    BadPlaced(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::UnknownKind(k) => write!(f, "agent frame of unknown kind {k}"),
            DecodeError::Oversized(n) => write!(f, "agent frame of {n} bytes is over the limit"),
            DecodeError::BadLength { kind, len } => {
                write!(f, "agent frame of kind {kind} cannot carry {len} bytes")
            }
            DecodeError::BadExit(e) => write!(f, "agent exit frame unreadable: {e}"),
            DecodeError::BadPlaced(e) => write!(f, "agent placed frame unreadable: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reassembles frames from arbitrarily split chunks. Buffers at most one frame.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    failed: Option<DecodeError>,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Feeds one chunk and returns every frame it completed. After an error the decoder
    /// stays failed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Frame>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut at = 0;
        while self.buf.len() - at >= HEADER {
            let h = &self.buf[at..at + HEADER];
            let kind = h[0];
            let id = u64::from_be_bytes(h[1..9].try_into().expect("8 bytes"));
            let len = u32::from_be_bytes(h[9..13].try_into().expect("4 bytes")) as usize;
            if len > MAX_PAYLOAD {
                return Err(self.fail(DecodeError::Oversized(len)));
            }
            let fixed = match kind {
                HELLO => Some(16),
                STARTED | CLOSED => Some(0),
                _ => None,
            };
            if fixed.is_some_and(|want| want != len) {
                return Err(self.fail(DecodeError::BadLength { kind, len }));
            }
            if self.buf.len() - at < HEADER + len {
                break;
            }
            let payload = &self.buf[at + HEADER..at + HEADER + len];
            let frame = match kind {
                STDOUT => Frame::Stdout(id, payload.to_vec()),
                STDERR => Frame::Stderr(id, payload.to_vec()),
                EXIT => match serde_json::from_slice(payload) {
                    Ok(e) => Frame::Exit(id, e),
                    Err(e) => return Err(self.fail(DecodeError::BadExit(e.to_string()))),
                },
                HELLO => Frame::Hello(payload.try_into().expect("length checked")),
                STARTED => Frame::Started(id),
                CLOSED => Frame::Closed,
                PLACED => match serde_json::from_slice(payload) {
                    Ok(p) => Frame::Placed(id, p),
                    Err(e) => return Err(self.fail(DecodeError::BadPlaced(e.to_string()))),
                },
                other => return Err(self.fail(DecodeError::UnknownKind(other))),
            };
            frames.push(frame);
            at += HEADER + len;
        }
        self.buf.drain(..at);
        Ok(frames)
    }

    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.failed = Some(e.clone());
        self.buf.clear();
        e
    }
}

/// Finds the start of this attach's part of the stream: discards bytes until the exact
/// encoding of `Frame::Hello(nonce)` has gone by, across any split. Keeps at most one hello's
/// worth of bytes.
#[derive(Debug)]
pub struct Sync {
    /// The encoded hello frame awaited.
    hello: Vec<u8>,
    /// The last bytes seen before the hello (fewer than the hello's length).
    window: Vec<u8>,
    synced: bool,
}

impl Sync {
    pub fn new(nonce: Nonce) -> Self {
        Sync {
            hello: Frame::Hello(nonce).encode(),
            window: Vec::new(),
            synced: false,
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Feeds one chunk; returns the bytes of it that follow the hello (all of it once synced,
    /// none before).
    pub fn feed<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        if self.synced {
            return chunk;
        }
        // The hello may start in the window and end in this chunk: search their join, but
        // only as far as the window's bytes plus enough of the chunk to complete a hello.
        let head = &chunk[..chunk.len().min(self.hello.len())];
        let mut joined = std::mem::take(&mut self.window);
        joined.extend_from_slice(head);
        if let Some(end) = find(&joined, &self.hello) {
            self.synced = true;
            let used = end - (joined.len() - head.len());
            return &chunk[used..];
        }
        if let Some(end) = find(chunk, &self.hello) {
            self.synced = true;
            return &chunk[end..];
        }
        let tail = if chunk.len() >= self.hello.len() {
            &chunk[chunk.len() - (self.hello.len() - 1)..]
        } else {
            let keep = joined.len().min(self.hello.len() - 1);
            self.window = joined[joined.len() - keep..].to_vec();
            return &[];
        };
        self.window = tail.to_vec();
        &[]
    }
}

/// The end of the first occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .map(|at| at + needle.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: Nonce = *b"0123456789abcdef";

    fn sample() -> Vec<Frame> {
        vec![
            Frame::Started(1),
            Frame::Stdout(1, b"hello\n".to_vec()),
            Frame::Stderr(1, Vec::new()),
            Frame::Stderr(u64::MAX, vec![0, 255, 10]),
            Frame::Exit(
                1,
                Exit {
                    exit_code: 3,
                    timed_out: false,
                    oom_killed: true,
                },
            ),
            Frame::Hello(NONCE),
            Frame::Closed,
            Frame::Placed(2, Placed::default()),
            Frame::Placed(
                3,
                Placed {
                    refused: Some(Refusal {
                        index: 1,
                        field: "dest".into(),
                        reason: "goes through /tmp/x into /.lessl".into(),
                        forbidden: true,
                    }),
                },
            ),
        ]
    }

    #[test]
    fn frames_survive_every_split() {
        let bytes: Vec<u8> = sample().iter().flat_map(Frame::encode).collect();
        for cut in 0..=bytes.len() {
            let mut d = Decoder::new();
            let mut got = d.feed(&bytes[..cut]).unwrap();
            got.extend(d.feed(&bytes[cut..]).unwrap());
            assert_eq!(got, sample(), "split at {cut}");
        }
        let mut d = Decoder::new();
        let got: Vec<Frame> = bytes.iter().flat_map(|b| d.feed(&[*b]).unwrap()).collect();
        assert_eq!(got, sample());
    }

    #[test]
    fn broken_streams_are_errors() {
        let header = |kind: u8, len: u32| {
            let mut h = vec![kind];
            h.extend_from_slice(&1u64.to_be_bytes());
            h.extend_from_slice(&len.to_be_bytes());
            h
        };
        let mut d = Decoder::new();
        assert_eq!(d.feed(&header(9, 0)), Err(DecodeError::UnknownKind(9)));
        assert!(d.feed(&Frame::Closed.encode()).is_err(), "stays failed");
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&header(1, 0xff00_0000)),
            Err(DecodeError::Oversized(0xff00_0000))
        );
        let mut d = Decoder::new();
        let mut bad = header(3, 2);
        bad.extend_from_slice(b"{x");
        assert!(matches!(d.feed(&bad), Err(DecodeError::BadExit(_))));
        // A wrong length is refused from the header alone, before any payload arrives.
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&header(HELLO, 15)),
            Err(DecodeError::BadLength {
                kind: HELLO,
                len: 15
            })
        );
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&header(STARTED, 1)),
            Err(DecodeError::BadLength {
                kind: STARTED,
                len: 1
            })
        );
    }

    /// What an attach may see before its hello: the tail of an old frame, old frames whole,
    /// a hello of another attach, and bytes that almost make our hello.
    fn noise() -> Vec<u8> {
        let mut n = Frame::Stdout(7, b"old output".to_vec()).encode()[5..].to_vec();
        n.extend(
            Frame::Exit(
                7,
                Exit {
                    exit_code: 7,
                    timed_out: false,
                    oom_killed: false,
                },
            )
            .encode(),
        );
        n.extend(Frame::Hello(*b"another attach!!").encode());
        let ours = Frame::Hello(NONCE).encode();
        n.extend_from_slice(&ours[..ours.len() - 1]);
        n.extend_from_slice(&[0xff; 3]);
        n.extend_from_slice(&ours[..4]);
        n
    }

    #[test]
    fn sync_finds_the_hello_at_every_split() {
        let mut bytes = noise();
        bytes.extend(Frame::Hello(NONCE).encode());
        let after: Vec<u8> = sample().iter().flat_map(Frame::encode).collect();
        bytes.extend(&after);
        for cut in 0..=bytes.len() {
            let mut s = Sync::new(NONCE);
            let mut got = s.feed(&bytes[..cut]).to_vec();
            got.extend_from_slice(s.feed(&bytes[cut..]));
            assert!(s.is_synced());
            assert_eq!(got, after, "split at {cut}");
        }
        for cuts in [(3, 40), (20, 21), (50, 70), (1, 2)] {
            let mut s = Sync::new(NONCE);
            let mut got = s.feed(&bytes[..cuts.0]).to_vec();
            got.extend_from_slice(s.feed(&bytes[cuts.0..cuts.1]));
            got.extend_from_slice(s.feed(&bytes[cuts.1..]));
            assert_eq!(got, after, "splits at {cuts:?}");
        }
        let mut s = Sync::new(NONCE);
        let got: Vec<u8> = bytes.iter().flat_map(|b| s.feed(&[*b]).to_vec()).collect();
        assert_eq!(got, after);
    }

    #[test]
    fn sync_then_decode_yields_only_this_attach() {
        let mut bytes = noise();
        bytes.extend(Frame::Hello(NONCE).encode());
        bytes.extend(sample().iter().flat_map(Frame::encode));
        for cut in 0..=bytes.len() {
            let (mut s, mut d) = (Sync::new(NONCE), Decoder::new());
            let mut got = d.feed(s.feed(&bytes[..cut])).unwrap();
            got.extend(d.feed(s.feed(&bytes[cut..])).unwrap());
            assert_eq!(got, sample(), "split at {cut}");
        }
    }

    #[test]
    fn sync_never_fires_without_the_exact_hello() {
        let mut s = Sync::new(NONCE);
        assert!(s.feed(&noise()).is_empty());
        assert!(s.feed(&[0u8; 100]).is_empty());
        assert!(!s.is_synced());
    }

    #[test]
    fn requests_are_one_json_line() {
        let r = Request {
            id: u64::MAX - 1,
            hello: None,
            argv: vec!["/bin/sh".into(), "-c".into(), "echo 'a\nb'".into()],
            env: vec![("K".into(), "V".into())],
            cwd: Some("/opt".into()),
            timeout_ms: 1000,
            output_bytes: 11,
            stdin_base64: Some("AAEC/w==".into()),
            place: None,
            lane: None,
            payload: 0,
        };
        let line = r.to_line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(*line.last().unwrap(), b'\n');
        let back: Request = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, r);
        let hello: Request = serde_json::from_slice(&Request::hello(NONCE).to_line()).unwrap();
        // A lane offer is a line of its own, naming only its token.
        let offer = Request::lane("ab".repeat(16).as_str()).to_line();
        let text = String::from_utf8(offer.clone()).unwrap();
        assert_eq!(text, format!("{{\"id\":0,\"argv\":[],\"env\":[],\"cwd\":null,\"timeout_ms\":0,\"output_bytes\":0,\"lane\":\"{}\"}}\n", "ab".repeat(16)));
        let offer: Request = serde_json::from_slice(&offer).unwrap();
        assert_eq!((offer.hello, offer.payload), (None, 0));
        assert_eq!(hello.hello_nonce(), Some(NONCE));
        assert_eq!(r.hello_nonce(), None);
        let place = Request::place(Place {
            resources: vec![PlaceResource {
                home: "/opt".into(),
                archive: false,
                entries: vec![PlaceEntry {
                    path: "/opt/job.sh".into(),
                    kind: EntryKind::File,
                    mode: 0o755,
                    link: String::new(),
                    data: "IyEvYmluL3NoCg==".into(),
                    size: None,
                }],
            }],
        });
        let line = place.to_line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let back: Request = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, place);
        // Written by hand, parsed as serde would: quotes, links, several resources, no data.
        let mut many = place.place.clone().unwrap();
        many.resources.push(PlaceResource {
            home: "/srv/\"odd\"\n".into(),
            archive: true,
            entries: vec![
                PlaceEntry {
                    path: "/srv/\"odd\"\n/l".into(),
                    kind: EntryKind::Symlink,
                    mode: 0o777,
                    link: "../x\\y".into(),
                    data: String::new(),
                    size: None,
                },
                PlaceEntry {
                    path: "/srv/d".into(),
                    kind: EntryKind::Dir,
                    mode: 0o750,
                    link: String::new(),
                    data: "not base64 \"\n".into(),
                    size: None,
                },
            ],
        });
        let r = Request::place(many);
        let line = r.to_line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(serde_json::from_slice::<Request>(&line).unwrap(), r);
        let mut by_serde = serde_json::to_vec(&r).unwrap();
        by_serde.push(b'\n');
        assert_eq!(
            serde_json::from_slice::<Request>(&by_serde).unwrap(),
            serde_json::from_slice::<Request>(&line).unwrap()
        );
        assert!(back.hello.is_none());
    }
}
