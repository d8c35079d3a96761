//! Lifecycle against real containers: TTL expiry, restarts after a crash (kill -9), what a
//! restarted Lessl adopts or removes, SIGTERM, DELETE in every state, and `GET /tasks`.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;

fn results(v: &Value) -> &Vec<Value> {
    v["results"].as_array().expect("results array")
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

/// Ids listed by `GET /tasks`, in the order given.
fn listed(lessl: &Lessl) -> Vec<String> {
    lessl
        .get("/tasks")
        .expect(200)
        .json()
        .as_array()
        .expect("list")
        .iter()
        .map(id_of)
        .collect()
}

fn post_async(lessl: &Lessl, body: &Value) -> Value {
    lessl
        .request("POST", "/tasks?wait=false", Some(&body.to_string()))
        .expect(202)
        .json()
}

/// Sleeps until just after the next wall-clock second starts.
fn align_to_second() {
    let sub = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_millis() as u64;
    std::thread::sleep(Duration::from_millis(1000 - sub + 20));
}

#[test]
fn daemon_task_is_removed_at_its_ttl() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "ttl": 2}).to_string())
        .expect(201)
        .json();
    let id = id_of(&v);
    let get = lessl.get(&format!("/tasks/{id}")).expect(200).json();
    assert_eq!(get["state"], "idle");
    assert_eq!(listed(&lessl), vec![id.clone()]);
    assert!(
        wait_until(Duration::from_secs(10), || !container_exists(&id)),
        "container still there 10 s after a 2 s TTL; log:\n{}",
        lessl.log()
    );
    lessl.get(&format!("/tasks/{id}")).expect(404);
    assert!(listed(&lessl).is_empty());
    lessl.delete(&id).expect(404);
    lessl.finish();
}

#[test]
fn daemon_task_survives_kill9_and_its_ttl_still_fires_after_restart() {
    let mut lessl = Lessl::start(&[]);
    let instance = lessl.instance.clone();
    let name = unique("survivor");
    let posted = Instant::now();
    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "ttl": 4, "task_name": name}).to_string())
        .expect(201)
        .json();
    let id = id_of(&v);
    lessl.kill9();
    assert!(
        container_exists(&id),
        "kill -9 must not take the task along"
    );

    let lessl = Lessl::start_instance(&instance, &[]);
    let v = lessl.get(&format!("/tasks/{name}")).expect(200).json();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["state"], "idle");
    assert_eq!(v["daemon"], true);
    let v = lessl
        .put(&name, r#"{"cmd": ["echo alive"]}"#)
        .expect(200)
        .json();
    assert_eq!(results(&v)[0]["stdout"], "alive\n");
    assert_eq!(results(&v)[0]["exit_code"], 0);
    assert!(container_exists(&id));
    // The TTL armed before the crash fires in the restarted Lessl.
    assert!(
        wait_until(Duration::from_secs(10), || !container_exists(&id)),
        "TTL did not fire after restart; log:\n{}",
        lessl.log()
    );
    assert!(
        posted.elapsed() >= Duration::from_secs(3),
        "removed long before its TTL"
    );
    lessl.get(&format!("/tasks/{name}")).expect(404);
    assert!(listed(&lessl).is_empty());
    lessl.finish();
}

#[test]
fn task_that_expired_while_lessl_was_down_is_removed_at_start() {
    let mut lessl = Lessl::start(&[]);
    let instance = lessl.instance.clone();
    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "ttl": 2}).to_string())
        .expect(201)
        .json();
    let id = id_of(&v);
    lessl.kill9();
    // Past the `lessl.expires` label (whole seconds) while nothing runs.
    std::thread::sleep(Duration::from_millis(3200));
    assert!(container_exists(&id), "nobody should have removed it yet");

    let lessl = Lessl::start_instance(&instance, &[]);
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || !container_exists(&id)),
        "expired task not removed at start; log:\n{}",
        lessl.log()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    lessl.get(&format!("/tasks/{id}")).expect(404);
    assert!(listed(&lessl).is_empty());
    lessl.finish();
}

#[test]
fn non_daemon_run_orphaned_by_kill9_is_removed_at_restart() {
    // A supervised restart can come back within the same wall-clock second as the task was
    // created; the run still died with the old process and must count as orphaned.
    align_to_second();
    let mut lessl = Lessl::start(&[]);
    let instance = lessl.instance.clone();
    let v = post_async(
        &lessl,
        &json!({"image": BUSYBOX, "ttl": 120, "cmd": ["sleep 30"]}),
    );
    let id = id_of(&v);
    assert!(wait_until(Duration::from_secs(10), || lessl
        .get(&format!("/tasks/{id}"))
        .json()["state"]
        == "running"));
    lessl.kill9();
    assert!(container_exists(&id));

    let lessl = Lessl::start_instance(&instance, &[]);
    assert!(
        wait_until(Duration::from_secs(5), || !container_exists(&id)),
        "orphaned non-daemon container not removed at start (expected within 5 s, TTL is \
         120 s); log:\n{}",
        lessl.log()
    );
    lessl.get(&format!("/tasks/{id}")).expect(404);
    lessl.finish();
}

