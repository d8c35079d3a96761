//! Test harness: starts real `lessl serve` processes against the real Docker Engine, talks
//! HTTP/1.1 to them with a tiny blocking client, and checks Docker with its own CLI as an
//! independent witness. Each Lessl gets its own `--instance`, so tests running in parallel
//! never see (or clean up) each other's containers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BUSYBOX: &str = "lessl-test/busybox";
pub const NOSHELL: &str = "lessl-test/noshell";

/// A unique instance name per test (and per process), valid as a Docker name part.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        nanos & 0xffff
    )
}

pub struct Lessl {
    child: Option<Child>,
    /// host:port it listens on.
    pub addr: String,
    /// Its `--instance`, which labels all its containers.
    pub instance: String,
    /// Everything it printed on stderr so far.
    pub log: Arc<Mutex<String>>,
    args: Vec<String>,
}

impl Lessl {
    /// A fresh Lessl with a new instance name and the given extra flags.
    pub fn start(extra: &[&str]) -> Lessl {
        Lessl::start_instance(&unique("t"), extra)
    }

    /// A Lessl for `instance`, e.g. to restart one that was killed.
    pub fn start_instance(instance: &str, extra: &[&str]) -> Lessl {
        Lessl::start_instance_env(instance, extra, &[])
    }

    /// A fresh Lessl with extra flags and environment variables (`DOCKER_HOST`, say).
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Lessl {
        Lessl::start_instance_env(&unique("t"), extra, env)
    }

    fn start_instance_env(instance: &str, extra: &[&str], env: &[(&str, &str)]) -> Lessl {
        Lessl::start_bin(env!("CARGO_BIN_EXE_lessl"), instance, extra, env)
    }

    /// A fresh Lessl from another build of it (the benchmark's "before" figures).
    pub fn start_binary(bin: &str, extra: &[&str]) -> Lessl {
        Lessl::start_bin(bin, &unique("t"), extra, &[])
    }

    fn start_bin(bin: &str, instance: &str, extra: &[&str], env: &[(&str, &str)]) -> Lessl {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--instance".into(),
            instance.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        // Kept results go to a scratch directory, never the machine's /var/lib/lessl; each
        // instance has its own subdirectory in it. Tests of the state directory pass their own.
        if !extra.contains(&"--state-dir") {
            args.push("--state-dir".into());
            args.push(scratch_state_dir().display().to_string());
        }
        let mut child = Command::new(bin)
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lessl");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    // Text or JSON lines: the address ends at a quote or the line's end.
                    if let Some(addr) = line.split("listening on ").nth(1) {
                        if let Some(tx) = tx.take() {
                            let addr = addr.split('"').next().unwrap_or(addr);
                            let _ = tx.send(addr.trim().to_string());
                        }
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("lessl did not start; log:\n{}", log.lock().unwrap());
            }
        };
        Lessl {
            child: Some(child),
            addr,
            instance: instance.to_string(),
            log,
            args,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.request_with(method, path, body, &[("Content-Type", "application/json")])
    }

    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        http(&self.addr, method, path, body.map(str::as_bytes), headers)
    }

    pub fn post(&self, body: &str) -> Resp {
        self.request("POST", "/tasks", Some(body))
    }

    pub fn put(&self, reference: &str, body: &str) -> Resp {
        self.request("PUT", &format!("/tasks/{reference}"), Some(body))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, None)
    }

    pub fn delete(&self, reference: &str) -> Resp {
        self.request("DELETE", &format!("/tasks/{reference}"), None)
    }

    /// Containers Docker has for this instance, running or not.
    pub fn containers(&self) -> Vec<String> {
        containers_with_label(&format!("lessl.instance={}", self.instance))
    }

    /// Sends `sig` (a `kill` signal name) to this Lessl, by its own pid.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("lessl did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends the test: stops Lessl cleanly and asserts none of its containers is left.
    pub fn finish(mut self) {
        let code = self.terminate();
        assert_eq!(code, Some(0), "lessl exit status; log:\n{}", self.log());
        let left = self.containers();
        assert!(
            left.is_empty(),
            "containers left behind: {left:?}\nlog:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Lessl {
    fn drop(&mut self) {
        // A failed test still stops its Lessl, and first deletes the daemon tasks it left
        // (SIGTERM keeps those by design), so one failure does not leak into the leak check.
        if self.child.is_some() {
            if std::thread::panicking() {
                let list = self.get("/tasks");
                if let Ok(Value::Array(tasks)) = serde_json::from_slice::<Value>(&list.body) {
                    for t in tasks {
                        if let Some(id) = t["id"].as_str() {
                            self.delete(id);
                        }
                    }
                }
            }
            self.terminate();
        }
    }
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The state directory Lessls of tests share unless they pass their own.
pub fn scratch_state_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("lessl-state")
}

/// A fresh, empty directory for one test's `--state-dir`.
pub fn temp_state_dir(test: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique(test));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "body: {}", self.text());
        self
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut raw = Vec::new();
    send(addr, method, path, body, headers, &mut raw);
    parse_response(&raw)
}

/// Sends one request and reads the whole raw answer into `raw` (cleared first; a caller that
/// reuses it across requests pays no growth). Nagle's algorithm is off: the head and the
/// body are two writes, and the second must not wait for the server's delayed ACK.
pub fn send(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
    raw: &mut Vec<u8>,
) {
    let mut s = TcpStream::connect(addr).expect("connect to lessl");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        // The server may answer (413) and close before reading a large body.
        let _ = s.write_all(b);
    }
    raw.clear();
    let _ = s.read_to_end(raw);
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// Runs the docker CLI and returns its stdout; panics on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn containers_with_label(label: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label={label}"),
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
/// The value of one sample of `GET /metrics` (`name{labels}`), 0 when absent.
pub fn metric(lessl: &Lessl, sample: &str) -> u64 {
    let text = lessl.get("/metrics").expect(200).text();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a container with this id exists at all.
pub fn container_exists(id: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "--type", "container", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs an engine's CLI (`program` with `target` naming the engine, then `args`) and returns
/// its trimmed stdout, or what it said on stderr.
pub fn engine_cli(program: &str, target: &[&str], args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(target)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Imports `lessl-test/busybox` into a private engine the way contrib/test-env.sh does: a
/// root file system in `dir/rootfs` holding the static busybox and its applet links, piped
/// as a tar into `import` (the engine's CLI up to its `import` verb).
pub fn import_busybox(dir: &std::path::Path, import: &str) -> Result<(), String> {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    for d in [&bin, &root.join("tmp"), &root.join("etc")] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .map_err(|e| format!("copy /bin/busybox: {e}"))?;
    // The original lists the applets: the copy was just written by this process, and a
    // child another test thread forks meanwhile holds it open for writing until its own
    // exec, so executing the copy can fail with "Text file busy".
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .map_err(|e| e.to_string())?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| e.to_string())?;
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")
        .map_err(|e| e.to_string())?;
    let script = format!(
        "chmod 1777 {root}/tmp && tar -C {root} -c . | {import} import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin' - {image}",
        root = root.display(),
        image = BUSYBOX,
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&root);
    if !out.status.success() {
        return Err(format!(
            "{import} import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

pub mod fake_docker;
pub mod private_dockerd;
pub mod private_podman;
