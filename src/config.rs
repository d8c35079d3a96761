//! `lessl serve` settings: flags with `LESSL_*` environment equivalents, read once at start.
//! Errors name the flag at fault. Nothing here touches the network or Docker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::docker::Endpoint;
use crate::fetch::{Allow, Policy};
use crate::log::{Format, Level};
use crate::spec::{BindRule, Bounds, Limits};
use crate::tasks::agent_volume::AgentSource;
use crate::tasks::Settings;

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Flags of `lessl serve`. Every flag has a `LESSL_*` variable; the flag wins.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve on: host:port, or unix:/path for a Unix socket.
    #[arg(long, env = "LESSL_LISTEN", default_value = "127.0.0.1:8734")]
    pub listen: String,
    /// File holding the bearer token every request must carry. Required to listen on a
    /// non-loopback address.
    #[arg(long, env = "LESSL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Docker socket; defaults to DOCKER_HOST (unix://PATH, or tcp://HOST:PORT with
    /// DOCKER_TLS_VERIFY and DOCKER_CERT_PATH) or /var/run/docker.sock.
    #[arg(long, env = "LESSL_DOCKER_SOCKET")]
    pub docker_socket: Option<PathBuf>,
    /// Seconds Docker has to answer any call before the request fails with 504.
    #[arg(long, env = "LESSL_DOCKER_TIMEOUT", default_value_t = 30.0)]
    pub docker_timeout: f64,
    /// Name of this Lessl among others sharing one Docker Engine: each sees and touches only
    /// its own containers. Letters, digits, `_` and `-`.
    #[arg(long, env = "LESSL_INSTANCE", default_value = "lessl")]
    pub instance: String,
    /// The static lessl binary mounted into task containers as their keep-alive and command
    /// runner; defaults to this executable.
    #[arg(long, env = "LESSL_AGENT")]
    pub agent: Option<PathBuf>,
    /// How the agent reaches task containers: `bind` (a read-only bind of --agent's host
    /// path), `volume` (copied once per engine and version into the named volume
    /// `lessl-agent-<version>-<hash>`, for engines that cannot see Lessl's files), or `auto`:
    /// `volume` for a remote engine (tcp://), or when Lessl runs from a container's image
    /// layer (an overlay file system) and no --agent is given; else `bind`.
    #[arg(
        long,
        env = "LESSL_AGENT_SOURCE",
        default_value = "auto",
        value_parser = ["auto", "bind", "volume"]
    )]
    pub agent_source: String,
    /// TTL of a task that names none, seconds.
    #[arg(long, env = "LESSL_DEFAULT_TTL", default_value_t = 600)]
    pub default_ttl: u64,
    /// Largest TTL a task may ask for, seconds.
    #[arg(long, env = "LESSL_MAX_TTL", default_value_t = 86_400)]
    pub max_ttl: u64,
    /// Memory limit of a task that names none, MiB.
    #[arg(long, env = "LESSL_DEFAULT_MEMORY_MB", default_value_t = 512)]
    pub default_memory_mb: u64,
    /// Largest memory limit a task may ask for, MiB.
    #[arg(long, env = "LESSL_MAX_MEMORY_MB", default_value_t = 4096)]
    pub max_memory_mb: u64,
    /// CPU limit of a task that names none.
    #[arg(long, env = "LESSL_DEFAULT_CPUS", default_value_t = 1.0)]
    pub default_cpus: f64,
    /// Largest CPU limit a task may ask for.
    #[arg(long, env = "LESSL_MAX_CPUS", default_value_t = 2.0)]
    pub max_cpus: f64,
    /// Process limit of a task that names none.
    #[arg(long, env = "LESSL_DEFAULT_PIDS", default_value_t = 256)]
    pub default_pids: u64,
    /// Largest process limit a task may ask for.
    #[arg(long, env = "LESSL_MAX_PIDS", default_value_t = 4096)]
    pub max_pids: u64,
    /// Wall-clock limit per command of a task that names none, seconds.
    #[arg(long, env = "LESSL_DEFAULT_TIMEOUT", default_value_t = 60.0)]
    pub default_timeout: f64,
    /// Largest per-command wall-clock limit a task may ask for, seconds.
    #[arg(long, env = "LESSL_MAX_TIMEOUT", default_value_t = 3600.0)]
    pub max_timeout: f64,
    /// Output kept per stream per command when a task names no limit, bytes.
    #[arg(long, env = "LESSL_DEFAULT_OUTPUT_BYTES", default_value_t = 1 << 20)]
    pub default_output_bytes: u64,
    /// Largest per-stream output a task may ask to keep, bytes.
    #[arg(long, env = "LESSL_MAX_OUTPUT_BYTES", default_value_t = 16 << 20)]
    pub max_output_bytes: u64,
    /// Largest request body, bytes (413 past it, before any parsing).
    #[arg(long, env = "LESSL_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Largest decoded embedded resource, bytes (413 past it).
    #[arg(long, env = "LESSL_MAX_RESOURCE_BYTES", default_value_t = 8 << 20)]
    pub max_resource_bytes: usize,
    /// Most commands in one request per task.
    #[arg(long, env = "LESSL_MAX_COMMANDS", default_value_t = 100)]
    pub max_commands: usize,
    /// Images tasks may use: comma-separated patterns where `*` matches anything.
    #[arg(
        long,
        env = "LESSL_ALLOW_IMAGE",
        default_value = "*",
        value_delimiter = ','
    )]
    pub allow_image: Vec<String>,
    /// Images Lessl may pull when they are missing (comma-separated patterns, `*` matches
    /// anything); default: none, so a missing image is a 422.
    #[arg(long, env = "LESSL_ALLOW_PULL", value_delimiter = ',')]
    pub allow_pull: Vec<String>,
    /// Seconds a pull may take.
    #[arg(long, env = "LESSL_PULL_TIMEOUT", default_value_t = 300.0)]
    pub pull_timeout: f64,
    /// User tasks run as unless they name an allowed one (`name`, `uid` or `uid:gid`);
    /// default: the image's user.
    #[arg(long, env = "LESSL_USER")]
    pub user: Option<String>,
    /// Users a task may ask for in its `user` field, comma-separated; default: none.
    #[arg(long, env = "LESSL_ALLOW_USERS", value_delimiter = ',')]
    pub allow_users: Vec<String>,
    /// Tasks running commands at once; more wait in a short queue, then get 429.
    #[arg(long, env = "LESSL_MAX_RUNNING", default_value_t = 16)]
    pub max_running: usize,
    /// Requests that may wait for a run slot; past it, 429 at once.
    #[arg(long, env = "LESSL_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,
    /// Seconds a queued request waits for a run slot before its 429.
    #[arg(long, env = "LESSL_QUEUE_TIMEOUT", default_value_t = 10.0)]
    pub queue_timeout: f64,
    /// Live daemon tasks at most; past it, creating one is a 429.
    #[arg(long, env = "LESSL_MAX_DAEMONS", default_value_t = 256)]
    pub max_daemons: usize,
    /// Hosts or CIDR ranges `src` downloads and callbacks may reach although they are
    /// loopback, private, link-local or otherwise internal (comma-separated); default: none.
    #[arg(long, env = "LESSL_SRC_ALLOW", default_value = "")]
    pub src_allow: String,
    /// Largest `src` download, bytes (413 past it).
    #[arg(long, env = "LESSL_MAX_DOWNLOAD_BYTES", default_value_t = 64 << 20)]
    pub max_download_bytes: u64,
    /// Seconds to resolve, connect and handshake for each download hop.
    #[arg(long, env = "LESSL_DOWNLOAD_CONNECT_TIMEOUT", default_value_t = 10.0)]
    pub download_connect_timeout: f64,
    /// Seconds for a whole download, redirects included (504 past it).
    #[arg(long, env = "LESSL_DOWNLOAD_TIMEOUT", default_value_t = 60.0)]
    pub download_timeout: f64,
    /// Redirects a download may follow, each checked like the first URL.
    #[arg(long, env = "LESSL_MAX_REDIRECTS", default_value_t = 5)]
    pub max_redirects: usize,
    /// Host directories tasks may mount with `mnt` (comma-separated): `DIR` lets a task mount
    /// DIR itself, read-write or read-only; `DIR:ro` lets it mount DIR or any directory under
    /// it, read-only only. Default: none.
    #[arg(long, env = "LESSL_ALLOW_BIND", value_delimiter = ',')]
    pub allow_bind: Vec<String>,
    /// Named volumes tasks may mount with `mnt` (comma-separated patterns, `*` matches any
    /// run of characters); each maps to a volume of this instance that Lessl creates and
    /// labels. Default: none.
    #[arg(long, env = "LESSL_ALLOW_VOLUMES", value_delimiter = ',')]
    pub allow_volumes: Vec<String>,
    /// Seconds a volume of this instance may stay unused by any task before Lessl removes it.
    #[arg(long, env = "LESSL_VOLUME_IDLE", default_value_t = 7 * 86_400)]
    pub volume_idle: u64,
    /// OCI runtime every task container runs under (e.g. `runsc` for gVisor); it must be
    /// configured in the engine. Default: the engine's default runtime.
    #[arg(long, env = "LESSL_RUNTIME")]
    pub runtime: Option<String>,
    /// Disk a task may write (its writable layer) when it names no `limits.disk_mb`, MiB.
    #[arg(long, env = "LESSL_DEFAULT_DISK_MB", default_value_t = 1024)]
    pub default_disk_mb: u64,
    /// Largest `limits.disk_mb` a task may ask for, MiB.
    #[arg(long, env = "LESSL_MAX_DISK_MB", default_value_t = 10_240)]
    pub max_disk_mb: u64,
    /// Log level: error, warn, info or debug.
    #[arg(long, env = "LESSL_LOG", default_value = "info")]
    pub log_level: String,
    /// Log lines as `text` (for people) or `json` (one object per line, for collectors).
    #[arg(long, env = "LESSL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// How commands reach a task's agent: `lane` (over the container's attach stream, and a
    /// socket past the engine once the agent connected to it, where the agent is a bind and the
    /// state directory usable), `attach` (the attach stream only), or `exec` (a Docker exec
    /// per command, the fallback, for debugging).
    #[arg(long, env = "LESSL_RUNNER", default_value = "lane", value_parser = ["lane", "attach", "exec"])]
    pub runner: String,
    /// Started containers to keep ready for IMAGE (repeatable, or comma-separated in the
    /// variable): a task for it that uses the default limits starts with no container start.
    #[arg(
        long,
        env = "LESSL_WARM",
        value_delimiter = ',',
        value_name = "IMAGE=N"
    )]
    pub warm: Vec<String>,
    /// Directory where finished runs' results are kept, so they survive a restart (in a
    /// subdirectory per `--instance`). Lessl still starts if it cannot be written, keeping
    /// results in memory only.
    #[arg(long, env = "LESSL_STATE_DIR", default_value = "/var/lib/lessl")]
    pub state_dir: PathBuf,
    /// Disk space the kept results of this instance may take, MiB; a run that would pass it
    /// still answers, with `persist_error` code `state.full`.
    #[arg(long, env = "LESSL_STATE_MAX_MB", default_value_t = 2048)]
    pub state_max_mb: u64,
    /// Bytes one run's `collect` may read out of its container (each entry counts its size
    /// plus 512); past it, the paths left out are named in `files` with `collect.too_large`.
    /// At most 1 GiB: collected files are held in memory (base64) until written.
    #[arg(long, env = "LESSL_MAX_COLLECT_BYTES", default_value_t = 16 << 20)]
    pub max_collect_bytes: u64,
    /// Seconds a client has to send its request headers, and its body.
    #[arg(long, env = "LESSL_REQUEST_TIMEOUT", default_value_t = 30.0)]
    pub request_timeout: f64,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "LESSL_SHUTDOWN_GRACE", default_value_t = 10.0)]
    pub shutdown_grace: f64,
    /// Client connections served at once; past it, a few more are answered only on `/health`
    /// (503 for anything else), and beyond those a new connection is closed at once. Idle
    /// keep-alive connections are closed after --request-timeout.
    #[arg(long, env = "LESSL_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
}

