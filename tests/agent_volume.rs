//! The agent without a host path (`--agent-source volume`): Lessl copies itself into a named
//! volume once per engine and binary, and task containers mount that volume read-only at
//! `/.lessl` instead of a bind of Lessl's host path. Run on the shared engine. Both tests use
//! (and at their end remove) the same volume, since the binary is the same: they take turns.

mod support;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use support::*;

/// Held by each test for its whole run: the agent volume is one for both.
static VOLUME: Mutex<()> = Mutex::new(());

/// Removes the agent volumes at the end of a test, passed or failed. Only these tests make
/// them on the shared engine, and they take turns.
struct AgentVolumes;

impl Drop for AgentVolumes {
    fn drop(&mut self) {
        let list = Command::new("docker")
            .args(["volume", "ls", "-q", "--filter", "label=lessl.agent"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for v in list.lines().filter(|l| !l.is_empty()) {
            let _ = Command::new("docker")
                .args(["volume", "rm", v])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// The read-only agent volume mounted at /.lessl in container `id`; panics if there is none
/// or a host path is bound.
fn agent_volume_of(id: &str) -> String {
    let mounts = docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}} {{.RW}}\n{{end}}",
        id,
    ]);
    assert!(!mounts.contains("bind"), "a host path is bound: {mounts}");
    let volume = mounts
        .lines()
        .find_map(|l| match l.split(' ').collect::<Vec<_>>()[..] {
            ["volume", name, "/.lessl", "false"] => Some(name.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no read-only agent volume at /.lessl: {mounts}"));
    assert!(
        volume.starts_with(&format!("lessl-agent-{}-", env!("CARGO_PKG_VERSION"))),
        "{volume}"
    );
    volume
}

#[test]
fn tasks_run_with_the_agent_from_a_volume_and_no_host_path() {
    let _turn = VOLUME.lock().unwrap_or_else(|e| e.into_inner());
    let _volumes = AgentVolumes;
    let lessl = Lessl::start(&["--agent-source", "volume"]);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "daemon": true,
                    "resources": [{"data": "placed\n", "dest": "/opt/in"}],
                    "cmd": ["cat /opt/in", "ls -l /.lessl/lessl"]})
            .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["stdout"], "placed\n", "{v}");
    assert_eq!(v["results"][1]["exit_code"], 0, "{v}");
    let id = v["id"].as_str().unwrap().to_string();

    // The agent is a read-only volume at /.lessl; nothing of the host is bound.
    let volume = agent_volume_of(&id);
    let label = docker(&[
        "volume",
        "inspect",
        "--format",
        "{{index .Labels \"lessl.agent\"}}",
        &volume,
    ]);
    assert_eq!(label, env!("CARGO_PKG_VERSION"));

    // Commands by the attach path and by exec both find the agent.
    let v = lessl
        .put(&id, &json!({"cmd": ["echo again"]}).to_string())
        .expect(200)
        .json();
    assert_eq!(v["results"][0]["stdout"], "again\n", "{v}");
    assert!(!lessl.log().contains("using exec"), "{}", lessl.log());

    // A one-shot task reuses the filled volume; the helper that filled it is gone.
    let v = lessl
        .post(&json!({"image": NOSHELL, "cmd": [["echo", "no", "shell"]]}).to_string())
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["stdout"], "no shell\n", "{v}");
    assert_eq!(
        lessl.log().matches("holds the agent").count(),
        1,
        "{}",
        lessl.log()
    );
    let helpers = docker(&["ps", "-aq", "--filter", "label=lessl.agent.helper"]);
    assert!(helpers.is_empty(), "helper containers left: {helpers}");

    lessl.delete(&id).expect(204);
    assert!(wait_until(Duration::from_secs(10), || lessl
        .containers()
        .is_empty()));
    lessl.finish();
    // Not in use any more: removable (AgentVolumes would hide a failure).
    docker(&["volume", "rm", &volume]);
}

/// Removes what the image test made, whatever happened.
struct Cleanup {
    image: String,
    container: Option<String>,
    dir: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        if let Some(id) = &self.container {
            quiet(&["rm", "-f", id]);
        }
        quiet(&["rmi", "-f", &self.image]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The FROM-scratch image as the README runs it: only the engine's socket mounted, no
/// --agent; Lessl sees it is in a container and puts the agent in a volume by itself.
#[test]
fn the_image_runs_tasks_with_only_the_engines_socket_mounted() {
    let _turn = VOLUME.lock().unwrap_or_else(|e| e.into_inner());
    let _volumes = AgentVolumes;
    let root = env!("CARGO_MANIFEST_DIR");
    // A context of only what the Dockerfile copies; this build's binary stands in for the
    // release one (the same code, and its bytes name the same volume as the test above).
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("image"));
    let bin_dir = dir.join("target/x86_64-unknown-linux-musl/release");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_lessl"), bin_dir.join("lessl")).unwrap();
    std::fs::copy(format!("{root}/Dockerfile"), dir.join("Dockerfile")).unwrap();
    let tag = format!("lessl-test/lessl:{}", unique("av"));
    let mut cleanup = Cleanup {
        image: tag.clone(),
        container: None,
        dir: dir.clone(),
    };
    docker(&["build", "-q", "-t", &tag, dir.to_str().unwrap()]);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let instance = unique("av-image");
    let id = docker(&[
        "run",
        "-d",
        "--network",
        "host",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        &tag,
        "serve",
        "--listen",
        &addr,
        "--instance",
        &instance,
    ]);
    cleanup.container = Some(id.clone());
    let logs = || {
        Command::new("docker")
            .args(["logs", &id])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default()
    };
    let up = wait_until(Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    assert!(up, "the container did not listen; logs:\n{}", logs());

    let body = json!({"image": BUSYBOX, "daemon": true, "cmd": ["echo from the image"]});
    let task = http(
        &addr,
        "POST",
        "/tasks",
        Some(body.to_string().as_bytes()),
        &[("Content-Type", "application/json")],
    )
    .expect(201)
    .json();
    assert_eq!(task["results"][0]["stdout"], "from the image\n", "{task}");
    let task_id = task["id"].as_str().unwrap();
    let volume = agent_volume_of(task_id);
    http(&addr, "DELETE", &format!("/tasks/{task_id}"), None, &[]).expect(204);

    docker(&["stop", "-t", "30", &id]);
    let code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &id]);
    assert_eq!(code, "0", "lessl's exit code; logs:\n{}", logs());
    docker(&["rm", &id]);
    cleanup.container = None;
    assert!(
        wait_until(Duration::from_secs(10), || containers_with_label(&format!(
            "lessl.instance={instance}"
        ))
        .is_empty()),
        "task containers left behind"
    );
    docker(&["volume", "rm", &volume]);
    drop(cleanup);
}
