//! The command-line client (`lessl run`, `exec`, `ps`, `status`, `rm`): it only speaks HTTP to a
//! Lessl, never to Docker, and turns answers into output, one-line errors and exit codes.

use std::fmt;
use std::future::Future;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;

/// Where `lessl serve` listens unless told otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8734";

/// Exit code when Lessl could not complete a run, as `docker run` uses it for its own
/// failures: distinct from any code a command is likely to exit with.
pub const RUN_FAILED_EXIT: u8 = 125;

/// The client subcommands, flattened into `lessl`'s own.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a task file (`-` for stdin): print each command's output, exit with the failing
    /// command's code.
    Run(RunArgs),
    /// Run a command in a live daemon task; exit with its code.
    Exec(ExecArgs),
    /// List the live tasks.
    Ps(PsArgs),
    /// Show one task as JSON.
    Status(StatusArgs),
    /// Remove tasks (their containers are killed).
    Rm(RmArgs),
    /// List (`ls`) or remove (`rm NAME...`) this Lessl's named volumes.
    Volume(VolumeArgs),
}

#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    pub action: VolumeAction,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Subcommand)]
pub enum VolumeAction {
    /// List the volumes: name, whether a container mounts it, the engine's name.
    Ls,
    /// Remove volumes by the names tasks give them.
    Rm {
        #[arg(required = true, value_parser = NonEmptyStringValueParser::new())]
        names: Vec<String>,
    },
}

/// How to reach the daemon; shared by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The Lessl to talk to: http://host:port or unix:/path.
    #[arg(long, env = "LESSL_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// File holding the bearer token to send.
    #[arg(long, env = "LESSL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Task file (one task object or an array), or `-` to read it from stdin.
    pub file: PathBuf,
    /// Do not wait for the commands: print the task id(s) once the containers started.
    #[arg(short, long)]
    pub detach: bool,
    /// Print the API's JSON answer (ids and results) instead of the commands' output.
    #[arg(long, conflicts_with = "detach")]
    pub json: bool,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Task id, short id or name.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub task: String,
    /// The command and its arguments, run without a shell (after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present = "shell",
        conflicts_with = "shell",
        value_name = "CMD"
    )]
    pub argv: Vec<String>,
    /// Run this string through `/bin/sh -c` instead.
    #[arg(long, value_name = "STRING")]
    pub shell: Option<String>,
    /// Set an environment variable for the command (repeatable).
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory of the command (absolute; created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Print the API's JSON answer as it is.
    #[arg(long, conflicts_with = "quiet")]
    pub json: bool,
    /// Print only the full task ids, one a line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Also list finished tasks whose results are kept until their TTL.
    #[arg(short, long)]
    pub all: bool,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Task id, short id or name.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub task: String,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Task ids, short ids or names.
    #[arg(required = true, value_parser = NonEmptyStringValueParser::new())]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub conn: Connection,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// Every way the client can fail, named after the step that failed.
#[derive(Debug)]
pub enum CliError {
    /// `--url` / `LESSL_URL` is not a URL this client can use.
    Url { url: String, message: String },
    /// The token file could not be read, or holds no token.
    ReadTokenFile { path: PathBuf, message: String },
    /// The task file (or stdin) could not be read.
    ReadTaskFile {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The async runtime could not be built.
    Runtime(std::io::Error),
    /// Nothing answered at the daemon's address.
    Connect { url: String, error: std::io::Error },
    /// The HTTP exchange broke after connecting.
    Request { what: String, error: String },
    /// Lessl answered with an error.
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
        hint: Option<&'static str>,
    },
    /// Lessl's answer is not what this client understands.
    Decode { what: String, error: String },
    /// Output could not be written.
    Output(std::io::Error),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Url { url, message } => write!(f, "LESSL_URL/--url `{url}`: {message}"),
            CliError::ReadTokenFile { path, message } => {
                write!(f, "token file {}: {message}", path.display())
            }
            CliError::ReadTaskFile { path, error } => {
                write!(f, "cannot read task file {}: {error}", path.display())
            }
            CliError::Runtime(e) => write!(f, "cannot start the client runtime: {e}"),
            CliError::Connect { url, error } => write!(
                f,
                "cannot connect to Lessl at {url}: {error} (is `lessl serve` running? set LESSL_URL or --url)"
            ),
            CliError::Request { what, error } => write!(f, "{what} failed: {error}"),
            CliError::Api {
                code,
                message,
                field,
                hint,
                ..
            } => {
                match field {
                    Some(field) => write!(f, "{message} ({code}, field {field})")?,
                    None => write!(f, "{message} ({code})")?,
                }
                match hint {
                    Some(h) => write!(f, "; {h}"),
                    None => Ok(()),
                }
            }
            CliError::Decode { what, error } => {
                write!(f, "cannot understand Lessl's answer to {what}: {error}")
            }
            CliError::Output(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

impl std::error::Error for CliError {}

impl Command {
    /// The exit code when the client itself fails. `run` and `exec` otherwise pass a command's
    /// own code through, so like `docker run` they use 125, which a script can tell apart
    /// from the command exiting 1.
    pub fn error_exit_code(&self) -> u8 {
        match self {
            Command::Run(_) | Command::Exec(_) => RUN_FAILED_EXIT,
            Command::Ps(_) | Command::Status(_) | Command::Rm(_) | Command::Volume(_) => 1,
        }
    }
}

/// Runs one client subcommand; `Ok` carries the exit code.
pub fn main(cmd: Command) -> Result<u8, CliError> {
    // Read local inputs before any network I/O, so a typo fails fast and clearly.
    let (conn, body) = match &cmd {
        Command::Run(a) => (&a.conn, Some(read_task_file(&a.file)?)),
        Command::Exec(a) => (&a.conn, None),
        Command::Ps(a) => (&a.conn, None),
        Command::Status(a) => (&a.conn, None),
        Command::Rm(a) => (&a.conn, None),
        Command::Volume(a) => (&a.conn, None),
    };
    let client = Client::new(conn)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        match cmd {
            Command::Run(a) => run(&client, body.unwrap_or_default(), a.detach, a.json).await,
            Command::Exec(a) => exec(&client, a).await,
            Command::Ps(a) => ps(&client, a).await,
            Command::Status(a) => status(&client, &a.task).await,
            Command::Rm(a) => rm(&client, &a.tasks).await,
            Command::Volume(a) => volume(&client, a.action).await,
        }
    })
}

fn read_task_file(path: &Path) -> Result<Vec<u8>, CliError> {
    let fail = |error| CliError::ReadTaskFile {
        path: path.to_path_buf(),
        error,
    };
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(fail)?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(fail)
    }
}

