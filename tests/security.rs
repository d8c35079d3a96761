//! Operator controls and abuse: the token, the listen guard, the Unix socket's mode, body
//! and input hygiene, the hardening of created containers, and tasks that misbehave
//! (fork bomb, memory hog, output flood) while Lessl keeps answering.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn token_file(token: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(unique("token"));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

#[test]
fn requests_need_the_right_token() {
    let token = "s3cret-token-of-the-operator";
    let file = token_file(token);
    let lessl = Lessl::start(&["--token-file", file.to_str().unwrap()]);
    let body = json!({"image": BUSYBOX, "cmd": ["echo ok"]}).to_string();
    for auth in [
        None,
        Some("Bearer wrong-token-of-same-len!!"),
        Some("Basic xyz"),
        Some(token),
    ] {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let r = lessl
            .request_with("POST", "/tasks", Some(&body), &headers)
            .expect(401);
        assert_eq!(r.header("WWW-Authenticate"), Some("Bearer realm=\"lessl\""));
        assert_eq!(r.json()["error"]["code"], "http.unauthorized");
        lessl
            .request_with("GET", "/tasks", None, &headers)
            .expect(401);
    }
    assert!(
        lessl.containers().is_empty(),
        "an unauthenticated request created a container"
    );
    let bearer = format!("Bearer {token}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", bearer.as_str()),
    ];
    let v = lessl
        .request_with("POST", "/tasks", Some(&body), &headers)
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["stdout"], "ok\n");
    lessl
        .request_with("GET", "/tasks", None, &headers)
        .expect(200);
    std::fs::remove_file(file).unwrap();
    lessl.finish();
}

