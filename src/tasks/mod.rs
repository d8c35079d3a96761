//! Task lifecycle: create a container for a spec, place its files, run its commands, keep
//! what a GET shows, and remove the container at the end of its run (non-daemon) or its TTL.
//! Docker is the store: everything needed to clean up after a crash is in container labels;
//! the in-memory records only hold results, which a restart may lose but which never keep a
//! container alive. This module never speaks HTTP to clients. Submodules: [`admission`]
//! (run and daemon slots, allow-lists), [`mirror`] (events, reconciliation, expiry),
//! [`warm`] (the pool's life), [`run`] and [`channel`] (commands), [`files`], [`view`].

mod admission;
pub mod agent_volume;
pub mod channel;
pub mod engine;
pub mod expiry;
pub mod files;
mod mirror;
pub mod mounts;
pub mod pool;
mod record;
pub mod run;
#[cfg(test)]
mod tests;
pub mod view;
mod warm;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::docker::models::{ContainerConfig, HostConfig, LogConfig};
use crate::docker::{DockerError, Removed};
use crate::fetch::{self, FetchError};
use crate::spec::{self, Bounds, Command, Limits, TaskSpec};
use crate::state::{self, Store, Stored, Summary};
use crate::{log, task_log};
use engine::Engine;
use expiry::Expiry;
use record::{Container, EndReason, Record, RunOutcome};
use run::{CmdResult, RunError, AGENT_PATH};
use view::{rfc3339, RunFailure, TaskState, TaskView};

/// Present on every container Lessl creates.
pub const LABEL_MANAGED: &str = "lessl.managed";
/// Which Lessl instance owns the container.
pub const LABEL_INSTANCE: &str = "lessl.instance";
const LABEL_NAME: &str = "lessl.name";
const LABEL_DAEMON: &str = "lessl.daemon";
/// Unix milliseconds: precise enough to tell a previous process's containers from ours
/// even when a restart comes within the same second.
const LABEL_CREATED: &str = "lessl.created";
/// Unix milliseconds; the TTL deadline, re-armed from here after a restart.
const LABEL_EXPIRES: &str = "lessl.expires";
/// On warm-pool containers: started for no task yet, to be given to one.
const LABEL_POOL: &str = "lessl.pool";
/// Idle pooled containers are replaced after this long (their label says twice as much,
/// so a crashed Lessl's leftovers still expire).
const POOL_RECYCLE: Duration = Duration::from_secs(30 * 60);
/// How long the pool waits before trying again when it could not make a container.
const POOL_RETRY: Duration = Duration::from_secs(5);
/// On tasks with a read-only root: files can be placed only at creation.
const LABEL_READ_ONLY: &str = "lessl.read_only";
/// Unique per create call, so a create whose answer was lost can still be found.
const LABEL_TOKEN: &str = "lessl.token";
/// How long Lessl keeps looking for a container whose create answer it never got.
const SWEEP_FOR: Duration = Duration::from_secs(60);
/// Present when the container's agent takes commands over its attach stream (stdin open).
const LABEL_CHANNEL: &str = "lessl.channel";

/// How long expiry waits before retrying a removal Docker refused (Docker down, say).
const EXPIRY_RETRY: Duration = Duration::from_secs(5);
/// How long reconciliation waits before retrying while Docker is unreachable.
const RECONCILE_RETRY: Duration = Duration::from_secs(2);

/// What the task layer needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Separates this Lessl's containers from other instances' on the same engine.
    pub instance: String,
    /// Host path of the static binary mounted into containers.
    pub agent: PathBuf,
    /// Whether the agent goes into containers by a bind of `agent` or by a volume.
    pub agent_source: agent_volume::AgentSource,
    /// Spec defaults and maxima.
    pub bounds: Bounds,
    /// Image patterns tasks may use (`*` matches any run of characters).
    pub allow_images: Vec<String>,
    /// Image patterns Lessl may pull when Docker does not have them.
    pub allow_pull: Vec<String>,
    /// Deadline of one pull.
    pub pull_timeout: Duration,
    /// User tasks run as unless they name one; None is the image's user.
    pub default_user: Option<String>,
    /// Users a task may name in `user`.
    pub allow_users: Vec<String>,
    /// Runs (a task's commands) at once; more wait in the queue.
    pub max_running: usize,
    /// Requests that may wait for a run slot; more get a 429 at once.
    pub max_queue: usize,
    /// How long a queued request waits for a slot before its 429.
    pub queue_timeout: Duration,
    /// Live daemon containers at most.
    pub max_daemons: usize,
    /// How `src` resources are downloaded, and which destinations are open.
    pub fetch: fetch::Policy,
    /// Started containers to keep ready per image (`--warm IMAGE=N`).
    pub warm: Vec<(String, usize)>,
    /// Run every command by Docker exec (`--runner exec`), never over the attach stream.
    pub exec_only: bool,
    /// OCI runtime of every task container (`--runtime`); None is the engine's default.
    pub runtime: Option<String>,
    /// Volume name patterns tasks may mount (`--allow-volumes`).
    pub allow_volumes: Vec<String>,
    /// Unused volumes of this instance are removed after this long.
    pub volume_idle: Duration,
    /// Where finished runs' results are kept (`--state-dir`); None keeps them in memory only.
    pub state_dir: Option<PathBuf>,
    /// Disk use of the state directory at most, bytes (`--state-max-mb`).
    pub state_max_bytes: u64,
}

/// Why a task operation failed. The API chooses the status from this.
#[derive(Debug)]
pub enum TaskError {
    /// No live task of this instance has that id or name.
    NotFound(String),
    /// Another live task has that name.
    NameClash(String),
    /// The task's container is not running, so nothing can be executed in it.
    NotRunning { reference: String, state: TaskState },
    /// Docker does not have the image.
    ImageUnknown { image: String, message: String },
    /// The request is well-formed but does not fit this operation.
    Request { field: String, message: String },
    /// A resource could not be packed into the archive.
    Pack { field: String, message: String },
    /// Docker created the container but warned that a limit was dropped: not run, removed.
    LimitDiscarded { warnings: Vec<String> },
    /// The operator does not allow this image.
    ImageNotAllowed(String),
    /// The operator does not allow this user.
    UserNotAllowed(String),
    /// Every run slot is taken and the queue is full or waited too long.
    Busy,
    /// The limit on live daemon containers is reached.
    TooManyDaemons(usize),
    /// A `src` download failed or was refused.
    Download { field: String, error: FetchError },
    /// A `mnt` names something that may not be mounted (a host path through a symlink, a
    /// volume the operator did not allow).
    Mount { field: String, message: String },
    /// A `mnt` volume maps to a volume on the engine that this instance did not create.
    VolumeForeign { field: String, volume: String },
    /// No volume of this instance has that name.
    VolumeNotFound(String),
    /// The volume is mounted by a container, so it cannot be removed.
    VolumeInUse(String),
    /// A Docker call failed; the error names the step.
    Docker(DockerError),
}

