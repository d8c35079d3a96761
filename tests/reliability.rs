//! Reliability: load with back-pressure, Docker down at start, a Docker that never answers,
//! one that refuses, one that drops a stream, a private Docker daemon killed and restarted
//! under a live Lessl (idle daemon task, running command), and the daemon cap.
//!
//! Fault injection uses two tools from `support`: `fake_docker` (a fake Engine on a temporary
//! Unix socket) and `private_dockerd` (a second, private dockerd this test may kill without
//! disturbing the shared engine). Nothing here touches the shared engine's daemon.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fake_docker::{frame, FakeDocker, FakeRequest, Reply};
use support::private_dockerd::PrivateDockerd;
use support::*;

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

/// Asserts the body is a JSON error `{"error": {"code", "message"}}` and returns (code, message).
#[track_caller]
fn error_of(r: &Resp) -> (String, String) {
    let v = r.json();
    let code = v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {v}"))
        .to_string();
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.message in {v}"))
        .to_string();
    assert!(!message.is_empty(), "empty error message: {v}");
    (code, message)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Load test (bounded): 100 POSTs of `echo <i>`, 16 in flight, against one Lessl whose run
/// slots (4) and queue (8, 2 s) are deliberately smaller than the load. Every answer must be
/// 201 with its own output, or 429 with Retry-After; nothing else, no hang; and within the
/// tasks' TTL plus a few seconds no container of the instance is left.
///
/// Soak mode: `LESSL_SOAK_SECS=N cargo test --test reliability load -- --nocapture` runs the
/// same load for N seconds instead of 100 requests (off by default).
#[test]
fn load_burst_answers_201_or_429_and_leaves_nothing() {
    const REQUESTS: usize = 100;
    const IN_FLIGHT: usize = 16;
    const TTL: u64 = 20;
    let soak = std::env::var("LESSL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map(Duration::from_secs);
    let lessl = Lessl::start(&[
        "--max-running",
        "4",
        "--max-queue",
        "8",
        "--queue-timeout",
        "2",
    ]);
    let next = AtomicUsize::new(0);
    let created = AtomicUsize::new(0);
    let busy = AtomicUsize::new(0);
    let latencies: Mutex<Vec<Duration>> = Mutex::default();
    let latencies_201: Mutex<Vec<Duration>> = Mutex::default();
    let problems: Mutex<Vec<String>> = Mutex::default();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..IN_FLIGHT {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                match soak {
                    Some(d) if started.elapsed() >= d => break,
                    None if i >= REQUESTS => break,
                    _ => {}
                }
                let body = json!({"image": BUSYBOX, "ttl": TTL, "cmd": [format!("echo {i}")]});
                let t0 = Instant::now();
                let r = lessl.post(&body.to_string());
                let took = t0.elapsed();
                latencies.lock().unwrap().push(took);
                let problem = match r.status {
                    201 => {
                        created.fetch_add(1, Ordering::SeqCst);
                        latencies_201.lock().unwrap().push(took);
                        let v = r.json();
                        let out = &v["results"][0];
                        (out["stdout"] != format!("{i}\n").as_str()
                            || out["exit_code"] != 0
                            || v["state"] != "finished")
                            .then(|| format!("request {i}: 201 with the wrong result: {v}"))
                    }
                    429 => {
                        busy.fetch_add(1, Ordering::SeqCst);
                        let retry = r.header("Retry-After").map(str::to_string);
                        let code = r.json()["error"]["code"].as_str().map(str::to_string);
                        match (retry.as_deref().map(str::parse::<u64>), code.as_deref()) {
                            (Some(Ok(_)), Some(c)) if !c.is_empty() => None,
                            _ => Some(format!(
                                "request {i}: 429 without Retry-After seconds or error code: \
                                 Retry-After {retry:?}, body {}",
                                r.text()
                            )),
                        }
                    }
                    other => Some(format!("request {i}: status {other}: {}", r.text())),
                };
                if let Some(p) = problem {
                    problems.lock().unwrap().push(p);
                }
            });
        }
    });
    let wall = started.elapsed();
    let mut all = latencies.into_inner().unwrap();
    let mut ok = latencies_201.into_inner().unwrap();
    all.sort();
    ok.sort();
    let (n201, n429) = (created.into_inner(), busy.into_inner());
    eprintln!(
        "load: {} requests ({IN_FLIGHT} in flight) in {:.1} s: {n201} x 201, {n429} x 429; \
         latency p50 {} ms, p99 {} ms (201s only: p50 {} ms, p99 {} ms)",
        all.len(),
        wall.as_secs_f64(),
        percentile(&all, 0.50).as_millis(),
        percentile(&all, 0.99).as_millis(),
        percentile(&ok, 0.50).as_millis(),
        percentile(&ok, 0.99).as_millis(),
    );
    let problems = problems.into_inner().unwrap();
    assert!(
        problems.is_empty(),
        "{} bad answer(s):\n{}\nlog:\n{}",
        problems.len(),
        problems.join("\n"),
        lessl.log()
    );
    assert_eq!(n201 + n429, all.len());
    assert!(
        n201 > 0,
        "no request got through at all; log:\n{}",
        lessl.log()
    );
    // Non-daemon containers go right after their run; TTL is the backstop.
    let settle = Instant::now();
    let empty = wait_until(Duration::from_secs(TTL + 5), || {
        lessl.containers().is_empty()
    });
    let left = lessl.containers();
    eprintln!(
        "load: containers left {} ({:.1} s after the last answer)",
        left.len(),
        settle.elapsed().as_secs_f64()
    );
    assert!(
        empty,
        "containers still there {TTL}+5 s after the load: {left:?}\nlog:\n{}",
        lessl.log()
    );
    lessl.finish();
}

