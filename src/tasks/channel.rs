//! The fast path to a task container's agent: one Docker attach stream per container,
//! carrying command requests to the agent's stdin and its answer frames back from its
//! stdout, and, where the container has one, its lane ([`super::lane`]): a socket past the
//! engine that carries the requests (placements with raw bytes) and answers once the agent
//! connected. No exec per command, and killable on timeout by the agent itself. Owns the
//! channel's life (syncing, open, ended, dead), request ids, which transport a request takes,
//! and the agent's stderr in the log; never runs an exec itself.
//!
//! Guarantees, whatever the agent or a previous Lessl process left in the stream:
//! - Every attach starts with a hello carrying a fresh random nonce; every byte before the
//!   agent's matching hello frame is discarded ([`Sync`]), so an attach that starts mid-frame
//!   or among the previous process's answers reads only its own.
//! - Request ids carry a random per-process prefix, so frames of another process's commands
//!   (still running in a daemon task) never match a request of this one; they are dropped.
//! - A broken frame after the hello kills the channel at once: pending runs fail with a clear
//!   error, later commands go by exec. The agent's end of input (`Closed`) does the same,
//!   except that requests it never read (no `Started`) are run by exec instead.
//! - Every write has a deadline; a request the agent does not acknowledge within
//!   [`START_DEADLINE`] kills the channel.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::agent::protocol::{Decoder, Frame, Nonce, Place, Placed, Request, Sync};
use crate::docker::stream::{Demuxer, StreamKind};
use crate::docker::DockerError;

use super::engine::Engine;
use super::lane::Offer;
use crate::metrics::METRICS;

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// How long one write to the agent's stdin may take before the channel is declared dead.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long the agent may take to acknowledge a request (`Started`) before the channel is
/// declared dead: it reads requests as they come, so silence means it is stuck or gone.
pub const START_DEADLINE: Duration = Duration::from_secs(5);
/// Longest line of the agent's stderr copied to the log; the rest is cut.
const LOG_LINE: usize = 256;
/// How long an offered lane may take to come up before its offer lapses.
const LANE_WAIT: Duration = Duration::from_secs(5);
/// How long [`Channel::synced`] waits, after the agent's hello, for an offered lane: it
/// connects before it answers, so only Lessl's side of the accept is left.
const LANE_SETTLE: Duration = Duration::from_millis(100);
/// Lines of the agent's stderr logged per [`LOG_WINDOW`] and channel; the rest are counted.
const LOG_LINES: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// An open attach stream to one container's agent.
pub struct Channel {
    /// The agent's stdin, and whether this attach's hello was written to it yet. Written
    /// lazily with the first request, since a channel opens before its container starts.
    writer: tokio::sync::Mutex<(Writer, bool)>,
    /// The lane's writer once the agent connected: requests go there first. Its own lock,
    /// held for one request (and its payload) at a time.
    lane: Arc<tokio::sync::Mutex<Option<Writer>>>,
    /// The lane offered with the hello, until the hello is written.
    offer: Mutex<Option<Offer>>,
    /// True once no lane is pending: none offered, or the offer came up or lapsed.
    lane_settled: Arc<watch::Sender<bool>>,
    /// State shared with the reader task.
    shared: Arc<Shared>,
    /// This attach's nonce, written in the hello.
    nonce: Nonce,
    /// Whether the agent's hello has been read; for waiters of [`Channel::synced`].
    synced: watch::Receiver<bool>,
    /// Short id, for log lines.
    short: String,
}

struct Shared {
    /// std Mutex: held for map operations only, never across an `.await`.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Runs waiting for frames, by request id.
    pending: HashMap<u64, Pending>,
    /// Why nothing more may be sent, once that is so.
    closed: Option<Closed>,
}

struct Pending {
    tx: mpsc::UnboundedSender<Frame>,
    /// The agent acknowledged the request: it runs (or ran) it.
    started: bool,
}

