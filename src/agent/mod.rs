//! What runs inside task containers, from this same static binary mounted read-only:
//! `lessl agent`, the keep-alive PID 1 that reaps zombies, needs nothing from the image, and
//! runs the commands Lessl sends over the container's attach stream ([`protocol`]); and
//! `lessl agent-run`, the same supervisor for one command started by a Docker exec (the
//! fallback path). Either way a command runs in its own process group, killed whole at its
//! wall-clock limit, with its output capped, and preferred to the agent by the OOM killer.
//! The agent keeps its channel out of the commands' reach (non-dumpable, no descriptor
//! passed on, deaf to signals from inside the container). Never talks to Docker or the API.

mod place;
pub mod protocol;
mod reaper;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use protocol::{Exit, Frame, Request};
use reaper::{Reaper, Scope};

/// Exit code when the command was killed at its limit, as timeout(1) does.
pub const TIMEOUT_EXIT: i32 = 124;
/// Exit code of a command killed by SIGKILL (128 + 9), which is how the OOM killer ends it.
pub const SIGKILL_EXIT: i32 = 137;
/// Last line on stderr when the supervisor killed the command at its limit. On the exec path
/// Lessl reads it (with the exit code) to set `timed_out`; people read it to know why.
pub const TIMEOUT_MARK: &str = "lessl: command timed out";
/// Last line on stderr when the kernel's OOM killer ended the command. Docker does not
/// report OOM kills of exec'd processes, so the supervisor watches the cgroup's counter.
pub const OOM_MARK: &str = "lessl: command was killed by the OOM killer (memory limit)";
/// Exit code when the command could not be found, as shells do.
const NOT_FOUND_EXIT: i32 = 127;
/// Exit code when the command could not be started for another reason, as shells do.
const CANNOT_RUN_EXIT: i32 = 126;
/// After the command exits, how long its output pipes may take to drain. A background
/// process that keeps them open must not hold the answer hostage.
const DRAIN_GRACE: Duration = Duration::from_millis(100);
/// Output is read and forwarded in pieces of at most this size.
const CHUNK: usize = 64 << 10;
/// After a read, what follows within this long goes into the same piece (up to [`CHUNK`]):
/// a command printing fast is forwarded in pieces of tens of KiB, not one per write of its own
/// (a few KiB: a wakeup, a frame and a journal record each, here and in Lessl, half of the
/// agent's time), while a line printed alone still leaves within a millisecond or two.
const GATHER: Duration = Duration::from_millis(1);
/// Buffer of the request reader (pages are only touched as lines fill them).
const REQUEST_BUFFER: usize = 256 << 10;

fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Makes this process non-dumpable, so that `/proc/<our pid>/fd/*` (the channel to Lessl)
/// and `/proc/<our pid>/mem` can be opened only with `CAP_SYS_PTRACE`, which task containers
/// never have. Commands run with the same uid; without this they could read other commands'
/// requests (secrets in `env`) or forge answers.
fn guard_channel() {
    // SAFETY: plain syscall with integer arguments.
    let done = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if done != 0 {
        eprintln!(
            "lessl agent: cannot make itself non-dumpable: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Write end of the pipe the termination handler signals through; -1 before it exists.
static TERM_PIPE: AtomicI32 = AtomicI32::new(-1);

/// SIGTERM/SIGINT handler of PID 1. Only a signal sent from outside the container's pid
/// namespace (the engine: `docker stop`, a removal) has `si_pid == 0`; one sent by a command
/// inside the container names its pid and is ignored, so a command cannot stop the task.
/// Async-signal-safe: reads the siginfo and writes one byte.
extern "C" fn on_terminate(_sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let from_outside = !info.is_null() && unsafe { (*info).si_pid() } == 0;
    let fd = TERM_PIPE.load(Ordering::Relaxed);
    if from_outside && fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the buffer is a valid byte.
        unsafe { libc::write(fd, b"t".as_ptr().cast(), 1) };
    }
}

/// Installs [`on_terminate`] for SIGTERM and SIGINT and returns the pipe it writes to.
fn termination_pipe() -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    TERM_PIPE.store(fds[1], Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO signature and
        // does only async-signal-safe work.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_terminate as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    tokio::net::unix::pipe::Receiver::from_owned_fd(read)
}

/// The keep-alive: PID 1 of every task container. Reaps every orphan, serves the commands
/// Lessl writes to its stdin, and exits on SIGTERM or SIGINT from outside the container
/// (PID 1 gets no default handlers, so it must ask for them). Without a stdin (an
/// exec-only container) it just waits. When its stdin ends it says so and keeps reaping.
pub fn keep_alive() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    guard_channel();
    current_thread_runtime()?.block_on(async {
        // Registered before any child exists, so no exit goes unnoticed.
        let mut child = signal(SignalKind::child())?;
        let mut term = termination_pipe()?;
        let reaper = Arc::new(Reaper::new(Scope::All));
        let (frames, outbox) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(async_out(std::io::stdout().as_fd()), outbox));
        // Only a pipe can carry requests; anything else (/dev/null) means an exec-only
        // container.
        if let Some(stdin) = own_stdin() {
            let (lanes, offers) = mpsc::unbounded_channel();
            tokio::spawn(serve_lanes(offers, reaper.clone()));
            let how = Transport::Stdin;
            tokio::spawn(read_requests(
                stdin,
                how,
                reaper.clone(),
                frames,
                Some(lanes),
            ));
        }
        let mut byte = [0u8; 1];
        // An end or error cannot happen while we hold the write end; if it did, the engine's
        // SIGKILL still stops us.
        let mut listening = true;
        loop {
            tokio::select! {
                _ = child.recv() => reaper.reap_all(),
                r = term.read(&mut byte), if listening => match r {
                    Ok(1..) => return Ok(()),
                    _ => listening = false,
                },
            }
        }
    })
}