#[test]
fn docker_down_at_start_is_503_and_lessl_still_serves() {
    let dir = PathBuf::from(format!("/tmp/{}", unique("nd")));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("nothing.sock");
    let lessl = Lessl::start(&[
        "--docker-socket",
        socket.to_str().unwrap(),
        "--docker-timeout",
        "5",
    ]);
    let t0 = Instant::now();
    let h = lessl.get("/health");
    assert_eq!(h.status, 503, "health: {}", h.text());
    let (code, message) = error_of(&h);
    eprintln!("health with Docker down: {code}: {message}");
    let r = lessl.post(&json!({"image": BUSYBOX, "cmd": ["echo never"]}).to_string());
    assert_eq!(r.status, 503, "POST: {}", r.text());
    let (code, _) = error_of(&r);
    assert!(code.starts_with("docker."), "POST error code {code}");
    for path in ["/tasks", "/tasks/some-task"] {
        let r = lessl.get(path);
        assert_eq!(r.status, 503, "GET {path}: {}", r.text());
        assert!(error_of(&r).0.starts_with("docker."));
    }
    let r = lessl.delete("some-task");
    assert_eq!(r.status, 503, "DELETE: {}", r.text());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "503s took {:?}: an unreachable Docker must fail fast",
        t0.elapsed()
    );
    lessl.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn docker_that_never_answers_gives_504_in_bounded_time() {
    let fake = FakeDocker::silent();
    let lessl = Lessl::start(&[
        "--docker-socket",
        &fake.socket_str(),
        "--docker-timeout",
        "1",
    ]);
    let calls: [(&str, &str, Option<String>); 3] = [
        ("GET", "/health", None),
        (
            "POST",
            "/tasks",
            Some(json!({"image": BUSYBOX, "cmd": ["echo never"]}).to_string()),
        ),
        ("GET", "/tasks", None),
    ];
    for (method, path, body) in calls {
        let t0 = Instant::now();
        let r = lessl.request(method, path, body.as_deref());
        let took = t0.elapsed();
        assert_eq!(r.status, 504, "{method} {path}: {}", r.text());
        let (code, message) = error_of(&r);
        assert!(code.starts_with("docker."), "{method} {path}: code {code}");
        eprintln!("{method} {path}: 504 in {took:?}: {message}");
        assert!(
            took < Duration::from_millis(3500),
            "{method} {path} took {took:?} with --docker-timeout 1"
        );
    }
    lessl.finish();
}

