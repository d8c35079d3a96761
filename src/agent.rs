//! What runs inside task containers, from this same static binary mounted read-only:
//! `lessl agent`, the keep-alive PID 1 that reaps zombies and needs nothing from the image;
//! and `lessl agent-run`, the per-command supervisor that enforces the wall-clock limit on
//! the command's whole process group and caps its output. Never talks to Docker or the API.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Exit code when the command was killed at its limit, as timeout(1) does.
pub const TIMEOUT_EXIT: i32 = 124;
/// Exit code of a command killed by SIGKILL (128 + 9), which is how the OOM killer ends it.
pub const SIGKILL_EXIT: i32 = 137;
/// Last line on stderr when the supervisor killed the command at its limit. Lessl reads it
/// (with the exit code) to set `timed_out`; people read it to know why.
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

const WNOHANG: i32 = 1;
const SIGKILL: i32 = 9;

extern "C" {
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The keep-alive: sleeps as PID 1, reaping every orphan the commands leave, and exits on
/// SIGTERM or SIGINT (PID 1 gets no default handlers, so it must ask for them).
pub fn keep_alive() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    current_thread_runtime()?.block_on(async {
        let mut child = signal(SignalKind::child())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            tokio::select! {
                _ = child.recv() => reap(),
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
            }
        }
    })
}

fn reap() {
    let mut status = 0;
    // SAFETY: waitpid with a valid out-pointer; -1 waits for any child, WNOHANG never blocks.
    while unsafe { waitpid(-1, &mut status, WNOHANG) } > 0 {}
}

/// Options of `agent-run`.
pub struct RunOptions {
    /// Wall-clock limit of the command.
    pub timeout: Duration,
    /// Bytes forwarded per stream; the rest is read and dropped.
    pub output_bytes: u64,
    /// Directory to run in, created if missing.
    pub cwd: Option<String>,
    /// The command.
    pub argv: Vec<String>,
}

/// Runs one command under supervision and returns the exit code to leave with: the
/// command's, 128+N when killed by signal N, 124 on timeout, 126/127 when it cannot start.
pub fn supervise(opts: RunOptions) -> i32 {
    match current_thread_runtime() {
        Ok(rt) => rt.block_on(supervise_async(opts)),
        Err(e) => {
            eprintln!("lessl: cannot start: {e}");
            CANNOT_RUN_EXIT
        }
    }
}

async fn supervise_async(opts: RunOptions) -> i32 {
    if let Some(dir) = &opts.cwd {
        if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::env::set_current_dir(dir)) {
            eprintln!("lessl: cannot enter pwd {dir}: {e}");
            return CANNOT_RUN_EXIT;
        }
    }
    let Some((program, args)) = opts.argv.split_first() else {
        eprintln!("lessl: no command given");
        return CANNOT_RUN_EXIT;
    };
    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills everything it started.
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lessl: cannot run `{program}`: {e}");
            return if e.kind() == std::io::ErrorKind::NotFound {
                NOT_FOUND_EXIT
            } else {
                CANNOT_RUN_EXIT
            };
        }
    };
    let pgid = child.id().map(|p| p as i32);
    let ooms_before = oom_kills();
    let out = forward(child.stdout.take(), tokio::io::stdout(), opts.output_bytes);
    let err = forward(child.stderr.take(), tokio::io::stderr(), opts.output_bytes);
    let out = tokio::spawn(out);
    let err = tokio::spawn(err);

    let status = tokio::time::timeout(opts.timeout, child.wait()).await;
    let timed_out = status.is_err();
    let code = match status {
        Ok(Ok(status)) => exit_code(status),
        Ok(Err(e)) => {
            eprintln!("lessl: lost the command: {e}");
            CANNOT_RUN_EXIT
        }
        Err(_) => {
            if let Some(pgid) = pgid {
                // SAFETY: plain syscall; a negative pid addresses the whole process group.
                unsafe { kill(-pgid, SIGKILL) };
            }
            let _ = child.wait().await;
            TIMEOUT_EXIT
        }
    };
    let _ = tokio::time::timeout(DRAIN_GRACE, async {
        let _ = out.await;
        let _ = err.await;
    })
    .await;
    // On a line of its own, so a command's unterminated last line cannot hide it.
    if timed_out {
        eprintln!("\n{TIMEOUT_MARK} after {:?} and was killed", opts.timeout);
    } else if code == SIGKILL_EXIT && oom_kills() > ooms_before {
        eprintln!("\n{OOM_MARK}");
    }
    code
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

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => CANNOT_RUN_EXIT,
    }
}

/// Copies up to `cap` bytes from the command to our own stream, then keeps reading (and
/// dropping) so the command never blocks on a full pipe.
async fn forward<R, W>(from: Option<R>, mut to: W, cap: u64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(mut from) = from else { return };
    let mut left = cap;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if left > 0 {
            let take = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            if to.write_all(&buf[..take]).await.is_err() {
                left = 0;
                continue;
            }
            let _ = to.flush().await;
            left -= take as u64;
        }
    }
}