/// Our stdout or stderr for async writes. Docker's stdio are pipes, which tokio drives
/// without a thread; tokio's own `stdout()` needs a blocking thread, which a task that
/// exhausted its pids limit would never let the agent create.
fn async_out(fd: std::os::fd::BorrowedFd<'_>) -> Box<dyn tokio::io::AsyncWrite + Unpin + Send> {
    let piped = fd
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok());
    match piped {
        Some(p) => Box::new(p),
        None if fd.as_raw_fd() == 2 => Box::new(tokio::io::stderr()),
        None => Box::new(tokio::io::stdout()),
    }
}

/// The one writer of a transport (stdout, or the lane), so frames of concurrent commands
/// never interleave.
async fn write_frames(
    mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    mut outbox: mpsc::UnboundedReceiver<Frame>,
) {
    // One buffer for the life of the stream: a fresh one per write of output would be a
    // fresh mapping of its pages from the C library's allocator, page faults and all.
    let mut bytes = Vec::new();
    while let Some(frame) = outbox.recv().await {
        // Everything already queued goes in one write: a short command's output and exit
        // then reach Lessl together.
        bytes.clear();
        frame.encode_into(&mut bytes);
        while let Ok(more) = outbox.try_recv() {
            more.encode_into(&mut bytes);
        }
        if out.write_all(&bytes).await.is_err() || out.flush().await.is_err() {
            // Nobody reads (no attach, a Lessl gone): the frames are lost, which is what
            // Docker does with output too.
            continue;
        }
        // A burst's megabytes are not kept for the short frames after it.
        if bytes.capacity() > 4 * CHUNK {
            bytes = Vec::new();
        }
    }
}

/// Where requests come from; each is answered on the transport it came by.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// The attach stream: JSON lines only, resynchronised by empty lines.
    Stdin,
    /// The lane: one connection per Lessl process, whose lines may carry a payload.
    Lane,
}

/// Largest payload the agent takes after a line: a sanity bound far above what Lessl sends
/// (its resource limit), so a corrupt count cannot make it allocate without end.
const MAX_PAYLOAD: u64 = 1 << 30;

/// Hands the next `n` bytes of `reader` to `take` in the pieces they arrive in, without
/// gathering them. False when the input ended first.
async fn feed_payload<R: AsyncRead + Unpin>(
    reader: &mut tokio::io::BufReader<R>,
    n: u64,
    mut take: impl FnMut(&[u8]),
) -> bool {
    let mut left = n;
    while left > 0 {
        let got = match reader.fill_buf().await {
            Ok([]) | Err(_) => return false,
            Ok(got) => got,
        };
        let k = got.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        take(&got[..k]);
        reader.consume(k);
        left -= k as u64;
    }
    true
}

