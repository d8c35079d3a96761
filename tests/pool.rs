//! The warm pool: containers started ahead for an image are taken by tasks (each by one
//! task only), refilled in the background, skipped by tasks they cannot serve, never listed
//! as tasks, and cleaned up on shutdown and after a crash.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use support::*;

fn pooled(lessl: &Lessl) -> HashSet<String> {
    docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=lessl.instance={}", lessl.instance),
        "--filter",
        "label=lessl.pool",
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn pooled_containers_are_taken_once_and_refilled() {
    let lessl = Lessl::start(&["--warm", &format!("{BUSYBOX}=2")]);
    assert!(
        wait_until(Duration::from_secs(20), || pooled(&lessl).len() == 2),
        "pool never filled"
    );
    let mut seen = HashSet::new();
    for i in 0..4 {
        let before = pooled(&lessl);
        let v = lessl
            .post(
                &json!({"image": BUSYBOX, "env": {"N": i.to_string()}, "pwd": "/work",
                          "resources": [{"data": "in a warm one\n", "dest": "/work/f"}],
                          "cmd": ["cat f; echo $N; pwd"]})
                .to_string(),
            )
            .expect(201)
            .json();
        let id = v["id"].as_str().unwrap().to_string();
        assert_eq!(
            v["results"][0]["stdout"],
            format!("in a warm one\n{i}\n/work\n")
        );
        assert!(
            before.contains(&id),
            "task {i} did not take a pooled container"
        );
        assert!(
            seen.insert(id.clone()),
            "a pooled container was given twice"
        );
        // It is removed after its run, never returned to the pool.
        assert!(wait_until(Duration::from_secs(10), || !container_exists(
            &id
        )));
        assert!(
            wait_until(Duration::from_secs(20), || pooled(&lessl).len() == 2),
            "pool not refilled"
        );
    }
    // Idle pooled containers are not tasks.
    assert!(lessl.get("/tasks").json().as_array().unwrap().is_empty());
    for id in pooled(&lessl) {
        lessl.get(&format!("/tasks/{id}")).expect(404);
    }
    // Tasks a pooled container cannot serve take the cold path.
    let before = pooled(&lessl);
    for body in [
        json!({"image": BUSYBOX, "limits": {"memory_mb": 64}, "cmd": ["true"]}),
        json!({"image": BUSYBOX, "task_name": unique("named"), "cmd": ["true"]}),
        json!({"image": BUSYBOX, "daemon": true, "cmd": ["true"]}),
        json!({"image": NOSHELL, "cmd": [["echo"]]}),
    ] {
        let v = lessl.post(&body.to_string()).expect(201).json();
        let id = v["id"].as_str().unwrap().to_string();
        assert!(!before.contains(&id), "{body} took a pooled container");
        if v["daemon"] == true {
            lessl.delete(&id).expect(204);
        }
    }
    // Shutdown removes the idle pool too.
    lessl.finish();
}

#[test]
fn a_crashed_lessls_pool_is_removed_at_the_next_start() {
    let mut lessl = Lessl::start(&["--warm", &format!("{BUSYBOX}=2")]);
    assert!(wait_until(Duration::from_secs(20), || pooled(&lessl).len() == 2));
    let stale = pooled(&lessl);
    let instance = lessl.instance.clone();
    lessl.kill9();
    assert!(stale.iter().all(|id| container_exists(id)));
    let lessl = Lessl::start_instance(&instance, &[]);
    assert!(
        wait_until(Duration::from_secs(10), || stale
            .iter()
            .all(|id| !container_exists(id))),
        "stale pooled containers were not removed; log:\n{}",
        lessl.log()
    );
    lessl.finish();
}
