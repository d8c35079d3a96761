//! The task lifecycle on paused time against the in-memory engine ([`engine::fake`]): runs,
//! TTLs, DELETE racing a run, adoption after a restart, daemon slots and removals behind
//! Lessl's back. Fast and deterministic; `tests/` is the proof against the real engine.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::engine::fake::FakeEngine;
use super::runs::Events;
use super::*;
use crate::spec::{Bounds, Limits};

const IMAGE: &str = "img";

fn settings(max_daemons: usize) -> Settings {
    let limits = Limits {
        memory_mb: 64,
        cpus: 1.0,
        pids: 64,
        timeout_s: 3600.0,
        output_bytes: 1 << 20,
        disk_mb: 64,
    };
    Settings {
        instance: "unit".into(),
        agent: "/bin/true".into(),
        agent_source: agent_volume::AgentSource::Bind,
        bounds: Bounds {
            ttl_default: 600,
            ttl_max: 86_400,
            limits_default: limits,
            limits_max: limits,
            resource_max_bytes: 1 << 20,
            max_commands: 16,
            binds: Vec::new(),
        },
        allow_images: vec!["*".into()],
        allow_pull: Vec::new(),
        pull_timeout: Duration::from_secs(1),
        default_user: None,
        allow_users: Vec::new(),
        max_running: 8,
        max_queue: 8,
        queue_timeout: Duration::from_secs(1),
        max_daemons,
        fetch: fetch::Policy::default(),
        warm: Vec::new(),
        exec_only: false,
        lanes: false,
        runtime: None,
        allow_volumes: Vec::new(),
        volume_idle: Duration::from_secs(3600),
        state_dir: None,
        state_max_bytes: 0,
        max_collect_bytes: 1 << 20,
        callback_token: None,
    }
}

fn start(engine: &Arc<FakeEngine>, max_daemons: usize) -> Tasks {
    let tasks = Tasks::new(engine.clone(), settings(max_daemons));
    tasks.spawn_background();
    tasks
}

fn spec(body: serde_json::Value) -> spec::Request {
    spec::parse(body.to_string().as_bytes(), &settings(8).bounds).expect("a valid spec")
}

async fn post(tasks: &Tasks, body: serde_json::Value) -> TaskView {
    tasks
        .create(spec(body), true)
        .await
        .expect("created")
        .remove(0)
}