/// Why a channel takes no more requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The stream ended (container stopped or removed, Docker restarted): attaching again
    /// may work.
    Ended(String),
    /// The agent broke the protocol, stopped reading, or said its input closed: this
    /// container's commands go by exec from now on.
    Dead(String),
}

/// Why a channel could not be opened or a request not sent.
#[derive(Debug)]
pub enum ChannelError {
    /// Docker refused or failed the attach.
    Attach(DockerError),
    /// The channel takes no more requests (see [`Channel::closed`]); nothing was sent, or
    /// the agent cannot have read it, so running the command another way is safe.
    Closed,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("container", &self.short)
            .field("closed", &self.closed())
            .finish()
    }
}

impl Channel {
    /// Attaches to container `id` and starts routing its agent's frames; `lane` is offered
    /// to the agent with the hello.
    pub async fn open(
        docker: &dyn Engine,
        id: &str,
        lane: Option<Offer>,
    ) -> Result<Arc<Channel>, ChannelError> {
        let io = docker.attach(id).await.map_err(ChannelError::Attach)?;
        let (reader, writer) = tokio::io::split(io);
        Ok(Channel::over(
            reader,
            Box::new(writer),
            super::short(id),
            lane,
        ))
    }

    /// A channel over any two-way stream carrying Docker's framing (tests use a pipe).
    pub(crate) fn over<R>(
        reader: R,
        writer: Writer,
        short: &str,
        lane: Option<Offer>,
    ) -> Arc<Channel>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        let mut nonce = [0u8; 16];
        random_bytes(&mut nonce);
        let (synced_tx, synced) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::default(),
        });
        let channel = Arc::new(Channel {
            writer: tokio::sync::Mutex::new((writer, false)),
            lane: Arc::default(),
            lane_settled: Arc::new(watch::Sender::new(lane.is_none())),
            offer: Mutex::new(lane),
            shared: shared.clone(),
            nonce,
            synced,
            short: short.to_string(),
        });
        tokio::spawn(route(reader, shared, nonce, synced_tx, short.to_string()));
        channel
    }

    /// Why the channel takes no more requests; None while it does.
    pub fn closed(&self) -> Option<Closed> {
        self.shared.state.lock().unwrap().closed.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.closed().is_some()
    }

    /// Whether this container's agent must not be attached again (see [`Closed::Dead`]).
    pub fn is_dead(&self) -> bool {
        matches!(self.closed(), Some(Closed::Dead(_)))
    }

    /// Declares the channel dead: nothing more is sent on it. Runs already acknowledged keep
    /// receiving their frames.
    pub fn mark_dead(&self, why: &str) {
        if self.shared.mark(Closed::Dead(why.to_string())) {
            crate::task_log!(Warn, &self.short, None; "agent channel dead ({why}); commands go by exec");
        }
    }

    /// Sends one request and returns the receiver of its frames. The receiver ends (None)
    /// if the channel dies before the agent's `Exit` frame; it gets `Frame::Closed` if the
    /// agent's input closed before it read this request.
    pub async fn send(
        &self,
        request: Request,
    ) -> Result<mpsc::UnboundedReceiver<Frame>, ChannelError> {
        self.send_with(request, &[]).await
    }

    /// [`Channel::send`] of a request whose `payload` bytes are these parts (one per placed
    /// entry with a `size`, or a command's stdin): raw after the line on the lane, moved into
    /// the request as base64 on the attach stream.
    pub async fn send_with(
        &self,
        mut request: Request,
        payload: &[&[u8]],
    ) -> Result<mpsc::UnboundedReceiver<Frame>, ChannelError> {
        request.id = next_id();
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut state = self.shared.state.lock().unwrap();
            if state.closed.is_some() {
                return Err(ChannelError::Closed);
            }
            state
                .pending
                .insert(request.id, Pending { tx, started: false });
        }
        let mut lane = self.lane.lock().await;
        if let Some(w) = lane.as_mut() {
            let line = request.to_line();
            let mut sent = self.write(w, &line).await;
            for part in payload {
                if sent.is_ok() {
                    sent = self.write(w, part).await;
                }
            }
            return match sent {
                Ok(()) => {
                    METRICS.agent_request(true);
                    Ok(rx)
                }
                Err(why) => {
                    // The agent cannot act on a request it did not read whole.
                    *lane = None;
                    self.forget(request.id);
                    self.shared.mark(Closed::Ended(format!("lane: {why}")));
                    Err(ChannelError::Closed)
                }
            };
        }
        drop(lane);
        if request.payload > 0 {
            match request.place.as_mut() {
                Some(place) => place.inline(payload),
                None => {
                    use base64::Engine as _;
                    let stdin = base64::engine::general_purpose::STANDARD.encode(payload.concat());
                    request.stdin_base64 = Some(stdin);
                }
            }
            request.payload = 0;
        }
        let mut w = self.writer.lock().await;
        // A placement's line runs to megabytes: copied only when a hello goes first.
        let bytes = match w.1 {
            true => request.to_line(),
            false => {
                let mut bytes = self.hello_bytes();
                bytes.extend(request.to_line());
                bytes
            }
        };
        match self.write(&mut w.0, &bytes).await {
            Ok(()) => {
                w.1 = true;
                METRICS.agent_request(false);
                Ok(rx)
            }
            Err(why) => {
                self.forget(request.id);
                self.mark_dead(&why);
                Err(ChannelError::Closed)
            }
        }
    }

    fn forget(&self, id: u64) {
        self.shared.state.lock().unwrap().pending.remove(&id);
    }

    /// Asks the agent to place files and waits up to `wait` for its answer. None when the
    /// channel closed first, or the agent did not answer in time (the channel is then dead):
    /// the files may be partly staged but none is in place unless the agent answered.
    pub async fn place(&self, place: Place, payload: &[&[u8]], wait: Duration) -> Option<Placed> {
        let mut rx = self.send_with(Request::place(place), payload).await.ok()?;
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(Frame::Placed(_, placed))) => Some(placed),
            Ok(_) => None,
            Err(_) => {
                self.mark_dead(&format!("the agent did not place files within {wait:?}"));
                None
            }
        }
    }

    /// Writes this attach's hello (and the lane's offer) if not done yet, without waiting
    /// for the answer: called once the container started, so that the lane is up by the
    /// time requests come. False when the write failed (the channel is then dead).
    pub async fn greet(&self) -> bool {
        let mut w = self.writer.lock().await;
        if w.1 {
            return true;
        }
        let hello = self.hello_bytes();
        if let Err(why) = self.write(&mut w.0, &hello).await {
            self.mark_dead(&why);
            return false;
        }
        w.1 = true;
        true
    }

    /// Sends this attach's hello if not done yet and waits until the agent answered it:
    /// whether the agent is there and reads its stdin (a container of an older Lessl may
    /// carry the label without an agent that answers). An offered lane then has a moment to
    /// come up, so the requests that follow take it.
    pub async fn synced(&self, wait: Duration) -> bool {
        if !self.greet().await {
            return false;
        }
        let mut synced = self.synced.clone();
        let answered = tokio::time::timeout(wait, synced.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok());
        if answered {
            let mut settled = self.lane_settled.subscribe();
            let _ = tokio::time::timeout(LANE_SETTLE, settled.wait_for(|s| *s)).await;
        }
        answered
    }

    /// An empty line first: it ends whatever half line a previous Lessl process left in the
    /// agent's stdin, which would otherwise swallow the hello. The lane's offer, if any, goes
    /// before the hello, so the agent connects before it answers; an older agent ignores it.
    fn hello_bytes(&self) -> Vec<u8> {
        let mut bytes = b"\n".to_vec();
        if let Some(offer) = self.offer.lock().unwrap().take() {
            bytes.extend(Request::lane(offer.token()).to_line());
            let lane = Lane {
                slot: self.lane.clone(),
                shared: self.shared.clone(),
                settled: self.lane_settled.clone(),
                short: self.short.clone(),
            };
            tokio::spawn(lane.take(offer));
        }
        bytes.extend(Request::hello(self.nonce).to_line());
        bytes
    }

    /// One write, within [`WRITE_DEADLINE`]; the error says why it failed.
    async fn write(&self, w: &mut Writer, bytes: &[u8]) -> Result<(), String> {
        let written = async {
            w.write_all(bytes).await?;
            w.flush().await
        };
        match tokio::time::timeout(WRITE_DEADLINE, written).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("writing to the agent failed: {e}")),
            Err(_) => Err(format!("writing to the agent took over {WRITE_DEADLINE:?}")),
        }
    }
}

