//! How the client shows Lessl's answers: the models it reads (only the fields it shows), each
//! command's output on its stream, the `ps` table, the progress line and the exit codes.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::{CliError, RUN_FAILED_EXIT};
use crate::util::{parse_rfc3339, short};

/// The server's own JSON text (in its own key order, compact for tasks) is shown as is.
pub(super) fn raw_json(answer: &Bytes) -> String {
    let mut text = String::from_utf8_lossy(answer).trim_end().to_string();
    text.push('\n');
    text
}

/// Writes to stdout; a reader that went away (`| head`) is not an error worth a message.
pub(super) fn write_out(out: &mut impl Write, bytes: &[u8]) -> Result<(), CliError> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e)),
        _ => Ok(()),
    }
}

/// Waits for `fut`; on a terminal, shows the elapsed time on stderr meanwhile, so a long
/// run does not look hung. Piped, stderr carries only the commands' own output.
pub(super) async fn with_progress<F: Future>(fut: F) -> F::Output {
    with_progress_of(fut, &Progress::default()).await
}

/// The progress line of a live answer: shown until the first output, which clears it.
#[derive(Debug, Default)]
pub(super) struct Progress {
    shown: std::cell::Cell<bool>,
    done: std::cell::Cell<bool>,
}

impl Progress {
    /// Ends the progress line (cleared when it was shown): output comes next.
    pub(super) fn stop(&self) {
        if !self.done.replace(true) && self.shown.get() {
            eprint!("\r\x1b[K");
        }
    }
}

/// As [`with_progress`], for a future whose output stops the progress line as it comes.
pub(super) async fn with_progress_of<F: Future>(fut: F, progress: &Progress) -> F::Output {
    if !std::io::stderr().is_terminal() {
        return fut.await;
    }
    tokio::pin!(fut);
    let started = Instant::now();
    let period = Duration::from_secs(1);
    let mut tick = tokio::time::interval_at((started + period).into(), period);
    loop {
        tokio::select! {
            out = &mut fut => {
                progress.stop();
                return out;
            }
            _ = tick.tick() => {
                if !progress.done.get() {
                    eprint!("\r{}", progress_line(started.elapsed()));
                    progress.shown.set(true);
                }
            }
        }
    }
}

pub(super) fn progress_line(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    format!("lessl: running, {}:{:02} elapsed", s / 60, s % 60)
}

/// A task as the API reports it; only what the client shows. Unknown fields are ignored so
/// an older client keeps working against a newer Lessl.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Task {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    image: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    daemon: bool,
    #[serde(default)]
    created_at: String,
    #[serde(default)]
    expires_at: String,
    #[serde(default)]
    results: Vec<CmdResult>,
    #[serde(default)]
    error: Option<RunFailure>,
    /// What the run collected (`collect`), as the API gives it.
    #[serde(default)]
    pub(super) files: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct CmdResult {
    #[serde(default)]
    cmd: Value,
    exit_code: Option<i64>,
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
    #[serde(default)]
    timed_out: bool,
    #[serde(default)]
    truncated: bool,
    #[serde(default)]
    oom_killed: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct RunFailure {
    code: String,
    message: String,
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    answer: &Bytes,
) -> Result<T, CliError> {
    serde_json::from_slice(answer).map_err(|e| CliError::Decode {
        what: what.to_string(),
        error: e.to_string(),
    })
}

/// A POST answers with the request's shape: one task, or an array of them.
pub(super) fn decode_tasks(what: &str, answer: &Bytes) -> Result<Vec<Task>, CliError> {
    match decode::<Value>(what, answer)? {
        Value::Array(_) => decode(what, answer),
        _ => decode(what, answer).map(|t| vec![t]),
    }
}

/// How one task's run ended, for the exit code.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Every command ran to its end: 0, or the failing command's code.
    Exited(u8),
    /// Lessl could not complete the run; why.
    Failed(String),
}

pub(super) fn outcome(task: &Task) -> Outcome {
    if let Some(e) = &task.error {
        return Outcome::Failed(format!("{} ({})", e.message, e.code));
    }
    for (i, r) in task.results.iter().enumerate() {
        match r.exit_code {
            Some(0) => {}
            // A code a process cannot exit with still has to read as a failure.
            Some(c) => {
                return Outcome::Exited(u8::try_from(c).ok().filter(|&b| b != 0).unwrap_or(1))
            }
            None => {
                return Outcome::Failed(format!(
                    "command {} ({}) did not finish",
                    i + 1,
                    show_cmd(&r.cmd)
                ))
            }
        }
    }
    Outcome::Exited(0)
}