/// Serves the requests of one transport. `lanes` takes the tokens of lane offers (stdin only).
async fn read_requests<R: AsyncRead + Unpin>(
    input: R,
    how: Transport,
    reaper: Arc<Reaper>,
    frames: mpsc::UnboundedSender<Frame>,
    lanes: Option<mpsc::UnboundedSender<String>>,
) {
    // A placement arrives as megabytes: read in large pieces, not 8 KiB ones.
    let mut reader = tokio::io::BufReader::with_capacity(REQUEST_BUFFER, input);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(1..) if line.ends_with(b"\n") => {
                line.pop();
            }
            // End of input, an error, or a line cut by the end.
            _ => break,
        }
        // Lessl starts every attach with an empty line, ending whatever half line a previous
        // Lessl process left behind.
        if line.is_empty() {
            continue;
        }
        let request: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            // On the lane a payload may follow: nothing after a bad line can be trusted.
            Err(e) if how == Transport::Lane => {
                eprintln!("lessl agent: closing the lane after a malformed request: {e}");
                break;
            }
            Err(e) => {
                eprintln!("lessl agent: ignoring a malformed request: {e}");
                continue;
            }
        };
        // Only the lane carries raw bytes after a line, and never more than Lessl can send.
        let payload_len = match (how, request.payload) {
            (_, 0) => 0,
            (Transport::Lane, n) if n <= MAX_PAYLOAD => n,
            (_, n) => {
                eprintln!("lessl agent: ignoring a request announcing {n} bytes it cannot carry");
                if how == Transport::Lane {
                    break;
                }
                continue;
            }
        };
        // A line of megabytes (a placement's base64 on the attach stream) is not kept.
        if line.capacity() > REQUEST_BUFFER {
            line = Vec::new();
        }
        // A placement's payload goes straight into its staged files as it arrives. Placed
        // before the next request is read, so the commands sent after it see every file;
        // inline, since a task at its pids limit may allow no other thread.
        if let Some(files) = request.place {
            let mut fs = place::Real::default();
            let mut placing = place::Placing::start(&mut fs, files);
            let whole = feed_payload(&mut reader, payload_len, |bytes| {
                placing.feed(&mut fs, bytes)
            })
            .await;
            // Cut short, the placement leaves nothing behind and has nobody to answer.
            if !whole {
                placing.abandon(&mut fs);
                break;
            }
            let placed = placing.finish(&mut fs);
            let _ = frames.send(Frame::Placed(request.id, placed));
            fs.let_go();
            continue;
        }
        let mut payload = Vec::new();
        if payload_len > 0 {
            payload.resize(payload_len as usize, 0);
            if reader.read_exact(&mut payload).await.is_err() {
                break;
            }
        }
        if let Some(token) = &request.lane {
            // An offer made on the lane itself carries nothing: only stdin's are taken.
            if let Some(lanes) = &lanes {
                let _ = lanes.send(token.clone());
            }
            continue;
        }
        if request.hello.is_some() {
            match request.hello_nonce() {
                Some(nonce) => {
                    let _ = frames.send(Frame::Hello(nonce));
                }
                None => eprintln!("lessl agent: ignoring a malformed hello"),
            }
            continue;
        }
        let (reaper, frames) = (reaper.clone(), frames.clone());
        tokio::spawn(async move {
            let id = request.id;
            let sink = Sink::Frames(id, frames.clone());
            let exit = supervise_one(&reaper, &request, payload, &sink).await;
            let _ = frames.send(Frame::Exit(id, exit));
        });
    }
    // Said once on stdin, so Lessl stops sending at once (what it sent unanswered by
    // `Started` was never read); the commands already running still answer, and PID 1 keeps
    // reaping. A lane just ends: its Lessl is gone, and the next one offers another.
    if how == Transport::Stdin {
        let _ = frames.send(Frame::Closed);
    }
}

/// How long connecting to the lane and sending its token may take.
const LANE_CONNECT: Duration = Duration::from_secs(2);

/// Takes Lessl's offers of the lane, one per attach: connects to [`protocol::LANE_SOCKET`]
/// (a read-only mount no task can change), proves it is the agent with the offer's token, and
/// serves the requests that come that way. A failure (a runtime that cannot reach host
/// sockets, say) leaves everything on stdin.
async fn serve_lanes(mut offers: mpsc::UnboundedReceiver<String>, reaper: Arc<Reaper>) {
    while let Some(token) = offers.recv().await {
        if let Some(stream) = connect_lane(&token).await {
            let (read, write) = stream.into_split();
            let (frames, outbox) = mpsc::unbounded_channel();
            tokio::spawn(write_frames(Box::new(write), outbox));
            let how = Transport::Lane;
            tokio::spawn(read_requests(read, how, reaper.clone(), frames, None));
        }
    }
}

