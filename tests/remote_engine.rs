//! Lessl driving an engine it reaches only over TCP with TLS, named the Docker CLI's way
//! (`DOCKER_HOST=tcp://...`, `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`): a private dockerd on
//! loopback with certificates the test makes. Such an engine may be on another machine, so the
//! agent goes by volume, with no host path.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::private_dockerd::PrivateDockerd;
use support::*;

#[test]
fn plain_tcp_to_an_engine_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_lessl"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--instance",
            &unique("tcp"),
        ])
        .env("DOCKER_HOST", "tcp://127.0.0.1:2375")
        .env_remove("DOCKER_TLS_VERIFY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DOCKER_TLS_VERIFY"), "{err}");
}

#[test]
fn tasks_run_on_an_engine_reached_over_tls() {
    let engine = PrivateDockerd::start_tls().unwrap_or_else(|e| panic!("{e}"));
    let port = engine.tls_port.unwrap();
    let host = format!("tcp://127.0.0.1:{port}");
    let certs = engine.client_cert_path();
    let env = [
        ("DOCKER_HOST", host.as_str()),
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_CERT_PATH", certs.as_str()),
    ];
    let mut lessl = Lessl::start_env(&[], &env);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "daemon": true, "task_name": "r",
                    "resources": [{"data": "over tls\n", "dest": "/opt/in"}],
                    "cmd": ["cat /opt/in"]})
            .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["stdout"], "over tls\n", "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // The container is on the private engine, with the agent from a volume.
    let mounts = engine
        .docker(&[
            "inspect",
            "--format",
            "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}} {{.RW}}\n{{end}}",
            &id,
        ])
        .unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("volume lessl-agent-") && l.ends_with(" /.lessl false")),
        "no read-only agent volume: {mounts}"
    );
    assert!(!mounts.contains("bind"), "{mounts}");

    // Commands over the attach stream, hijacked through TLS; a timeout; then DELETE.
    let v = lessl
        .put("r", &json!({"cmd": ["echo attached"]}).to_string())
        .expect(200)
        .json();
    assert_eq!(v["results"][0]["stdout"], "attached\n", "{v}");
    assert!(!lessl.log().contains("using exec"), "{}", lessl.log());
    let v = lessl
        .put("r", r#"{"limits": {"timeout_s": 1}, "cmd": ["sleep 30"]}"#)
        .expect(200)
        .json();
    assert_eq!(v["results"][0]["timed_out"], true, "{v}");
    lessl.delete("r").expect(204);
    assert!(
        wait_until(Duration::from_secs(10), || engine
            .containers_with_label(&format!("lessl.instance={}", lessl.instance))
            .is_empty()),
        "DELETE left the container on the engine"
    );
    assert_eq!(lessl.terminate(), Some(0), "log:\n{}", lessl.log());

    // The engine's certificate names 127.0.0.1 only: under another name it is refused.
    let other = format!("tcp://localhost:{port}");
    let env = [
        ("DOCKER_HOST", other.as_str()),
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_CERT_PATH", certs.as_str()),
    ];
    let mut lessl = Lessl::start_env(&[], &env);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "cmd": ["true"]}).to_string())
        .json();
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("certificate"), "{v}");
    assert_eq!(lessl.terminate(), Some(0), "log:\n{}", lessl.log());
    drop(engine);
}