#[test]
fn non_loopback_listen_without_a_token_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_lessl"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--instance",
            &unique("refuse"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen") && err.contains("token"), "{err}");
    // A short token is refused too.
    let file = token_file("short");
    let out = Command::new(env!("CARGO_BIN_EXE_lessl"))
        .args([
            "serve",
            "--token-file",
            file.to_str().unwrap(),
            "--instance",
            &unique("refuse"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"));
    std::fs::remove_file(file).unwrap();
}

#[test]
fn unix_socket_is_created_0660() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(unique("sock"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lessl.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lessl"))
        .args([
            "serve",
            "--listen",
            &format!("unix:{}", path.display()),
            "--state-dir",
            support::scratch_state_dir().to_str().unwrap(),
            "--instance",
            &unique("u"),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || path.exists()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    // Talk HTTP over it, as curl --unix-socket would.
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(mode, 0o660, "socket mode {mode:o}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(status.success());
    assert!(!path.exists(), "socket removed on shutdown");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_100_mib_body_is_413_and_lessl_stays_healthy() {
    let lessl = Lessl::start(&[]);
    let big = vec![b' '; 100 << 20];
    let r = http(
        &lessl.addr,
        "POST",
        "/tasks",
        Some(&big),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "http.too_large");
    // A chunked body with no declared length is cut at the cap as well.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&lessl.addr).unwrap();
    s.write_all(b"POST /tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..20 {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .is_err()
            || s.write_all(&chunk).is_err()
        {
            break;
        }
        let _ = s.write_all(b"\r\n");
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"));
    lessl.get("/health").expect(200);
    lessl.finish();
}

#[test]
fn hostile_inputs_are_400s_naming_the_field() {
    let lessl = Lessl::start(&[]);
    let cases = [
        (json!({"image": BUSYBOX, "cmd": ["echo a\u{0}b"]}), "cmd[0]"),
        (
            json!({"image": BUSYBOX, "cmd": [["echo", "a\u{0}"]]}),
            "cmd[0][1]",
        ),
        (json!({"image": BUSYBOX, "env": {"A=B": "x"}}), "env.A=B"),
        (json!({"image": BUSYBOX, "env": {"A": "x\u{0}"}}), "env.A"),
        (json!({"image": BUSYBOX, "pwd": "/proc/self"}), "pwd"),
        (json!({"image": BUSYBOX, "pwd": "/sys"}), "pwd"),
        (json!({"image": BUSYBOX, "pwd": "/dev/shm"}), "pwd"),
        (json!({"image": BUSYBOX, "pwd": "tmp"}), "pwd"),
        (
            json!({"image": BUSYBOX, "resources": [{"data": "x", "dest": "/a/\u{0}"}]}),
            "resources[0].dest",
        ),
        (
            json!({"image": BUSYBOX, "limits": {"memory_mb": 1_000_000}}),
            "limits.memory_mb",
        ),
        (
            json!({"image": BUSYBOX, "limits": {"pids": 0}}),
            "limits.pids",
        ),
        (
            json!({"image": BUSYBOX, "limits": {"cpus": 64}}),
            "limits.cpus",
        ),
        (
            json!({"image": BUSYBOX, "limits": {"timeout_s": 1e9}}),
            "limits.timeout_s",
        ),
        (json!({"image": BUSYBOX, "ttl": 1e12}), "ttl"),
        (json!({"image": "--privileged"}), "image"),
    ];
    for (body, field) in cases {
        let v = lessl.post(&body.to_string()).expect(400).json();
        assert_eq!(v["error"]["field"], field, "{body}");
    }
    // Deeply nested JSON is a 400, not a crashed server.
    let deep = "[".repeat(50_000) + &"]".repeat(50_000);
    lessl.post(&deep).expect(400);
    lessl.get("/health").expect(200);
    assert!(lessl.containers().is_empty());
    lessl.finish();
}

#[test]
fn image_and_user_allow_lists_are_enforced() {
    let lessl = Lessl::start(&[
        "--allow-image",
        "lessl-test/busy*",
        "--allow-users",
        "65534:65534",
    ]);
    let v = lessl
        .post(&json!({"image": NOSHELL, "cmd": [["echo"]]}).to_string())
        .expect(403)
        .json();
    assert_eq!(v["error"]["field"], "image");
    let v = lessl
        .post(&json!({"image": BUSYBOX, "user": "0", "cmd": ["id -u"]}).to_string())
        .expect(403)
        .json();
    assert_eq!(v["error"]["field"], "user");
    let v = lessl
        .post(&json!({"image": BUSYBOX, "user": "65534:65534", "cmd": ["id -u"]}).to_string())
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["stdout"], "65534\n");
    assert!(wait_until(Duration::from_secs(10), || lessl
        .containers()
        .is_empty()));
    lessl.finish();
    // An operator-forced user applies to every task.
    let lessl = Lessl::start(&["--user", "1234"]);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "cmd": ["id -u"]}).to_string())
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["stdout"], "1234\n");
    lessl.finish();
}

#[test]
fn created_containers_are_hardened() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true}).to_string())
        .expect(201)
        .json();
    let id = v["id"].as_str().unwrap().to_string();
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &id])).unwrap();
    let c = &inspect[0];
    let hc = &c["HostConfig"];
    assert_eq!(hc["NetworkMode"], "none");
    assert_eq!(c["Config"]["NetworkDisabled"], true);
    assert_eq!(hc["CapDrop"], json!(["ALL"]));
    assert!(hc["CapAdd"].is_null());
    assert_eq!(hc["SecurityOpt"], json!(["no-new-privileges"]));
    assert_eq!(hc["Privileged"], false);
    assert!(hc["Memory"].as_i64().unwrap() > 0);
    assert_eq!(hc["MemorySwap"], hc["Memory"], "no swap on top of memory");
    assert!(hc["PidsLimit"].as_i64().unwrap() > 0);
    assert!(hc["NanoCpus"].as_i64().unwrap() > 0);
    // Docker's default masked paths stay in force.
    assert!(hc["MaskedPaths"].as_array().is_some_and(|a| !a.is_empty()));
    // The only mounts are Lessl's own, read-only: the agent, and its lane's directory in the
    // instance's state directory.
    let mounts = c["Mounts"].as_array().unwrap();
    let mut dests: Vec<&str> = mounts
        .iter()
        .map(|m| m["Destination"].as_str().unwrap())
        .collect();
    dests.sort();
    assert_eq!(dests, ["/.lessl/lane", "/.lessl/lessl"], "{mounts:?}");
    assert!(mounts.iter().all(|m| m["RW"] == false), "{mounts:?}");
    let lane = mounts.iter().find(|m| m["Destination"] == "/.lessl/lane");
    let source = lane.unwrap()["Source"].as_str().unwrap();
    assert!(
        source.contains(&format!("/{}/lanes/", lessl.instance)),
        "{source}"
    );
    // Inside: no capabilities, no network interface but loopback.
    let v = lessl
        .put(
            &id,
            r#"{"cmd": ["grep CapEff /proc/self/status", "ls /sys/class/net"]}"#,
        )
        .expect(200)
        .json();
    assert_eq!(v["results"][0]["stdout"], "CapEff:\t0000000000000000\n");
    assert_eq!(v["results"][1]["stdout"], "lo\n");
    lessl.delete(&id).expect(204);
    lessl.finish();
}

/// Runs `body` asynchronously and, while it runs, checks that GETs are answered promptly.
fn stays_responsive(lessl: &Lessl, body: Value) -> Value {
    let r = lessl
        .request("POST", "/tasks?wait=false", Some(&body.to_string()))
        .expect(202);
    let location = r.header("Location").unwrap().to_string();
    let mut slowest = Duration::ZERO;
    let done = wait_until(Duration::from_secs(60), || {
        let t = Instant::now();
        let v = lessl.get(&location).expect(200).json();
        slowest = slowest.max(t.elapsed());
        v["state"] != "running"
    });
    assert!(done, "task did not end");
    assert!(
        slowest < Duration::from_secs(1),
        "a GET took {slowest:?} during the abuse"
    );
    lessl.get(&location).expect(200).json()
}