#[test]
fn ttl_reached_during_a_command_keeps_its_output() {
    let lessl = Lessl::start(&[]);
    let t0 = Instant::now();
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "ttl": 2, "limits": {"timeout_s": 60},
                    "cmd": ["echo started; sleep 30"]})
            .to_string(),
        )
        .expect(201)
        .json();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(15), "answer took {took:?}");
    assert!(
        took >= Duration::from_millis(1000),
        "answer came before the TTL: {took:?}"
    );
    let res = results(&v);
    assert_eq!(res.len(), 1, "{v}");
    assert_eq!(res[0]["stdout"], "started\n");
    assert_eq!(res[0]["exit_code"], Value::Null);
    assert_eq!(res[0]["timed_out"], false);
    assert_eq!(v["error"]["code"], "task.expired", "{v}");
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    let id = id_of(&v);
    assert!(wait_until(Duration::from_secs(5), || !container_exists(
        &id
    )));
    lessl.finish();
}

#[test]
fn sigterm_keeps_daemon_tasks_and_removes_running_non_daemon_ones() {
    let mut lessl = Lessl::start(&[]);
    let instance = lessl.instance.clone();
    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "ttl": 60}).to_string())
        .expect(201)
        .json();
    let daemon_id = id_of(&v);
    let v = post_async(&lessl, &json!({"image": BUSYBOX, "cmd": ["sleep 30"]}));
    let run_id = id_of(&v);
    assert!(wait_until(Duration::from_secs(10), || lessl
        .get(&format!("/tasks/{run_id}"))
        .json()["state"]
        == "running"));

    let t0 = Instant::now();
    let code = lessl.terminate();
    let took = t0.elapsed();
    assert_eq!(code, Some(0), "exit status; log:\n{}", lessl.log());
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    assert!(
        container_exists(&daemon_id),
        "SIGTERM removed a daemon task"
    );
    assert!(
        !container_exists(&run_id),
        "SIGTERM left the running non-daemon container; log:\n{}",
        lessl.log()
    );

    let lessl = Lessl::start_instance(&instance, &[]);
    let v = lessl.get(&format!("/tasks/{daemon_id}")).expect(200).json();
    assert_eq!(v["state"], "idle");
    lessl.delete(&daemon_id).expect(204);
    assert!(!container_exists(&daemon_id));
    lessl.finish();
}

#[test]
fn delete_during_a_running_command() {
    let lessl = Lessl::start(&[]);
    let name = unique("busy");
    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "task_name": name}).to_string())
        .expect(201)
        .json();
    let id = id_of(&v);
    lessl
        .request(
            "PUT",
            &format!("/tasks/{name}?wait=false"),
            Some(r#"{"cmd": ["sleep 30"]}"#),
        )
        .expect(202);
    assert!(wait_until(Duration::from_secs(10), || lessl
        .get(&format!("/tasks/{name}"))
        .json()["state"]
        == "running"));
    let t0 = Instant::now();
    lessl.delete(&name).expect(204);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(!container_exists(&id));
    lessl.delete(&name).expect(404);
    lessl.delete(&id).expect(404);
    lessl.get(&format!("/tasks/{name}")).expect(404);
    lessl.get(&format!("/tasks/{id}")).expect(404);
    assert!(listed(&lessl).is_empty());
    lessl.finish();
}

#[test]
fn delete_of_finished_and_unknown_tasks_is_consistent() {
    let lessl = Lessl::start(&[]);
    let name = unique("done");
    let v = lessl
        .post(&json!({"image": BUSYBOX, "task_name": name, "cmd": ["echo done"]}).to_string())
        .expect(201)
        .json();
    let id = id_of(&v);
    assert!(wait_until(Duration::from_secs(10), || !container_exists(
        &id
    )));
    // Its results are still visible, so it is there to delete exactly once.
    let v = lessl.get(&format!("/tasks/{name}")).expect(200).json();
    assert_eq!(v["state"], "finished");
    assert_eq!(results(&v)[0]["stdout"], "done\n");
    assert!(listed(&lessl).is_empty(), "a finished task is not live");
    lessl.delete(&name).expect(204);
    for r in [name.as_str(), id.as_str(), &id[..12]] {
        let v = lessl.delete(r).expect(404).json();
        assert!(v["error"]["code"].is_string());
        lessl.get(&format!("/tasks/{r}")).expect(404);
    }
    lessl.delete(&name).expect(404);

    let unknown = unique("never-was");
    for _ in 0..2 {
        let v = lessl.delete(&unknown).expect(404).json();
        assert!(v["error"]["code"].is_string());
        lessl.get(&format!("/tasks/{unknown}")).expect(404);
    }
    lessl.delete("0123456789ab").expect(404);
    lessl.finish();
}

