//! Files placed by the agent in running containers (PUT into a daemon, a warm-pool POST),
//! through the API against real containers, on the attach path and on the exec fallback
//! (`--runner exec`, where the engine's archive upload places them): every byte value and
//! mode, the owner of a task with a `user`, the tar refusals, symlinks planted by earlier
//! commands, all-or-none sets (a set refused halfway through its payload too), and a reader
//! racing a 50 MiB replacement.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use support::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn stdout(v: &Value, i: usize) -> String {
    v["results"][i]["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Every byte value, several times, in an order that differs per position.
fn all_bytes() -> Vec<u8> {
    (0..1024u32).map(|i| (i * 7 + i / 256) as u8).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The two ways Lessl runs commands: its agent's attach stream, or execs.
const RUNNERS: [&[&str]; 2] = [&[], &["--runner", "exec"]];

/// A daemon task running `setup`; returns its name.
fn daemon(lessl: &Lessl, extra: Value, setup: &str) -> String {
    let name = unique("files");
    let mut body = json!({"image": BUSYBOX, "daemon": true, "task_name": name, "cmd": [setup]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    lessl.post(&body.to_string()).expect(201);
    name
}

/// Starts `cmd` in daemon task `name` without waiting for it (`?wait=false`).
fn run_detached(lessl: &Lessl, name: &str, cmd: &str) {
    lessl
        .request_with(
            "PUT",
            &format!("/tasks/{name}?wait=false"),
            Some(&json!({"cmd": [cmd]}).to_string()),
            &[],
        )
        .expect(202);
}

/// On the attach path, whether the agent placed every file (no archive fallback was logged).
fn placed_by_agent(lessl: &Lessl) -> bool {
    !lessl.log().contains("uploading an archive")
}

const SCRIPT: &str = "#!/bin/sh\necho \"job ran with $1\"\n";

#[test]
fn put_places_every_byte_value_with_its_mode_on_both_paths() {
    let data = all_bytes();
    for runner in RUNNERS {
        let lessl = Lessl::start(runner);
        let name = daemon(&lessl, json!({}), "true");
        let v = lessl
            .put(
                &name,
                &json!({"resources": [
                    {"content_type": "application/octet-stream", "data": b64(&data),
                     "dest": "/srv/data/all.bin", "mode": "0640"},
                    {"content_type": "text/x-sh", "data": SCRIPT, "dest": "/opt/job.sh", "mode": "0755"}],
                   "cmd": ["od -An -v -tx1 /srv/data/all.bin | tr -d ' \\n'; echo",
                           "stat -c '%a %s' /srv/data/all.bin /opt/job.sh",
                           "/opt/job.sh arg",
                           "ls -a /srv/data /opt | grep -c lessl || true"]})
                .to_string(),
            )
            .expect(200)
            .json();
        assert_eq!(stdout(&v, 0).trim(), hex(&data), "{runner:?}");
        let sizes = format!("640 1024\n755 {}\n", SCRIPT.len());
        assert_eq!(stdout(&v, 1), sizes, "{runner:?}");
        assert_eq!(stdout(&v, 2), "job ran with arg\n", "{runner:?}");
        assert_eq!(stdout(&v, 3), "0\n", "no staged file left: {runner:?}");
        // Replacing a file: the new content, whole.
        let v = lessl
            .put(
                &name,
                &json!({"resources": [{"data": "second", "dest": "/srv/data/all.bin"}],
                        "cmd": ["cat /srv/data/all.bin; stat -c ' %a' /srv/data/all.bin"]})
                .to_string(),
            )
            .expect(200)
            .json();
        assert_eq!(stdout(&v, 0), "second 644\n");
        if runner.is_empty() {
            assert!(placed_by_agent(&lessl), "{}", lessl.log());
        }
        lessl.delete(&name).expect(204);
        lessl.finish();
    }
}

#[test]
fn a_task_with_a_user_owns_what_the_agent_places() {
    for runner in RUNNERS {
        let lessl = Lessl::start(&[&["--allow-users", "65534:65534"], runner].concat());
        let name = daemon(&lessl, json!({"user": "65534:65534"}), "mkdir -p /tmp/mine");
        let v = lessl
            .put(
                &name,
                &json!({"resources": [{"data": "hers", "dest": "/tmp/mine/f.txt", "mode": "0600"}],
                  "cmd": ["cat /tmp/mine/f.txt; stat -c ' %u:%g %a' /tmp/mine/f.txt"]})
                .to_string(),
            )
            .expect(200)
            .json();
        let owner = if runner.is_empty() {
            "65534:65534"
        } else {
            "0:0"
        };
        if runner.is_empty() {
            assert_eq!(stdout(&v, 0), format!("hers {owner} 600\n"));
            assert!(placed_by_agent(&lessl), "{}", lessl.log());
        } else {
            // The engine writes as root: the user cannot even read a 0600 file.
            assert_eq!(stdout(&v, 0), format!(" {owner} 600\n"));
        }
        // A directory the user cannot write: the engine places the file, as root.
        let v = lessl
            .put(
                &name,
                &json!({"resources": [{"data": "root's", "dest": "/opt/r.txt"}],
                        "cmd": ["cat /opt/r.txt; stat -c ' %u' /opt/r.txt"]})
                .to_string(),
            )
            .expect(200)
            .json();
        assert_eq!(stdout(&v, 0), "root's 0\n", "{runner:?}");
        // A cold POST: the agent places them once it is up, before the first command.
        let v = lessl
            .post(
                &json!({"image": BUSYBOX, "user": "65534:65534", "resources": [
                    {"data": "cold", "dest": "/tmp/c/f", "mode": "0600"},
                    {"data": "#!/bin/sh\necho script ran\n", "dest": "/tmp/c/job.sh", "mode": "0755"}],
                  "cmd": ["cat /tmp/c/f; stat -c ' %u %a' /tmp/c/f", "/tmp/c/job.sh"]})
                .to_string(),
            )
            .expect(201)
            .json();
        if runner.is_empty() {
            assert_eq!(stdout(&v, 0), "cold 65534 600\n");
        } else {
            assert_eq!(stdout(&v, 0), " 0 600\n");
        }
        assert_eq!(stdout(&v, 1), "script ran\n", "{runner:?}");
        lessl.delete(&name).expect(204);
        lessl.finish();
    }
}

#[test]
fn a_warm_pool_post_places_its_files_through_the_agent() {
    let lessl = Lessl::start(&["--warm", &format!("{BUSYBOX}=1")]);
    let pooled = || {
        docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=lessl.instance={}", lessl.instance),
            "--filter",
            "label=lessl.pool",
        ])
        .lines()
        .count()
            == 1
    };
    assert!(wait_until(Duration::from_secs(60), pooled));
    let data = all_bytes();
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "resources": [
                {"content_type": "application/octet-stream", "data": b64(&data),
                 "dest": "/srv/all.bin", "mode": "0600"},
                {"content_type": "text/x-sh", "data": "echo warm job\n", "dest": "/opt/job.sh",
                 "mode": "0755"}],
              "cmd": ["od -An -v -tx1 /srv/all.bin | tr -d ' \\n'; stat -c ' %a' /srv/all.bin",
                      "/opt/job.sh"]})
            .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(stdout(&v, 0), format!("{} 600\n", hex(&data)));
    assert_eq!(stdout(&v, 1), "warm job\n");
    assert!(placed_by_agent(&lessl), "{}", lessl.log());
    let id = v["id"].as_str().unwrap().to_string();
    // A bad member in a warm POST: a 400 naming it, and the pooled container untouched.
    let tar = raw_tar(&[("srv/ok", b'0', "", b"x"), (".lessl/evil", b'0', "", b"x")]);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "resources": [
                {"data": "x", "dest": "/srv/ok"},
                {"content_type": "application/x-tar", "data": b64(&tar), "dest": "/"}],
                "cmd": ["true"]})
            .to_string(),
        )
        .expect(400)
        .json();
    assert_eq!(v["error"]["field"], "resources[1].data");
    assert!(wait_until(Duration::from_secs(10), || !container_exists(
        &id
    )));
    assert!(wait_until(Duration::from_secs(30), pooled));
    lessl.finish();
}

