//! The core behaviour of Lessl's HTTP API against Podman's Docker-compatible API: each test
//! starts its own private `podman system service` (tests/support/private_podman.rs), never the
//! machine's Podman or the shared Docker, and checks what Lessl did with the podman client as
//! an independent witness.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::private_podman::PrivatePodman;
use support::*;

fn podman() -> PrivatePodman {
    PrivatePodman::start().unwrap_or_else(|e| panic!("{e}"))
}

fn results(v: &Value) -> &Vec<Value> {
    v["results"].as_array().expect("results")
}

/// POST (one-shot and daemon), PUT with files, GET, limits, a name clash, a timeout, a restart
/// of Lessl with the daemon task adopted, DELETE; by the runner path `flags` choose.
fn core(flags: &[&str]) {
    let engine = podman();
    let socket = engine.socket_str();
    let mut args = vec!["--docker-socket", socket.as_str()];
    args.extend_from_slice(flags);
    let mut lessl = Lessl::start(&args);
    let mine = format!("lessl.instance={}", lessl.instance);

    // A one-shot task: files placed, commands run, container removed at the end.
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "resources": [{"data": "one shot\n", "dest": "/opt/in"}],
                    "limits": {"memory_mb": 64},
                    "cmd": ["cat /opt/in", "echo err >&2; exit 3", "echo never"]})
            .to_string(),
        )
        .expect(201)
        .json();
    let r = results(&v);
    assert_eq!(r.len(), 2, "{v}");
    assert_eq!(r[0]["stdout"], "one shot\n", "{v}");
    assert_eq!(r[1]["stderr"], "err\n");
    assert_eq!(r[1]["exit_code"], 3);
    assert_eq!(v["failed_command"], 1);
    assert!(
        wait_until(Duration::from_secs(10), || engine
            .containers_with_label(&mine)
            .is_empty()),
        "the one-shot task's container is still on Podman"
    );

    // A daemon task with limits Podman applies.
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "daemon": true, "task_name": "d",
                    "resources": [{"data": "kept\n", "dest": "/opt/kept"}],
                    "limits": {"memory_mb": 96, "pids": 64}, "cmd": ["cat /opt/kept"]})
            .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(results(&v)[0]["stdout"], "kept\n", "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let limits = engine
        .podman(&[
            "inspect",
            "--format",
            "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} {{.HostConfig.NetworkMode}}",
            &id,
        ])
        .unwrap();
    assert_eq!(limits, format!("{} 64 none", 96 << 20));

    // PUT: files placed into the running task, then commands that read them.
    let v = lessl
        .put(
            "d",
            &json!({"resources": [{"data": "later\n", "dest": "/opt/later"}],
                    "cmd": ["cat /opt/kept /opt/later", ["/bin/echo", "exec", "form"]]})
            .to_string(),
        )
        .expect(200)
        .json();
    assert_eq!(results(&v)[0]["stdout"], "kept\nlater\n", "{v}");
    assert_eq!(results(&v)[1]["stdout"], "exec form\n", "{v}");

    // Commands with stdin (over the attach stream, or the exec's hijacked stdin): text, every
    // byte, none (end of file at once), and a large one the command never reads.
    let every: Vec<u8> = (0..=255u8).collect();
    let hex: String = every.iter().map(|b| format!("{b:02x}")).collect();
    let every_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&every)
    };
    let v = lessl
        .put(
            "d",
            &json!({"cmd": [
                {"run": "cat", "stdin": "from stdin\n"},
                {"run": "od -An -v -tx1 | tr -d ' \\n'", "stdin_base64": every_b64},
                "cat",
                {"run": ["true"], "stdin": "y".repeat(1 << 20)}]})
            .to_string(),
        )
        .expect(200)
        .json();
    let r = results(&v);
    assert_eq!(r.len(), 4, "{v}");
    assert_eq!(r[0]["stdout"], "from stdin\n", "{v}");
    assert_eq!(r[1]["stdout"], hex.as_str(), "{v}");
    assert_eq!(r[2]["stdout"], "", "{v}");
    assert_eq!(r[3]["exit_code"], 0, "{v}");

    let v = lessl.get("/tasks/d").expect(200).json();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["state"], "idle");
    let list = lessl.get("/tasks").expect(200).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // A second live task with that name is a 409, not Podman's 500 passed on.
    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "task_name": "d"}).to_string())
        .expect(409)
        .json();
    assert_eq!(v["error"]["code"], "task.name_clash", "{v}");

    // The timeout kills the command; the task lives on.
    let v = lessl
        .put(
            "d",
            r#"{"limits": {"timeout_s": 1}, "cmd": ["echo before; sleep 30"]}"#,
        )
        .expect(200)
        .json();
    let r = &results(&v)[0];
    assert_eq!(r["timed_out"], true, "{v}");
    assert_eq!(r["exit_code"], 124, "{v}");
    assert_eq!(r["stdout"], "before\n", "{v}");

    // On the attach path, no command so far fell back to exec.
    assert!(
        !lessl.log().contains("using exec"),
        "fell back to exec:\n{}",
        lessl.log()
    );

    // A restarted Lessl adopts the daemon task and runs commands in it again; on Podman the
    // old attach stream's stdin is closed, so the attach path falls back to exec, once.
    let instance = lessl.instance.clone();
    assert_eq!(lessl.terminate(), Some(0), "log:\n{}", lessl.log());
    let lessl = Lessl::start_instance(&instance, &args);
    for n in 0..2 {
        let v = lessl
            .put(
                "d",
                &json!({"cmd": [format!("echo adopted {n}")]}).to_string(),
            )
            .expect(200)
            .json();
        assert_eq!(results(&v)[0]["stdout"], format!("adopted {n}\n"), "{v}");
    }
    assert!(
        lessl.log().matches("using exec").count() <= 1,
        "more than one fallback line:\n{}",
        lessl.log()
    );

    lessl.delete("d").expect(204);
    lessl.get("/tasks/d").expect(404);
    assert!(
        wait_until(Duration::from_secs(10), || engine
            .containers_with_label(&mine)
            .is_empty()),
        "DELETE left the container on Podman"
    );
    let mut lessl = lessl;
    assert_eq!(lessl.terminate(), Some(0), "log:\n{}", lessl.log());
    drop(engine);
}

