//! Every verb through HTTP against real containers: the contract's example, failures, exec
//! form, PUT, names, batches, output caps, async runs, foreign containers and bad input.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn results(v: &Value) -> &Vec<Value> {
    v["results"].as_array().expect("results array")
}

#[test]
fn contract_example_runs_on_busybox() {
    let lessl = Lessl::start(&[]);
    let name = unique("hello");
    // The contract's example with busybox standing in for a python image: `src` names the
    // file, `data` is its content, `dest` is the directory.
    let body = json!([{
        "version": 1.0, "daemon": true, "image": BUSYBOX, "ttl": 3600,
        "resources": [{"content_type": "text/x-sh", "data": "echo Hello World",
                       "src": "http://example.com/hello.sh", "dest": "/opt"}],
        "task_name": name, "pwd": "/opt", "env": {"KEY": "value"},
        "cmd": ["sh hello.sh", "echo $KEY; pwd"]
    }]);
    let r = lessl.post(&body.to_string()).expect(201);
    let v = r.json();
    let task = &v[0];
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("Location"), Some(format!("/tasks/{id}").as_str()));
    assert_eq!(task["name"], name.as_str());
    assert_eq!(task["image"], BUSYBOX);
    assert_eq!(task["daemon"], true);
    assert_eq!(task["state"], "idle");
    assert!(task["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(task["expires_at"].as_str().unwrap() > task["created_at"].as_str().unwrap());
    let res = results(task);
    assert_eq!(res.len(), 2);
    assert_eq!(res[0]["cmd"], "sh hello.sh");
    assert_eq!(res[0]["exit_code"], 0);
    assert_eq!(res[0]["stdout"], "Hello World\n");
    assert_eq!(res[0]["timed_out"], false);
    assert_eq!(res[0]["truncated"], false);
    assert!(res[0]["duration_ms"].is_u64());
    assert_eq!(res[1]["stdout"], "value\n/opt\n");

    // GET by id, short id and name all find it; it is listed.
    for r in [id.as_str(), &id[..12], name.as_str()] {
        let v = lessl.get(&format!("/tasks/{r}")).expect(200).json();
        assert_eq!(v["id"], id.as_str(), "ref {r}");
    }
    let list = lessl.get("/tasks").expect(200).json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());

    // The container carries the safe defaults.
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &id])).unwrap();
    let hc = &inspect[0]["HostConfig"];
    assert_eq!(hc["NetworkMode"], "none");
    assert_eq!(hc["CapDrop"], json!(["ALL"]));
    assert_eq!(hc["SecurityOpt"], json!(["no-new-privileges"]));
    assert!(hc["Memory"].as_i64().unwrap() > 0);
    assert!(hc["PidsLimit"].as_i64().unwrap() > 0);
    assert!(hc["NanoCpus"].as_i64().unwrap() > 0);
    assert_eq!(inspect[0]["Config"]["NetworkDisabled"], true);
    assert_eq!(inspect[0]["Config"]["Labels"]["lessl.managed"], "true");

    lessl.delete(&name).expect(204);
    lessl.delete(&name).expect(404);
    assert!(!container_exists(&id));
    lessl.finish();
}

#[test]
fn failing_command_stops_the_run_and_says_which() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "cmd": ["echo one", "echo bad >&2; exit 3", "echo never"]})
                .to_string(),
        )
        .expect(201)
        .json();
    let res = results(&v);
    assert_eq!(res.len(), 2);
    assert_eq!(res[0]["stdout"], "one\n");
    assert_eq!(res[1]["exit_code"], 3);
    assert_eq!(res[1]["stderr"], "bad\n");
    assert_eq!(v["failed_command"], 1);
    assert_eq!(v["state"], "finished");
    // A non-daemon task's container goes away once its commands are done.
    let id = v["id"].as_str().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(10), || !container_exists(
        &id
    )));
    lessl.finish();
}