#[test]
fn exec_form_with_a_timeout_on_an_image_without_a_shell() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(
            &json!({"image": NOSHELL, "limits": {"timeout_s": 1},
                    "cmd": [["echo", "quick"], ["cat", "/etc/hostname"]]})
            .to_string(),
        )
        .expect(201)
        .json();
    let res = results(&v);
    assert_eq!(res.len(), 2);
    assert_eq!(res[0]["exit_code"], 0);
    assert_eq!(res[0]["stdout"], "quick\n");
    assert_eq!(res[0]["timed_out"], false);
    assert_eq!(res[1]["exit_code"], 0);
    assert_eq!(res[1]["timed_out"], false);
    assert!(!res[1]["stdout"].as_str().unwrap().is_empty());
    assert_eq!(v["failed_command"], Value::Null);

    // A command that never ends on its own, without a shell: killed at the limit.
    let t0 = Instant::now();
    let v = lessl
        .post(
            &json!({"image": NOSHELL, "limits": {"timeout_s": 1, "output_bytes": 100},
                    "cmd": [["cat", "/dev/zero"], ["echo", "never"]]})
            .to_string(),
        )
        .expect(201)
        .json();
    assert!(t0.elapsed() < Duration::from_secs(10));
    let res = results(&v);
    assert_eq!(res.len(), 1, "the run stops at the timed-out command");
    assert_eq!(res[0]["timed_out"], true);
    assert_eq!(res[0]["exit_code"], 124);
    assert_eq!(res[0]["truncated"], true);
    assert_eq!(res[0]["stdout"].as_str().unwrap().len(), 100);
    assert_eq!(v["failed_command"], 0);
    lessl.finish();
}

#[test]
fn task_list_is_this_instances_live_tasks_oldest_first() {
    let lessl = Lessl::start(&[]);
    let other = Lessl::start(&[]);
    let foreign = id_of(
        &other
            .post(&json!({"image": BUSYBOX, "daemon": true, "ttl": 60}).to_string())
            .expect(201)
            .json(),
    );
    // Created in distinct seconds (the timestamps' resolution), so the order is defined.
    let mut ids = Vec::new();
    for i in 0..3 {
        if i > 0 {
            align_to_second();
        }
        let v = lessl
            .post(&json!({"image": BUSYBOX, "daemon": true, "ttl": 60}).to_string())
            .expect(201)
            .json();
        ids.push(id_of(&v));
    }
    // A finished non-daemon task is not live once its container is gone.
    let done = id_of(
        &lessl
            .post(&json!({"image": BUSYBOX, "cmd": ["true"]}).to_string())
            .expect(201)
            .json(),
    );
    assert!(wait_until(Duration::from_secs(10), || !container_exists(
        &done
    )));

    let list = lessl.get("/tasks").expect(200).json();
    let got: Vec<String> = list.as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(got, ids, "oldest first, only live tasks of this instance");
    let created: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["created_at"].as_str().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] < w[1]), "{created:?}");
    assert!(!got.contains(&foreign));
    assert_eq!(listed(&other), vec![foreign.clone()]);

    lessl.delete(&ids[1]).expect(204);
    assert_eq!(listed(&lessl), vec![ids[0].clone(), ids[2].clone()]);
    for id in [&ids[0], &ids[2]] {
        lessl.delete(id).expect(204);
    }
    assert!(listed(&lessl).is_empty());
    other.delete(&foreign).expect(204);
    other.finish();
    lessl.finish();
}

#[test]
fn the_task_list_follows_docker_when_containers_change_behind_lessls_back() {
    let lessl = Lessl::start(&[]);
    let post = || {
        lessl
            .post(&json!({"image": BUSYBOX, "daemon": true}).to_string())
            .expect(201)
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (stopped, removed) = (post(), post());
    let listed = |id: &str| {
        lessl
            .get("/tasks")
            .json()
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
    };
    assert!(listed(&stopped).is_some() && listed(&removed).is_some());
    docker(&["stop", "-t", "1", &stopped]);
    docker(&["rm", "-f", &removed]);
    assert!(
        wait_until(Duration::from_secs(5), || listed(&removed).is_none()),
        "a container removed outside Lessl is still listed"
    );
    assert!(wait_until(Duration::from_secs(5), || {
        listed(&stopped).is_some_and(|t| t["state"] == "exited")
    }));
    lessl.get(&format!("/tasks/{removed}")).expect(404);
    let v = lessl
        .put(&stopped, r#"{"cmd": ["true"]}"#)
        .expect(409)
        .json();
    assert_eq!(v["error"]["code"], "task.not_running");
    lessl.delete(&stopped).expect(204);
    lessl.finish();
}

#[test]
fn delete_racing_the_end_of_a_run_still_reads_as_gone() {
    // A short async task finishes and starts its own removal; a DELETE arriving meanwhile
    // meets a container Docker is already removing. Either way, a later GET is a 404.
    let lessl = Lessl::start(&[]);
    for _ in 0..20 {
        let r = lessl
            .request(
                "POST",
                "/tasks?wait=false",
                Some(&json!({"image": BUSYBOX, "cmd": ["echo hello"]}).to_string()),
            )
            .expect(202);
        let id = r.json()["id"].as_str().unwrap().to_string();
        lessl.delete(&id).expect(204);
        let g = lessl.get(&format!("/tasks/{id}"));
        assert_eq!(g.status, 404, "{}\nlog:\n{}", g.text(), lessl.log());
        lessl.delete(&id).expect(404);
    }
    lessl.finish();
}