/// Whether this process runs in a container: Docker and Podman mark their containers' root.
fn in_container() -> bool {
    Path::new("/.dockerenv").exists() || Path::new("/run/.containerenv").exists()
}

/// Validated settings, grouped by the layer that reads them, so each is handed down whole.
#[derive(Debug, Clone)]
pub struct Config {
    /// The listener, the API's own limits and shutdown.
    pub server: ServerConfig,
    /// How to reach the engine.
    pub docker: DockerConfig,
    /// Everything the task layer needs, in its own type.
    pub tasks: Settings,
    /// The event log.
    pub log: LogConfig,
}

/// What the listener and the API layer need.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the API listens.
    pub listen: ListenAddr,
    /// Bearer token, when one is configured.
    pub token: Option<String>,
    /// Request body cap.
    pub max_body_bytes: usize,
    /// Deadline for a client to send a request.
    pub request_timeout: Duration,
    /// Time in-flight requests get after SIGTERM.
    pub shutdown_grace: Duration,
    /// Connections served in full at once.
    pub max_connections: usize,
}

/// How to reach the engine.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Where the engine answers: `--docker-socket`, or `DOCKER_HOST` and its TLS variables.
    pub endpoint: Endpoint,
    /// Deadline for every Docker call.
    pub timeout: Duration,
}