/// The first non-zero code across the tasks of a batch, in order.
pub(super) fn batch_exit_code(tasks: &[Task]) -> u8 {
    tasks
        .iter()
        .map(|t| match outcome(t) {
            Outcome::Exited(c) => c,
            Outcome::Failed(_) => RUN_FAILED_EXIT,
        })
        .find(|&c| c != 0)
        .unwrap_or(0)
}

/// Each command's output on the matching stream, in order, with a note where Lessl cut it.
pub(super) fn print_results(tasks: &[Task]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    for task in tasks {
        for (i, r) in task.results.iter().enumerate() {
            write_out(&mut out, r.stdout.as_bytes())?;
            write_err(&r.stderr);
            write_err(&notes(i, r));
        }
        write_err(&failure_note(task));
    }
    Ok(())
}

/// The agent ends stderr with its own line for a timeout or an OOM kill; only when the
/// output was cut may that line be gone, so only then is it repeated here.
fn notes(i: usize, r: &CmdResult) -> String {
    let mut text = String::new();
    if r.truncated {
        let cmd = format!("command {} ({})", i + 1, show_cmd(&r.cmd));
        text.push_str(&format!(
            "lessl: {cmd}: output was cut at the output limit\n"
        ));
        if r.timed_out {
            text.push_str(&format!("lessl: {cmd} was killed at its time limit\n"));
        }
        if r.oom_killed {
            text.push_str(&format!("lessl: {cmd} was killed at the memory limit\n"));
        }
    }
    text
}

fn failure_note(task: &Task) -> String {
    match outcome(task) {
        Outcome::Failed(why) => format!("lessl: task {}: {why}\n", short(&task.id)),
        Outcome::Exited(_) => String::new(),
    }
}

/// Writes to stderr: unbuffered, and a closed stderr leaves nowhere to report to.
fn write_err(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// One line of a live answer; only what the client shows.
#[derive(Debug, Deserialize)]
struct Event {
    event: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    index: usize,
    #[serde(default)]
    data: String,
    #[serde(default)]
    result: Option<CmdResult>,
    #[serde(default)]
    task: Option<Task>,
}

/// Output on its way to the terminal.
#[derive(Debug)]
enum Out {
    Stdout(String),
    Stderr(String),
}

/// A live answer shown as it comes: each chunk of output on its stream at once, the notes
/// of each command when it exits, and the tasks as they ended, for the exit code. In a batch
/// the tasks' outputs do not mix: the first task's shows live, a later one's waits (in
/// memory) until every task before it ended, as the whole answer would have been shown.
#[derive(Debug)]
pub(super) struct Live<'a> {
    /// Cleared before the first output.
    progress: &'a Progress,
    /// Ids of the tasks that started (their `task` line), in the request's order.
    started: Vec<String>,
    /// How many of `started` ended and were shown whole: the next one shows live.
    shown: usize,
    /// Output of tasks after the one shown live, by task, in order.
    waiting: Vec<(String, Vec<Out>)>,
    /// Tasks that ended.
    ended: Vec<Task>,
}

impl<'a> Live<'a> {
    pub(super) fn new(progress: &'a Progress) -> Self {
        Live {
            progress,
            started: Vec::new(),
            shown: 0,
            waiting: Vec::new(),
            ended: Vec::new(),
        }
    }

    pub(super) fn line(&mut self, what: &str, line: &[u8]) -> Result<(), CliError> {
        let e: Event = serde_json::from_slice(line).map_err(|e| CliError::Decode {
            what: what.to_string(),
            error: e.to_string(),
        })?;
        match e.event.as_str() {
            "task" => {
                if let Some(t) = e.task {
                    self.started.push(t.id);
                }
            }
            "stdout" => self.out(&e.id, Out::Stdout(e.data))?,
            "stderr" => self.out(&e.id, Out::Stderr(e.data))?,
            "exit" => {
                if let Some(r) = &e.result {
                    let text = notes(e.index, r);
                    if !text.is_empty() {
                        self.out(&e.id, Out::Stderr(text))?;
                    }
                }
            }
            "end" => {
                if let Some(task) = e.task {
                    let text = failure_note(&task);
                    if !text.is_empty() {
                        self.out(&task.id, Out::Stderr(text))?;
                    }
                    self.ended.push(task);
                    self.advance()?;
                }
            }
            // `error` is said again by `end`'s task; newer events are not this client's.
            _ => {}
        }
        Ok(())
    }

