//! Putting a task's files into its running container: by its agent over its channel
//! when there is one (no engine round trip, written as the task's user, all or none), else
//! by the engine's archive upload, which stays the way for a container with no live agent.

use super::*;

use crate::agent::protocol::Placed;

/// How long the agent may take to place files: a floor, plus time at a slow 10 MB/s.
fn place_deadline(bytes: usize) -> Duration {
    Duration::from_secs(10) + Duration::from_millis((bytes / 10_000) as u64)
}

/// What the agent made of a placement.
pub(super) enum ByAgent {
    Placed,
    /// Nothing was placed; the archive upload may still do it (the reason, for the log).
    Fallback(String),
}

impl Tasks {
    /// Uploads archives made by [`files::uploads`], if any are left to upload.
    pub(super) async fn upload(
        &self,
        id: &str,
        archive: Option<files::Uploads>,
    ) -> Result<(), TaskError> {
        for (dir, tar) in archive.unwrap_or_default() {
            self.inner.engine.put_archive(id, &dir, tar).await?;
        }
        Ok(())
    }

    /// Asks the agent behind `chan` to place `resources`. A refusal by the rules (a symlink
    /// planted towards `/.lessl`, say) is the client's error, naming the field at fault.
    pub(super) async fn place_by_agent(
        &self,
        chan: &channel::Channel,
        resources: &[spec::Resource],
        mtime: u64,
    ) -> Result<ByAgent, TaskError> {
        let pack_error = |e: files::PackError| TaskError::Pack {
            field: e.field,
            message: e.message,
        };
        let Some((place, payload)) = files::placement(resources, mtime).map_err(pack_error)? else {
            return Ok(ByAgent::Placed);
        };
        let parts: Vec<&[u8]> = payload.iter().map(|p| p.as_ref()).collect();
        let wait = place_deadline(parts.iter().map(|p| p.len()).sum());
        let answer = chan.place(place, &parts, wait).await;
        match answer {
            Some(Placed { refused: None }) => Ok(ByAgent::Placed),
            Some(Placed {
                refused: Some(refusal),
            }) => {
                let field = resources
                    .get(refusal.index)
                    .map(|r| format!("{}.{}", r.field, refusal.field))
                    .unwrap_or_else(|| "resources".to_string());
                if refusal.forbidden {
                    Err(TaskError::Pack {
                        field,
                        message: refusal.reason,
                    })
                } else {
                    Ok(ByAgent::Fallback(format!("{field}: {}", refusal.reason)))
                }
            }
            None => Ok(ByAgent::Fallback("the agent did not answer".into())),
        }
    }

    /// PUT's files into the live task of `record`: by its agent, else by one archive upload
    /// checked against symlinks planted towards reserved directories.
    pub(super) async fn place_in_running(
        &self,
        record: &Shared,
        id: &str,
        resources: &[spec::Resource],
    ) -> Result<(), TaskError> {
        if resources.is_empty() {
            return Ok(());
        }
        let mtime = now_ms() / 1000;
        if let Some(chan) = self.channel_for(record).await {
            match self.place_by_agent(&chan, resources, mtime).await? {
                ByAgent::Placed => return Ok(()),
                ByAgent::Fallback(why) => {
                    task_log!(Info, id, None; "the agent did not place the files ({why}); uploading an archive")
                }
            }
        }
        let archive = files::pack(resources, mtime).map_err(|e| TaskError::Pack {
            field: e.field,
            message: e.message,
        })?;
        if let Some(tar) = archive {
            let (docker, container) = (&*self.inner.engine, id);
            let stat = |p: String| async move { docker.stat_path(container, &p).await };
            files::check_reachable(resources, stat)
                .await
                .map_err(|e| match e {
                    files::ReachError::Refused(e) => TaskError::Pack {
                        field: e.field,
                        message: e.message,
                    },
                    files::ReachError::Stat(e) => TaskError::Docker(e),
                })?;
            self.inner.engine.put_archive(id, "/", tar).await?;
        }
        Ok(())
    }
}
