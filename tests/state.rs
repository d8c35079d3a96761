//! The state directory against real containers: results read back after `kill -9`, garbage
//! files skipped, TTL and start sweeps on disk, memory that does not grow with kept output,
//! a full or unwritable directory, output spilled to disk while a command runs, answers of a
//! waited POST identical to a later GET. Each test has its own `--state-dir`.

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

/// The files in the instance's subdirectory, sorted; not `lanes`, the directory of the
/// agents' lanes (src/tasks/lane.rs), which holds no results.
fn files(dir: &Path, instance: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(instance))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| !p.ends_with("lanes"));
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

/// The spill files in the instance's subdirectory.
fn spill_files(dir: &Path, instance: &str) -> Vec<PathBuf> {
    files(dir, instance)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "spill"))
        .collect()
}

/// Samples a process's VmRSS every 10 ms on a thread until told to stop; returns the peak.
struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak.max(rss_kib(pid))
        });
        RssSampler { stop, thread }
    }

    fn peak_kib(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// What `yes "$LINE" | head -c n` prints, for the line the big-output tests use.
fn repeated(line: &[u8], n: usize) -> Vec<u8> {
    let mut line = line.to_vec();
    line.push(b'\n');
    line.iter().copied().cycle().take(n).collect()
}

/// A line with multi-byte characters, JSON's escapes and a byte that is not UTF-8 (`\377`):
/// cut anywhere by the chunks output travels in, each must still decode as if whole.
const LINE_SHELL: &str = r#"$(printf 'é€𝄞 "q" \\ a\377b\tc')"#;
const LINE: &[u8] = b"\xc3\xa9\xe2\x82\xac\xf0\x9d\x84\x9e \"q\" \\ a\xffb\tc";

#[test]
fn a_command_printing_64_mib_spills_to_disk_and_answers_every_byte() {
    let dir = temp_state_dir("spill");
    let instance = unique("st");
    let lessl = start(&instance, &dir, &[]);
    let cap = 16 << 20;
    // Exactly the cap (not cut), one byte past it (cut), and the same on stderr: 4 x 16 MiB.
    let cmd = format!(
        "yes \"{LINE_SHELL}\" | head -c {cap}; yes \"{LINE_SHELL}\" | head -c {} >&2",
        cap + 1
    );
    let body = json!({"image": BUSYBOX, "limits": {"output_bytes": cap},
        "cmd": [cmd.clone(), format!("yes \"{LINE_SHELL}\" | head -c {} ; yes \"{LINE_SHELL}\" | head -c {cap} >&2", cap + 1)]})
    .to_string();
    // A small run first, so buffers every run needs exist before the baseline.
    lessl
        .post(&json!({"image": BUSYBOX, "cmd": ["echo warm"]}).to_string())
        .expect(201);
    let before = rss_kib(lessl.pid());
    let sampler = RssSampler::start(lessl.pid());
    let answer = lessl.post(&body).expect(201);
    let peak = sampler.peak_kib();
    let after = rss_kib(lessl.pid());
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "RSS before {before} KiB, peak while printing 4 x 16 MiB {peak} KiB (+{growth_mib} MiB), after {after} KiB"
    );
    assert!(
        growth_mib < 48,
        "RSS grew by {growth_mib} MiB while the command ran"
    );

    let v = answer.json();
    let id = id_of(&v);
    let whole = String::from_utf8_lossy(&repeated(LINE, cap)).into_owned();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{}", v["failed_command"]);
    for (i, r) in results.iter().enumerate() {
        let (out, err) = (r["stdout"].as_str().unwrap(), r["stderr"].as_str().unwrap());
        // Compared whole (a hash would say less): lossy UTF-8 exactly as if never chunked.
        assert!(out == whole, "stdout of command {i}: {} bytes", out.len());
        assert!(err == whole, "stderr of command {i}: {} bytes", err.len());
        assert_eq!(r["exit_code"], 0);
        assert_eq!(
            r["truncated"], true,
            "one stream of each went one byte past the cap"
        );
    }
    // Exactly the cap is not a cut.
    let exact = lessl
        .post(
            &json!({"image": BUSYBOX, "limits": {"output_bytes": cap},
                "cmd": [format!("yes \"{LINE_SHELL}\" | head -c {cap}")]})
            .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(exact["results"][0]["truncated"], false);
    assert!(exact["results"][0]["stdout"].as_str().unwrap() == whole);

    // Answered from the result file: a later GET gives the very same bytes.
    let got = lessl.get(&format!("/tasks/{id}")).expect(200);
    assert!(got.body == answer.body, "POST and GET answers differ");
    // No spill file outlives its run; only the result files stay.
    assert!(
        wait_until(Duration::from_secs(5), || spill_files(&dir, &instance)
            .is_empty()),
        "{:?}",
        files(&dir, &instance)
    );
    assert_eq!(
        files(&dir, &instance).len(),
        3,
        "{:?}",
        files(&dir, &instance)
    );
    lessl.finish();
}

#[test]
fn spill_files_a_crash_leaves_are_swept_at_the_next_start() {
    let dir = temp_state_dir("spillcrash");
    let instance = unique("st");
    let mut lessl = start(&instance, &dir, &[]);
    let v = lessl
        .request(
            "POST",
            "/tasks?wait=false",
            Some(
                &json!({"image": BUSYBOX, "ttl": 60,
                    "cmd": ["yes | head -c 2000000; sleep 30"]})
                .to_string(),
            ),
        )
        .expect(202)
        .json();
    let id = id_of(&v);
    assert!(
        wait_until(Duration::from_secs(20), || !spill_files(&dir, &instance)
            .is_empty()),
        "no spill file while the command runs: {:?}",
        files(&dir, &instance)
    );
    lessl.kill9();
    let left = spill_files(&dir, &instance);
    assert!(!left.is_empty(), "the crash left its spill file");
    let lessl = start(&instance, &dir, &[]);
    for f in &left {
        assert!(!f.exists(), "{} swept at start", f.display());
    }
    assert!(
        lessl.log().contains("output a crash left spilled"),
        "{}",
        lessl.log()
    );
    lessl.get("/health").expect(200);
    let _ = lessl.delete(&id);
    lessl.finish();
}

#[test]
fn waited_answers_are_the_kept_files_byte_for_byte() {
    let dir = temp_state_dir("answers");
    let instance = unique("st");
    let lessl = start(&instance, &dir, &[]);
    let batch = json!([
        {"image": BUSYBOX, "cmd": ["printf 'one \\377\\n'"]},
        {"image": BUSYBOX, "cmd": ["echo two >&2; exit 4"]}
    ]);
    let answer = lessl.post(&batch.to_string()).expect(201);
    let views = answer.json();
    let ids: Vec<String> = views.as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(views[0]["results"][0]["stdout"], "one \u{fffd}\n");
    let mut joined = b"[".to_vec();
    joined.extend(lessl.get(&format!("/tasks/{}", ids[0])).expect(200).body);
    joined.push(b',');
    joined.extend(lessl.get(&format!("/tasks/{}", ids[1])).expect(200).body);
    joined.push(b']');
    assert_eq!(
        String::from_utf8_lossy(&answer.body),
        String::from_utf8_lossy(&joined)
    );
    // One formatting for every task answer: compact, as serde_json writes it (no newline
    // outside strings, where it is escaped).
    assert!(!answer.body.contains(&b'\n'));
    assert!(answer.body.starts_with(b"[{\"id\":"));
    // A PUT into a daemon answers its kept file too.
    let name = unique("d");
    let created = lessl
        .put(
            &name,
            &json!({"image": BUSYBOX, "daemon": true, "cmd": ["echo first"]}).to_string(),
        )
        .expect(201);
    let put = lessl
        .put(&name, &json!({"cmd": ["echo again"]}).to_string())
        .expect(200);
    let got = lessl.get(&format!("/tasks/{name}")).expect(200);
    assert_eq!(
        String::from_utf8_lossy(&put.body),
        String::from_utf8_lossy(&got.body)
    );
    assert_ne!(created.body, put.body);
    assert_eq!(put.json()["results"][0]["stdout"], "again\n");
    let _ = lessl.delete(&name);
    lessl.finish();
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
    let posted = lessl
        .post(&json!({"image": BUSYBOX, "cmd": ["echo kept in memory"]}).to_string())
        .expect(201);
    let v = posted.json();
    assert_eq!(v["results"][0]["stdout"], "kept in memory\n");
    assert!(
        v.get("persist_error").is_none(),
        "memory-only is the operator's choice: {v}"
    );
    let got = lessl.get(&format!("/tasks/{}", id_of(&v))).expect(200);
    assert_eq!(got.json()["results"][0]["stdout"], "kept in memory\n");
    // Built in memory both times, in the same compact form a kept file has.
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        String::from_utf8_lossy(&posted.body)
    );
    assert!(!got.body.contains(&b'\n'));
    let log = lessl.log();
    assert_eq!(log.matches("is not usable").count(), 1, "{log}");
    lessl.finish();
}
