//! Resources from URLs and volumes, through the API against real containers: downloads that
//! land and run, SSRF refusals that never reach the server, redirects checked per hop, caps
//! and deadlines that leave nothing behind, named volumes and allowed host paths.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;

/// A tiny HTTP server on 127.0.0.x that counts the connections it accepts.
struct Origin {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Origin {
    fn start(ip: &str, redirect_to: Option<String>) -> Origin {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                counter.fetch_add(1, Ordering::SeqCst);
                let redirect_to = redirect_to.clone();
                std::thread::spawn(move || serve(conn, redirect_to));
            }
        });
        Origin { port, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn serve(mut conn: TcpStream, redirect_to: Option<String>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
    }
    let ok = |body: &[u8]| {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let _ = match path.as_str() {
        "/hello.sh" => conn.write_all(&ok(b"echo Hello from a download\n")),
        "/redirect" => conn.write_all(
            format!(
                "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                redirect_to.unwrap_or_default()
            )
            .as_bytes(),
        ),
        "/big" => {
            // Declares nothing: the cap must hold on the streamed bytes.
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            let chunk = vec![b'z'; 1 << 16];
            for _ in 0..(200 << 4) {
                if conn.write_all(&chunk).is_err() {
                    break;
                }
            }
            Ok(())
        }
        "/slow" => {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n");
            for _ in 0..1000 {
                if conn.write_all(b"s").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        }
        "/missing" => conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        _ => conn.write_all(&ok(b"other\n")),
    };
}

#[test]
fn a_download_lands_and_runs() {
    let origin = Origin::start("127.0.0.1", None);
    let lessl = Lessl::start(&["--src-allow", "127.0.0.1/32"]);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "pwd": "/opt",
                    "resources": [{"src": origin.url("/hello.sh"), "dest": "/opt", "mode": "0755"},
                                  {"src": origin.url("/other"), "dest": "/opt/sub"}],
                    "cmd": ["./hello.sh", "stat -c %a hello.sh sub/other", "cat sub/other"]})
            .to_string(),
        )
        .expect(201)
        .json();
    let r = &v["results"];
    assert_eq!(r[0]["stdout"], "Hello from a download\n", "{v}");
    assert_eq!(r[1]["stdout"], "755\n644\n");
    assert_eq!(r[2]["stdout"], "other\n");
    assert_eq!(origin.hits(), 2);
    lessl.finish();
}

#[test]
fn loopback_is_refused_without_src_allow_and_never_contacted() {
    let origin = Origin::start("127.0.0.1", None);
    let lessl = Lessl::start(&[]);
    let port = origin.port;
    for host in [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "[::ffff:127.0.0.1]",
        "localhost",
        "0.0.0.0",
    ] {
        let url = format!("http://{host}:{port}/hello.sh");
        let v = lessl
            .post(
                &json!({"image": BUSYBOX, "resources": [{"src": url, "dest": "/opt"}]}).to_string(),
            )
            .expect(400)
            .json();
        assert_eq!(v["error"]["field"], "resources[0].src", "{host}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--src-allow")
                || host == "localhost",
            "{v}"
        );
    }
    for url in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "gopher://127.0.0.1/x",
        "http://user:pw@127.0.0.1/x",
    ] {
        let v = lessl
            .post(
                &json!({"image": BUSYBOX, "resources": [{"src": url, "dest": "/opt"}]}).to_string(),
            )
            .expect(400)
            .json();
        assert_eq!(v["error"]["field"], "resources[0].src", "{url}");
    }
    assert_eq!(origin.hits(), 0, "a refused download reached the server");
    assert!(lessl.containers().is_empty());
    lessl.finish();
}