    /// Shows `out` of task `id` now when it is the live one, or keeps it for later.
    fn out(&mut self, id: &str, out: Out) -> Result<(), CliError> {
        if self.started.get(self.shown).is_none_or(|live| live == id) {
            return self.show(out);
        }
        match self.waiting.iter_mut().find(|(w, _)| w == id) {
            Some((_, outs)) => outs.push(out),
            None => self.waiting.push((id.to_string(), vec![out])),
        }
        Ok(())
    }

    fn show(&self, out: Out) -> Result<(), CliError> {
        self.progress.stop();
        match out {
            Out::Stdout(text) => write_out(&mut std::io::stdout().lock(), text.as_bytes()),
            Out::Stderr(text) => {
                write_err(&text);
                Ok(())
            }
        }
    }

    /// Past every task that ended in order, showing what the next one printed meanwhile.
    fn advance(&mut self) -> Result<(), CliError> {
        while let Some(id) = self.started.get(self.shown).cloned() {
            if let Some(i) = self.waiting.iter().position(|(w, _)| *w == id) {
                for out in self.waiting.remove(i).1 {
                    self.show(out)?;
                }
            }
            if !self.ended.iter().any(|t| t.id == id) {
                break;
            }
            self.shown += 1;
        }
        Ok(())
    }

    /// The tasks in the request's order, once the answer ended; an answer cut before a
    /// run's `end` is a failure.
    pub(super) fn finish(mut self, what: &str) -> Result<Vec<Task>, CliError> {
        let mut tasks = Vec::with_capacity(self.started.len());
        for id in &self.started {
            match self.ended.iter().position(|t| &t.id == id) {
                Some(i) => tasks.push(self.ended.swap_remove(i)),
                None => {
                    return Err(CliError::Request {
                        what: what.to_string(),
                        error: "the answer ended before the run did".into(),
                    })
                }
            }
        }
        if tasks.is_empty() {
            return Err(CliError::Request {
                what: what.to_string(),
                error: "the answer held no task".into(),
            });
        }
        Ok(tasks)
    }
}