impl Shared {
    /// Closes the channel for new requests; true if this call did.
    fn mark(&self, why: Closed) -> bool {
        let mut state = self.state.lock().unwrap();
        if state.closed.is_some() {
            return false;
        }
        state.closed = Some(why);
        true
    }
}

/// A request id no other Lessl process uses: a random 32-bit prefix drawn once per process,
/// then a counter, so a restarted Lessl never takes an answer meant for its predecessor.
fn next_id() -> u64 {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(1);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        random_bytes(&mut b);
        u32::from_be_bytes(b)
    });
    (u64::from(prefix) << 32) | u64::from(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A read buffer that starts small and doubles, up to [`READ_MAX`], whenever a read fills
/// it: an idle channel (hundreds of daemon tasks) holds 4 KiB, a busy one reads big pieces.
struct ReadBuf(Vec<u8>);

const READ_MAX: usize = 64 << 10;

impl ReadBuf {
    fn new() -> ReadBuf {
        ReadBuf(vec![0; 4 << 10])
    }

    fn space(&mut self) -> &mut [u8] {
        &mut self.0
    }

    fn data(&self, n: usize) -> &[u8] {
        &self.0[..n]
    }

    fn grow_if_filled(&mut self, n: usize) {
        if n == self.0.len() && n < READ_MAX {
            self.0.resize(2 * n, 0);
        }
    }
}

/// What the task that takes an offered lane needs of its channel.
struct Lane {
    slot: Arc<tokio::sync::Mutex<Option<Writer>>>,
    shared: Arc<Shared>,
    settled: Arc<watch::Sender<bool>>,
    short: String,
}

impl Lane {
    /// Waits for the agent on `offer`; once it connected, requests go by the lane and its
    /// frames are routed until it ends, which closes the channel as the attach stream's end
    /// does (the agent went; attaching again may bring it back).
    async fn take(self, offer: Offer) {
        let stream = offer.accept(LANE_WAIT).await;
        let Ok(stream) = stream else {
            self.settled.send_replace(true);
            return;
        };
        let (mut reader, writer) = stream.into_split();
        *self.slot.lock().await = Some(Box::new(writer));
        self.settled.send_replace(true);
        let mut frames = Decoder::new();
        let mut buf = ReadBuf::new();
        let closed = loop {
            let n = match reader.read(buf.space()).await {
                Ok(0) => break Closed::Ended("the lane ended".to_string()),
                Ok(n) => n,
                Err(e) => break Closed::Ended(format!("the lane failed: {e}")),
            };
            let decoded = match frames.feed(buf.data(n)) {
                Ok(f) => f,
                Err(e) => break Closed::Dead(format!("broken frame on the lane: {e}")),
            };
            buf.grow_if_filled(n);
            let mut state = self.shared.state.lock().unwrap();
            for frame in decoded {
                deliver(&mut state, frame, &self.short);
            }
        };
        *self.slot.lock().await = None;
        end(&self.shared, closed, &self.short);
    }
}

/// Fills `buf` from the kernel's random source; falls back to the clock and pid mixed,
/// which still differ between processes, if /dev/urandom cannot be read.
pub(super) fn random_bytes(buf: &mut [u8]) {
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf));
    if read.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut x = nanos ^ (u128::from(std::process::id()) << 64);
        for b in buf.iter_mut() {
            // xorshift: spreads the few varying bits over every byte.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
}