#[test]
fn fork_bomb_hits_the_pids_limit() {
    let lessl = Lessl::start(&[]);
    let v = stays_responsive(
        &lessl,
        json!({"image": BUSYBOX, "limits": {"pids": 64, "timeout_s": 5},
               "cmd": ["bomb() { bomb | bomb & }; bomb; sleep 3; echo survived"]}),
    );
    let r = &v["results"][0];
    // The bomb ran into the pids limit (busybox sh reports it and may give up itself), the
    // command ended on its own or at its limit, and Lessl answered throughout.
    let stderr = r["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("can't fork") || stderr.contains("Resource temporarily unavailable"),
        "{v}"
    );
    assert!(r["exit_code"].is_i64(), "{v}");
    lessl.finish();
}

#[test]
fn memory_hog_is_reported_oom_killed() {
    let lessl = Lessl::start(&[]);
    let v = stays_responsive(
        &lessl,
        json!({"image": BUSYBOX, "limits": {"memory_mb": 32, "timeout_s": 30},
               "cmd": ["head -c 200m /dev/zero | tail"]}),
    );
    let r = &v["results"][0];
    // The agent raises every command's oom_score_adj, so the kernel kills the hog, never the
    // agent: the command's own result, not a stopped container.
    assert_eq!(r["oom_killed"], true, "{v}");
    assert_eq!(r["exit_code"], 137, "{v}");
    assert_eq!(v["failed_command"], 0);
    assert!(v["error"].is_null(), "{v}");
    lessl.finish();
}

#[test]
fn output_flood_is_truncated() {
    let lessl = Lessl::start(&[]);
    let v = stays_responsive(
        &lessl,
        json!({"image": BUSYBOX, "limits": {"output_bytes": 65536, "timeout_s": 3},
               "cmd": ["yes flood"]}),
    );
    let r = &v["results"][0];
    assert_eq!(r["truncated"], true);
    assert_eq!(r["timed_out"], true);
    assert_eq!(r["stdout"].as_str().unwrap().len(), 65536);
    lessl.finish();
}

#[test]
fn disk_filler_is_bounded_by_the_command_limit() {
    let lessl = Lessl::start(&[]);
    // No per-container disk quota exists on overlay2 without xfs project quotas; what bounds
    // a filler here is its wall-clock limit, and the container's removal frees the space.
    let v = stays_responsive(
        &lessl,
        json!({"image": BUSYBOX, "limits": {"timeout_s": 2},
               "cmd": ["while true; do head -c 1m /dev/zero >> /tmp/fill; done"]}),
    );
    assert_eq!(v["results"][0]["timed_out"], true);
    let id = v["id"].as_str().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(10), || !container_exists(
        &id
    )));
    lessl.finish();
}

#[test]
fn slow_clients_time_out() {
    use std::io::{Read, Write};
    let lessl = Lessl::start(&["--request-timeout", "1"]);
    // Headers promptly, body never finished: 408 after the request timeout.
    let mut s = std::net::TcpStream::connect(&lessl.addr).unwrap();
    s.write_all(b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ima")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // Headers never finished: the connection is closed.
    let mut s = std::net::TcpStream::connect(&lessl.addr).unwrap();
    s.write_all(b"GET /tasks HTTP/1.1\r\nHost: x\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "a slow header held the connection"
    );
    lessl.get("/health").expect(200);
    lessl.finish();
}

#[test]
fn a_read_only_root_still_gets_its_files() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "daemon": true, "read_only": true, "pwd": "/work",
                    "resources": [{"data": "echo ran from a volume", "dest": "/opt/app/run.sh", "mode": "0755"},
                                  {"data": "key=1\n", "dest": "/etc/app/app.conf"}],
                    "cmd": ["/opt/app/run.sh", "cat /etc/app/app.conf", "touch /tmp/scratch ./here && echo writable",
                            "touch /root-file 2>&1 || echo refused"]})
            .to_string(),
        )
        .expect(201)
        .json();
    let r = &v["results"];
    assert_eq!(r[0]["stdout"], "ran from a volume\n", "{v}");
    assert_eq!(r[1]["stdout"], "key=1\n");
    assert_eq!(r[2]["stdout"], "writable\n");
    assert!(
        r[3]["stdout"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "{v}"
    );
    let id = v["id"].as_str().unwrap().to_string();
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &id])).unwrap();
    assert_eq!(inspect[0]["HostConfig"]["ReadonlyRootfs"], true);
    // Files go in only at creation.
    let v = lessl
        .put(
            &id,
            r#"{"resources": [{"data": "x", "dest": "/opt/app/more"}], "cmd": ["true"]}"#,
        )
        .expect(400)
        .json();
    assert_eq!(v["error"]["field"], "resources[0].dest");
    // The anonymous volumes go with the container.
    let volumes: Vec<String> = inspect[0]["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["Type"] == "volume")
        .map(|m| m["Name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(volumes.len(), 4, "{:?}", inspect[0]["Mounts"]);
    lessl.delete(&id).expect(204);
    for vol in volumes {
        assert!(
            docker(&["volume", "ls", "-q", "--filter", &format!("name={vol}")]).is_empty(),
            "volume {vol} left"
        );
    }
    lessl.finish();
}
