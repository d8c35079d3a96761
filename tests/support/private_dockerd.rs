//! A second, private Docker daemon started by a test, which the test may kill and restart
//! without disturbing the shared engine other tests use. It lives in a short temporary
//! directory D (Unix socket paths are limited to 108 bytes): `D/docker.sock`, `D/data`,
//! `D/exec`, `D/docker.pid`, `D/dockerd.log`, and it gets its own `lessl-test/busybox`
//! imported the way contrib/test-env.sh does. Drop removes every container on it, stops it and
//! removes D.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateDockerd {
    /// The directory this test created; the only one it ever removes.
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    /// `--storage-driver=btrfs` on a loop-mounted btrfs image at `D/data`, whose storage
    /// driver can cap each container's writable layer.
    btrfs: bool,
    /// `D/daemon.json` configures gVisor's `runsc` as a runtime named `runsc`.
    runsc: bool,
    /// Also listens on `tcp://127.0.0.1:PORT` with TLS, verifying client certificates
    /// against the CA in `D/tls` (see [`PrivateDockerd::start_tls`]).
    pub tls_port: Option<u16>,
}

impl PrivateDockerd {
    /// Starts a private dockerd with a busybox image, or says why it cannot.
    pub fn start() -> Result<PrivateDockerd, String> {
        PrivateDockerd::start_with(false, false)
    }

    /// A private dockerd that knows gVisor as the runtime `runsc` (`--platform=ptrace
    /// --network=none`, which work without KVM); its default runtime stays runc.
    pub fn start_runsc() -> Result<PrivateDockerd, String> {
        PrivateDockerd::start_with(false, true)
    }

    /// A private dockerd whose data root is a fresh 3 GiB btrfs file system on a loop device
    /// (needs btrfs-progs and the kernel's btrfs; contrib/test-env.sh installs the former).
    pub fn start_btrfs() -> Result<PrivateDockerd, String> {
        PrivateDockerd::start_with(true, false)
    }

    /// A private dockerd that also listens on loopback TCP with TLS both ways. Certificates
    /// are made here with the openssl CLI: a CA, the engine's for IP 127.0.0.1, and a client
    /// pair in `D/tls/client` laid out as `DOCKER_CERT_PATH` expects (ca.pem, cert.pem,
    /// key.pem).
    pub fn start_tls() -> Result<PrivateDockerd, String> {
        PrivateDockerd::start_full(false, false, true)
    }

    fn start_with(btrfs: bool, runsc: bool) -> Result<PrivateDockerd, String> {
        PrivateDockerd::start_full(btrfs, runsc, false)
    }

    fn start_full(btrfs: bool, runsc: bool, tls: bool) -> Result<PrivateDockerd, String> {
        if Command::new("dockerd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            return Err("dockerd is not installed".into());
        }
        let dir = PathBuf::from(format!("/tmp/{}", super::unique("lf")));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let mut d = PrivateDockerd {
            socket: dir.join("docker.sock"),
            dir,
            child: None,
            btrfs,
            runsc,
            tls_port: None,
        };
        if tls {
            d.make_certs()?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .port();
            d.tls_port = Some(port);
        }
        if btrfs {
            d.mount_btrfs()?;
        }
        if runsc {
            let path = Command::new("sh")
                .args(["-c", "command -v runsc"])
                .output()
                .map_err(|e| e.to_string())?;
            let path = String::from_utf8_lossy(&path.stdout).trim().to_string();
            if path.is_empty() {
                return Err("runsc is not installed (Debian: apt-get install runsc)".into());
            }
            let config = serde_json::json!({"runtimes": {"runsc": {
                "path": path, "runtimeArgs": ["--platform=ptrace", "--network=none"]}}});
            std::fs::write(d.dir.join("daemon.json"), config.to_string())
                .map_err(|e| e.to_string())?;
        }
        d.up()?;
        d.import_busybox()?;
        Ok(d)
    }