/// The fake's answers common to every scenario: ping and version.
fn engine_basics(req: &FakeRequest) -> Option<Reply> {
    match (req.method.as_str(), req.route()) {
        ("GET" | "HEAD", "/_ping") => Some(Reply::text(200, "OK")),
        ("GET", "/version") => Some(Reply::json(
            200,
            json!({"ApiVersion": "1.41", "Version": "20.10.24", "MinAPIVersion": "1.12"}),
        )),
        _ => None,
    }
}

#[test]
fn docker_500_on_create_is_502_with_dockers_words() {
    let fake = FakeDocker::start(|req| {
        engine_basics(req).unwrap_or_else(|| Reply::json(500, json!({"message": "boom"})))
    });
    let lessl = Lessl::start(&[
        "--docker-socket",
        &fake.socket_str(),
        "--docker-timeout",
        "5",
    ]);
    // The fake is reachable: health says so.
    lessl.get("/health").expect(200);
    let r = lessl.post(&json!({"image": BUSYBOX, "cmd": ["echo never"]}).to_string());
    assert_eq!(r.status, 502, "POST: {}", r.text());
    let (code, message) = error_of(&r);
    assert_eq!(code, "docker.container.create", "message: {message}");
    assert!(message.contains("boom"), "message: {message}");
    assert!(
        fake.seen()
            .iter()
            .any(|s| s.starts_with("POST /v1.41/containers/create")),
        "create never reached the fake: {:?}",
        fake.seen()
    );
    lessl.finish();
}

const FAKE_CONTAINER: &str = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed";
const FAKE_EXEC: &str = "e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0";

/// A fake that creates and starts containers and execs properly, then on exec start sends
/// one whole stdout frame and half of a second one, and closes the connection. `exec_inspect`
/// is what it answers to the exec's inspect afterwards.
fn dropping_fake(exec_inspect: fn() -> Reply) -> FakeDocker {
    FakeDocker::start(move |req| {
        if let Some(r) = engine_basics(req) {
            return r;
        }
        let route = req.route();
        let m = req.method.as_str();
        if m == "POST" && route == "/containers/create" {
            return Reply::json(201, json!({"Id": FAKE_CONTAINER, "Warnings": []}));
        }
        if m == "POST" && route == format!("/containers/{FAKE_CONTAINER}/start") {
            return Reply::empty(204);
        }
        if m == "POST" && route == format!("/containers/{FAKE_CONTAINER}/exec") {
            return Reply::json(201, json!({"Id": FAKE_EXEC}));
        }
        if m == "POST" && route == format!("/exec/{FAKE_EXEC}/start") {
            // Docker hijacks the connection and streams raw frames until it closes it.
            let mut raw =
                b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n"
                    .to_vec();
            raw.extend(frame(1, b"first line\n"));
            let second = frame(1, b"a frame that never arrives whole\n");
            raw.extend_from_slice(&second[..8 + 5]);
            return Reply::RawThenClose(raw);
        }
        if m == "GET" && route == format!("/exec/{FAKE_EXEC}/json") {
            return exec_inspect();
        }
        Reply::json(500, json!({"message": "boom"}))
    })
}

/// POSTs one echo against `fake` and returns the answer, asserting it came in bounded time.
fn post_against(lessl: &Lessl) -> Resp {
    let t0 = Instant::now();
    let r = lessl.post(&json!({"image": BUSYBOX, "cmd": ["echo hello"]}).to_string());
    let took = t0.elapsed();
    eprintln!("POST answered {} in {took:?}: {}", r.status, r.text());
    assert!(
        took < Duration::from_secs(15),
        "POST took {took:?} after the stream was dropped; log:\n{}",
        lessl.log()
    );
    r
}

