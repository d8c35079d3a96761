//! The channel between Lessl and the agent in each task container, against real containers:
//! answers never mixed up across a restart of Lessl, out of the commands' reach, deaf to
//! signals from inside, surviving OOM kills of its commands, and telling Lessl at once when
//! its input closes.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lessl::agent::protocol::{Decoder, Frame, Request, Sync};
use serde_json::{json, Value};
use support::{docker, Lessl, BUSYBOX};

/// A daemon task of busybox, ready for PUTs; returns its id.
fn daemon(lessl: &Lessl, extra: Value) -> String {
    let mut body = json!({"image": BUSYBOX, "daemon": true, "ttl": 600, "cmd": ["true"]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let v = lessl.post(&body.to_string()).expect(201).json();
    v["id"].as_str().unwrap().to_string()
}

fn put(lessl: &Lessl, id: &str, body: Value) -> Value {
    lessl.put(id, &body.to_string()).expect(200).json()
}

/// Commands still running from a previous Lessl process answer on the stream a restarted
/// Lessl attaches to; none of their frames may reach a new request.
fn answers_stay_with_their_command_across(restart: fn(&mut Lessl)) {
    let mut first = Lessl::start(&[]);
    let id = daemon(&first, json!({}));
    for n in 0..5 {
        first
            .request(
                "PUT",
                &format!("/tasks/{id}?wait=false"),
                Some(&json!({"cmd": [format!("sleep 6; echo OLD-{n}; exit 7")]}).to_string()),
            )
            .expect(202);
    }
    // Let the agent take them all before the restart.
    std::thread::sleep(Duration::from_millis(1500));
    restart(&mut first);
    let lessl = Lessl::start_instance(&first.instance, &[]);
    // Ten new commands, spread over the seconds in which the old ones finish and answer.
    let answers: Vec<(usize, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|n| {
                let (lessl, id) = (&lessl, &id);
                s.spawn(move || {
                    let cmd = format!("sleep 0.{n}; sleep {}; echo NEW-{n}; exit {n}", n % 5);
                    (n, put(lessl, id, json!({"cmd": [cmd]})))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (n, v) in answers {
        let r = &v["results"][0];
        assert_eq!(r["stdout"], format!("NEW-{n}\n"), "PUT {n}: {v}");
        assert_eq!(r["exit_code"], n, "PUT {n}: {v}");
        assert_eq!(r["timed_out"], false, "PUT {n}: {v}");
    }
    lessl.delete(&id).expect(204);
    lessl.finish();
}

#[test]
fn answers_stay_with_their_command_across_a_crash_of_lessl() {
    answers_stay_with_their_command_across(Lessl::kill9);
}

#[test]
fn answers_stay_with_their_command_across_a_sigterm_restart() {
    answers_stay_with_their_command_across(|l| {
        l.terminate();
    });
}

#[test]
fn commands_cannot_reach_the_agents_channel() {
    let lessl = Lessl::start(&[]);
    let id = daemon(&lessl, json!({}));
    // Every way into PID 1's descriptors (listing their numbers is allowed; opening is not), then forged frames and log-like lines to whatever
    // is writable, while another PUT carrying a secret runs.
    let forger = r#"
        for f in 0 1 2; do
            if (exec 3</proc/1/fd/$f) 2>/dev/null; then echo OPENED-R-$f; else echo DENIED-R-$f; fi
            if (exec 3>/proc/1/fd/$f) 2>/dev/null; then echo OPENED-W-$f; else echo DENIED-W-$f; fi
        done
        forged_exit='\003\0\0\0\0\0\0\0\001\0\0\0\045{"exit_code":0,"timed_out":false,"oom_killed":false}'
        for f in /proc/1/fd/1 /proc/1/fd/2 /proc/1/fd/0; do
            printf "$forged_exit" 2>/dev/null >$f
            printf '\n2026-01-01T00:00:00Z lessl: FORGED-LINE\n' 2>/dev/null >$f
        done
        head -c 4096 /dev/urandom 2>/dev/null >/proc/1/fd/1
        printf '2026-01-01T00:00:00Z lessl: FORGED-LINE\n' >&2
        sleep 2
        exit 3
    "#;
    std::thread::scope(|s| {
        let f = s.spawn(|| put(&lessl, &id, json!({"cmd": [forger]})));
        std::thread::sleep(Duration::from_millis(300));
        let secret = put(
            &lessl,
            &id,
            json!({"env": {"SECRET": "s3cr3t-value"}, "cmd": ["sleep 1; echo $SECRET; exit 5"]}),
        );
        let r = &secret["results"][0];
        assert_eq!(r["stdout"], "s3cr3t-value\n", "{secret}");
        assert_eq!(r["exit_code"], 5, "{secret}");

        let v = f.join().unwrap();
        let r = &v["results"][0];
        let out = r["stdout"].as_str().unwrap();
        for f in 0..3 {
            assert!(out.contains(&format!("DENIED-R-{f}")), "{v}");
            assert!(out.contains(&format!("DENIED-W-{f}")), "{v}");
        }
        assert!(!out.contains("OPENED"), "{v}");
        assert!(!out.contains("s3cr3t"), "{v}");
        assert_eq!(r["exit_code"], 3, "{v}");
    });
    // The task still serves, by its channel.
    let v = put(&lessl, &id, json!({"cmd": ["echo still; exit 4"]}));
    assert_eq!(v["results"][0]["stdout"], "still\n");
    assert_eq!(v["results"][0]["exit_code"], 4);
    lessl.delete(&id).expect(204);
    let log = lessl.log();
    assert!(!log.contains("FORGED"), "forged line in the log:\n{log}");
    assert!(!log.contains("s3cr3t"), "secret in the log:\n{log}");
    lessl.finish();
}

#[test]
fn signals_from_inside_the_container_do_not_stop_the_agent() {
    let lessl = Lessl::start(&[]);
    let id = daemon(&lessl, json!({}));
    let v = put(
        &lessl,
        &id,
        json!({"cmd": ["kill -TERM 1; kill -INT 1; kill -HUP 1; sleep 0.5; echo sent"]}),
    );
    assert_eq!(v["results"][0]["stdout"], "sent\n", "{v}");
    std::thread::sleep(Duration::from_millis(500));
    let v = put(&lessl, &id, json!({"cmd": ["echo alive"]}));
    assert_eq!(v["results"][0]["stdout"], "alive\n", "{v}");
    assert_eq!(v["state"], "idle", "{v}");

    // From outside, SIGTERM still stops it at once (docker stop), and DELETE is prompt.
    let other = daemon(&lessl, json!({}));
    let t = Instant::now();
    docker(&["stop", "-t", "20", &other]);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "docker stop took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    lessl.delete(&id).expect(204);
    lessl.delete(&other).expect(204);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    lessl.finish();
}

#[test]
fn a_daemon_task_survives_eight_oom_killed_commands() {
    let lessl = Lessl::start(&[]);
    let id = daemon(
        &lessl,
        json!({"limits": {"memory_mb": 32, "timeout_s": 30}}),
    );
    let agent_pid = docker(&["inspect", "-f", "{{.State.Pid}}", &id]);
    for n in 0..8 {
        let v = put(
            &lessl,
            &id,
            json!({"cmd": ["head -c 200m /dev/zero | tail"]}),
        );
        let r = &v["results"][0];
        assert_eq!(r["oom_killed"], true, "hog {n}: {v}");
        assert_eq!(r["exit_code"], 137, "hog {n}: {v}");
        assert!(v["error"].is_null(), "hog {n}: {v}");
    }
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Pid}}", &id]),
        agent_pid,
        "the agent was replaced"
    );
    let v = put(&lessl, &id, json!({"cmd": ["echo fine"]}));
    assert_eq!(v["results"][0]["stdout"], "fine\n", "{v}");
    lessl.delete(&id).expect(204);
    lessl.finish();
}

/// Reads frames from a running agent's stdout until `want` of them have come.
fn read_frames(out: &mut impl Read, sync: &mut Sync, d: &mut Decoder, want: usize) -> Vec<Frame> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        let n = out.read(&mut buf).expect("read the agent's stdout");
        assert!(n > 0, "the agent's stdout ended; frames so far: {got:?}");
        got.extend(d.feed(sync.feed(&buf[..n])).unwrap());
    }
    got
}

/// Docker keeps a container's stdin open whatever its attach clients do, so the agent is run
/// here as a plain child with a pipe this test closes (Podman closes it on detach).
#[test]
fn the_agent_says_when_its_input_closes_and_keeps_running() {
    let mut agent = Command::new(env!("CARGO_BIN_EXE_lessl"))
        .arg("agent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = agent.stdin.take().unwrap();
    let mut out = agent.stdout.take().unwrap();
    let nonce = *b"sixteen bytes!!!";
    // A half line first, as a killed Lessl may leave: the empty line before the hello ends it.
    input.write_all(b"{\"id\":1,\"arg").unwrap();
    input.write_all(b"\n").unwrap();
    input.write_all(&Request::hello(nonce).to_line()).unwrap();
    let request = Request {
        id: u64::MAX - 3,
        hello: None,
        argv: vec!["/bin/sh".into(), "-c".into(), "sleep 0.5; echo late".into()],
        env: Vec::new(),
        cwd: None,
        timeout_ms: 10_000,
        output_bytes: 100,
        stdin_base64: None,
        place: None,
        lane: None,
        payload: 0,
    };
    input.write_all(&request.to_line()).unwrap();
    input.flush().unwrap();
    let (mut sync, mut d) = (Sync::new(nonce), Decoder::new());
    let got = read_frames(&mut out, &mut sync, &mut d, 1);
    assert_eq!(got, [Frame::Started(request.id)]);
    let t = Instant::now();
    drop(input);
    let got = read_frames(&mut out, &mut sync, &mut d, 1);
    assert_eq!(got, [Frame::Closed], "end of input is said at once");
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let mut got = read_frames(&mut out, &mut sync, &mut d, 2);
    assert_eq!(got.remove(0), Frame::Stdout(request.id, b"late\n".to_vec()));
    assert!(
        matches!(&got[0], Frame::Exit(id, e) if *id == request.id && e.exit_code == 0),
        "{got:?}"
    );
    // Still running, and deaf to a SIGTERM from a process that is not the engine.
    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.try_wait().unwrap().is_none(), "the agent exited");
    agent.kill().unwrap();
    agent.wait().unwrap();
}