    fn make_certs(&self) -> Result<(), String> {
        let tls = self.dir.join("tls");
        std::fs::create_dir_all(tls.join("client")).map_err(|e| e.to_string())?;
        let script = r#"set -e
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca-key.pem
openssl req -x509 -new -key ca-key.pem -out ca.pem -days 1 -subj /CN=lessl-test-ca
key server-key.pem
openssl req -new -key server-key.pem -out server.csr -subj /CN=127.0.0.1
printf 'subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth
' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial     -out server-cert.pem -days 1 -extfile server.ext 2>/dev/null
key client/key.pem
openssl req -new -key client/key.pem -out client.csr -subj /CN=lessl
printf 'extendedKeyUsage=clientAuth
' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial     -out client/cert.pem -days 1 -extfile client.ext 2>/dev/null
cp ca.pem client/ca.pem
"#;
        let out = Command::new("sh")
            .args(["-c", script])
            .current_dir(&tls)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "making test certificates failed (is the openssl CLI installed?): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// `DOCKER_CERT_PATH` for a client of the TLS listener.
    pub fn client_cert_path(&self) -> String {
        self.dir.join("tls/client").display().to_string()
    }

    fn mount_btrfs(&self) -> Result<(), String> {
        let image = self.dir.join("btrfs.img");
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let script = format!(
            "truncate -s 3G {img} && mkfs.btrfs -q {img} && mount -o loop {img} {data}",
            img = image.display(),
            data = data.display()
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "cannot make a btrfs data root (install btrfs-progs; the kernel needs btrfs \
                 and loop devices): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Bytes used on the data root's file system (the btrfs image), as statfs reports them.
    pub fn data_used_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=used"])
            .arg(self.dir.join("data"))
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the used bytes")
    }

    pub fn socket_str(&self) -> String {
        self.socket.to_str().unwrap().to_string()
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The daemon's pid, from its pidfile.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("docker.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the daemon answers on its socket.
    pub fn answers(&self) -> bool {
        Command::new("docker")
            .args(["-H", &self.host(), "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Starts the daemon (again) with the same flags and waits until it answers.
    pub fn up(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "private dockerd already running");
        let d = self.dir.display();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .map_err(|e| e.to_string())?;
        let driver = self.btrfs.then_some("--storage-driver=btrfs".to_string());
        let config = self.runsc.then(|| format!("--config-file={d}/daemon.json"));
        let tls: Vec<String> = match self.tls_port {
            Some(port) => vec![
                "-H".into(),
                format!("tcp://127.0.0.1:{port}"),
                "--tlsverify".into(),
                format!("--tlscacert={d}/tls/ca.pem"),
                format!("--tlscert={d}/tls/server-cert.pem"),
                format!("--tlskey={d}/tls/server-key.pem"),
            ],
            None => Vec::new(),
        };
        let child = Command::new("dockerd")
            .args(driver)
            .args(config)
            .args(tls)
            .args([
                &format!("--data-root={d}/data"),
                &format!("--exec-root={d}/exec"),
                "-H",
                &format!("unix://{d}/docker.sock"),
                &format!("--pidfile={d}/docker.pid"),
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--cgroup-parent=/lessl-fault",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn dockerd: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.answers() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "private dockerd exited with {status} at start; its log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.down();
        Err(format!(
            "private dockerd did not answer within 30 s; its log:\n{}",
            self.log_tail()
        ))
    }

    /// SIGTERM to the daemon's own pid, then waits for it to exit (SIGKILL after 40 s).
    /// Returns how long the stop took.
    pub fn down(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        // The pidfile names the same process we spawned; signal exactly that pid.
        let pid = self.pid().unwrap_or(child.id());
        assert_eq!(pid, child.id(), "pidfile names another process");
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if child.try_wait().unwrap().is_some() {
                return Ok(started.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("private dockerd ignored SIGTERM for 40 s; killed".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the docker CLI against this daemon.
    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        super::engine_cli("docker", &["-H", &self.host()], args)
    }

    /// Containers on this daemon carrying `label`, running or not.
    pub fn containers_with_label(&self, label: &str) -> Vec<String> {
        self.docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label={label}"),
        ])
        .expect("list containers on the private dockerd")
        .lines()
        .map(str::to_string)
        .collect()
    }

    fn import_busybox(&self) -> Result<(), String> {
        let import = format!("docker -H {host}", host = self.host());
        super::import_busybox(&self.dir, &import)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Whether anything is still mounted under `dir`.
fn mounted_under(dir: &Path) -> bool {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1).is_some_and(|m| m.starts_with(&prefix)))
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Everything on this daemon is the test's own: it is private.
            if let Ok(ids) = self.docker(&["ps", "-aq"]) {
                for id in ids.lines().filter(|l| !l.is_empty()) {
                    let _ = self.docker(&["rm", "-f", id]);
                }
            }
            if let Err(e) = self.down() {
                eprintln!("private dockerd: {e}");
            }
        }
        if self.btrfs {
            // `mount -o loop` frees the loop device when the file system is unmounted.
            let _ = Command::new("umount").arg(self.dir.join("data")).status();
        }
        if mounted_under(&self.dir) {
            eprintln!(
                "private dockerd: mounts remain under {}; not removing it",
                self.dir.display()
            );
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("private dockerd: removing {}: {e}", self.dir.display());
        }
    }
}