/// How the event log is written.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    /// Least severe level written.
    pub level: Level,
    /// Text for people or JSON for collectors.
    pub format: Format,
}

/// A setting that cannot be used, naming the flag.
#[derive(Debug)]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--{}: {}", self.flag, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// `--allow-bind` entries as rules. Two allowed directories may not nest: through the outer
/// one a task could replace the inner one with a symlink that the engine would then follow.
fn bind_rules(entries: &[String]) -> Result<Vec<BindRule>, ConfigError> {
    let mut rules: Vec<BindRule> = Vec::new();
    for entry in entries.iter().filter(|p| !p.is_empty()) {
        let (dir, tree) = match entry.strip_suffix(":ro") {
            Some(dir) => (dir, true),
            None => (entry.as_str(), false),
        };
        let clean = crate::spec::normalise_host_path(dir)
            .ok()
            .filter(|c| dir.starts_with('/') && c != "/");
        let Some(dir) = clean else {
            return Err(bad(
                "allow-bind",
                format!("`{entry}` is not an absolute directory other than / (DIR or DIR:ro)"),
            ));
        };
        let nests = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
        if let Some(other) = rules
            .iter()
            .find(|r| nests(&dir, &r.dir) || nests(&r.dir, &dir))
        {
            return Err(bad(
                "allow-bind",
                format!(
                    "{dir} and {} overlap: allowed directories must not nest, or a task \
                     could swap one for a symlink through the other",
                    other.dir
                ),
            ));
        }
        rules.push(BindRule { dir, tree });
    }
    Ok(rules)
}