#[test]
fn exec_form_runs_on_an_image_without_a_shell() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(
            &json!({"image": NOSHELL, "cmd": [["echo", "a  b", "$HOME"], ["missing-program"]]})
                .to_string(),
        )
        .expect(201)
        .json();
    let res = results(&v);
    assert_eq!(res[0]["cmd"], json!(["echo", "a  b", "$HOME"]));
    assert_eq!(
        res[0]["stdout"], "a  b $HOME\n",
        "no shell expansion in exec form"
    );
    assert_eq!(res[0]["exit_code"], 0);
    assert_eq!(res[1]["exit_code"], 127);
    assert!(res[1]["stderr"]
        .as_str()
        .unwrap()
        .contains("missing-program"));
    lessl.finish();
}

#[test]
fn put_runs_in_the_live_container_with_new_resources_and_env() {
    let lessl = Lessl::start(&[]);
    let name = unique("d");
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "daemon": true, "task_name": name, "env": {"A": "1"},
                      "cmd": ["echo first > /tmp/state"]})
            .to_string(),
        )
        .expect(201)
        .json();
    let id = v["id"].as_str().unwrap().to_string();
    let r = lessl
        .put(
            &name,
            &json!({"resources": [{"data": "hello from put", "dest": "/srv/in.txt"}],
                    "env": {"B": "2"}, "pwd": "/srv",
                    "cmd": ["cat in.txt; echo; cat /tmp/state; echo $A$B; pwd"]})
            .to_string(),
        )
        .expect(200);
    let v = r.json();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(
        results(&v)[0]["stdout"],
        "hello from put\nfirst\n12\n/srv\n"
    );
    assert_eq!(v["state"], "idle");
    // PUT by short id works too, and the container is the same one.
    let v = lessl
        .put(&id[..12], r#"{"cmd": ["cat /tmp/state"]}"#)
        .expect(200)
        .json();
    assert_eq!(results(&v)[0]["stdout"], "first\n");
    lessl.delete(&id).expect(204);
    // PUT without image into a task that does not exist is a 404.
    lessl.put(&name, r#"{"cmd": ["true"]}"#).expect(404);
    lessl.finish();
}

#[test]
fn put_creates_a_named_task_when_none_exists() {
    let lessl = Lessl::start(&[]);
    let name = unique("created");
    let r = lessl
        .put(
            &name,
            &json!({"image": BUSYBOX, "daemon": true, "cmd": ["echo made"]}).to_string(),
        )
        .expect(201);
    let v = r.json();
    assert_eq!(v["name"], name.as_str());
    assert_eq!(results(&v)[0]["stdout"], "made\n");
    assert!(r.header("Location").unwrap().starts_with("/tasks/"));
    // The same PUT again execs in the existing task instead of creating.
    let v = lessl
        .put(
            &name,
            &json!({"image": BUSYBOX, "daemon": true, "cmd": ["echo again"]}).to_string(),
        )
        .expect(200)
        .json();
    assert_eq!(results(&v)[0]["stdout"], "again\n");
    lessl.delete(&name).expect(204);
    lessl.finish();
}

#[test]
fn name_clash_is_409_and_creates_nothing() {
    let lessl = Lessl::start(&[]);
    let name = unique("same");
    lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "task_name": name}).to_string())
        .expect(201);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "task_name": name}).to_string())
        .expect(409)
        .json();
    assert_eq!(v["error"]["code"], "task.name_clash");
    assert_eq!(v["error"]["field"], "task_name");
    assert_eq!(lessl.containers().len(), 1);
    lessl.delete(&name).expect(204);
    lessl.finish();
}

#[test]
fn batch_runs_all_or_creates_none() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(&json!([{"image": BUSYBOX, "cmd": ["echo a"]}, {"image": NOSHELL, "cmd": [["echo", "b"]]}]).to_string())
        .expect(201)
        .json();
    let tasks = v.as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(results(&tasks[0])[0]["stdout"], "a\n");
    assert_eq!(results(&tasks[1])[0]["stdout"], "b\n");

    // An invalid element: 400 naming it, nothing created.
    let v = lessl
        .post(
            &json!([{"image": BUSYBOX, "daemon": true}, {"image": BUSYBOX, "ttl": -1}]).to_string(),
        )
        .expect(400)
        .json();
    assert_eq!(v["error"]["field"], "[1].ttl");
    // An element Docker refuses (unknown image): the others are removed again.
    let v = lessl
        .post(
            &json!([{"image": BUSYBOX, "daemon": true}, {"image": "lessl-test/no-such-image"}])
                .to_string(),
        )
        .expect(422)
        .json();
    assert_eq!(v["error"]["code"], "task.image_unknown");
    assert!(wait_until(Duration::from_secs(10), || lessl
        .containers()
        .is_empty()));
    lessl.finish();
}