/// One raw tar entry: name, typeflag, link target, data.
type Raw<'a> = (&'a str, u8, &'a str, &'a [u8]);

/// A tar archive built by hand, so it can carry what a careful writer never would.
fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let mode: &[u8] = if *kind == b'5' {
            b"0000755"
        } else {
            b"0000644"
        };
        h[100..107].copy_from_slice(mode);
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = *kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn archives_placed_by_the_agent_keep_every_refusal_and_place_nothing() {
    let good: &[Raw<'_>] = &[
        ("dir/", b'5', "", b""),
        ("dir/a.txt", b'0', "", b"alpha"),
        ("dir/link", b'2', "a.txt", b""),
        ("dir/hard", b'1', "dir/a.txt", b""),
    ];
    let bad: Vec<Vec<Raw<'_>>> = vec![
        vec![("../escape", b'0', "", b"x")],
        vec![("/abs", b'0', "", b"x")],
        vec![("ok/../../escape", b'0', "", b"x")],
        // Through the archive's own symlink.
        vec![("l", b'2', "/etc", b""), ("l/passwd", b'0', "", b"x")],
        vec![("h", b'1', "../../etc/passwd", b"")],
    ];
    for runner in RUNNERS {
        let lessl = Lessl::start(runner);
        let name = daemon(&lessl, json!({}), "true");
        for entries in &bad {
            let v = lessl
                .put(
                    &name,
                    &json!({"resources": [
                        {"data": "first", "dest": "/srv/first.txt"},
                        {"content_type": "application/x-tar", "data": b64(&raw_tar(entries)),
                         "dest": "/srv/t"}], "cmd": ["true"]})
                    .to_string(),
                )
                .expect(400)
                .json();
            assert_eq!(v["error"]["field"], "resources[1].data", "{entries:?}");
        }
        let v = lessl
            .put(
                &name,
                &json!({"cmd": ["ls /srv /etc/passwd /escape 2>&1; head -c4 /etc/passwd"]})
                    .to_string(),
            )
            .expect(200)
            .json();
        let out = stdout(&v, 0);
        assert!(out.contains("/srv: No such file"), "{out}");
        assert!(out.contains("/escape: No such file"), "{out}");
        assert!(out.ends_with("root"), "{out}");
        let v = lessl
            .put(
                &name,
                &json!({"resources": [{"content_type": "application/x-tar",
                    "data": b64(&raw_tar(good)), "dest": "/srv/t"}],
                    "cmd": ["cat /srv/t/dir/a.txt /srv/t/dir/link /srv/t/dir/hard; readlink /srv/t/dir/link; stat -c %h /srv/t/dir/a.txt"]})
                .to_string(),
            )
            .expect(200)
            .json();
        assert_eq!(stdout(&v, 0), "alphaalphaalphaa.txt\n2\n", "{runner:?}");
        if runner.is_empty() {
            assert!(placed_by_agent(&lessl), "{}", lessl.log());
        }
        lessl.delete(&name).expect(204);
        lessl.finish();
    }
}