fn bad(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        message: message.into(),
    }
}

impl ServeArgs {
    /// clap's own description of `lessl serve`'s flags: the one source of their names,
    /// `LESSL_*` variables and defaults, for tests and tooling to read.
    pub fn command() -> clap::Command {
        <Self as Args>::augment_args(clap::Command::new("serve"))
    }

    /// Checks every flag; `docker_host` is the value of `DOCKER_HOST`, if set.
    pub fn into_config(self, docker_host: Option<&str>) -> Result<Config, ConfigError> {
        self.check_positive()?;
        let endpoint = self.docker_endpoint(docker_host)?;
        Ok(Config {
            server: self.server()?,
            log: self.log()?,
            tasks: self.tasks(&endpoint)?,
            docker: DockerConfig {
                endpoint,
                timeout: seconds("docker-timeout", self.docker_timeout)?,
            },
        })
    }

    fn server(&self) -> Result<ServerConfig, ConfigError> {
        let listen = parse_listen(&self.listen).map_err(|m| bad("listen", m))?;
        let token = self.token_file.as_deref().map(read_token).transpose()?;
        if let ListenAddr::Tcp(addr) = &listen {
            if !addr.ip().is_loopback() && token.is_none() {
                return Err(bad(
                    "listen",
                    format!("refusing to listen on non-loopback {addr} without --token-file"),
                ));
            }
        }
        if self.max_connections < MIN_CONNECTIONS {
            return Err(bad(
                "max-connections",
                format!("must be at least {MIN_CONNECTIONS}"),
            ));
        }
        Ok(ServerConfig {
            listen,
            token,
            max_body_bytes: self.max_body_bytes,
            request_timeout: seconds("request-timeout", self.request_timeout)?,
            shutdown_grace: seconds("shutdown-grace", self.shutdown_grace)?,
            max_connections: self.max_connections,
        })
    }