impl TaskError {
    /// Prefixes the field path with the element index of an array body.
    fn prefixed(self, index: Option<usize>) -> Self {
        match (self, index) {
            (TaskError::Download { field, error }, Some(i)) => TaskError::Download {
                field: format!("[{i}].{field}"),
                error,
            },
            (TaskError::Mount { field, message }, Some(i)) => TaskError::Mount {
                field: format!("[{i}].{field}"),
                message,
            },
            (TaskError::VolumeForeign { field, volume }, Some(i)) => TaskError::VolumeForeign {
                field: format!("[{i}].{field}"),
                volume,
            },
            (e, _) => e,
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::NotFound(r) => write!(f, "no task `{r}`"),
            TaskError::NameClash(n) => write!(f, "a live task is already named `{n}`"),
            TaskError::NotRunning { reference, state } => write!(
                f,
                "task `{reference}` is {}: commands run only in a live daemon task",
                state.as_str()
            ),
            TaskError::ImageUnknown { image, message } => {
                write!(f, "image `{image}` is not known to Docker: {message}")
            }
            TaskError::Request { message, .. } | TaskError::Pack { message, .. } => {
                f.write_str(message)
            }
            TaskError::LimitDiscarded { warnings } => write!(
                f,
                "Docker could not apply the task's limits, so it was not run: {}",
                warnings.join("; ")
            ),
            TaskError::ImageNotAllowed(i) => write!(f, "image `{i}` is not allowed on this server"),
            TaskError::UserNotAllowed(u) => {
                write!(f, "running as user `{u}` is not allowed on this server")
            }
            TaskError::Busy => f.write_str("too many tasks are running; retry shortly"),
            TaskError::TooManyDaemons(n) => write!(
                f,
                "this server keeps at most {n} daemon tasks; delete one first"
            ),
            TaskError::Download { field, error } => write!(f, "{field}: {error}"),
            TaskError::Mount { field, message } => write!(f, "{field}: {message}"),
            TaskError::VolumeForeign { field, volume } => write!(
                f,
                "{field}: the engine already has a volume `{volume}` that this Lessl did not \
                 create; it is not mounted"
            ),
            TaskError::VolumeNotFound(n) => write!(f, "no volume `{n}`"),
            TaskError::VolumeInUse(n) => write!(f, "volume `{n}` is mounted by a container"),
            TaskError::Docker(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TaskError {}

impl From<DockerError> for TaskError {
    fn from(e: DockerError) -> Self {
        TaskError::Docker(e)
    }
}

type Shared = Arc<Mutex<Record>>;

/// A container of this instance, as Docker describes it.
struct Found {
    id: String,
    image: String,
    running: bool,
    status: String,
    labels: BTreeMap<String, String>,
}

/// Counts background work (removals, async runs) so shutdown can wait for it.
#[derive(Default)]
struct Inflight {
    count: AtomicUsize,
    idle: Notify,
}

impl Inflight {
    fn enter(self: &Arc<Self>) -> InflightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InflightGuard(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

struct InflightGuard(Arc<Inflight>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The task service. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

struct Inner {
    /// The container engine, behind the seam tests replace.
    engine: Arc<dyn Engine>,
    settings: Settings,
    /// The agent's mount in task containers (and the volume holding it, if any).
    agent: agent_volume::AgentMount,
    /// Unix milliseconds at start: containers created before it belong to a previous process.
    boot: u64,
    /// By container id. std Mutex, never held across an `.await`: every critical section is
    /// a lookup or an insert.
    records: Mutex<HashMap<String, Shared>>,
    expiry: Expiry,
    background: Arc<Inflight>,
    /// One permit per running task; bounds the work Docker and the machine take at once.
    admission: Arc<tokio::sync::Semaphore>,
    /// Requests waiting for a permit.
    queued: AtomicUsize,
    /// Daemon slots reserved by creates whose records do not exist yet; the rest are
    /// counted from the records.
    daemons_starting: AtomicUsize,
    /// Started, never-used containers waiting for a task.
    pool: pool::Pool,
    /// The records mirror Docker (events stream live, reconciled since it connected).
    mirrored: std::sync::atomic::AtomicBool,
    /// The state directory where finished runs' results are kept.
    store: Store,
    /// Kept results of daemon tasks read back at start, claimed when their container is
    /// adopted (a daemon's record mirrors its container, so it is not made from the file).
    restored: Mutex<HashMap<String, (Summary, Stored)>>,
    /// This instance's named volumes.
    volumes: mounts::Volumes,
    /// Whether the engine can cap a container's writable layer (learnt from the engine).
    disk: Mutex<DiskLimit>,
}

/// What bounds the disk a task writes, as far as Lessl knows the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskLimit {
    /// Not asked yet (the engine was unreachable so far).
    Unknown,
    /// The storage driver caps each container's writable layer (`StorageOpt size`).
    Quota(String),
    /// The storage driver cannot: what tasks write is bounded only by the engine's disk.
    Unbounded(String),
}

impl DiskLimit {
    /// How `/health` and the start-up log describe it.
    pub fn describe(&self) -> String {
        match self {
            DiskLimit::Unknown => "unknown until the engine answers".into(),
            DiskLimit::Quota(how) => format!("enforced per task ({how})"),
            DiskLimit::Unbounded(why) => format!("NOT enforced: {why}"),
        }
    }

    /// From what the engine says of its storage: quotas work on overlay2 over xfs (mounted
    /// with `pquota`, which only a create can prove), btrfs and zfs.
    fn of_engine(info: &crate::docker::models::EngineInfo) -> DiskLimit {
        let backing = info.backing_filesystem().unwrap_or("unknown");
        match (info.driver.as_str(), backing) {
            ("overlay2", "xfs") => DiskLimit::Quota("overlay2 on xfs".into()),
            ("btrfs" | "zfs", _) => DiskLimit::Quota(info.driver.clone()),
            (driver, backing) => DiskLimit::Unbounded(format!(
                "the engine's storage driver ({driver} on {backing}) has no per-container quota \
                 (overlay2 on xfs with pquota, btrfs or zfs have one)"
            )),
        }
    }
}

/// Unix milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The tokio instant corresponding to unix millisecond `at` (now, if it has passed).
fn instant_of(at: u64) -> tokio::time::Instant {
    let now = now_ms();
    tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now))
}

impl Tasks {
    pub fn new(engine: Arc<dyn Engine>, settings: Settings) -> Self {
        let settings_max_running = settings.max_running.max(1);
        let settings_warm = settings.warm.clone();
        let volumes = mounts::Volumes::new(
            settings.instance.clone(),
            settings.allow_volumes.clone(),
            settings.volume_idle,
        );
        let store = match &settings.state_dir {
            Some(dir) => Store::open(dir, &settings.instance, settings.state_max_bytes),
            None => Store::memory_only(),
        };
        let kept = store.sweep(now_ms());
        let tasks = Tasks {
            inner: Arc::new(Inner {
                agent: agent_volume::AgentMount::new(settings.agent_source, &settings.agent),
                engine,
                settings,
                boot: now_ms(),
                records: Mutex::default(),
                expiry: Expiry::default(),
                background: Arc::default(),
                admission: Arc::new(tokio::sync::Semaphore::new(settings_max_running)),
                queued: AtomicUsize::new(0),
                daemons_starting: AtomicUsize::new(0),
                pool: pool::Pool::new(settings_warm),
                mirrored: Default::default(),
                volumes,
                disk: Mutex::new(DiskLimit::Unknown),
                store,
                restored: Mutex::default(),
            }),
        };
        tasks.restore(kept);
        tasks
    }

    /// Makes finished tasks read back from the state directory answer GET again, until their
    /// TTL (armed here like any other).
    fn restore(&self, kept: Vec<(Summary, Stored)>) {
        for (summary, stored) in kept {
            if summary.daemon {
                self.inner
                    .restored
                    .lock()
                    .unwrap()
                    .insert(summary.id.clone(), (summary, stored));
            } else {
                self.register(Record::restored(&summary, stored));
            }
        }
    }

    pub fn bounds(&self) -> &Bounds {
        &self.inner.settings.bounds
    }

    /// Starts the TTL loop and the reconciliation of containers left by earlier runs.
    pub fn spawn_background(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                for id in this.inner.expiry.next_due().await {
                    let this = this.clone();
                    tokio::spawn(async move { this.expire(&id).await });
                }
            }
        });
        let this = self.clone();
        tokio::spawn(async move { this.mirror_docker().await });
        let this = self.clone();
        tokio::spawn(async move {
            this.disk_limit().await;
            loop {
                tokio::time::sleep(this.inner.volumes.sweep_every()).await;
                if let Err(e) = this.inner.volumes.sweep(&*this.inner.engine).await {
                    log!(warn: "volume sweep failed: {e}");
                }
            }
        });
    }

    /// What bounds a task's disk on this engine, asking the engine the first time.
    pub async fn disk_limit(&self) -> DiskLimit {
        let known = self.inner.disk.lock().unwrap().clone();
        if known != DiskLimit::Unknown {
            return known;
        }
        let Ok(info) = self.inner.engine.info().await else {
            return DiskLimit::Unknown;
        };
        let limit = DiskLimit::of_engine(&info);
        self.learn_disk_limit(limit.clone());
        limit
    }

    fn learn_disk_limit(&self, limit: DiskLimit) {
        let mut known = self.inner.disk.lock().unwrap();
        if *known != limit {
            match &limit {
                DiskLimit::Unbounded(_) => log!(warn: "disk limits: {}", limit.describe()),
                _ => log!("disk limits: {}", limit.describe()),
            }
            *known = limit;
        }
    }

    /// Volumes of this instance, for `GET /volumes`.
    pub async fn volumes(&self) -> Result<Vec<mounts::VolumeView>, TaskError> {
        self.inner.volumes.list(&*self.inner.engine).await
    }

    /// `DELETE /volumes/{name}`.
    pub async fn remove_volume(&self, name: &str) -> Result<(), TaskError> {
        self.inner.volumes.remove(&*self.inner.engine, name).await
    }

    /// Point-in-time numbers for `GET /metrics`.
    pub fn gauges(&self) -> crate::metrics::Gauges {
        let records = self.inner.records.lock().unwrap();
        let (mut live, mut running) = (0, 0);
        for r in records.values() {
            let r = r.lock().unwrap();
            live += usize::from(r.container != Container::Gone);
            running += usize::from(r.runs > 0);
        }
        crate::metrics::Gauges {
            live_tasks: live,
            running_tasks: running,
            pooled_containers: self.inner.pool.len(),
        }
    }

    /// Docker's API version, proving it answers.
    pub async fn health(&self) -> Result<String, TaskError> {
        self.inner.engine.ping().await?;
        Ok(self.inner.engine.api_version().await?)
    }

    /// Drops the record of `id`, marking why for a run still using it.
    fn forget(&self, id: &str, why: EndReason) -> Option<Shared> {
        self.inner.expiry.disarm(id);
        let record = self.inner.records.lock().unwrap().remove(id);
        if why.discards_results() {
            self.inner.store.remove(id);
        }
        if let Some(r) = &record {
            r.lock().unwrap().ended = Some(why);
        }
        record
    }

    fn record(&self, id: &str) -> Option<Shared> {
        self.inner.records.lock().unwrap().get(id).cloned()
    }

    fn instance_label(&self) -> String {
        format!("{LABEL_INSTANCE}={}", self.inner.settings.instance)
    }

    fn container_name(&self, task_name: &str) -> String {
        format!("{}.{task_name}", self.inner.settings.instance)
    }

    async fn list_own(&self) -> Result<Vec<Found>, TaskError> {
        let labels = [LABEL_MANAGED.to_string(), self.instance_label()];
        let list = self.inner.engine.list_containers(&labels).await?;
        Ok(list
            .into_iter()
            .filter(|c| !is_going(&c.state))
            .map(|c| Found {
                running: c.state == "running",
                status: c.state,
                id: c.id,
                image: c.image,
                labels: c.labels.unwrap_or_default(),
            })
            .collect())
    }

    /// Whether a container already holds the engine name `name`.
    async fn name_taken(&self, name: Option<&str>) -> bool {
        match name {
            Some(n) => self.inner.engine.inspect_container(n).await.is_ok(),
            None => false,
        }
    }

    /// A pooled container not yet given to a task is not a task.
    fn idle_in_pool(&self, c: &Found) -> bool {
        c.labels.contains_key(LABEL_POOL) && self.record(&c.id).is_none()
    }

    fn owns(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.contains_key(LABEL_MANAGED)
            && labels.get(LABEL_INSTANCE) == Some(&self.inner.settings.instance)
    }

    async fn inspect_own(&self, docker_ref: &str) -> Result<Option<Found>, TaskError> {
        match self.inner.engine.inspect_container(docker_ref).await {
            Ok(c) => {
                let labels = c.config.labels.unwrap_or_default();
                // A container being removed (or dead) is gone as far as tasks go: a DELETE
                // that raced a removal already in progress must still read as gone.
                if !self.owns(&labels) || is_going(&c.state.status) {
                    return Ok(None);
                }
                Ok(Some(Found {
                    id: c.id,
                    image: c.config.image,
                    running: c.state.running,
                    status: c.state.status,
                    labels,
                }))
            }
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A live container of this instance by task name, full id or 12-character short id.
    async fn resolve(&self, reference: &str) -> Result<Option<Found>, TaskError> {
        if spec::check_name(reference).is_ok() {
            if let Some(found) = self.inspect_own(&self.container_name(reference)).await? {
                return Ok(Some(found));
            }
        }
        let is_id = (reference.len() == 12 || reference.len() == 64)
            && reference
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if is_id {
            if let Some(found) = self.inspect_own(reference).await? {
                // Docker also resolves names and other prefix lengths; only ids count here.
                if found.id.starts_with(reference) && !self.idle_in_pool(&found) {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// A finished task this process still remembers, by id, short id or name; of several
    /// sharing a name, the newest.
    fn remembered(&self, reference: &str) -> Option<Shared> {
        let records = self.inner.records.lock().unwrap();
        records
            .values()
            .filter_map(|r| {
                let g = r.lock().unwrap();
                let named = g.id == reference
                    || (reference.len() == 12 && g.id.starts_with(reference))
                    || g.name.as_deref() == Some(reference);
                named.then(|| ((g.created, g.id.clone()), r.clone()))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, r)| r)
    }

    fn view_of(&self, found: &Found) -> TaskView {
        if let Some(record) = self.record(&found.id) {
            let mut view = record.lock().unwrap().view();
            if !found.running && matches!(view.state, TaskState::Idle | TaskState::Running) {
                view.state = TaskState::of_container(false, &found.status);
            }
            return view;
        }
        let label = |k| found.labels.get(k).cloned();
        TaskView {
            id: found.id.clone(),
            name: label(LABEL_NAME),
            image: found.image.clone(),
            state: TaskState::of_container(found.running, &found.status),
            daemon: label(LABEL_DAEMON).as_deref() == Some("true"),
            created_at: rfc3339(label_u64(&found.labels, LABEL_CREATED).unwrap_or(0) / 1000),
            expires_at: rfc3339(label_u64(&found.labels, LABEL_EXPIRES).unwrap_or(0) / 1000),
            results: Vec::new(),
            failed_command: None,
            error: None,
            persist_error: None,
            kept: None,
        }
    }

    /// The answer of a GET: from memory, or streamed from the state directory when the
    /// newest run's results are kept there and the task has not changed since.
    pub async fn get(&self, reference: &str) -> Result<Answer, TaskError> {
        let (record, view) = match self.resolve(reference).await? {
            Some(found) => (self.record(&found.id), self.view_of(&found)),
            None => match self.remembered(reference) {
                Some(r) => {
                    let view = r.lock().unwrap().view();
                    (Some(r), view)
                }
                None => return Err(TaskError::NotFound(reference.to_string())),
            },
        };
        let stored = record.and_then(|r| r.lock().unwrap().stored.clone());
        let Some((stored, written_state)) = stored else {
            return Ok(Answer::View(Box::new(view)));
        };
        if view.state == written_state {
            return Ok(Answer::Kept(stored));
        }
        // A daemon's container stopped since its run: the kept view, with today's state.
        let read = state::read_body(&stored).and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| state::StateError::Damaged(e.to_string()))
        });
        match read {
            Ok(serde_json::Value::Object(mut v)) => {
                v.insert("state".into(), view.state.as_str().into());
                Ok(Answer::Json(serde_json::Value::Object(v)))
            }
            // Lenient on what it reads back: the task without its results, never a 500.
            _ => {
                task_log!(Warn, &view.id, view.name.as_deref(); "kept results unreadable; answering without them");
                Ok(Answer::View(Box::new(view)))
            }
        }
    }

    /// Every live task of this instance, oldest first; with `all`, also finished tasks
    /// still within their TTL. Results kept on disk are left out (GET the task for them),
    /// so a listing never reads the state directory.
    pub async fn list(&self, all: bool) -> Result<Vec<serde_json::Value>, TaskError> {
        if all || self.inner.mirrored.load(Ordering::SeqCst) {
            let records = self.inner.records.lock().unwrap();
            let mut live: Vec<(u64, String, TaskView, bool)> = records
                .values()
                .filter_map(|r| {
                    let r = r.lock().unwrap();
                    (r.container != Container::Gone || all)
                        .then(|| (r.created, r.id.clone(), r.view(), r.stored.is_some()))
                })
                .collect();
            drop(records);
            live.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            return Ok(live
                .into_iter()
                .map(|(_, _, v, on_disk)| listed(&v, on_disk))
                .collect());
        }
        let mut found = self.list_own().await?;
        found.retain(|c| !self.idle_in_pool(c));
        found.sort_by_key(|c| {
            (
                label_u64(&c.labels, LABEL_CREATED).unwrap_or(0),
                c.id.clone(),
            )
        });
        Ok(found
            .iter()
            .map(|c| {
                let on_disk = self
                    .record(&c.id)
                    .is_some_and(|r| r.lock().unwrap().stored.is_some());
                listed(&self.view_of(c), on_disk)
            })
            .collect())
    }

    pub async fn delete(&self, reference: &str) -> Result<(), TaskError> {
        let id = match self.resolve(reference).await? {
            Some(found) => found.id,
            None => match self.remembered(reference) {
                Some(r) => r.lock().unwrap().id.clone(),
                None => return Err(TaskError::NotFound(reference.to_string())),
            },
        };
        let record = self.forget(&id, EndReason::Deleted);
        let had_record = record.is_some();
        let name = record.and_then(|r| r.lock().unwrap().name.clone());
        match self.inner.engine.remove_container(&id).await? {
            Removed::Yes => task_log!(Info, &id, name.as_deref(); "deleted"),
            // The end of its run already started removing it: 204 must mean gone.
            Removed::InProgress => self.inner.engine.wait_removed(&id).await?,
            Removed::Gone if had_record => {}
            Removed::Gone => return Err(TaskError::NotFound(reference.to_string())),
        }
        Ok(())
    }

    /// POST: creates every task of the batch (all or none), then runs them concurrently.
    /// With `wait`, answers when every run has finished; otherwise as soon as all started.
    pub async fn create(
        &self,
        request: spec::Request,
        wait: bool,
    ) -> Result<Vec<TaskView>, TaskError> {
        let spec::Request {
            tasks: specs,
            is_array,
        } = request;
        let field = |i: usize, f: &str| {
            if is_array {
                format!("[{i}].{f}")
            } else {
                f.to_string()
            }
        };
        let now = now_ms();
        let mut specs = specs;
        // Everything that can fail without Docker fails before Docker is touched.
        for (i, s) in specs.iter().enumerate() {
            let Some(image) = &s.image else {
                return Err(TaskError::Request {
                    field: field(i, "image"),
                    message: "`image` is required to create a task".into(),
                });
            };
            self.check_image(image)?;
            self.user_for(s)?;
            self.inner
                .volumes
                .check(&s.mounts)
                .map_err(|e| e.prefixed(is_array.then_some(i)))?;
        }
        let mut archives = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter_mut().enumerate() {
            self.fetch_resources(&mut s.resources)
                .await
                .map_err(|e| e.prefixed(if is_array { Some(i) } else { None }))?;
            let archive = files::uploads(&s.resources, s.read_only, s.pwd.as_deref(), now / 1000)
                .map_err(|e| TaskError::Pack {
                field: field(i, &e.field),
                message: e.message,
            })?;
            archives.push(archive);
        }
        let permit = self.admit(specs.len()).await?;
        let daemons = specs.iter().filter(|s| s.daemon).count();
        let reservation = self.reserve_daemons(daemons)?;
        let mut started = Vec::with_capacity(specs.len());
        for (spec, archive) in specs.into_iter().zip(archives) {
            let warm = if self.warm_eligible(&spec) {
                spec.image.as_deref().and_then(|i| self.inner.pool.take(i))
            } else {
                None
            };
            crate::metrics::METRICS.task_started(warm.is_some());
            let start = match warm {
                Some(w) => self.start_in_warm(&spec, archive, w, now).await,
                None => self.start_task(&spec, archive, now).await,
            };
            match start {
                Ok(record) => started.push((record, spec)),
                Err(e) => {
                    for (record, _) in started {
                        let id = record.lock().unwrap().id.clone();
                        self.forget(&id, EndReason::Deleted);
                        self.remove_in_background(id);
                    }
                    return Err(e);
                }
            }
        }
        // The records hold their slots now.
        drop(reservation);
        let mut permits = admission::split_permit(permit, started.len());
        let mut handles = Vec::with_capacity(started.len());
        for (record, spec) in started {
            handles.push(self.spawn_run(record, spec, permits.pop()));
        }
        let mut views = Vec::with_capacity(handles.len());
        for (view, handle) in handles {
            views.push(if wait {
                handle.await.expect("task runner panicked")
            } else {
                view
            });
        }
        Ok(views)
    }

    /// Starts a run of `spec`'s commands in the task of `record`, returning the task as it
    /// is now (for a 202) and the handle that yields it with this run's results.
    fn spawn_run(
        &self,
        record: Shared,
        spec: TaskSpec,
        permit: Option<OwnedSemaphorePermit>,
    ) -> (TaskView, tokio::task::JoinHandle<TaskView>) {
        let seq = record.lock().unwrap().begin_run();
        let now = record.lock().unwrap().view();
        let this = self.clone();
        let guard = self.inner.background.enter();
        let started = std::time::Instant::now();
        let handle = tokio::spawn(async move {
            let _guard = guard;
            let _permit = permit;
            let outcome = this
                .run(
                    &record,
                    seq,
                    &spec.cmds,
                    &spec.env,
                    spec.pwd.as_deref(),
                    &spec.limits,
                )
                .await;
            let kind = match (&outcome.error, outcome.failed_command) {
                (Some(_), _) => crate::metrics::Outcome::Errored,
                (None, Some(_)) => crate::metrics::Outcome::CommandFailed,
                (None, None) => crate::metrics::Outcome::Succeeded,
            };
            crate::metrics::METRICS.run_ended(kind, started.elapsed());
            let view = this.finish(&record, outcome);
            this.persist(&record, seq, view).await
        });
        (now, handle)
    }

    /// PUT: runs the spec's commands in the live task `reference`, or creates it (named
    /// `reference`) when there is none and the spec names an image. Returns whether it created.
    pub async fn put(
        &self,
        reference: &str,
        mut spec: TaskSpec,
        wait: bool,
    ) -> Result<(bool, TaskView), TaskError> {
        // A task this process watches live answers from memory: no Docker round trip.
        let record = match self.live_record(reference) {
            Some(r) => Some(r),
            None => self
                .record_taking_commands(reference)
                .await
                .or_else(|e| match e {
                    // No task at all by that name: a PUT with an image creates one.
                    TaskError::NotFound(_) => Ok(None),
                    e => Err(e),
                })?,
        };
        let Some(record) = record else {
            return self.put_creates(reference, spec, wait).await;
        };
        let (id, name, read_only) = {
            let r = record.lock().unwrap();
            (r.id.clone(), r.name.clone(), r.read_only)
        };
        if let Some(r) = spec.resources.first().filter(|_| read_only) {
            return Err(TaskError::Request {
                field: format!("{}.dest", r.field),
                message: "this task's root filesystem is read-only: files are placed only when it is created".into(),
            });
        }
        if spec.name.is_some() && spec.name != name {
            return Err(TaskError::Request {
                field: "task_name".into(),
                message: "task_name differs from the task's name; a task cannot be renamed".into(),
            });
        }
        if let Some(m) = spec.mounts.first() {
            return Err(TaskError::Request {
                field: format!("{}.mnt", m.field),
                message: "mounts apply only when a task is created".into(),
            });
        }
        self.fetch_resources(&mut spec.resources).await?;
        let archive =
            files::pack(&spec.resources, now_ms() / 1000).map_err(|e| TaskError::Pack {
                field: e.field,
                message: e.message,
            })?;
        if let Some(tar) = archive {
            let (docker, container) = (&*self.inner.engine, id.as_str());
            let stat = |p: String| async move { docker.stat_path(container, &p).await };
            files::check_reachable(&spec.resources, stat)
                .await
                .map_err(|e| match e {
                    files::ReachError::Refused(e) => TaskError::Pack {
                        field: e.field,
                        message: e.message,
                    },
                    files::ReachError::Stat(e) => TaskError::Docker(e),
                })?;
            self.inner.engine.put_archive(&id, "/", tar).await?;
        }
        let permit = self.admit(1).await?;
        let (view, handle) = self.spawn_run(record, spec, Some(permit));
        if wait {
            return Ok((false, handle.await.expect("task runner panicked")));
        }
        Ok((false, view))
    }

    /// The task `reference` when it takes commands now; a known task that does not (finished,
    /// stopped, on its way out) is a 409 naming its state, whatever the timing.
    async fn record_taking_commands(&self, reference: &str) -> Result<Option<Shared>, TaskError> {
        let not_running = |state| TaskError::NotRunning {
            reference: reference.to_string(),
            state,
        };
        let record = match self.resolve(reference).await? {
            Some(found) => match self.record(&found.id) {
                Some(r) => r,
                None if found.running => self.adopt(&found),
                None => return Err(not_running(TaskState::of_container(false, &found.status))),
            },
            None => match self.remembered(reference) {
                Some(r) => return Err(not_running(r.lock().unwrap().state())),
                None => return Err(TaskError::NotFound(reference.to_string())),
            },
        };
        let (takes, state) = {
            let r = record.lock().unwrap();
            (r.takes_commands(), r.state())
        };
        if takes {
            Ok(Some(record))
        } else {
            Err(not_running(state))
        }
    }

    /// PUT to a name no live task has: creates the task, named after the path.
    async fn put_creates(
        &self,
        reference: &str,
        mut spec: TaskSpec,
        wait: bool,
    ) -> Result<(bool, TaskView), TaskError> {
        if spec.image.is_none() {
            return Err(TaskError::NotFound(reference.to_string()));
        }
        if spec::check_name(reference).is_err() {
            return Err(TaskError::Request {
                field: "task_name".into(),
                message: format!(
                    "`{reference}` cannot name a new task: use [A-Za-z0-9_.-], 1 to 64 characters"
                ),
            });
        }
        if spec.name.as_deref().is_some_and(|n| n != reference) {
            return Err(TaskError::Request {
                field: "task_name".into(),
                message: "task_name differs from the task named in the path".into(),
            });
        }
        spec.name = Some(reference.to_string());
        let request = spec::Request {
            tasks: vec![spec],
            is_array: false,
        };
        let mut views = self.create(request, wait).await?;
        Ok((true, views.remove(0)))
    }

    /// A running task this process mirrors, with an open stream to its agent, by id, short
    /// id or name; only while the mirror of Docker is live.
    fn live_record(&self, reference: &str) -> Option<Shared> {
        if !self.inner.mirrored.load(Ordering::SeqCst) {
            return None;
        }
        let records = self.inner.records.lock().unwrap();
        records
            .values()
            .find(|r| {
                let r = r.lock().unwrap();
                let named = r.id == reference
                    || (reference.len() == 12 && r.id.starts_with(reference))
                    || r.name.as_deref() == Some(reference);
                let open = r.channel.as_ref().is_some_and(|c| !c.is_closed());
                named && r.takes_commands() && open
            })
            .cloned()
    }

    /// Attaches to a container's agent; on failure the task falls back to exec, which
    /// works everywhere, so this is logged rather than fatal.
    async fn open_channel(&self, id: &str) -> Option<Arc<channel::Channel>> {
        if self.inner.settings.exec_only {
            return None;
        }
        match channel::Channel::open(&*self.inner.engine, id).await {
            Ok(c) => Some(c),
            Err(e) => {
                task_log!(Warn, id, None; "no attach stream ({e:?}); commands go by exec");
                None
            }
        }
    }

    /// The live channel of a record, attaching again (after a restart of Lessl, say) when the
    /// container was made for one.
    async fn channel_for(&self, record: &Shared) -> Option<Arc<channel::Channel>> {
        let (id, current, attachable) = {
            let r = record.lock().unwrap();
            (r.id.clone(), r.channel.clone(), r.attachable)
        };
        match current {
            Some(c) if !c.is_closed() => return Some(c),
            // A dead channel (broken frames, closed input, a stuck agent) stays dead: this
            // container's commands go by exec from now on.
            Some(c) if c.is_dead() => {
                record.lock().unwrap().attachable = false;
                return None;
            }
            _ if !attachable || self.inner.settings.exec_only => return None,
            _ => {}
        }
        let fresh = self.open_channel(&id).await?;
        // A container of an older Lessl may carry the label without an agent that answers.
        if !fresh.synced(Duration::from_secs(2)).await {
            task_log!(Warn, &id, None; "agent did not answer on its attach stream; using exec");
            record.lock().unwrap().attachable = false;
            return None;
        }
        record.lock().unwrap().channel = Some(fresh.clone());
        Some(fresh)
    }

    /// Downloads every `src` resource, all at once, replacing each by the bytes it fetched.
    async fn fetch_resources(&self, resources: &mut [spec::Resource]) -> Result<(), TaskError> {
        let mut jobs = Vec::new();
        for (i, r) in resources.iter().enumerate() {
            if let spec::Content::Download { url, .. } = &r.content {
                let (url, policy) = (url.clone(), self.inner.settings.fetch.clone());
                jobs.push((
                    i,
                    tokio::spawn(async move { fetch::download(&url, &policy).await }),
                ));
            }
        }
        for (i, job) in jobs {
            let r = &mut resources[i];
            let fetched = job.await.expect("download task panicked");
            let bytes = fetched.map_err(|error| TaskError::Download {
                field: format!("{}.src", r.field),
                error,
            })?;
            let archive = matches!(r.content, spec::Content::Download { archive: true, .. });
            r.content = if archive {
                spec::Content::Archive(bytes)
            } else {
                spec::Content::File(bytes)
            };
        }
        Ok(())
    }

    /// Makes a new task known: its record, and its TTL armed.
    fn register(&self, record: Record) -> Shared {
        let (id, expires) = (record.id.clone(), record.expires);
        let shared = Arc::new(Mutex::new(record));
        self.inner
            .records
            .lock()
            .unwrap()
            .insert(id.clone(), shared.clone());
        self.inner.expiry.arm(&id, instant_of(expires));
        shared
    }

    /// The record of a live container, made from its labels if this process has none.
    fn adopt(&self, found: &Found) -> Shared {
        let mut records = self.inner.records.lock().unwrap();
        records
            .entry(found.id.clone())
            .or_insert_with(|| {
                let daemon = found.labels.get(LABEL_DAEMON).map(String::as_str) == Some("true");
                let mut record = Record::new(
                    &found.id,
                    found.labels.get(LABEL_NAME).cloned(),
                    found.image.clone(),
                    daemon,
                    label_u64(&found.labels, LABEL_CREATED).unwrap_or(0),
                    label_u64(&found.labels, LABEL_EXPIRES).unwrap_or(0),
                );
                record.life = TaskState::Idle;
                record.attachable = found.labels.contains_key(LABEL_CHANNEL);
                record.container = if found.running {
                    Container::Up
                } else {
                    Container::Stopped
                };
                record.read_only = found.labels.contains_key(LABEL_READ_ONLY);
                if let Some((s, stored)) = self.inner.restored.lock().unwrap().remove(&found.id) {
                    record.failed_command = s.failed_command;
                    record.error = s.error;
                    // A state name this Lessl does not write makes the kept view stale,
                    // which GET handles by patching in today's state.
                    let written = TaskState::parse(&s.state).unwrap_or(TaskState::Exited);
                    record.stored = Some((stored, written));
                }
                // Whoever adopts first (a request may beat the reconciliation after a
                // restart) arms the TTL from the label; reconciliation skips known records.
                self.inner.expiry.arm(&found.id, instant_of(record.expires));
                Arc::new(Mutex::new(record))
            })
            .clone()
    }

    /// Creates, fills and starts the container of one task, and registers its record. On
    /// failure nothing is left behind.
    async fn start_task(
        &self,
        spec: &TaskSpec,
        archive: files::Uploads,
        now: u64,
    ) -> Result<Shared, TaskError> {
        let image = spec.image.clone().unwrap_or_default();
        let expires = now + spec.ttl * 1000;
        let binds = self
            .inner
            .volumes
            .binds(&*self.inner.engine, &spec.mounts)
            .await?;
        let quota = matches!(self.disk_limit().await, DiskLimit::Quota(_));
        self.inner.agent.prepare(&*self.inner.engine).await?;
        let mut config = self.container_config(spec, &image, now, expires, binds, quota);
        let name = spec.name.as_deref().map(|n| self.container_name(n));
        let mut attempt = self
            .inner
            .engine
            .create_container(name.as_deref(), &config)
            .await;
        if let Err(e) = &attempt {
            if quota && refuses_storage_opt(e) {
                // overlay2 on xfs without `pquota`: only a create tells.
                self.learn_disk_limit(DiskLimit::Unbounded(format!(
                    "the engine refused a storage quota: {e}"
                )));
                config.host_config.storage_opt.clear();
                attempt = self
                    .inner
                    .engine
                    .create_container(name.as_deref(), &config)
                    .await;
            }
        }
        if attempt.as_ref().is_err_and(|e| e.status() == Some(404)) && self.may_pull(&image) {
            log!("pulling {image}, which Docker does not have");
            attempt = match self
                .inner
                .engine
                .pull_image(&image, self.inner.settings.pull_timeout)
                .await
            {
                Ok(()) => {
                    self.inner
                        .engine
                        .create_container(name.as_deref(), &config)
                        .await
                }
                // The registry refused or could not be reached: the image stays unknown.
                Err(e) if e.status().is_some() => {
                    return Err(TaskError::ImageUnknown {
                        image,
                        message: e.to_string(),
                    })
                }
                Err(e) => Err(e),
            };
        }
        let created = match attempt {
            Ok(c) => c,
            Err(e) if e.status() == Some(404) => {
                return Err(TaskError::ImageUnknown {
                    image,
                    message: e.to_string(),
                })
            }
            // Docker answers a taken name with 409, Podman with 500: whatever the status, a
            // container holding the name is the clash.
            Err(e) if spec.name.is_some() && self.name_taken(name.as_deref()).await => {
                log!(debug: "create refused for a taken name: {e}");
                return Err(TaskError::NameClash(spec.name.clone().unwrap_or_default()));
            }
            Err(e) if e.status() == Some(400) => {
                return Err(TaskError::Request {
                    field: String::new(),
                    message: format!("Docker refused the container: {e}"),
                })
            }
            // The engine makes the working directory at create and answers 500 ("Cannot
            // mkdir: /etc/passwd is not a directory") when a file is in the way: the client's
            // mistake, not the engine's failure.
            Err(e)
                if spec.pwd.as_deref().is_some_and(|pwd| {
                    e.to_string()
                        .contains(&format!("{} is not a directory", pwd.trim_end_matches('/')))
                }) =>
            {
                return Err(TaskError::Request {
                    field: "pwd".into(),
                    message: format!("pwd is not a directory in the image: {e}"),
                })
            }
            Err(e) => {
                self.sweep_lost_create(&config);
                return Err(e.into());
            }
        };
        let id = created.id;
        // Registered at once, so reconciliation never mistakes it for an orphan.
        let mut record = Record::new(&id, spec.name.clone(), image, spec.daemon, now, expires);
        record.read_only = spec.read_only;
        let record = self.register(record);
        let warnings = created.warnings.unwrap_or_default();
        let result = async {
            if !warnings.is_empty() {
                return Err(TaskError::LimitDiscarded { warnings });
            }
            let image = spec.image.as_deref().unwrap_or_default();
            self.inner.agent.ensure(&*self.inner.engine, image).await?;
            for (dir, tar) in archive {
                self.inner.engine.put_archive(&id, &dir, tar).await?;
            }
            // Attached before start, so not a byte of the agent's answers is missed.
            let channel = self.open_channel(&id).await;
            record.lock().unwrap().channel = channel;
            self.inner.engine.start_container(&id).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.forget(&id, EndReason::Failed);
            self.remove_in_background(id);
            return Err(e);
        }
        record.lock().unwrap().life = TaskState::Running;
        let image = record.lock().unwrap().image.clone();
        task_log!(Info, &id, spec.name.as_deref(); "started from {image}");
        Ok(record)
    }

    /// The container of a task. `binds` are its mounts, resolved; `quota` caps its writable
    /// layer at `limits.disk_mb` (only where the engine's storage driver can).
    fn container_config(
        &self,
        spec: &TaskSpec,
        image: &str,
        now: u64,
        expires: u64,
        binds: Vec<String>,
        quota: bool,
    ) -> ContainerConfig {
        let s = &self.inner.settings;
        let mut labels = BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_INSTANCE.to_string(), s.instance.clone()),
            (LABEL_DAEMON.to_string(), spec.daemon.to_string()),
            (LABEL_CREATED.to_string(), now.to_string()),
            (LABEL_EXPIRES.to_string(), expires.to_string()),
        ]);
        if let Some(n) = &spec.name {
            labels.insert(LABEL_NAME.to_string(), n.clone());
        }
        labels.insert(LABEL_CHANNEL.to_string(), "attach".to_string());
        labels.insert(LABEL_TOKEN.to_string(), create_token());
        if spec.read_only {
            labels.insert(LABEL_READ_ONLY.to_string(), "true".to_string());
        }
        let memory = (spec.limits.memory_mb as i64).saturating_mul(1 << 20);
        ContainerConfig {
            image: image.to_string(),
            entrypoint: vec![AGENT_PATH.to_string(), "agent".to_string()],
            cmd: Vec::new(),
            env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: spec.pwd.clone(),
            user: self.user_for(spec).ok().flatten(),
            labels,
            volumes: if spec.read_only {
                files::writable_dirs(&spec.resources, spec.pwd.as_deref())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| (d, serde_json::json!({})))
                    .collect()
            } else {
                BTreeMap::new()
            },
            network_disabled: true,
            open_stdin: true,
            stdin_once: false,
            attach_stdin: true,
            attach_stdout: true,
            attach_stderr: true,
            host_config: HostConfig {
                network_mode: "none".into(),
                cap_drop: vec!["ALL".into()],
                security_opt: vec!["no-new-privileges".into()],
                memory,
                memory_swap: memory,
                nano_cpus: spec.limits.nano_cpus(),
                pids_limit: spec.limits.pids as i64,
                binds: std::iter::once(self.inner.agent.bind())
                    .chain(binds)
                    .collect(),
                log_config: LogConfig {
                    kind: "none".into(),
                },
                readonly_rootfs: spec.read_only,
                runtime: s.runtime.clone(),
                storage_opt: if quota {
                    BTreeMap::from([("size".to_string(), format!("{}M", spec.limits.disk_mb))])
                } else {
                    BTreeMap::new()
                },
            },
        }
    }

