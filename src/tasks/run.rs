//! Runs one command in a running task container, by one of two paths to the in-container
//! agent, which enforces the wall-clock limit and the output cap: a request over the
//! container's attach stream ([`super::channel`], the fast path), or a Docker exec of
//! `agent-run` (the fallback). Output is kept up to the cap here too, so a misbehaving agent
//! still cannot flood Lessl; past a small budget it goes to a spill file ([`crate::spill`]),
//! so a command printing its whole cap does not grow Lessl's memory by as much.

use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::agent::protocol::{Frame, Request};
use crate::agent::{OOM_MARK, SIGKILL_EXIT, TIMEOUT_EXIT, TIMEOUT_MARK};
use crate::docker::models::ExecConfig;
use crate::docker::stream::{Demuxer, StreamKind};
use crate::docker::{Cause, DockerError, Step};
use crate::spill::{Output, Sink, Spiller};

use super::engine::Engine;

use super::channel::{Channel, Closed, START_DEADLINE};
use super::journal::CommandEvents;
use crate::spec::{Cmd, Command, Limits};

/// Where the agent binary is mounted in every task container.
pub const AGENT_PATH: &str = "/.lessl/lessl";
/// How long past a command's limit Lessl waits for the agent before giving up on the exec.
const AGENT_GRACE: Duration = Duration::from_secs(5);

/// The outcome of one command, as the API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct CmdResult {
    /// The command as given: a string, an array for exec form, or for the object form an
    /// object with its `run` and, in place of its stdin, `stdin_bytes`.
    pub cmd: serde_json::Value,
    /// None when the command never finished (its container was removed, or Docker failed).
    pub exit_code: Option<i64>,
    /// Serialized as text (lossy UTF-8); may lie partly in a spill file.
    pub stdout: Output,
    pub stderr: Output,
    pub duration_ms: u64,
    /// Killed at its wall-clock limit.
    pub timed_out: bool,
    /// stdout or stderr went over the output cap and was cut.
    pub truncated: bool,
    /// Killed by the kernel's OOM killer at the task's memory limit.
    pub oom_killed: bool,
}

impl CmdResult {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Reads spilled outputs back into memory (their files go): for results that could not be
/// written to the state directory and so are kept in memory until their TTL.
pub fn into_memory(results: &mut [CmdResult]) {
    for r in results {
        for output in [&mut r.stdout, &mut r.stderr] {
            if let Err(e) = output.into_memory() {
                crate::log!(warn: "reading spilled output back failed ({e}); it is lost");
                *output = Output::from("");
            }
        }
    }
}

/// Why a command has no exit code.
#[derive(Debug)]
pub enum RunError {
    /// Docker failed while setting up or running the exec; output so far is kept.
    Docker {
        partial: CmdResult,
        error: DockerError,
    },
    /// The attach stream or exec stream ended before the command did: the container
    /// stopped or went away under it. Output so far is kept.
    Lost { partial: CmdResult, why: String },
    /// The agent did not acknowledge the request in time; its channel is now dead.
    Unresponsive { partial: CmdResult, why: String },
    /// The agent's channel broke under the command (a frame that is not one); it is dead
    /// now, and later commands go by exec.
    ChannelBroken { partial: CmdResult, why: String },
}

impl RunError {
    /// What the command printed before it failed.
    pub fn partial(&self) -> &CmdResult {
        match self {
            RunError::Docker { partial, .. }
            | RunError::Lost { partial, .. }
            | RunError::Unresponsive { partial, .. }
            | RunError::ChannelBroken { partial, .. } => partial,
        }
    }
}

/// Bytes of a stream's end kept whatever the cap, to read the supervisor's last line.
const TAIL: usize = 256;

/// Output of one stream, kept up to a cap: in memory up to a budget, the rest spilled.
#[derive(Debug)]
struct Capture {
    sink: Sink,
    /// Bytes kept so far (in memory and spilled).
    kept: usize,
    cap: usize,
    truncated: bool,
    /// The last bytes seen, cap or not.
    tail: Vec<u8>,
}

impl Capture {
    fn new(cap: usize, spiller: Spiller) -> Self {
        Capture {
            sink: Sink::new(spiller),
            kept: 0,
            cap,
            truncated: false,
            tail: Vec::new(),
        }
    }