async fn connect_lane(token: &str) -> Option<tokio::net::UnixStream> {
    let connected = tokio::time::timeout(LANE_CONNECT, async {
        let mut s = tokio::net::UnixStream::connect(protocol::LANE_SOCKET).await?;
        s.write_all(format!("{token}\n").as_bytes()).await?;
        Ok::<_, std::io::Error>(s)
    })
    .await;
    match connected {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            eprintln!("lessl agent: no lane ({e}); requests stay on stdin");
            None
        }
        Err(_) => {
            eprintln!("lessl agent: no lane (connecting took over {LANE_CONNECT:?})");
            None
        }
    }
}

/// Where a supervised command's output goes.
enum Sink {
    /// This process's own stdout and stderr (the exec path).
    Std(
        tokio::sync::Mutex<Box<dyn tokio::io::AsyncWrite + Unpin + Send>>,
        tokio::sync::Mutex<Box<dyn tokio::io::AsyncWrite + Unpin + Send>>,
    ),
    /// Frames of request `id` to the stdout writer (the attach path).
    Frames(u64, mpsc::UnboundedSender<Frame>),
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

impl Sink {
    /// The request was read and its command spawned, or not: Lessl stops waiting for that.
    fn started(&self) {
        if let Sink::Frames(id, tx) = self {
            let _ = tx.send(Frame::Started(*id));
        }
    }

    async fn write(&self, stream: Stream, bytes: &[u8]) {
        match (self, stream) {
            (Sink::Std(out, _), Stream::Out) => {
                let mut out = out.lock().await;
                let _ = out.write_all(bytes).await;
                let _ = out.flush().await;
            }
            (Sink::Std(_, err), Stream::Err) => {
                let mut err = err.lock().await;
                let _ = err.write_all(bytes).await;
                let _ = err.flush().await;
            }
            (Sink::Frames(id, tx), Stream::Out) => {
                let _ = tx.send(Frame::Stdout(*id, bytes.to_vec()));
            }
            (Sink::Frames(id, tx), Stream::Err) => {
                let _ = tx.send(Frame::Stderr(*id, bytes.to_vec()));
            }
        }
    }
}

/// Options of `agent-run`.
pub struct RunOptions {
    /// Wall-clock limit of the command.
    pub timeout: Duration,
    /// Bytes forwarded per stream; the rest is read and dropped.
    pub output_bytes: u64,
    /// Directory to run in, created if missing.
    pub cwd: Option<String>,
    /// The command reads our own stdin (the exec's attached stdin); otherwise end of file.
    pub stdin: bool,
    /// The command.
    pub argv: Vec<String>,
}

/// `agent-run`: runs one command under supervision and returns the exit code to leave
/// with. The outcome is also told on stderr's last line, which is all an exec can carry.
pub fn supervise(opts: RunOptions) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    // The exec's stdout and stderr are this process's: out of the command's reach too.
    guard_channel();
    let request = Request {
        id: 0,
        hello: None,
        argv: opts.argv,
        env: Vec::new(),
        cwd: opts.cwd,
        timeout_ms: opts.timeout.as_millis() as u64,
        output_bytes: opts.output_bytes,
        stdin_base64: None,
        place: None,
        lane: None,
        payload: 0,
    };
    let run = async {
        let mut child = signal(SignalKind::child())?;
        // Orphans go to PID 1, not here: only our own command needs reaping.
        let reaper = Arc::new(Reaper::new(Scope::Own));
        let r = reaper.clone();
        tokio::spawn(async move {
            while child.recv().await.is_some() {
                r.reap_all();
            }
        });
        let sink = Sink::Std(
            tokio::sync::Mutex::new(async_out(std::io::stdout().as_fd())),
            tokio::sync::Mutex::new(async_out(std::io::stderr().as_fd())),
        );
        let input = match (opts.stdin, own_stdin()) {
            (false, _) => Input::Null,
            (true, Some(pipe)) => Input::Relay(pipe),
            (true, None) => Input::Inherit,
        };
        let exit = supervise_input(&reaper, &request, input, &sink).await;
        if opts.stdin {
            drain_own_stdin().await;
        }
        Ok::<_, std::io::Error>(exit)
    };
    match current_thread_runtime().and_then(|rt| rt.block_on(run)) {
        Ok(exit) => exit.exit_code,
        Err(e) => {
            eprintln!("lessl: cannot start: {e}");
            CANNOT_RUN_EXIT
        }
    }
}

