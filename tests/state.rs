//! The state directory against real containers: results read back after `kill -9`, garbage
//! files skipped, TTL and start sweeps on disk, memory that does not grow with kept output,
//! a full or unwritable directory. Each test has its own `--state-dir`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

/// `--state-dir` and its value for `dir`.
fn state_args(dir: &Path) -> [String; 2] {
    ["--state-dir".to_string(), dir.display().to_string()]
}

fn start(instance: &str, dir: &Path, extra: &[&str]) -> Lessl {
    let [flag, value] = state_args(dir);
    let mut args = vec![flag.as_str(), value.as_str()];
    args.extend_from_slice(extra);
    Lessl::start_instance(instance, &args)
}

/// The files in the instance's subdirectory, sorted.
fn files(dir: &Path, instance: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(instance))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn result_file(dir: &Path, instance: &str, id: &str) -> PathBuf {
    dir.join(instance).join(format!("{id}.json"))
}

fn listed_ids(lessl: &Lessl, path: &str) -> Vec<String> {
    lessl
        .get(path)
        .expect(200)
        .json()
        .as_array()
        .expect("list")
        .iter()
        .map(id_of)
        .collect()
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn results_read_back_identically_after_kill9_and_a_restart() {
    let dir = temp_state_dir("readback");
    let instance = unique("st");
    let mut lessl = start(&instance, &dir, &[]);
    let name = unique("job");
    let body = json!({"image": BUSYBOX, "task_name": name, "ttl": 120,
        "cmd": ["printf 'héllo \"x\"\\n'; echo err >&2", "exit 3"]});
    let first = lessl.post(&body.to_string()).expect(201).json();
    let first_id = id_of(&first);
    assert_eq!(first["results"][0]["stdout"], "héllo \"x\"\n");
    assert_eq!(first["failed_command"], 1);
    // Its container goes at the end of its run; then the name is free for a newer task.
    assert!(wait_until(Duration::from_secs(10), || !container_exists(
        &first_id
    )));
    let second = lessl.post(&body.to_string()).expect(201).json();
    let second_id = id_of(&second);
    assert!(wait_until(Duration::from_secs(10), || !container_exists(
        &second_id
    )));
    // A run started without waiting, read later by its id.
    let detached = lessl
        .request(
            "POST",
            "/tasks?wait=false",
            Some(&json!({"image": BUSYBOX, "cmd": ["echo later"]}).to_string()),
        )
        .expect(202)
        .json();
    let detached_id = id_of(&detached);
    assert!(wait_until(Duration::from_secs(20), || {
        lessl.get(&format!("/tasks/{detached_id}")).json()["state"] == "finished"
    }));

    // Its container goes in the background after the run: then it is no longer live.
    assert!(wait_until(Duration::from_secs(10), || !container_exists(
        &detached_id
    )));
    assert!(wait_until(Duration::from_secs(5), || listed_ids(
        &lessl, "/tasks"
    )
    .is_empty()));
    let before: Vec<Vec<u8>> = [&first_id, &second_id, &detached_id]
        .iter()
        .map(|id| lessl.get(&format!("/tasks/{id}")).expect(200).body)
        .collect();
    assert_eq!(
        lessl.get(&format!("/tasks/{name}")).json()["id"],
        second_id.as_str()
    );
    let all = listed_ids(&lessl, "/tasks?all=true");
    assert_eq!(
        all,
        vec![first_id.clone(), second_id.clone(), detached_id.clone()]
    );

    lessl.kill9();
    let lessl = start(&instance, &dir, &[]);
    for (id, body) in [&first_id, &second_id, &detached_id].iter().zip(&before) {
        let after = lessl.get(&format!("/tasks/{id}")).expect(200).body;
        assert_eq!(
            String::from_utf8_lossy(&after),
            String::from_utf8_lossy(body),
            "GET {id} after the restart"
        );
    }
    let short = &first_id[..12];
    assert_eq!(
        lessl.get(&format!("/tasks/{short}")).json()["id"],
        first_id.as_str()
    );
    // A name shared by finished tasks resolves to the newest, always.
    for _ in 0..5 {
        assert_eq!(
            lessl.get(&format!("/tasks/{name}")).json()["id"],
            second_id.as_str()
        );
    }
    assert!(listed_ids(&lessl, "/tasks").is_empty());
    let listed = lessl.get("/tasks?all=true").expect(200).json();
    let ids: Vec<String> = listed.as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(
        ids,
        vec![first_id.clone(), second_id.clone(), detached_id.clone()]
    );
    assert_eq!(listed[0]["state"], "finished");
    assert_eq!(listed[0]["failed_command"], 1);
    lessl.request("GET", "/tasks?all=maybe", None).expect(400);

    // DELETE of a finished task removes its kept results.
    lessl.delete(&first_id).expect(204);
    lessl.get(&format!("/tasks/{first_id}")).expect(404);
    assert!(!result_file(&dir, &instance, &first_id).exists());
    lessl.finish();
}

#[test]
fn garbage_in_every_file_is_skipped_with_a_log_line_never_a_500() {
    let dir = temp_state_dir("garbage");
    let instance = unique("st");
    let mut lessl = start(&instance, &dir, &[]);
    let mut ids = Vec::new();
    for word in ["one", "two", "three"] {
        let v = lessl
            .post(&json!({"image": BUSYBOX, "cmd": [format!("echo {word}")]}).to_string())
            .expect(201)
            .json();
        ids.push(id_of(&v));
    }
    lessl.kill9();
    let kept = files(&dir, &instance);
    assert_eq!(kept.len(), 3, "{kept:?}");
    // Garbage, valid JSON that is not ours, and a file cut while written.
    std::fs::write(&kept[0], b"\x00\xffgarbage\n{{{").unwrap();
    std::fs::write(&kept[1], b"{\"id\": 12, \"results\": []}\n").unwrap();
    let whole = std::fs::read(&kept[2]).unwrap();
    std::fs::write(&kept[2], &whole[..whole.len() / 2]).unwrap();
    std::fs::write(
        dir.join(&instance).join(format!("{}.tmp", ids[0])),
        b"{\"half",
    )
    .unwrap();
    std::fs::write(dir.join(&instance).join("README"), b"someone else's").unwrap();

    let lessl = start(&instance, &dir, &[]);
    lessl.get("/health").expect(200);
    for id in &ids {
        let status = lessl.get(&format!("/tasks/{id}")).status;
        assert!(status == 200 || status == 404, "GET {id}: {status}");
    }
    assert!(listed_ids(&lessl, "/tasks?all=true").is_empty());
    let log = lessl.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("state: skipping") || l.contains("state: removing"))
        .collect();
    assert_eq!(bad.len(), 5, "one line per bad file:\n{log}");
    // Still works: a new run is kept beside the damaged files.
    let v = lessl
        .post(&json!({"image": BUSYBOX, "cmd": ["echo fresh"]}).to_string())
        .expect(201)
        .json();
    assert!(result_file(&dir, &instance, &id_of(&v)).exists());
    lessl.finish();
}