async fn run(client: &Client, body: Vec<u8>, detach: bool, json: bool) -> Result<u8, CliError> {
    if detach {
        let answer = client
            .send(Method::POST, "/tasks?wait=false", Some(body))
            .await?;
        let tasks = decode_tasks("POST /tasks", &answer)?;
        let mut out = std::io::stdout().lock();
        for t in &tasks {
            write_out(&mut out, format!("{}\n", t.id).as_bytes())?;
        }
        return Ok(0);
    }
    let answer = with_progress(client.send(Method::POST, "/tasks", Some(body))).await?;
    let tasks = decode_tasks("POST /tasks", &answer)?;
    if json {
        write_out(&mut std::io::stdout().lock(), raw_json(&answer).as_bytes())?;
        return Ok(batch_exit_code(&tasks));
    }
    print_results(&tasks)?;
    // The id reads the results again (`lessl status ID`) until the TTL. Only for a person at
    // a terminal: piped stderr carries the commands' own stderr and nothing else.
    if std::io::stderr().is_terminal() {
        for t in &tasks {
            eprintln!("lessl: task {}", t.id);
        }
    }
    Ok(batch_exit_code(&tasks))
}

async fn exec(client: &Client, a: ExecArgs) -> Result<u8, CliError> {
    let cmd = match a.shell {
        Some(s) => serde_json::json!([s]),
        None => serde_json::json!([a.argv]),
    };
    let mut body = serde_json::json!({ "cmd": cmd });
    if !a.env.is_empty() {
        let env: serde_json::Map<String, Value> = a
            .env
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        body["env"] = Value::Object(env);
    }
    if let Some(w) = a.workdir {
        body["pwd"] = Value::String(w);
    }
    let path = format!("/tasks/{}", encode_segment(&a.task));
    let what = format!("PUT {path}");
    let answer =
        with_progress(client.send(Method::PUT, &path, Some(body.to_string().into()))).await?;
    let task: Task = decode(&what, &answer)?;
    let tasks = [task];
    print_results(&tasks)?;
    Ok(batch_exit_code(&tasks))
}

