//! A small Docker Engine API client over the engine's Unix socket, or TCP with TLS
//! ([`transport`]). It knows containers, execs and archives, and nothing of tasks, names or
//! TTLs. Every request goes through one private function, `send_unversioned`: the timeout,
//! the status check and the step's metric slot; every call but `/version` and `/_ping`
//! reaches it through `send`, which adds the negotiated API version.

mod archive;
pub mod models;
pub mod stream;
pub mod transport;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::OnceCell;

pub use archive::{Archive, PathStat};
use models::*;
pub use transport::Endpoint;

use crate::util::{error_chain, percent_encode};

/// The newest Engine API version this client is written against; older engines are spoken to
/// in their own version, down to [`MIN_API`].
pub const MAX_API: (u32, u32) = (1, 43);
/// Oldest engine API with every field this client sends (exec `WorkingDir`, `PidsLimit`).
pub const MIN_API: (u32, u32) = (1, 40);

/// Largest JSON answer read from Docker; lists of a few thousand containers fit easily.
const MAX_JSON_BYTES: usize = 64 << 20;

/// Which Docker call failed: the first half of every error, and its stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Version,
    Ping,
    CreateContainer,
    StartContainer,
    InspectContainer,
    ListContainers,
    RemoveContainer,
    WaitContainer,
    ContainerLogs,
    Attach,
    Events,
    PullImage,
    CreateExec,
    StartExec,
    InspectExec,
    PutArchive,
    Info,
    CreateVolume,
    InspectVolume,
    ListVolumes,
    RemoveVolume,
    StatPath,
    GetArchive,
}

impl Step {
    /// Every step, in declaration order, so `step as usize` indexes it: `metrics` keeps one
    /// slot per entry.
    pub const ALL: [Step; 23] = [
        Step::Version,
        Step::Ping,
        Step::CreateContainer,
        Step::StartContainer,
        Step::InspectContainer,
        Step::ListContainers,
        Step::RemoveContainer,
        Step::WaitContainer,
        Step::ContainerLogs,
        Step::Attach,
        Step::Events,
        Step::PullImage,
        Step::CreateExec,
        Step::StartExec,
        Step::InspectExec,
        Step::PutArchive,
        Step::Info,
        Step::CreateVolume,
        Step::InspectVolume,
        Step::ListVolumes,
        Step::RemoveVolume,
        Step::StatPath,
        Step::GetArchive,
    ];

    /// Stable dotted code for error bodies and logs.
    pub fn code(self) -> &'static str {
        match self {
            Step::Version => "docker.version",
            Step::Ping => "docker.ping",
            Step::CreateContainer => "docker.container.create",
            Step::StartContainer => "docker.container.start",
            Step::InspectContainer => "docker.container.inspect",
            Step::ListContainers => "docker.container.list",
            Step::RemoveContainer => "docker.container.remove",
            Step::WaitContainer => "docker.container.wait",
            Step::ContainerLogs => "docker.container.logs",
            Step::Attach => "docker.container.attach",
            Step::Events => "docker.events",
            Step::PullImage => "docker.image.pull",
            Step::CreateExec => "docker.exec.create",
            Step::StartExec => "docker.exec.start",
            Step::InspectExec => "docker.exec.inspect",
            Step::PutArchive => "docker.archive.put",
            Step::Info => "docker.info",
            Step::CreateVolume => "docker.volume.create",
            Step::InspectVolume => "docker.volume.inspect",
            Step::ListVolumes => "docker.volume.list",
            Step::RemoveVolume => "docker.volume.remove",
            Step::StatPath => "docker.archive.stat",
            Step::GetArchive => "docker.archive.get",
        }
    }
}

/// How a call failed: the second half of every error.
#[derive(Debug)]
pub enum Cause {
    /// The socket could not be reached, or the connection broke.
    Unreachable(String),
    /// No answer within the client's timeout.
    Timeout(Duration),
    /// Docker answered with a non-2xx status; `message` is Docker's own.
    Status { status: u16, message: String },
    /// Docker's answer could not be read or decoded.
    Decode(String),
    /// The engine speaks an API older than this client needs.
    TooOld(String),
}