pub(super) fn show_cmd(cmd: &Value) -> String {
    // The object form (a command given with stdin) shows what it runs.
    let cmd = cmd.get("run").unwrap_or(cmd);
    let text = match cmd {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    const MAX: usize = 60;
    if text.chars().count() > MAX {
        format!("`{}…`", text.chars().take(MAX).collect::<String>())
    } else {
        format!("`{text}`")
    }
}

/// The `ps` table: columns as wide as their widest cell, times relative to `now`.
pub(super) fn table(tasks: &[Task], now: u64) -> String {
    let mut rows = vec![[
        "ID", "NAME", "IMAGE", "STATE", "DAEMON", "CREATED", "EXPIRES",
    ]
    .map(String::from)];
    for t in tasks {
        rows.push([
            short(&t.id).to_string(),
            t.name.clone().unwrap_or_else(|| "-".into()),
            t.image.clone(),
            t.state.clone(),
            if t.daemon { "yes" } else { "no" }.to_string(),
            parse_rfc3339(&t.created_at)
                .map(|at| format!("{} ago", span(now.saturating_sub(at))))
                .unwrap_or_else(|| t.created_at.clone()),
            parse_rfc3339(&t.expires_at)
                .map(|at| match at.checked_sub(now) {
                    Some(left) if left > 0 => format!("in {}", span(left)),
                    _ => "now".to_string(),
                })
                .unwrap_or_else(|| t.expires_at.clone()),
        ]);
    }
    let mut widths = [0; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(widths) {
            line.push_str(&format!("{cell:<w$}   "));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// A duration in its largest whole unit: `42s`, `9m`, `3h`, `2d`.
pub(super) fn span(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(json: Value) -> Task {
        serde_json::from_value(json).unwrap()
    }

    fn result(code: Option<i64>) -> Value {
        serde_json::json!({"cmd": "x", "exit_code": code, "stdout": "", "stderr": "",
            "duration_ms": 1, "timed_out": false, "truncated": false, "oom_killed": false})
    }

    #[test]
    fn exit_codes() {
        let ok =
            task(serde_json::json!({"id": "a", "results": [result(Some(0)), result(Some(0))]}));
        assert_eq!(outcome(&ok), Outcome::Exited(0));
        let failed = task(
            serde_json::json!({"id": "b", "results": [result(Some(0)), result(Some(3))],
            "failed_command": 1}),
        );
        assert_eq!(outcome(&failed), Outcome::Exited(3));
        let odd = task(serde_json::json!({"id": "c", "results": [result(Some(256))]}));
        assert_eq!(outcome(&odd), Outcome::Exited(1));
        let lost = task(serde_json::json!({"id": "d", "results": [result(None)]}));
        assert!(matches!(outcome(&lost), Outcome::Failed(m) if m.contains("did not finish")));
        let expired = task(serde_json::json!({"id": "e", "results": [result(None)],
            "error": {"code": "task.expired", "message": "the task reached its TTL"}}));
        assert_eq!(
            outcome(&expired),
            Outcome::Failed("the task reached its TTL (task.expired)".into())
        );
        assert_eq!(batch_exit_code(&[]), 0);
        assert_eq!(batch_exit_code(&[ok.clone(), ok.clone()]), 0);
        assert_eq!(
            batch_exit_code(&[ok.clone(), failed.clone(), expired.clone()]),
            3
        );
        assert_eq!(batch_exit_code(&[ok, expired, failed]), RUN_FAILED_EXIT);
        // A detached answer has no results yet: nothing failed.
        let started = task(serde_json::json!({"id": "f", "state": "starting", "results": []}));
        assert_eq!(outcome(&started), Outcome::Exited(0));
    }
    #[test]
    fn ps_table() {
        let now = 1_795_889_766; // 2026-11-28T18:16:06Z
        let tasks = [
            task(serde_json::json!({"id": "3f6c0a1b2c3d4e5f", "name": "box",
                "image": "lessl-test/busybox", "state": "idle", "daemon": true,
                "created_at": "2026-11-28T18:13:06Z", "expires_at": "2026-11-28T19:16:06Z"})),
            task(serde_json::json!({"id": "abc", "name": null, "image": "i",
                "state": "running", "daemon": false,
                "created_at": "2026-11-28T18:16:01Z", "expires_at": "2026-11-28T18:16:00Z"})),
            task(
                serde_json::json!({"id": "def", "image": "i", "state": "exited",
                "created_at": "garbled", "expires_at": ""}),
            ),
        ];
        let expected = "\
ID             NAME   IMAGE                STATE     DAEMON   CREATED   EXPIRES
3f6c0a1b2c3d   box    lessl-test/busybox   idle      yes      3m ago    in 1h
abc            -      i                    running   no       5s ago    now
def            -      i                    exited    no       garbled
";
        assert_eq!(table(&tasks, now), expected);
        assert_eq!(
            table(&[], now),
            "ID   NAME   IMAGE   STATE   DAEMON   CREATED   EXPIRES\n"
        );
    }
    #[test]
    fn spans() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(59), "59s");
        assert_eq!(span(60), "1m");
        assert_eq!(span(3599), "59m");
        assert_eq!(span(7200), "2h");
        assert_eq!(span(86_400 * 3 + 5), "3d");
    }
    #[test]
    fn commands_are_shown_short() {
        assert_eq!(show_cmd(&serde_json::json!("echo hi")), "`echo hi`");
        assert_eq!(
            show_cmd(&serde_json::json!({"run": ["cat", "-"], "stdin_bytes": 3})),
            "`cat -`"
        );
        assert_eq!(show_cmd(&serde_json::json!(["ls", "-l"])), "`ls -l`");
        let long = "x".repeat(100);
        assert_eq!(
            show_cmd(&Value::String(long)),
            format!("`{}…`", "x".repeat(60))
        );
    }
    #[test]
    fn progress_is_minutes_and_seconds() {
        assert_eq!(
            progress_line(Duration::from_secs(5)),
            "lessl: running, 0:05 elapsed"
        );
        assert_eq!(
            progress_line(Duration::from_secs(125)),
            "lessl: running, 2:05 elapsed"
        );
    }
}