#[test]
fn symlinks_planted_by_a_command_never_lead_a_file_out_of_the_rules() {
    let plant = "ln -s /.lessl /tmp/x; ln -s / /tmp/root; ln -s ../../proc /tmp/up; \
                 ln -s /tmp/loop2 /tmp/loop1; ln -s /tmp/loop1 /tmp/loop2; mkdir -p /tmp/ok; \
                 ln -s /tmp/ok /tmp/fine";
    let refused = [
        ("/tmp/x/evil", "resources[1].dest", false),
        ("/tmp/root/.lessl/evil", "resources[1].dest", false),
        ("/tmp/up/evil", "resources[1].dest", false),
        ("/tmp/root/sys/evil", "resources[1].dest", false),
        // An archive whose own entries walk through the planted link.
        ("/tmp/root", "resources[1].data", true),
    ];
    for runner in RUNNERS {
        let lessl = Lessl::start(runner);
        let name = daemon(&lessl, json!({}), plant);
        for (dest, field, archive) in refused {
            let second = if archive {
                json!({"content_type": "application/x-tar",
                       "data": b64(&raw_tar(&[("proc/evil", b'0', "", b"x"), (".lessl/evil", b'0', "", b"x")])),
                       "dest": dest})
            } else {
                json!({"data": "evil", "dest": dest})
            };
            let v = lessl
                .put(
                    &name,
                    &json!({"resources": [{"data": "good", "dest": "/tmp/ok/good"}, second],
                            "cmd": ["true"]})
                    .to_string(),
                )
                .expect(400)
                .json();
            assert_eq!(v["error"]["field"], field, "{dest} {runner:?}");
        }
        // Checked from another command: nothing was written anywhere.
        let v = lessl
            .put(
                &name,
                &json!({"cmd": ["ls -a /tmp/ok /.lessl; ls /proc/evil /sys/evil 2>&1 | grep -c 'No such'"]})
                    .to_string(),
            )
            .expect(200)
            .json();
        let out = stdout(&v, 0);
        assert!(!out.contains("good") && !out.contains("evil"), "{out}");
        assert!(out.ends_with("2\n"), "{out}");
        // A link that stays inside the rules is followed, as the archive upload does.
        let v = lessl
            .put(
                &name,
                &json!({"resources": [{"data": "fine", "dest": "/tmp/fine/f"}],
                        "cmd": ["cat /tmp/ok/f"]})
                .to_string(),
            )
            .expect(200)
            .json();
        assert_eq!(stdout(&v, 0), "fine");
        lessl.delete(&name).expect(204);
        lessl.finish();
    }
}

