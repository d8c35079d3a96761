//! Isolation and Lessl's own resources, through the API against real containers: limits that
//! would round to nothing, attach streams of finished tasks, connections past the cap, sizes
//! checked before anything is created, and the ways into `/.lessl` a spec field could open.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;
use support::*;

/// Containers of this Lessl's instance, stopped ones included.
fn own_containers(lessl: &Lessl) -> Vec<String> {
    containers_with_label(&format!("lessl.instance={}", lessl.instance))
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Asserts a 4xx (400 unless told) naming `field`, and that nothing was created.
#[track_caller]
fn refused(lessl: &Lessl, resp: Resp, status: u16, field: &str) -> String {
    let resp = resp.expect(status);
    let error = &resp.json()["error"];
    assert_eq!(error["field"], field, "{error}");
    assert!(
        own_containers(lessl).is_empty(),
        "a refused request created a container"
    );
    error["message"].as_str().unwrap().to_string()
}

/// One ustar header block (and data) as any tar writer may produce it, forward hard links
/// included.
fn tar_entry(name: &str, typeflag: u8, link: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar_of(entries: &[Vec<u8>]) -> String {
    let mut tar: Vec<u8> = entries.concat();
    tar.resize(tar.len() + 1024, 0);
    base64::engine::general_purpose::STANDARD.encode(tar)
}

#[test]
fn a_cpu_limit_that_rounds_to_nothing_is_a_400_and_a_small_one_reaches_the_engine() {
    let lessl = Lessl::start(&[]);
    for (cpus, field) in [(json!(1e-10), "limits.cpus"), (json!(0.001), "limits.cpus")] {
        let body = json!({"image": BUSYBOX, "limits": {"cpus": cpus}, "cmd": ["true"]});
        let message = refused(&lessl, lessl.post(&body.to_string()), 400, field);
        assert!(message.contains("0.01"), "the minimum is named: {message}");
    }
    let body = json!({"image": BUSYBOX, "limits": {"memory_mb": 5}});
    let message = refused(
        &lessl,
        lessl.post(&body.to_string()),
        400,
        "limits.memory_mb",
    );
    assert!(message.contains("6 MiB"), "{message}");
    let body = json!({"image": BUSYBOX, "daemon": true, "ttl": 60,
                      "limits": {"cpus": 0.01, "memory_mb": 6}, "cmd": ["true"]});
    let task = lessl.post(&body.to_string()).expect(201).json();
    let id = task["id"].as_str().unwrap();
    let limits = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}",
        id,
    ]);
    assert_eq!(limits, format!("10000000 {}", 6 << 20));
    lessl.delete(id).expect(204);
    lessl.finish();
}

#[test]
fn finished_tasks_hold_no_attach_connection() {
    let lessl = Lessl::start(&[]);
    let body = json!({"image": BUSYBOX, "ttl": 86400, "cmd": ["true"]}).to_string();
    let gone =
        |lessl: &Lessl| wait_until(Duration::from_secs(60), || own_containers(lessl).is_empty());
    // One task first, so the engine connection pool and the runtime's threads are warm.
    lessl.post(&body).expect(201);
    assert!(gone(&lessl));
    let baseline = fds(lessl.pid());
    for _ in 0..30 {
        let task = lessl.post(&body).expect(201).json();
        assert_eq!(task["results"][0]["exit_code"], 0, "{task}");
    }
    assert!(gone(&lessl), "finished containers are removed");
    // Their records stay (for GET until the TTL); their streams must not.
    let settled = wait_until(Duration::from_secs(10), || fds(lessl.pid()) <= baseline + 6);
    assert!(
        settled,
        "30 finished tasks hold {} fds over the baseline of {baseline}",
        fds(lessl.pid()) - baseline
    );
    lessl.finish();
}

