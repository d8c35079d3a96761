//! What bounds the disk a task writes on this engine: learnt once from the engine's storage
//! driver (and from a create the driver refuses), logged, and shown in `/health`.

use super::*;

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
    pub(super) fn of_engine(info: &crate::docker::models::EngineInfo) -> DiskLimit {
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

impl Tasks {
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

    /// Whether a create asks the engine for a storage quota: unless the engine is known to
    /// have none. Not knowing yet (the engine's `/info` not answered) asks, and an engine that
    /// cannot refuses the create in words that teach it; the request path never waits for
    /// `/info` itself.
    pub(super) fn asks_for_quota(&self) -> bool {
        !matches!(*self.inner.disk.lock().unwrap(), DiskLimit::Unbounded(_))
    }

    pub(super) fn learn_disk_limit(&self, limit: DiskLimit) {
        let mut known = self.inner.disk.lock().unwrap();
        if *known != limit {
            match &limit {
                DiskLimit::Unbounded(_) => log!(warn: "disk limits: {}", limit.describe()),
                _ => log!("disk limits: {}", limit.describe()),
            }
            *known = limit;
        }
    }
}

/// Whether a create failed because the storage driver cannot apply `StorageOpt size`. The
/// engine says so only in words (a 500 or 400 naming the option).
pub(super) fn refuses_storage_opt(e: &DockerError) -> bool {
    matches!(e.status(), Some(400 | 500)) && e.to_string().to_ascii_lowercase().contains("storage")
}
