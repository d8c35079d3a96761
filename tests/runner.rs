//! The in-container runner, by both paths: over the attach stream (the default) and by
//! Docker exec (`--runner exec`, the fallback). The same behaviour is asserted for each:
//! output, exec form without a shell, timeout kill of a process group, output caps, exit by
//! signal, and a PUT into a task a restarted Lessl adopted.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn results(v: &Value) -> &Vec<Value> {
    v["results"].as_array().expect("results")
}

fn behaves(flags: &[&str]) {
    let mut lessl = Lessl::start(flags);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "daemon": true, "env": {"A": "1"}, "limits": {"timeout_s": 2, "output_bytes": 100},
                    "cmd": ["echo out; echo err >&2; echo $A", ["/bin/echo", "exec", "$A"]]})
            .to_string(),
        )
        .expect(201)
        .json();
    let id = v["id"].as_str().unwrap().to_string();
    let r = results(&v);
    assert_eq!(r[0]["stdout"], "out\n1\n");
    assert_eq!(r[0]["stderr"], "err\n");
    assert_eq!(r[1]["stdout"], "exec $A\n");

    // Timeout kills the whole process group; output printed before is kept.
    let v = lessl
        .put(&id, r#"{"limits": {"timeout_s": 1}, "cmd": ["echo before; (sleep 30; echo late) & sleep 30"]}"#)
        .expect(200)
        .json();
    let r = &results(&v)[0];
    assert_eq!(r["timed_out"], true, "{v}");
    assert_eq!(r["exit_code"], 124);
    assert_eq!(r["stdout"], "before\n");
    let v = lessl
        .put(&id, r#"{"cmd": ["ps -o comm | grep -c sleep || true"]}"#)
        .expect(200)
        .json();
    assert_eq!(
        results(&v)[0]["stdout"],
        "0\n",
        "the timed-out group survived"
    );

    // Output cap, exit by signal, a failing command stops the run.
    let v = lessl
        .put(&id, r#"{"limits": {"output_bytes": 10}, "cmd": ["yes | head -c 5000", "kill -KILL $$", "echo never"]}"#)
        .expect(200)
        .json();
    let r = results(&v);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["truncated"], true);
    assert_eq!(r[0]["stdout"], "y\ny\ny\ny\ny\n");
    assert_eq!(r[1]["exit_code"], 137);
    assert_eq!(r[1]["oom_killed"], false);
    assert_eq!(v["failed_command"], 1);

    // A restarted Lessl adopts the task and runs commands in it again.
    let instance = lessl.instance.clone();
    lessl.kill9();
    let lessl = Lessl::start_instance(&instance, flags);
    let v = lessl
        .put(&id, r#"{"cmd": ["echo adopted"]}"#)
        .expect(200)
        .json();
    assert_eq!(results(&v)[0]["stdout"], "adopted\n");

    // An image with no shell at all, exec form.
    let v = lessl
        .post(&json!({"image": NOSHELL, "cmd": [["echo", "no", "shell"]]}).to_string())
        .expect(201)
        .json();
    assert_eq!(results(&v)[0]["stdout"], "no shell\n");

    lessl.delete(&id).expect(204);
    lessl.finish();
}

#[test]
fn attach_path_behaves() {
    behaves(&[]);
}

#[test]
fn exec_path_behaves() {
    behaves(&["--runner", "exec"]);
}

#[test]
fn concurrent_commands_in_one_task_each_get_their_own_output() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true}).to_string())
        .expect(201)
        .json();
    let id = v["id"].as_str().unwrap().to_string();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (lessl, id) = (&lessl, &id);
                s.spawn(move || {
                    let body =
                        json!({"cmd": [format!("sleep 0.$((RANDOM % 3)); seq {i} {}", i + 500)]})
                            .to_string();
                    let v = lessl.put(id, &body).expect(200).json();
                    let expected: String = (i..=i + 500).map(|n| format!("{n}\n")).collect();
                    assert_eq!(results(&v)[0]["stdout"], expected.as_str(), "run {i}");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    lessl.delete(&id).expect(204);
    assert!(wait_until(Duration::from_secs(5), || lessl
        .containers()
        .is_empty()));
    lessl.finish();
}
