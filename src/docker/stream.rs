//! Decoding of Docker's multiplexed (non-TTY) attach/exec stream framing into stdout/stderr pieces; pure state machine that does no I/O and never buffers a whole frame.

use std::fmt;

/// Every frame starts with `[stream, 0, 0, 0, size as big-endian u32]`.
const HEADER_LEN: usize = 8;

/// Which standard stream a payload piece belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
}

impl StreamKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Stdin),
            1 => Some(Self::Stdout),
            2 => Some(Self::Stderr),
            _ => None,
        }
    }
}

/// Why the stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemuxError {
    /// A frame header named a stream type other than 0, 1 or 2: the peer is not
    /// speaking the multiplexed protocol (e.g. a TTY stream), so nothing after it can be trusted.
    UnknownStream(u8),
    /// The stream ended inside a frame; `missing` counts the bytes still expected
    /// for the current header, or for the current payload once its header was complete.
    Truncated { missing: usize },
}

impl fmt::Display for DemuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownStream(byte) => {
                write!(f, "docker stream frame has unknown stream type {byte}")
            }
            Self::Truncated { missing } => {
                write!(f, "docker stream ended mid-frame ({missing} bytes missing)")
            }
        }
    }
}

impl std::error::Error for DemuxError {}

#[derive(Debug, Clone)]
enum State {
    Header {
        buf: [u8; HEADER_LEN],
        filled: usize,
    },
    Payload {
        kind: StreamKind,
        remaining: u32,
    },
    Failed(DemuxError),
}

const AT_BOUNDARY: State = State::Header {
    buf: [0; HEADER_LEN],
    filled: 0,
};

/// Incremental decoder: feed it socket chunks as they arrive, split anywhere.
#[derive(Debug, Clone)]
pub struct Demuxer {
    state: State,
}

impl Default for Demuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl Demuxer {
    pub fn new() -> Self {
        Self { state: AT_BOUNDARY }
    }