/// A request on a new connection: the status, or None when the connection was closed first.
fn try_request(addr: &str, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(head.as_bytes()).ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

#[test]
fn connections_past_the_cap_leave_health_and_tasks_working() {
    let cap = 16;
    let lessl = Lessl::start(&["--max-connections", &cap.to_string()]);
    lessl.get("/health").expect(200);
    let baseline = fds(lessl.pid());
    // Idle clients: connected, never sending a byte. Loopback only, a bounded number.
    let idle: Vec<TcpStream> = (0..cap + 100)
        .map(|_| TcpStream::connect(&lessl.addr).unwrap())
        .collect();
    // The overflow slots held by idle clients are freed within a second or so.
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        match try_request(&lessl.addr, "GET", "/health") {
            Some((200, text)) => break text,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("/health past the cap: {other:?}"),
        }
    };
    assert!(health.contains("\"ok\""), "{health}");
    let (status, text) = try_request(&lessl.addr, "GET", "/tasks").expect("an answer");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("http.overloaded"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    let held = fds(lessl.pid()) - baseline;
    assert!(
        held <= cap + 8 + 8,
        "{held} fds held for {} connections",
        cap + 100
    );
    drop(idle);
    // The idle clients are gone: a task runs as before.
    let deadline = Instant::now() + Duration::from_secs(10);
    while try_request(&lessl.addr, "GET", "/tasks").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "full slots never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    let body = json!({"image": BUSYBOX, "cmd": ["echo hi"]}).to_string();
    let task = lessl.post(&body).expect(201).json();
    assert_eq!(task["results"][0]["stdout"], "hi\n");
    lessl.finish();
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_request_timeout() {
    let lessl = Lessl::start(&["--request-timeout", "2"]);
    let mut s = TcpStream::connect(&lessl.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", lessl.addr);
    s.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    // The answer, then the end of the stream once the connection sat idle for 2 s.
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(1500) && idle < Duration::from_secs(8),
        "closed after {idle:?}"
    );
    lessl.finish();
}

#[test]
fn a_mebibyte_env_value_is_a_400_naming_it_at_once() {
    let lessl = Lessl::start(&[]);
    let big = "x".repeat(1 << 20);
    let started = Instant::now();
    let body = json!({"image": BUSYBOX, "env": {"BIG": big}, "cmd": ["true"]});
    refused(&lessl, lessl.post(&body.to_string()), 400, "env.BIG");
    assert!(started.elapsed() < Duration::from_secs(5));
    let body = json!({"image": BUSYBOX, "cmd": [["echo", "y".repeat(200 << 10)]]});
    refused(&lessl, lessl.post(&body.to_string()), 400, "cmd[0][1]");
    lessl.finish();
}

#[test]
fn duplicate_keys_are_a_400_naming_the_key() {
    let lessl = Lessl::start(&[]);
    let body = format!(r#"{{"image":"{BUSYBOX}","env":{{"A":"1","A":"2"}},"cmd":["true"]}}"#);
    refused(&lessl, lessl.post(&body), 400, "env.A");
    let body = format!(r#"{{"image":"{BUSYBOX}","ttl":5,"ttl":86400}}"#);
    refused(&lessl, lessl.post(&body), 400, "ttl");
    lessl.finish();
}

#[test]
fn pwd_in_lessl_or_on_a_file_is_a_400_naming_pwd() {
    let lessl = Lessl::start(&[]);
    for pwd in ["/.lessl", "/.lessl/sub", "/etc/passwd"] {
        let body = json!({"image": BUSYBOX, "pwd": pwd, "cmd": ["pwd"]});
        refused(&lessl, lessl.post(&body.to_string()), 400, "pwd");
    }
    lessl.finish();
}

#[test]
fn archives_cannot_reach_lessl_or_link_forward() {
    let lessl = Lessl::start(&[]);
    let into_lessl = tar_of(&[tar_entry(".lessl/lessl", b'0', "", b"#!/bin/sh\n")]);
    let forward = tar_of(&[
        tar_entry("early", b'1', "late", b""),
        tar_entry("late", b'0', "", b"x"),
    ]);
    let missing = tar_of(&[tar_entry("h", b'1', "etc/passwd", b"")]);
    for (data, dest) in [(into_lessl, "/"), (forward, "/srv"), (missing, "/srv")] {
        let body = json!({"image": BUSYBOX, "cmd": ["true"], "resources": [
            {"content_type": "application/x-tar", "data": data, "dest": dest}]});
        refused(
            &lessl,
            lessl.post(&body.to_string()),
            400,
            "resources[0].data",
        );
    }
    lessl.finish();
}

#[test]
fn a_symlink_planted_by_a_daemon_task_cannot_lead_a_dest_into_lessl() {
    let lessl = Lessl::start(&[]);
    let body = json!({"image": BUSYBOX, "daemon": true, "ttl": 120,
                      "cmd": ["ln -s /.lessl /tmp/l && ln -s / /tmp/root"]});
    let task = lessl.post(&body.to_string()).expect(201).json();
    assert_eq!(task["results"][0]["exit_code"], 0, "{task}");
    let id = task["id"].as_str().unwrap();
    for dest in ["/tmp/l/evil", "/tmp/root/.lessl/evil"] {
        let body = json!({"resources": [{"data": "x", "dest": dest}], "cmd": ["true"]});
        let resp = lessl.put(id, &body.to_string()).expect(400);
        assert_eq!(resp.json()["error"]["field"], "resources[0].dest", "{dest}");
    }
    // Through an archive's entry as through a file's dest.
    let archive = tar_of(&[tar_entry("l/evil", b'0', "", b"x")]);
    let body = json!({"resources": [{"content_type": "application/x-tar", "data": archive,
                                     "dest": "/tmp"}]});
    let resp = lessl.put(id, &body.to_string()).expect(400);
    assert_eq!(resp.json()["error"]["field"], "resources[0].data");
    let body = json!({"cmd": ["ls -a /.lessl"]});
    let view = lessl.put(id, &body.to_string()).expect(200).json();
    let listing = view["results"][0]["stdout"].as_str().unwrap();
    assert!(!listing.contains("evil"), "{listing}");
    // An ordinary symlinked directory still takes files.
    let body = json!({"cmd": ["mkdir -p /srv && ln -s /srv /tmp/ok"]});
    lessl.put(id, &body.to_string()).expect(200);
    let body = json!({"resources": [{"data": "fine", "dest": "/tmp/ok/f"}], "cmd": ["cat /srv/f"]});
    let view = lessl.put(id, &body.to_string()).expect(200).json();
    assert_eq!(view["results"][0]["stdout"], "fine");
    lessl.delete(id).expect(204);
    lessl.finish();
}

#[test]
fn head_is_answered_wherever_get_is() {
    let lessl = Lessl::start(&[]);
    let body = json!({"image": BUSYBOX, "daemon": true, "ttl": 60});
    let id = lessl.post(&body.to_string()).expect(201).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for path in [
        "/health".to_string(),
        "/openapi.json".to_string(),
        "/metrics".to_string(),
        format!("/tasks/{id}"),
        "/tasks/no-such-task".to_string(),
    ] {
        let get = lessl.request("GET", &path, None);
        let head = lessl.request("HEAD", &path, None);
        assert_eq!(head.status, get.status, "{path}");
        assert_ne!(head.status, 405, "{path}");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "{path}"
        );
        assert!(head.body.is_empty(), "{path}: HEAD has no body");
        if !path.starts_with("/metrics") && !path.starts_with("/health") {
            assert_eq!(
                head.header("content-length"),
                Some(get.body.len().to_string().as_str()),
                "{path}"
            );
        }
    }
    let allow = lessl.request("PATCH", "/tasks", None).expect(405);
    assert_eq!(allow.header("allow"), Some("GET, HEAD, POST"));
    lessl.delete(&id).expect(204);
    lessl.finish();
}