/// Reads Docker's frames, then the agent's, and hands each to its run; on the end of the
/// stream or a broken frame marks the channel closed and drops every pending sender.
async fn route<R: AsyncRead + Unpin>(
    mut reader: R,
    shared: Arc<Shared>,
    nonce: Nonce,
    synced: watch::Sender<bool>,
    short: String,
) {
    let mut demux = Demuxer::new();
    let mut sync = Sync::new(nonce);
    let mut frames = Decoder::new();
    let mut agent_log = AgentLog::new(Instant::now());
    let mut buf = ReadBuf::new();
    let closed = loop {
        let n = match reader.read(buf.space()).await {
            Ok(0) => break Closed::Ended("end of stream".to_string()),
            Ok(n) => n,
            Err(e) => break Closed::Ended(e.to_string()),
        };
        let mut agent_bytes = Vec::new();
        let mut said = Vec::new();
        let fed = demux.feed(buf.data(n), |kind, bytes| match kind {
            StreamKind::Stdout => agent_bytes.extend_from_slice(bytes),
            StreamKind::Stderr => said.extend_from_slice(bytes),
            StreamKind::Stdin => {}
        });
        buf.grow_if_filled(n);
        if let Err(e) = fed {
            break Closed::Dead(format!("attach stream broken: {e}"));
        }
        for line in agent_log.feed(&said, Instant::now()) {
            crate::task_log!(Warn, &short, None; "agent stderr: {line}");
        }
        let was_synced = sync.is_synced();
        let ours = sync.feed(&agent_bytes);
        if sync.is_synced() && !was_synced {
            let _ = synced.send(true);
        }
        let decoded = match frames.feed(ours) {
            Ok(f) => f,
            Err(e) => break Closed::Dead(format!("broken frame from the agent: {e}")),
        };
        let mut state = shared.state.lock().unwrap();
        for frame in decoded {
            deliver(&mut state, frame, &short);
        }
    };
    end(&shared, closed, &short);
}