    fn docker_endpoint(&self, docker_host: Option<&str>) -> Result<Endpoint, ConfigError> {
        match &self.docker_socket {
            Some(p) => Ok(Endpoint::Unix(p.clone())),
            None => Endpoint::from_env(
                docker_host,
                std::env::var("DOCKER_TLS_VERIFY").ok().as_deref(),
                std::env::var("DOCKER_CERT_PATH").ok().as_deref(),
                std::env::var("HOME").ok().as_deref(),
            )
            .map_err(|e| bad("docker-socket", e.to_string())),
        }
    }

    /// `--agent-source`, with `auto` resolved against where Lessl and the engine run.
    fn agent_source(&self, endpoint: &Endpoint) -> AgentSource {
        match self.agent_source.as_str() {
            "bind" => AgentSource::Bind,
            "volume" => AgentSource::Volume,
            // In a container, this executable's path is the container's own, which the
            // engine cannot bind; an explicit --agent is taken to be a host path. A remote
            // engine sees none of this machine's files.
            _ if endpoint.is_remote() => AgentSource::Volume,
            _ if self.agent.is_none() && in_container() => match std::env::current_exe() {
                Ok(exe) if crate::tasks::agent_volume::on_overlay(&exe) => AgentSource::Volume,
                // Not in an image layer: the engine may well share this file system (an
                // engine started inside the same container, say).
                _ => AgentSource::Bind,
            },
            _ => AgentSource::Bind,
        }
    }

    fn log(&self) -> Result<LogConfig, ConfigError> {
        Ok(LogConfig {
            level: Level::parse(&self.log_level)
                .ok_or_else(|| bad("log-level", "must be error, warn, info or debug"))?,
            // clap admits only `text` and `json`.
            format: if self.log_format == "json" {
                Format::Json
            } else {
                Format::Text
            },
        })
    }