async fn ps(client: &Client, a: PsArgs) -> Result<u8, CliError> {
    let path = if a.all { "/tasks?all=true" } else { "/tasks" };
    let answer = client.send(Method::GET, path, None).await?;
    let tasks: Vec<Task> = decode(&format!("GET {path}"), &answer)?;
    let text = if a.json {
        raw_json(&answer)
    } else if a.quiet {
        tasks.iter().map(|t| format!("{}\n", t.id)).collect()
    } else {
        table(&tasks, unix_now())
    };
    write_out(&mut std::io::stdout().lock(), text.as_bytes())?;
    Ok(0)
}

async fn status(client: &Client, task: &str) -> Result<u8, CliError> {
    let path = format!("/tasks/{}", encode_segment(task));
    let answer = client.send(Method::GET, &path, None).await?;
    let _: Value = decode(&format!("GET {path}"), &answer)?;
    write_out(&mut std::io::stdout().lock(), raw_json(&answer).as_bytes())?;
    Ok(0)
}

async fn rm(client: &Client, tasks: &[String]) -> Result<u8, CliError> {
    let mut code = 0;
    for t in tasks {
        let path = format!("/tasks/{}", encode_segment(t));
        match client.send(Method::DELETE, &path, None).await {
            Ok(_) => write_out(&mut std::io::stdout().lock(), format!("{t}\n").as_bytes())?,
            // One refused task does not stop the others; anything else (no daemon) would
            // only repeat itself.
            Err(e @ CliError::Api { .. }) => {
                eprintln!("lessl: {e}");
                code = 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(code)
}

async fn volume(client: &Client, action: VolumeAction) -> Result<u8, CliError> {
    #[derive(serde::Deserialize)]
    struct Volume {
        name: String,
        volume: String,
        in_use: bool,
    }
    let names = match action {
        VolumeAction::Ls => {
            let answer = client.send(Method::GET, "/volumes", None).await?;
            let volumes: Vec<Volume> = decode("GET /volumes", &answer)?;
            let mut text = String::from("NAME\tIN USE\tVOLUME\n");
            for v in volumes {
                let used = if v.in_use { "yes" } else { "no" };
                text.push_str(&format!("{}\t{used}\t{}\n", v.name, v.volume));
            }
            write_out(&mut std::io::stdout().lock(), text.as_bytes())?;
            return Ok(0);
        }
        VolumeAction::Rm { names } => names,
    };
    let mut code = 0;
    for n in names {
        let path = format!("/volumes/{}", encode_segment(&n));
        match client.send(Method::DELETE, &path, None).await {
            Ok(_) => write_out(&mut std::io::stdout().lock(), format!("{n}\n").as_bytes())?,
            Err(e @ CliError::Api { .. }) => {
                eprintln!("lessl: {e}");
                code = 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(code)
}

/// The server's own JSON text (in its own key order, compact for tasks) is shown as is.
fn raw_json(answer: &Bytes) -> String {
    let mut text = String::from_utf8_lossy(answer).trim_end().to_string();
    text.push('\n');
    text
}

/// Writes to stdout; a reader that went away (`| head`) is not an error worth a message.
fn write_out(out: &mut impl Write, bytes: &[u8]) -> Result<(), CliError> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e)),
        _ => Ok(()),
    }
}

/// Waits for `fut`; on a terminal, shows the elapsed time on stderr meanwhile, so a long
/// run does not look hung. Piped, stderr carries only the commands' own output.
async fn with_progress<F: Future>(fut: F) -> F::Output {
    if !std::io::stderr().is_terminal() {
        return fut.await;
    }
    tokio::pin!(fut);
    let started = Instant::now();
    let period = Duration::from_secs(1);
    let mut tick = tokio::time::interval_at((started + period).into(), period);
    let mut shown = false;
    loop {
        tokio::select! {
            out = &mut fut => {
                if shown {
                    eprint!("\r\x1b[K");
                }
                return out;
            }
            _ = tick.tick() => {
                eprint!("\r{}", progress_line(started.elapsed()));
                shown = true;
            }
        }
    }
}

fn progress_line(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    format!("lessl: running, {}:{:02} elapsed", s / 60, s % 60)
}

/// A task as the API reports it; only what the client shows. Unknown fields are ignored so
/// an older client keeps working against a newer Lessl.
#[derive(Debug, Clone, Deserialize)]
struct Task {
    id: String,
    #[serde(default)]
    name: Option<String>,
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
}

#[derive(Debug, Clone, Deserialize)]
struct CmdResult {
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
struct RunFailure {
    code: String,
    message: String,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, answer: &Bytes) -> Result<T, CliError> {
    serde_json::from_slice(answer).map_err(|e| CliError::Decode {
        what: what.to_string(),
        error: e.to_string(),
    })
}

/// A POST answers with the request's shape: one task, or an array of them.
fn decode_tasks(what: &str, answer: &Bytes) -> Result<Vec<Task>, CliError> {
    match decode::<Value>(what, answer)? {
        Value::Array(_) => decode(what, answer),
        _ => decode(what, answer).map(|t| vec![t]),
    }
}

/// How one task's run ended, for the exit code.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Every command ran to its end: 0, or the failing command's code.
    Exited(u8),
    /// Lessl could not complete the run; why.
    Failed(String),
}

fn outcome(task: &Task) -> Outcome {
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
fn batch_exit_code(tasks: &[Task]) -> u8 {
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
fn print_results(tasks: &[Task]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    for task in tasks {
        for (i, r) in task.results.iter().enumerate() {
            write_out(&mut out, r.stdout.as_bytes())?;
            // stderr is unbuffered and a closed stderr leaves nowhere to report to.
            let _ = std::io::stderr().write_all(r.stderr.as_bytes());
            // The agent ends stderr with its own line for a timeout or an OOM kill; only when
            // the output was cut may that line be gone, so only then is it repeated here.
            if r.truncated {
                let cmd = format!("command {} ({})", i + 1, show_cmd(&r.cmd));
                eprintln!("lessl: {cmd}: output was cut at the output limit");
                if r.timed_out {
                    eprintln!("lessl: {cmd} was killed at its time limit");
                }
                if r.oom_killed {
                    eprintln!("lessl: {cmd} was killed at the memory limit");
                }
            }
        }
        if let Outcome::Failed(why) = outcome(task) {
            eprintln!("lessl: task {}: {why}", short(&task.id));
        }
    }
    Ok(())
}

fn show_cmd(cmd: &Value) -> String {
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

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The `ps` table: columns as wide as their widest cell, times relative to `now`.
fn table(tasks: &[Task], now: u64) -> String {
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
fn span(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Unix seconds of Lessl's own timestamp format, `2026-11-28T18:16:06Z`.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let shape = b.len() == 20
        && [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'Z'),
        ]
        .iter()
        .all(|&(i, c)| b[i] == c);
    if !shape {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = &s[from..to];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Howard Hinnant's days-from-civil, the inverse of the server's formatter.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A path segment with everything but RFC 3986's unreserved characters escaped, so any
/// reference reaches the server as one segment (and is then simply not found).
fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where the daemon is.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// `http://host[:port][/]`, `unix:/path`, or the bare `host:port` that `--listen` takes.
fn parse_url(url: &str) -> Result<Target, String> {
    if let Some(path) = url.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err("a Unix socket needs an absolute path, as in unix:/run/lessl.sock".into());
        }
        return Ok(Target::Unix(path));
    }
    let authority = match url.split_once("://") {
        Some(("http", rest)) => rest.strip_suffix('/').unwrap_or(rest),
        Some((scheme, _)) => {
            return Err(format!(
                "scheme `{scheme}` is not supported; use http://host:port or unix:/path"
            ))
        }
        None => url,
    };
    if authority.contains(['/', '?', '#', '@']) {
        return Err("only http://host:port is supported, without a path, query or user".into());
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs its closing `]`")?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or("expected `:port` after `]`")?,
                ),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("`{p}` is not a port"))?,
    };
    Ok(Target::Tcp {
        host: host.to_string(),
        port,
    })
}

/// One Lessl, as configured on the command line.
struct Client {
    url: String,
    target: Target,
    token: Option<String>,
}

impl Client {
    fn new(conn: &Connection) -> Result<Client, CliError> {
        let target = parse_url(&conn.url).map_err(|message| CliError::Url {
            url: conn.url.clone(),
            message,
        })?;
        let token = match &conn.token_file {
            None => None,
            Some(path) => {
                let fail = |message| CliError::ReadTokenFile {
                    path: path.clone(),
                    message,
                };
                let raw = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
                // Trimmed as the server trims it, so a trailing newline matches.
                let token = raw.trim();
                if token.is_empty() {
                    return Err(fail("it is empty".into()));
                }
                Some(token.to_string())
            }
        };
        Ok(Client {
            url: conn.url.clone(),
            target,
            token,
        })
    }

    /// One request on a fresh connection; the body of a 2xx answer, or the API's error.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, CliError> {
        let what = format!(
            "{method} {}",
            path_and_query.split('?').next().unwrap_or("")
        );
        let host = match &self.target {
            Target::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Target::Tcp { host, port } => format!("{host}:{port}"),
            Target::Unix(_) => "localhost".to_string(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(HOST, host);
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::Request {
                what: what.clone(),
                error: e.to_string(),
            })?;
        let connect = |error| CliError::Connect {
            url: self.url.clone(),
            error,
        };
        let (status, answer) = match &self.target {
            Target::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect)?;
                exchange(s, req).await
            }
            Target::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect)?;
                exchange(s, req).await
            }
        }
        .map_err(|error| CliError::Request {
            what: what.clone(),
            error,
        })?;
        if status.is_success() {
            return Ok(answer);
        }
        Err(api_error(status, &answer, self.token.is_some()))
    }
}