/// A failed Docker call: which step, and why.
#[derive(Debug)]
pub struct DockerError {
    pub step: Step,
    pub cause: Cause,
}

impl DockerError {
    /// The HTTP status Docker answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self.cause {
            Cause::Status { status, .. } => Some(status),
            _ => None,
        }
    }
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = self.step.code();
        match &self.cause {
            Cause::Unreachable(e) => write!(f, "{step}: Docker is unreachable: {e}"),
            Cause::Timeout(d) => write!(f, "{step}: Docker did not answer within {d:?}"),
            Cause::Status { status, message } => {
                write!(f, "{step}: Docker answered {status}: {message}")
            }
            Cause::Decode(e) => write!(f, "{step}: unreadable answer from Docker: {e}"),
            Cause::TooOld(v) => write!(
                f,
                "{step}: Docker speaks API {v}, this server needs {}.{} or newer",
                MIN_API.0, MIN_API.1
            ),
        }
    }
}

impl std::error::Error for DockerError {}

/// What a remove found.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed {
    Yes,
    Gone,
    /// Someone else's removal of it is under way; it may still be running for a moment.
    InProgress,
}

/// Handle to one Docker Engine. Cheap to clone: the connection pool is shared.
#[derive(Clone)]
pub struct Docker {
    /// Pooled HTTP/1 connections to the engine.
    client: Client<transport::Connector, Full<Bytes>>,
    /// Where the engine answers.
    endpoint: Endpoint,
    /// `/v1.NN`, negotiated on first use so Lessl can start while Docker is down.
    version: std::sync::Arc<OnceCell<String>>,
    /// Deadline for Docker to answer any call (headers, and whole bodies of JSON answers).
    timeout: Duration,
}

impl Docker {
    pub fn new(endpoint: impl Into<Endpoint>, timeout: Duration) -> Self {
        let endpoint = endpoint.into();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(transport::Connector::new(endpoint.clone()));
        Docker {
            client,
            endpoint,
            version: Default::default(),
            timeout,
        }
    }

    /// Where the engine answers.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Every call but the two below goes through here: the negotiated API version, then
    /// [`Docker::send_unversioned`]. Returns the response with its body unread, for the
    /// caller to decode or stream.
    async fn send(
        &self,
        step: Step,
        method: Method,
        path_and_query: &str,
        body: Body,
    ) -> Result<Response<Incoming>, DockerError> {
        let version = self.version().await?;
        self.send_unversioned(step, method, &format!("{version}{path_and_query}"), body)
            .await
    }

    /// The one function every request goes through: timeout, status check, and the step's
    /// metric slot. Called directly only by `/version` (the negotiation itself) and `/_ping`
    /// (liveness, which must answer even from an engine too old to speak to).
    async fn send_unversioned(
        &self,
        step: Step,
        method: Method,
        path_and_query: &str,
        body: Body,
    ) -> Result<Response<Incoming>, DockerError> {
        let started = std::time::Instant::now();
        let sent = self.send_raw(step, method, path_and_query, body).await;
        crate::metrics::METRICS.docker_call(step, started.elapsed(), sent.is_err());
        sent
    }

