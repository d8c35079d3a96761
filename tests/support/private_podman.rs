//! A private Podman API service started by a test (`podman system service`), with its own
//! storage, run and temporary roots, configuration and socket, so it never shares state with
//! the machine's own Podman or Docker. It lives in a short temporary directory D (Unix socket
//! paths are limited to 108 bytes): `D/podman.sock`, `D/root`, `D/run`, `D/tmp`,
//! `D/containers.conf`, `D/storage.conf`, `D/podman.log`, and it gets its own
//! `lessl-test/busybox` imported the way contrib/test-env.sh does. Drop removes every container
//! and volume on it, stops it, unmounts what its storage mounted under D and removes D.
//!
//! Configuration forced by this kind of host (root without `CAP_SYS_RESOURCE`, no systemd as
//! PID 1): `default_ulimits` is emptied, so containers inherit the service's limits (Podman
//! otherwise asks for more than the host allows and every start fails), the cgroup manager
//! is `cgroupfs`, events go to a file, and locks are files under D rather than the host-wide
//! shared memory segment.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivatePodman {
    /// The directory this test created; the only one it ever removes.
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl PrivatePodman {
    /// Starts a private Podman service with a busybox image, or says why it cannot.
    pub fn start() -> Result<PrivatePodman, String> {
        if Command::new("podman")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            return Err("podman is not installed (Debian: apt-get install podman; \
                        contrib/test-env.sh --setup installs it)"
                .into());
        }
        let dir = PathBuf::from(format!("/tmp/{}", super::unique("lp")));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let mut p = PrivatePodman {
            socket: dir.join("podman.sock"),
            dir,
            child: None,
        };
        p.write_config()?;
        p.up()?;
        p.import_busybox()?;
        Ok(p)
    }

    fn write_config(&self) -> Result<(), String> {
        let d = self.dir.display();
        // `default_ulimits = []`: containers inherit the service's own limits. Podman
        // otherwise raises nofile and nproc past this host's hard limits (runc: "error setting
        // rlimits ... operation not permitted"); even naming this process's own hard limits
        // fails for nproc.
        let containers = format!(
            "[containers]\n\
             default_ulimits = []\n\
             netns = \"none\"\n\
             log_driver = \"k8s-file\"\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = \"{d}/events.log\"\n\
             lock_type = \"file\"\n\
             tmp_dir = \"{d}/tmp\"\n\
             static_dir = \"{d}/root/libpod\"\n\
             volume_path = \"{d}/root/volumes\"\n\
             [network]\n\
             network_config_dir = \"{d}/networks\"\n"
        );
        let storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/run\"\n"
        );
        std::fs::write(self.dir.join("containers.conf"), containers).map_err(|e| e.to_string())?;
        std::fs::write(self.dir.join("storage.conf"), storage).map_err(|e| e.to_string())
    }

    pub fn socket_str(&self) -> String {
        self.socket.to_str().unwrap().to_string()
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Whether the service answers on its socket.
    pub fn answers(&self) -> bool {
        self.podman(&["version"]).is_ok()
    }

    fn up(&mut self) -> Result<(), String> {
        let d = self.dir.display();
        let log = std::fs::File::create(self.dir.join("podman.log")).map_err(|e| e.to_string())?;
        let child = Command::new("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .args([
                "--root",
                &format!("{d}/root"),
                "--runroot",
                &format!("{d}/run"),
                "--tmpdir",
                &format!("{d}/tmp"),
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "system",
                "service",
                "--time=0",
                &self.url(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn podman system service: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.socket.exists() && self.answers() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "podman system service exited with {status} at start; its log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "podman system service did not answer within 30 s; its log:\n{}",
            self.log_tail()
        ))
    }

    /// SIGTERM to the service's own pid, then waits for it to exit (SIGKILL after 20 s).
    fn down(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                eprintln!("private podman ignored SIGTERM for 20 s; killed");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the podman remote client against this service.
    pub fn podman(&self, args: &[&str]) -> Result<String, String> {
        super::engine_cli("podman", &["--remote", "--url", &self.url()], args)
    }

    /// Containers on this service carrying `label`, running or not.
    pub fn containers_with_label(&self, label: &str) -> Vec<String> {
        self.podman(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label={label}"),
        ])
        .expect("list containers on the private podman")
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
    }

    fn import_busybox(&self) -> Result<(), String> {
        let import = format!("podman --remote --url {url}", url = self.url());
        super::import_busybox(&self.dir, &import)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("podman.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Pids of processes whose command line names `dir` (their own path to it, or below).
fn processes_naming(dir: &std::path::Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Mount points under `dir`, deepest first.
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let mut found: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found.dedup();
    found
}

impl Drop for PrivatePodman {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Everything on this service is the test's own: it is private.
            if let Err(e) = self.podman(&["rm", "-af", "-t", "0"]) {
                eprintln!("private podman: {e}");
            }
            let _ = self.podman(&["volume", "rm", "-af"]);
            self.down();
        }
        // Podman leaves a conmon per exec session for 5 minutes (`--exit-delay 300`) to keep
        // its exit code; they name D on their command line, which only this test's own
        // processes do.
        for pid in processes_naming(&self.dir) {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        // A process still using a mount would make its umount fail as busy.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !processes_naming(&self.dir).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // containers/storage keeps its overlay directory (and shm, netns) mounted after the
        // service stops; those mounts are under D and the test's own.
        let mut left = mounts_under(&self.dir);
        for _ in 0..20 {
            for m in &left {
                let _ = Command::new("umount").arg(m).stderr(Stdio::null()).status();
            }
            left = mounts_under(&self.dir);
            if left.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !left.is_empty() {
            eprintln!(
                "private podman: mounts remain under {}: {left:?}; not removing it",
                self.dir.display()
            );
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("private podman: removing {}: {e}", self.dir.display());
        }
    }
}
