//! What a task's `mnt` resources name on the host and the engine: host paths checked free of
//! symlinks just before the engine is asked to mount them, task volume names mapped to
//! volumes this instance created and labelled (never another application's), the list and
//! removal of those volumes, and the sweep that removes the ones left unused. Never decides
//! which paths are allowed (the spec's rules do) and never touches containers.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::engine::Engine;
use crate::docker::models::{Volume, VolumeRemoved};
use crate::spec::{Mount, MountSource};
use crate::task_log;

use super::{TaskError, LABEL_INSTANCE, LABEL_MANAGED};

/// On volumes Lessl creates: the name tasks know it by.
pub const LABEL_VOLUME: &str = "lessl.volume";

/// The engine's name of task volume `name` for `instance`. Instance names have no `.`, so the
/// first `.` after the prefix separates them; the labels are checked all the same, since
/// anyone may create a volume of any name.
pub fn engine_name(instance: &str, name: &str) -> String {
    format!("lessl.{instance}.{name}")
}

/// Whether `path` on this host is a real directory reached without any symlink. The engine
/// follows links when it mounts, so a link anywhere on the path could lead it anywhere.
pub fn check_host_path(path: &str) -> Result<(), String> {
    let mut at = std::path::PathBuf::from("/");
    for component in Path::new(path).components().skip(1) {
        at.push(component);
        let meta = std::fs::symlink_metadata(&at)
            .map_err(|e| format!("host path {}: {e}", at.display()))?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "host path {} is a symbolic link, which the engine would follow; mount the \
                 directory it points to, if that is allowed",
                at.display()
            ));
        }
        if !meta.is_dir() {
            return Err(format!("host path {} is not a directory", at.display()));
        }
    }
    Ok(())
}

/// A volume of this instance, as `GET /volumes` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VolumeView {
    /// The name tasks use in `mnt`.
    pub name: String,
    /// The engine's name for it.
    pub volume: String,
    /// When the engine created it, as the engine says.
    pub created_at: Option<String>,
    /// Some container of this instance mounts it now.
    pub in_use: bool,
}

/// The volumes of one instance.
pub struct Volumes {
    /// Separates this instance's volumes from others'.
    instance: String,
    /// Task volume names patterns that may be mounted (`--allow-volumes`).
    allowed: Vec<String>,
    /// Removed after this long unused.
    idle: Duration,
    /// When each volume was last seen in use (or first seen unused). Volume labels cannot
    /// change after creation, so this lives here; a restart starts every clock afresh, which
    /// only ever keeps a volume longer. std Mutex, never held across an `.await`.
    last_used: Mutex<HashMap<String, Instant>>,
}

impl Volumes {
    pub fn new(instance: String, allowed: Vec<String>, idle: Duration) -> Volumes {
        Volumes {
            instance,
            allowed,
            idle,
            last_used: Mutex::default(),
        }
    }

    /// How often the sweep looks: often enough to keep close to the idle time.
    pub fn sweep_every(&self) -> Duration {
        (self.idle / 4).clamp(Duration::from_millis(500), Duration::from_secs(60))
    }