    async fn send_raw(
        &self,
        step: Step,
        method: Method,
        path_and_query: &str,
        body: Body,
    ) -> Result<Response<Incoming>, DockerError> {
        let fail = |cause| DockerError { step, cause };
        // The connector ignores the authority: every request goes to the one engine.
        let uri: hyper::Uri = format!("http://engine{path_and_query}")
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| fail(Cause::Decode(e.to_string())))?;
        let upgrade = matches!(body, Body::Upgrade | Body::UpgradeJson(_));
        let (content_type, bytes) = match body {
            Body::Empty | Body::Upgrade => (None, Bytes::new()),
            Body::Json(b) | Body::UpgradeJson(b) => (Some("application/json"), b),
            Body::Tar(b) => (Some("application/x-tar"), b),
        };
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        if upgrade {
            // Docker hijacks the connection for a raw two-way stream after a 101.
            req = req
                .header(hyper::header::CONNECTION, "Upgrade")
                .header(hyper::header::UPGRADE, "tcp");
        }
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| fail(Cause::Decode(e.to_string())))?;
        let resp = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => return Err(fail(Cause::Timeout(self.timeout))),
            Ok(Err(e)) => return Err(fail(Cause::Unreachable(error_chain(&e)))),
            Ok(Ok(resp)) => resp,
        };
        if resp.status().is_success()
            || (upgrade && resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS)
        {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = self.read_body(step, resp.into_body(), 64 << 10).await?;
        #[derive(serde::Deserialize)]
        struct Message {
            message: String,
        }
        let message = serde_json::from_slice::<Message>(&body)
            .map(|m| m.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
        Err(fail(Cause::Status { status, message }))
    }

    async fn read_body(
        &self,
        step: Step,
        body: Incoming,
        limit: usize,
    ) -> Result<Bytes, DockerError> {
        let fail = |cause| DockerError { step, cause };
        match tokio::time::timeout(self.timeout, Limited::new(body, limit).collect()).await {
            Err(_) => Err(fail(Cause::Timeout(self.timeout))),
            Ok(Err(e)) => Err(fail(Cause::Unreachable(e.to_string()))),
            Ok(Ok(c)) => Ok(c.to_bytes()),
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        step: Step,
        resp: Response<Incoming>,
    ) -> Result<T, DockerError> {
        let body = self
            .read_body(step, resp.into_body(), MAX_JSON_BYTES)
            .await?;
        serde_json::from_slice(&body).map_err(|e| DockerError {
            step,
            cause: Cause::Decode(e.to_string()),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        step: Step,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<T, DockerError> {
        let resp = self.send(step, method, path, body).await?;
        self.json(step, resp).await
    }

    /// Negotiates once: the engine's version, capped at [`MAX_API`]. A failure is not cached,
    /// so Lessl recovers by itself when Docker comes back.
    async fn version(&self) -> Result<&str, DockerError> {
        self.version
            .get_or_try_init(|| async {
                let resp = self
                    .send_unversioned(Step::Version, Method::GET, "/version", Body::Empty)
                    .await?;
                let v: VersionInfo = self.json(Step::Version, resp).await?;
                let theirs = parse_api_version(&v.api_version).ok_or_else(|| DockerError {
                    step: Step::Version,
                    cause: Cause::Decode(format!("bad ApiVersion {:?}", v.api_version)),
                })?;
                if theirs < MIN_API {
                    return Err(DockerError {
                        step: Step::Version,
                        cause: Cause::TooOld(v.api_version),
                    });
                }
                let (major, minor) = theirs.min(MAX_API);
                Ok(format!("/v{major}.{minor}"))
            })
            .await
            .map(|s| s.as_str())
    }

    /// The API version in use (`1.41`), negotiating if needed.
    pub async fn api_version(&self) -> Result<String, DockerError> {
        Ok(self.version().await?.trim_start_matches("/v").to_string())
    }

    /// Liveness of the engine.
    pub async fn ping(&self) -> Result<(), DockerError> {
        let resp = self
            .send_unversioned(Step::Ping, Method::GET, "/_ping", Body::Empty)
            .await?;
        self.read_body(Step::Ping, resp.into_body(), 1024)
            .await
            .map(drop)
    }

    pub async fn create_container(
        &self,
        name: Option<&str>,
        config: &ContainerConfig,
    ) -> Result<CreateResponse, DockerError> {
        let path = match name {
            Some(n) => format!("/containers/create?name={}", percent_encode(n)),
            None => "/containers/create".to_string(),
        };
        let body = Body::json(Step::CreateContainer, config)?;
        self.call(Step::CreateContainer, Method::POST, &path, body)
            .await
    }

    pub async fn start_container(&self, id: &str) -> Result<(), DockerError> {
        let path = format!("/containers/{id}/start");
        self.send(Step::StartContainer, Method::POST, &path, Body::Empty)
            .await
            .map(drop)
    }

    pub async fn inspect_container(&self, id: &str) -> Result<ContainerInspect, DockerError> {
        let path = format!("/containers/{}/json", percent_encode(id));
        self.call(Step::InspectContainer, Method::GET, &path, Body::Empty)
            .await
    }

    /// All containers, running or not, carrying every one of `labels` (`key=value` or `key`).
    pub async fn list_containers(
        &self,
        labels: &[String],
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters = serde_json::json!({ "label": labels }).to_string();
        let path = format!(
            "/containers/json?all=true&filters={}",
            percent_encode(&filters)
        );
        self.call(Step::ListContainers, Method::GET, &path, Body::Empty)
            .await
    }

    /// Kills (if needed) and removes the container and its anonymous volumes.
    pub async fn remove_container(&self, id: &str) -> Result<Removed, DockerError> {
        let path = format!("/containers/{id}?force=true&v=true");
        match self
            .send(Step::RemoveContainer, Method::DELETE, &path, Body::Empty)
            .await
        {
            Ok(_) => Ok(Removed::Yes),
            Err(e) if e.status() == Some(404) => Ok(Removed::Gone),
            // Other 409s are real refusals. The engine gives this one no code of its own, only
            // its message ("removal of container … is already in progress"), so the text is
            // the one signal there is.
            Err(e) if e.status() == Some(409) && e.to_string().contains("already in progress") => {
                Ok(Removed::InProgress)
            }
            Err(e) => Err(e),
        }
    }

    /// What the engine says of itself: its storage driver and the runtimes it knows.
    pub async fn info(&self) -> Result<EngineInfo, DockerError> {
        self.call(Step::Info, Method::GET, "/info", Body::Empty)
            .await
    }

    /// Whether the engine knows the OCI runtime `name`.
    pub async fn has_runtime(&self, name: &str) -> Result<bool, DockerError> {
        let info = self.info().await?;
        Ok(info.runtimes.is_some_and(|r| r.contains_key(name)))
    }

    /// Creates a named volume with `labels` on the default (`local`) driver.
    pub async fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Volume, DockerError> {
        let body = Body::json(
            Step::CreateVolume,
            &serde_json::json!({"Name": name, "Labels": labels}),
        )?;
        self.call(Step::CreateVolume, Method::POST, "/volumes/create", body)
            .await
    }

    /// The volume `name`, or None when the engine has none by that name.
    pub async fn inspect_volume(&self, name: &str) -> Result<Option<Volume>, DockerError> {
        let path = format!("/volumes/{}", percent_encode(name));
        match self
            .call(Step::InspectVolume, Method::GET, &path, Body::Empty)
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every volume carrying all of `labels` (`key=value` or `key`).
    pub async fn list_volumes(&self, labels: &[String]) -> Result<Vec<Volume>, DockerError> {
        let filters = serde_json::json!({ "label": labels }).to_string();
        let path = format!("/volumes?filters={}", percent_encode(&filters));
        let list: VolumeList = self
            .call(Step::ListVolumes, Method::GET, &path, Body::Empty)
            .await?;
        Ok(list.volumes.unwrap_or_default())
    }

    /// Removes a volume; a volume some container still uses is [`VolumeRemoved::InUse`].
    pub async fn remove_volume(&self, name: &str) -> Result<VolumeRemoved, DockerError> {
        let path = format!("/volumes/{}", percent_encode(name));
        match self
            .send(Step::RemoveVolume, Method::DELETE, &path, Body::Empty)
            .await
        {
            Ok(_) => Ok(VolumeRemoved::Yes),
            Err(e) if e.status() == Some(404) => Ok(VolumeRemoved::Gone),
            Err(e) if e.status() == Some(409) => Ok(VolumeRemoved::InUse),
            Err(e) => Err(e),
        }
    }

    /// Waits (up to the client timeout) until the container is no longer running.
    pub async fn wait_container(&self, id: &str) -> Result<WaitResponse, DockerError> {
        let path = format!("/containers/{id}/wait?condition=not-running");
        self.call(Step::WaitContainer, Method::POST, &path, Body::Empty)
            .await
    }

    /// Waits (up to the client timeout) until the container no longer exists.
    pub async fn wait_removed(&self, id: &str) -> Result<(), DockerError> {
        let path = format!("/containers/{id}/wait?condition=removed");
        match self
            .send(Step::WaitContainer, Method::POST, &path, Body::Empty)
            .await
        {
            Ok(resp) => self
                .read_body(Step::WaitContainer, resp.into_body(), 64 << 10)
                .await
                .map(drop),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn create_exec(
        &self,
        id: &str,
        config: &ExecConfig,
    ) -> Result<IdResponse, DockerError> {
        let path = format!("/containers/{id}/exec");
        let body = Body::json(Step::CreateExec, config)?;
        self.call(Step::CreateExec, Method::POST, &path, body).await
    }

    /// Starts an exec attached; the body is Docker's multiplexed stream (see [`stream`]),
    /// read by the caller under its own deadline.
    pub async fn start_exec(&self, exec_id: &str) -> Result<Incoming, DockerError> {
        let path = format!("/exec/{exec_id}/start");
        let body = Body::json(
            Step::StartExec,
            &serde_json::json!({"Detach": false, "Tty": false}),
        )?;
        let resp = self
            .send(Step::StartExec, Method::POST, &path, body)
            .await?;
        Ok(resp.into_body())
    }

    /// Starts an exec created with `AttachStdin` and returns the hijacked two-way stream:
    /// Docker's multiplexed output comes out, the exec's stdin goes in, and shutting down
    /// the write side (a half-close) is its end of file.
    pub async fn start_exec_with_stdin(
        &self,
        exec_id: &str,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, DockerError> {
        let path = format!("/exec/{exec_id}/start");
        let body = serde_json::to_vec(&serde_json::json!({"Detach": false, "Tty": false}))
            .expect("a literal serializes");
        let resp = self
            .send(
                Step::StartExec,
                Method::POST,
                &path,
                Body::UpgradeJson(body.into()),
            )
            .await?;
        self.upgraded(Step::StartExec, resp).await
    }

    /// The raw stream a 101 answer switched the connection to.
    async fn upgraded(
        &self,
        step: Step,
        resp: Response<Incoming>,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, DockerError> {
        match tokio::time::timeout(self.timeout, hyper::upgrade::on(resp)).await {
            Err(_) => Err(DockerError {
                step,
                cause: Cause::Timeout(self.timeout),
            }),
            Ok(Err(e)) => Err(DockerError {
                step,
                cause: Cause::Unreachable(error_chain(&e)),
            }),
            Ok(Ok(upgraded)) => Ok(TokioIo::new(upgraded)),
        }
    }

    pub async fn inspect_exec(&self, exec_id: &str) -> Result<ExecInspect, DockerError> {
        let path = format!("/exec/{exec_id}/json");
        self.call(Step::InspectExec, Method::GET, &path, Body::Empty)
            .await
    }

    /// The container's logs as Docker's multiplexed stream (needs a logging driver that
    /// keeps them; Lessl's own containers use none).
    pub async fn container_logs(&self, id: &str) -> Result<Bytes, DockerError> {
        let path = format!("/containers/{id}/logs?stdout=true&stderr=true");
        let resp = self
            .send(Step::ContainerLogs, Method::GET, &path, Body::Empty)
            .await?;
        self.read_body(Step::ContainerLogs, resp.into_body(), MAX_JSON_BYTES)
            .await
    }

    /// Attaches to the container's stdin, stdout and stderr (before or after start) and
    /// returns the raw two-way stream: Docker's multiplexed frames come out, stdin goes in.
    pub async fn attach(&self, id: &str) -> Result<TokioIo<hyper::upgrade::Upgraded>, DockerError> {
        let path =
            format!("/containers/{id}/attach?stream=true&stdin=true&stdout=true&stderr=true");
        let resp = self
            .send(Step::Attach, Method::POST, &path, Body::Upgrade)
            .await?;
        self.upgraded(Step::Attach, resp).await
    }

    /// Docker's event stream for containers carrying every one of `labels`: one JSON object
    /// per line, for as long as the connection lasts (the timeout covers only the headers).
    pub async fn events(&self, labels: &[String]) -> Result<Incoming, DockerError> {
        let filters = serde_json::json!({ "type": ["container"], "label": labels }).to_string();
        let path = format!("/events?filters={}", percent_encode(&filters));
        let resp = self
            .send(Step::Events, Method::GET, &path, Body::Empty)
            .await?;
        Ok(resp.into_body())
    }

    /// Pulls `image` (a tag is added when it names none: an empty tag would pull every tag),
    /// waiting for the whole pull up to `deadline`. Docker reports pull failures inside a
    /// 200 stream of progress objects, so the stream is read to its end and checked.
    pub async fn pull_image(&self, image: &str, deadline: Duration) -> Result<(), DockerError> {
        let last = image.rsplit('/').next().unwrap_or(image);
        let reference = if last.contains(':') || image.contains('@') {
            image.to_string()
        } else {
            format!("{image}:latest")
        };
        let path = format!("/images/create?fromImage={}", percent_encode(&reference));
        let resp = self
            .send(Step::PullImage, Method::POST, &path, Body::Empty)
            .await?;
        let fail = |cause| DockerError {
            step: Step::PullImage,
            cause,
        };
        let body = match tokio::time::timeout(
            deadline,
            Limited::new(resp.into_body(), MAX_JSON_BYTES).collect(),
        )
        .await
        {
            Err(_) => return Err(fail(Cause::Timeout(deadline))),
            Ok(Err(e)) => return Err(fail(Cause::Unreachable(e.to_string()))),
            Ok(Ok(c)) => c.to_bytes(),
        };
        #[derive(serde::Deserialize)]
        struct Progress {
            #[serde(default)]
            error: Option<String>,
        }
        let failed = serde_json::Deserializer::from_slice(&body)
            .into_iter::<Progress>()
            .filter_map(Result::ok)
            .find_map(|p| p.error);
        match failed {
            // Docker answered 200; the 404 is Lessl's, the status Docker gives an image it does
            // not have, so the task layer reads a refused pull as an unknown image (422). Typing
            // it (a `Cause` of its own) waits for the task layer to match that cause instead.
            Some(message) => Err(fail(Cause::Status {
                status: 404,
                message,
            })),
            None => Ok(()),
        }
    }
}

/// A request body, typed so `send` sets the right Content-Type.
enum Body {
    Empty,
    /// No body; asks Docker to switch the connection to a raw stream.
    Upgrade,
    /// A JSON body, and asks Docker to switch the connection to a raw stream.
    UpgradeJson(Bytes),
    Json(Bytes),
    Tar(Bytes),
}

impl Body {
    fn json<T: Serialize>(step: Step, value: &T) -> Result<Body, DockerError> {
        serde_json::to_vec(value)
            .map(|v| Body::Json(v.into()))
            .map_err(|e| DockerError {
                step,
                cause: Cause::Decode(e.to_string()),
            })
    }
}

fn parse_api_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_is_listed_once_at_its_index() {
        for (i, step) in Step::ALL.iter().enumerate() {
            assert_eq!(*step as usize, i, "{step:?}");
        }
        let mut codes: Vec<&str> = Step::ALL.iter().map(|s| s.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Step::ALL.len(), "two steps share a code");
    }

    #[test]
    fn api_versions() {
        assert_eq!(parse_api_version("1.41"), Some((1, 41)));
        assert_eq!(parse_api_version("1.x"), None);
        assert!((1, 41) < MAX_API && (1, 39) < MIN_API && (1, 44) > MAX_API);
    }
}
