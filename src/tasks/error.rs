//! Why a task operation failed: one enum, its variants named after what went wrong, with
//! the field at fault where there is one. The API layer chooses the status from it.

use std::fmt;

use crate::docker::DockerError;
use crate::fetch::FetchError;

use super::view::TaskState;

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
    /// A live task has nothing at that path.
    PathNotFound(String),
    /// A Docker call failed; the error names the step.
    Docker(DockerError),
}

impl TaskError {
    /// Prefixes the field path with the element index of an array body.
    pub(super) fn prefixed(self, index: Option<usize>) -> Self {
        match (self, index) {
            (TaskError::Download { field, error }, Some(i)) => TaskError::Download {
                field: format!("[{i}].{field}"),
                error,
            },
            // A resource the agent refused to place while the batch started.
            (TaskError::Pack { field, message }, Some(i)) => TaskError::Pack {
                field: format!("[{i}].{field}"),
                message,
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
            TaskError::PathNotFound(p) => write!(f, "the task has no file or directory `{p}`"),
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
