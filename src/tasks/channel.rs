//! The fast path to a task container's agent: one Docker attach stream per container,
//! carrying command requests to the agent's stdin and its answer frames back from its
//! stdout. No exec per command, and killable on timeout by the agent itself. A reader task
//! routes frames to the run that asked; when the stream ends (container gone, Docker
//! restarted) every pending run learns it at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::agent::protocol::{Decoder, Frame, Request};
use crate::docker::stream::{Demuxer, StreamKind};
use crate::docker::{Docker, DockerError};

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// An open attach stream to one container's agent.
pub struct Channel {
    /// The agent's stdin; one request line at a time.
    writer: tokio::sync::Mutex<Writer>,
    /// Runs waiting for frames, by request id. std Mutex, never held across an `.await`.
    pending: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Frame>>>>,
    /// Request ids; unique for this stream's life.
    next_id: AtomicU32,
    /// Set when the stream ended: nothing sent now will ever be answered.
    closed: Arc<AtomicBool>,
    /// Short id, for log lines.
    short: String,
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum ChannelError {
    /// Docker refused or failed the attach.
    Attach(DockerError),
    /// The stream is gone (container stopped or removed, Docker restarted).
    Closed,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("container", &self.short)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Channel {
    /// Attaches to container `id` and starts routing its agent's frames.
    pub async fn open(docker: &Docker, id: &str) -> Result<Arc<Channel>, ChannelError> {
        let io = docker.attach(id).await.map_err(ChannelError::Attach)?;
        let (reader, writer) = tokio::io::split(io);
        Ok(Channel::over(reader, Box::new(writer), super::short(id)))
    }

    /// A channel over any two-way stream carrying Docker's framing (tests use a pipe).
    pub(crate) fn over<R>(reader: R, writer: Writer, short: &str) -> Arc<Channel>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        let channel = Arc::new(Channel {
            writer: tokio::sync::Mutex::new(writer),
            pending: Arc::default(),
            next_id: AtomicU32::new(1),
            closed: Arc::default(),
            short: short.to_string(),
        });
        tokio::spawn(route(
            reader,
            channel.pending.clone(),
            channel.closed.clone(),
            channel.short.clone(),
        ));
        channel
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Sends one request and returns the receiver of its frames. The receiver ends (None)
    /// if the stream closes before the agent's `Exit` frame.
    pub async fn send(
        &self,
        mut request: Request,
    ) -> Result<mpsc::UnboundedReceiver<Frame>, ChannelError> {
        if self.is_closed() {
            return Err(ChannelError::Closed);
        }
        request.id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::unbounded_channel();
        self.pending.lock().unwrap().insert(request.id, tx);
        let line = request.to_line();
        let mut w = self.writer.lock().await;
        let sent = async {
            w.write_all(&line).await?;
            w.flush().await
        }
        .await;
        if sent.is_err() {
            self.pending.lock().unwrap().remove(&request.id);
            return Err(ChannelError::Closed);
        }
        Ok(rx)
    }

    /// Whether the agent answers on this stream (the container was made for it).
    pub async fn ping(&self) -> bool {
        let request = Request {
            id: 0,
            argv: Vec::new(),
            env: Vec::new(),
            cwd: None,
            timeout_ms: 0,
            output_bytes: 0,
        };
        let Ok(mut rx) = self.send(request).await else {
            return false;
        };
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv()).await,
            Ok(Some(Frame::Pong(_)))
        )
    }
}