    /// Runs `cmds` in order until one fails, recording each result as it finishes.
    async fn run(
        &self,
        record: &Shared,
        seq: u64,
        cmds: &[Command],
        env: &[(String, String)],
        pwd: Option<&str>,
        limits: &Limits,
    ) -> RunOutcome {
        let id = record.lock().unwrap().id.clone();
        let mut out = RunOutcome::default();
        let spill = self.inner.store.spiller();
        for (i, cmd) in cmds.iter().enumerate() {
            let attached = match self.channel_for(record).await {
                Some(chan) => run::run_attached(&chan, cmd, env, pwd, limits, &spill).await,
                None => None,
            };
            // No channel, or the agent never read the request: nothing ran, so exec it.
            let outcome = match attached {
                Some(outcome) => outcome,
                None => {
                    let engine = &*self.inner.engine;
                    run::run_command(engine, &id, cmd, env, pwd, limits, &spill).await
                }
            };
            let outcome = self.check_killed_with_container(&id, outcome).await;
            let ended = record.lock().unwrap().ended;
            let ended_failure = EndReason::failure;
            let r = outcome.as_ref().unwrap_or_else(RunError::partial);
            crate::metrics::METRICS.command_ran(Duration::from_millis(r.duration_ms));
            let done = match outcome {
                Ok(mut result) => {
                    // Killed with its container: whatever code Docker saw, it did not finish.
                    if ended.is_some() {
                        result.exit_code = None;
                    }
                    let ok = result.succeeded();
                    out.results.push(result);
                    if !ok {
                        out.failed_command = Some(i);
                        out.error = ended.map(ended_failure);
                    }
                    !ok
                }
                Err(RunError::Docker { partial, error }) => {
                    out.results.push(partial);
                    out.failed_command = Some(i);
                    out.error = Some(ended.map(ended_failure).unwrap_or_else(|| RunFailure {
                        code: error.step.code().to_string(),
                        message: error.to_string(),
                    }));
                    true
                }
                Err(RunError::Lost { partial, why }) => {
                    out.results.push(partial);
                    out.failed_command = Some(i);
                    out.error = Some(ended.map(ended_failure).unwrap_or_else(|| RunFailure {
                        code: "task.container_stopped".to_string(),
                        message: format!("the task's container stopped under the command: {why}"),
                    }));
                    true
                }
                Err(RunError::Unresponsive { partial, why }) => {
                    out.results.push(partial);
                    out.failed_command = Some(i);
                    out.error = Some(ended.map(ended_failure).unwrap_or_else(|| RunFailure {
                        code: "task.agent_unresponsive".to_string(),
                        message: format!("the task's agent did not run the command: {why}"),
                    }));
                    true
                }
                Err(RunError::ChannelBroken { partial, why }) => {
                    out.results.push(partial);
                    out.failed_command = Some(i);
                    out.error = Some(ended.map(ended_failure).unwrap_or_else(|| RunFailure {
                        code: "task.agent_channel_broken".to_string(),
                        message: format!("the channel to the task's agent broke: {why}"),
                    }));
                    true
                }
            };
            // GET shows the newest run's results as they finish.
            let mut r = record.lock().unwrap();
            if r.seq == seq {
                r.results = out.results.clone();
                r.failed_command = out.failed_command;
                r.error = out.error.clone();
            }
            if done {
                break;
            }
        }
        out
    }

