//! The agent's lane (a Unix socket per container past the engine), through the API against
//! real containers: requests and placed bytes go over it, its directory is read-only and empty
//! in the container and gone on the host with its task, connections without the token get
//! nothing, a restarted Lessl takes a new lane, `--runner attach` has none, and large output
//! comes back whole or truncated at its cap.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::Digest;
use support::{docker, metric, temp_state_dir, wait_until, Lessl, BUSYBOX};

const LONG: Duration = Duration::from_secs(60);

/// A daemon task of busybox, ready for PUTs; returns its id.
fn daemon(lessl: &Lessl) -> String {
    let body = json!({"image": BUSYBOX, "daemon": true, "ttl": 600, "cmd": ["true"]});
    let v = lessl.post(&body.to_string()).expect(201).json();
    v["id"].as_str().unwrap().to_string()
}

fn put(lessl: &Lessl, id: &str, body: Value) -> Value {
    lessl.put(id, &body.to_string()).expect(200).json()
}

/// One command's result: stdout and exit code.
fn run(lessl: &Lessl, id: &str, cmd: &str) -> (String, i64) {
    let v = put(lessl, id, json!({"cmd": [cmd]}));
    let r = &v["results"][0];
    let out = r["stdout"].as_str().unwrap_or_default().to_string();
    (out, r["exit_code"].as_i64().unwrap_or(-1))
}

/// Runs `cmd` and asserts its stdout and exit code.
#[track_caller]
fn check(lessl: &Lessl, id: &str, cmd: &str, out: &str, code: i64) {
    assert_eq!(run(lessl, id, cmd), (out.to_string(), code), "{cmd}");
}

/// Asserts that `path` goes within a minute.
#[track_caller]
fn gone(path: &Path) {
    let went = wait_until(LONG, || !path.exists());
    assert!(went, "{} is still there", path.display());
}

const UP: &str = r#"lessl_lanes_total{outcome="up"}"#;
const NO_AGENT: &str = r#"lessl_lanes_total{outcome="no_agent"}"#;
const REFUSED: &str = "lessl_lane_connections_refused_total";
const BY_LANE: &str = r#"lessl_agent_requests_total{transport="lane"}"#;
const BY_ATTACH: &str = r#"lessl_agent_requests_total{transport="attach"}"#;

/// Runs PUTs until one went over the lane (so the lane is up and taken), within a minute.
fn until_on_lane(lessl: &Lessl, id: &str) {
    let on_lane = wait_until(LONG, || {
        check(lessl, id, "echo ping", "ping\n", 0);
        metric(lessl, BY_LANE) > 0
    });
    let log = lessl.log();
    assert!(on_lane, "no request went over the lane; log:\n{log}");
}

/// The container's labels.
fn labels(id: &str) -> Value {
    serde_json::from_str(&docker(&["inspect", "-f", "{{json .Config.Labels}}", id])).unwrap()
}

/// The host directory of container `id`'s lane, from its `lessl.lane` label.
fn lane_dir(state: &Path, lessl: &Lessl, id: &str) -> PathBuf {
    let key = labels(id)["lessl.lane"]
        .as_str()
        .expect("lessl.lane label")
        .to_string();
    assert!(
        key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "lane key {key:?}"
    );
    state.join(&lessl.instance).join("lanes").join(key)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_daemons_requests_and_placed_bytes_go_over_the_lane() {
    let lessl = Lessl::start(&[]);
    let id = daemon(&lessl);
    until_on_lane(&lessl, &id);
    assert!(metric(&lessl, UP) >= 1);
    let (lane0, attach0) = (metric(&lessl, BY_LANE), metric(&lessl, BY_ATTACH));

    // 1 MiB of every byte value, in an order that differs per position.
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 + i / 251) as u8).collect();
    let want = format!("{:x}", sha2::Sha256::digest(&data));
    let data64 = base64::engine::general_purpose::STANDARD.encode(&data);
    let v = put(
        &lessl,
        &id,
        json!({"resources": [{"content_type": "application/octet-stream", "data": data64, "dest": "/tmp/x"}],
               "cmd": ["sha256sum /tmp/x | cut -d' ' -f1", "stat -c %s /tmp/x"]}),
    );
    assert_eq!(v["results"][0]["stdout"], format!("{want}\n"), "{v}");
    assert_eq!(v["results"][1]["stdout"], "1048576\n", "{v}");
    // The socket was unlinked once the agent connected, and the mount is read-only.
    check(&lessl, &id, "ls -A /.lessl/lane", "", 0);
    let touch = "touch /.lessl/lane/x 2>/dev/null || echo refused";
    check(&lessl, &id, touch, "refused\n", 0);
    check(&lessl, &id, "ls -A /.lessl/lane", "", 0);
    for n in 0..3 {
        check(&lessl, &id, &format!("echo {n}"), &format!("{n}\n"), 0);
    }
    // Seven PUTs after the lane was taken: every request on it, none on the attach stream.
    let lane = metric(&lessl, BY_LANE) - lane0;
    assert!(lane >= 7, "{lane} requests over the lane for 7 PUTs");
    let attach = metric(&lessl, BY_ATTACH) - attach0;
    assert_eq!(attach, 0, "requests went by attach");
    assert_eq!(metric(&lessl, UP), 1, "one lane for one task");
    lessl.delete(&id).expect(204);
    lessl.finish();
}

