//! Live output against real containers: `Accept: application/x-ndjson` on POST and PUT,
//! `GET /tasks/{ref}/events` (mid-run, after the end, after a restart, several at once), the
//! events' order and shapes, output caps and UTF-8 exactly as without streaming, a client
//! that goes away, a reader that does not read, and refusals before anything started. Arrival
//! times are measured here, on the client's side of the socket.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const NDJSON: &str = "application/x-ndjson";

/// A streamed answer read as it arrives: its head at once, then one event at a time.
struct Events {
    status: u16,
    headers: Vec<(String, String)>,
    body: BufReader<TcpStream>,
    chunked: bool,
    /// Bytes of the current chunk not read yet.
    left: usize,
    /// Bytes of a line not complete yet.
    partial: Vec<u8>,
    done: bool,
}

impl Events {
    fn open(addr: &str, method: &str, path: &str, body: Option<&str>) -> Events {
        let mut s = TcpStream::connect(addr).expect("connect to lessl");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: {NDJSON}\r\n"
        );
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        head.push_str(body.unwrap_or(""));
        s.write_all(head.as_bytes()).unwrap();
        let mut body = BufReader::new(s);
        let mut status_line = String::new();
        body.read_line(&mut status_line).unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            body.read_line(&mut l).unwrap();
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_lowercase(), v.trim().to_string()));
        }
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        Events {
            status,
            headers,
            body,
            chunked,
            left: 0,
            partial: Vec::new(),
            done: false,
        }
    }

    fn post(lessl: &Lessl, body: &Value) -> Events {
        Events::open(&lessl.addr, "POST", "/tasks", Some(&body.to_string()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next bytes of the body as they come; None at its end.
    fn bytes(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        if self.chunked && self.left == 0 {
            let mut size = String::new();
            self.body.read_line(&mut size).ok()?;
            self.left = usize::from_str_radix(size.trim(), 16).ok()?;
            if self.left == 0 {
                self.done = true;
                return None;
            }
        }
        let mut buf = vec![0; if self.chunked { self.left } else { 65536 }];
        let n = self.body.read(&mut buf).ok()?;
        if n == 0 {
            self.done = true;
            return None;
        }
        buf.truncate(n);
        if self.chunked {
            self.left -= n;
            if self.left == 0 {
                let mut crlf = [0; 2];
                self.body.read_exact(&mut crlf).ok()?;
            }
        }
        Some(buf)
    }

    /// The next event, when it arrived.
    fn next(&mut self) -> Option<(Instant, Value)> {
        loop {
            if let Some(p) = self.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=p).collect();
                let v = serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&line))
                });
                return Some((Instant::now(), v));
            }
            let more = self.bytes();
            let Some(more) = more else {
                assert!(
                    self.partial.is_empty(),
                    "the stream ends after a whole line"
                );
                return None;
            };
            self.partial.extend_from_slice(&more);
        }
    }

    /// Every event left, with arrival times.
    fn all(mut self) -> Vec<(Instant, Value)> {
        let mut v = Vec::new();
        while let Some(e) = self.next() {
            v.push(e);
        }
        v
    }
}

