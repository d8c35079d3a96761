//! Every failure the API can answer with, and the one `match` that chooses its HTTP status
//! and stable error code. Error bodies are `{"error": {"code", "message", "field"}}`.

use std::fmt;

use hyper::header::{HeaderValue, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::docker::{Cause, DockerError};
use crate::fetch::FetchError;
use crate::spec::SpecError;
use crate::tasks::TaskError;

#[derive(Debug)]
pub enum ApiError {
    /// No or wrong bearer token.
    Unauthorized,
    /// No such endpoint.
    RouteNotFound(String),
    /// The endpoint exists; the method does not. Carries the `Allow` value.
    MethodNotAllowed(&'static str),
    /// The body is declared as something other than JSON.
    UnsupportedMediaType(String),
    /// The body is over the cap (bytes).
    BodyTooLarge(usize),
    /// The body could not be read from the connection.
    ReadBody(String),
    /// The client did not send its body in time.
    BodyTimeout(std::time::Duration),
    /// A query parameter is unknown or malformed.
    BadQuery { param: String, message: String },
    /// The request is well-formed JSON but not acceptable for this endpoint.
    BadRequest { field: String, message: String },
    /// The body is not a valid task spec.
    Spec(SpecError),
    /// The task service failed.
    Task(TaskError),
    /// The health check could not reach Docker.
    DockerDown(TaskError),
    /// The request came on a connection past `--max-connections` (the number).
    Overloaded(usize),
}

impl PartialEq for ApiError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::Spec(e)
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        ApiError::Task(e)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Unauthorized => f.write_str("missing or wrong bearer token"),
            ApiError::RouteNotFound(p) => write!(f, "no endpoint at {p}"),
            ApiError::MethodNotAllowed(allow) => {
                write!(f, "method not allowed here; allowed: {allow}")
            }
            ApiError::UnsupportedMediaType(ct) => {
                write!(f, "body must be application/json, not `{ct}`")
            }
            ApiError::BodyTooLarge(n) => {
                write!(f, "body is larger than this server's limit of {n} bytes")
            }
            ApiError::ReadBody(e) => write!(f, "could not read the body: {e}"),
            ApiError::BodyTimeout(d) => write!(f, "the body did not arrive within {d:?}"),
            ApiError::BadQuery { message, .. } | ApiError::BadRequest { message, .. } => {
                f.write_str(message)
            }
            ApiError::Spec(e) => e.fmt(f),
            ApiError::Task(e) | ApiError::DockerDown(e) => e.fmt(f),
            ApiError::Overloaded(n) => write!(
                f,
                "this server is serving its maximum of {n} connections; retry shortly"
            ),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

fn non_empty(f: &str) -> Option<&str> {
    if f.is_empty() {
        None
    } else {
        Some(f)
    }
}

fn docker_status(e: &DockerError) -> StatusCode {
    match e.cause {
        Cause::Unreachable(_) | Cause::TooOld(_) => StatusCode::SERVICE_UNAVAILABLE,
        Cause::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        Cause::Status { .. } | Cause::Decode(_) => StatusCode::BAD_GATEWAY,
    }
}

/// A failed `src` download: refused before any traffic (400), too large (413), too slow
/// (504), or the remote end failing (502).
fn download_class<'a>(
    field: &'a str,
    error: &FetchError,
) -> (StatusCode, &'static str, Option<&'a str>) {
    let (status, code) = match error {
        FetchError::ParseUrl(_) | FetchError::Refused(_) => {
            (StatusCode::BAD_REQUEST, "resource.refused")
        }
        FetchError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "resource.too_large"),
        FetchError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "resource.timeout"),
        FetchError::Resolve(_)
        | FetchError::Connect(_)
        | FetchError::Tls(_)
        | FetchError::Request(_)
        | FetchError::Status { .. }
        | FetchError::Redirect(_)
        | FetchError::ReadBody(_) => (StatusCode::BAD_GATEWAY, "resource.download"),
    };
    (status, code, non_empty(field))
}