#[test]
fn output_is_capped_and_flagged() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "limits": {"output_bytes": 1000},
                      "cmd": ["yes | head -c 50000; echo tail >&2"]})
            .to_string(),
        )
        .expect(201)
        .json();
    let r = &results(&v)[0];
    assert_eq!(r["truncated"], true);
    assert_eq!(r["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(r["stderr"], "tail\n");
    assert_eq!(r["exit_code"], 0);
    // Exactly at the cap is not truncated.
    let v = lessl
        .post(&json!({"image": BUSYBOX, "limits": {"output_bytes": 1000}, "cmd": ["yes | head -c 1000"]}).to_string())
        .expect(201)
        .json();
    assert_eq!(results(&v)[0]["truncated"], false);
    lessl.finish();
}

#[test]
fn command_timeout_kills_the_process_group_and_keeps_output() {
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "daemon": true, "limits": {"timeout_s": 1},
                      "cmd": ["echo before; (sleep 30; echo child) & sleep 30; echo after"]})
            .to_string(),
        )
        .expect(201)
        .json();
    let r = &results(&v)[0];
    assert_eq!(r["timed_out"], true);
    assert_eq!(r["exit_code"], 124);
    assert_eq!(r["stdout"], "before\n");
    assert!(r["duration_ms"].as_u64().unwrap() < 10_000);
    // Nothing of the command's process group survives in the container.
    let id = v["id"].as_str().unwrap();
    let v = lessl
        .put(id, r#"{"cmd": ["ps -o comm | grep -c sleep || true"]}"#)
        .expect(200)
        .json();
    assert_eq!(results(&v)[0]["stdout"], "0\n");
    lessl.delete(id).expect(204);
    lessl.finish();
}

#[test]
fn async_post_answers_202_and_get_shows_results_as_they_finish() {
    let lessl = Lessl::start(&[]);
    let r = lessl
        .request(
            "POST",
            "/tasks?wait=false",
            Some(
                &json!({"image": BUSYBOX, "cmd": ["echo one", "sleep 2", "echo three"]})
                    .to_string(),
            ),
        )
        .expect(202);
    let location = r.header("Location").unwrap().to_string();
    let v = r.json();
    assert_eq!(v["state"], "running");
    // While it runs, the first result shows up before the last.
    assert!(wait_until(Duration::from_secs(10), || {
        let v = lessl.get(&location).json();
        !results(&v).is_empty() && v["state"] == "running"
    }));
    assert!(wait_until(Duration::from_secs(20), || lessl
        .get(&location)
        .json()["state"]
        == "finished"));
    let v = lessl.get(&location).expect(200).json();
    let res = results(&v);
    assert_eq!(res.len(), 3);
    assert_eq!(res[2]["stdout"], "three\n");
    lessl.finish();
}