/// Reads Docker's frames, then the agent's, and hands each to its run; on the end of the
/// stream marks the channel closed and drops every pending sender.
async fn route<R: AsyncRead + Unpin>(
    mut reader: R,
    pending: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Frame>>>>,
    closed: Arc<AtomicBool>,
    short: String,
) {
    let mut demux = Demuxer::new();
    let mut frames = Decoder::new();
    let mut buf = vec![0u8; 64 << 10];
    let why = loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break "end of stream".to_string(),
            Ok(n) => n,
            Err(e) => break e.to_string(),
        };
        let mut agent_bytes = Vec::new();
        let mut agent_log = Vec::new();
        let fed = demux.feed(&buf[..n], |kind, bytes| match kind {
            StreamKind::Stdout => agent_bytes.extend_from_slice(bytes),
            StreamKind::Stderr => agent_log.extend_from_slice(bytes),
            StreamKind::Stdin => {}
        });
        if let Err(e) = fed {
            break e.to_string();
        }
        if !agent_log.is_empty() {
            let said = String::from_utf8_lossy(&agent_log);
            crate::task_log!(Warn, &short, None; "agent: {}", said.trim_end());
        }
        let decoded = match frames.feed(&agent_bytes) {
            Ok(f) => f,
            Err(e) => break e.to_string(),
        };
        let mut pending = pending.lock().unwrap();
        for frame in decoded {
            let (id, last) = match &frame {
                Frame::Stdout(id, _) | Frame::Stderr(id, _) => (*id, false),
                Frame::Exit(id, _) | Frame::Pong(id) => (*id, true),
            };
            if let Some(tx) = pending.get(&id) {
                let _ = tx.send(frame);
            }
            if last {
                pending.remove(&id);
            }
        }
    };
    closed.store(true, Ordering::SeqCst);
    let waiting = std::mem::take(&mut *pending.lock().unwrap());
    if !waiting.is_empty() {
        crate::task_log!(Warn, &short, None; "agent stream closed ({why}) under {} run(s)", waiting.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::Exit;

    /// Wraps agent bytes in one Docker stdout frame.
    fn docker_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn frames_reach_their_run_and_a_closed_stream_ends_them() {
        let (agent_side, lessl_side) = tokio::io::duplex(1 << 16);
        let (reader, writer) = tokio::io::split(lessl_side);
        let chan = Channel::over(reader, Box::new(writer), "test");
        let (mut agent_read, mut agent_write) = tokio::io::split(agent_side);
        let req = |argv: &[&str]| Request {
            id: 0,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            cwd: None,
            timeout_ms: 1000,
            output_bytes: 10,
        };
        let mut first = chan.send(req(&["a"])).await.unwrap();
        let mut second = chan.send(req(&["b"])).await.unwrap();
        // The agent sees two request lines, ids 1 and 2.
        let mut line = vec![0u8; 4096];
        let n = agent_read.read(&mut line).await.unwrap();
        let text = String::from_utf8_lossy(&line[..n]).to_string();
        assert!(
            text.contains("\"id\":1") && text.contains("\"id\":2"),
            "{text}"
        );

        // Answers interleaved, split across Docker frames at odd places.
        let exit = Exit {
            exit_code: 0,
            timed_out: false,
            oom_killed: false,
        };
        let mut agent: Vec<u8> = Vec::new();
        agent.extend(Frame::Stdout(2, b"bee".to_vec()).encode());
        agent.extend(Frame::Stdout(1, b"ay".to_vec()).encode());
        agent.extend(Frame::Exit(1, exit.clone()).encode());
        let (a, b) = agent.split_at(7);
        let mut wire = docker_frame(1, a);
        wire.extend(docker_frame(2, b"agent says hi\n"));
        wire.extend(docker_frame(1, b));
        agent_write.write_all(&wire).await.unwrap();

        assert_eq!(second.recv().await, Some(Frame::Stdout(2, b"bee".to_vec())));
        assert_eq!(first.recv().await, Some(Frame::Stdout(1, b"ay".to_vec())));
        assert_eq!(first.recv().await, Some(Frame::Exit(1, exit)));
        assert_eq!(first.recv().await, None, "answered runs are forgotten");

        // The container goes away: the unanswered run ends, and new sends fail.
        drop(agent_write);
        drop(agent_read);
        assert_eq!(second.recv().await, None);
        assert!(chan.is_closed());
        assert!(matches!(
            chan.send(req(&["c"])).await,
            Err(ChannelError::Closed)
        ));
    }
}
