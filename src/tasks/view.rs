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
    /// `starting`, `running` (a command runs), `idle` (daemon, waiting for PUTs), `finished`,
    /// `failed` (Lessl could not complete the run; see `error`), or Docker's own state for a
    /// container this Lessl adopted after a restart.
    pub state: String,
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
}

/// A run that Lessl could not complete (not a command exiting non-zero).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFailure {
    pub code: String,
    pub message: String,
}
