//! Operator-facing packaging: systemd readiness and socket activation against real `lessl
//! serve` processes, `contrib/lessl.env` against the flags, the units through
//! `systemd-analyze verify`, the static release binary, and the `FROM scratch` image running
//! a task on the real engine.

mod support;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_lessl");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const MAX_RELEASE_BYTES: u64 = 6 << 20;

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(&format!("lessl-ops-{name}")));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `lessl` process with its stderr collected, and the address of its "listening on" line.
struct Proc {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    listening: Receiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lessl");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, listening) = channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Proc {
            child: Some(child),
            log,
            listening,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_listening(&mut self) -> String {
        match self.listening.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let status = self.wait_exit(Duration::from_secs(1));
                panic!(
                    "lessl did not listen (exit: {status:?}); log:\n{}",
                    self.log()
                )
            }
        }
    }

    /// Waits for the process to exit on its own; kills it past `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                self.child = None;
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM by its own pid, then the exit code.
    fn terminate(&mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        self.wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no exit within 30 s of SIGTERM; log:\n{}", self.log()))
            .code()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn recv_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8(buf[..n].to_vec()).expect("UTF-8 notification")
}

fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// Starts Lessl with `NOTIFY_SOCKET=notify_env`, expects READY=1 (from its own pid, once the
/// API answers) and, after SIGTERM, STOPPING=1 and a clean exit.
fn readiness_round_trip(notify_env: OsString, receiver: &UnixDatagram) {
    receiver
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let instance = unique("ops-notify");
    let mut lessl = Proc::spawn(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--instance", &instance])
            .env("LESSL_STATE_DIR", support::scratch_state_dir())
            .env("NOTIFY_SOCKET", &notify_env),
    );
    let ready = recv_message(receiver);
    assert_eq!(field(&ready, "READY"), Some("1"), "message: {ready:?}");
    let pid = lessl.pid().to_string();
    assert_eq!(field(&ready, "MAINPID"), Some(pid.as_str()), "{ready:?}");
    let addr = field(&ready, "STATUS")
        .and_then(|s| s.strip_prefix("listening on "))
        .unwrap_or_else(|| panic!("no listening STATUS in {ready:?}"))
        .to_string();
    assert_eq!(lessl.wait_listening(), addr);
    // READY means the socket accepts: a request right away is served.
    http(&addr, "GET", "/health", None, &[]).expect(200);

    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let stopping = recv_message(receiver);
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    let code = lessl
        .wait_exit(Duration::from_secs(30))
        .expect("exit after SIGTERM")
        .code();
    assert_eq!(code, Some(0), "log:\n{}", lessl.log());
}

#[test]
fn readiness_is_notified_on_a_socket_path() {
    let dir = TempDir::new("notify");
    let path = dir.0.join("notify");
    let receiver = UnixDatagram::bind(&path).unwrap();
    readiness_round_trip(path.into_os_string(), &receiver);
}

#[test]
fn readiness_is_notified_on_an_abstract_socket() {
    // systemd's own notify socket is a path, but user managers and test harnesses use
    // abstract names: `@name` in the variable, a leading NUL on the wire.
    let name = unique("lessl-ops-notify");
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let receiver = UnixDatagram::bind_addr(&addr).unwrap();
    readiness_round_trip(format!("@{name}").into(), &receiver);
}

/// Spawns `lessl serve ARGS` the way systemd would for socket activation: `fd` as fd 3,
/// `LISTEN_FDS=1` and `LISTEN_PID` set to the pid of the process that execs lessl. The shell
/// knows its own pid (`$$`) and `exec` keeps it, which sidesteps setting an environment
/// variable between fork and exec.
fn spawn_activated(fd: RawFd, args: &[&str]) -> Proc {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
        .arg(BIN)
        .arg("serve")
        .args(args)
        .env("LESSL_STATE_DIR", support::scratch_state_dir());
    // SAFETY: between fork and exec only dup2/fcntl run, both async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto fd 3 drops close-on-exec; when the socket already is fd 3 the flag
            // has to be cleared by hand.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Proc::spawn(&mut cmd)
}

