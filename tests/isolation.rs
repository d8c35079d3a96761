//! A task reaches nothing but its own container: host directories through `--allow-bind`
//! (symlinks planted by tasks, swapped in a loop), other applications' volumes, and the
//! engine's disk. Every check of the host is made from the test, never from inside a task.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::private_dockerd::PrivateDockerd;
use support::*;

/// A fresh directory on the host, removed by the test that made it.
fn host_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn post(lessl: &Lessl, task: Value) -> support::Resp {
    lessl.post(&task.to_string())
}

#[test]
fn a_symlink_planted_by_one_task_is_never_followed_by_the_next_mount() {
    let shared = host_dir("shared");
    let secret_dir = host_dir("secret");
    std::fs::write(secret_dir.join("secret.txt"), "host-only secret\n").unwrap();
    let shared_s = shared.to_str().unwrap().to_string();
    let lessl = Lessl::start(&["--allow-bind", &shared_s]);

    // Task one plants links to the host's secret directory and to the root.
    let v = post(
        &lessl,
        json!({"image": BUSYBOX, "resources": [{"mnt": format!("{shared_s}:/x")}],
               "cmd": [format!("ln -s {} /x/secret && ln -s / /x/root", secret_dir.display())]}),
    )
    .expect(201)
    .json();
    assert_eq!(v["results"][0]["exit_code"], 0, "{v}");
    assert!(std::fs::symlink_metadata(shared.join("root"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Task two asks the engine to mount through those links: refused before any container.
    for through in ["secret", "root/etc", "root"] {
        let v = post(
            &lessl,
            json!({"image": BUSYBOX,
                   "resources": [{"mnt": format!("{shared_s}/{through}:/host:ro")}],
                   "cmd": ["cat /host/secret.txt /host/hostname"]}),
        )
        .expect(400)
        .json();
        assert_eq!(v["error"]["field"], "resources[0].mnt", "{v}");
    }
    // Mounting the allowed directory itself shows the links, which resolve inside the
    // container: the host's secret stays out of reach.
    let v = post(
        &lessl,
        json!({"image": BUSYBOX, "resources": [{"mnt": format!("{shared_s}:/x:ro")}],
               "cmd": ["cat /x/secret/secret.txt; cat /x/root/etc/hostname; true"]}),
    )
    .expect(201)
    .json();
    let out = format!("{}{}", v["results"][0]["stdout"], v["results"][0]["stderr"]);
    assert!(!out.contains("host-only secret"), "{out}");
    assert!(wait_until(Duration::from_secs(10), || lessl
        .containers()
        .is_empty()));
    lessl.finish();
    std::fs::remove_dir_all(shared).unwrap();
    std::fs::remove_dir_all(secret_dir).unwrap();
}

#[test]
fn a_read_only_tree_mounts_subdirectories_but_never_through_a_link() {
    let tree = host_dir("tree");
    let secret_dir = host_dir("secret");
    std::fs::write(secret_dir.join("secret.txt"), "host-only secret\n").unwrap();
    std::fs::create_dir_all(tree.join("data/sets")).unwrap();
    std::fs::write(tree.join("data/sets/a.txt"), "dataset\n").unwrap();
    // A link made on the host (not by a task): still refused, the engine would follow it.
    std::os::unix::fs::symlink(&secret_dir, tree.join("data/link")).unwrap();
    let tree_s = tree.to_str().unwrap().to_string();
    let lessl = Lessl::start(&["--allow-bind", &format!("{tree_s}:ro")]);

    let v = post(
        &lessl,
        json!({"image": BUSYBOX,
               "resources": [{"mnt": format!("{tree_s}/data/sets:/sets:ro")}],
               "cmd": ["cat /sets/a.txt", "echo x > /sets/b.txt"]}),
    )
    .expect(201)
    .json();
    assert_eq!(v["results"][0]["stdout"], "dataset\n");
    assert_ne!(
        v["results"][1]["exit_code"], 0,
        "a read-only tree was writable"
    );
    assert!(!tree.join("data/sets/b.txt").exists());

    for mnt in [
        format!("{tree_s}/data/link:/h:ro"),
        // Writable mounts of a read-only tree are refused.
        format!("{tree_s}/data/sets:/h"),
        format!("{tree_s}:/h:rw"),
    ] {
        let v = post(
            &lessl,
            json!({"image": BUSYBOX, "resources": [{"mnt": mnt}]}),
        )
        .expect(400)
        .json();
        assert_eq!(v["error"]["field"], "resources[0].mnt", "{v}");
    }
    assert!(wait_until(Duration::from_secs(10), || lessl
        .containers()
        .is_empty()));
    lessl.finish();
    std::fs::remove_dir_all(tree).unwrap();
    std::fs::remove_dir_all(secret_dir).unwrap();
}

#[test]
fn a_task_swapping_a_directory_for_a_link_in_a_loop_never_opens_the_host() {
    let shared = host_dir("race");
    let secret_dir = host_dir("secret");
    std::fs::write(secret_dir.join("secret.txt"), "host-only secret\n").unwrap();
    let shared_s = shared.to_str().unwrap().to_string();
    let lessl = Lessl::start(&["--allow-bind", &shared_s]);
    // The attacker: swaps /x/d between a directory and a link to the secret, as fast as it can.
    let swap = format!(
        "end=$(($(date +%s)+6)); while [ $(date +%s) -lt $end ]; do \
         mkdir -p /x/d; rmdir /x/d; ln -s {} /x/d; rm /x/d; done",
        secret_dir.display()
    );
    let attacker = post(
        &lessl,
        json!({"image": BUSYBOX, "daemon": true,
               "resources": [{"mnt": format!("{shared_s}:/x")}]}),
    )
    .expect(201)
    .json();
    let id = attacker["id"].as_str().unwrap().to_string();
    lessl
        .request(
            "PUT",
            &format!("/tasks/{id}?wait=false"),
            Some(&json!({"cmd": [swap]}).to_string()),
        )
        .expect(202);
    let started = std::time::Instant::now();
    let mut tries = 0;
    while started.elapsed() < Duration::from_secs(5) {
        tries += 1;
        // Through the swapped path: refused whatever it is at that instant.
        post(
            &lessl,
            json!({"image": BUSYBOX, "resources": [{"mnt": format!("{shared_s}/d:/h:ro")}],
                   "cmd": ["cat /h/secret.txt"]}),
        )
        .expect(400);
        // The directory itself: whatever /x/d is, it resolves inside the container.
        let v = post(
            &lessl,
            json!({"image": BUSYBOX, "resources": [{"mnt": format!("{shared_s}:/x:ro")}],
                   "cmd": ["cat /x/d/secret.txt 2>/dev/null; true"]}),
        )
        .expect(201)
        .json();
        let out = v["results"][0]["stdout"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!out.contains("host-only secret"), "try {tries}: {out}");
    }
    assert!(tries >= 3, "only {tries} tries in 5 s");
    lessl.delete(&id).expect(204);
    assert!(wait_until(Duration::from_secs(10), || lessl
        .containers()
        .is_empty()));
    lessl.finish();
    std::fs::remove_dir_all(shared).unwrap();
    std::fs::remove_dir_all(secret_dir).unwrap();
}

/// The host directory holding a local volume's data.
fn volume_data(volume: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(docker(&[
        "volume",
        "inspect",
        "--format",
        "{{.Mountpoint}}",
        volume,
    ]))
}

#[test]
fn another_applications_volume_is_neither_readable_nor_writable() {
    let instance = unique("vol");
    // Another application's volume, named as Lessl would name the task's, and one named as
    // the task asks: neither may be mounted.
    let squatted = format!("lessl.{instance}.data");
    let theirs = unique("theirs");
    for v in [&squatted, &theirs] {
        docker(&["volume", "create", v]);
        std::fs::write(volume_data(v).join("secret.txt"), "their data\n").unwrap();
    }
    let lessl = Lessl::start_instance(&instance, &["--allow-volumes", "*"]);

    let v = post(
        &lessl,
        json!({"image": BUSYBOX, "resources": [{"mnt": "data:/x"}], "cmd": ["cat /x/secret.txt"]}),
    )
    .expect(409)
    .json();
    assert_eq!(v["error"]["code"], "volume.foreign");
    assert_eq!(v["error"]["field"], "resources[0].mnt");
    assert!(
        lessl.containers().is_empty(),
        "a refused task left a container"
    );

    // The task's own `theirs` is a volume of this instance, not the application's.
    let v = post(
        &lessl,
        json!({"image": BUSYBOX, "resources": [{"mnt": format!("{theirs}:/x")}],
               "cmd": ["cat /x/secret.txt 2>&1; echo mine > /x/secret.txt"]}),
    )
    .expect(201)
    .json();
    assert!(
        !v["results"][0]["stdout"]
            .as_str()
            .unwrap()
            .contains("their data"),
        "{v}"
    );
    for v in [&squatted, &theirs] {
        assert_eq!(
            std::fs::read_to_string(volume_data(v).join("secret.txt")).unwrap(),
            "their data\n",
            "{v} was written"
        );
    }
    let ours = format!("lessl.{instance}.{theirs}");
    let labels = docker(&["volume", "inspect", "--format", "{{json .Labels}}", &ours]);
    let labels: Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["lessl.instance"], instance.as_str());
    assert_eq!(labels["lessl.volume"], theirs.as_str());

    assert!(wait_until(Duration::from_secs(10), || lessl
        .containers()
        .is_empty()));
    lessl
        .request("DELETE", &format!("/volumes/{theirs}"), None)
        .expect(204);
    lessl.finish();
    docker(&["volume", "rm", &squatted, &theirs]);
}

#[test]
fn volumes_are_opt_in_listed_removed_and_swept_when_idle() {
    let lessl = Lessl::start(&[]);
    let v = post(
        &lessl,
        json!({"image": BUSYBOX, "resources": [{"mnt": "cache:/cache"}]}),
    )
    .expect(400)
    .json();
    assert_eq!(v["error"]["field"], "resources[0].mnt");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--allow-volumes"));
    lessl.finish();

    let lessl = Lessl::start(&["--allow-volumes", "cache*", "--volume-idle", "3"]);
    post(
        &lessl,
        json!({"image": BUSYBOX, "resources": [{"mnt": "other:/x"}]}),
    )
    .expect(400);
    let v = post(
        &lessl,
        json!({"image": BUSYBOX, "resources": [{"mnt": "cache1:/c"}],
               "cmd": ["echo kept > /c/note"]}),
    )
    .expect(201)
    .json();
    assert_eq!(v["results"][0]["exit_code"], 0);
    let v = post(
        &lessl,
        json!({"image": BUSYBOX, "resources": [{"mnt": "cache1:/c:ro"}], "cmd": ["cat /c/note"]}),
    )
    .expect(201)
    .json();
    assert_eq!(v["results"][0]["stdout"], "kept\n");

    // In use by a daemon task: listed as such, and not removable.
    let d = post(
        &lessl,
        json!({"image": BUSYBOX, "daemon": true, "resources": [{"mnt": "cache2:/c"}]}),
    )
    .expect(201)
    .json();
    let list = lessl.get("/volumes").expect(200).json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"cache1") && names.contains(&"cache2"),
        "{list}"
    );
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "cache2" && v["in_use"] == true));
    lessl.request("DELETE", "/volumes/cache2", None).expect(409);
    lessl.request("DELETE", "/volumes/nosuch", None).expect(404);

    // Unused past the idle time: swept; the one in use stays.
    let gone = wait_until(Duration::from_secs(20), || {
        let list = lessl.get("/volumes").expect(200).json();
        !list
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "cache1")
    });
    assert!(gone, "cache1 was not swept; log:\n{}", lessl.log());
    let list = lessl.get("/volumes").expect(200).json();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "cache2"));

    // The CLI lists and removes them too.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lessl"))
            .args(args)
            .env("LESSL_URL", format!("http://{}", lessl.addr))
            .env_remove("LESSL_TOKEN_FILE")
            .output()
            .unwrap()
    };
    let ls = cli(&["volume", "ls"]);
    let table = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "{ls:?}");
    assert!(
        table.lines().any(|l| l.starts_with("cache2\tyes\t")),
        "{table}"
    );
    let rm = cli(&["volume", "rm", "cache2"]);
    assert_eq!(rm.status.code(), Some(1), "removed while in use: {rm:?}");

    lessl.delete(d["id"].as_str().unwrap()).expect(204);
    let rm = cli(&["volume", "rm", "cache2"]);
    assert!(rm.status.success(), "{rm:?}");
    assert_eq!(String::from_utf8_lossy(&rm.stdout), "cache2\n");
    lessl.request("DELETE", "/volumes/cache2", None).expect(404);
    lessl.finish();
}