fn kinds(events: &[(Instant, Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(_, e)| e["event"].as_str().unwrap().to_string())
        .collect()
}

/// The concatenated `data` of one stream of one command.
fn printed(events: &[(Instant, Value)], stream: &str, index: u64) -> String {
    events
        .iter()
        .filter(|(_, e)| e["event"] == stream && e["index"] == index)
        .map(|(_, e)| e["data"].as_str().unwrap())
        .collect()
}

fn end_of(events: &[(Instant, Value)]) -> &Value {
    let (_, last) = events.last().expect("events");
    assert_eq!(last["event"], "end", "{events:?}");
    &last["task"]
}

#[test]
fn lines_arrive_as_the_command_prints_them_and_end_with_the_full_answer() {
    let lessl = Lessl::start(&[]);
    let body = json!({"image": BUSYBOX, "cmd": [
        "echo first; sleep 2; echo second; echo err >&2",
        ["sh", "-c", "echo two; exit 3"],
        "echo never",
    ]});
    let stream = Events::post(&lessl, &body);
    assert_eq!(stream.status, 201);
    assert_eq!(stream.header("content-type"), Some(NDJSON));
    let location = stream.header("location").unwrap().to_string();
    let events = stream.all();
    assert_eq!(
        kinds(&events)
            .into_iter()
            .filter(|k| k != "stdout" && k != "stderr")
            .collect::<Vec<_>>(),
        ["task", "start", "exit", "start", "exit", "end"],
        "{events:?}"
    );
    let task = &events[0].1["task"];
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/tasks/{id}"));
    assert_eq!(task["results"], json!([]));
    for (_, e) in &events[1..events.len() - 1] {
        assert_eq!(e["id"], id.as_str(), "{e}");
    }
    // The first line is on the client's side long before the second is printed.
    let at = |data: &str| {
        events
            .iter()
            .find(|(_, e)| e["event"] == "stdout" && e["data"].as_str().unwrap().contains(data))
            .unwrap_or_else(|| panic!("no {data} in {events:?}"))
            .0
    };
    let gap = at("second").duration_since(at("first"));
    assert!(
        gap > Duration::from_secs(1),
        "first line only {gap:?} before the second"
    );

    // Each command's chunks are its result's output; the end is what a GET answers.
    let end = end_of(&events).clone();
    let exits: Vec<&Value> = events
        .iter()
        .filter(|(_, e)| e["event"] == "exit")
        .map(|(_, e)| e)
        .collect();
    for (i, exit) in exits.iter().enumerate() {
        let i = i as u64;
        assert_eq!(exit["index"], i);
        assert_eq!(printed(&events, "stdout", i), exit["result"]["stdout"]);
        assert_eq!(printed(&events, "stderr", i), exit["result"]["stderr"]);
        assert_eq!(exit["result"], end["results"][i as usize]);
    }
    assert_eq!(
        exits[1]["result"]["cmd"],
        json!(["sh", "-c", "echo two; exit 3"])
    );
    assert_eq!(end["results"][0]["stdout"], "first\nsecond\n");
    assert_eq!(end["failed_command"], 1);
    assert_eq!(end["state"], "finished");
    let got = lessl.get(&format!("/tasks/{id}")).expect(200).json();
    assert_eq!(got, end);
    assert!(wait_until(Duration::from_secs(20), || !container_exists(
        &id
    )));
    lessl.finish();
}

#[test]
fn caps_truncation_timeouts_and_split_characters_are_as_without_streaming() {
    let lessl = Lessl::start(&[]);
    let body = json!({"image": BUSYBOX, "limits": {"output_bytes": 1000, "timeout_s": 2},
    "cmd": [
        // A two-byte character cut across writes, a pause between its halves; then
        // more than the cap on stdout, and a character cut by the cap on stderr.
        "printf 'a\\303'; sleep 0.5; printf '\\251b\\n'; yes 0123456789 | head -c 5000; \
         head -c 999 /dev/zero | tr '\\0' x >&2; printf '\\303\\251' >&2",
        "echo slow; sleep 10",
    ]});
    let streamed = Events::post(&lessl, &body).all();
    let plain = lessl.post(&body.to_string()).expect(201).json();
    let end = end_of(&streamed);
    for (i, want) in plain["results"].as_array().unwrap().iter().enumerate() {
        let got = &end["results"][i];
        for key in [
            "cmd",
            "exit_code",
            "stdout",
            "stderr",
            "timed_out",
            "truncated",
            "oom_killed",
        ] {
            assert_eq!(got[key], want[key], "command {i}: {key}");
        }
        assert_eq!(printed(&streamed, "stdout", i as u64), want["stdout"]);
        assert_eq!(printed(&streamed, "stderr", i as u64), want["stderr"]);
    }
    let first = &end["results"][0];
    assert!(first["stdout"]
        .as_str()
        .unwrap()
        .starts_with("a\u{e9}b\n0123456789"));
    assert_eq!(first["truncated"], true);
    // The cap cut the character on stderr: shown as the result shows it, never dropped.
    assert!(
        first["stderr"].as_str().unwrap().ends_with("x\u{fffd}"),
        "{first}"
    );
    // No chunk ever held half a character as a replacement.
    assert!(!printed(&streamed, "stdout", 0).contains('\u{fffd}'));
    assert_eq!(end["results"][1]["timed_out"], true);
    assert_eq!(end["results"][1]["stdout"], "slow\n");
    lessl.finish();
}

#[test]
fn a_batch_streams_every_task_and_ends_after_the_last() {
    let lessl = Lessl::start(&[]);
    let body = json!([
        {"image": BUSYBOX, "cmd": ["echo a1; sleep 1; echo a2"]},
        {"image": BUSYBOX, "cmd": ["echo b1", "echo b2"]},
    ]);
    let stream = Events::post(&lessl, &body);
    assert_eq!(stream.status, 201);
    let events = stream.all();
    let ids: Vec<String> = events
        .iter()
        .filter(|(_, e)| e["event"] == "task")
        .map(|(_, e)| e["task"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{events:?}");
    let ends: Vec<&Value> = events
        .iter()
        .filter(|(_, e)| e["event"] == "end")
        .map(|(_, e)| &e["task"])
        .collect();
    assert_eq!(ends.len(), 2);
    assert_eq!(kinds(&events).last().unwrap(), "end");
    for (id, want) in ids.iter().zip(["a1\na2\n", "b1\n"]) {
        let of: Vec<(Instant, Value)> = events
            .iter()
            .filter(|(_, e)| e["id"] == id.as_str() || e["task"]["id"] == id.as_str())
            .cloned()
            .collect();
        assert_eq!(kinds(&of)[0], "task");
        assert_eq!(printed(&of, "stdout", 0), want);
        let end = end_of(&of);
        assert_eq!(end["results"][0]["stdout"], want);
    }
    lessl.finish();
}

#[test]
fn followers_read_what_was_printed_then_live_and_a_finished_run_at_once() {
    let dir = temp_state_dir("follow");
    let instance = unique("fo");
    let dir_arg = dir.display().to_string();
    let lessl = Lessl::start_instance(&instance, &["--state-dir", &dir_arg]);
    let body = json!({"image": BUSYBOX, "cmd": ["echo early; sleep 3; echo late"]});
    let v = lessl
        .request("POST", "/tasks?wait=false", Some(&body.to_string()))
        .expect(202)
        .json();
    let id = v["id"].as_str().unwrap().to_string();
    let path = format!("/tasks/{id}/events");
    // Joins once the first line is out.
    assert!(wait_until(Duration::from_secs(20), || {
        let t = lessl.get(&format!("/tasks/{id}")).json();
        t["state"] == "running" && container_output_started(&lessl, &id)
    }));
    let joined = Instant::now();
    let followers: Vec<_> = (0..2)
        .map(|_| {
            let (addr, path) = (lessl.addr.clone(), path.clone());
            std::thread::spawn(move || Events::open(&addr, "GET", &path, None).all())
        })
        .collect();
    let seen: Vec<Vec<(Instant, Value)>> =
        followers.into_iter().map(|f| f.join().unwrap()).collect();
    for events in &seen {
        assert_eq!(
            kinds(events),
            ["task", "start", "stdout", "stdout", "exit", "end"],
            "{events:?}"
        );
        // The earlier line at once, the later one only when printed.
        let early = events[2].0.duration_since(joined);
        let late = events[3].0.duration_since(events[2].0);
        assert_eq!(events[2].1["data"], "early\n");
        assert!(
            late > Duration::from_millis(500),
            "early {early:?}, late {late:?}"
        );
        assert_eq!(end_of(events)["results"][0]["stdout"], "early\nlate\n");
    }
    let strip = |e: &[(Instant, Value)]| e.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();
    assert_eq!(
        strip(&seen[0]),
        strip(&seen[1]),
        "every follower reads the same"
    );

    // A finished run: its final events, whole, at once.
    let replayed = |lessl: &Lessl| {
        let t = Instant::now();
        let stream = Events::open(&lessl.addr, "GET", &path, None);
        assert_eq!(stream.status, 200);
        let events = stream.all();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(kinds(&events), ["task", "start", "stdout", "exit", "end"]);
        assert_eq!(events[2].1["data"], "early\nlate\n");
        end_of(&events).clone()
    };
    let before = replayed(&lessl);
    assert_eq!(before, end_of(&seen[0]).clone());
    let mut lessl = lessl;
    lessl.terminate();
    let lessl = Lessl::start_instance(&instance, &["--state-dir", &dir_arg]);
    assert_eq!(replayed(&lessl)["results"], before["results"]);
    lessl.get("/tasks/nosuchtask/events").expect(404);
    lessl.finish();
}

/// Whether the task's container printed its first line (read with the engine's own logs
/// would see nothing: the agent's output goes to Lessl only), so: whether a follower that
/// joins now gets a stdout line before anything else ends.
fn container_output_started(lessl: &Lessl, id: &str) -> bool {
    let mut probe = Events::open(&lessl.addr, "GET", &format!("/tasks/{id}/events"), None);
    for _ in 0..3 {
        match probe.next() {
            Some((_, e)) if e["event"] == "stdout" => return true,
            Some(_) => {}
            None => return false,
        }
    }
    false
}

#[test]
fn a_client_that_goes_away_leaves_the_run_to_finish_and_its_container_removed() {
    let lessl = Lessl::start(&[]);
    let body = json!({"image": BUSYBOX, "cmd": ["echo one; sleep 2; echo two", "echo three"]});
    let mut stream = Events::post(&lessl, &body);
    let (_, task) = stream.next().unwrap();
    let id = task["task"]["id"].as_str().unwrap().to_string();
    loop {
        let (_, e) = stream.next().expect("events");
        if e["event"] == "stdout" {
            break;
        }
    }
    drop(stream);
    assert!(
        wait_until(Duration::from_secs(30), || !container_exists(&id)),
        "the container outlived its run"
    );
    let v = lessl.get(&format!("/tasks/{id}")).expect(200).json();
    assert_eq!(v["state"], "finished");
    assert_eq!(v["results"][0]["stdout"], "one\ntwo\n");
    assert_eq!(v["results"][1]["stdout"], "three\n");
    lessl.finish();
}

#[test]
fn a_reader_that_reads_nothing_costs_disk_not_memory_and_gets_every_byte() {
    let dir = temp_state_dir("slow");
    let instance = unique("sl");
    let dir_arg = dir.display().to_string();
    let lessl = Lessl::start_instance(&instance, &["--state-dir", &dir_arg]);
    lessl
        .post(&json!({"image": BUSYBOX, "cmd": ["echo warm"]}).to_string())
        .expect(201);
    let before = rss_kib(lessl.pid());
    let cap: u64 = 16 << 20;
    let body = json!({"image": BUSYBOX, "limits": {"output_bytes": cap},
        "cmd": [format!("yes 'a line of output' | head -c {cap}; echo done >&2")]});
    let mut stream = Events::post(&lessl, &body);
    let (_, task) = stream.next().unwrap();
    let id = task["task"]["id"].as_str().unwrap().to_string();
    // Reads nothing while the command prints its whole cap; the run ends meanwhile.
    let mut peak = 0;
    let ended = wait_until(Duration::from_secs(60), || {
        peak = peak.max(rss_kib(lessl.pid()));
        lessl.get(&format!("/tasks/{id}")).json()["state"] == "finished"
    });
    assert!(ended, "a reader that does not read stalled the run");
    let growth_mib = peak.saturating_sub(before) / 1024;
    let spilled: u64 = std::fs::read_dir(dir.join(&instance))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spill"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    eprintln!(
        "RSS +{growth_mib} MiB while 16 MiB was printed and not read; spill files hold {spilled} bytes"
    );
    // The unread chunks wait on disk (the exit's result and the end's view are written out
    // from the output's own spill file and the kept result when read). Memory may hold at
    // most about one copy, in flight between the agent and the journal on a loaded machine,
    // never the reader's backlog.
    assert!(growth_mib < 24, "RSS grew by {growth_mib} MiB");
    assert!(
        spilled > cap,
        "the unread events wait on disk: {spilled} bytes"
    );
    // Then everything arrives.
    let mut events = vec![];
    while let Some(e) = stream.next() {
        events.push(e);
    }
    let out = printed(&events, "stdout", 0);
    assert_eq!(out.len() as u64, cap);
    assert_eq!(printed(&events, "stderr", 0), "done\n");
    assert_eq!(
        end_of(&events)["results"][0]["stdout"].as_str().unwrap(),
        out
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_dir(dir.join(&instance))
                .unwrap()
                .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".spill"))
        }),
        "spill files outlived their readers"
    );
    lessl.finish();
}

