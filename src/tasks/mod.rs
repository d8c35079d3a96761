//! Task lifecycle: create a container for a spec, place its files, run its commands, keep
//! what a GET shows, and remove the container at the end of its run (non-daemon) or its TTL.
//! The engine is the store: everything needed to clean up after a crash is in container
//! labels, and results are in the state directory. This module never speaks HTTP to clients,
//! and reaches the engine only through [`engine::Engine`].
//!
//! This file holds the service (`Tasks`), its settings and its background loops. Each other
//! room owns one thing:
//! - [`record`]: a task's typed state (`TaskState`, `EndReason`) and its transitions; pure.
//! - [`view`]: what the API shows of a task.
//! - [`error`]: the one error type, `TaskError`.
//! - [`lookup`]: the records and the engine's containers, found by reference; GET and lists.
//! - [`start`]: making a task's container (config, files, attach) — never runs commands.
//! - [`runs`]: POST and PUT runs, their results, the state they leave, their persistence.
//! - [`run`] and [`channel`]: one command, over the agent's attach stream or by exec.
//! - [`journal`]: a run's live events (NDJSON lines) and their readers.
//! - [`admission`]: run slots, daemon slots (counted from the records), allow-lists.
//! - [`mirror`]: the engine's events, reconciliation after a restart, TTL expiry.
//! - [`expiry`]: the TTL schedule; pure, on tokio's clock.
//! - [`warm`] and [`pool`]: the warm pool's life and its bookkeeping.
//! - [`collect`]: files read out of a container (`collect`, `GET .../files/...`).
//! - [`files`]: resources packed into archives or a placement for the agent; [`placing`]:
//!   files into a running container, by its agent or the archive API; [`mounts`]: binds and volumes;
//!   [`agent_volume`]: the agent without a host path; [`disk`]: what bounds a task's disk.
//! - [`engine`]: the seam to the engine, and an in-memory fake for the unit tests in
//!   `tests.rs`, which run on paused time.

mod admission;
pub mod agent_volume;
pub mod channel;
pub mod collect;
mod disk;
pub mod engine;
mod error;
pub mod expiry;
pub mod files;
pub mod journal;
pub mod lane;
mod lookup;
mod mirror;
pub mod mounts;
mod placing;
pub mod pool;
mod record;
pub mod run;
mod runs;
mod start;
#[cfg(test)]
mod tests;
pub mod view;
mod warm;

pub use admission::{check_runtime_floor, GVISOR_MIN_PIDS};
use disk::refuses_storage_opt;
pub use disk::DiskLimit;
pub use error::TaskError;
use lookup::label_u64;
pub use lookup::Answer;
pub use runs::Events;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::docker::models::{ContainerConfig, CreateResponse, HostConfig, LogConfig};
use crate::docker::{DockerError, Removed};
use crate::fetch;
use crate::spec::{self, Bounds, Cmd, Limits, TaskSpec};
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
/// The task's `callback_url`, so every run of a daemon calls back, after a restart too.
const LABEL_CALLBACK: &str = "lessl.callback_url";
/// How long Lessl keeps looking for a container whose create answer it never got.
const SWEEP_FOR: Duration = Duration::from_secs(60);
/// Present when the container's agent takes commands over its attach stream (stdin open).
const LABEL_CHANNEL: &str = "lessl.channel";
/// The key of the container's lane directory, when it has one.
const LABEL_LANE: &str = "lessl.lane";

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
    /// Offer agents a lane (a socket past the engine) where the agent is a bind.
    pub lanes: bool,
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
    /// What one run's `collect` may read out, bytes (`--max-collect-bytes`).
    pub max_collect_bytes: u64,
    /// The bearer token (`--token-file`) callbacks are signed with; None signs nothing.
    pub callback_token: Option<String>,
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
    /// The directories of agents' lanes.
    lanes: lane::Lanes,
}

/// Unix milliseconds.
use crate::util::now_ms;

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
        let bind = settings.agent_source == agent_volume::AgentSource::Bind;
        let lanes = match store.dir() {
            Some(dir) if settings.lanes && bind && !settings.exec_only => {
                lane::Lanes::open(dir.join(crate::state::LANES_DIR))
            }
            _ => lane::Lanes::disabled(),
        };
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
                lanes,
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
                // Asked again until the engine answers once.
                this.disk_limit().await;
                if let Err(e) = this.inner.volumes.sweep(&*this.inner.engine).await {
                    log!(warn: "volume sweep failed: {e}");
                }
            }
        });
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

    fn instance_label(&self) -> String {
        format!("{LABEL_INSTANCE}={}", self.inner.settings.instance)
    }

    fn container_name(&self, task_name: &str) -> String {
        format!("{}.{task_name}", self.inner.settings.instance)
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

pub use crate::util::short;