#[test]
fn socket_activation_serves_an_inherited_tcp_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let instance = unique("ops-act");
    // A --listen that cannot be bound: serving at all proves the inherited socket was used.
    let mut lessl = spawn_activated(
        listener.as_raw_fd(),
        &[
            "--instance",
            &instance,
            "--listen",
            "unix:/nonexistent-lessl-dir/x.sock",
        ],
    );
    assert_eq!(lessl.wait_listening(), addr);
    // The test's own copy keeps the socket open, so requests below could reach either
    // holder; only Lessl accepts, so a 200 is Lessl's.
    let r = http(&addr, "GET", "/health", None, &[]).expect(200);
    assert!(r.text().contains("docker_api"), "{}", r.text());
    assert!(lessl.log().contains("socket activation"), "{}", lessl.log());
    assert_eq!(lessl.terminate(), Some(0), "log:\n{}", lessl.log());
}

#[test]
fn socket_activation_serves_an_inherited_unix_socket_and_leaves_its_file() {
    let dir = TempDir::new("act-unix");
    let path = dir.0.join("lessl.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let instance = unique("ops-act");
    // --listen names the same path: Lessl must neither bind it nor remove it at exit, since
    // the file belongs to the .socket unit that keeps listening for the next start.
    let listen = format!("unix:{}", path.display());
    let mut lessl = spawn_activated(
        listener.as_raw_fd(),
        &["--instance", &instance, "--listen", &listen],
    );
    assert_eq!(lessl.wait_listening(), listen);
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: lessl\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(lessl.terminate(), Some(0), "log:\n{}", lessl.log());
    assert!(path.exists(), "the inherited socket's file was removed");
}

#[test]
fn socket_activation_keeps_the_token_rule() {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let instance = unique("ops-act");
    let mut lessl = spawn_activated(listener.as_raw_fd(), &["--instance", &instance]);
    let status = lessl
        .wait_exit(Duration::from_secs(20))
        .expect("lessl refuses and exits");
    assert!(!status.success(), "log:\n{}", lessl.log());
    // Its stderr is read by another thread, which may still be catching up with the exit.
    let said = |l: &str| l.contains("socket activation") && l.contains("token");
    wait_until(Duration::from_secs(5), || said(&lessl.log()));
    let log = lessl.log();
    assert!(said(&log), "{log}");
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every `LESSL_*` variable of `lessl serve`, in order, as clap knows them.
fn config_keys() -> Vec<String> {
    let keys: Vec<String> = lessl::config::ServeArgs::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|k| k.to_string_lossy().into_owned())
        .filter(|k| k.starts_with("LESSL_"))
        .collect();
    assert!(keys.len() > 30, "clap lists only {} keys", keys.len());
    keys
}

/// The default value of `lessl serve --FLAG`, as clap knows it.
fn serve_default(flag: &str) -> String {
    let command = lessl::config::ServeArgs::command();
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(flag))
        .unwrap_or_else(|| panic!("lessl serve has no --{flag}"));
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    values.join(",")
}