/// What a process connecting to an offered lane with a wrong token saw.
#[derive(Default, Debug)]
struct Attack {
    connections: u64,
    bytes_received: usize,
    held_open: u64,
}

/// Stops the attacker however the test ends.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Connects to the socket `s` in `dir` whenever it exists and sends a wrong token (or half
/// of one), until `stop`; reads each connection to its end. The path may be longer than a
/// socket address takes: it is named through the directory's descriptor.
fn attack(dir: &Path, stop: &AtomicBool) -> Attack {
    let handle = std::fs::File::open(dir).unwrap();
    let socket = format!(
        "/proc/self/fd/{}/s",
        std::os::fd::AsRawFd::as_raw_fd(&handle)
    );
    let mut seen = Attack::default();
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut s) = UnixStream::connect(&socket) else {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        };
        seen.connections += 1;
        let garbage = match seen.connections % 4 {
            0 => "f".repeat(16),
            _ => format!("{}\n", "0".repeat(32)),
        };
        let _ = s.write_all(garbage.as_bytes());
        // Past TOKEN_WAIT (1 s) and LANE_WAIT (5 s): Lessl must have closed it by then.
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.bytes_received += n,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    seen.held_open += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    seen
}

/// A daemon task whose lane is up, then its Lessl killed (SIGKILL): what a restart needs.
struct Killed {
    state: PathBuf,
    state_flag: String,
    instance: String,
    id: String,
    /// The task's lane directory on the host.
    dir: PathBuf,
    _first: Lessl,
}

fn daemon_on_lane_then_killed(name: &str) -> Killed {
    let state = temp_state_dir(name);
    let state_flag = state.display().to_string();
    let mut first = Lessl::start(&["--state-dir", state_flag.as_str()]);
    let id = daemon(&first);
    until_on_lane(&first, &id);
    let dir = lane_dir(&state, &first, &id);
    first.kill9();
    Killed {
        state,
        state_flag,
        instance: first.instance.clone(),
        id,
        dir,
        _first: first,
    }
}

impl Killed {
    /// A new Lessl on the same instance and state directory.
    fn restart(&self) -> Lessl {
        Lessl::start_instance(&self.instance, &["--state-dir", self.state_flag.as_str()])
    }
}

/// Busybox's `nc` has no Unix sockets, so the process trying its luck on the offered socket
/// runs on the host (the socket is 0666 there as in the container).
#[test]
fn connections_without_the_token_get_nothing_and_change_nothing() {
    let killed = daemon_on_lane_then_killed("lane-attack");
    let (id, dir) = (&killed.id, &killed.dir);
    let socket = dir.join("s");
    let stop = AtomicBool::new(false);
    let (lessl, seen) = std::thread::scope(|s| {
        let lessl = killed.restart();
        // The first PUT re-attaches, offering a new lane while the attackers connect.
        let attackers = [(); 2].map(|()| s.spawn(|| attack(dir, &stop)));
        let stopper = Stop(&stop);
        for n in 0..5 {
            let cmd = format!("echo after-{n}; exit {n}");
            check(&lessl, id, &cmd, &format!("after-{n}\n"), n);
        }
        let settled = wait_until(LONG, || metric(&lessl, UP) + metric(&lessl, NO_AGENT) >= 1);
        assert!(settled, "the offer never ended; log:\n{}", lessl.log());
        std::thread::sleep(Duration::from_millis(500));
        drop(stopper);
        let mut seen = Attack::default();
        for a in attackers.map(|a| a.join().unwrap()) {
            seen.connections += a.connections;
            seen.bytes_received += a.bytes_received;
            seen.held_open += a.held_open;
        }
        (lessl, seen)
    });
    let (up, no_agent) = (metric(&lessl, UP), metric(&lessl, NO_AGENT));
    let refused = metric(&lessl, REFUSED);
    eprintln!("attack: {seen:?}; up {up}, no_agent {no_agent}, refused {refused}");
    assert_eq!(seen.bytes_received, 0, "answered: {seen:?}");
    assert_eq!(seen.held_open, 0, "kept open: {seen:?}");
    assert_eq!(up + no_agent, 1, "one offer in the new process");
    if up == 1 {
        // The agent's connection won; every refused one was the attacker's.
        assert!(refused <= seen.connections, "{refused} refused of {seen:?}");
    }
    // Whoever won the race, results stay right and the socket is gone.
    gone(&socket);
    check(&lessl, id, "echo fine; ls -A /.lessl/lane", "fine\n", 0);
    lessl.delete(id).expect(204);
    lessl.finish();
}