#[test]
fn a_task_writing_past_its_disk_limit_stops_there() {
    // The shared engine (overlay2 on ext4 here) cannot cap a container's writable layer:
    // Lessl says so rather than pretending.
    let lessl = Lessl::start(&[]);
    let health = lessl.get("/health").expect(200).json();
    let disk = health["disk_limit"].as_str().unwrap().to_string();
    let driver = docker(&["info", "--format", "{{.Driver}}"]);
    if driver == "overlay2" {
        let backing = docker(&["info", "--format", "{{json .DriverStatus}}"]);
        if !backing.contains("xfs") {
            assert!(disk.starts_with("NOT enforced"), "{disk}");
        }
    }
    lessl.finish();

    // An engine whose storage driver can: a private dockerd on btrfs.
    let engine = PrivateDockerd::start_btrfs().unwrap_or_else(|e| panic!("{e}"));
    let lessl = Lessl::start(&["--docker-socket", &engine.socket_str()]);
    let health = lessl.get("/health").expect(200).json();
    assert_eq!(
        health["disk_limit"], "enforced per task (btrfs)",
        "{health}"
    );
    let before = engine.data_used_bytes();
    // A daemon, so its container (and what it wrote) is still there to be measured.
    let v = post(
        &lessl,
        json!({"image": BUSYBOX, "daemon": true, "limits": {"disk_mb": 256, "timeout_s": 60},
               "cmd": ["dd if=/dev/zero of=/big bs=1M count=2048", "echo unreachable"]}),
    )
    .expect(201)
    .json();
    let r = &v["results"][0];
    assert_ne!(r["exit_code"], 0, "{v}");
    // ENOSPC or EDQUOT, depending on how the driver enforces it.
    let stderr = r["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("No space left") || stderr.contains("quota exceeded"),
        "{v}"
    );
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    let grown = engine.data_used_bytes().saturating_sub(before);
    assert!(
        (100 << 20..400 << 20).contains(&grown),
        "the engine's disk grew by {grown} bytes for a 256 MiB limit"
    );
    lessl.delete(v["id"].as_str().unwrap()).expect(204);
    // A limit over the server's maximum is refused up front.
    let v = post(
        &lessl,
        json!({"image": BUSYBOX, "limits": {"disk_mb": 1 << 30}}),
    )
    .expect(400)
    .json();
    assert_eq!(v["error"]["field"], "limits.disk_mb");
    lessl.finish();
    drop(engine);
}