#[test]
fn ttl_removes_the_file_and_a_start_sweeps_expired_ones() {
    let dir = temp_state_dir("ttl");
    let instance = unique("st");
    let mut lessl = start(&instance, &dir, &[]);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "ttl": 2, "cmd": ["echo short"]}).to_string())
        .expect(201)
        .json();
    let id = id_of(&v);
    let file = result_file(&dir, &instance, &id);
    assert!(file.exists(), "kept at the end of the run");
    assert!(
        wait_until(Duration::from_secs(10), || !file.exists()),
        "file still there 10 s after a 2 s TTL; log:\n{}",
        lessl.log()
    );
    lessl.get(&format!("/tasks/{id}")).expect(404);

    // Expired while Lessl was down: swept at the next start.
    let v = lessl
        .post(&json!({"image": BUSYBOX, "ttl": 2, "cmd": ["echo gone"]}).to_string())
        .expect(201)
        .json();
    let id = id_of(&v);
    let file = result_file(&dir, &instance, &id);
    assert!(file.exists());
    lessl.kill9();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(file.exists(), "nobody removed it while Lessl was down");
    let lessl = start(&instance, &dir, &[]);
    assert!(!file.exists(), "swept at start");
    assert!(
        lessl.log().contains("1 expired and removed"),
        "{}",
        lessl.log()
    );
    lessl.get(&format!("/tasks/{id}")).expect(404);
    lessl.finish();
}