/// Lets every task that can run, run (the clock stays where it is).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn view_of(answer: Answer) -> TaskView {
    match answer {
        Answer::View(v) => *v,
        other => panic!("expected a view from memory, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_task_runs_its_commands_then_its_container_goes_and_its_record_at_the_ttl() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let tasks = start(&engine, 8);
    let v = post(
        &tasks,
        json!({"image": IMAGE, "ttl": 60, "cmd": ["echo hi", "exit 3", "echo never"]}),
    )
    .await;
    assert_eq!(v.state, TaskState::Finished);
    assert_eq!(
        v.results.len(),
        2,
        "the run stops at the first failing command"
    );
    assert_eq!(v.results[0].stdout.to_string_lossy().unwrap(), "hi\n");
    assert_eq!(v.results[1].exit_code, Some(3));
    assert_eq!(v.failed_command, Some(1));
    settle().await;
    assert!(
        engine.containers().is_empty(),
        "removed at the end of its run"
    );
    // Its results stay readable until the TTL, then the task is gone.
    let got = view_of(tasks.get(&v.id).await.unwrap());
    assert_eq!(got.results[0].stdout.to_string_lossy().unwrap(), "hi\n");
    tokio::time::sleep(Duration::from_secs(61)).await;
    settle().await;
    assert!(matches!(
        tasks.get(&v.id).await,
        Err(TaskError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_daemon_lives_until_its_ttl_to_the_second() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let tasks = start(&engine, 8);
    let v = post(&tasks, json!({"image": IMAGE, "ttl": 3600, "daemon": true})).await;
    assert_eq!(v.state, TaskState::Idle);
    tokio::time::sleep(Duration::from_secs(3599)).await;
    settle().await;
    assert_eq!(engine.containers(), vec![v.id.clone()]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert!(engine.containers().is_empty(), "removed at its TTL");
    assert!(matches!(
        tasks.get(&v.id).await,
        Err(TaskError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn the_ttl_cuts_a_run_short_and_says_so() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let tasks = start(&engine, 8);
    let v = post(
        &tasks,
        json!({"image": IMAGE, "ttl": 30, "cmd": ["sleep 100; echo late"]}),
    )
    .await;
    assert_eq!(v.state, TaskState::Failed, "{v:?}");
    let error = v.error.expect("the run reports why it ended");
    assert_eq!(error.code, "task.expired");
    assert_eq!(v.results[0].exit_code, None, "the command never finished");
    assert!(engine.containers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn delete_racing_a_run_ends_it_as_deleted() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let tasks = start(&engine, 8);
    let d = post(
        &tasks,
        json!({"image": IMAGE, "daemon": true, "task_name": "box"}),
    )
    .await;
    let put = spec(json!({"cmd": ["sleep 50"]})).tasks.remove(0);
    let running = {
        let tasks = tasks.clone();
        tokio::spawn(async move { tasks.put("box", put, true).await })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(
        view_of(tasks.get("box").await.unwrap()).state,
        TaskState::Running
    );
    tasks.delete("box").await.expect("deleted");
    let (_, v) = running.await.unwrap().expect("the PUT still answers");
    assert_eq!(v.error.expect("cut short").code, "task.deleted");
    assert!(engine.containers().is_empty());
    assert!(matches!(
        tasks.get(&d.id).await,
        Err(TaskError::NotFound(_))
    ));
    assert!(matches!(
        tasks.delete("box").await,
        Err(TaskError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_restart_adopts_live_daemons_arms_their_ttl_and_removes_the_rest() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let boot = now_ms();
    let labels = |daemon: &'static str, expires: u64| -> Vec<(String, String)> {
        vec![
            (LABEL_MANAGED.into(), "true".into()),
            (LABEL_INSTANCE.into(), "unit".into()),
            (LABEL_DAEMON.into(), daemon.into()),
            (LABEL_CREATED.into(), (boot - 60_000).to_string()),
            (LABEL_EXPIRES.into(), expires.to_string()),
            (LABEL_CHANNEL.into(), "attach".into()),
        ]
    };
    let add = |l: Vec<(String, String)>| {
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        engine.add_running(&l, IMAGE)
    };
    let daemon = add(labels("true", boot + 120_000));
    let orphan = add(labels("false", boot + 120_000));
    let expired = add(labels("true", boot - 1));
    let other_instance =
        engine.add_running(&[(LABEL_MANAGED, "true"), (LABEL_INSTANCE, "other")], IMAGE);

    let tasks = start(&engine, 8);
    tokio::time::sleep(Duration::from_millis(10)).await;
    settle().await;
    let mut left = engine.containers();
    left.sort();
    let mut want = vec![daemon.clone(), other_instance.clone()];
    want.sort();
    assert_eq!(
        left, want,
        "the orphan and the expired task go; others' stay"
    );
    assert!(
        engine.calls(&format!("remove {orphan}")) == 1
            && engine.calls(&format!("remove {expired}")) == 1
    );
    let v = view_of(tasks.get(&daemon).await.unwrap());
    assert_eq!(v.state, TaskState::Idle);
    // Its TTL, read from its label, removes it.
    tokio::time::sleep(Duration::from_secs(121)).await;
    settle().await;
    assert_eq!(engine.containers(), [other_instance]);
}

#[tokio::test(start_paused = true)]
async fn daemon_slots_are_counted_from_the_records() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let tasks = start(&engine, 2);
    let a = post(&tasks, json!({"image": IMAGE, "daemon": true})).await;
    post(&tasks, json!({"image": IMAGE, "daemon": true})).await;
    let third = tasks
        .create(spec(json!({"image": IMAGE, "daemon": true})), true)
        .await;
    assert!(matches!(third, Err(TaskError::TooManyDaemons(2))));
    // Tasks that are not daemons take no daemon slot.
    post(&tasks, json!({"image": IMAGE, "cmd": ["echo x"]})).await;
    tasks.delete(&a.id).await.unwrap();
    post(&tasks, json!({"image": IMAGE, "daemon": true})).await;
    // A daemon removed behind Lessl's back gives its slot back too.
    let ids = engine.containers();
    engine.remove_behind(&ids[0]);
    settle().await;
    post(&tasks, json!({"image": IMAGE, "daemon": true})).await;
    assert_eq!(engine.containers().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_put_into_a_finished_task_names_its_state_and_one_removed_behind_lessl_is_gone() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let tasks = start(&engine, 8);
    let v = post(&tasks, json!({"image": IMAGE, "cmd": ["echo done"]})).await;
    let put = || spec(json!({"cmd": ["echo again"]})).tasks.remove(0);
    match tasks.put(&v.id, put(), true).await {
        Err(TaskError::NotRunning { state, .. }) => assert_eq!(state, TaskState::Finished),
        other => panic!("expected a 409, got {other:?}"),
    }
    let d = post(
        &tasks,
        json!({"image": IMAGE, "daemon": true, "task_name": "d"}),
    )
    .await;
    let (_, ran) = tasks.put("d", put(), true).await.unwrap();
    assert_eq!(ran.results[0].stdout.to_string_lossy().unwrap(), "again\n");
    engine.remove_behind(&d.id);
    settle().await;
    assert!(matches!(tasks.get("d").await, Err(TaskError::NotFound(_))));
    let listed = tasks.list(false).await.unwrap();
    assert!(
        listed.iter().all(|t| t["id"] != d.id.as_str()),
        "{listed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_create_before_the_engine_is_known_learns_from_a_refused_quota() {
    let engine = FakeEngine::without_quota(&[IMAGE]);
    // No background work yet: the engine's storage driver is not known.
    let tasks = Tasks::new(engine.clone(), settings(8));
    let v = post(&tasks, json!({"image": IMAGE, "cmd": ["echo ran"]})).await;
    assert_eq!(v.results[0].stdout.to_string_lossy().unwrap(), "ran\n");
    assert_eq!(
        engine.calls("create"),
        2,
        "asked with the quota, then without"
    );
    assert!(matches!(tasks.disk_limit().await, DiskLimit::Unbounded(_)));
    post(&tasks, json!({"image": IMAGE, "cmd": ["echo again"]})).await;
    assert_eq!(
        engine.calls("create"),
        3,
        "known now: asked without the quota at once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pulled_image_is_created_without_a_quota_the_engine_refuses() {
    let engine = FakeEngine::without_quota(&[]);
    engine.offer_pull("remote/img");
    let mut s = settings(8);
    s.allow_pull = vec!["remote/*".into()];
    let tasks = Tasks::new(engine.clone(), s);
    let v = post(
        &tasks,
        json!({"image": "remote/img", "cmd": ["echo pulled"]}),
    )
    .await;
    assert_eq!(v.results[0].stdout.to_string_lossy().unwrap(), "pulled\n");
}

#[tokio::test(start_paused = true)]
async fn collect_reads_before_the_container_goes_and_get_shows_the_files() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let mut tar = crate::tar::TarBuilder::new(0);
    tar.file("report.txt", 0o640, b"done\n").unwrap();
    let stat = crate::docker::PathStat {
        size: 5,
        mode: 0o640,
        link_target: String::new(),
    };
    engine.offer_archive("/out/report.txt", stat, tar.finish());
    let tasks = start(&engine, 8);
    let v = post(
        &tasks,
        json!({"image": IMAGE, "cmd": ["exit 1"], "collect": ["/out/report.txt", "/nope"]}),
    )
    .await;
    let files = v.files.expect("files");
    assert_eq!(files[0].path, "/out/report.txt");
    assert_eq!(files[0].data_base64.as_deref(), Some("ZG9uZQo="));
    assert_eq!(files[0].mode.as_deref(), Some("0640"));
    assert_eq!(files[1].path, "/nope");
    assert_eq!(files[1].error.as_ref().unwrap().code, collect::NOT_FOUND);
    // Read out before the removal, even when a command failed.
    settle().await;
    let log = engine.call_log();
    let read = log
        .iter()
        .position(|c| c.starts_with("get_archive"))
        .unwrap();
    let removed = log.iter().position(|c| c.starts_with("remove")).unwrap();
    assert!(read < removed, "{log:?}");
    assert!(engine.containers().is_empty());
    let got = view_of(tasks.get(&v.id).await.unwrap());
    assert_eq!(got.files.unwrap(), files);
}

#[tokio::test(start_paused = true)]
async fn a_task_that_collects_nothing_reads_nothing_and_has_no_files() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let tasks = start(&engine, 8);
    let v = post(&tasks, json!({"image": IMAGE, "cmd": ["true"]})).await;
    assert!(v.files.is_none());
    assert_eq!(engine.calls("get_archive"), 0);
    assert!(!serde_json::to_string(&v).unwrap().contains("files"));
}

#[tokio::test(start_paused = true)]
async fn collect_from_a_container_removed_under_the_run_says_so_per_path() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let tasks = start(&engine, 8);
    let request = spec(json!({"image": IMAGE, "cmd": ["sleep 100"], "collect": ["/a", "/b"]}));
    let view = tasks.create(request, false).await.unwrap().remove(0);
    settle().await;
    engine.remove_behind(&view.id);
    tokio::time::sleep(Duration::from_secs(200)).await;
    settle().await;
    let got = view_of(tasks.get(&view.id).await.unwrap());
    let files = got.files.expect("files");
    assert_eq!(files.len(), 2);
    for f in files.iter() {
        assert_eq!(
            f.error.as_ref().unwrap().code,
            collect::CONTAINER_GONE,
            "{f:?}"
        );
    }
    assert_eq!(
        engine.calls("get_archive"),
        0,
        "a container known gone is not asked"
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_deleted_during_its_run_collects_nothing() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let tasks = start(&engine, 8);
    let request = spec(json!({"image": IMAGE, "cmd": ["sleep 100"], "collect": ["/a"]}));
    let view = tasks.create(request, false).await.unwrap().remove(0);
    settle().await;
    tasks.delete(&view.id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(200)).await;
    settle().await;
    assert_eq!(engine.calls("get_archive"), 0);
    assert!(engine.containers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_daemon_s_callback_url_is_kept_in_its_labels_across_a_restart() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let tasks = start(&engine, 8);
    // Loopback without --src-allow: each call back is refused before any connection.
    let url = "http://127.0.0.1:9/hook";
    let v = post(
        &tasks,
        json!({"image": IMAGE, "daemon": true, "callback_url": url}),
    )
    .await;
    let callback_of = |t: &Tasks| {
        t.record(&v.id)
            .and_then(|r| r.lock().unwrap().callback_url.clone())
    };
    assert_eq!(callback_of(&tasks).as_deref(), Some(url));
    // A second process on the same engine adopts the daemon from its labels.
    let restarted = start(&engine, 8);
    tokio::time::sleep(Duration::from_millis(10)).await;
    settle().await;
    view_of(restarted.get(&v.id).await.unwrap());
    assert_eq!(callback_of(&restarted).as_deref(), Some(url));
    // A task that names none has none.
    let plain = post(&tasks, json!({"image": IMAGE, "daemon": true})).await;
    assert_eq!(
        tasks
            .record(&plain.id)
            .and_then(|r| r.lock().unwrap().callback_url.clone()),
        None
    );
}

/// Reads a journal to its end: its events, parsed.
async fn events_of(journal: &Arc<journal::Journal>) -> Vec<serde_json::Value> {
    let mut r = journal.reader();
    let mut all = Vec::new();
    while let Some(b) = r.next().await {
        all.extend_from_slice(&b);
    }
    all.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_runs_events_are_followed_live_then_rebuilt_from_its_end() {
    let engine = FakeEngine::with_images(&[IMAGE]);
    let tasks = start(&engine, 8);
    let mut journals = tasks
        .create_streamed(spec(
            json!({"image": IMAGE, "cmd": ["echo hi; sleep 5", "exit 3", "echo never"]}),
        ))
        .await
        .expect("created");
    let journal = journals.remove(0);
    let id = journal.id().to_string();
    // While it runs, a follower finds the same journal.
    settle().await;
    match tasks.events(&id).await {
        Ok(Events::Live(j)) => assert!(Arc::ptr_eq(&j, &journal)),
        _ => panic!("a running task is followed live"),
    }
    let live = events_of(&journal).await;
    let kinds: Vec<&str> = live.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["task", "start", "stdout", "exit", "start", "exit", "end"]
    );
    assert_eq!(live[2]["data"], "hi\n");
    assert_eq!(live[5]["result"]["exit_code"], 3);
    // Ended: the record lets the journal go, and the events are rebuilt from the view.
    settle().await;
    let Ok(Events::Ended(lines)) = tasks.events(&id).await else {
        panic!("an ended run is rebuilt");
    };
    let rebuilt: Vec<serde_json::Value> = lines
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(rebuilt.len(), live.len());
    assert_eq!(rebuilt[1..rebuilt.len() - 1], live[1..live.len() - 1]);
    assert_eq!(rebuilt.last(), live.last());
    assert!(matches!(
        tasks.events("nosuch").await,
        Err(TaskError::NotFound(_))
    ));
}