#[test]
fn a_redirect_to_a_refused_host_is_stopped_at_the_hop() {
    let inner = Origin::start("127.0.0.2", None);
    let target = format!("http://127.0.0.2:{}/hello.sh", inner.port);
    let outer = Origin::start("127.0.0.1", Some(target));
    let lessl = Lessl::start(&["--src-allow", "127.0.0.1/32"]);
    let v = lessl
        .post(&json!({"image": BUSYBOX, "resources": [{"src": outer.url("/redirect"), "dest": "/opt"}]}).to_string())
        .expect(400)
        .json();
    assert_eq!(v["error"]["field"], "resources[0].src");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.2"),
        "{v}"
    );
    assert_eq!(outer.hits(), 1);
    assert_eq!(inner.hits(), 0, "the refused hop was contacted");
    assert!(lessl.containers().is_empty());
    lessl.finish();
}

#[test]
fn caps_and_deadlines_stop_downloads_with_nothing_written() {
    let origin = Origin::start("127.0.0.1", None);
    let lessl = Lessl::start(&[
        "--src-allow",
        "127.0.0.1",
        "--max-download-bytes",
        "1048576",
        "--download-timeout",
        "1",
    ]);
    let rss_before = rss_kib(lessl.pid());
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "resources": [{"src": origin.url("/big"), "dest": "/opt"}]})
                .to_string(),
        )
        .expect(413)
        .json();
    assert_eq!(v["error"]["field"], "resources[0].src");
    let rss_after = rss_kib(lessl.pid());
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB on a capped download"
    );
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "resources": [{"src": origin.url("/slow"), "dest": "/opt"}]})
                .to_string(),
        )
        .expect(504)
        .json();
    assert_eq!(v["error"]["field"], "resources[0].src");
    let v = lessl
        .post(&json!({"image": BUSYBOX, "resources": [{"src": origin.url("/missing"), "dest": "/opt"}]}).to_string())
        .expect(502)
        .json();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("404"),
        "{v}"
    );
    assert!(
        lessl.containers().is_empty(),
        "a failed download left a container"
    );
    lessl.finish();
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_named_volume_is_shared_by_two_tasks() {
    let lessl = Lessl::start(&["--allow-volumes", "vol-*"]);
    let volume = unique("vol");
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "resources": [{"mnt": format!("{volume}:/shared")}],
                      "cmd": ["echo from-first > /shared/note"]})
            .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["exit_code"], 0);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "resources": [{"mnt": format!("{volume}:/data:ro")}],
                      "cmd": ["cat /data/note", "echo x > /data/other"]})
            .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["stdout"], "from-first\n");
    assert_ne!(
        v["results"][1]["exit_code"], 0,
        "a read-only mount was writable"
    );
    assert!(wait_until(Duration::from_secs(10), || lessl
        .containers()
        .is_empty()));
    lessl
        .request("DELETE", &format!("/volumes/{volume}"), None)
        .expect(204);
    lessl.finish();
}

#[test]
fn host_paths_need_allow_bind() {
    let dir = std::env::temp_dir().join(unique("bind"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("host.txt"), "from the host\n").unwrap();
    let mnt = format!("{}:/host:ro", dir.display());
    let lessl = Lessl::start(&[]);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "resources": [{"mnt": mnt}], "cmd": ["cat /host/host.txt"]})
                .to_string(),
        )
        .expect(400)
        .json();
    assert_eq!(v["error"]["field"], "resources[0].mnt");
    lessl.finish();

    // The temporary directory is writable by anyone: only as a read-only tree.
    let prefix = std::env::temp_dir();
    let lessl = Lessl::start(&["--allow-bind", &format!("{}:ro", prefix.display())]);
    let v = lessl
        .post(
            &json!({"image": BUSYBOX, "resources": [{"mnt": mnt}], "cmd": ["cat /host/host.txt"]})
                .to_string(),
        )
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["stdout"], "from the host\n");
    // `..` cannot climb out of the allowed prefix.
    let sneaky = format!("{}/../etc:/etc2:ro", prefix.display());
    lessl
        .post(&json!({"image": BUSYBOX, "resources": [{"mnt": sneaky}]}).to_string())
        .expect(400);
    assert!(wait_until(Duration::from_secs(10), || lessl
        .containers()
        .is_empty()));
    lessl.finish();
    std::fs::remove_dir_all(dir).unwrap();
}
