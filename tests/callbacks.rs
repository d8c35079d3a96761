//! Callbacks (`callback_url`): each run's final view POSTed to a test server on loopback,
//! signed with the token, refused without `--src-allow`, retried after a 5xx, never delaying
//! the answer; on POST (waited or not) and on each PUT into a daemon.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use support::*;

const TOKEN: &str = "callback-test-token-0123456789";

/// One request the test server received.
#[derive(Debug, Clone)]
struct Received {
    /// `POST /hook?x=1 HTTP/1.1`
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A hand-rolled HTTP server on 127.0.0.1 that counts connections, keeps what it received,
/// and answers the n-th request with `statuses[n]` (200 past the end). With a gate, it
/// holds its first answer until the test sends on the gate.
struct Hook {
    port: u16,
    accepts: Arc<AtomicUsize>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Hook {
    fn start(statuses: &[u16], gate: Option<Receiver<()>>) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepts = Arc::new(AtomicUsize::new(0));
        let got = Arc::new(Mutex::new(Vec::new()));
        let statuses = statuses.to_vec();
        let (a, g) = (accepts.clone(), got.clone());
        std::thread::spawn(move || {
            let mut gate = gate;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let n = a.fetch_add(1, Ordering::SeqCst);
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let Some(received) = read_request(&mut stream) else {
                    continue;
                };
                g.lock().unwrap().push(received);
                if let Some(gate) = gate.take() {
                    let _ = gate.recv_timeout(Duration::from_secs(60));
                }
                let status = statuses.get(n).copied().unwrap_or(200);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Hook { port, accepts, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived and returns them.
    #[track_caller]
    fn wait_for(&self, n: usize) -> Vec<Received> {
        assert!(
            wait_until(Duration::from_secs(30), || self.received().len() >= n),
            "{} callbacks arrived, not {n}",
            self.received().len()
        );
        self.received()
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        line: line.trim_end().to_string(),
        headers,
        body,
    })
}

fn token_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(unique("cb-token"));
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path
}

fn auth() -> String {
    format!("Bearer {TOKEN}")
}

fn signed(lessl: &Lessl, method: &str, path: &str, body: Option<&str>) -> Resp {
    let auth = auth();
    lessl.request_with(
        method,
        path,
        body,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
    )
}

fn metric(lessl: &Lessl, line_start: &str, token: bool) -> Option<u64> {
    let text = if token {
        signed(lessl, "GET", "/metrics", None).expect(200).text()
    } else {
        lessl.get("/metrics").expect(200).text()
    };
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

fn hmac_hex(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_callback_lands_with_the_answer_and_a_signature_the_receiver_can_check() {
    let hook = Hook::start(&[], None);
    let file = token_file();
    let lessl = Lessl::start(&[
        "--token-file",
        file.to_str().unwrap(),
        "--src-allow",
        "127.0.0.1/32",
    ]);
    let body = json!({"image": BUSYBOX, "cmd": ["echo hi", "echo err >&2; exit 3"],
                      "callback_url": hook.url("/hook?run=1")});
    let answer = signed(&lessl, "POST", "/tasks", Some(&body.to_string()))
        .expect(201)
        .json();
    let got = hook.wait_for(1);
    let r = &got[0];
    assert_eq!(r.line, "POST /hook?run=1 HTTP/1.1");
    assert_eq!(r.header("content-type"), Some("application/json"));
    // The final view, as the waited answer has it.
    assert_eq!(r.json(), answer);
    assert_eq!(r.json()["results"][0]["stdout"], "hi\n");
    assert_eq!(r.json()["failed_command"], 1);
    let expected = format!("sha256={}", hmac_hex(&r.body));
    assert_eq!(r.header("lessl-signature"), Some(expected.as_str()));
    // Counted once the receiver's answer is read, a moment after the receiver has the body.
    assert!(wait_until(Duration::from_secs(10), || metric(
        &lessl,
        "lessl_callbacks_total{outcome=\"delivered\"}",
        true
    ) == Some(1)));
    // One callback per run: nothing more arrives.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hook.accepts.load(Ordering::SeqCst), 1);
    lessl.finish();
    let _ = std::fs::remove_file(file);
}

#[test]
fn an_internal_callback_is_refused_without_a_connection() {
    let hook = Hook::start(&[], None);
    let lessl = Lessl::start(&[]);
    let body = json!({"image": BUSYBOX, "cmd": ["true"], "callback_url": hook.url("/")});
    let v = lessl.post(&body.to_string()).expect(201).json();
    assert_eq!(v["results"][0]["exit_code"], 0);
    assert!(
        wait_until(Duration::from_secs(20), || metric(
            &lessl,
            "lessl_callbacks_total{outcome=\"refused\"}",
            false
        ) == Some(1)),
        "no refusal counted"
    );
    assert_eq!(
        metric(&lessl, "lessl_callback_attempts_failed_total", false),
        Some(1)
    );
    wait_until(Duration::from_secs(10), || {
        lessl.log().contains("callback to http://127.0.0.1")
    });
    assert!(
        lessl.log().contains("callback to http://127.0.0.1"),
        "{}",
        lessl.log()
    );
    assert_eq!(hook.accepts.load(Ordering::SeqCst), 0);
    lessl.finish();
}

#[test]
fn a_5xx_is_retried_and_a_4xx_is_not() {
    let hook = Hook::start(&[500, 200], None);
    let lessl = Lessl::start(&["--src-allow", "127.0.0.1/32"]);
    let body =
        json!({"image": BUSYBOX, "cmd": ["true"], "callback_url": hook.url("/x?key=hunter2")});
    lessl.post(&body.to_string()).expect(201);
    let got = hook.wait_for(2);
    assert_eq!(got[0].body, got[1].body, "a retry sends the same body");
    assert_eq!(got[1].line, "POST /x?key=hunter2 HTTP/1.1");
    // The failure is logged, without the query that may hold the receiver's secret.
    // The log is read from Lessl's stderr as it comes: wait for the line.
    wait_until(Duration::from_secs(10), || {
        lessl.log().contains("attempt 1 failed")
    });
    let log = lessl.log();
    assert!(log.contains("attempt 1 failed"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    assert!(wait_until(Duration::from_secs(10), || metric(
        &lessl,
        "lessl_callbacks_total{outcome=\"delivered\"}",
        false
    ) == Some(1)));
    assert_eq!(
        metric(&lessl, "lessl_callback_attempts_failed_total", false),
        Some(1)
    );

    let refusing = Hook::start(&[404], None);
    let body = json!({"image": BUSYBOX, "cmd": ["true"], "callback_url": refusing.url("/")});
    lessl.post(&body.to_string()).expect(201);
    refusing.wait_for(1);
    assert!(wait_until(Duration::from_secs(10), || metric(
        &lessl,
        "lessl_callbacks_total{outcome=\"rejected\"}",
        false
    ) == Some(1)));
    // Past the backoff a retry would have come in.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(refusing.accepts.load(Ordering::SeqCst), 1);
    lessl.finish();
}

/// The receiver holds its answer until the test has the POST's own answer: a callback that
/// delayed the answer would hang this test, whatever the machine's load.
#[test]
fn a_slow_receiver_never_delays_the_answer() {
    let (release, gate): (Sender<()>, Receiver<()>) = channel();
    let hook = Hook::start(&[], Some(gate));
    let lessl = Lessl::start(&["--src-allow", "127.0.0.1/32"]);
    let body = json!({"image": BUSYBOX, "cmd": ["echo done"], "callback_url": hook.url("/")});
    let v = lessl.post(&body.to_string()).expect(201).json();
    assert_eq!(v["results"][0]["stdout"], "done\n");
    release.send(()).unwrap();
    hook.wait_for(1);
    assert!(wait_until(Duration::from_secs(10), || metric(
        &lessl,
        "lessl_callbacks_total{outcome=\"delivered\"}",
        false
    ) == Some(1)));
    lessl.finish();
}

#[test]
fn each_run_calls_back_put_and_unwaited_post_included() {
    let hook = Hook::start(&[], None);
    let lessl = Lessl::start(&["--src-allow", "127.0.0.1/32"]);
    // A daemon: its creating run, then each PUT's run.
    let d = lessl
        .post(
            &json!({"image": BUSYBOX, "daemon": true, "callback_url": hook.url("/daemon")})
                .to_string(),
        )
        .expect(201)
        .json();
    let id = d["id"].as_str().unwrap().to_string();
    hook.wait_for(1);
    for i in 0..2 {
        lessl
            .put(&id, &json!({"cmd": [format!("echo run {i}")]}).to_string())
            .expect(200);
    }
    // A PUT naming its own callback_url is called back there instead.
    let other = Hook::start(&[], None);
    lessl
        .put(
            &id,
            &json!({"cmd": ["echo elsewhere"], "callback_url": other.url("/other")}).to_string(),
        )
        .expect(200);
    let got = hook.wait_for(3);
    let mut outputs: Vec<String> = got[1..]
        .iter()
        .map(|r| {
            r.json()["results"][0]["stdout"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    outputs.sort();
    assert_eq!(outputs, ["run 0\n", "run 1\n"]);
    assert!(got.iter().all(|r| r.json()["id"] == id.as_str()));
    let elsewhere = other.wait_for(1);
    assert_eq!(elsewhere[0].json()["results"][0]["stdout"], "elsewhere\n");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hook.received().len(), 3);
    lessl.delete(&id).expect(204);

    // ?wait=false: answered at once (202), called back when the run has ended.
    let unwaited = Hook::start(&[], None);
    let body = json!({"image": BUSYBOX, "cmd": ["sleep 1; echo late"],
                      "callback_url": unwaited.url("/async")});
    let v = lessl
        .request("POST", "/tasks?wait=false", Some(&body.to_string()))
        .expect(202)
        .json();
    let got = unwaited.wait_for(1);
    let view = got[0].json();
    assert_eq!(view["id"], v["id"]);
    assert_eq!(view["results"][0]["stdout"], "late\n");
    assert_eq!(view["state"], "finished");
    assert!(wait_until(Duration::from_secs(20), || lessl
        .containers()
        .is_empty()));
    lessl.finish();
}

#[test]
fn a_bad_callback_url_is_a_400_naming_it() {
    let lessl = Lessl::start(&[]);
    for url in [
        "ftp://example.com/x",
        "not a url",
        "http://u:p@example.com/",
    ] {
        let e = lessl
            .post(&json!({"image": BUSYBOX, "cmd": ["true"], "callback_url": url}).to_string())
            .expect(400)
            .json();
        assert_eq!(e["error"]["field"], "callback_url", "{url}: {e}");
    }
    assert!(lessl.containers().is_empty());
    lessl.finish();
}
