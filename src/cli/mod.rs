//! The command-line client (`lessl run`, `exec`, `ps`, `status`, `rm`): it only speaks HTTP to a
//! Lessl, never to Docker, and turns answers into output, one-line errors and exit codes.
//!
//! - `args`: the subcommands and their flags.
//! - `client`: one HTTP request to a Lessl over TCP or a Unix socket, and its URL parser.
//! - `render`: the answer's models and how they are shown (results, the `ps` table, exit codes).
//! - `extract`: files out of a task written under a local directory, never outside it.

mod args;
mod client;
pub mod extract;
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
    /// `exec` could not read the stdin it passes on.
    ReadStdin(std::io::Error),
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
    /// `lessl cp`'s source is not `TASK:/path`.
    Source { source: String, message: String },
    /// A file out of a task could not be written locally (or would land outside its directory).
    WriteFile { message: String },
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
            CliError::ReadStdin(e) => write!(f, "cannot read stdin for the command: {e}"),
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
            CliError::Source { source, message } => write!(f, "`{source}`: {message}"),
            CliError::WriteFile { message } => write!(f, "cannot write a file out of the task: {message}"),
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
        Command::Cp(a) => (&a.conn, None),
        Command::Logs(a) => (&a.conn, None),
    };
    let client = Client::new(conn)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        match cmd {
            Command::Run(a) => {
                let body = body.unwrap_or_default();
                run(&client, body, a.detach, a.json, a.collect_to.as_deref()).await
            }
            Command::Exec(a) => exec(&client, a).await,
            Command::Ps(a) => ps(&client, a).await,
            Command::Status(a) => status(&client, &a.task).await,
            Command::Rm(a) => rm(&client, &a.tasks).await,
            Command::Volume(a) => volume(&client, a.action).await,
            Command::Cp(a) => cp(&client, &a.source, &a.dest).await,
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

async fn run(
    client: &Client,
    body: Vec<u8>,
    detach: bool,
    json: bool,
    collect_to: Option<&Path>,
) -> Result<u8, CliError> {
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
    // An array's collected files go to a subdirectory per task.
    let is_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let tasks = if json {
        let answer = with_progress(client.send(Method::POST, "/tasks", Some(body))).await?;
        write_out(&mut std::io::stdout().lock(), raw_json(&answer).as_bytes())?;
        decode_tasks("POST /tasks", &answer)?
    } else {
        live(client, Method::POST, "/tasks", Some(body)).await?
    };
    // After the output, which a failure to write a file must not hide.
    if let Some(dir) = collect_to {
        write_collected(&tasks, is_array, dir)?;
    }
    if json {
        return Ok(batch_exit_code(&tasks));
    }
    // The id reads the results again (`lessl status ID`) until the TTL. Only for a person at
    // a terminal: piped stderr carries the commands' own stderr and nothing else.
    if std::io::stderr().is_terminal() {
        for t in &tasks {
            eprintln!("lessl: task {}", t.id);
        }
    }
    Ok(batch_exit_code(&tasks))
}

/// The `files` of each task in a POST answer, written under `dir` (a subdirectory per task
/// for an array); entries left out are named on stderr.
fn write_collected(tasks: &[Task], per_task: bool, dir: &Path) -> Result<(), CliError> {
    let fail = |message: String| CliError::WriteFile { message };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    for task in tasks {
        let Some(files) = &task.files else {
            continue;
        };
        let root = if per_task {
            let name = task.name.as_deref().unwrap_or(&task.id);
            let sub = extract::under_checked(dir, name).map_err(|e| fail(e.to_string()))?;
            std::fs::create_dir_all(&sub).map_err(|e| fail(e.to_string()))?;
            sub
        } else {
            dir.to_path_buf()
        };
        for f in files {
            write_one(&root, f).map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(())
}

/// One entry of `files` under `root`.
fn write_one(root: &Path, f: &Value) -> Result<(), extract::ExtractError> {
    use base64::Engine as _;
    let path = f["path"].as_str().unwrap_or("");
    let Some(rel) = path.strip_prefix('/') else {
        return Err(extract::ExtractError(format!(
            "`{path}`: not an absolute path"
        )));
    };
    if let Some(e) = f.get("error").filter(|e| e.is_object()) {
        eprintln!(
            "lessl: {path} not collected: {} ({})",
            e["message"].as_str().unwrap_or(""),
            e["code"].as_str().unwrap_or("")
        );
        return Ok(());
    }
    if let Some(target) = f["link"].as_str() {
        return extract::create_symlink(root, rel, target);
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(f["data_base64"].as_str().unwrap_or(""))
        .map_err(|e| extract::ExtractError(format!("`{path}`: {e}")))?;
    let mode = f["mode"]
        .as_str()
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .unwrap_or(0o644);
    let mut file = extract::create_file(root, rel, mode)?;
    std::io::Write::write_all(&mut file, &data)
        .map_err(|e| extract::ExtractError(format!("`{path}`: {e}")))
}

/// `lessl cp TASK:/path LOCAL`: a file's bytes to LOCAL (or into it, when it is a directory),
/// a directory's archive unpacked into LOCAL, both as they stream in.
async fn cp(client: &Client, source: &str, dest: &Path) -> Result<u8, CliError> {
    let bad = |message: &str| CliError::Source {
        source: source.to_string(),
        message: message.to_string(),
    };
    let (task, path) = source
        .split_once(':')
        .ok_or_else(|| bad("expected TASK:/path"))?;
    if task.is_empty() || !path.starts_with('/') {
        return Err(bad("expected TASK:/path, the path absolute"));
    }
    let encoded: Vec<String> = path.split('/').map(percent_encode).collect();
    let url = format!("/tasks/{}/files{}", percent_encode(task), encoded.join("/"));
    let fail = |message: String| CliError::WriteFile { message };
    enum Sink {
        /// The file being written, its temporary name, and the name it gets once whole.
        File(std::fs::File, PathBuf, PathBuf),
        Tree(Box<extract::Unpacker>),
    }
    let open = |content_type: &str| -> Result<Sink, CliError> {
        if content_type.starts_with("application/x-tar") {
            std::fs::create_dir_all(dest).map_err(|e| fail(format!("{}: {e}", dest.display())))?;
            return Ok(Sink::Tree(Box::new(extract::Unpacker::new(dest))));
        }
        let target = if dest.is_dir() {
            dest.join(path.rsplit('/').next().unwrap_or("file"))
        } else {
            dest.to_path_buf()
        };
        // Written aside and renamed once whole: a broken transfer leaves no partial file.
        let mut temp = target.clone().into_os_string();
        temp.push(format!(".lessl-cp-{}", std::process::id()));
        let temp = PathBuf::from(temp);
        let file =
            std::fs::File::create(&temp).map_err(|e| fail(format!("{}: {e}", temp.display())))?;
        Ok(Sink::File(file, temp, target))
    };
    let mut sink = None;
    let mut write = |content_type: &str, data: &[u8]| -> Result<(), CliError> {
        if sink.is_none() {
            sink = Some(open(content_type)?);
        }
        match sink.as_mut() {
            Some(Sink::File(f, _, _)) => {
                std::io::Write::write_all(f, data).map_err(|e| fail(e.to_string()))
            }
            Some(Sink::Tree(u)) => u.feed(data).map_err(|e| fail(e.to_string())),
            None => Ok(()),
        }
    };
    let streamed = client.get_streamed(&url, &mut write).await;
    if let (Err(_), Some(Sink::File(_, temp, _))) = (&streamed, &sink) {
        let _ = std::fs::remove_file(temp);
    }
    streamed?;
    // An empty file streams nothing: it is created now.
    let sink = match sink {
        Some(s) => s,
        None => open("application/octet-stream")?,
    };
    match sink {
        Sink::Tree(u) => {
            for note in &u.notes {
                eprintln!("lessl: {note}");
            }
            if !u.finished() {
                return Err(fail("the archive ended early".into()));
            }
        }
        Sink::File(file, temp, target) => {
            drop(file);
            std::fs::rename(&temp, &target).map_err(|e| {
                let _ = std::fs::remove_file(&temp);
                fail(format!("{}: {e}", target.display()))
            })?;
        }
    }
    Ok(0)
}

async fn exec(client: &Client, a: ExecArgs) -> Result<u8, CliError> {
    let run = match a.shell {
        Some(s) => serde_json::json!(s),
        None => serde_json::json!(a.argv),
    };
    // Our own stdin goes to the command when it is a pipe or a file (`echo hi | lessl exec
    // box -- cat`), as bytes; from a terminal it would wait for a person, so never.
    let input = piped_stdin()?;
    let cmd = match input {
        Some(bytes) if !bytes.is_empty() => {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            serde_json::json!([{ "run": run, "stdin_base64": b64 }])
        }
        _ => serde_json::json!([run]),
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

/// All of our stdin when it is not a terminal.
fn piped_stdin() -> Result<Option<Vec<u8>>, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(None);
    }
    let mut buf = Vec::new();
    stdin
        .lock()
        .read_to_end(&mut buf)
        .map_err(CliError::ReadStdin)?;
    Ok(Some(buf))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collected_files_from_a_hostile_answer_never_leave_the_directory() {
        let tasks = |answer: serde_json::Value| decode_tasks("test", &answer.to_string().into());
        let outer = std::env::temp_dir().join(format!("lessl-collect-to-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&outer);
        let dir = outer.join("to");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = serde_json::json!({"files": [
            {"path": "/out/a.txt", "size": 2, "mode": "0640", "data_base64": "aGk="},
            {"path": "/out/link", "link": outer.display().to_string()},
            {"path": "/gone", "error": {"code": "collect.not_found", "message": "no"}},
        ]});
        let ok = serde_json::json!({"id": "t", "files": ok["files"]});
        write_collected(&tasks(ok).unwrap(), false, &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("out/a.txt")).unwrap(), b"hi");
        assert!(!dir.join("gone").exists());
        for hostile in [
            serde_json::json!({"path": "/../escape", "data_base64": "aGk="}),
            serde_json::json!({"path": "/out/../../escape", "data_base64": "aGk="}),
            serde_json::json!({"path": "relative/../../escape", "data_base64": "aGk="}),
            // Through the symlink the first answer planted.
            serde_json::json!({"path": "/out/link/escape", "data_base64": "aGk="}),
            // Over it.
            serde_json::json!({"path": "/out/link", "data_base64": "aGk="}),
        ] {
            let answer = serde_json::json!({"id": "t", "files": [hostile]});
            assert!(
                write_collected(&tasks(answer).unwrap(), false, &dir).is_err(),
                "{hostile}"
            );
        }
        // A batch names its subdirectories after the tasks: a hostile name is refused too.
        let batch = serde_json::json!([{"id": "t", "name": "../escape", "files": []}]);
        assert!(write_collected(&tasks(batch).unwrap(), true, &dir).is_err());
        assert!(!outer.join("escape").exists());
        let _ = std::fs::remove_dir_all(&outer);
    }
}