#[test]
fn the_core_runs_on_podman_over_the_attach_path() {
    core(&[]);
}

#[test]
fn the_core_runs_on_podman_over_exec() {
    core(&["--runner", "exec"]);
}

/// Also run with the agent from a volume, which Podman fills through the same archive API.
#[test]
fn ttl_expiry_and_removal_behind_lessls_back_are_seen_on_podman() {
    let engine = podman();
    let mut lessl = Lessl::start(&[
        "--docker-socket",
        &engine.socket_str(),
        "--agent-source",
        "volume",
    ]);
    let mine = format!("lessl.instance={}", lessl.instance);

    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "task_name": "gone"}).to_string())
        .expect(201)
        .json();
    let gone = v["id"].as_str().unwrap().to_string();
    let mounts = engine
        .podman(&[
            "inspect",
            "--format",
            "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}} {{.RW}}\n{{end}}",
            &gone,
        ])
        .unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("volume lessl-agent-") && l.ends_with(" /.lessl false")),
        "no read-only agent volume: {mounts}"
    );
    let v = lessl
        .put("gone", r#"{"cmd": ["echo from the volume"]}"#)
        .expect(200)
        .json();
    assert_eq!(results(&v)[0]["stdout"], "from the volume\n", "{v}");

    // The first task filled the agent volume (seconds for a debug build), so this TTL is
    // not eaten by that.
    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "ttl": 2}).to_string())
        .expect(201)
        .json();
    let short = v["id"].as_str().unwrap().to_string();

    // Removed behind Lessl's back: Podman's `remove` event drops it at once, not at its TTL.
    engine.podman(&["rm", "-f", "-t", "0", &gone]).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || lessl.get("/tasks/gone").status
            == 404),
        "a removed container is still a task"
    );

    // The TTL removes the other one.
    assert!(
        wait_until(Duration::from_secs(15), || {
            lessl.get("/tasks").json().as_array().unwrap().is_empty()
                && engine.containers_with_label(&mine).is_empty()
        }),
        "the task {short} outlived its TTL; log:\n{}",
        lessl.log()
    );
    lessl.get(&format!("/tasks/{short}")).expect(404);
    assert_eq!(lessl.terminate(), Some(0), "log:\n{}", lessl.log());
    drop(engine);
}