/// `KEY=value` of each commented-out assignment (`#KEY=value`) in contrib/lessl.env.
fn env_file_entries() -> Vec<(String, String)> {
    read("contrib/lessl.env")
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn lessl_env_lists_every_config_key_with_a_working_default() {
    let entries = env_file_entries();
    let listed: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    let keys = config_keys();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !listed.contains(&k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "contrib/lessl.env lacks {missing:?} (add each, commented out, with its default)"
    );
    let unknown: Vec<&&str> = listed
        .iter()
        .filter(|k| k.starts_with("LESSL_") && !keys.iter().any(|c| c == *k))
        .collect();
    assert!(
        unknown.is_empty(),
        "contrib/lessl.env has stale keys {unknown:?}"
    );
    assert!(listed.contains(&"DOCKER_HOST"), "DOCKER_HOST is missing");

    // The documented defaults are values Lessl accepts: uncommented all at once, it starts.
    let instance = unique("ops-env");
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--instance", &instance]);
    for (k, v) in entries.iter().filter(|(_, v)| !v.is_empty()) {
        cmd.env(k, v);
    }
    // Every default but the state directory, which a test must not fill on the host.
    cmd.env("LESSL_STATE_DIR", support::scratch_state_dir());
    let mut lessl = Proc::spawn(&mut cmd);
    lessl.wait_listening();
    assert_eq!(lessl.terminate(), Some(0), "log:\n{}", lessl.log());
}

/// The value of `key=` in a unit file (the last one wins, as in systemd).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let service = read("contrib/lessl.service");
    let socket = read("contrib/lessl.socket");
    assert_eq!(unit_value(&service, "Type").as_deref(), Some("notify"));
    assert_eq!(
        unit_value(&service, "ExecStart").as_deref(),
        Some("/usr/local/bin/lessl serve")
    );
    assert_eq!(
        unit_value(&socket, "ListenStream").as_deref(),
        Some("127.0.0.1:8734")
    );
    // Shutdown may take two graces (requests, then container removal) plus Docker calls.
    let grace: f64 = serve_default("shutdown-grace")
        .parse()
        .expect("the default of --shutdown-grace is a number");
    let stop: f64 = unit_value(&service, "TimeoutStopSec")
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop > 2.0 * grace,
        "TimeoutStopSec={stop} must exceed twice the default grace {grace}"
    );

    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "systemd-analyze cannot run ({e}): install it (Debian: apt-get install systemd; \
                 contrib/test-env.sh --setup does it)"
            )
        });
    assert!(out.status.success());
    // ExecStart must name an existing executable: point a copy at the binary under test.
    let dir = TempDir::new("units");
    std::fs::write(
        dir.0.join("lessl.service"),
        service.replace(
            "ExecStart=/usr/local/bin/lessl serve",
            &format!("ExecStart={BIN} serve"),
        ),
    )
    .unwrap();
    std::fs::write(dir.0.join("lessl.socket"), &socket).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.0.join("lessl.socket"))
        .arg(dir.0.join("lessl.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values, which it only reports: any output is a
    // failure.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// The release binary, built first when missing or older than the sources.
fn release_binary() -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _once = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    // Beside the debug binary, so a custom target directory is followed too.
    let bin = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("target/<triple>/debug")
        .join("release/lessl");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let newest = newest_source();
    if built.is_none_or(|b| b < newest) {
        eprintln!("building the release binary (cargo build --release)");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "lessl"])
            .current_dir(ROOT)
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build --release failed");
    }
    assert!(bin.is_file(), "no release binary at {}", bin.display());
    bin
}

fn newest_source() -> SystemTime {
    fn walk(p: &Path, newest: &mut SystemTime) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), newest);
            }
        } else if let Ok(m) = meta.modified() {
            *newest = (*newest).max(m);
        }
    }
    let mut newest = SystemTime::UNIX_EPOCH;
    for rel in ["src", "Cargo.toml", "Cargo.lock"] {
        walk(&Path::new(ROOT).join(rel), &mut newest);
    }
    newest
}

