//! Lessl on engines and runtimes other than the shared Docker with runc: gVisor's `runsc`
//! chosen with `--runtime`, on a private dockerd that knows it (the shared engine is never
//! reconfigured).

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::private_dockerd::PrivateDockerd;
use support::*;

#[test]
fn an_unknown_runtime_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_lessl"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--instance",
            &unique("rt"),
            "--runtime",
            "no-such-runtime",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--runtime no-such-runtime") && err.contains("no such runtime"),
        "{err}"
    );
}

#[test]
fn tasks_run_under_gvisor_when_asked() {
    let engine = PrivateDockerd::start_runsc().unwrap_or_else(|e| panic!("{e}"));
    let lessl = Lessl::start(&[
        "--docker-socket",
        &engine.socket_str(),
        "--runtime",
        "runsc",
    ]);
    // gVisor answers uname with its own kernel: proof the command ran in the sandbox.
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "daemon": true, "task_name": "g",
                    "resources": [{"data": "in the sandbox\n", "dest": "/opt/note"}],
                    "cmd": ["cat /opt/note", "uname -r"]})
            .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["stdout"], "in the sandbox\n", "{v}");
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(v["results"][1]["exit_code"], 0, "{v}");
    assert_ne!(
        v["results"][1]["stdout"].as_str().unwrap().trim(),
        host_kernel.trim(),
        "the command saw the host's kernel: not in gVisor"
    );
    let id = v["id"].as_str().unwrap().to_string();
    let runtime = engine
        .docker(&["inspect", "--format", "{{.HostConfig.Runtime}}", &id])
        .unwrap();
    assert_eq!(runtime, "runsc");
    let v = lessl
        .put("g", &json!({"cmd": ["echo again"]}).to_string())
        .expect(200)
        .json();
    assert_eq!(v["results"][0]["stdout"], "again\n", "{v}");
    // A file placed by a PUT into the running sandbox is visible to its commands.
    let v = lessl
        .put(
            "g",
            &json!({"resources": [{"data": "placed later\n", "dest": "/opt/later"}],
                    "cmd": ["cat /opt/later"]})
            .to_string(),
        )
        .expect(200)
        .json();
    assert_eq!(v["results"][0]["stdout"], "placed later\n", "{v}");
    // A timeout is enforced inside the sandbox too.
    let v = lessl
        .put(
            "g",
            &json!({"cmd": ["sleep 30"], "limits": {"timeout_s": 1}}).to_string(),
        )
        .expect(200)
        .json();
    assert_eq!(v["results"][0]["timed_out"], true, "{v}");
    // Limits the sandbox cannot start under are refused up front, naming the field.
    let v = lessl
        .post(&json!({"image": BUSYBOX, "limits": {"pids": 16}}).to_string())
        .expect(400)
        .json();
    assert_eq!(v["error"]["field"], "limits.pids", "{v}");
    lessl.delete("g").expect(204);
    assert!(wait_until(Duration::from_secs(20), || engine
        .containers_with_label(&format!("lessl.instance={}", lessl.instance))
        .is_empty()));
    lessl.finish();
    drop(engine);
}