    /// Keeps what fits under the cap; returns how many of `bytes` that was.
    fn push(&mut self, bytes: &[u8]) -> usize {
        let keep = &bytes[bytes.len().saturating_sub(TAIL)..];
        self.tail.extend_from_slice(keep);
        let excess = self.tail.len().saturating_sub(TAIL);
        self.tail.drain(..excess);
        let room = self.cap.saturating_sub(self.kept);
        if bytes.len() > room {
            self.truncated = true;
        }
        let keep = &bytes[..bytes.len().min(room)];
        if !keep.is_empty() {
            self.sink.push(keep);
            self.kept += keep.len();
        }
        keep.len()
    }

    fn output(&self) -> Output {
        self.sink.output()
    }

    /// Whether the stream's last line starts with `mark`.
    fn ends_with_line(&self, mark: &str) -> bool {
        let tail = String::from_utf8_lossy(&self.tail);
        tail.trim_end_matches('\n')
            .rsplit('\n')
            .next()
            .is_some_and(|last| last.starts_with(mark))
    }
}

/// The argv Docker execs: the agent, told the limits, then the command.
pub fn agent_argv(cmd: &Cmd, limits: &Limits, pwd: Option<&str>) -> Vec<String> {
    let mut argv = vec![
        AGENT_PATH.to_string(),
        "agent-run".to_string(),
        "--timeout-ms".to_string(),
        ((limits.timeout_s * 1000.0).ceil() as u64).to_string(),
        // One byte past the cap, so Lessl can tell "exactly the cap" from "cut".
        "--output-bytes".to_string(),
        (limits.output_bytes + 1).to_string(),
    ];
    if let Some(p) = pwd {
        argv.push("--cwd".to_string());
        argv.push(p.to_string());
    }
    if cmd.stdin.is_some() {
        argv.push("--stdin".to_string());
    }
    argv.push("--".to_string());
    argv.extend(cmd.argv());
    argv
}

/// What one command printed so far, and since when it runs.
struct Outputs<'e> {
    started: Instant,
    out: Capture,
    err: Capture,
    /// The run's live events: output within the cap goes there as it comes.
    events: Option<&'e mut CommandEvents>,
}

impl<'e> Outputs<'e> {
    fn new(limits: &Limits, spiller: &Spiller, events: Option<&'e mut CommandEvents>) -> Self {
        let cap = usize::try_from(limits.output_bytes).unwrap_or(usize::MAX);
        Outputs {
            started: Instant::now(),
            out: Capture::new(cap, spiller.clone()),
            err: Capture::new(cap, spiller.clone()),
            events,
        }
    }

    fn stdout(&mut self, bytes: &[u8]) {
        let kept = self.out.push(bytes);
        if let Some(e) = self.events.as_deref_mut() {
            e.stdout(&bytes[..kept]);
        }
    }

    fn stderr(&mut self, bytes: &[u8]) {
        let kept = self.err.push(bytes);
        if let Some(e) = self.events.as_deref_mut() {
            e.stderr(&bytes[..kept]);
        }
    }

    fn result(
        &self,
        cmd: &Cmd,
        exit_code: Option<i64>,
        timed_out: bool,
        oom_killed: bool,
    ) -> CmdResult {
        CmdResult {
            cmd: display(cmd),
            exit_code,
            stdout: self.out.output(),
            stderr: self.err.output(),
            duration_ms: self.started.elapsed().as_millis() as u64,
            timed_out,
            truncated: self.out.truncated || self.err.truncated,
            oom_killed,
        }
    }
}

/// The command as given. Its stdin is not echoed back (it may be megabytes, in every
/// answer and state file): its length says which input it was given.
fn display(cmd: &Cmd) -> serde_json::Value {
    let run = match &cmd.run {
        Command::Shell(s) => serde_json::Value::String(s.clone()),
        Command::Exec(argv) => serde_json::json!(argv),
    };
    match (cmd.object, &cmd.stdin) {
        (false, _) => run,
        (true, None) => serde_json::json!({ "run": run }),
        (true, Some(bytes)) => serde_json::json!({ "run": run, "stdin_bytes": bytes.len() }),
    }
}