    fn tasks(&self, endpoint: &Endpoint) -> Result<Settings, ConfigError> {
        check_instance(&self.instance)?;
        let exec_only = self.runner == "exec";
        let warm = warm_targets(&self.warm)?;
        if exec_only && !warm.is_empty() {
            return Err(bad("warm", "the warm pool needs --runner lane or attach"));
        }
        if let Err(message) = crate::tasks::check_runtime_floor(
            self.runtime.as_deref().filter(|r| !r.is_empty()),
            &self.bounds()?.limits_default,
        ) {
            return Err(bad("default-pids", message));
        }
        if self.volume_idle == 0 {
            return Err(bad("volume-idle", "must be positive"));
        }
        Ok(Settings {
            instance: self.instance.clone(),
            agent: self.agent()?,
            agent_source: self.agent_source(endpoint),
            bounds: self.bounds()?,
            allow_images: non_empty(&self.allow_image),
            allow_pull: non_empty(&self.allow_pull),
            pull_timeout: seconds("pull-timeout", self.pull_timeout)?,
            default_user: self.user.clone().filter(|u| !u.is_empty()),
            allow_users: non_empty(&self.allow_users),
            max_running: self.max_running,
            max_queue: self.max_queue,
            queue_timeout: seconds("queue-timeout", self.queue_timeout)?,
            max_daemons: self.max_daemons,
            fetch: self.fetch()?,
            warm,
            exec_only,
            lanes: self.runner == "lane",
            runtime: self.runtime.clone().filter(|r| !r.is_empty()),
            allow_volumes: non_empty(&self.allow_volumes),
            volume_idle: Duration::from_secs(self.volume_idle),
            state_dir: Some(self.state_dir.clone()),
            state_max_bytes: self.state_max_mb.saturating_mul(1 << 20),
            max_collect_bytes: self.max_collect_bytes,
            callback_token: self.token_file.as_deref().map(read_token).transpose()?,
        })
    }

    fn agent(&self) -> Result<PathBuf, ConfigError> {
        let agent = match &self.agent {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| bad("agent", format!("cannot find this executable: {e}")))?,
        };
        if !agent.is_absolute() || !agent.is_file() {
            return Err(bad(
                "agent",
                format!("{} is not an existing absolute file", agent.display()),
            ));
        }
        Ok(agent)
    }

    fn fetch(&self) -> Result<Policy, ConfigError> {
        Ok(Policy {
            allow: Allow::parse(&self.src_allow).map_err(|m| bad("src-allow", m))?,
            max_bytes: self.max_download_bytes,
            connect_timeout: seconds("download-connect-timeout", self.download_connect_timeout)?,
            total_timeout: seconds("download-timeout", self.download_timeout)?,
            max_redirects: self.max_redirects,
        })
    }

    fn bounds(&self) -> Result<Bounds, ConfigError> {
        let (limits_default, limits_max) = self.limits();
        // The same minimums a task's own limits are held to, in the unit the engine
        // receives: a default of `--default-cpus 1e-10` would be sent as no limit at all.
        for (limits, kind) in [(&limits_default, "default"), (&limits_max, "max")] {
            if let Some((field, message)) = limits.below_minimum() {
                return Err(bad(limit_flag(kind, field), message));
            }
        }
        Ok(Bounds {
            ttl_default: self.default_ttl,
            ttl_max: self.max_ttl,
            limits_default,
            limits_max,
            resource_max_bytes: self.max_resource_bytes,
            max_commands: self.max_commands,
            binds: bind_rules(&self.allow_bind)?,
        })
    }

    /// The task limits a task gets when it names none, and the most it may ask for.
    fn limits(&self) -> (Limits, Limits) {
        let default = Limits {
            memory_mb: self.default_memory_mb,
            cpus: self.default_cpus,
            pids: self.default_pids,
            timeout_s: self.default_timeout,
            output_bytes: self.default_output_bytes,
            disk_mb: self.default_disk_mb,
        };
        let max = Limits {
            memory_mb: self.max_memory_mb,
            cpus: self.max_cpus,
            pids: self.max_pids,
            timeout_s: self.max_timeout,
            output_bytes: self.max_output_bytes,
            disk_mb: self.max_disk_mb,
        };
        (default, max)
    }

    /// Docker reads 0 as "unlimited": a zero default would silently lift the limit.
    fn check_positive(&self) -> Result<(), ConfigError> {
        let positive = [
            ("default-memory-mb", self.default_memory_mb as f64),
            ("max-memory-mb", self.max_memory_mb as f64),
            ("default-cpus", self.default_cpus),
            ("max-cpus", self.max_cpus),
            ("default-pids", self.default_pids as f64),
            ("max-pids", self.max_pids as f64),
            ("default-timeout", self.default_timeout),
            ("max-timeout", self.max_timeout),
            ("default-output-bytes", self.default_output_bytes as f64),
            ("max-output-bytes", self.max_output_bytes as f64),
            ("default-disk-mb", self.default_disk_mb as f64),
            ("max-disk-mb", self.max_disk_mb as f64),
            ("default-ttl", self.default_ttl as f64),
            ("max-ttl", self.max_ttl as f64),
            ("max-body-bytes", self.max_body_bytes as f64),
            ("max-resource-bytes", self.max_resource_bytes as f64),
            ("max-commands", self.max_commands as f64),
            ("max-running", self.max_running as f64),
            ("max-daemons", self.max_daemons as f64),
            ("max-download-bytes", self.max_download_bytes as f64),
            ("state-max-mb", self.state_max_mb as f64),
            ("max-collect-bytes", self.max_collect_bytes as f64),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return Err(bad(flag, "must be positive"));
        }
        if self.max_collect_bytes > 1 << 30 {
            return Err(bad(
                "max-collect-bytes",
                "must be at most 1 GiB (1073741824)",
            ));
        }
        Ok(())
    }
}