/// What a supervised command reads on its stdin.
enum Input {
    /// End of file at once.
    Null,
    /// These bytes, written by the supervisor while the command runs, then end of file.
    Bytes(Vec<u8>),
    /// The supervisor's own stdin (the exec path, where the engine carries the bytes),
    /// copied into the command's pipe: the supervisor, not the command, reads it, so it can
    /// read the rest once the command is done with it (see [`drain_own_stdin`]).
    Relay(tokio::net::unix::pipe::Receiver),
    /// The supervisor's own stdin when it is not a pipe, handed to the command as it is.
    Inherit,
}

/// Our stdin as an async pipe, when it is one.
fn own_stdin() -> Option<tokio::net::unix::pipe::Receiver> {
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok())
}

/// How long `agent-run` reads (and drops) what is left of its stdin after the command ended.
const STDIN_DRAIN: Duration = Duration::from_secs(10);

/// Reads our stdin to its end (within [`STDIN_DRAIN`]) after the command is done: an engine
/// still writing a command's unread input when the exec's process exits breaks the whole
/// exec stream (Podman resets it and loses the exit), so the exec ends only after Lessl has
/// written all of it and closed it.
async fn drain_own_stdin() {
    let Some(mut pipe) = own_stdin() else { return };
    let mut buf = vec![0u8; CHUNK];
    let _ = tokio::time::timeout(STDIN_DRAIN, async {
        while let Ok(1..) = pipe.read(&mut buf).await {}
    })
    .await;
}

/// [`supervise_input`] with the stdin the request carries: the bytes after its line (on the
/// lane), or its base64 (on stdin).
async fn supervise_one(reaper: &Reaper, req: &Request, payload: Vec<u8>, sink: &Sink) -> Exit {
    use base64::Engine as _;
    let input = match &req.stdin_base64 {
        None if !payload.is_empty() => Input::Bytes(payload),
        None => Input::Null,
        Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(bytes) => Input::Bytes(bytes),
            Err(e) => {
                sink.started();
                let msg = format!("lessl: the request's stdin is not base64: {e}\n");
                sink.write(Stream::Err, msg.as_bytes()).await;
                return Exit {
                    exit_code: CANNOT_RUN_EXIT,
                    timed_out: false,
                    oom_killed: false,
                };
            }
        },
    };
    supervise_input(reaper, req, input, sink).await
}