/// The answer is a clear failure: a 5xx JSON error, or a task marked failed / with an error;
/// never a 2xx whose command looks like it succeeded.
#[track_caller]
fn assert_clear_failure(r: &Resp, lessl: &Lessl) {
    if r.status >= 500 {
        error_of(r);
        return;
    }
    assert_eq!(r.status, 201, "body: {}", r.text());
    let v = r.json();
    let cmd = &v["results"][0];
    assert_ne!(
        cmd["exit_code"],
        json!(0),
        "a dropped stream was reported as a successful command: {v}\nlog:\n{}",
        lessl.log()
    );
    assert!(
        v["state"] == "failed" || v["error"].is_object(),
        "no clear failed state: {v}\nlog:\n{}",
        lessl.log()
    );
}

#[test]
fn docker_dropping_the_exec_stream_fails_the_task_clearly() {
    // After the drop, the fake refuses everything else, as a crashing daemon would.
    let fake = dropping_fake(|| Reply::json(500, json!({"message": "boom"})));
    let lessl = Lessl::start(&[
        "--docker-socket",
        &fake.socket_str(),
        "--docker-timeout",
        "3",
    ]);
    let r = post_against(&lessl);
    // What Lessl does: 201 with the task failed, the Docker step in `error`, no exit code.
    assert_clear_failure(&r, &lessl);
    let v = r.json();
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["error"]["code"]
            .as_str()
            .is_some_and(|c| c.starts_with("docker.")),
        "{v}"
    );
    assert!(v["results"][0]["exit_code"].is_null(), "{v}");
    assert!(fake
        .seen()
        .iter()
        .any(|s| s.starts_with(&format!("POST /v1.41/exec/{FAKE_EXEC}/start"))));
    lessl.finish();
}

#[test]
fn docker_cutting_the_exec_stream_mid_frame_is_not_a_success() {
    // Here Docker still reports the exec as exited 0, but the stream it sent ended in the
    // middle of a frame: the output is known to be incomplete, so the run cannot be reported
    // as a clean success.
    let fake = dropping_fake(|| {
        Reply::json(
            200,
            json!({"ID": FAKE_EXEC, "Running": false, "ExitCode": 0, "ContainerID": FAKE_CONTAINER}),
        )
    });
    let lessl = Lessl::start(&[
        "--docker-socket",
        &fake.socket_str(),
        "--docker-timeout",
        "3",
    ]);
    let r = post_against(&lessl);
    assert_clear_failure(&r, &lessl);
    lessl.finish();
}

/// A private dockerd; failing, says what this machine lacks to run one.
fn private_dockerd(test: &str) -> PrivateDockerd {
    PrivateDockerd::start().unwrap_or_else(|e| {
        panic!(
            "{test} needs a private dockerd, which cannot start here: {e}. It needs dockerd \
             and /bin/busybox (Debian: apt-get install docker.io busybox-static; \
             contrib/test-env.sh --setup installs them) and must run as root"
        )
    })
}