/// What the ELF file says about linking: (has PT_INTERP, has DT_NEEDED, has a symbol table).
fn elf_facts(b: &[u8]) -> (bool, bool, bool) {
    assert!(
        b.len() > 64 && &b[..4] == b"\x7fELF" && b[4] == 2 && b[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, shoff) = (u64_at(0x20), u64_at(0x28));
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    let (shentsize, shnum) = (u16_at(0x3a), u16_at(0x3c));
    let (mut interp, mut needed) = (false, false);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(ph) {
            3 => interp = true, // PT_INTERP: a dynamic loader would be needed
            2 => {
                // PT_DYNAMIC: a static-pie has one, for its own relocations; a shared
                // library dependency shows as DT_NEEDED.
                let (off, size) = (u64_at(ph + 8), u64_at(ph + 0x20));
                for entry in (off..off + size).step_by(16) {
                    match u64_at(entry) {
                        0 => break,
                        1 => needed = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let symtab = (0..shnum).any(|i| u32_at(shoff + i * shentsize + 4) == 2); // SHT_SYMTAB
    (interp, needed, symtab)
}

#[test]
fn release_binary_is_static_stripped_and_small() {
    let bin = release_binary();
    let bytes = std::fs::read(&bin).unwrap();
    let (interp, needed, symtab) = elf_facts(&bytes);
    assert!(!interp, "{} asks for a dynamic loader", bin.display());
    assert!(!needed, "{} needs shared libraries", bin.display());
    assert!(!symtab, "{} is not stripped", bin.display());
    assert!(
        (bytes.len() as u64) < MAX_RELEASE_BYTES,
        "{} is {} bytes, over 6 MiB",
        bin.display(),
        bytes.len()
    );
    eprintln!("release binary: {} bytes", bytes.len());
    let out = Command::new(&bin).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        version.starts_with(&format!("lessl {} ", env!("CARGO_PKG_VERSION")))
            && version.contains("Docker Engine API 1."),
        "{version}"
    );
}

/// The image and container of one test, removed whatever happens.
struct DockerCleanup {
    image: String,
    container: Option<String>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        if let Some(id) = &self.container {
            let _ = Command::new("docker")
                .args(["rm", "-f", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn container_image_runs_a_task_on_the_host_engine() {
    let bin = release_binary();
    // A context of only what the Dockerfile copies, as the documented `tar -c ... |` does.
    let ctx = TempDir::new("image");
    let dest = ctx.0.join("target/x86_64-unknown-linux-musl/release");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::copy(&bin, dest.join("lessl")).unwrap();
    std::fs::copy(Path::new(ROOT).join("Dockerfile"), ctx.0.join("Dockerfile")).unwrap();
    let tag = format!("lessl-test/lessl:{}", unique("ops"));
    let mut cleanup = DockerCleanup {
        image: tag.clone(),
        container: None,
    };
    docker(&["build", "-q", "-t", &tag, ctx.0.to_str().unwrap()]);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let instance = unique("ops-image");
    // As documented: the Engine's socket, and the host's binary at the same path for the
    // agent, since the Engine resolves --agent on the host.
    let agent = bin.to_str().unwrap();
    let id = docker(&[
        "run",
        "-d",
        "--network",
        "host",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &format!("{agent}:{agent}:ro"),
        &tag,
        "serve",
        "--listen",
        &addr,
        "--instance",
        &instance,
        "--agent",
        agent,
    ]);
    cleanup.container = Some(id.clone());
    let logs = || {
        Command::new("docker")
            .args(["logs", &id])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default()
    };
    let up = wait_until(Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    assert!(up, "the container did not listen; logs:\n{}", logs());
    http(&addr, "GET", "/health", None, &[]).expect(200);

    let body = json!({"image": BUSYBOX, "cmd": ["echo from container"]}).to_string();
    let r = http(
        &addr,
        "POST",
        "/tasks",
        Some(body.as_bytes()),
        &[("Content-Type", "application/json")],
    )
    .expect(201);
    let task = r.json();
    assert_eq!(task["state"], "finished", "{task}");
    assert_eq!(task["results"][0]["exit_code"], 0, "{task}");
    assert_eq!(task["results"][0]["stdout"], "from container\n", "{task}");

    docker(&["stop", "-t", "30", &id]);
    let code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &id]);
    assert_eq!(
        code,
        "0",
        "exit code of lessl in the container; logs:\n{}",
        logs()
    );
    assert!(logs().contains("stopped"), "{}", logs());
    docker(&["rm", &id]);
    cleanup.container = None;
    let left = wait_until(Duration::from_secs(10), || {
        containers_with_label(&format!("lessl.instance={instance}")).is_empty()
    });
    assert!(left, "task containers left behind");
    drop(cleanup);
    assert!(
        docker(&["images", "-q", &tag]).is_empty(),
        "image {tag} left behind"
    );
}