/// A reader of the channel ended: nothing more is sent on it, and every run still waiting
/// for frames is let go.
fn end(shared: &Shared, closed: Closed, short: &str) {
    let dead = matches!(closed, Closed::Dead(_));
    let why = match &closed {
        Closed::Ended(w) | Closed::Dead(w) => w.clone(),
    };
    shared.mark(closed);
    let waiting = std::mem::take(&mut shared.state.lock().unwrap().pending);
    if dead {
        crate::task_log!(Warn, short, None; "agent channel dead ({why}); {} run(s) failed, commands go by exec", waiting.len());
    } else if !waiting.is_empty() {
        crate::task_log!(Warn, short, None; "agent stream closed ({why}) under {} run(s)", waiting.len());
    }
}

/// Hands one frame to the run it belongs to; frames for ids this channel never sent (a
/// previous Lessl process's commands) are dropped.
fn deliver(state: &mut State, frame: Frame, short: &str) {
    match frame {
        Frame::Closed => {
            if state.closed.is_none() {
                state.closed = Some(Closed::Dead("the agent's input closed".to_string()));
                crate::task_log!(Warn, short, None; "the agent's input closed; commands go by exec");
            }
            // Requests never acknowledged were never read: their runs go by exec instead.
            state.pending.retain(|_, p| {
                if !p.started {
                    let _ = p.tx.send(Frame::Closed);
                }
                p.started
            });
        }
        // Another hello (a repeated or old one) carries nothing for us.
        Frame::Hello(_) => {}
        Frame::Started(id) => {
            if let Some(p) = state.pending.get_mut(&id) {
                p.started = true;
                let _ = p.tx.send(frame);
            }
        }
        Frame::Exit(id, _) | Frame::Placed(id, _) => {
            if let Some(p) = state.pending.remove(&id) {
                let _ = p.tx.send(frame);
            }
        }
        Frame::Stdout(id, _) | Frame::Stderr(id, _) => {
            if let Some(p) = state.pending.get(&id) {
                let _ = p.tx.send(frame);
            }
        }
    }
}

