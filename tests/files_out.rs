//! Files out, through the API against real containers: `collect` brings a run's files back in
//! its answer (byte for byte, with modes; links as links; special files, missing paths and
//! what passes the maximum named per path), GET shows them after a restart, and
//! `GET /tasks/{ref}/files/...` streams a live task's file or directory.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use support::*;

const IMAGE: &str = "lessl-test/busybox";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("data_base64"))
        .unwrap()
}

/// The entry of `files` for `path`.
fn entry<'a>(view: &'a Value, path: &str) -> &'a Value {
    view["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("no {path} in {}", view["files"]))
}

fn code(f: &Value) -> &str {
    f["error"]["code"].as_str().unwrap_or("")
}

fn every_byte() -> Vec<u8> {
    (0..=255u8).cycle().take(1024).collect()
}

fn no_containers_left(lessl: &Lessl) {
    assert!(
        wait_until(Duration::from_secs(30), || lessl.containers().is_empty()),
        "containers left: {:?}",
        lessl.containers()
    );
}

#[test]
fn a_run_gets_its_text_binary_and_tree_back_byte_for_byte_then_after_a_restart() {
    let dir = temp_state_dir("collect");
    let instance = unique("co");
    let state = dir.display().to_string();
    let lessl = Lessl::start_instance(&instance, &["--state-dir", &state]);
    let script = "mkdir -p /out/tree/sub && printf 'hello\\nworld\\n' > /out/hello.txt \
        && cp /in/bin /out/tree/sub/bin && chmod 0751 /out/tree/sub/bin \
        && echo a > /out/tree/a && chmod 0600 /out/tree/a \
        && ln -s /etc/passwd /out/tree/pw && ln -s /etc/passwd /out/pw \
        && mkfifo /out/tree/fifo && ln /out/tree/a /out/tree/hard";
    let v = lessl
        .post(
            &json!({
                "image": IMAGE,
                "resources": [{"data": b64(&every_byte()), "dest": "/in/bin",
                               "content_type": "application/octet-stream"}],
                "cmd": [script],
                "collect": ["/out/hello.txt", "/out/tree", "/out/pw", "/missing/file"],
            })
            .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(v["failed_command"], Value::Null, "{v}");
    let hello = entry(&v, "/out/hello.txt");
    assert_eq!(unb64(&hello["data_base64"]), b"hello\nworld\n");
    assert_eq!(hello["size"], 12);
    assert_eq!(hello["mode"], "0644");
    let bin = entry(&v, "/out/tree/sub/bin");
    assert_eq!(unb64(&bin["data_base64"]), every_byte());
    assert_eq!(bin["mode"], "0751");
    assert_eq!(bin["size"], 1024);
    assert_eq!(entry(&v, "/out/tree/a")["mode"], "0600");
    // Links are links: never the content of what they point to.
    for link in ["/out/tree/pw", "/out/pw"] {
        let f = entry(&v, link);
        assert_eq!(f["link"], "/etc/passwd", "{f}");
        assert!(f.get("data_base64").is_none(), "{f}");
    }
    assert_eq!(code(entry(&v, "/out/tree/fifo")), "collect.skipped");
    // A hard link is the same file as another entry, collected there (whichever tar met first).
    let hard_or_a = [entry(&v, "/out/tree/hard"), entry(&v, "/out/tree/a")];
    assert!(hard_or_a.iter().any(|f| code(f) == "collect.skipped"));
    assert!(hard_or_a.iter().any(|f| f["data_base64"] == b64(b"a\n")));
    assert_eq!(code(entry(&v, "/missing/file")), "collect.not_found");
    // The container is removed after it was read, as always.
    no_containers_left(&lessl);
    let id = v["id"].as_str().unwrap().to_string();
    let got = lessl.get(&format!("/tasks/{id}")).expect(200).json();
    assert_eq!(got["files"], v["files"]);
    drop(lessl);
    let lessl = Lessl::start_instance(&instance, &["--state-dir", &state]);
    let again = lessl.get(&format!("/tasks/{id}")).expect(200).json();
    assert_eq!(again["files"], v["files"], "after a restart");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn past_the_maximum_paths_are_named_never_cut() {
    let lessl = Lessl::start(&["--max-collect-bytes", "8192"]);
    let script = "mkdir -p /out/d && head -c 20000 /dev/zero > /out/big \
        && echo small > /out/small && cp /out/big /out/d/z && echo first > /out/d/0";
    let v = lessl
        .post(
            &json!({"image": IMAGE, "cmd": [script],
                    "collect": ["/out/big", "/out/small", "/out/d"]})
            .to_string(),
        )
        .expect(201)
        .json();
    let big = entry(&v, "/out/big");
    assert_eq!(code(big), "collect.too_large", "{big}");
    assert_eq!(big["size"], 20000);
    assert!(big.get("data_base64").is_none());
    assert_eq!(unb64(&entry(&v, "/out/small")["data_base64"]), b"small\n");
    // Within a directory: what fits comes, the file that does not is named, and so is the rest.
    assert_eq!(code(entry(&v, "/out/d/z")), "collect.too_large");
    assert_eq!(code(entry(&v, "/out/d")), "collect.too_large");
    let total: usize = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["data_base64"].as_str())
        .map(|d| unb64(&json!(d)).len())
        .sum();
    assert!(total <= 8192, "{total}");
    no_containers_left(&lessl);
}

#[test]
fn bad_collect_paths_are_refused_naming_the_field_and_nothing_is_created() {
    let lessl = Lessl::start(&[]);
    for (collect, field) in [
        (json!(["/out", "/proc/self/environ"]), "collect[1]"),
        (json!(["relative"]), "collect[0]"),
        (json!(["/a/../etc/shadow"]), "collect[0]"),
        (json!(["/.lessl/agent"]), "collect[0]"),
        (json!(["/"]), "collect[0]"),
        (json!("/out"), "collect"),
    ] {
        let body = json!({"image": IMAGE, "cmd": ["true"], "collect": collect});
        let e = lessl.post(&body.to_string()).expect(400).json();
        assert_eq!(e["error"]["field"], field, "{e}");
    }
    assert!(lessl.containers().is_empty());
}

#[test]
fn a_read_only_task_collects_from_its_writable_directories() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(
            &json!({"image": IMAGE, "read_only": true, "pwd": "/work",
                    "cmd": ["echo ro > /work/out.txt && echo t > /tmp/t"],
                    "collect": ["/work/out.txt", "/tmp/t", "/etc/hostname"]})
            .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(v["failed_command"], Value::Null, "{v}");
    assert_eq!(unb64(&entry(&v, "/work/out.txt")["data_base64"]), b"ro\n");
    assert_eq!(unb64(&entry(&v, "/tmp/t")["data_base64"]), b"t\n");
    assert!(entry(&v, "/etc/hostname")["data_base64"].is_string());
    no_containers_left(&lessl);
}

#[test]
fn a_daemon_collects_per_run_and_serves_files_while_live() {
    let lessl = Lessl::start(&[]);
    let name = unique("files");
    let v = lessl
        .post(
            &json!({"image": IMAGE, "daemon": true, "task_name": name,
                    "cmd": ["mkdir -p /out/tree/sub && echo one > /out/n && echo leaf > /out/tree/sub/leaf \
                             && mkdir -p /data && echo inside > /data/f && ln -s /data/f /out/l"],
                    "collect": ["/out/n"]})
            .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(unb64(&entry(&v, "/out/n")["data_base64"]), b"one\n");
    let v = lessl
        .put(
            &name,
            &json!({"cmd": ["echo two > /out/n"], "collect": ["/out/n"]}).to_string(),
        )
        .expect(200)
        .json();
    assert_eq!(unb64(&entry(&v, "/out/n")["data_base64"]), b"two\n");
    // A run that collects nothing has no files.
    let v = lessl
        .put(&name, &json!({"cmd": ["true"]}).to_string())
        .expect(200)
        .json();
    assert!(v.get("files").is_none(), "{v}");

    // GET of a file: raw bytes, with its length.
    let r = lessl.get(&format!("/tasks/{name}/files/out/n")).expect(200);
    assert_eq!(r.body, b"two\n");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("content-length"), Some("4"));
    let head = lessl
        .request("HEAD", &format!("/tasks/{name}/files/out/n"), None)
        .expect(200);
    assert_eq!(head.header("content-length"), Some("4"));
    assert!(head.body.is_empty());
    // A symlink is resolved inside the container.
    let r = lessl.get(&format!("/tasks/{name}/files/out/l")).expect(200);
    assert_eq!(r.body, b"inside\n");
    // A directory: a tar archive of it.
    let r = lessl
        .get(&format!("/tasks/{name}/files/out/tree"))
        .expect(200);
    assert_eq!(r.header("content-type"), Some("application/x-tar"));
    let tmp = temp_state_dir("tarout");
    std::fs::write(tmp.join("t.tar"), &r.body).unwrap();
    let status = std::process::Command::new("tar")
        .args(["-xf", "t.tar"])
        .current_dir(&tmp)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(tmp.join("tree/sub/leaf")).unwrap(), b"leaf\n");
    let _ = std::fs::remove_dir_all(&tmp);
    // Missing and bad paths.
    let e = lessl
        .get(&format!("/tasks/{name}/files/out/nope"))
        .expect(404)
        .json();
    assert_eq!(e["error"]["code"], "task.path_not_found");
    for bad in ["/proc/1/environ", "/out/%2e%2e/etc/passwd", "", "/out//n"] {
        let e = lessl
            .get(&format!("/tasks/{name}/files{bad}"))
            .expect(400)
            .json();
        assert_eq!(e["error"]["field"], "path", "{bad}: {e}");
    }
    lessl
        .request("PUT", &format!("/tasks/{name}/files/out/n"), None)
        .expect(405);
    lessl.get("/tasks/no-such-task/files/out/n").expect(404);
    lessl.delete(&name).expect(204);
    no_containers_left(&lessl);
}