/// Runs one command to its end: spawns it in its own process group, feeds its stdin,
/// forwards its output up to the cap, kills the group at the limit, and says how it ended.
async fn supervise_input(reaper: &Reaper, req: &Request, input: Input, sink: &Sink) -> Exit {
    let fail = |code| Exit {
        exit_code: code,
        timed_out: false,
        oom_killed: false,
    };
    let Some((program, args)) = req.argv.split_first() else {
        sink.started();
        sink.write(Stream::Err, b"lessl: no command given\n").await;
        return fail(CANNOT_RUN_EXIT);
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .stdin(match input {
            Input::Null => Stdio::null(),
            Input::Bytes(_) | Input::Relay(_) => Stdio::piped(),
            Input::Inherit => Stdio::inherit(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // SAFETY: the hook only makes async-signal-safe syscalls, as a forked child must.
    unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, prefer_for_oom_kill) };
    if let Some(dir) = &req.cwd {
        if let Err(e) = std::fs::create_dir_all(dir) {
            sink.started();
            sink.write(
                Stream::Err,
                format!("lessl: cannot create pwd {dir}: {e}\n").as_bytes(),
            )
            .await;
            return fail(CANNOT_RUN_EXIT);
        }
        cmd.current_dir(dir);
    }
    let ooms_before = oom_kills();
    let spawned = reaper.spawn(&mut cmd);
    sink.started();
    let (mut child, exited) = match spawned {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("lessl: cannot run `{program}`: {e}\n");
            sink.write(Stream::Err, msg.as_bytes()).await;
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                NOT_FOUND_EXIT
            } else {
                CANNOT_RUN_EXIT
            };
            return fail(code);
        }
    };
    let pgid = child.id() as i32;
    let out = child.stdout.take().map(OwnedFd::from);
    let err = child.stderr.take().map(OwnedFd::from);
    let mut feeding = Box::pin(feed(child.stdin.take().map(OwnedFd::from), input));
    let mut fed = false;
    let cap = req.output_bytes;
    let forwarding = async {
        tokio::join!(
            forward(out, Stream::Out, sink, cap),
            forward(err, Stream::Err, sink, cap)
        );
    };
    tokio::pin!(forwarding);

    let limit = Duration::from_millis(req.timeout_ms);
    let deadline = tokio::time::Instant::now() + limit;
    let mut exited = exited;
    let mut timed_out = false;
    let mut drained = false;
    // Output is forwarded while we wait; pipes closing first does not mean the exit.
    let status = loop {
        tokio::select! {
            s = &mut exited => break s.ok(),
            _ = tokio::time::sleep_until(deadline) => {
                timed_out = true;
                break None;
            }
            _ = &mut forwarding, if !drained => drained = true,
            // Written alongside, so a command that reads its input only after printing (or
            // never) blocks neither way; the pipe closes when it is all written.
            _ = &mut feeding, if !fed => fed = true,
        }
    };
    // A command that exited without reading it all (or left a child holding the pipe):
    // the rest is dropped here, which closes our end.
    drop(feeding);
    if timed_out {
        // SAFETY: plain syscall; a negative pid addresses the whole process group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut exited).await;
    }
    if !drained {
        let _ = tokio::time::timeout(DRAIN_GRACE, &mut forwarding).await;
    }
    let code = match status {
        _ if timed_out => TIMEOUT_EXIT,
        Some(raw) => decode_status(raw),
        None => CANNOT_RUN_EXIT,
    };
    let oom_killed = !timed_out && code == SIGKILL_EXIT && oom_kills() > ooms_before;
    // On a line of its own, so a command's unterminated last line cannot hide it.
    if timed_out {
        let msg = format!("\n{TIMEOUT_MARK} after {limit:?} and was killed\n");
        sink.write(Stream::Err, msg.as_bytes()).await;
    } else if oom_killed {
        sink.write(Stream::Err, format!("\n{OOM_MARK}\n").as_bytes())
            .await;
    }
    Exit {
        exit_code: code,
        timed_out,
        oom_killed,
    }
}

/// In the forked child before exec: raises its `oom_score_adj` to the maximum (allowed
/// without any capability), so that at the memory limit the kernel kills a command, never
/// the agent, and a daemon task survives its commands' OOM kills. Best effort: a kernel
/// without the file still runs the command.
fn prefer_for_oom_kill() -> std::io::Result<()> {
    const PATH: &std::ffi::CStr = c"/proc/self/oom_score_adj";
    // SAFETY: open/write/close are async-signal-safe; the path is NUL-terminated and the
    // buffer valid for its length.
    unsafe {
        let fd = libc::open(PATH.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, b"1000".as_ptr().cast(), 4);
            libc::close(fd);
        }
    }
    Ok(())
}

/// A wait status as a shell reports it: the exit code, or 128 + the signal.
fn decode_status(raw: i32) -> i32 {
    let signal = raw & 0x7f;
    if signal == 0 {
        (raw >> 8) & 0xff
    } else {
        128 + signal
    }
}

/// OOM kills so far in this container's memory cgroup (v2, then v1); 0 when unreadable.
fn oom_kills() -> u64 {
    [
        "/sys/fs/cgroup/memory.events",
        "/sys/fs/cgroup/memory/memory.oom_control",
    ]
    .iter()
    .find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    })
    .unwrap_or(0)
}