/// The agent's stderr made safe for Lessl's log: split into lines, each cut at [`LOG_LINE`]
/// bytes and escaped (no newline or control character survives, so no line can pass for
/// one of Lessl's own), at most [`LOG_LINES`] lines per [`LOG_WINDOW`], with a count of the
/// rest. Pure; the caller passes the clock.
struct AgentLog {
    /// The current line, at most [`LOG_LINE`] bytes.
    line: Vec<u8>,
    /// The current line was longer than what is kept.
    cut: bool,
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl AgentLog {
    fn new(now: Instant) -> Self {
        AgentLog {
            line: Vec::new(),
            cut: false,
            window_start: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Feeds bytes; returns the lines to log now.
    fn feed(&mut self, bytes: &[u8], now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() < LOG_LINE {
                    self.line.push(b);
                } else {
                    self.cut = true;
                }
                continue;
            }
            if now.duration_since(self.window_start) >= LOG_WINDOW {
                if self.suppressed > 0 {
                    out.push(format!(
                        "({} more line(s) suppressed)",
                        std::mem::take(&mut self.suppressed)
                    ));
                }
                self.window_start = now;
                self.logged = 0;
            }
            let line = std::mem::take(&mut self.line);
            let cut = std::mem::take(&mut self.cut);
            if self.logged >= LOG_LINES {
                self.suppressed += 1;
                continue;
            }
            self.logged += 1;
            let mut text = String::from_utf8_lossy(&line).escape_debug().to_string();
            if cut {
                text.push_str(" [cut]");
            }
            out.push(text);
        }
        out
    }
}

/// A fake agent for tests of the channel and its users: the other end of an in-memory pipe.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    /// A channel over an in-memory pipe, and a fake agent on the other end that parses the
    /// request lines it receives.
    pub(crate) struct FakeAgent {
        pub chan: Arc<Channel>,
        read: tokio::io::ReadHalf<tokio::io::DuplexStream>,
        write: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        seen: Vec<u8>,
    }

    impl FakeAgent {
        pub fn new() -> FakeAgent {
            let (agent_side, lessl_side) = tokio::io::duplex(1 << 16);
            let (reader, writer) = tokio::io::split(lessl_side);
            let chan = Channel::over(reader, Box::new(writer), "test", None);
            let (read, write) = tokio::io::split(agent_side);
            FakeAgent {
                chan,
                read,
                write,
                seen: Vec::new(),
            }
        }

        /// The next complete request line Lessl wrote, skipping empty lines.
        pub async fn request(&mut self) -> Request {
            loop {
                if let Some(end) = self.seen.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.seen.drain(..=end).collect();
                    if line.len() > 1 {
                        return serde_json::from_slice(&line).unwrap();
                    }
                    continue;
                }
                let mut buf = [0u8; 4096];
                let n = self.read.read(&mut buf).await.unwrap();
                assert!(n > 0, "lessl closed the agent's stdin");
                self.seen.extend_from_slice(&buf[..n]);
            }
        }

        pub async fn say(&mut self, frames: &[Frame]) {
            let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
            self.write
                .write_all(&docker_frame(1, &bytes))
                .await
                .unwrap();
        }

        pub async fn raw(&mut self, kind: u8, bytes: &[u8]) {
            self.write
                .write_all(&docker_frame(kind, bytes))
                .await
                .unwrap();
        }

