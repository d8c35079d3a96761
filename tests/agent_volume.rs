//! The agent without a host path (`--agent-source volume`): Lessl copies itself into a named
//! volume once per engine and binary, and task containers mount that volume read-only at
//! `/.lessl` instead of a bind of Lessl's host path. Run on the shared engine.

mod support;

use serde_json::json;
use support::*;

#[test]
fn tasks_run_with_the_agent_from_a_volume_and_no_host_path() {
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
    let mounts = docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}} {{.RW}}\n{{end}}",
        &id,
    ]);
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
    assert!(!mounts.contains("bind"), "a host path is bound: {mounts}");
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
    assert!(wait_until(std::time::Duration::from_secs(10), || lessl
        .containers()
        .is_empty()));
    lessl.finish();
    // The volume is shared by every Lessl of this build on the engine; only this test uses
    // it on the shared engine, so it removes it.
    docker(&["volume", "rm", &volume]);
}