#[test]
fn lessl_recovers_by_itself_when_docker_comes_back() {
    let mut dockerd = private_dockerd("lessl_recovers_by_itself_when_docker_comes_back");
    let lessl = Lessl::start(&[
        "--docker-socket",
        &dockerd.socket_str(),
        "--docker-timeout",
        "5",
    ]);
    let own = format!("lessl.instance={}", lessl.instance);
    lessl.get("/health").expect(200);
    let name = unique("keep");
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "daemon": true, "ttl": 20, "task_name": name,
                    "cmd": ["echo up"]})
            .to_string(),
        )
        .expect(201)
        .json();
    let id = id_of(&v);
    assert_eq!(v["state"], "idle");
    assert_eq!(v["results"][0]["stdout"], "up\n");
    assert_eq!(dockerd.containers_with_label(&own), vec![id.clone()]);

    let took = dockerd.down().expect("stop the private dockerd");
    eprintln!("private dockerd stopped in {took:?}");
    let h = lessl.get("/health");
    assert_eq!(h.status, 503, "health with Docker down: {}", h.text());
    eprintln!("health with Docker down: {:?}", error_of(&h));
    for r in [
        lessl.get(&format!("/tasks/{id}")),
        lessl.get("/tasks"),
        lessl.put(&name, r#"{"cmd": ["echo no"]}"#),
        lessl.post(&json!({"image": BUSYBOX, "cmd": ["echo no"]}).to_string()),
    ] {
        assert_eq!(r.status, 503, "task call with Docker down: {}", r.text());
        assert!(error_of(&r).0.starts_with("docker."));
    }

    dockerd.up().expect("restart the private dockerd");
    assert!(
        wait_until(Duration::from_secs(20), || lessl.get("/health").status
            == 200),
        "health did not come back without restarting Lessl; log:\n{}",
        lessl.log()
    );
    // The daemon restart stopped the container (no restart policy): Lessl still lists it and
    // reports it as not running, refuses to exec in it, and can delete it.
    let v = lessl.get(&format!("/tasks/{id}")).expect(200).json();
    eprintln!("task after the Docker restart: {v}");
    let state = v["state"].as_str().unwrap_or_default().to_string();
    assert!(
        !["idle", "running", "starting"].contains(&state.as_str()),
        "the task's container was stopped by the restart, yet its state is {state}: {v}"
    );
    let listed = lessl.get("/tasks").expect(200).json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str()),
        "not listed: {listed}"
    );
    let r = lessl.put(&name, r#"{"cmd": ["echo no"]}"#);
    assert_eq!(r.status, 409, "PUT into a stopped task: {}", r.text());
    assert_eq!(error_of(&r).0, "task.not_running");
    lessl.delete(&name).expect(204);
    lessl.get(&format!("/tasks/{id}")).expect(404);
    assert!(
        dockerd.containers_with_label(&own).is_empty(),
        "left on the private engine: {:?}",
        dockerd.containers_with_label(&own)
    );
    lessl.finish();
    drop(dockerd);
}

#[test]
fn docker_restart_during_a_command_fails_the_task_clearly() {
    let mut dockerd = private_dockerd("docker_restart_during_a_command_fails_the_task_clearly");
    let lessl = Lessl::start(&[
        "--docker-socket",
        &dockerd.socket_str(),
        "--docker-timeout",
        "5",
    ]);
    let own = format!("lessl.instance={}", lessl.instance);
    let v = lessl
        .request(
            "POST",
            "/tasks?wait=false",
            Some(
                &json!({"image": BUSYBOX, "ttl": 120, "cmd": ["sleep 20", "echo after"]})
                    .to_string(),
            ),
        )
        .expect(202)
        .json();
    let id = id_of(&v);
    assert!(
        wait_until(Duration::from_secs(10), || {
            lessl.get(&format!("/tasks/{id}")).json()["state"] == "running"
        }),
        "never running; log:\n{}",
        lessl.log()
    );
    std::thread::sleep(Duration::from_millis(500));

    let t0 = Instant::now();
    let took = dockerd.down().expect("stop the private dockerd");
    dockerd.up().expect("restart the private dockerd");
    eprintln!(
        "private dockerd restarted in {:?} (stop {took:?})",
        t0.elapsed()
    );

    // Within a bounded time (well before `sleep 20` could have finished by itself) the task
    // leaves `running`.
    let mut last = Value::Null;
    let settled = wait_until(Duration::from_secs(12), || {
        let r = lessl.get(&format!("/tasks/{id}"));
        if r.status != 200 {
            return false;
        }
        last = r.json();
        !["running", "starting"].contains(&last["state"].as_str().unwrap_or_default())
    });
    eprintln!("task {:?} after the Docker restart: {last}", t0.elapsed());
    assert!(
        settled,
        "task still running (or unreadable) 12 s after the Docker restart: {last}\nlog:\n{}",
        lessl.log()
    );
    let first = &last["results"][0];
    assert_ne!(
        first["exit_code"],
        json!(0),
        "a command killed by the Docker restart reported success: {last}"
    );
    assert!(
        last["results"].as_array().map_or(0, Vec::len) <= 1,
        "the run went on after its command was killed: {last}"
    );
    assert!(
        (last["state"] == "failed" && last["error"].is_object()) || first["exit_code"].is_null(),
        "no clear failed state (want state `failed` with an `error`, or exit_code null): {last}\nlog:\n{}",
        lessl.log()
    );

    // Clean up: the exited container is still on the engine until removed.
    let r = lessl.delete(&id);
    assert!(
        r.status == 204 || r.status == 404,
        "DELETE: {} {}",
        r.status,
        r.text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || dockerd
            .containers_with_label(&own)
            .is_empty()),
        "left on the private engine: {:?}",
        dockerd.containers_with_label(&own)
    );
    lessl.finish();
    drop(dockerd);
}

