//! The command-line client (`lessl run`, `exec`, `ps`, `status`, `rm`): it only speaks HTTP to a
//! Lessl, never to Docker, and turns answers into output, one-line errors and exit codes.
//!
//! - `args`: the subcommands and their flags.
//! - `client`: one HTTP request to a Lessl over TCP or a Unix socket, and its URL parser.
//! - `render`: the answer's models and how they are shown (results, the `ps` table, exit codes).

mod args;
mod client;
mod render;

use std::fmt;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use hyper::Method;
use serde_json::Value;

pub use args::*;
use client::Client;
use render::{
    batch_exit_code, decode, decode_tasks, print_results, raw_json, table, with_progress,
    with_progress_of, write_out, Live, Progress, Task,
};

use crate::util::{percent_encode, unix_now};

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
        Command::Logs(a) => (&a.conn, None),
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
            Command::Logs(a) => logs(&client, &a.task, a.follow).await,
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
    if json {
        let answer = with_progress(client.send(Method::POST, "/tasks", Some(body))).await?;
        let tasks = decode_tasks("POST /tasks", &answer)?;
        write_out(&mut std::io::stdout().lock(), raw_json(&answer).as_bytes())?;
        return Ok(batch_exit_code(&tasks));
    }
    let tasks = live(client, Method::POST, "/tasks", Some(body)).await?;
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
    let path = format!("/tasks/{}", percent_encode(&a.task));
    let tasks = live(client, Method::PUT, &path, Some(body.to_string().into())).await?;
    Ok(batch_exit_code(&tasks))
}

/// A request answered with live events: the commands' output printed as it arrives; the
/// tasks as they ended.
async fn live(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Vec<Task>, CliError> {
    let what = format!("{method} {}", path.split('?').next().unwrap_or(""));
    let progress = Progress::default();
    let mut shown = Live::new(&progress);
    let streamed = client.stream(method, path, body, |line| shown.line(&what, line));
    with_progress_of(streamed, &progress).await?;
    shown.finish(&what)
}

/// A task's output: its last run's, or (`follow`) its current run's as it comes, to its end.
async fn logs(client: &Client, task: &str, follow: bool) -> Result<u8, CliError> {
    let path = format!("/tasks/{}", percent_encode(task));
    if follow {
        live(client, Method::GET, &format!("{path}/events"), None).await?;
        return Ok(0);
    }
    let answer = client.send(Method::GET, &path, None).await?;
    let task: Task = decode(&format!("GET {path}"), &answer)?;
    print_results(&[task])?;
    Ok(0)
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
    let path = format!("/tasks/{}", percent_encode(task));
    let answer = client.send(Method::GET, &path, None).await?;
    let _: Value = decode(&format!("GET {path}"), &answer)?;
    write_out(&mut std::io::stdout().lock(), raw_json(&answer).as_bytes())?;
    Ok(0)
}

async fn rm(client: &Client, tasks: &[String]) -> Result<u8, CliError> {
    delete_each(client, "/tasks", tasks).await
}

/// DELETEs `collection/NAME` for each name, printing each one removed. One refused name does
/// not stop the others; anything else (no daemon) would only repeat itself.
async fn delete_each(client: &Client, collection: &str, names: &[String]) -> Result<u8, CliError> {
    let mut code = 0;
    for n in names {
        let path = format!("{collection}/{}", percent_encode(n));
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
    delete_each(client, "/volumes", &names).await
}