#[test]
fn refusals_before_the_start_are_ordinary_json_errors() {
    let lessl = Lessl::start(&["--allow-image", "lessl-test/*"]);
    let refused = Events::post(&lessl, &json!({"image": "nosuch/image", "cmd": ["true"]}));
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let ndjson = [("Accept", NDJSON), ("Content-Type", "application/json")];
    let r = lessl.request_with(
        "POST",
        "/tasks",
        Some(&json!({"image": "lessl-test/nosuch", "cmd": ["true"]}).to_string()),
        &ndjson,
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.json()["error"].is_object(), "{}", r.text());
    let r = lessl.request_with(
        "POST",
        "/tasks?wait=false",
        Some(&json!({"image": BUSYBOX, "cmd": ["true"]}).to_string()),
        &ndjson,
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("wait"), "{}", r.text());
    let r = lessl.request_with(
        "PUT",
        "/tasks/nosuch",
        Some(&json!({"cmd": ["true"]}).to_string()),
        &ndjson,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(lessl.containers().is_empty());
    lessl.finish();
}

#[test]
fn a_put_into_a_daemon_streams_its_run() {
    let lessl = Lessl::start(&[]);
    let name = unique("d");
    let body = json!({"image": BUSYBOX, "daemon": true, "task_name": name, "cmd": ["echo up"]});
    let created = Events::open(
        &lessl.addr,
        "PUT",
        &format!("/tasks/{name}"),
        Some(&body.to_string()),
    );
    assert_eq!(created.status, 201);
    let events = created.all();
    assert_eq!(end_of(&events)["state"], "idle");
    let ran = Events::open(
        &lessl.addr,
        "PUT",
        &format!("/tasks/{name}"),
        Some(&json!({"cmd": ["echo again; sleep 1; echo done"]}).to_string()),
    );
    assert_eq!(ran.status, 200);
    let events = ran.all();
    assert_eq!(printed(&events, "stdout", 0), "again\ndone\n");
    assert_eq!(end_of(&events)["results"][0]["stdout"], "again\ndone\n");
    lessl.delete(&name).expect(204);
    lessl.finish();
}

/// Runs `lessl ARGS` as a client of `lessl`, reading its stdout line by line as it comes:
/// each line with when it arrived, the stderr, and the exit code.
fn client_lines(
    lessl: &Lessl,
    args: &[&str],
    stdin: &str,
) -> (Vec<(Instant, String)>, String, i32) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_lessl"))
        .args(args)
        .env("LESSL_URL", format!("http://{}", lessl.addr))
        .env_remove("LESSL_TOKEN_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lessl client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| (Instant::now(), l.unwrap()))
        .collect();
    let code = child.wait().unwrap().code().unwrap();
    (lines, err.join().unwrap(), code)
}

#[test]
fn the_cli_prints_output_as_it_comes_and_follows_a_task() {
    let lessl = Lessl::start(&[]);
    let body = json!({"image": BUSYBOX, "cmd": ["echo first; sleep 2; echo second; echo err >&2", "exit 7"]});
    let (lines, err, code) = client_lines(&lessl, &["run", "-"], &body.to_string());
    assert_eq!(code, 7, "{err}");
    assert_eq!(err, "err\n");
    let texts: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(texts, ["first", "second"]);
    let gap = lines[1].0.duration_since(lines[0].0);
    assert!(
        gap > Duration::from_secs(1),
        "first line only {gap:?} before the second"
    );

    // `logs -f` follows a started task to its end; `logs` prints its last run.
    let body = json!({"image": BUSYBOX, "daemon": true, "cmd": ["echo a; sleep 2; echo b"]});
    let v = lessl
        .request("POST", "/tasks?wait=false", Some(&body.to_string()))
        .expect(202)
        .json();
    let id = v["id"].as_str().unwrap().to_string();
    let (lines, err, code) = client_lines(&lessl, &["logs", "-f", &id], "");
    assert_eq!(code, 0, "{err}");
    let texts: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(texts, ["a", "b"]);
    let (lines, _, code) = client_lines(&lessl, &["logs", &id], "");
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 2);
    // `exec` streams too, and passes the command's code through.
    let (lines, _, code) = client_lines(
        &lessl,
        &["exec", &id, "--shell", "echo x; sleep 1.5; echo y; exit 2"],
        "",
    );
    assert_eq!(code, 2);
    assert!(lines[1].0.duration_since(lines[0].0) > Duration::from_secs(1));
    lessl.delete(&id).expect(204);
    lessl.finish();
}