    fn labels(&self, name: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
            (LABEL_VOLUME.to_string(), name.to_string()),
        ])
    }

    fn is_ours(&self, volume: &Volume, name: &str) -> bool {
        let labels = volume.labels.clone().unwrap_or_default();
        labels.contains_key(LABEL_MANAGED)
            && labels.get(LABEL_INSTANCE) == Some(&self.instance)
            && labels.get(LABEL_VOLUME).map(String::as_str) == Some(name)
    }

    /// Checks every mount of a task before anything is created: volume names against the
    /// operator's patterns, host paths free of symlinks.
    pub fn check(&self, mounts: &[Mount]) -> Result<(), TaskError> {
        for m in mounts {
            let refused = |message: String| TaskError::Mount {
                field: format!("{}.mnt", m.field),
                message,
            };
            match &m.source {
                MountSource::Volume(name) => {
                    if self.allowed.is_empty() {
                        return Err(refused(
                            "named volumes are not enabled on this server (--allow-volumes)".into(),
                        ));
                    }
                    if !self.allowed.iter().any(|p| super::admission::glob(p, name)) {
                        return Err(refused(format!(
                            "volume `{name}` is not one this server allows (--allow-volumes)"
                        )));
                    }
                }
                MountSource::Host { path, .. } => check_host_path(path).map_err(refused)?,
            }
        }
        Ok(())
    }

    /// The bind strings for `HostConfig.Binds`, creating this instance's volumes as needed.
    /// A volume of the mapped name that this instance did not create is refused.
    pub async fn binds(
        &self,
        docker: &dyn Engine,
        mounts: &[Mount],
    ) -> Result<Vec<String>, TaskError> {
        let mut binds = Vec::with_capacity(mounts.len());
        for m in mounts {
            let mode = if m.read_only { "ro" } else { "rw" };
            let source = match &m.source {
                MountSource::Host { path, .. } => {
                    // Checked again as late as possible: the window before the engine mounts
                    // is the create call, and no task can write where this path leads.
                    check_host_path(path).map_err(|message| TaskError::Mount {
                        field: format!("{}.mnt", m.field),
                        message,
                    })?;
                    path.clone()
                }
                MountSource::Volume(name) => {
                    let engine = engine_name(&self.instance, name);
                    // Creating is idempotent on the engine: an existing volume comes back as
                    // it is, labels included, which is how a foreign one is recognised.
                    let volume = docker.create_volume(&engine, &self.labels(name)).await?;
                    if !self.is_ours(&volume, name) {
                        return Err(TaskError::VolumeForeign {
                            field: format!("{}.mnt", m.field),
                            volume: engine,
                        });
                    }
                    self.last_used
                        .lock()
                        .unwrap()
                        .insert(engine.clone(), Instant::now());
                    engine
                }
            };
            binds.push(format!("{source}:{}:{mode}", m.target));
        }
        Ok(binds)
    }

    /// Every volume of this instance, and whether a container mounts it now.
    pub async fn list(&self, docker: &dyn Engine) -> Result<Vec<VolumeView>, TaskError> {
        let (volumes, in_use) = self.survey(docker).await?;
        let mut out: Vec<VolumeView> = volumes
            .into_iter()
            .filter_map(|v| {
                let name = v.labels.as_ref()?.get(LABEL_VOLUME)?.clone();
                Some(VolumeView {
                    in_use: in_use.contains_key(&v.name),
                    name,
                    volume: v.name,
                    created_at: v.created_at,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes volume `name` of this instance: 404 when there is none, 409 while in use.
    pub async fn remove(&self, docker: &dyn Engine, name: &str) -> Result<(), TaskError> {
        let engine = engine_name(&self.instance, name);
        let not_found = || TaskError::VolumeNotFound(name.to_string());
        match docker.inspect_volume(&engine).await? {
            Some(v) if self.is_ours(&v, name) => {}
            _ => return Err(not_found()),
        }
        match docker.remove_volume(&engine).await? {
            VolumeRemoved::Yes => {
                self.last_used.lock().unwrap().remove(&engine);
                task_log!(Info, &engine, None; "volume removed");
                Ok(())
            }
            VolumeRemoved::Gone => Err(not_found()),
            VolumeRemoved::InUse => Err(TaskError::VolumeInUse(name.to_string())),
        }
    }

    /// Removes the volumes no container has mounted for longer than the idle time.
    pub async fn sweep(&self, docker: &dyn Engine) -> Result<(), TaskError> {
        let (volumes, in_use) = self.survey(docker).await?;
        let now = Instant::now();
        let mut doomed = Vec::new();
        {
            let mut last = self.last_used.lock().unwrap();
            last.retain(|name, _| volumes.iter().any(|v| &v.name == name));
            for v in &volumes {
                if in_use.contains_key(&v.name) {
                    last.insert(v.name.clone(), now);
                    continue;
                }
                let since = *last.entry(v.name.clone()).or_insert(now);
                if now.duration_since(since) >= self.idle {
                    doomed.push(v.name.clone());
                }
            }
        }
        for name in doomed {
            match docker.remove_volume(&name).await {
                Ok(VolumeRemoved::Yes) => {
                    self.last_used.lock().unwrap().remove(&name);
                    task_log!(Info, &name, None; "volume removed: unused for {:?}", self.idle);
                }
                // Mounted again since the survey, or already gone: nothing to do.
                Ok(VolumeRemoved::InUse | VolumeRemoved::Gone) => {}
                Err(e) => task_log!(Warn, &name, None; "volume removal failed: {e}"),
            }
        }
        Ok(())
    }

    /// This instance's volumes, and the ones some container (of any kind) mounts.
    async fn survey(
        &self,
        docker: &dyn Engine,
    ) -> Result<(Vec<Volume>, HashMap<String, ()>), TaskError> {
        let labels = [
            LABEL_MANAGED.to_string(),
            format!("{LABEL_INSTANCE}={}", self.instance),
        ];
        let volumes = docker.list_volumes(&labels).await?;
        let mut in_use = HashMap::new();
        for c in docker.list_containers(&[]).await? {
            for m in c.mounts.unwrap_or_default() {
                if let Some(name) = m.name {
                    in_use.insert(name, ());
                }
            }
        }
        Ok((volumes, in_use))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_with_a_link_anywhere_are_refused() {
        let base = std::env::temp_dir().join(format!("lessl-mounts-{}", std::process::id()));
        let real = base.join("real/inner");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        std::fs::write(base.join("file"), "x").unwrap();
        let s = |p: std::path::PathBuf| p.to_str().unwrap().to_string();

        assert_eq!(check_host_path(&s(real.clone())), Ok(()));
        let e = check_host_path(&s(base.join("link/inner"))).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let e = check_host_path(&s(base.join("file"))).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        assert!(check_host_path(&s(base.join("missing"))).is_err());
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn engine_names_are_prefixed_by_instance() {
        assert_eq!(engine_name("lessl", "cache"), "lessl.lessl.cache");
    }
}