impl ApiError {
    /// The one place a status is chosen: (status, stable code, field at fault).
    fn classify(&self) -> (StatusCode, &str, Option<&str>) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "http.unauthorized", None),
            ApiError::RouteNotFound(_) => (StatusCode::NOT_FOUND, "http.not_found", None),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "http.method", None),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "http.media_type", None)
            }
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "http.too_large", None),
            ApiError::ReadBody(_) => (StatusCode::BAD_REQUEST, "http.body", None),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "http.timeout", None),
            ApiError::BadQuery { param, .. } => {
                (StatusCode::BAD_REQUEST, "http.query", Some(param.as_str()))
            }
            ApiError::BadRequest { field: f, .. } => {
                (StatusCode::BAD_REQUEST, "request.invalid", non_empty(f))
            }
            ApiError::Spec(SpecError::Decode { field: f, .. }) => {
                (StatusCode::BAD_REQUEST, "spec.decode", non_empty(f))
            }
            ApiError::Spec(SpecError::Invalid { field: f, .. }) => {
                (StatusCode::BAD_REQUEST, "spec.invalid", non_empty(f))
            }
            ApiError::Spec(SpecError::TooLarge { field: f, .. }) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "spec.too_large",
                non_empty(f),
            ),
            ApiError::Task(TaskError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "task.not_found", None)
            }
            ApiError::Task(TaskError::NameClash(_)) => {
                (StatusCode::CONFLICT, "task.name_clash", Some("task_name"))
            }
            ApiError::Task(TaskError::NotRunning { .. }) => {
                (StatusCode::CONFLICT, "task.not_running", None)
            }
            ApiError::Task(TaskError::ImageUnknown { .. }) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "task.image_unknown",
                Some("image"),
            ),
            ApiError::Task(TaskError::Request { field: f, .. }) => {
                (StatusCode::BAD_REQUEST, "task.request", non_empty(f))
            }
            ApiError::Task(TaskError::Pack { field: f, .. }) => {
                (StatusCode::BAD_REQUEST, "task.resource", non_empty(f))
            }
            ApiError::Task(TaskError::LimitDiscarded { .. }) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "task.limit_discarded",
                None,
            ),
            ApiError::Task(TaskError::ImageNotAllowed(_)) => (
                StatusCode::FORBIDDEN,
                "task.image_not_allowed",
                Some("image"),
            ),
            ApiError::Task(TaskError::UserNotAllowed(_)) => {
                (StatusCode::FORBIDDEN, "task.user_not_allowed", Some("user"))
            }
            ApiError::Task(TaskError::Busy) => (StatusCode::TOO_MANY_REQUESTS, "task.busy", None),
            ApiError::Task(TaskError::TooManyDaemons(_)) => {
                (StatusCode::TOO_MANY_REQUESTS, "task.too_many_daemons", None)
            }
            ApiError::Task(TaskError::Download { field: f, error }) => download_class(f, error),
            ApiError::Task(TaskError::Mount { field: f, .. }) => {
                (StatusCode::BAD_REQUEST, "task.mount_refused", non_empty(f))
            }
            ApiError::Task(TaskError::VolumeForeign { field: f, .. }) => {
                (StatusCode::CONFLICT, "volume.foreign", non_empty(f))
            }
            ApiError::Task(TaskError::VolumeNotFound(_)) => {
                (StatusCode::NOT_FOUND, "volume.not_found", None)
            }
            ApiError::Task(TaskError::VolumeInUse(_)) => {
                (StatusCode::CONFLICT, "volume.in_use", None)
            }
            ApiError::Task(TaskError::PathNotFound(_)) => {
                (StatusCode::NOT_FOUND, "task.path_not_found", Some("path"))
            }
            ApiError::Task(TaskError::Docker(e)) | ApiError::DockerDown(TaskError::Docker(e)) => {
                (docker_status(e), e.step.code(), None)
            }
            ApiError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "http.overloaded", None),
            ApiError::DockerDown(
                TaskError::NotFound(_)
                | TaskError::NameClash(_)
                | TaskError::NotRunning { .. }
                | TaskError::ImageUnknown { .. }
                | TaskError::Request { .. }
                | TaskError::Pack { .. }
                | TaskError::LimitDiscarded { .. }
                | TaskError::ImageNotAllowed(_)
                | TaskError::UserNotAllowed(_)
                | TaskError::Busy
                | TaskError::TooManyDaemons(_)
                | TaskError::Download { .. }
                | TaskError::Mount { .. }
                | TaskError::VolumeForeign { .. }
                | TaskError::VolumeNotFound(_)
                | TaskError::VolumeInUse(_)
                | TaskError::PathNotFound(_),
            ) => (StatusCode::SERVICE_UNAVAILABLE, "health.docker", None),
        }
    }

    pub fn into_response(self) -> Response<super::ApiBody> {
        let (status, code, field) = self.classify();
        let body = Body {
            error: Detail {
                code,
                message: self.to_string(),
                field,
            },
        };
        let mut resp = super::json(status, &body);
        match &self {
            ApiError::Unauthorized => {
                resp.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"lessl\""),
                );
            }
            ApiError::MethodNotAllowed(allow) => super::allow_header(&mut resp, allow),
            ApiError::Task(TaskError::Busy | TaskError::TooManyDaemons(_))
            | ApiError::Overloaded(_) => {
                resp.headers_mut()
                    .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::Step;

    #[test]
    fn statuses_and_codes_follow_the_contract() {
        let docker = |cause| {
            ApiError::Task(TaskError::Docker(DockerError {
                step: Step::CreateContainer,
                cause,
            }))
        };
        let cases = [
            (ApiError::Unauthorized, 401, "http.unauthorized"),
            (ApiError::BodyTooLarge(1), 413, "http.too_large"),
            (
                ApiError::UnsupportedMediaType("text/plain".into()),
                415,
                "http.media_type",
            ),
            (
                ApiError::Task(TaskError::NotFound("x".into())),
                404,
                "task.not_found",
            ),
            (
                ApiError::Task(TaskError::NameClash("x".into())),
                409,
                "task.name_clash",
            ),
            (
                ApiError::Task(TaskError::NotRunning {
                    reference: "x".into(),
                    state: crate::tasks::view::TaskState::Finished,
                }),
                409,
                "task.not_running",
            ),
            (
                ApiError::Task(TaskError::Mount {
                    field: "resources[0].mnt".into(),
                    message: "m".into(),
                }),
                400,
                "task.mount_refused",
            ),
            (
                ApiError::Task(TaskError::VolumeForeign {
                    field: "resources[0].mnt".into(),
                    volume: "v".into(),
                }),
                409,
                "volume.foreign",
            ),
            (
                ApiError::Task(TaskError::VolumeNotFound("v".into())),
                404,
                "volume.not_found",
            ),
            (
                ApiError::Task(TaskError::VolumeInUse("v".into())),
                409,
                "volume.in_use",
            ),
            (
                ApiError::Task(TaskError::ImageUnknown {
                    image: "i".into(),
                    message: "m".into(),
                }),
                422,
                "task.image_unknown",
            ),
            (
                docker(Cause::Unreachable("refused".into())),
                503,
                "docker.container.create",
            ),
            (ApiError::Overloaded(512), 503, "http.overloaded"),
            (
                docker(Cause::Timeout(std::time::Duration::from_secs(1))),
                504,
                "docker.container.create",
            ),
            (
                docker(Cause::Status {
                    status: 500,
                    message: "boom".into(),
                }),
                502,
                "docker.container.create",
            ),
        ];
        for (err, status, code) in cases {
            let (s, c, _) = err.classify();
            assert_eq!((s.as_u16(), c), (status, code), "{err}");
        }
    }

    #[tokio::test]
    async fn error_body_names_the_field() {
        use http_body_util::BodyExt;
        let err = ApiError::Spec(SpecError::Invalid {
            field: "resources[0].dest".into(),
            message: "bad".into(),
        });
        let resp = err.into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "code": "spec.invalid",
                "message": "resources[0].dest: bad",
                "field": "resources[0].dest",
            }})
        );
    }
}
