//! The command-line client, run as a real process against real daemons: output on the right
//! streams, exit codes passed through, API errors as one line, tokens, and a Unix socket.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// Runs `lessl ARGS` as a client of `url`, with nothing inherited from the caller's
/// LESSL_URL or LESSL_TOKEN_FILE unless `env` sets it.
fn client(url: &str, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lessl"));
    cmd.args(args)
        .env_remove("LESSL_URL")
        .env_remove("LESSL_TOKEN_FILE")
        .env("LESSL_URL", url)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn lessl client");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn url(lessl: &Lessl) -> String {
    format!("http://{}", lessl.addr)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing both streams when it differs.
#[track_caller]
fn expect_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

/// Asserts the client failed with exactly one line on stderr, and returns it.
#[track_caller]
fn one_error_line(o: &Output, code: i32) -> String {
    expect_code(o, code);
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "stderr: {err:?}");
    assert!(err.starts_with("lessl: ") && err.ends_with('\n'), "{err:?}");
    err
}

/// A file under the system's temp directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, content: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("{}-{name}", unique("lessl-cli")));
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn run_prints_each_stream_and_exits_with_the_failing_code() {
    let lessl = Lessl::start(&[]);
    let url = url(&lessl);

    let ok = TempFile::new(
        "ok.json",
        &serde_json::json!({"image": BUSYBOX, "cmd": ["echo one", "echo two >&2", "echo three"]})
            .to_string(),
    );
    let o = client(&url, &["run", ok.path()], None, &[]);
    expect_code(&o, 0);
    assert_eq!(stdout(&o), "one\nthree\n");
    assert_eq!(stderr(&o), "two\n");

    let failing = TempFile::new(
        "failing.json",
        &serde_json::json!({"image": BUSYBOX,
            "cmd": ["echo out; echo err >&2", "echo half; exit 3", "echo never"]})
        .to_string(),
    );
    let o = client(&url, &["run", failing.path()], None, &[]);
    expect_code(&o, 3);
    assert_eq!(stdout(&o), "out\nhalf\n");
    assert_eq!(stderr(&o), "err\n");

    // From stdin; the run lasts past a second, and piped stderr still carries no progress.
    let body = serde_json::json!({"image": NOSHELL, "cmd": [["echo", "no", "shell"]]});
    let o = client(&url, &["run", "-"], Some(&body.to_string()), &[]);
    expect_code(&o, 0);
    assert_eq!(stdout(&o), "no shell\n");
    let body = serde_json::json!({"image": BUSYBOX, "cmd": ["sleep 1.5; echo slow"]});
    let o = client(&url, &["run", "-"], Some(&body.to_string()), &[]);
    expect_code(&o, 0);
    assert_eq!((stdout(&o).as_str(), stderr(&o).as_str()), ("slow\n", ""));

    // A batch: every task's output in order, and the first non-zero code.
    let body = serde_json::json!([
        {"image": BUSYBOX, "cmd": ["echo a"]},
        {"image": BUSYBOX, "cmd": ["echo b; exit 4"]},
        {"image": BUSYBOX, "cmd": ["exit 5"]},
    ]);
    let o = client(&url, &["run", "-"], Some(&body.to_string()), &[]);
    expect_code(&o, 4);
    assert_eq!(stdout(&o), "a\nb\n");

    // A program that is not there: the shell's 127 comes through as is.
    let body = serde_json::json!({"image": NOSHELL, "cmd": [["/no/such/program"]]});
    let o = client(&url, &["run", "-"], Some(&body.to_string()), &[]);
    expect_code(&o, 127);

    lessl.finish();
}

#[test]
fn run_detach_prints_the_id_and_returns_at_once() {
    let lessl = Lessl::start(&[]);
    let body = serde_json::json!({"image": BUSYBOX, "cmd": ["sleep 1", "echo done"]});
    let o = client(
        &url(&lessl),
        &["run", "--detach", "-"],
        Some(&body.to_string()),
        &[],
    );
    expect_code(&o, 0);
    let out = stdout(&o);
    let id = out.trim_end();
    assert!(
        id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{out:?}"
    );
    assert_eq!(out, format!("{id}\n"));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    assert!(
        wait_until(Duration::from_secs(30), || lessl
            .get(&format!("/tasks/{id}"))
            .json()["state"]
            == "finished"),
        "the detached task did not finish"
    );
    let v = lessl.get(&format!("/tasks/{id}")).expect(200).json();
    assert_eq!(v["results"][1]["stdout"], "done\n");
    // The container goes off the answer's path; wait for it so the leak check is fair.
    assert!(wait_until(Duration::from_secs(30), || !container_exists(
        id
    )));
    lessl.finish();
}

