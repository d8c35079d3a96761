//! Commands with stdin (`{"run", "stdin" | "stdin_base64"}`), through the HTTP API against
//! real containers, by both runner paths (the agent's attach stream and the Docker exec
//! fallback), on POST, PUT into a daemon and a warm container, and through `lessl exec`.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use support::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Every byte value, and what `od -An -v -tx1 | tr -d ' \n'` prints for it.
fn every_byte() -> (Vec<u8>, String) {
    let bytes: Vec<u8> = (0..=255u8).collect();
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (bytes, hex)
}

const BIG: usize = 3 << 20;

/// The commands every path must run alike, and a check of their results.
fn commands() -> Value {
    let (bytes, _) = every_byte();
    json!([
        {"run": "cat", "stdin": "héllo\nworld"},
        {"run": "od -An -v -tx1 | tr -d ' \\n'", "stdin_base64": b64(&bytes)},
        // No stdin: `cat` reads end of file at once, in both forms.
        "cat",
        {"run": ["cat"]},
        {"run": "wc -c", "stdin": "x".repeat(BIG)},
        // Reads none of its (large) stdin and exits: no deadlock, no error.
        {"run": ["true"], "stdin": "y".repeat(BIG)},
        {"run": "cat", "stdin": ""},
    ])
}

#[track_caller]
fn check(task: &Value) {
    let r = task["results"].as_array().expect("results");
    assert_eq!(r.len(), 7, "{task}");
    for (i, c) in r.iter().enumerate() {
        assert_eq!(c["exit_code"], 0, "command {i}: {c}");
    }
    let (_, hex) = every_byte();
    assert_eq!(r[0]["stdout"], "héllo\nworld");
    assert_eq!(r[1]["stdout"], hex);
    assert_eq!(r[2]["stdout"], "");
    assert_eq!(r[3]["stdout"], "");
    assert_eq!(r[4]["stdout"].as_str().unwrap().trim(), BIG.to_string());
    assert_eq!(r[6]["stdout"], "");
    // The command as given, its stdin by its length only.
    assert_eq!(r[0]["cmd"], json!({"run": "cat", "stdin_bytes": 12}));
    assert_eq!(r[1]["cmd"]["stdin_bytes"], 256);
    assert_eq!(r[2]["cmd"], "cat");
    assert_eq!(r[3]["cmd"], json!({"run": ["cat"]}));
    assert_eq!(r[5]["cmd"], json!({"run": ["true"], "stdin_bytes": BIG}));
}

fn behaves(flags: &[&str]) {
    let lessl = Lessl::start(flags);
    let started = Instant::now();
    let v = lessl
        .post(&json!({"image": BUSYBOX, "cmd": commands()}).to_string())
        .expect(201)
        .json();
    check(&v);
    // Generous: a hang would be the default 30 s command limit, times commands.
    assert!(started.elapsed() < Duration::from_secs(25));

    // PUT into a daemon: the same commands, twice (the agent's channel is reused).
    let d = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true}).to_string())
        .expect(201)
        .json();
    let id = d["id"].as_str().unwrap();
    for _ in 0..2 {
        let v = lessl
            .put(id, &json!({"cmd": commands()}).to_string())
            .expect(200)
            .json();
        check(&v);
    }
    lessl.delete(id).expect(204);
    assert!(wait_until(Duration::from_secs(20), || lessl
        .containers()
        .is_empty()));
    lessl.finish();
}

#[test]
fn stdin_arrives_exactly_over_the_attach_stream() {
    behaves(&[]);
}

#[test]
fn stdin_arrives_exactly_by_exec() {
    behaves(&["--runner", "exec"]);
}

#[test]
fn stdin_reaches_a_warm_container() {
    let lessl = Lessl::start(&["--warm", &format!("{BUSYBOX}=1")]);
    let pooled = || -> Vec<String> {
        docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=lessl.instance={}", lessl.instance),
            "--filter",
            "label=lessl.pool",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    };
    assert!(wait_until(Duration::from_secs(20), || pooled().len() == 1));
    let before = pooled();
    let v = lessl
        .post(&json!({"image": BUSYBOX, "cmd": commands()}).to_string())
        .expect(201)
        .json();
    check(&v);
    let id = v["id"].as_str().unwrap().to_string();
    assert!(
        before.contains(&id),
        "the task did not take the warm container"
    );
    lessl.finish();
}

#[test]
fn bad_stdin_is_a_400_naming_the_field_and_creates_nothing() {
    let lessl = Lessl::start(&[]);
    let cases = [
        (
            json!({"run": "cat", "stdin": "a", "stdin_base64": "YQ=="}),
            "cmd[1].stdin",
        ),
        (
            json!({"run": "cat", "stdin_base64": "***"}),
            "cmd[1].stdin_base64",
        ),
        (json!({"run": "cat", "input": "a"}), "cmd[1].input"),
        (json!({"stdin": "a"}), "cmd[1]"),
    ];
    for (c, field) in cases {
        let e = lessl
            .post(&json!({"image": BUSYBOX, "cmd": ["true", c]}).to_string())
            .expect(400)
            .json();
        assert_eq!(e["error"]["field"], field, "{e}");
    }
    // Over the per-task total (the resource cap): 413, naming the command that crossed it.
    let lessl_small = Lessl::start(&["--max-resource-bytes", "1000"]);
    let e = lessl_small
        .post(
            &json!({"image": BUSYBOX, "cmd": [
                {"run": "cat", "stdin": "a".repeat(600)},
                {"run": "cat", "stdin": "a".repeat(600)}]})
            .to_string(),
        )
        .expect(413)
        .json();
    assert_eq!(e["error"]["field"], "cmd[1].stdin", "{e}");
    assert!(lessl.containers().is_empty());
    assert!(lessl_small.containers().is_empty());
    lessl.finish();
    lessl_small.finish();
}

/// `lessl exec` passes its stdin on when it is a pipe.
#[test]
fn cli_exec_passes_piped_stdin() {
    let lessl = Lessl::start(&[]);
    lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "task_name": "box"}).to_string())
        .expect(201);
    let url = format!("http://{}", lessl.addr);
    let (bytes, hex) = every_byte();
    let exec = |args: &[&str], input: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lessl"))
            .args(args)
            .env_remove("LESSL_TOKEN_FILE")
            .env("LESSL_URL", &url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let o = exec(&["exec", "box", "--", "cat"], b"hi\n");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");
    let o = exec(
        &["exec", "box", "--shell", "od -An -v -tx1 | tr -d ' \\n'"],
        &bytes,
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), hex, "{o:?}");
    // An empty pipe: end of file at once.
    let o = exec(&["exec", "box", "--", "cat"], b"");
    assert_eq!((o.status.code(), o.stdout.as_slice()), (Some(0), &b""[..]));
    lessl.delete("box").expect(204);
    lessl.finish();
}