        /// Reads the hello Lessl sent and answers it, after `noise`.
        pub async fn hello(&mut self, noise: &[u8]) {
            let hello = self.request().await;
            let nonce = hello.hello_nonce().expect("a hello first");
            let mut bytes = noise.to_vec();
            bytes.extend(Frame::Hello(nonce).encode());
            self.raw(1, &bytes).await;
        }
    }

    /// Wraps agent bytes in one Docker frame of `kind` (1 stdout, 2 stderr).
    pub fn docker_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeAgent;
    use super::*;
    use crate::agent::protocol::Exit;

    fn req(argv: &[&str]) -> Request {
        Request {
            id: 0,
            hello: None,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            cwd: None,
            timeout_ms: 1000,
            output_bytes: 10,
            stdin_base64: None,
            place: None,
            lane: None,
            payload: 0,
        }
    }

    const EXIT: Exit = Exit {
        exit_code: 0,
        timed_out: false,
        oom_killed: false,
    };

    #[tokio::test]
    async fn frames_reach_their_run_after_the_hello_and_a_closed_stream_ends_them() {
        let mut agent = FakeAgent::new();
        let chan = agent.chan.clone();
        let mut first = chan.send(req(&["a"])).await.unwrap();
        let mut second = chan.send(req(&["b"])).await.unwrap();
        // Before the hello: the tail of an old frame and an old process's whole answer,
        // which must reach nobody.
        let mut noise = Frame::Stdout(1, b"stale".to_vec()).encode()[4..].to_vec();
        noise.extend(Frame::Exit(1 << 32 | 1, EXIT).encode());
        agent.hello(&noise).await;
        let (a, b) = (agent.request().await, agent.request().await);
        assert_eq!(a.argv, ["a"]);
        assert_ne!(a.id >> 32, 0, "ids carry the process prefix");
        assert_eq!(b.id, a.id + 1);

        // Answers interleaved, split across Docker frames at odd places, with an unknown id.
        let mut bytes: Vec<u8> = Vec::new();
        for f in [
            Frame::Started(a.id),
            Frame::Started(b.id),
            Frame::Stdout(b.id, b"bee".to_vec()),
            Frame::Stdout(a.id ^ (1 << 40), b"not yours".to_vec()),
            Frame::Stdout(a.id, b"ay".to_vec()),
            Frame::Exit(a.id, EXIT),
        ] {
            bytes.extend(f.encode());
        }
        let (x, y) = bytes.split_at(20);
        agent.raw(1, x).await;
        agent.raw(2, b"agent says hi\n").await;
        agent.raw(1, y).await;

        assert_eq!(second.recv().await, Some(Frame::Started(b.id)));
        assert_eq!(
            second.recv().await,
            Some(Frame::Stdout(b.id, b"bee".to_vec()))
        );
        assert_eq!(first.recv().await, Some(Frame::Started(a.id)));
        assert_eq!(
            first.recv().await,
            Some(Frame::Stdout(a.id, b"ay".to_vec()))
        );
        assert_eq!(first.recv().await, Some(Frame::Exit(a.id, EXIT)));
        assert_eq!(first.recv().await, None, "answered runs are forgotten");

        // The container goes away: the unanswered run ends, and new sends fail.
        drop(agent);
        assert_eq!(second.recv().await, None);
        assert!(matches!(chan.closed(), Some(Closed::Ended(_))));
        assert!(matches!(
            chan.send(req(&["c"])).await,
            Err(ChannelError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_broken_frame_kills_the_channel_at_once() {
        let mut agent = FakeAgent::new();
        let chan = agent.chan.clone();
        let mut run = chan.send(req(&["a"])).await.unwrap();
        agent.hello(b"garbage before the hello is fine").await;
        let a = agent.request().await;
        agent.say(&[Frame::Started(a.id)]).await;
        assert_eq!(run.recv().await, Some(Frame::Started(a.id)));
        // Half a header, then a kind that does not exist.
        agent.raw(1, &[42; 20]).await;
        assert_eq!(run.recv().await, None, "the run learns at once");
        assert!(chan.is_dead());
        assert!(matches!(
            chan.send(req(&["b"])).await,
            Err(ChannelError::Closed)
        ));
        // The stream itself is still open: only the protocol broke.
        drop(agent);
    }

    #[tokio::test]
    async fn closed_input_sends_unread_requests_elsewhere_and_keeps_started_ones() {
        let mut agent = FakeAgent::new();
        let chan = agent.chan.clone();
        assert!(!chan.is_closed());
        let mut read = chan.send(req(&["a"])).await.unwrap();
        let mut unread = chan.send(req(&["b"])).await.unwrap();
        agent.hello(&[]).await;
        let (a, _) = (agent.request().await, agent.request().await);
        agent.say(&[Frame::Started(a.id), Frame::Closed]).await;
        assert_eq!(read.recv().await, Some(Frame::Started(a.id)));
        assert_eq!(unread.recv().await, Some(Frame::Closed));
        assert!(chan.is_dead());
        assert!(matches!(
            chan.send(req(&["c"])).await,
            Err(ChannelError::Closed)
        ));
        // The started command still answers.
        agent
            .say(&[
                Frame::Stdout(a.id, b"late".to_vec()),
                Frame::Exit(a.id, EXIT),
            ])
            .await;
        assert_eq!(
            read.recv().await,
            Some(Frame::Stdout(a.id, b"late".to_vec()))
        );
        assert_eq!(read.recv().await, Some(Frame::Exit(a.id, EXIT)));
    }

    #[tokio::test]
    async fn synced_says_whether_the_agent_answers() {
        let mut agent = FakeAgent::new();
        let chan = agent.chan.clone();
        let waiting = tokio::spawn(async move { chan.synced(Duration::from_secs(5)).await });
        agent.hello(b"\x01\x00\x00").await;
        assert!(waiting.await.unwrap());

        let agent = FakeAgent::new();
        assert!(!agent.chan.synced(Duration::from_millis(50)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_agent_stdin_is_a_dead_channel_not_a_hang() {
        // A one-byte pipe nobody reads: the write cannot finish.
        let (_agent_side, lessl_side) = tokio::io::duplex(1);
        let (reader, writer) = tokio::io::split(lessl_side);
        let chan = Channel::over(reader, Box::new(writer), "test", None);
        let t = Instant::now();
        assert!(matches!(
            chan.send(req(&["a"])).await,
            Err(ChannelError::Closed)
        ));
        assert!(t.elapsed() >= WRITE_DEADLINE);
        assert!(chan.is_dead());
    }

    #[test]
    fn ids_never_repeat_and_share_the_process_prefix() {
        let (a, b) = (next_id(), next_id());
        assert_ne!(a, b);
        assert_eq!(a >> 32, b >> 32);
    }

    #[test]
    fn agent_stderr_is_escaped_cut_and_rate_limited() {
        let t0 = Instant::now();
        let mut log = AgentLog::new(t0);
        let got = log.feed(b"2026-01-01T00:00:00Z lessl: forged\r\x1b[31m\nsecond", t0);
        assert_eq!(got, ["2026-01-01T00:00:00Z lessl: forged\\r\\u{1b}[31m"]);
        let got = log.feed(b" half\n", t0);
        assert_eq!(got, ["second half"]);
        let long = vec![b'x'; 10_000];
        let got = log.feed(&[&long[..], b"\n"].concat(), t0);
        assert_eq!(got[0].len(), LOG_LINE + " [cut]".len());
        let flood: Vec<u8> = b"spam\n".repeat(1000);
        let got = log.feed(&flood, t0);
        assert_eq!(got.len() as u32, LOG_LINES - 3);
        let got = log.feed(b"later\n", t0 + LOG_WINDOW);
        assert_eq!(got, ["(983 more line(s) suppressed)", "later"]);
    }
}