#[test]
fn exec_ps_status_and_rm_on_a_daemon_task() {
    let lessl = Lessl::start(&[]);
    let url = url(&lessl);
    let task = TempFile::new(
        "daemon.json",
        &serde_json::json!({"image": BUSYBOX, "daemon": true, "task_name": "box", "ttl": 600,
            "env": {"WHO": "task"}, "cmd": ["echo ready"]})
        .to_string(),
    );
    let o = client(&url, &["run", task.path()], None, &[]);
    expect_code(&o, 0);
    assert_eq!(stdout(&o), "ready\n");
    let id = lessl.get("/tasks/box").expect(200).json()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Exec form: the command's code and streams pass through.
    let o = client(
        &url,
        &[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo hi; echo oops >&2; exit 5",
        ],
        None,
        &[],
    );
    expect_code(&o, 5);
    assert_eq!(
        (stdout(&o).as_str(), stderr(&o).as_str()),
        ("hi\n", "oops\n")
    );
    // A shell string, by short id, with the task's env overridden and a working directory.
    let o = client(
        &url,
        &[
            "exec",
            "--shell",
            "echo $WHO $(pwd)",
            "-e",
            "WHO=exec",
            "-w",
            "/srv",
            &id[..12],
        ],
        None,
        &[],
    );
    expect_code(&o, 0);
    assert_eq!(stdout(&o), "exec /srv\n");
    let o = client(
        &url,
        &["exec", "box", "--", "sh", "-c", "echo $WHO"],
        None,
        &[],
    );
    assert_eq!(stdout(&o), "task\n");

    // ps: a table row, only ids with -q, the API's JSON with --json.
    let o = client(&url, &["ps"], None, &[]);
    expect_code(&o, 0);
    let table = stdout(&o);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "NAME", "IMAGE", "STATE", "DAEMON", "CREATED", "EXPIRES"]
    );
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(&row[..5], [&id[..12], "box", BUSYBOX, "idle", "yes"]);
    assert!(row[5].ends_with("ago") || row[6] == "ago", "{table}");
    assert!(
        table.contains(" in 9m") || table.contains(" in 10m"),
        "{table}"
    );
    assert_eq!(lines.next(), None);
    let o = client(&url, &["ps", "-q"], None, &[]);
    assert_eq!(stdout(&o), format!("{id}\n"));
    let o = client(&url, &["ps", "--json"], None, &[]);
    expect_code(&o, 0);
    let list: Value = serde_json::from_slice(&o.stdout).expect("ps --json is JSON");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());

    // status: the task's JSON.
    let o = client(&url, &["status", "box"], None, &[]);
    expect_code(&o, 0);
    let v: Value = serde_json::from_slice(&o.stdout).expect("status is JSON");
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["name"], "box");
    assert_eq!(v["state"], "idle");
    let err = one_error_line(&client(&url, &["status", "nosuch"], None, &[]), 1);
    assert!(
        err.contains("nosuch") && err.contains("(task.not_found)"),
        "{err}"
    );

    // rm: the known one goes, the unknown one is one line and a non-zero exit.
    let o = client(&url, &["rm", "box", "nosuch"], None, &[]);
    let err = one_error_line(&o, 1);
    assert!(err.contains("nosuch"), "{err}");
    assert_eq!(stdout(&o), "box\n");
    let o = client(&url, &["ps", "-q"], None, &[]);
    expect_code(&o, 0);
    assert_eq!(stdout(&o), "");
    let table = stdout(&client(&url, &["ps"], None, &[]));
    assert_eq!(table.lines().count(), 1, "{table}");
    one_error_line(&client(&url, &["rm", "box"], None, &[]), 1);

    // exec into a task that is gone: the API's 404, as run/exec report their own failures.
    let err = one_error_line(
        &client(&url, &["exec", "box", "--", "true"], None, &[]),
        125,
    );
    assert!(err.contains("(task.not_found)"), "{err}");
    lessl.finish();
}

