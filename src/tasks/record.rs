//! A task as this process knows it beyond its container's labels: its typed state
//! ([`TaskState`]), why it ended ([`EndReason`]), what the engine last said of its container,
//! and its newest run's results. Pure data and transitions: no I/O, no engine, no clock.

use std::sync::Arc;

use crate::state::{Stored, Summary};

use super::channel;
use super::run::CmdResult;
use super::view::{rfc3339, Files, RunFailure, TaskState, TaskView};

/// Why a task's record was dropped; a run still using it reports this as its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// `DELETE` removed it.
    Deleted,
    /// Its TTL came.
    Expired,
    /// Lessl shut down (SIGTERM) while it was not a daemon.
    Shutdown,
    /// Its container was removed behind Lessl's back.
    Removed,
    /// Lessl could not create, fill or start its container.
    Failed,
}

impl EndReason {
    /// The stable code a run cut short by this end reports.
    pub fn code(self) -> &'static str {
        match self {
            EndReason::Deleted => "task.deleted",
            EndReason::Expired => "task.expired",
            EndReason::Shutdown => "task.shutdown",
            EndReason::Removed => "task.removed",
            EndReason::Failed => "task.failed",
        }
    }

    /// The error of a run this end cut short.
    pub fn failure(self) -> RunFailure {
        let message = match self {
            EndReason::Expired => "the task reached its TTL and its container was removed",
            EndReason::Deleted => "the task was deleted while it ran",
            EndReason::Shutdown => "Lessl shut down while the task ran",
            EndReason::Removed | EndReason::Failed => {
                "the task's container was removed while it ran"
            }
        };
        RunFailure {
            code: self.code().to_string(),
            message: message.to_string(),
        }
    }

    /// Whether the task's kept results go with it. A shutdown keeps them for the restart.
    pub fn discards_results(self) -> bool {
        self != EndReason::Shutdown
    }
}

/// What the engine last said of a task's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// Created or running.
    Up,
    /// It stopped: its agent died, or the engine stopped it.
    Stopped,
    /// It no longer exists.
    Gone,
}

/// What one run did, for its own answer.
#[derive(Debug, Default)]
pub struct RunOutcome {
    pub results: Vec<CmdResult>,
    pub failed_command: Option<usize>,
    pub error: Option<RunFailure>,
}

/// What this process knows of a task beyond its labels.
#[derive(Debug)]
pub struct Record {
    pub id: String,
    pub name: Option<String>,
    pub image: String,
    pub daemon: bool,
    /// Unix milliseconds.
    pub created: u64,
    /// Unix milliseconds.
    pub expires: u64,
    /// Where the task is in its life, as Lessl drives it; [`Record::state`] adds what the
    /// engine says of the container.
    pub life: TaskState,
    /// The engine's side: whether the container still runs, or exists at all.
    pub container: Container,
    /// Set when the record was dropped (TTL, DELETE, removal), to say why to a run still
    /// using it.
    pub ended: Option<EndReason>,
    /// The newest run's results so far (empty once they are kept on disk).
    pub results: Vec<CmdResult>,
    pub failed_command: Option<usize>,
    pub error: Option<RunFailure>,
    /// The attach stream to the container's agent; None means commands go by exec.
    pub channel: Option<Arc<channel::Channel>>,
    /// Whether the container was created to take commands over an attach stream.
    pub attachable: bool,
    /// Runs in progress (PUTs may overlap).
    pub runs: usize,
    /// Its root filesystem is read-only: files can be placed only at creation.
    pub read_only: bool,
    /// Where each run's final view is POSTed, unless the run's own spec names another.
    pub callback_url: Option<String>,
    /// Number of the newest run, whose results GET shows.
    pub seq: u64,
    /// The newest run's view is in the state directory (with the state it was written with),
    /// and `results` is empty: GET streams it from there, so memory does not grow with output.
    pub stored: Option<(Stored, TaskState)>,
    /// Why the newest run's results could not be kept on disk.
    pub persist_error: Option<RunFailure>,
    /// What the newest run collected, until its view is kept on disk.
    pub files: Option<Files>,
    /// The newest run's live events while it runs, for followers.
    pub events: Option<Arc<super::journal::Journal>>,
}

impl Record {
    /// A record for a container that exists now; the run fields start empty.
    pub fn new(
        id: &str,
        name: Option<String>,
        image: String,
        daemon: bool,
        created: u64,
        expires: u64,
    ) -> Record {
        Record {
            id: id.to_string(),
            name,
            image,
            daemon,
            created,
            expires,
            life: TaskState::Starting,
            container: Container::Up,
            ended: None,
            results: Vec::new(),
            failed_command: None,
            error: None,
            channel: None,
            attachable: true,
            runs: 0,
            read_only: false,
            callback_url: None,
            seq: 0,
            stored: None,
            persist_error: None,
            files: None,
            events: None,
        }
    }

    /// The record of a finished task read back from the state directory after a restart.
    pub fn restored(summary: &Summary, stored: Stored) -> Record {
        let mut r = Record::new(
            &summary.id,
            summary.name.clone(),
            summary.image.clone(),
            summary.daemon,
            summary.created,
            summary.expires,
        );
        let written = TaskState::parse(&summary.state).unwrap_or(TaskState::Finished);
        r.life = match written {
            TaskState::Failed => TaskState::Failed,
            _ => TaskState::Finished,
        };
        r.container = Container::Gone;
        r.failed_command = summary.failed_command;
        r.error = summary.error.clone();
        r.stored = Some((stored, written));
        r
    }

