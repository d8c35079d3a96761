//! What the API shows of a task: the answer body of every verb.

use serde::{Deserialize, Serialize};

use super::run::CmdResult;
/// Moved to `util`; re-exported so `tasks` keeps its import.
pub use crate::util::rfc3339;

/// One task as the API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    /// The container id.
    pub id: String,
    pub name: Option<String>,
    pub image: String,
    pub state: TaskState,
    pub daemon: bool,
    pub created_at: String,
    pub expires_at: String,
    /// The latest run's commands, in order.
    pub results: Vec<CmdResult>,
    /// Index in `results` of the command that failed and stopped the run.
    pub failed_command: Option<usize>,
    /// Why the run could not complete, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RunFailure>,
    /// Set when these results could not be written to the state directory (`state.full`,
    /// `state.write`): they are answered now but will not survive a restart of Lessl.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist_error: Option<RunFailure>,
    /// What the run's `collect` read out of the container; absent when it named none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Files>,
    /// Where this very view was written in the state directory, when it was: a waited
    /// answer streams that file rather than encoding the results again in memory.
    #[serde(skip)]
    pub kept: Option<crate::state::Stored>,
}

/// Where a task is in its life, as the API names it. Every verb has one answer per state
/// (the README's table of states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Its container is being created, filled and started.
    Starting,
    /// A run is in progress (a command runs).
    Running,
    /// A daemon task waiting for PUTs.
    Idle,
    /// Its run ended; `failed_command` says whether a command failed.
    Finished,
    /// Lessl could not complete its newest run; `error` says why.
    Failed,
    /// Its container stopped without Lessl ending a run (killed, the engine restarted).
    Exited,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Idle => "idle",
            TaskState::Finished => "finished",
            TaskState::Failed => "failed",
            TaskState::Exited => "exited",
        }
    }

    /// The name as [`TaskState::as_str`] writes it (read back from the state directory).
    pub fn parse(s: &str) -> Option<TaskState> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    /// The state of a container no record describes, from the engine's own words.
    pub fn of_container(running: bool, status: &str) -> TaskState {
        match (running, status) {
            (true, _) => TaskState::Idle,
            (false, "created") => TaskState::Starting,
            (false, _) => TaskState::Exited,
        }
    }
}

/// A run's `files`, shared: the record, the run's answer and the state writer hold the same
/// bytes (up to `--max-collect-bytes`, as base64) rather than a copy each.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Files(std::sync::Arc<Vec<CollectedFile>>);

impl Files {
    pub fn new(files: Vec<CollectedFile>) -> Files {
        Files(std::sync::Arc::new(files))
    }
}

impl std::ops::Deref for Files {
    type Target = [CollectedFile];
    fn deref(&self) -> &[CollectedFile] {
        &self.0
    }
}

impl Serialize for Files {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// One entry of `files`: a regular file with its content, a symlink (never followed), or a
/// path left out with the reason (`error`: not found, over the maximum, a special file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectedFile {
    /// Absolute path in the container.
    pub path: String,
    /// Bytes of a regular file (also given when it was left out for its size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Permission bits in octal, as `resources[].mode` takes them (`"0644"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// A symlink's target, as written in the container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RunFailure>,
}

/// A run that Lessl could not complete (not a command exiting non-zero).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFailure {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_by_name() {
        for s in [
            TaskState::Starting,
            TaskState::Running,
            TaskState::Idle,
            TaskState::Finished,
            TaskState::Failed,
            TaskState::Exited,
        ] {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(TaskState::parse("paused"), None);
        assert_eq!(
            TaskState::of_container(false, "created"),
            TaskState::Starting
        );
        assert_eq!(TaskState::of_container(false, "exited"), TaskState::Exited);
    }
}