#[test]
fn errors_are_one_line_naming_the_field() {
    let lessl = Lessl::start(&[]);
    let url = url(&lessl);

    let bad = TempFile::new(
        "bad.json",
        r#"{"image": "lessl-test/busybox", "resources": [{"dest": "/a", "dtaa": "x"}]}"#,
    );
    let err = one_error_line(&client(&url, &["run", bad.path()], None, &[]), 125);
    assert!(
        err.starts_with("lessl: unknown field `dtaa`")
            && err
                .trim_end()
                .ends_with("(spec.decode, field resources[0].dtaa)"),
        "{err}"
    );
    let err = one_error_line(
        &client(
            &url,
            &["run", "-"],
            Some(r#"{"image": "x", "imgae": "y"}"#),
            &[],
        ),
        125,
    );
    assert!(err.contains("field imgae)"), "{err}");

    // Failures before any request: a missing file, a bad URL, nothing listening.
    let err = one_error_line(
        &client(&url, &["run", "/no/such/task.json"], None, &[]),
        125,
    );
    assert!(err.contains("/no/such/task.json"), "{err}");
    let err = one_error_line(&client("ftp://host", &["ps"], None, &[]), 1);
    assert!(err.contains("LESSL_URL"), "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = one_error_line(&client(&nobody, &["ps"], None, &[]), 1);
    assert!(err.contains("cannot connect"), "{err}");

    // Usage errors are clap's: exit 2.
    expect_code(&client(&url, &["exec", "box"], None, &[]), 2);
    expect_code(&client(&url, &["rm"], None, &[]), 2);
    lessl.finish();
}

#[test]
fn a_token_protected_daemon_needs_the_token() {
    let token = TempFile::new("token", "a-token-of-at-least-16-chars\n");
    let wrong = TempFile::new("wrong", "not-the-token-but-long-enough\n");
    let lessl = Lessl::start(&["--token-file", token.path()]);
    let url = url(&lessl);

    let err = one_error_line(&client(&url, &["ps"], None, &[]), 1);
    assert!(
        err.contains("(http.unauthorized)") && err.contains("LESSL_TOKEN_FILE"),
        "{err}"
    );
    let err = one_error_line(
        &client(&url, &["ps", "--token-file", wrong.path()], None, &[]),
        1,
    );
    assert!(err.contains("(http.unauthorized)"), "{err}");

    expect_code(
        &client(&url, &["ps", "--token-file", token.path()], None, &[]),
        0,
    );
    let env = [("LESSL_TOKEN_FILE", token.path())];
    let body = serde_json::json!({"image": BUSYBOX, "cmd": ["echo authorized"]});
    let o = client(&url, &["run", "-"], Some(&body.to_string()), &env);
    expect_code(&o, 0);
    assert_eq!(stdout(&o), "authorized\n");
    // The flag wins over the variable.
    let o = client(&url, &["ps", "--token-file", wrong.path()], None, &env);
    one_error_line(&o, 1);
    lessl.finish();
}

#[test]
fn a_terminal_shows_elapsed_time_and_clears_it() {
    let lessl = Lessl::start(&[]);
    let task = TempFile::new(
        "slow.json",
        &serde_json::json!({"image": BUSYBOX, "cmd": ["sleep 2.5; echo slept"]}).to_string(),
    );
    // `script` gives the client a pseudo-terminal, as an interactive shell would.
    let line = format!(
        "{} run --url {} {}",
        env!("CARGO_BIN_EXE_lessl"),
        url(&lessl),
        task.path()
    );
    let o = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("LESSL_URL")
        .env_remove("LESSL_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    expect_code(&o, 0);
    let tty = stdout(&o);
    assert!(tty.contains("\rlessl: running, 0:01 elapsed"), "{tty:?}");
    assert!(tty.contains("\rlessl: running, 0:02 elapsed"), "{tty:?}");
    assert!(tty.contains("elapsed\r\x1b[Kslept"), "{tty:?}");
    lessl.finish();
}

/// A `lessl serve` on a Unix socket, which the harness (TCP only) cannot start.
struct UnixLessl {
    child: std::process::Child,
    socket: PathBuf,
    instance: String,
}

impl UnixLessl {
    fn start() -> UnixLessl {
        let instance = unique("cli-unix");
        let socket = std::env::temp_dir().join(format!("{instance}.sock"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_lessl"))
            .args(["serve", "--listen"])
            .arg(format!("unix:{}", socket.display()))
            .env("LESSL_STATE_DIR", support::scratch_state_dir())
            .args(["--instance", &instance])
            .env_remove("LESSL_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lessl serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // Read to the end, so the daemon never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        let mut lessl = UnixLessl {
            child,
            socket,
            instance,
        };
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            lessl.stop();
            panic!("lessl serve on a Unix socket did not start");
        }
        lessl
    }

    fn url(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// SIGTERM by pid, and the exit status code.
    fn stop(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let ok = wait_until(Duration::from_secs(30), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !ok {
            let _ = self.child.kill();
        }
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for UnixLessl {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // A failed test first removes its daemon tasks, which SIGTERM keeps by design.
            if std::thread::panicking() {
                let ids = stdout(&client(&self.url(), &["ps", "-q"], None, &[]));
                let ids: Vec<&str> = ids.lines().collect();
                if !ids.is_empty() {
                    client(&self.url(), &[&["rm"], &ids[..]].concat(), None, &[]);
                }
            }
            self.stop();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn lessl_url_may_name_a_unix_socket() {
    let mut lessl = UnixLessl::start();
    assert!(is_socket(&lessl.socket));
    let url = lessl.url();

    let body = serde_json::json!({"image": BUSYBOX, "daemon": true, "task_name": "sock",
        "cmd": ["echo over a socket"]});
    let o = client(&url, &["run", "-"], Some(&body.to_string()), &[]);
    expect_code(&o, 0);
    assert_eq!(stdout(&o), "over a socket\n");
    let o = client(
        &url,
        &["exec", "sock", "--", "sh", "-c", "exit 9"],
        None,
        &[],
    );
    expect_code(&o, 9);
    let o = client(&url, &["ps"], None, &[]);
    expect_code(&o, 0);
    assert!(stdout(&o).contains(" sock "), "{}", stdout(&o));
    let o = client(&url, &["rm", "sock"], None, &[]);
    expect_code(&o, 0);

    assert_eq!(lessl.stop(), Some(0));
    let left = containers_with_label(&format!("lessl.instance={}", lessl.instance));
    assert!(left.is_empty(), "containers left behind: {left:?}");
}