/// Runs `cmd` in container `id` and waits for it, at most its limit plus a grace period.
// The spec's parts, then where the command's live output goes.
#[allow(clippy::too_many_arguments)]
pub async fn run_command(
    docker: &dyn Engine,
    id: &str,
    cmd: &Cmd,
    env: &[(String, String)],
    pwd: Option<&str>,
    limits: &Limits,
    spiller: &Spiller,
    events: Option<&mut CommandEvents>,
) -> Result<CmdResult, RunError> {
    let mut o = Outputs::new(limits, spiller, events);
    // The exec path learns timeouts and OOM kills from the agent's last stderr line.
    let result = |o: &Outputs, exit_code: Option<i64>, timed_out| {
        let oom = exit_code == Some(SIGKILL_EXIT.into()) && o.err.ends_with_line(OOM_MARK);
        o.result(cmd, exit_code, timed_out, oom)
    };
    let config = ExecConfig {
        cmd: agent_argv(cmd, limits, pwd),
        env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        working_dir: None,
        attach_stdin: cmd.stdin.is_some(),
        attach_stdout: true,
        attach_stderr: true,
        tty: false,
    };
    let fail = |o: &Outputs, error| RunError::Docker {
        partial: result(o, None, false),
        error,
    };
    let exec = docker
        .create_exec(id, &config)
        .await
        .map_err(|e| fail(&o, e))?;
    // With stdin, the exec's stream is hijacked: the bytes go in beside the output coming
    // out, then a half-close is the command's end of file. Written by a task of its own so
    // a command that never reads them blocks nothing; it goes when this function returns.
    let (mut body, _feeding): (super::engine::Reader, Option<AbortOnDrop>) = match &cmd.stdin {
        None => (
            docker.start_exec(&exec.id).await.map_err(|e| fail(&o, e))?,
            None,
        ),
        Some(bytes) => {
            let io = docker
                .start_exec_with_stdin(&exec.id)
                .await
                .map_err(|e| fail(&o, e))?;
            let (read, mut write) = tokio::io::split(io);
            let bytes = bytes.clone();
            let feeding = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                // A command that exits without reading it all: the rest is not wanted.
                let _ = write.write_all(&bytes).await;
                let _ = write.shutdown().await;
            });
            (Box::new(read), Some(AbortOnDrop(feeding)))
        }
    };

    let limit = Duration::from_secs_f64(limits.timeout_s);
    let deadline = o.started + limit + AGENT_GRACE;
    let mut demux = Demuxer::new();
    let mut gave_up = false;
    let mut broken = None;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout_at(deadline, body.read(&mut chunk)).await {
            Err(_) => {
                gave_up = true;
                break;
            }
            // The stream ends when the command exits.
            Ok(Ok(0)) => break,
            // It breaks when the container or Docker goes away under the command.
            Ok(Err(e)) => {
                broken = Some(e.to_string());
                break;
            }
            Ok(Ok(n)) => {
                let fed = demux.feed(&chunk[..n], |kind, bytes| match kind {
                    StreamKind::Stdout => o.stdout(bytes),
                    StreamKind::Stderr => o.stderr(bytes),
                    StreamKind::Stdin => {}
                });
                if let Err(e) = fed {
                    broken = Some(e.to_string());
                    break;
                }
            }
        }
    }
    if gave_up {
        // The agent did not kill the command in time; report what it printed.
        return Ok(result(&o, None, true));
    }
    // A stream cut inside a frame is output known to be incomplete, never a success.
    if let Some(why) = broken.or_else(|| demux.finish().err().map(|e| e.to_string())) {
        return Err(RunError::Docker {
            partial: result(&o, None, false),
            error: DockerError {
                step: Step::StartExec,
                cause: Cause::Decode(format!("the exec stream broke: {why}")),
            },
        });
    }
    let exit_code = exit_code_of(docker, &exec.id)
        .await
        .map_err(|e| fail(&o, e))?;
    let timed_out = exit_code == Some(TIMEOUT_EXIT.into()) && o.err.ends_with_line(TIMEOUT_MARK);
    Ok(result(&o, exit_code, timed_out))
}