/// Writes the command's stdin (given bytes, or relayed from ours) into its pipe, then closes
/// it. A command that exits without reading it all breaks the pipe (EPIPE: Rust ignores
/// SIGPIPE): not an error, the rest is simply not wanted.
async fn feed(fd: Option<OwnedFd>, input: Input) {
    let Some(fd) = fd else { return };
    let Ok(mut pipe) = tokio::net::unix::pipe::Sender::from_owned_fd(fd) else {
        return;
    };
    match input {
        Input::Bytes(bytes) => {
            let _ = pipe.write_all(&bytes).await;
        }
        Input::Relay(mut from) => {
            let mut buf = vec![0u8; CHUNK];
            while let Ok(n @ 1..) = from.read(&mut buf).await {
                if pipe.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
        Input::Null | Input::Inherit => {}
    }
}

/// Copies up to `cap` bytes from one of the command's pipes to the sink, then keeps reading
/// (and dropping) so the command never blocks on a full pipe.
async fn forward(fd: Option<OwnedFd>, stream: Stream, sink: &Sink, cap: u64) {
    let Some(fd) = fd else { return };
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    copy_capped(&mut pipe, stream, sink, cap).await;
}

async fn copy_capped<R: AsyncRead + Unpin>(from: &mut R, stream: Stream, sink: &Sink, cap: u64) {
    let mut left = cap;
    let mut buf = vec![0u8; CHUNK];
    let mut open = true;
    while open {
        let mut n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let until = tokio::time::Instant::now() + GATHER;
        while n < buf.len() {
            // A read is cancel-safe: one cut by the deadline took nothing.
            match tokio::time::timeout_at(until, from.read(&mut buf[n..])).await {
                Ok(Ok(0) | Err(_)) => {
                    open = false;
                    break;
                }
                Ok(Ok(more)) => n += more,
                Err(_) => break,
            }
        }
        if left > 0 {
            let take = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            sink.write(stream, &buf[..take]).await;
            left -= take as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_decode_like_a_shell() {
        assert_eq!(decode_status(0), 0);
        assert_eq!(decode_status(3 << 8), 3);
        assert_eq!(decode_status(9), 137);
        assert_eq!(decode_status(15), 143);
    }

    fn request(argv: &[&str], timeout_ms: u64, output_bytes: u64) -> Request {
        Request {
            id: 1,
            hello: None,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("GREETING".into(), "hi".into())],
            cwd: None,
            timeout_ms,
            output_bytes,
            stdin_base64: None,
            place: None,
            lane: None,
            payload: 0,
        }
    }

    /// Runs the supervisor for real on this machine (no container needed) and collects frames.
    async fn run(req: Request) -> (Vec<u8>, Vec<u8>, Exit) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut child = signal(SignalKind::child()).unwrap();
        let reaper = Arc::new(Reaper::new(Scope::Own));
        let r = reaper.clone();
        let reaping = tokio::spawn(async move {
            while child.recv().await.is_some() {
                r.reap_all();
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let exit = supervise_one(&reaper, &req, Vec::new(), &Sink::Frames(req.id, tx)).await;
        reaping.abort();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Ok(f) = rx.try_recv() {
            match f {
                Frame::Stdout(_, b) => out.extend(b),
                Frame::Stderr(_, b) => err.extend(b),
                Frame::Started(1) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        (out, err, exit)
    }

    #[tokio::test]
    async fn supervisor_runs_caps_and_kills() {
        let (out, err, exit) = run(request(
            &["/bin/sh", "-c", "echo $GREETING; echo e >&2; exit 3"],
            5000,
            100,
        ))
        .await;
        assert_eq!(out, b"hi\n");
        assert_eq!(err, b"e\n");
        assert_eq!(exit.exit_code, 3);

        let (out, _, exit) = run(request(
            &["/bin/sh", "-c", "yes | head -c 100000"],
            5000,
            10,
        ))
        .await;
        assert_eq!(out.len(), 10);
        assert_eq!(exit.exit_code, 0);

        let t = std::time::Instant::now();
        let (out, err, exit) = run(request(
            &[
                "/bin/sh",
                "-c",
                "echo before; (sleep 30; echo child) & sleep 30",
            ],
            300,
            100,
        ))
        .await;
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(exit.timed_out);
        assert_eq!(exit.exit_code, TIMEOUT_EXIT);
        assert_eq!(out, b"before\n");
        assert!(String::from_utf8_lossy(&err).contains(TIMEOUT_MARK));

        let (_, _, exit) = run(request(&["/bin/sh", "-c", "kill -TERM $$"], 5000, 100)).await;
        assert_eq!(exit.exit_code, 143);

        let (_, err, exit) = run(request(&["/no/such/program"], 5000, 100)).await;
        assert_eq!(exit.exit_code, NOT_FOUND_EXIT);
        assert!(String::from_utf8_lossy(&err).contains("/no/such/program"));
    }

    #[tokio::test]
    async fn stdin_arrives_whole_and_unread_stdin_blocks_nothing() {
        use base64::Engine as _;
        let b64 = |b: &[u8]| Some(base64::engine::general_purpose::STANDARD.encode(b));
        let every: Vec<u8> = (0..=255u8).collect();
        let mut req = request(&["cat"], 5000, 1000);
        req.stdin_base64 = b64(&every);
        let (out, _, exit) = run(req).await;
        assert_eq!(out, every);
        assert_eq!(exit.exit_code, 0);

        // Without stdin, `cat` reads end of file at once.
        let (out, _, exit) = run(request(&["cat"], 5000, 100)).await;
        assert_eq!((out.as_slice(), exit.exit_code), (&b""[..], 0));

        // 4 MiB, far over a pipe's buffer, to a command that reads none of it and exits,
        // and to one that leaves a sleeping child holding the pipe.
        let big = vec![b'x'; 4 << 20];
        for script in ["exit 7", "sleep 3 & exit 7"] {
            let t = std::time::Instant::now();
            let mut req = request(&["/bin/sh", "-c", script], 10_000, 100);
            req.stdin_base64 = b64(&big);
            let (_, _, exit) = run(req).await;
            assert_eq!(exit.exit_code, 7, "{script}");
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{script}: {:?}",
                t.elapsed()
            );
        }

        // All of it reaches a command that reads it all.
        let mut req = request(&["/bin/sh", "-c", "wc -c"], 10_000, 100);
        req.stdin_base64 = b64(&big);
        let (out, _, _) = run(req).await;
        assert_eq!(String::from_utf8_lossy(&out).trim(), (4 << 20).to_string());
    }

    #[tokio::test]
    async fn a_background_process_holding_the_pipes_does_not_hold_the_answer() {
        let t = std::time::Instant::now();
        let (out, _, exit) = run(request(
            &["/bin/sh", "-c", "sleep 5 & echo done"],
            10_000,
            100,
        ))
        .await;
        assert_eq!(out, b"done\n");
        assert_eq!(exit.exit_code, 0);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
    }

    /// Frames `copy_capped` sends for what `write` writes.
    async fn frames_of(
        cap: u64,
        write: impl std::future::Future<Output = ()> + Send + 'static,
        reader: tokio::io::DuplexStream,
    ) -> Vec<Vec<u8>> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sink = Sink::Frames(7, tx);
        let writing = tokio::spawn(write);
        let mut reader = reader;
        copy_capped(&mut reader, Stream::Out, &sink, cap).await;
        writing.await.unwrap();
        drop(sink);
        let mut frames = Vec::new();
        while let Some(frame) = rx.recv().await {
            match frame {
                Frame::Stdout(7, bytes) => frames.push(bytes),
                other => panic!("unexpected frame {other:?}"),
            }
        }
        frames
    }

    #[tokio::test(start_paused = true)]
    async fn output_written_close_together_goes_in_one_frame_and_a_pause_ends_it() {
        let (mut w, r) = tokio::io::duplex(1 << 20);
        let frames = frames_of(
            u64::MAX,
            async move {
                w.write_all(b"one ").await.unwrap();
                w.write_all(b"two\n").await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                w.write_all(b"three\n").await.unwrap();
            },
            r,
        )
        .await;
        assert_eq!(frames, [b"one two\n".to_vec(), b"three\n".to_vec()]);
    }

    #[tokio::test(start_paused = true)]
    async fn fast_output_goes_in_whole_chunks_and_stops_at_the_cap() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (mut w, r) = tokio::io::duplex(16 << 10);
        let sent = data.clone();
        let frames = frames_of(
            u64::MAX,
            async move {
                for piece in sent.chunks(4096) {
                    w.write_all(piece).await.unwrap();
                }
            },
            r,
        )
        .await;
        assert_eq!(frames.concat(), data);
        let sizes: Vec<usize> = frames.iter().map(Vec::len).collect();
        assert_eq!(sizes, [CHUNK, CHUNK, CHUNK, 200_000 - 3 * CHUNK]);

        let (mut w, r) = tokio::io::duplex(16 << 10);
        let sent = data.clone();
        let frames = frames_of(
            100_000,
            async move {
                for piece in sent.chunks(4096) {
                    w.write_all(piece).await.unwrap();
                }
            },
            r,
        )
        .await;
        assert_eq!(frames.concat(), data[..100_000]);
    }
}
