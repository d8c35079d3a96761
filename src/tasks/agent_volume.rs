//! How the agent (this very binary) reaches task containers: a read-only bind of its host
//! path, or a named volume `lessl-agent-<version>-<hash>` that Lessl fills once per engine and
//! binary through the archive API, for engines that cannot see Lessl's files (Lessl in a
//! container, a remote engine). Owns that volume's name, creation and filling; never removes
//! it (every Lessl of that version on the engine shares it) and never touches task containers.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::run::AGENT_PATH;
use super::TaskError;
use crate::docker::models::{ContainerConfig, HostConfig, LogConfig};
use crate::docker::DockerError;

use super::engine::Engine;
use crate::log;
use crate::tar::TarBuilder;

/// Where the volume is mounted; the agent is `lessl` in it, so its path is [`AGENT_PATH`].
const AGENT_DIR: &str = "/.lessl";
/// On the agent volume: the Lessl version that made it.
pub const LABEL_AGENT: &str = "lessl.agent";
/// On the short-lived helper container that fills the volume.
const LABEL_HELPER: &str = "lessl.agent.helper";

/// Which way the agent is mounted (`--agent-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentSource {
    /// A read-only bind of the agent's host path (`--agent`): the engine must see that file.
    Bind,
    /// A named volume filled through the Engine API: needs no host path at all.
    Volume,
}

/// Which step of making the agent volume failed; every one is an engine call.
#[derive(Debug)]
pub enum AgentVolumeError {
    CreateVolume(DockerError),
    CreateHelper(DockerError),
    StatAgent(DockerError),
    FillVolume(DockerError),
}

impl From<AgentVolumeError> for TaskError {
    fn from(e: AgentVolumeError) -> Self {
        match e {
            AgentVolumeError::CreateVolume(d)
            | AgentVolumeError::CreateHelper(d)
            | AgentVolumeError::StatAgent(d)
            | AgentVolumeError::FillVolume(d) => TaskError::Docker(d),
        }
    }
}

/// The agent's mount in task containers, and for [`AgentSource::Volume`] the volume's state.
pub struct AgentMount {
    /// The agent's host path: bound as is, or the bytes copied into the volume.
    binary: PathBuf,
    /// The volume's name, when the agent goes by volume (None: by bind).
    volume: Option<String>,
    /// The binary's bytes until the volume is known to hold them, then dropped: a failed
    /// fill is retried by the next task with no second read of the file.
    bytes: Mutex<Option<Arc<Vec<u8>>>>,
    /// Set once the volume exists with its labels; a failure is not cached.
    made: OnceCell<()>,
    /// Set once the volume holds the agent; a failure is not cached.
    ready: OnceCell<()>,
}

impl std::fmt::Debug for AgentMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMount")
            .field("binary", &self.binary)
            .field("volume", &self.volume)
            .finish()
    }
}

impl AgentMount {
    /// Reads the binary now when it goes by volume (its hash names the volume); if it cannot
    /// be read, says so and binds it, which works wherever the engine sees Lessl's files.
    pub fn new(source: AgentSource, binary: &Path) -> AgentMount {
        let mut mount = AgentMount {
            binary: binary.to_path_buf(),
            volume: None,
            bytes: Mutex::new(None),
            made: OnceCell::new(),
            ready: OnceCell::new(),
        };
        if source == AgentSource::Volume {
            match std::fs::read(binary) {
                Ok(bytes) => {
                    mount.volume = Some(volume_name(&bytes));
                    *mount.bytes.lock().unwrap() = Some(Arc::new(bytes));
                }
                Err(e) => log!(
                    error: "agent volume: cannot read {} ({e}); binding it instead",
                    binary.display()
                ),
            }
        }
        mount
    }

    /// The entry for `HostConfig.Binds` that puts the agent at [`AGENT_PATH`].
    pub fn bind(&self) -> String {
        match &self.volume {
            Some(volume) => format!("{volume}:{AGENT_DIR}:ro"),
            None => format!("{}:{AGENT_PATH}:ro", self.binary.display()),
        }
    }

    /// Makes the volume, with its labels, before a task container names it (an engine would
    /// otherwise make it bare at the container's create). At once when the agent goes by bind.
    pub async fn prepare(&self, docker: &dyn Engine) -> Result<(), AgentVolumeError> {
        let Some(volume) = &self.volume else {
            return Ok(());
        };
        self.made
            .get_or_try_init(|| async {
                let labels = BTreeMap::from([(
                    LABEL_AGENT.to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                )]);
                // Creating a volume that exists answers with it, on Docker and Podman alike.
                docker
                    .create_volume(volume, &labels)
                    .await
                    .map(drop)
                    .map_err(AgentVolumeError::CreateVolume)
            })
            .await
            .map(drop)
    }

    /// Makes sure the volume holds the agent before a container that mounts it starts (at
    /// once when it goes by bind, or once the volume is known full). Called after the task's
    /// container is created, so `image` is known to be on the engine (pulled if need be): the
    /// helper container is created from it and never started.
    pub async fn ensure(&self, docker: &dyn Engine, image: &str) -> Result<(), AgentVolumeError> {
        let Some(volume) = &self.volume else {
            return Ok(());
        };
        self.prepare(docker).await?;
        self.ready
            .get_or_try_init(|| async {
                let bytes = self.bytes.lock().unwrap().clone();
                // Only None once `ready` is set, which this closure is not reached after.
                let bytes = bytes.unwrap_or_default();
                fill(docker, volume, image, &bytes).await?;
                *self.bytes.lock().unwrap() = None;
                Ok(())
            })
            .await
            .map(drop)
    }
}