/// Runs `cmd` through the container's agent over its attach stream. None: the agent never
/// read the request (the channel was closed, or its input closed before this request), so
/// nothing ran and the command may go by exec instead.
pub async fn run_attached(
    channel: &Channel,
    cmd: &Cmd,
    env: &[(String, String)],
    pwd: Option<&str>,
    limits: &Limits,
    spiller: &Spiller,
    events: Option<&mut CommandEvents>,
) -> Option<Result<CmdResult, RunError>> {
    let mut o = Outputs::new(limits, spiller, events);
    let request = Request {
        id: 0,
        hello: None,
        argv: cmd.argv(),
        env: env.to_vec(),
        cwd: pwd.map(str::to_string),
        timeout_ms: (limits.timeout_s * 1000.0).ceil() as u64,
        // One byte past the cap, so Lessl can tell "exactly the cap" from "cut".
        output_bytes: limits.output_bytes + 1,
        // Empty input is said in the line; bytes follow it (the channel encodes them into
        // the line where its transport carries no payload).
        stdin_base64: cmd
            .stdin
            .as_ref()
            .filter(|b| b.is_empty())
            .map(|_| String::new()),
        place: None,
        lane: None,
        payload: cmd.stdin.as_ref().map_or(0, |b| b.len() as u64),
    };
    let stdin = cmd.stdin.as_deref().unwrap_or_default();
    let mut frames = channel.send_with(request, &[stdin]).await.ok()?;
    let start_by = Instant::now() + START_DEADLINE;
    let deadline = o.started + Duration::from_secs_f64(limits.timeout_s) + AGENT_GRACE;
    let mut started = false;
    loop {
        let until = if started {
            deadline
        } else {
            start_by.min(deadline)
        };
        let frame = match tokio::time::timeout_at(until, frames.recv()).await {
            Err(_) if !started => {
                let why = format!("the agent did not take the command within {START_DEADLINE:?}");
                channel.mark_dead(&why);
                return Some(Err(RunError::Unresponsive {
                    partial: o.result(cmd, None, false, false),
                    why,
                }));
            }
            Err(_) => return Some(Ok(o.result(cmd, None, true, false))),
            Ok(None) => {
                let partial = o.result(cmd, None, false, false);
                return Some(Err(match channel.closed() {
                    Some(Closed::Dead(why)) => RunError::ChannelBroken { partial, why },
                    _ => RunError::Lost {
                        partial,
                        why: "the container's stream ended under the command".to_string(),
                    },
                }));
            }
            Ok(Some(f)) => f,
        };
        match frame {
            Frame::Started(_) => started = true,
            // Only sent for a request the agent never read.
            Frame::Closed => return None,
            Frame::Stdout(_, b) => o.stdout(&b),
            Frame::Stderr(_, b) => o.stderr(&b),
            Frame::Exit(_, e) => {
                return Some(Ok(o.result(
                    cmd,
                    Some(e.exit_code.into()),
                    e.timed_out,
                    e.oom_killed,
                )))
            }
            Frame::Hello(_) | Frame::Placed(..) => {}
        }
    }
}