#[test]
fn files_of_a_finished_task_are_a_conflict() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(&json!({"image": IMAGE, "cmd": ["echo x > /x"]}).to_string())
        .expect(201)
        .json();
    let id = v["id"].as_str().unwrap();
    let e = lessl
        .get(&format!("/tasks/{id}/files/x"))
        .expect(409)
        .json();
    assert_eq!(e["error"]["code"], "task.not_running");
    no_containers_left(&lessl);
}

#[test]
fn a_50_mib_file_streams_byte_exact_in_bounded_memory() {
    const SIZE: usize = 50 << 20;
    let lessl = Lessl::start(&[]);
    let name = unique("big");
    // Deterministic content: "0123456789abcdef" over and over.
    lessl
        .post(
            &json!({"image": IMAGE, "daemon": true, "task_name": name,
                    "limits": {"disk_mb": 256},
                    "cmd": [format!("yes 0123456789abcde | head -c {SIZE} > /big")]})
            .to_string(),
        )
        .expect(201);
    let pid = lessl.pid();
    let before = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let r = lessl.get(&format!("/tasks/{name}/files/big")).expect(200);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.join().unwrap();
    assert_eq!(r.header("content-length"), Some(SIZE.to_string().as_str()));
    assert_eq!(r.body.len(), SIZE);
    let line = b"0123456789abcde\n";
    assert!(
        r.body.chunks(16).all(|c| c == &line[..c.len()]),
        "content differs"
    );
    let growth = peak.load(std::sync::atomic::Ordering::SeqCst) - before;
    eprintln!("RSS growth while streaming {SIZE} bytes: {growth} KiB");
    assert!(growth < 16 << 10, "RSS grew by {growth} KiB");
    lessl.delete(&name).expect(204);
    no_containers_left(&lessl);
}