async fn exchange<S>(stream: S, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| error_chain(&e))?;
    // The connection is driven beside the request; it ends once the answer is read.
    let driver = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| error_chain(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| error_chain(&e))?
        .to_bytes();
    drop(sender);
    let _ = driver.await;
    Ok((status, body))
}

/// hyper's top-level errors ("connection error") hide their cause one level down.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The API's `{"error": {...}}` body as a [`CliError::Api`]; a body that is not one (a proxy's
/// page) still gives one line, with the HTTP status.
fn api_error(status: StatusCode, body: &[u8], sent_token: bool) -> CliError {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: String,
        message: String,
        #[serde(default)]
        field: Option<String>,
    }
    let hint = (status == StatusCode::UNAUTHORIZED && !sent_token)
        .then_some("no token was sent: set LESSL_TOKEN_FILE or --token-file");
    match serde_json::from_slice::<Body>(body) {
        Ok(Body { error: d }) => {
            // The server's message may start with the field, which the line names anyway.
            let message = match &d.field {
                Some(f) => d
                    .message
                    .strip_prefix(f.as_str())
                    .and_then(|rest| rest.strip_prefix(": "))
                    .map(str::to_string)
                    .unwrap_or(d.message),
                None => d.message,
            };
            CliError::Api {
                status: status.as_u16(),
                code: d.code,
                message,
                field: d.field,
                hint,
            }
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let first = text.lines().map(str::trim).find(|l| !l.is_empty());
            CliError::Api {
                status: status.as_u16(),
                code: format!("HTTP {}", status.as_u16()),
                message: first
                    .unwrap_or(status.canonical_reason().unwrap_or("error"))
                    .to_string(),
                field: None,
                hint,
            }
        }
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
    fn urls() {
        let tcp = |h: &str, p| {
            Ok(Target::Tcp {
                host: h.into(),
                port: p,
            })
        };
        assert_eq!(parse_url(DEFAULT_URL), tcp("127.0.0.1", 8734));
        assert_eq!(parse_url("http://localhost:9000/"), tcp("localhost", 9000));
        assert_eq!(parse_url("http://example.com"), tcp("example.com", 80));
        assert_eq!(parse_url("127.0.0.1:8734"), tcp("127.0.0.1", 8734));
        assert_eq!(parse_url("http://[::1]:8734"), tcp("::1", 8734));
        assert_eq!(parse_url("http://[::1]"), tcp("::1", 80));
        assert_eq!(
            parse_url("unix:/run/lessl.sock"),
            Ok(Target::Unix("/run/lessl.sock".into()))
        );
        assert_eq!(
            parse_url("unix:///run/lessl.sock"),
            Ok(Target::Unix("///run/lessl.sock".into()))
        );
        for bad in [
            "unix:run/lessl.sock",
            "https://host:8734",
            "http://host:8734/api",
            "http://user@host:8734",
            "http://host:0",
            "http://host:99999",
            "http://host:port",
            "http://:8734",
            "http://[::1",
            "http://[::1]8734",
            "",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
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
    fn timestamps_round_trip_with_the_server() {
        for t in [0, 951_782_400, 1_795_889_766, 4_102_444_799, 1_709_164_800] {
            let text = crate::tasks::view::rfc3339(t);
            assert_eq!(parse_rfc3339(&text), Some(t), "{text}");
        }
        for bad in [
            "",
            "2026-11-28 18:16:06Z",
            "2026-11-28T18:16:06",
            "2026-13-28T18:16:06Z",
            "2026-11-28T24:16:06Z",
            "+026-11-28T18:16:06Z",
            "2026-11-28T18:16:06.5Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn api_errors_are_one_line() {
        let body = br#"{"error": {"code": "spec.decode", "message": "unknown field `imgae`", "field": "imgae"}}"#;
        let e = api_error(StatusCode::BAD_REQUEST, body, false);
        assert_eq!(
            e.to_string(),
            "unknown field `imgae` (spec.decode, field imgae)"
        );
        let body = br#"{"error": {"code": "spec.decode", "field": "resources[0].dtaa",
            "message": "resources[0].dtaa: unknown field `dtaa`"}}"#;
        assert_eq!(
            api_error(StatusCode::BAD_REQUEST, body, false).to_string(),
            "unknown field `dtaa` (spec.decode, field resources[0].dtaa)"
        );
        let body = br#"{"error": {"code": "task.name_clash", "field": "task_name",
            "message": "a live task is already named `task_name`"}}"#;
        assert_eq!(
            api_error(StatusCode::CONFLICT, body, false).to_string(),
            "a live task is already named `task_name` (task.name_clash, field task_name)"
        );
        let body = br#"{"error": {"code": "task.not_found", "message": "no task `x`"}}"#;
        assert_eq!(
            api_error(StatusCode::NOT_FOUND, body, false).to_string(),
            "no task `x` (task.not_found)"
        );
        let body = br#"{"error": {"code": "http.unauthorized", "message": "missing or wrong bearer token"}}"#;
        assert!(api_error(StatusCode::UNAUTHORIZED, body, false)
            .to_string()
            .ends_with("; no token was sent: set LESSL_TOKEN_FILE or --token-file"));
        assert_eq!(
            api_error(StatusCode::UNAUTHORIZED, body, true).to_string(),
            "missing or wrong bearer token (http.unauthorized)"
        );
        let e = api_error(
            StatusCode::BAD_GATEWAY,
            b"\n<html>Bad gateway</html>\nmore",
            true,
        );
        assert_eq!(e.to_string(), "<html>Bad gateway</html> (HTTP 502)");
        let e = api_error(StatusCode::BAD_GATEWAY, b"", true);
        assert_eq!(e.to_string(), "Bad Gateway (HTTP 502)");
    }

    #[test]
    fn references_stay_one_segment() {
        assert_eq!(encode_segment("hello_world.1-x"), "hello_world.1-x");
        assert_eq!(encode_segment("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn commands_are_shown_short() {
        assert_eq!(show_cmd(&serde_json::json!("echo hi")), "`echo hi`");
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

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
        assert!(parse_env("A").is_err());
        assert!(parse_env("=b").is_err());
    }
}