#[test]
fn memory_does_not_grow_with_kept_output() {
    let dir = temp_state_dir("rss");
    let instance = unique("st");
    let lessl = start(&instance, &dir, &[]);
    let sixteen = 16 << 20;
    let body = json!({"image": BUSYBOX, "limits": {"output_bytes": sixteen},
        "cmd": vec![format!("yes | head -c {sixteen}"); 4]})
    .to_string();
    // One run first, so buffers every run needs exist before the baseline.
    lessl.post(&body).expect(201);
    let before = rss_kib(lessl.pid());
    let mut ids = Vec::new();
    for _ in 0..6 {
        let v = lessl.post(&body).expect(201).json();
        assert_eq!(v["results"][3]["stdout"].as_str().unwrap().len(), sixteen);
        ids.push(id_of(&v));
    }
    let after = rss_kib(lessl.pid());
    let growth_mib = after.saturating_sub(before) / 1024;
    eprintln!("RSS before {before} KiB, after keeping 6 x 64 MiB: {after} KiB (+{growth_mib} MiB)");
    assert!(growth_mib < 96, "RSS grew by {growth_mib} MiB");
    // Every result still readable, whole.
    let v = lessl.get(&format!("/tasks/{}", ids[0])).expect(200).json();
    assert_eq!(v["results"][2]["stdout"].as_str().unwrap().len(), sixteen);
    lessl.finish();
}

#[test]
fn a_full_state_directory_still_answers_and_says_so() {
    let dir = temp_state_dir("full");
    let instance = unique("st");
    let lessl = start(&instance, &dir, &["--state-max-mb", "1"]);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "limits": {"output_bytes": 2_000_000}, "cmd": ["yes | head -c 2000000"]}).to_string())
        .expect(201)
        .json();
    let id = id_of(&v);
    assert_eq!(v["persist_error"]["code"], "state.full");
    assert_eq!(v["results"][0]["stdout"].as_str().unwrap().len(), 2_000_000);
    // Kept in memory instead, and GET says the same.
    let got = lessl.get(&format!("/tasks/{id}")).expect(200).json();
    assert_eq!(got["persist_error"]["code"], "state.full");
    assert_eq!(
        got["results"][0]["stdout"].as_str().unwrap().len(),
        2_000_000
    );
    assert!(!result_file(&dir, &instance, &id).exists());
    assert!(files(&dir, &instance).is_empty(), "no temporary file left");
    let metrics = lessl.get("/metrics").expect(200).text();
    assert!(
        metrics.contains("lessl_results_not_kept_total 1"),
        "{metrics}"
    );
    assert!(lessl.log().contains("results not kept on disk"));
    // A small one still fits.
    let v = lessl
        .post(&json!({"image": BUSYBOX, "cmd": ["echo small"]}).to_string())
        .expect(201)
        .json();
    assert!(v.get("persist_error").is_none(), "{v}");
    assert!(result_file(&dir, &instance, &id_of(&v)).exists());
    lessl.finish();
}

#[test]
fn an_unwritable_state_dir_is_reported_once_and_results_still_answer() {
    let dir = temp_state_dir("unwritable");
    // A regular file where the directory should be: not even root can create in it.
    let blocked = dir.join("blocked");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let lessl = start(&unique("st"), &blocked, &[]);
    lessl.get("/health").expect(200);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "cmd": ["echo kept in memory"]}).to_string())
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["stdout"], "kept in memory\n");
    assert!(
        v.get("persist_error").is_none(),
        "memory-only is the operator's choice: {v}"
    );
    let got = lessl
        .get(&format!("/tasks/{}", id_of(&v)))
        .expect(200)
        .json();
    assert_eq!(got["results"][0]["stdout"], "kept in memory\n");
    let log = lessl.log();
    assert_eq!(log.matches("is not usable").count(), 1, "{log}");
    lessl.finish();
}