    /// Feeds one chunk; calls `sink(kind, bytes)` for every run of payload bytes as soon as it is
    /// available (a frame's payload may arrive in several pieces: each piece is emitted, a whole
    /// frame is never buffered). Zero-length frames emit nothing. After an error the demuxer
    /// stays failed: further feeds return the same error.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        mut sink: impl FnMut(StreamKind, &[u8]),
    ) -> Result<(), DemuxError> {
        loop {
            match &mut self.state {
                State::Failed(err) => return Err(err.clone()),
                _ if chunk.is_empty() => return Ok(()),
                State::Header { buf, filled } => {
                    let take = (HEADER_LEN - *filled).min(chunk.len());
                    let (head, rest) = chunk.split_at(take);
                    buf[*filled..*filled + take].copy_from_slice(head);
                    *filled += take;
                    chunk = rest;
                    if *filled == HEADER_LEN {
                        let header = *buf;
                        self.state = Self::after_header(header);
                    }
                }
                State::Payload { kind, remaining } => {
                    let available = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
                    let take = available.min(*remaining);
                    // u32 -> usize is lossless on every target Docker runs on (>= 32-bit).
                    let (piece, rest) = chunk.split_at(take as usize);
                    sink(*kind, piece);
                    *remaining -= take;
                    chunk = rest;
                    if *remaining == 0 {
                        self.state = AT_BOUNDARY;
                    }
                }
            }
        }
    }

    /// Called at end of stream: Ok if it ended on a frame boundary, `Truncated` otherwise
    /// (or the earlier error, if decoding had already failed).
    pub fn finish(&self) -> Result<(), DemuxError> {
        match &self.state {
            State::Header { filled: 0, .. } => Ok(()),
            State::Header { filled, .. } => Err(DemuxError::Truncated {
                missing: HEADER_LEN - filled,
            }),
            State::Payload { remaining, .. } => Err(DemuxError::Truncated {
                missing: usize::try_from(*remaining).unwrap_or(usize::MAX),
            }),
            State::Failed(err) => Err(err.clone()),
        }
    }

    fn after_header(header: [u8; HEADER_LEN]) -> State {
        let Some(kind) = StreamKind::from_byte(header[0]) else {
            return State::Failed(DemuxError::UnknownStream(header[0]));
        };
        // Only the remaining count is kept, so a hostile size costs nothing up front.
        let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if size == 0 {
            AT_BOUNDARY
        } else {
            State::Payload {
                kind,
                remaining: size,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let size = u32::try_from(payload.len()).expect("test payload fits u32");
        let mut out = vec![kind, 0, 0, 0];
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Collected output: concatenated stdout, stderr, stdin, and the number of sink calls.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Collected {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        stdin: Vec<u8>,
        calls: usize,
    }

    fn feed_all(chunks: &[&[u8]]) -> (Collected, Result<(), DemuxError>) {
        let mut demuxer = Demuxer::new();
        let mut got = Collected::default();
        for chunk in chunks {
            let fed = demuxer.feed(chunk, |kind, bytes| {
                got.calls += 1;
                assert!(!bytes.is_empty(), "sink must never get an empty piece");
                match kind {
                    StreamKind::Stdout => got.stdout.extend_from_slice(bytes),
                    StreamKind::Stderr => got.stderr.extend_from_slice(bytes),
                    StreamKind::Stdin => got.stdin.extend_from_slice(bytes),
                }
            });
            if let Err(err) = fed {
                return (got, Err(err));
            }
        }
        let end = demuxer.finish();
        (got, end)
    }

    fn sample_stream() -> Vec<u8> {
        let mut stream = frame(1, b"hello ");
        stream.extend(frame(2, b"oops\n"));
        stream.extend(frame(1, b""));
        stream.extend(frame(1, b"world\n"));
        stream.extend(frame(0, b"in"));
        stream.extend(frame(2, &[0u8, 255, 10, 13]));
        stream
    }

    #[test]
    fn single_frame_is_emitted_whole() {
        let (got, end) = feed_all(&[&frame(1, b"hello")]);
        assert_eq!(end, Ok(()));
        assert_eq!(got.stdout, b"hello");
        assert!(got.stderr.is_empty());
        assert_eq!(got.calls, 1);
    }

    #[test]
    fn several_frames_in_one_chunk_keep_their_streams() {
        let (got, end) = feed_all(&[&sample_stream()]);
        assert_eq!(end, Ok(()));
        assert_eq!(got.stdout, b"hello world\n");
        assert_eq!(got.stderr, b"oops\n\x00\xff\n\r");
        assert_eq!(got.stdin, b"in");
    }

    #[test]
    fn every_two_way_split_gives_the_same_output() {
        let stream = sample_stream();
        let (whole, end) = feed_all(&[&stream]);
        assert_eq!(end, Ok(()));
        for i in 0..=stream.len() {
            let (first, second) = stream.split_at(i);
            let (got, end) = feed_all(&[first, second]);
            assert_eq!(end, Ok(()), "split at {i}");
            assert_eq!(got.stdout, whole.stdout, "split at {i}");
            assert_eq!(got.stderr, whole.stderr, "split at {i}");
            assert_eq!(got.stdin, whole.stdin, "split at {i}");
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_output_piece_by_piece() {
        let stream = sample_stream();
        let (whole, _) = feed_all(&[&stream]);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let (got, end) = feed_all(&bytes);
        assert_eq!(end, Ok(()));
        assert_eq!(got.stdout, whole.stdout);
        assert_eq!(got.stderr, whole.stderr);
        assert_eq!(got.stdin, whole.stdin);
        // Each payload byte is passed on as it arrives instead of waiting for its frame's end.
        let payload_bytes = whole.stdout.len() + whole.stderr.len() + whole.stdin.len();
        assert_eq!(got.calls, payload_bytes);
    }

    #[test]
    fn zero_length_frame_emits_nothing_and_ends_on_boundary() {
        let (got, end) = feed_all(&[&frame(2, b"")]);
        assert_eq!(end, Ok(()));
        assert_eq!(got, Collected::default());
    }

    #[test]
    fn header_split_across_chunks() {
        let stream = frame(2, b"err");
        let (got, end) = feed_all(&[&stream[..3], &stream[3..7], &stream[7..]]);
        assert_eq!(end, Ok(()));
        assert_eq!(got.stderr, b"err");
    }

    #[test]
    fn unknown_stream_type_fails_and_stays_failed() {
        for bad in [3u8, 7, 255] {
            let mut stream = frame(1, b"ok");
            stream.extend(frame(bad, b"never"));
            let mut demuxer = Demuxer::new();
            let mut out = Vec::new();
            let first = demuxer.feed(&stream, |_, bytes| out.extend_from_slice(bytes));
            assert_eq!(first, Err(DemuxError::UnknownStream(bad)));
            assert_eq!(out, b"ok");
            let again = demuxer.feed(&frame(1, b"more"), |_, bytes| out.extend_from_slice(bytes));
            assert_eq!(again, Err(DemuxError::UnknownStream(bad)));
            assert_eq!(
                demuxer.feed(&[], |_, _| {}),
                Err(DemuxError::UnknownStream(bad))
            );
            assert_eq!(demuxer.finish(), Err(DemuxError::UnknownStream(bad)));
            assert_eq!(out, b"ok", "nothing is emitted after the failure");
        }
    }

    #[test]
    fn end_mid_header_is_truncated() {
        let stream = frame(1, b"abc");
        let (_, end) = feed_all(&[&stream[..5]]);
        assert_eq!(end, Err(DemuxError::Truncated { missing: 3 }));
    }

    #[test]
    fn end_mid_payload_is_truncated_after_emitting_what_arrived() {
        let stream = frame(1, b"abcdef");
        let (got, end) = feed_all(&[&stream[..10]]);
        assert_eq!(got.stdout, b"ab");
        assert_eq!(end, Err(DemuxError::Truncated { missing: 4 }));
    }

    #[test]
    fn huge_declared_size_only_counts_down() {
        let mut demuxer = Demuxer::new();
        let mut out = Vec::new();
        let header = [1u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        demuxer
            .feed(&header, |_, bytes| out.extend_from_slice(bytes))
            .expect("header accepted");
        demuxer
            .feed(b"tiny", |_, bytes| out.extend_from_slice(bytes))
            .expect("payload accepted");
        assert_eq!(out, b"tiny");
        assert_eq!(
            demuxer.finish(),
            Err(DemuxError::Truncated {
                missing: 0xffff_ffff - 4
            })
        );
        // The decoder holds no buffer that could grow with the declared size.
        assert!(std::mem::size_of::<Demuxer>() <= 32);
    }

    #[test]
    fn errors_display_the_failed_step() {
        assert_eq!(
            DemuxError::UnknownStream(7).to_string(),
            "docker stream frame has unknown stream type 7"
        );
        assert_eq!(
            DemuxError::Truncated { missing: 3 }.to_string(),
            "docker stream ended mid-frame (3 bytes missing)"
        );
    }
}