/// The token in `path`, trimmed (a trailing newline is not part of it).
fn read_token(path: &Path) -> Result<String, ConfigError> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| bad("token-file", format!("cannot read {}: {e}", path.display())))?;
    let token = raw.trim().to_string();
    if token.len() < 16 {
        return Err(bad(
            "token-file",
            "the token must be at least 16 characters",
        ));
    }
    Ok(token)
}

/// The instance name is a label value and part of container and volume names.
fn check_instance(instance: &str) -> Result<(), ConfigError> {
    let ok = !instance.is_empty()
        && instance.len() <= 32
        && instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(bad(
            "instance",
            "must be 1 to 32 characters of [A-Za-z0-9_-]",
        ))
    }
}

/// `--warm IMAGE=N` entries.
fn warm_targets(entries: &[String]) -> Result<Vec<(String, usize)>, ConfigError> {
    entries
        .iter()
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.rsplit_once('=')
                .and_then(|(image, n)| Some((image.to_string(), n.parse::<usize>().ok()?)))
                .filter(|(image, n)| !image.is_empty() && *n <= 256)
                .ok_or_else(|| bad("warm", format!("`{w}` is not IMAGE=N with N at most 256")))
        })
        .collect()
}

/// A comma-separated list without its empty entries (`LESSL_ALLOW_PULL=` means none).
fn non_empty(entries: &[String]) -> Vec<String> {
    entries.iter().filter(|e| !e.is_empty()).cloned().collect()
}

/// A positive, finite number of seconds.
fn seconds(flag: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(bad(flag, "must be a positive number of seconds"))
    }
}

/// The flag that sets limit `field` (as [`Limits::below_minimum`] names it) of `kind`.
fn limit_flag(kind: &str, field: &str) -> &'static str {
    match (kind, field) {
        ("default", "cpus") => "default-cpus",
        ("default", "memory_mb") => "default-memory-mb",
        ("default", "pids") => "default-pids",
        ("default", "timeout_s") => "default-timeout",
        ("default", "output_bytes") => "default-output-bytes",
        (_, "cpus") => "max-cpus",
        (_, "memory_mb") => "max-memory-mb",
        (_, "pids") => "max-pids",
        (_, "timeout_s") => "max-timeout",
        _ => "max-output-bytes",
    }
}

/// Fewer connections than this could not serve a client and a health check at once.
const MIN_CONNECTIONS: usize = 4;

fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!("`{s}`: a Unix socket needs an absolute path"));
        }
        return Ok(ListenAddr::Unix(path));
    }
    s.parse::<SocketAddr>()
        .map(ListenAddr::Tcp)
        .map_err(|_| format!("`{s}` is neither host:port (numeric IP) nor unix:/path"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["lessl", "--agent", "/bin/sh"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().serve.into_config(None)
    }

    #[test]
    fn defaults_are_loopback_and_bounded() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.server.listen,
            ListenAddr::Tcp("127.0.0.1:8734".parse().unwrap())
        );
        assert!(c.server.token.is_none());
        assert!(
            matches!(&c.docker.endpoint, Endpoint::Unix(p) if p == Path::new("/var/run/docker.sock")),
            "{:?}",
            c.docker.endpoint
        );
        assert!(
            c.tasks.bounds.limits_default.memory_mb > 0 && c.tasks.bounds.limits_default.pids > 0
        );
    }

    #[test]
    fn limits_below_the_engine_s_minimum_are_refused() {
        let cases = [
            (["--default-cpus", "1e-10"], "default-cpus", "0.01"),
            (["--max-cpus", "0.001"], "max-cpus", "0.01"),
            (["--default-memory-mb", "5"], "default-memory-mb", "6 MiB"),
            (["--max-memory-mb", "4"], "max-memory-mb", "6 MiB"),
            (["--default-pids", "2"], "default-pids", "4"),
            (["--max-timeout", "0.0001"], "max-timeout", "0.001"),
        ];
        for (args, flag, minimum) in cases {
            let e = config(&args).unwrap_err();
            assert_eq!(e.flag, flag, "{args:?}");
            assert!(e.to_string().contains(minimum), "{e}");
        }
        let c = config(&["--max-cpus", "0.01", "--default-cpus", "0.01"]).unwrap();
        assert_eq!(c.tasks.bounds.limits_max.nano_cpus(), 10_000_000);
        assert_eq!(c.server.max_connections, 512);
    }

    #[test]
    fn collect_bytes_are_bounded() {
        assert_eq!(config(&[]).unwrap().tasks.max_collect_bytes, 16 << 20);
        for bad in ["0", "1073741825"] {
            let e = config(&["--max-collect-bytes", bad]).unwrap_err();
            assert_eq!(e.flag, "max-collect-bytes", "{bad}");
        }
        let c = config(&["--max-collect-bytes", "4096"]).unwrap();
        assert_eq!(c.tasks.max_collect_bytes, 4096);
    }

    #[test]
    fn non_loopback_needs_a_token() {
        let e = config(&["--listen", "0.0.0.0:8734"]).unwrap_err();
        assert_eq!(e.flag, "listen");
        assert!(e.to_string().contains("token"));
    }

    #[test]
    fn zero_limits_are_refused() {
        assert_eq!(
            config(&["--default-pids", "0"]).unwrap_err().flag,
            "default-pids"
        );
        assert_eq!(
            config(&["--max-memory-mb", "0"]).unwrap_err().flag,
            "max-memory-mb"
        );
        assert_eq!(config(&["--instance", "a.b"]).unwrap_err().flag, "instance");
        assert_eq!(
            config(&["--max-connections", "0"]).unwrap_err().flag,
            "max-connections"
        );

        assert_eq!(
            config(&["--listen", "unix:rel"]).unwrap_err().flag,
            "listen"
        );
    }

    #[test]
    fn bind_rules_are_exact_or_read_only_trees_and_never_nest() {
        let c = config(&["--allow-bind", "/srv/shared/,/srv/data:ro"]).unwrap();
        assert_eq!(
            c.tasks.bounds.binds,
            [
                BindRule {
                    dir: "/srv/shared".into(),
                    tree: false
                },
                BindRule {
                    dir: "/srv/data".into(),
                    tree: true
                }
            ]
        );
        for bad in [
            "/srv,/srv/a",
            "/srv/a:ro,/srv",
            "/srv,/srv:ro",
            "/",
            "rel",
            "/a/../b",
        ] {
            assert_eq!(
                config(&["--allow-bind", bad]).unwrap_err().flag,
                "allow-bind",
                "{bad}"
            );
        }
    }
}