/// Whether an engine is unlikely to see the file at `path` under that same path: it lies on
/// an overlay file system, as the image layers of a container do (Lessl in a container).
/// A host whose own root is an overlay gets the volume too, which works there as well.
pub fn on_overlay(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    fs_type_of(&mountinfo, &path.to_string_lossy())
        .is_some_and(|t| matches!(t, "overlay" | "fuse-overlayfs" | "aufs"))
}

/// The file system type of the mount holding `path` (the longest mount point above it), from
/// the text of /proc/self/mountinfo: `ID PARENT DEV ROOT MOUNTPOINT OPTS [TAGS] - TYPE ...`.
fn fs_type_of<'a>(mountinfo: &'a str, path: &str) -> Option<&'a str> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let point = l.split(' ').nth(4)?;
            let kind = l.split(" - ").nth(1)?.split(' ').next()?;
            let under = point == "/"
                || path == point
                || path.strip_prefix(point).is_some_and(|r| r.starts_with('/'));
            under.then_some((point.len(), kind))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

/// `lessl-agent-<version>-<hash of the binary>`: a new build gets a new volume, and the same
/// binary finds its volume again after a restart. The hash is std's SipHash with its fixed
/// keys: stable for one binary (the same std), which is all the name needs, and fast.
fn volume_name(bytes: &[u8]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    format!(
        "lessl-agent-{}-{:016x}",
        env!("CARGO_PKG_VERSION"),
        h.finish()
    )
}

/// Unless the volume already holds a file of the binary's size at `lessl`, unpacks the binary
/// into it through a stopped helper container, which is removed whatever happened. Two
/// Lessls filling it at once write the same bytes.
async fn fill(
    docker: &dyn Engine,
    volume: &str,
    image: &str,
    bytes: &[u8],
) -> Result<(), AgentVolumeError> {
    let helper = docker
        .create_container(None, &helper_config(volume, image))
        .await
        .map_err(AgentVolumeError::CreateHelper)?
        .id;
    let filled = fill_through(docker, &helper, bytes).await;
    if let Err(e) = docker.remove_container(&helper).await {
        log!(warn: "agent volume: removing the helper container {helper}: {e}");
    }
    if filled.is_ok() {
        log!("agent volume {volume} holds the agent");
    }
    filled
}

async fn fill_through(
    docker: &dyn Engine,
    helper: &str,
    bytes: &[u8],
) -> Result<(), AgentVolumeError> {
    let path = format!("{AGENT_DIR}/lessl");
    let size = docker
        .path_size(helper, &path)
        .await
        .map_err(AgentVolumeError::StatAgent)?;
    if size == Some(bytes.len() as u64) {
        return Ok(());
    }
    let mut tar = TarBuilder::new(0);
    tar.file("lessl", 0o755, bytes)
        .expect("a fixed relative name always packs");
    docker
        .put_archive(helper, AGENT_DIR, tar.finish())
        .await
        .map_err(AgentVolumeError::FillVolume)
}

/// A container only for its mount of the volume: never started, no network, no logs.
fn helper_config(volume: &str, image: &str) -> ContainerConfig {
    ContainerConfig {
        image: image.to_string(),
        entrypoint: vec![AGENT_PATH.to_string(), "agent".to_string()],
        cmd: Vec::new(),
        env: Vec::new(),
        working_dir: None,
        user: None,
        labels: BTreeMap::from([(LABEL_HELPER.to_string(), "true".to_string())]),
        volumes: BTreeMap::new(),
        network_disabled: true,
        open_stdin: false,
        stdin_once: false,
        attach_stdin: false,
        attach_stdout: false,
        attach_stderr: false,
        host_config: HostConfig {
            network_mode: "none".into(),
            cap_drop: vec!["ALL".into()],
            security_opt: vec!["no-new-privileges".into()],
            memory: 0,
            memory_swap: 0,
            nano_cpus: 0,
            pids_limit: 0,
            binds: vec![format!("{volume}:{AGENT_DIR}")],
            log_config: LogConfig {
                kind: "none".into(),
            },
            readonly_rootfs: false,
            runtime: None,
            storage_opt: BTreeMap::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_is_named_by_version_and_content() {
        let a = volume_name(b"one binary");
        assert_eq!(a, volume_name(b"one binary"));
        assert_ne!(a, volume_name(b"another binary"));
        assert!(a.starts_with(&format!("lessl-agent-{}-", env!("CARGO_PKG_VERSION"))));
    }

    #[test]
    fn the_mount_holding_a_path_gives_its_type() {
        let info = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    108 27 0:50 / /opt rw master:3 - overlay overlay rw,lowerdir=/x\n\
                    109 108 0:51 / /opt/bin rw - tmpfs tmpfs rw\n";
        assert_eq!(fs_type_of(info, "/usr/bin/lessl"), Some("ext4"));
        assert_eq!(fs_type_of(info, "/opt/lessl"), Some("overlay"));
        assert_eq!(fs_type_of(info, "/opt/bin/lessl"), Some("tmpfs"));
        assert_eq!(fs_type_of(info, "/optional/lessl"), Some("ext4"));
        assert_eq!(fs_type_of("", "/x"), None);
    }

    #[test]
    fn the_bind_names_the_host_path_or_the_volume() {
        let bind = AgentMount::new(AgentSource::Bind, Path::new("/usr/bin/lessl"));
        assert_eq!(bind.bind(), "/usr/bin/lessl:/.lessl/lessl:ro");
        let exe = std::env::current_exe().unwrap();
        let volume = AgentMount::new(AgentSource::Volume, &exe);
        assert!(
            volume.bind().starts_with("lessl-agent-"),
            "{}",
            volume.bind()
        );
        assert!(volume.bind().ends_with(":/.lessl:ro"));
    }
}
