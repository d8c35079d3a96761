//! The few Engine API shapes this client sends and reads. Requests carry exactly what Lessl
//! sets; answers read only the fields Lessl uses and ignore the rest, so newer engines work.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    pub image: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Anonymous volumes, by container path (the value is always an empty object).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    /// Also skips creating the network sandbox's interfaces, which is measurably faster.
    pub network_disabled: bool,
    /// Keep stdin open (and attachable) for the container's whole life.
    pub open_stdin: bool,
    /// Close stdin when the first attached client leaves; false so a new client can attach.
    pub stdin_once: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub host_config: HostConfig,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    pub network_mode: String,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    /// Bytes; never 0, which Docker reads as unlimited.
    pub memory: i64,
    /// Equal to `memory`: no swap on top.
    pub memory_swap: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    pub binds: Vec<String>,
    pub log_config: LogConfig,
    pub readonly_rootfs: bool,
    /// OCI runtime (`runsc`); the engine's default when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Per-container storage options; `size` caps the writable layer where the storage
    /// driver supports quotas.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_opt: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LogConfig {
    #[serde(rename = "Type")]
    pub kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateResponse {
    pub id: String,
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IdResponse {
    pub id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInspect {
    pub id: String,
    #[serde(default)]
    pub state: ContainerState,
    #[serde(default)]
    pub config: InspectConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub running: bool,
    #[serde(default, rename = "OOMKilled")]
    pub oom_killed: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectConfig {
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    pub id: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub mounts: Option<Vec<MountPoint>>,
}

/// One mount of a listed container; only volumes have a name.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountPoint {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecConfig {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub tty: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecInspect {
    #[serde(default)]
    pub running: bool,
    #[serde(default)]
    pub exit_code: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WaitResponse {
    #[serde(default)]
    pub status_code: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VersionInfo {
    pub api_version: String,
}

/// One line of Docker's event stream; only what says which container did what.
#[derive(Debug, Deserialize)]
pub struct Event {
    #[serde(rename = "Action", default)]
    pub action: String,
    #[serde(rename = "Actor", default)]
    pub actor: Actor,
}

#[derive(Debug, Default, Deserialize)]
pub struct Actor {
    #[serde(rename = "ID", default)]
    pub id: String,
}

/// The few fields of `GET /info` Lessl reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EngineInfo {
    /// Storage driver (`overlay2`, `btrfs`, ...).
    #[serde(default)]
    pub driver: String,
    /// Pairs such as `["Backing Filesystem", "xfs"]`.
    #[serde(default)]
    pub driver_status: Option<Vec<Vec<String>>>,
    /// OCI runtimes the engine knows, by name.
    #[serde(default)]
    pub runtimes: Option<BTreeMap<String, serde_json::Value>>,
}

impl EngineInfo {
    /// The filesystem under the storage driver, when the engine says.
    pub fn backing_filesystem(&self) -> Option<&str> {
        self.driver_status
            .iter()
            .flatten()
            .find(|pair| pair.first().map(String::as_str) == Some("Backing Filesystem"))
            .and_then(|pair| pair.get(1))
            .map(String::as_str)
    }
}

/// A volume as the engine describes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    pub name: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub created_at: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeList {
    #[serde(default)]
    pub volumes: Option<Vec<Volume>>,
}

/// What removing a volume did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeRemoved {
    Yes,
    /// There was no such volume.
    Gone,
    /// A container still uses it.
    InUse,
}