/// The agent writes a placement's files as their bytes arrive. One refused halfway through
/// its payload (the second file's directory is a link an earlier command planted towards
/// `/.lessl`, found once the first file's 3 MiB are written) leaves nothing of the first file
/// and takes the rest of the payload unread, so the requests that follow on the channel read
/// as they should: twice over, then both files placed whole elsewhere.
#[test]
fn a_placement_refused_halfway_through_its_payload_leaves_nothing() {
    const BY_LANE: &str = r#"lessl_agent_requests_total{transport="lane"}"#;
    const BY_ATTACH: &str = r#"lessl_agent_requests_total{transport="attach"}"#;
    let lessl = Lessl::start(&[]);
    let name = daemon(&lessl, json!({}), "ln -s /.lessl /tmp/x && mkdir /tmp/ok");
    // The payload is raw bytes only on the lane: wait until it carries the task's requests.
    let on_lane = wait_until(Duration::from_secs(60), || {
        lessl.put(&name, r#"{"cmd": ["true"]}"#).expect(200);
        metric(&lessl, BY_LANE) > 0
    });
    assert!(
        on_lane,
        "no request went over the lane; log:\n{}",
        lessl.log()
    );
    let by_attach = metric(&lessl, BY_ATTACH);
    let first: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8).collect();
    let second: Vec<u8> = (0..2 << 20).map(|i| (i % 241) as u8).collect();
    let file = |bytes: &[u8], dest: &str| json!({"content_type": "application/octet-stream", "data": b64(bytes), "dest": dest});
    for _ in 0..2 {
        let body = json!({"resources": [file(&first, "/tmp/ok/first"), file(&second, "/tmp/x/second")],
                          "cmd": ["true"]});
        let v = lessl.put(&name, &body.to_string()).expect(400).json();
        assert_eq!(v["error"]["field"], "resources[1].dest", "{v}");
        let v = lessl
            .put(
                &name,
                r#"{"cmd": ["ls -A /tmp/ok | wc -l; ls -A /.lessl | grep -c -e second -e tmp"]}"#,
            )
            .expect(200)
            .json();
        assert_eq!(
            stdout(&v, 0),
            "0\n0\n",
            "something of the refused set was left"
        );
    }
    let body = json!({"resources": [file(&first, "/tmp/ok/first"), file(&second, "/tmp/ok/second")],
                      "cmd": ["ls -A /tmp/ok; wc -c < /tmp/ok/first; wc -c < /tmp/ok/second; \
                               od -An -tu1 -j 3000000 -N 2 /tmp/ok/first | tr -s ' '; \
                               od -An -tu1 -j 2000000 -N 2 /tmp/ok/second | tr -s ' '"]});
    let v = lessl.put(&name, &body.to_string()).expect(200).json();
    let at = |bytes: &[u8], i: usize| format!(" {} {}\n", bytes[i], bytes[i + 1]);
    assert_eq!(
        stdout(&v, 0),
        format!(
            "first\nsecond\n{}\n{}\n{}{}",
            first.len(),
            second.len(),
            at(&first, 3_000_000),
            at(&second, 2_000_000)
        )
    );
    assert!(placed_by_agent(&lessl), "{}", lessl.log());
    assert_eq!(
        metric(&lessl, BY_ATTACH),
        by_attach,
        "a request left the lane"
    );
    lessl.delete(&name).expect(204);
    lessl.finish();
}

