//! One answer per state: what each verb does to a task in each state of its life (the
//! README's table), checked through the HTTP API against real containers, whatever the timing.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[test]
fn a_put_into_a_finished_task_is_a_409_naming_its_state_whatever_the_timing() {
    let lessl = Lessl::start(&[]);
    for round in 0..5 {
        let v = lessl
            .post(&json!({"image": BUSYBOX, "cmd": ["echo done"], "ttl": 600}).to_string())
            .expect(201)
            .json();
        assert_eq!(v["state"], "finished", "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        // At once (its container may still be on its way out), then once it is gone.
        let put = lessl.put(&id, &json!({"cmd": ["echo again"]}).to_string());
        assert_eq!(put.status, 409, "round {round}, at once: {}", put.text());
        let e = put.json();
        assert_eq!(e["error"]["code"], "task.not_running");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("finished"),
            "{e}"
        );
        assert!(wait_until(Duration::from_secs(10), || !container_exists(
            &id
        )));
        let put = lessl.put(&id, &json!({"cmd": ["echo again"]}).to_string());
        assert_eq!(put.status, 409, "round {round}, later: {}", put.text());
        // GET still answers the finished task, with its results.
        let v = lessl.get(&format!("/tasks/{id}")).expect(200).json();
        assert_eq!(v["state"], "finished");
        assert_eq!(v["results"][0]["stdout"], "done\n");
    }
    lessl.finish();
}

#[test]
fn a_daemon_takes_puts_until_deleted_and_an_unknown_ref_is_404() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "task_name": "d"}).to_string())
        .expect(201)
        .json();
    assert_eq!(v["state"], "idle");
    let v = lessl
        .put("d", &json!({"cmd": ["echo in"]}).to_string())
        .expect(200)
        .json();
    assert_eq!(v["state"], "idle");
    assert_eq!(v["results"][0]["stdout"], "in\n");
    lessl.delete("d").expect(204);
    lessl
        .put("d", &json!({"cmd": ["echo in"]}).to_string())
        .expect(404);
    lessl
        .put("nosuchtask", &json!({"cmd": ["true"]}).to_string())
        .expect(404);
    lessl.finish();
}