/// Runs `lessl ARGS` as a client of `lessl`.
fn cli(lessl: &Lessl, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lessl"))
        .args(args)
        .env_remove("LESSL_TOKEN_FILE")
        .env("LESSL_URL", format!("http://{}", lessl.addr))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[track_caller]
fn ok(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_cli_copies_files_out_and_writes_collected_files_under_a_directory() {
    use std::os::unix::fs::PermissionsExt;
    let lessl = Lessl::start(&[]);
    let dir = temp_state_dir("clifiles");
    let name = unique("cp");
    let setup = "mkdir -p /out/tree/sub && echo leaf > /out/tree/sub/leaf \
        && cp /in/bin /out/bin && chmod 0750 /out/bin && ln -s /etc/passwd /out/tree/pw";
    let task = json!({"image": IMAGE, "daemon": true, "task_name": name,
        "resources": [{"data": b64(&every_byte()), "dest": "/in/bin",
                       "content_type": "application/octet-stream"}],
        "cmd": [setup], "collect": ["/out/bin", "/out/tree", "/out/missing"]});
    let file = dir.join("task.json");
    std::fs::write(&file, task.to_string()).unwrap();
    let to = dir.join("collected");
    let o = cli(
        &lessl,
        &[
            "run",
            file.to_str().unwrap(),
            "--collect-to",
            to.to_str().unwrap(),
        ],
    );
    ok(&o);
    assert_eq!(std::fs::read(to.join("out/bin")).unwrap(), every_byte());
    let mode = std::fs::metadata(to.join("out/bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
    assert_eq!(
        std::fs::read(to.join("out/tree/sub/leaf")).unwrap(),
        b"leaf\n"
    );
    assert_eq!(
        std::fs::read_link(to.join("out/tree/pw")).unwrap(),
        std::path::Path::new("/etc/passwd")
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("/out/missing"));

    // cp: a file, into a new name and into a directory.
    let local = dir.join("bin.copy");
    ok(&cli(
        &lessl,
        &["cp", &format!("{name}:/out/bin"), local.to_str().unwrap()],
    ));
    assert_eq!(std::fs::read(&local).unwrap(), every_byte());
    let into = dir.join("into");
    std::fs::create_dir(&into).unwrap();
    ok(&cli(
        &lessl,
        &["cp", &format!("{name}:/out/bin"), into.to_str().unwrap()],
    ));
    assert_eq!(std::fs::read(into.join("bin")).unwrap(), every_byte());
    // cp: a directory, through its tar.
    let tree = dir.join("tree.copy");
    ok(&cli(
        &lessl,
        &["cp", &format!("{name}:/out/tree"), tree.to_str().unwrap()],
    ));
    assert_eq!(
        std::fs::read(tree.join("tree/sub/leaf")).unwrap(),
        b"leaf\n"
    );
    // Errors: a missing path, and a source that is not TASK:/path.
    let o = cli(
        &lessl,
        &["cp", &format!("{name}:/nope"), local.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("task.path_not_found"));
    let o = cli(&lessl, &["cp", "no-colon", local.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    lessl.delete(&name).expect(204);
    no_containers_left(&lessl);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn files_need_the_token_like_every_endpoint() {
    let token = "files-out-token-of-the-operator";
    let file = temp_state_dir("filestoken").join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let lessl = Lessl::start(&["--token-file", file.to_str().unwrap()]);
    let bearer = format!("Bearer {token}");
    let name = unique("auth");
    let body = json!({"image": IMAGE, "daemon": true, "task_name": name,
                      "cmd": ["echo secret > /s"]})
    .to_string();
    lessl
        .request_with(
            "POST",
            "/tasks",
            Some(&body),
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &bearer),
            ],
        )
        .expect(201);
    let path = format!("/tasks/{name}/files/s");
    for auth in [None, Some("Bearer wrong")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = lessl.request_with("GET", &path, None, &headers).expect(401);
        assert!(!String::from_utf8_lossy(&r.body).contains("secret"));
    }
    let r = lessl
        .request_with("GET", &path, None, &[("Authorization", &bearer)])
        .expect(200);
    assert_eq!(r.body, b"secret\n");
    lessl
        .request_with(
            "DELETE",
            &format!("/tasks/{name}"),
            None,
            &[("Authorization", &bearer)],
        )
        .expect(204);
    no_containers_left(&lessl);
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}