    /// The state the API shows: a task whose container stopped under it is `exited`.
    pub fn state(&self) -> TaskState {
        match (self.life, self.container) {
            (TaskState::Starting | TaskState::Running | TaskState::Idle, Container::Stopped)
            | (TaskState::Starting | TaskState::Running | TaskState::Idle, Container::Gone) => {
                TaskState::Exited
            }
            (life, _) => life,
        }
    }

    /// Whether `reference` names this task: its id, its 12-character short id, or its name.
    pub fn answers_to(&self, reference: &str) -> bool {
        self.id == reference
            || (reference.len() == 12 && self.id.starts_with(reference))
            || self.name.as_deref() == Some(reference)
    }

    /// Whether this record counts against `--max-daemons`.
    pub fn holds_daemon_slot(&self) -> bool {
        self.daemon && self.container != Container::Gone
    }

    /// Whether a PUT may run commands in it now (as far as this process knows): a live
    /// daemon whose container runs. A daemon whose last run failed (a broken channel, say)
    /// still takes commands, by exec; a task that is not a daemon never does after its run.
    pub fn takes_commands(&self) -> bool {
        self.daemon
            && self.ended.is_none()
            && self.container == Container::Up
            && matches!(
                self.life,
                TaskState::Idle | TaskState::Running | TaskState::Failed
            )
    }

    /// A run starts: the previous run's results are forgotten. Returns the run's number.
    pub fn begin_run(&mut self) -> u64 {
        self.runs += 1;
        self.seq += 1;
        self.life = TaskState::Running;
        self.results.clear();
        self.failed_command = None;
        self.error = None;
        self.stored = None;
        self.persist_error = None;
        self.files = None;
        self.seq
    }

    /// A run ended: when it was the last one, a daemon waits for more and anything else is
    /// finished; a newest run that Lessl could not complete (`error`) leaves it failed.
    pub fn end_run(&mut self) {
        self.runs -= 1;
        if self.runs == 0 && self.life == TaskState::Running {
            self.life = if self.daemon {
                TaskState::Idle
            } else {
                TaskState::Finished
            };
        }
        if self.error.is_some() {
            self.life = TaskState::Failed;
        }
    }

    /// What the state directory's header says of this record's newest run.
    pub fn summary(&self, view: &TaskView) -> Summary {
        Summary {
            lessl_state: 1,
            id: self.id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            state: view.state.as_str().to_string(),
            daemon: self.daemon,
            created: self.created,
            expires: self.expires,
            failed_command: view.failed_command,
            error: view.error.clone(),
            body_len: 0,
        }
    }

    pub fn view(&self) -> TaskView {
        TaskView {
            id: self.id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            state: self.state(),
            daemon: self.daemon,
            created_at: rfc3339(self.created / 1000),
            expires_at: rfc3339(self.expires / 1000),
            results: self.results.clone(),
            failed_command: self.failed_command,
            error: self.error.clone(),
            persist_error: self.persist_error.clone(),
            files: self.files.clone(),
            kept: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(daemon: bool) -> Record {
        Record::new("abc", None, "img".into(), daemon, 0, 1)
    }

    #[test]
    fn a_daemon_idles_between_runs_and_a_task_finishes() {
        let mut d = record(true);
        assert_eq!(d.state(), TaskState::Starting);
        assert!(!d.takes_commands(), "not before its first run ends");
        d.begin_run();
        assert_eq!(d.state(), TaskState::Running);
        assert!(d.takes_commands(), "overlapping PUTs run side by side");
        d.end_run();
        assert_eq!(d.state(), TaskState::Idle);
        assert!(d.holds_daemon_slot());

        let mut t = record(false);
        t.begin_run();
        t.end_run();
        assert_eq!(t.state(), TaskState::Finished);
        assert!(
            !t.takes_commands(),
            "a finished task takes no PUT, whatever the timing"
        );
        assert!(!t.holds_daemon_slot());
    }

    #[test]
    fn overlapping_runs_end_when_the_last_one_does() {
        let mut d = record(true);
        d.begin_run();
        d.begin_run();
        d.end_run();
        assert_eq!(d.state(), TaskState::Running);
        d.end_run();
        assert_eq!(d.state(), TaskState::Idle);
    }

    #[test]
    fn a_failed_run_or_a_stopped_container_shows() {
        let mut t = record(false);
        t.begin_run();
        t.error = Some(EndReason::Deleted.failure());
        t.end_run();
        assert_eq!(t.state(), TaskState::Failed);
        assert!(!t.takes_commands());
        // A daemon whose run failed still takes commands (by exec if its channel broke).
        let mut d = record(true);
        d.begin_run();
        d.error = Some(EndReason::Failed.failure());
        d.end_run();
        assert_eq!(d.state(), TaskState::Failed);
        assert!(d.takes_commands());

        let mut d = record(true);
        d.begin_run();
        d.end_run();
        d.container = Container::Stopped;
        assert_eq!(d.state(), TaskState::Exited);
        assert!(!d.takes_commands());
        d.container = Container::Gone;
        assert!(!d.holds_daemon_slot());
    }

    #[test]
    fn end_reasons_have_codes_and_say_whether_results_go() {
        for (r, code) in [
            (EndReason::Deleted, "task.deleted"),
            (EndReason::Expired, "task.expired"),
            (EndReason::Shutdown, "task.shutdown"),
            (EndReason::Removed, "task.removed"),
            (EndReason::Failed, "task.failed"),
        ] {
            assert_eq!(r.failure().code, code);
            assert!(!r.failure().message.is_empty());
            assert_eq!(r.discards_results(), r != EndReason::Shutdown);
        }
    }
}