#[test]
fn foreign_containers_are_404_whatever_their_id() {
    let lessl = Lessl::start(&[]);
    let name = unique("foreign");
    let id = docker(&[
        "create",
        "--name",
        &name,
        "--network",
        "none",
        BUSYBOX,
        "true",
    ]);
    for r in [id.as_str(), &id[..12], name.as_str()] {
        lessl.get(&format!("/tasks/{r}")).expect(404);
        lessl.delete(r).expect(404);
        lessl.put(r, r#"{"cmd": ["true"]}"#).expect(404);
    }
    // Another Lessl instance's task is foreign too.
    let other = Lessl::start(&[]);
    let v = other
        .post(&json!({"image": BUSYBOX, "daemon": true}).to_string())
        .expect(201)
        .json();
    let other_id = v["id"].as_str().unwrap().to_string();
    lessl.get(&format!("/tasks/{other_id}")).expect(404);
    lessl.delete(&other_id).expect(404);
    assert!(lessl.get("/tasks").json().as_array().unwrap().is_empty());
    assert!(container_exists(&id), "the foreign container is untouched");
    docker(&["rm", "-f", &id]);
    other.delete(&other_id).expect(204);
    other.finish();
    lessl.finish();
}

#[test]
fn bad_inputs_get_the_right_status_a_named_field_and_create_nothing() {
    let lessl = Lessl::start(&["--max-ttl", "3600", "--max-resource-bytes", "1024"]);
    let big = "x".repeat(2000);
    let cases: Vec<(String, u16, &str)> = vec![
        (r#"{"image": "x", "imgae": "y"}"#.into(), 400, "imgae"),
        (r#"{"image": "x", "version": 2}"#.into(), 400, "version"),
        (r#"{"image": "x", "ttl": 0}"#.into(), 400, "ttl"),
        (r#"{"image": "x", "ttl": 3601}"#.into(), 400, "ttl"),
        (r#"{"image": "x", "pwd": "relative"}"#.into(), 400, "pwd"),
        (r#"{"image": "x", "env": {"A=B": "1"}}"#.into(), 400, "env.A=B"),
        (r#"{"image": "x", "cmd": [["ok"], 5]}"#.into(), 400, "cmd[1]"),
        (r#"{"image": "x", "resources": [{"data": "x", "dest": "../etc/passwd"}]}"#.into(), 400, "resources[0].dest"),
        (r#"{"image": "x", "resources": [{"data": "x", "dest": "/a/../../b"}]}"#.into(), 400, "resources[0].dest"),
        (r#"{"image": "x", "resources": [{"data": "%%%", "dest": "/b", "content_type": "application/octet-stream"}]}"#.into(), 400, "resources[0].data"),
        (format!(r#"{{"image": "x", "resources": [{{"data": "{big}", "dest": "/b"}}]}}"#), 413, "resources[0].data"),
        (r#"{"image": "x", "task_name": "no/slash"}"#.into(), 400, "task_name"),
        (r#"{"image": "x", "limits": {"memory_mb": 0}}"#.into(), 400, "limits.memory_mb"),
        (r#"{"daemon": true}"#.into(), 400, "image"),
        (r#"[{"image": "x"}, {"image": "x", "cmd": "ok", "extra": 1}]"#.into(), 400, "[1].extra"),
        (r#"{"image": "x", "resources": [{"data": "bad tar", "dest": "/srv", "content_type": "application/x-tar"}]}"#.into(), 400, "resources[0].data"),
    ];
    for (body, status, field) in &cases {
        let v = lessl.post(body).expect(*status).json();
        assert_eq!(v["error"]["field"], *field, "body {body}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        assert!(v["error"]["code"].is_string());
    }
    // Whole-body problems have no field.
    lessl.post("not json").expect(400);
    lessl.post("[]").expect(400);
    lessl
        .request_with(
            "POST",
            "/tasks",
            Some("{}"),
            &[("Content-Type", "text/plain")],
        )
        .expect(415);
    lessl
        .request("POST", "/tasks?wiat=false", Some(r#"{"image":"x"}"#))
        .expect(400);
    lessl.request("PATCH", "/tasks", None).expect(405);
    lessl.get("/nope").expect(404);
    let v = lessl
        .post(&json!({"image": "lessl-test/does-not-exist"}).to_string())
        .expect(422)
        .json();
    assert_eq!(v["error"]["field"], "image");
    assert!(
        lessl.containers().is_empty(),
        "a bad request left a container"
    );
    lessl.finish();
}

#[test]
fn tar_and_base64_resources_land_in_place() {
    let lessl = Lessl::start(&[]);
    let dir = std::env::temp_dir().join(unique("tarsrc"));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/a.txt"), "alpha").unwrap();
    std::fs::write(dir.join("b.txt"), "beta").unwrap();
    let out = std::process::Command::new("tar")
        .args(["-c", "-C", dir.to_str().unwrap(), "."])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    use base64::Engine as _;
    let tar_b64 = base64::engine::general_purpose::STANDARD.encode(&out.stdout);
    let bin_b64 = base64::engine::general_purpose::STANDARD.encode([0u8, 1, 2, 255]);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "resources": [
                {"content_type": "application/x-tar", "data": tar_b64, "dest": "/srv/app"},
                {"content_type": "application/octet-stream", "data": bin_b64, "dest": "/srv/bin.dat"}],
              "cmd": ["cat /srv/app/sub/a.txt /srv/app/b.txt; echo; od -An -tu1 /srv/bin.dat | tr -s ' '; stat -c %a /srv/bin.dat"]})
            .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(results(&v)[0]["stdout"], "alphabeta\n 0 1 2 255\n644\n");
    lessl.finish();
}

#[test]
fn health_reports_docker() {
    let lessl = Lessl::start(&[]);
    let v = lessl.get("/health").expect(200).json();
    assert_eq!(v["status"], "ok");
    assert!(v["docker_api"].as_str().unwrap().starts_with("1."));
    lessl.finish();
}

#[test]
fn metrics_count_runs_commands_and_docker_calls() {
    let lessl = Lessl::start(&[]);
    lessl
        .post(&json!({"image": BUSYBOX, "cmd": ["true", "false"]}).to_string())
        .expect(201);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true}).to_string())
        .expect(201)
        .json();
    // The finished task's container goes in the background; wait until it is no longer live.
    let live_is_one = || {
        lessl
            .get("/metrics")
            .text()
            .lines()
            .any(|l| l == "lessl_live_tasks 1")
    };
    assert!(wait_until(Duration::from_secs(10), live_is_one));
    let r = lessl.get("/metrics").expect(200);
    assert!(r.header("Content-Type").unwrap().starts_with("text/plain"));
    let text = r.text();
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(line_start)
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
    };
    assert_eq!(value("lessl_runs_total{outcome=\"command_failed\"}"), 1.0);
    assert_eq!(value("lessl_runs_total{outcome=\"succeeded\"}"), 1.0);
    assert_eq!(value("lessl_command_duration_seconds_count"), 2.0);
    assert!(
        value("lessl_docker_call_duration_seconds_count{step=\"docker.container.create\"}") >= 2.0
    );
    assert_eq!(value("lessl_live_tasks"), 1.0);
    assert_eq!(value("lessl_tasks_started_total{start=\"cold\"}"), 2.0);
    assert!(value("lessl_http_responses_total{class=\"2xx\"}") >= 2.0);
    lessl.delete(v["id"].as_str().unwrap()).expect(204);
    lessl.finish();
}

#[test]
fn logs_are_json_with_the_task_in_each_line_and_follow_the_level() {
    let lessl = Lessl::start(&["--log-format", "json"]);
    let name = unique("logged");
    let v = lessl
        .post(&json!({"image": BUSYBOX, "task_name": name, "daemon": true}).to_string())
        .expect(201)
        .json();
    let id = v["id"].as_str().unwrap().to_string();
    lessl.delete(&id).expect(204);
    // Lessl's stderr is read by another thread: give the last line a moment to arrive.
    assert!(wait_until(Duration::from_secs(5), || lessl
        .log()
        .contains("\"deleted\"")));
    let log = lessl.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for event in ["started from", "deleted"] {
        let line = lines
            .iter()
            .find(|l| l["msg"].as_str().unwrap().starts_with(event))
            .unwrap_or_else(|| panic!("no `{event}` line in\n{log}"));
        assert_eq!(line["task"], id.as_str());
        assert_eq!(line["name"], name.as_str());
        assert_eq!(line["level"], "info");
    }
    lessl.finish();

    let quiet = Lessl::start(&["--log-level", "warn"]);
    quiet
        .post(&json!({"image": BUSYBOX, "cmd": ["true"]}).to_string())
        .expect(201);
    assert!(!quiet.log().contains("started from"), "{}", quiet.log());
    quiet.finish();
}