    /// A command killed by a signal, or whose stream or exec failed, may have died with its
    /// container (a Docker restart stops every container; the OOM killer may take the whole
    /// sandbox): that is the task failing, not the command. A container the OOM killer ended
    /// is reported as the engine saw it: `oom_killed`, exit 137.
    async fn check_killed_with_container(
        &self,
        id: &str,
        outcome: Result<CmdResult, RunError>,
    ) -> Result<CmdResult, RunError> {
        let result = match &outcome {
            Ok(r) if r.exit_code.is_some_and(|c| c >= 128) => r.clone(),
            Err(RunError::Lost { partial, .. }) => partial.clone(),
            // 409: Docker refused the exec because the container is not running.
            Err(RunError::Docker { partial, error }) if error.status() == Some(409) => {
                partial.clone()
            }
            _ => return outcome,
        };
        let unfinished = CmdResult {
            exit_code: None,
            ..result.clone()
        };
        match self.inner.engine.inspect_container(id).await {
            Ok(c) if c.state.running => outcome,
            Ok(c) if c.state.oom_killed => Err(RunError::Lost {
                partial: CmdResult {
                    exit_code: Some(crate::agent::SIGKILL_EXIT.into()),
                    oom_killed: true,
                    ..result
                },
                why: "the kernel's OOM killer ended the container (memory limit)".into(),
            }),
            Ok(_) if outcome.is_err() => outcome,
            Ok(c) => Err(RunError::Lost {
                partial: unfinished,
                why: format!("the container is {}", c.state.status),
            }),
            Err(e) if e.status() == Some(404) => Err(RunError::Lost {
                partial: unfinished,
                why: "the container was removed".into(),
            }),
            Err(_) if outcome.is_err() => outcome,
            // Docker itself is unreachable: the exit code cannot be trusted either.
            Err(error) => Err(RunError::Docker {
                partial: unfinished,
                error,
            }),
        }
    }