#[test]
fn daemon_cap_is_429_and_frees_up_on_delete() {
    let lessl = Lessl::start(&["--max-daemons", "1"]);
    let daemon = json!({"image": BUSYBOX, "daemon": true, "ttl": 60}).to_string();
    let first = id_of(&lessl.post(&daemon).expect(201).json());
    let r = lessl.post(&daemon);
    assert_eq!(r.status, 429, "second daemon: {}", r.text());
    let retry = r.header("Retry-After").expect("Retry-After on 429");
    assert!(
        retry.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After {retry}"
    );
    assert_eq!(error_of(&r).0, "task.too_many_daemons");
    // The refusal created nothing, and non-daemon tasks do not count against the cap.
    assert_eq!(lessl.containers(), vec![first.clone()]);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "cmd": ["echo one-off"]}).to_string())
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["stdout"], "one-off\n");

    lessl.delete(&first).expect(204);
    let second = id_of(&lessl.post(&daemon).expect(201).json());
    lessl.delete(&second).expect(204);
    lessl.finish();
}

/// A Unix-socket proxy to the real engine that delays the answer to container creates, so
/// Lessl's create times out although Docker made the container.
fn slow_create_proxy(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let path = dir.join("slow.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { break };
            let Ok(mut engine) = UnixStream::connect("/var/run/docker.sock") else {
                break;
            };
            let (mut client_r, mut engine_w) =
                (client.try_clone().unwrap(), engine.try_clone().unwrap());
            let delay = Arc::new(AtomicBool::new(false));
            let mark = delay.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = client_r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if buf[..n].windows(18).any(|w| w == b"/containers/create") {
                        mark.store(true, Ordering::SeqCst);
                    }
                    if engine_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = engine.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if delay.swap(false, Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_secs(3));
                    }
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    path
}

#[test]
fn a_create_that_timed_out_but_happened_is_found_and_removed() {
    let dir = std::env::temp_dir().join(unique("slow"));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = slow_create_proxy(&dir);
    let lessl = Lessl::start(&[
        "--docker-socket",
        socket.to_str().unwrap(),
        "--docker-timeout",
        "1",
    ]);
    // Once Lessl knows the engine (its storage driver, from /info), the POST's only slow
    // call is the create itself.
    assert!(wait_until(Duration::from_secs(10), || lessl
        .get("/health")
        .json()["disk_limit"]
        .as_str()
        .is_some_and(|d| !d.starts_with("unknown"))));
    let v = lessl
        .post(&json!({"image": "lessl-test/busybox", "cmd": ["echo hi"]}).to_string())
        .expect(504)
        .json();
    assert_eq!(v["error"]["code"], "docker.container.create");
    // Docker did create it; Lessl finds it by its create token and removes it.
    assert!(
        wait_until(Duration::from_secs(20), || {
            // The proxy's own delay must not hide a container that really exists.
            containers_with_label(&format!("lessl.instance={}", lessl.instance)).is_empty()
        }),
        "the container of a timed-out create was left behind; log:\n{}",
        lessl.log()
    );
    // Lessl's stderr is read by another thread: give the line a moment to arrive.
    assert!(
        wait_until(Duration::from_secs(5), || lessl
            .log()
            .contains("created although its create call failed")),
        "{}",
        lessl.log()
    );
    lessl.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}