#[test]
fn a_reader_never_sees_half_of_a_50_mib_file() {
    const BIG: usize = 50 << 20;
    let max = BIG.to_string();
    let body_max = (BIG * 2).to_string();
    let lessl = Lessl::start(&["--max-resource-bytes", &max, "--max-body-bytes", &body_max]);
    let name = daemon(
        &lessl,
        json!({"limits": {"memory_mb": 1024}}),
        "head -c 1048576 /dev/zero > /tmp/big",
    );
    // The reader loops until told to stop, noting every size that is neither whole file.
    let reader = format!(
        "n=0; while [ ! -e /tmp/stop ]; do s=$(wc -c < /tmp/big); n=$((n+1)); \
         case $s in 1048576|{BIG}) ;; *) echo \"torn $s\" >> /tmp/torn;; esac; done; echo $n reads"
    );
    run_detached(&lessl, &name, &reader);
    std::thread::sleep(Duration::from_millis(500));
    let data: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    let body = json!({"resources": [{"content_type": "application/octet-stream",
        "data": b64(&data), "dest": "/tmp/big"}],
        "cmd": ["sleep 0.3; touch /tmp/stop; wc -c < /tmp/big; od -An -tu1 -j 1000000 -N 3 /tmp/big | tr -s ' '"]});
    let v = lessl.put(&name, &body.to_string()).expect(200).json();
    assert_eq!(stdout(&v, 0), format!("{BIG}\n 16 17 18\n"));
    assert!(placed_by_agent(&lessl), "{}", lessl.log());
    assert!(wait_until(Duration::from_secs(20), || {
        let v = lessl.get(&format!("/tasks/{name}")).json();
        v["state"] == "idle"
    }));
    let v = lessl
        .put(
            &name,
            r#"{"cmd": ["cat /tmp/torn 2>/dev/null | head -5; echo end"]}"#,
        )
        .expect(200)
        .json();
    assert_eq!(stdout(&v, 0), "end\n", "a reader saw a torn file");
    lessl.delete(&name).expect(204);
    lessl.finish();
}

/// What a placement replaces is let go after its answer (held by an `O_PATH` descriptor,
/// which opens nothing): a FIFO planted at the destination by an earlier command is replaced
/// without the agent blocking on it, a command still reading a replaced 3 MiB file reads
/// all of the old one, and the new files land whole.
#[test]
fn what_a_placement_replaces_is_let_go_without_being_opened() {
    const OLD: usize = 3 << 20;
    let lessl = Lessl::start(&[]);
    let name = daemon(
        &lessl,
        json!({}),
        &format!("mkfifo /tmp/fifo && head -c {OLD} /dev/zero > /tmp/big"),
    );
    // A reader of the old file: opened now, read after the replacement.
    let reader = "exec 3< /tmp/big; sleep 1; wc -c <&3 > /tmp/old-size";
    run_detached(&lessl, &name, reader);
    std::thread::sleep(Duration::from_millis(300));
    let data: Vec<u8> = (0..(2 << 20)).map(|i| (i % 253) as u8).collect();
    let body = json!({"resources": [
            {"content_type": "application/octet-stream", "data": b64(&data), "dest": "/tmp/big"},
            {"data": "not a fifo", "dest": "/tmp/fifo"}],
        "cmd": ["wc -c < /tmp/big; od -An -tu1 -j 1000000 -N 2 /tmp/big | tr -s ' '",
                "test -p /tmp/fifo || cat /tmp/fifo"]});
    let started = std::time::Instant::now();
    let v = lessl.put(&name, &body.to_string()).expect(200).json();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the agent blocked on the FIFO"
    );
    assert_eq!(stdout(&v, 0), format!("{}\n 144 145\n", 2 << 20), "{v}");
    assert_eq!(stdout(&v, 1), "not a fifo");
    assert!(placed_by_agent(&lessl), "{}", lessl.log());
    assert!(wait_until(Duration::from_secs(20), || {
        lessl.get(&format!("/tasks/{name}")).json()["state"] == "idle"
    }));
    let v = lessl
        .put(&name, r#"{"cmd": ["cat /tmp/old-size"]}"#)
        .expect(200)
        .json();
    assert_eq!(stdout(&v, 0), format!("{OLD}\n"), "the old file's reader");
    lessl.delete(&name).expect(204);
    lessl.finish();
}