    /// After a run: a daemon waits for more; anything else is removed, off the answer's
    /// path. Returns the task with this run's own results.
    fn finish(&self, record: &Shared, outcome: RunOutcome) -> TaskView {
        let (id, remove, mut view) = {
            let mut r = record.lock().unwrap();
            r.end_run();
            // A finished non-daemon task takes no more commands: its attach stream (one fd
            // here and one in the engine) must not live on until the TTL with the record.
            if !r.daemon && r.runs == 0 {
                r.channel = None;
            }
            (r.id.clone(), !r.daemon && r.runs == 0, r.view())
        };
        // This run's own answer: another run's failure does not make this one failed.
        if outcome.error.is_some() {
            view.state = TaskState::Failed;
        } else if view.state == TaskState::Failed {
            view.state = if view.daemon {
                TaskState::Idle
            } else {
                TaskState::Finished
            };
        }
        view.results = outcome.results;
        view.failed_command = outcome.failed_command;
        view.error = outcome.error;
        if remove {
            self.remove_in_background(id);
        }
        view
    }

    /// Writes a run's final view to the state directory and drops its results from memory;
    /// GET then streams them from disk. When they cannot be written (directory full or
    /// failing), they stay in memory and the view says so: nothing is silently dropped.
    async fn persist(&self, record: &Shared, seq: u64, mut view: TaskView) -> TaskView {
        if !self.inner.store.enabled() {
            return view;
        }
        let summary = record.lock().unwrap().summary(&view);
        let this = self.clone();
        let (written, returned) = tokio::task::spawn_blocking(move || {
            let written = this.inner.store.write(summary, &view);
            if written.is_err() {
                // Kept in memory until the TTL, as without a state directory: spill files go.
                run::into_memory(&mut view.results);
            }
            (written, view)
        })
        .await
        .expect("state writer panicked");
        view = returned;
        let mut r = record.lock().unwrap();
        match written {
            // A newer run started meanwhile: its own end will write; this file is stale.
            Ok(_) if r.seq != seq => {}
            // Removed (TTL, DELETE) while it was written: the file must not outlive it.
            Ok(_) if r.ended.is_some_and(EndReason::discards_results) => {
                drop(r);
                self.inner.store.remove(&view.id);
            }
            Ok(stored) => {
                // The run's spill files go with the answer, which holds their last references.
                r.results = Vec::new();
                view.kept = Some(stored.clone());
                r.stored = Some((stored, view.state));
            }
            Err(e) => {
                crate::metrics::METRICS.result_not_kept();
                task_log!(Warn, &view.id, view.name.as_deref(); "results not kept on disk: {e}");
                let failure = RunFailure {
                    code: e.code().to_string(),
                    message: format!("the results were not written to the state directory and will not survive a restart: {e}"),
                };
                if r.seq == seq {
                    r.persist_error = Some(failure.clone());
                    r.results = view.results.clone();
                }
                view.persist_error = Some(failure);
            }
        }
        view
    }