/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Docker can close the stream a moment before it records the exit code.
async fn exit_code_of(docker: &dyn Engine, exec_id: &str) -> Result<Option<i64>, DockerError> {
    for _ in 0..50 {
        let inspect = docker.inspect_exec(exec_id).await?;
        if !inspect.running {
            return Ok(inspect.exit_code);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::Exit;
    use crate::tasks::channel::fake::FakeAgent;

    fn limits() -> Limits {
        Limits {
            memory_mb: 1,
            cpus: 1.0,
            pids: 1,
            timeout_s: 60.0,
            output_bytes: 10,
            disk_mb: 1,
        }
    }

    /// Runs one command over the fake agent's channel while `agent` plays its part; returns
    /// the outcome and how long the run took.
    async fn attached<F, Fut>(agent: F) -> (Option<Result<CmdResult, RunError>>, Duration)
    where
        F: FnOnce(FakeAgent) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = FakeAgent> + Send,
    {
        let fake = FakeAgent::new();
        let chan = fake.chan.clone();
        let playing = tokio::spawn(async move { agent(fake).await });
        let cmd = Cmd::plain(Command::Shell("echo hi".into()));
        let t = Instant::now();
        let outcome = run_attached(
            &chan,
            &cmd,
            &[],
            None,
            &limits(),
            &Spiller::memory_only(),
            None,
        )
        .await;
        let took = t.elapsed();
        drop(playing.await.unwrap());
        (outcome, took)
    }

    #[tokio::test]
    async fn the_agents_answer_is_the_result() {
        let (outcome, _) = attached(|mut a| async move {
            a.hello(&[]).await;
            let id = a.request().await.id;
            let exit = Exit {
                exit_code: 3,
                timed_out: false,
                oom_killed: false,
            };
            a.say(&[
                Frame::Started(id),
                Frame::Stdout(id, b"hi\n".to_vec()),
                Frame::Exit(id, exit),
            ])
            .await;
            a
        })
        .await;
        let r = outcome.unwrap().unwrap();
        let stdout = r.stdout.to_string_lossy().unwrap();
        assert_eq!((r.exit_code, stdout.as_str()), (Some(3), "hi\n"));
    }

    #[tokio::test]
    async fn a_request_the_agent_never_read_goes_elsewhere_at_once() {
        let (outcome, took) = attached(|mut a| async move {
            a.hello(&[]).await;
            a.request().await;
            a.say(&[Frame::Closed]).await;
            a
        })
        .await;
        assert!(outcome.is_none(), "{outcome:?}");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_does_not_take_the_command_fails_it_in_five_seconds() {
        let (outcome, took) = attached(|mut a| async move {
            a.hello(&[]).await;
            a.request().await;
            // Holds the stream open and says nothing until the run gave up.
            tokio::time::sleep(Duration::from_secs(30)).await;
            a
        })
        .await;
        assert!(
            matches!(outcome, Some(Err(RunError::Unresponsive { .. }))),
            "{outcome:?}"
        );
        assert!(
            took >= START_DEADLINE && took < START_DEADLINE * 2,
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_broken_frame_fails_the_run_clearly_and_at_once() {
        let (outcome, took) = attached(|mut a| async move {
            a.hello(&[]).await;
            let id = a.request().await.id;
            a.say(&[Frame::Started(id)]).await;
            a.raw(1, &[0xee; 40]).await;
            a
        })
        .await;
        assert!(
            matches!(outcome, Some(Err(RunError::ChannelBroken { .. }))),
            "{outcome:?}"
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    fn text(c: &Capture) -> String {
        c.output().to_string_lossy().unwrap()
    }

    #[test]
    fn capture_cuts_at_the_cap() {
        let mut c = Capture::new(5, Spiller::memory_only());
        c.push(b"abc");
        assert!(!c.truncated);
        c.push(b"de");
        assert!(!c.truncated);
        assert_eq!(text(&c), "abcde");
        c.push(b"f");
        assert!(c.truncated);
        assert_eq!(text(&c), "abcde");
    }

    /// Spilling changes where bytes are kept, never which: the cap, `truncated` and the
    /// last line read the same with a budget of a few bytes as all in memory.
    #[test]
    fn a_spilling_capture_keeps_exactly_what_a_memory_one_does() {
        let dir = std::env::temp_dir().join(format!("lessl-capture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let chunks: [&[u8]; 6] = [
            b"abc",
            b"\xc3",
            b"\xa9defgh",
            b"ij\nlessl: com",
            b"mand timed out after 1s\n",
            b"xyz",
        ];
        for cap in [0, 1, 4, 9, 12, 20, 1000] {
            let mut mem = Capture::new(cap, Spiller::memory_only());
            let mut disk = Capture::new(cap, Spiller::new(Some(dir.clone()), 3));
            for c in chunks {
                mem.push(c);
                disk.push(c);
                assert_eq!(mem.truncated, disk.truncated, "cap {cap}");
                assert_eq!(
                    mem.output().to_bytes().unwrap(),
                    disk.output().to_bytes().unwrap(),
                    "cap {cap}"
                );
                assert_eq!(
                    mem.ends_with_line(TIMEOUT_MARK),
                    disk.ends_with_line(TIMEOUT_MARK)
                );
            }
            assert_eq!(disk.output().len(), cap.min(50) as u64, "cap {cap}");
            assert_eq!(disk.output().is_spilled(), cap > 3);
        }
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "spill files go with their captures"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn last_line_is_read_past_the_cap() {
        let mut c = Capture::new(4, Spiller::memory_only());
        c.push(&[b'x'; 1000]);
        c.push(b"\nlessl: command timed out after 1s and was killed\n");
        assert!(c.ends_with_line(TIMEOUT_MARK));
        assert!(!c.ends_with_line(OOM_MARK));
        assert_eq!(text(&c), "xxxx");
        c.push(b"user output after\n");
        assert!(!c.ends_with_line(TIMEOUT_MARK));
    }

    #[test]
    fn agent_argv_wraps_both_forms() {
        let limits = Limits {
            memory_mb: 1,
            cpus: 1.0,
            pids: 1,
            timeout_s: 1.5,
            output_bytes: 10,
            disk_mb: 1,
        };
        let argv = agent_argv(
            &Cmd::plain(Command::Shell("echo hi".into())),
            &limits,
            Some("/w"),
        );
        assert_eq!(
            argv,
            [
                AGENT_PATH,
                "agent-run",
                "--timeout-ms",
                "1500",
                "--output-bytes",
                "11",
                "--cwd",
                "/w",
                "--",
                "/bin/sh",
                "-c",
                "echo hi"
            ]
        );
        let cmd = Cmd {
            run: Command::Exec(vec!["echo".into(), "a".into()]),
            stdin: Some(b"x".to_vec()),
            object: true,
        };
        let argv = agent_argv(&cmd, &limits, None);
        assert_eq!(argv[argv.len() - 4..], ["--stdin", "--", "echo", "a"]);
        assert_eq!(
            display(&cmd),
            serde_json::json!({"run": ["echo", "a"], "stdin_bytes": 1})
        );
    }
}