#[test]
fn a_restarted_lessl_takes_a_new_lane_and_delete_removes_its_directory() {
    let killed = daemon_on_lane_then_killed("lane-restart");
    let (id, dir) = (&killed.id, &killed.dir);
    assert!(dir.is_dir(), "{} missing", dir.display());
    let lessl = killed.restart();
    check(&lessl, id, "echo first; exit 3", "first\n", 3);
    let mut puts = 0;
    let on_lane = wait_until(LONG, || {
        puts += 1;
        check(&lessl, id, &format!("echo {puts}"), &format!("{puts}\n"), 0);
        metric(&lessl, BY_LANE) > 0
    });
    let log = lessl.log();
    assert!(on_lane, "the new process never used the lane; log:\n{log}");
    assert!(
        puts <= 5,
        "{puts} PUTs before the new process used the lane"
    );
    assert_eq!(metric(&lessl, UP), 1);
    assert!(dir.is_dir(), "the lane directory went while its task lives");
    assert_eq!(lane_dir(&killed.state, &lessl, id), *dir, "the key changed");
    lessl.delete(id).expect(204);
    gone(dir);
    lessl.finish();
}

#[test]
fn runner_attach_has_no_lanes() {
    let lessl = Lessl::start(&["--runner", "attach"]);
    let id = daemon(&lessl);
    let labels = labels(&id);
    assert!(labels.get("lessl.lane").is_none(), "lane label: {labels}");
    let probe = "test -e /.lessl/lane && echo there || echo absent";
    check(&lessl, &id, probe, "absent\n", 0);
    for n in 0..3 {
        check(
            &lessl,
            &id,
            &format!("echo {n}; exit {n}"),
            &format!("{n}\n"),
            n,
        );
    }
    let attach = metric(&lessl, BY_ATTACH);
    assert!(attach >= 4, "{attach} requests by attach");
    assert_eq!(metric(&lessl, BY_LANE), 0);
    let offers = metric(&lessl, UP) + metric(&lessl, NO_AGENT);
    assert_eq!(offers, 0, "a lane was offered");
    lessl.delete(&id).expect(204);
    lessl.finish();
}

#[test]
fn the_host_side_of_a_lane_is_safe() {
    let state = temp_state_dir("lane-host");
    let state_flag = state.display().to_string();
    let lessl = Lessl::start(&["--state-dir", state_flag.as_str()]);
    let id = daemon(&lessl);
    until_on_lane(&lessl, &id);
    let dir = lane_dir(&state, &lessl, &id);
    let lanes = dir.parent().unwrap();
    assert_eq!(mode(lanes), 0o711, "{}", lanes.display());
    assert_eq!(mode(&dir), 0o755, "{}", dir.display());
    // Once the lane is up, nothing is left to connect to.
    gone(&dir.join("s"));
    let v = put(
        &lessl,
        &id,
        json!({"cmd": ["echo x > /.lessl/lane/f", "echo never"]}),
    );
    let code = &v["results"][0]["exit_code"];
    assert!(code.as_i64().is_some_and(|c| c != 0), "{v}");
    assert_eq!(v["failed_command"], 0, "{v}");
    assert!(!dir.join("f").exists(), "the task's file reached the host");
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(entries.is_empty(), "lane directory not empty: {entries:?}");
    check(&lessl, &id, "echo ok", "ok\n", 0);
    lessl.delete(&id).expect(204);
    lessl.finish();
}

#[test]
fn large_output_over_the_lane_is_whole_or_cut_at_its_cap() {
    let lessl = Lessl::start(&[]);
    let id = daemon(&lessl);
    until_on_lane(&lessl, &id);
    let lane0 = metric(&lessl, BY_LANE);
    for (cap, want, truncated) in [(4_194_304, 3_000_000, false), (1000, 1000, true)] {
        let v = put(
            &lessl,
            &id,
            json!({"limits": {"output_bytes": cap}, "cmd": ["yes | head -c 3000000"]}),
        );
        let r = &v["results"][0];
        let out = r["stdout"].as_str().unwrap();
        assert_eq!(out.len(), want, "cap {cap}: {} bytes", out.len());
        assert!(out.starts_with("y\ny\n") && out.bytes().all(|b| b == b'y' || b == b'\n'));
        assert_eq!(r["truncated"], truncated, "cap {cap}");
        assert_eq!(r["exit_code"], 0, "cap {cap}");
    }
    assert!(
        metric(&lessl, BY_LANE) >= lane0 + 2,
        "the PUTs did not go over the lane"
    );
    lessl.delete(&id).expect(204);
    lessl.finish();
}