    /// A create that failed without Docker's answer (timeout, broken connection) may still
    /// have made the container: look for it by its token for a while and remove it.
    fn sweep_lost_create(&self, config: &ContainerConfig) {
        let Some(token) = config.labels.get(LABEL_TOKEN) else {
            return;
        };
        let labels = [
            LABEL_MANAGED.to_string(),
            self.instance_label(),
            format!("{LABEL_TOKEN}={token}"),
        ];
        let docker = self.inner.engine.clone();
        let guard = self.inner.background.enter();
        tokio::spawn(async move {
            let _guard = guard;
            let until = tokio::time::Instant::now() + SWEEP_FOR;
            while tokio::time::Instant::now() < until {
                if let Ok(found) = docker.list_containers(&labels).await {
                    for c in &found {
                        if docker.remove_container(&c.id).await.is_ok() {
                            task_log!(Warn, &c.id, None; "removed: created although its create call failed");
                        }
                    }
                    if !found.is_empty() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }

    fn remove_in_background(&self, id: String) {
        let docker = self.inner.engine.clone();
        let guard = self.inner.background.enter();
        tokio::spawn(async move {
            let _guard = guard;
            // The TTL timer stays armed: if this fails, expiry tries again.
            if let Err(e) = docker.remove_container(&id).await {
                task_log!(Warn, &id, None; "removal failed: {e}");
            }
        });
    }

    /// On SIGTERM: removes the containers of non-daemon tasks this process runs, waits for
    /// background removals, and leaves daemon tasks to their TTL (kept in their labels).
    pub async fn shutdown(&self, grace: Duration) {
        let doomed: Vec<String> = {
            let records = self.inner.records.lock().unwrap();
            records
                .values()
                .filter_map(|r| {
                    let r = r.lock().unwrap();
                    (!r.daemon).then(|| r.id.clone())
                })
                .collect()
        };
        for id in doomed {
            self.forget(&id, EndReason::Shutdown);
            self.remove_in_background(id);
        }
        for id in self.inner.pool.drain() {
            self.remove_in_background(id);
        }
        if tokio::time::timeout(grace, self.inner.background.wait_idle())
            .await
            .is_err()
        {
            log!(warn: "shutdown: background work still running after {grace:?}");
        }
    }
}

/// A token no other create of this process (or another) will carry.
fn create_token() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{n:x}", std::process::id(), nanos)
}

/// Whether a create failed because the storage driver cannot apply `StorageOpt size`. The
/// engine says so only in words (a 500 or 400 naming the option).
fn refuses_storage_opt(e: &DockerError) -> bool {
    matches!(e.status(), Some(400 | 500)) && e.to_string().to_ascii_lowercase().contains("storage")
}

/// Docker states of a container on its way out.
fn is_going(status: &str) -> bool {
    matches!(status, "removing" | "dead")
}

fn label_u64(labels: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    labels.get(key)?.parse().ok()
}

/// Docker's 12-character short id, for log lines.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// What a GET answers: a view built in memory, a kept view patched, or the kept file itself.
#[derive(Debug)]
pub enum Answer {
    View(Box<TaskView>),
    Json(serde_json::Value),
    /// Exactly the bytes to answer, in the state directory.
    Kept(Stored),
}

/// A task as a listing shows it: results kept on disk are left out, so listing stays cheap.
fn listed(view: &TaskView, on_disk: bool) -> serde_json::Value {
    let mut v = serde_json::to_value(view).unwrap_or_default();
    if on_disk {
        if let Some(o) = v.as_object_mut() {
            o.remove("results");
        }
    }
    v
}
