//! The wire protocol between Lessl and the agent in a task container, over the container's
//! attach stream: requests are JSON lines on the agent's stdin; answers are binary frames on
//! its stdout. Pure encoding and decoding, shared by both ends; no I/O.

use serde::{Deserialize, Serialize};

/// One command for the agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Chosen by Lessl, unique per attach stream; echoed on every frame of the answer.
    pub id: u32,
    /// Program and arguments (a shell command arrives as `/bin/sh -c ...`). Empty: a ping.
    pub argv: Vec<String>,
    /// Added to the container's environment for this command.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory, created if missing.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Wall-clock limit; the command's process group is killed past it.
    pub timeout_ms: u64,
    /// Bytes forwarded per stream; the rest is read and dropped.
    pub output_bytes: u64,
}

impl Request {
    /// The request as one line for the agent's stdin.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a request always serializes");
        line.push(b'\n');
        line
    }
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

/// One frame of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Stdout(u32, Vec<u8>),
    Stderr(u32, Vec<u8>),
    Exit(u32, Exit),
    /// Answer to a ping (a request with no argv): the agent is there and reads stdin.
    Pong(u32),
}

const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const EXIT: u8 = 3;
const PONG: u8 = 4;
const HEADER: usize = 9;
/// Largest payload a frame may claim; the agent sends at most 64 KiB of output per frame,
/// so anything bigger is a broken stream, not something to allocate for.
pub const MAX_PAYLOAD: usize = 1 << 20;

impl Frame {
    /// `[kind u8][id u32 BE][len u32 BE][payload]`.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, id, payload): (u8, u32, Vec<u8>) = match self {
            Frame::Stdout(id, b) => (STDOUT, *id, b.clone()),
            Frame::Stderr(id, b) => (STDERR, *id, b.clone()),
            Frame::Exit(id, e) => (EXIT, *id, serde_json::to_vec(e).expect("exit serializes")),
            Frame::Pong(id) => (PONG, *id, Vec::new()),
        };
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.push(kind);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }
}

/// Why a byte stream is not a sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    UnknownKind(u8),
    Oversized(usize),
    BadExit(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::UnknownKind(k) => write!(f, "agent frame of unknown kind {k}"),
            DecodeError::Oversized(n) => write!(f, "agent frame of {n} bytes is over the limit"),
            DecodeError::BadExit(e) => write!(f, "agent exit frame unreadable: {e}"),
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
            let id = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
            let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
            if len > MAX_PAYLOAD {
                return Err(self.fail(DecodeError::Oversized(len)));
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
                PONG => Frame::Pong(id),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Frame> {
        vec![
            Frame::Pong(0),
            Frame::Stdout(1, b"hello\n".to_vec()),
            Frame::Stderr(1, Vec::new()),
            Frame::Stderr(2, vec![0, 255, 10]),
            Frame::Exit(
                1,
                Exit {
                    exit_code: 3,
                    timed_out: false,
                    oom_killed: true,
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
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&[9, 0, 0, 0, 1, 0, 0, 0, 0]),
            Err(DecodeError::UnknownKind(9))
        );
        assert!(d.feed(&Frame::Pong(1).encode()).is_err(), "stays failed");
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&[1, 0, 0, 0, 1, 0xff, 0, 0, 0]),
            Err(DecodeError::Oversized(0xff00_0000))
        );
        let mut d = Decoder::new();
        assert!(matches!(
            d.feed(&[3, 0, 0, 0, 1, 0, 0, 0, 2, b'{', b'x']),
            Err(DecodeError::BadExit(_))
        ));
    }

    #[test]
    fn requests_are_one_json_line() {
        let r = Request {
            id: 7,
            argv: vec!["/bin/sh".into(), "-c".into(), "echo 'a\nb'".into()],
            env: vec![("K".into(), "V".into())],
            cwd: Some("/opt".into()),
            timeout_ms: 1000,
            output_bytes: 11,
        };
        let line = r.to_line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(*line.last().unwrap(), b'\n');
        let back: Request = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, r);
    }
}
