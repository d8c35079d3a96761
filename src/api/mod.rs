//! The HTTP API: routing, authentication, body limits, and the one place where errors
//! become status codes. It parses requests and calls the task service; it never calls Docker.

mod body;
mod error;
mod events;

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::spec;
use crate::state::{FileBody, Part};
use crate::tasks::collect::PathOut;
use crate::tasks::view::TaskView;
use crate::tasks::{Answer, Events, Tasks};
pub use body::ApiBody;
pub use error::ApiError;

/// The OpenAPI 3.1 document of this API, served as is at `GET /openapi.json`.
const OPENAPI: &str = include_str!("openapi.json");

/// What every request handler shares.
pub struct Api {
    /// The task service behind the verbs.
    pub tasks: Tasks,
    /// Bearer token every request must carry, when configured.
    pub token: Option<String>,
    /// Request bodies past this many bytes are refused before parsing.
    pub max_body_bytes: usize,
    /// A client that takes longer than this to send its body is cut off.
    pub request_timeout: std::time::Duration,
    /// This Lessl's `--instance`, sent as `Lessl-Instance` on every answer: behind a load
    /// balancer, it tells a client which instance holds the task it just made.
    pub instance: String,
}

/// A routed request: what to do, with its path parameters.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Health,
    OpenApi,
    Metrics,
    ListTasks,
    CreateTask,
    GetTask(&'a str),
    /// A task's file or directory: the reference, and the path after `/files` (raw).
    GetPath(&'a str, &'a str),
    TaskEvents(&'a str),
    PutTask(&'a str),
    DeleteTask(&'a str),
    ListVolumes,
    DeleteVolume(&'a str),
}

/// The routing table: (method, path) to a route, or the error that says why not.
/// `HEAD` is answered wherever `GET` is, as the same route: hyper writes the head of the
/// answer (status and headers, `Content-Length` included) and never its body.
fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    match (segments.as_slice(), method) {
        (["health"], &Method::GET) => Ok(Route::Health),
        (["health"], _) => Err(ApiError::MethodNotAllowed("GET, HEAD")),
        (["openapi.json"], &Method::GET) => Ok(Route::OpenApi),
        (["openapi.json"], _) => Err(ApiError::MethodNotAllowed("GET, HEAD")),
        (["metrics"], &Method::GET) => Ok(Route::Metrics),
        (["metrics"], _) => Err(ApiError::MethodNotAllowed("GET, HEAD")),
        (["tasks"], &Method::GET) => Ok(Route::ListTasks),
        (["tasks"], &Method::POST) => Ok(Route::CreateTask),
        (["tasks"], _) => Err(ApiError::MethodNotAllowed("GET, HEAD, POST")),
        (["tasks", r], &Method::GET) if !r.is_empty() => Ok(Route::GetTask(r)),
        (["tasks", r, "files", ..], m) if !r.is_empty() => match m {
            &Method::GET => Ok(Route::GetPath(r, files_path(path, r))),
            _ => Err(ApiError::MethodNotAllowed("GET, HEAD")),
        },
        (["tasks", r], &Method::PUT) if !r.is_empty() => Ok(Route::PutTask(r)),
        (["tasks", r], &Method::DELETE) if !r.is_empty() => Ok(Route::DeleteTask(r)),
        (["tasks", r], _) if !r.is_empty() => {
            Err(ApiError::MethodNotAllowed("GET, HEAD, PUT, DELETE"))
        }
        (["tasks", r, "events"], &Method::GET) if !r.is_empty() => Ok(Route::TaskEvents(r)),
        (["tasks", r, "events"], _) if !r.is_empty() => {
            Err(ApiError::MethodNotAllowed("GET, HEAD"))
        }
        (["volumes"], &Method::GET) => Ok(Route::ListVolumes),
        (["volumes"], _) => Err(ApiError::MethodNotAllowed("GET, HEAD")),
        (["volumes", v], &Method::DELETE) if !v.is_empty() => Ok(Route::DeleteVolume(v)),
        (["volumes", v], _) if !v.is_empty() => Err(ApiError::MethodNotAllowed("DELETE")),
        _ => Err(ApiError::RouteNotFound(path.to_string())),
    }
}

impl Api {
    /// Serves one request; never fails, every error becomes a JSON answer.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ApiBody>, std::convert::Infallible> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let started = std::time::Instant::now();
        let mut response = match self.dispatch(req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        // Checked at start: [A-Za-z0-9_-], always a valid header value.
        if let Ok(v) = hyper::header::HeaderValue::from_str(&self.instance) {
            response.headers_mut().insert("lessl-instance", v);
        }
        crate::metrics::METRICS.http_answered(response.status().as_u16());
        crate::log!(
            "{method} {path} -> {} in {} ms",
            response.status().as_u16(),
            started.elapsed().as_millis()
        );
        Ok(response)
    }

    /// Serves one request on a connection past `--max-connections`: `/health` is answered
    /// as usual, so monitoring still sees the truth, and anything else is a 503. Either way
    /// the connection closes after the answer.
    pub async fn handle_overflow(
        self: Arc<Self>,
        req: Request<Incoming>,
        max_connections: usize,
    ) -> Result<Response<ApiBody>, std::convert::Infallible> {
        let health = route(req.method(), req.uri().path()) == Ok(Route::Health);
        let mut response = if health {
            self.handle(req).await?
        } else {
            let response = ApiError::Overloaded(max_connections).into_response();
            crate::metrics::METRICS.http_answered(response.status().as_u16());
            crate::log!(
                "{} {} -> 503: over --max-connections",
                req.method(),
                req.uri().path()
            );
            response
        };
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        Ok(response)
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Result<Response<ApiBody>, ApiError> {
        self.authenticate(&req)?;
        let route = route(req.method(), req.uri().path())?;
        let query = Query::parse(req.uri().query())?;
        match route {
            Route::Health => {
                query.none()?;
                let api = self.tasks.health().await.map_err(ApiError::DockerDown)?;
                let disk = self.tasks.disk_limit().await.describe();
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({"status": "ok", "docker_api": api, "disk_limit": disk}),
                ))
            }
            Route::OpenApi => {
                query.none()?;
                let mut resp =
                    Response::new(ApiBody::bytes(Bytes::from_static(OPENAPI.as_bytes())));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok(resp)
            }
            Route::Metrics => {
                query.none()?;
                let text = crate::metrics::METRICS.render(self.tasks.gauges());
                let mut resp = Response::new(ApiBody::bytes(text));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(resp)
            }
            Route::ListTasks => {
                let tasks = self.tasks.list(query.all()?).await?;
                Ok(json(StatusCode::OK, &tasks))
            }
            Route::GetTask(r) => {
                query.none()?;
                match self.tasks.get(r).await? {
                    Answer::View(v) => Ok(json_body(StatusCode::OK, ApiBody::bytes(view_json(&v)))),
                    Answer::Json(v) => Ok(compact(StatusCode::OK, &v)),
                    Answer::Kept(stored) => match FileBody::open(&stored) {
                        Ok(body) => Ok(json_body(StatusCode::OK, kept_body(body))),
                        // Removed at its TTL between the lookup and the open: gone, not a 500.
                        Err(_) => Err(crate::tasks::TaskError::NotFound(r.to_string()).into()),
                    },
                }
            }
            Route::GetPath(r, raw) => {
                query.none()?;
                let path = percent_decode(raw).ok_or_else(|| ApiError::BadRequest {
                    field: "path".into(),
                    message: "the path is not valid percent-encoded UTF-8".into(),
                })?;
                Ok(path_answer(self.tasks.read_path(r, &path).await?))
            }
            Route::TaskEvents(r) => {
                query.none()?;
                Ok(match self.tasks.events(r).await? {
                    Events::Live(journal) => events::answer(StatusCode::OK, &[journal]),
                    Events::Ended(lines) => events::whole(lines),
                })
            }
            Route::ListVolumes => {
                query.none()?;
                Ok(json(StatusCode::OK, &self.tasks.volumes().await?))
            }
            Route::DeleteVolume(v) => {
                query.none()?;
                self.tasks.remove_volume(v).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::DeleteTask(r) => {
                query.none()?;
                self.tasks.delete(r).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::CreateTask => self.create_task(req, query).await,
            Route::PutTask(r) => {
                let reference = r.to_string();
                self.put_task(req, query, &reference).await
            }
        }
    }

    /// POST /tasks: one task or a batch, answered whole or streamed.
    async fn create_task(
        &self,
        req: Request<Incoming>,
        query: Query,
    ) -> Result<Response<ApiBody>, ApiError> {
        let wait = query.wait()?;
        let streamed = streamed(&req, wait)?;
        let body = self.read_json(req).await?;
        let request = spec::parse(&body, self.tasks.bounds())?;
        if streamed {
            let journals = self.tasks.create_streamed(request).await?;
            let mut resp = events::answer(StatusCode::CREATED, &journals);
            set_location(&mut resp, journals[0].id());
            return Ok(resp);
        }
        let is_array = request.is_array;
        let views = self.tasks.create(request, wait).await?;
        let status = if wait {
            StatusCode::CREATED
        } else {
            StatusCode::ACCEPTED
        };
        let mut resp = views_answer(status, &views, is_array);
        set_location(&mut resp, &views[0].id);
        Ok(resp)
    }

    /// PUT /tasks/{ref}: more commands in a live task, or a named task made.
    async fn put_task(
        &self,
        req: Request<Incoming>,
        query: Query,
        reference: &str,
    ) -> Result<Response<ApiBody>, ApiError> {
        let wait = query.wait()?;
        let streamed = streamed(&req, wait)?;
        let body = self.read_json(req).await?;
        let mut specs = spec::parse(&body, self.tasks.bounds())?.tasks;
        if specs.len() != 1 {
            return Err(ApiError::BadRequest {
                field: String::new(),
                message: "PUT takes one task object".into(),
            });
        }
        if streamed {
            let spec = specs.remove(0);
            let (created, journal) = self.tasks.put_streamed(reference, spec).await?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut resp = events::answer(status, std::slice::from_ref(&journal));
            if created {
                set_location(&mut resp, journal.id());
            }
            return Ok(resp);
        }
        let (created, view) = self.tasks.put(reference, specs.remove(0), wait).await?;
        let status = match (created, wait) {
            (_, false) => StatusCode::ACCEPTED,
            (true, true) => StatusCode::CREATED,
            (false, true) => StatusCode::OK,
        };
        let mut resp = views_answer(status, std::slice::from_ref(&view), false);
        if created {
            set_location(&mut resp, &view.id);
        }
        Ok(resp)
    }

    fn authenticate(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// The body, refused before parsing when it is not JSON or larger than the cap.
    async fn read_json(&self, req: Request<Incoming>) -> Result<Bytes, ApiError> {
        if let Some(ct) = req.headers().get(CONTENT_TYPE) {
            let essence = ct
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            if !essence.eq_ignore_ascii_case("application/json") {
                return Err(ApiError::UnsupportedMediaType(essence.to_string()));
            }
        }
        let too_large = ApiError::BodyTooLarge(self.max_body_bytes);
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return Err(too_large);
        }
        // Read into one buffer sized by the declared length (bounded above), not gathered
        // and joined: a body of megabytes is copied once.
        let max = self.max_body_bytes;
        let mut body = req.into_body();
        let read = async {
            let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(max));
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ApiError::ReadBody(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > max {
                        return Err(ApiError::BodyTooLarge(max));
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Bytes::from(buf))
        };
        // A client that trickles its body must not hold a connection (and memory) forever.
        match tokio::time::timeout(self.request_timeout, read).await {
            Err(_) => Err(ApiError::BodyTimeout(self.request_timeout)),
            Ok(read) => read,
        }
    }
}

/// Whether a POST or PUT answers with live events. Those follow the run to its end, so
/// `wait=false` (answer as soon as it started) cannot go with them: refused by name rather
/// than one of the two silently ignored.
fn streamed(req: &Request<Incoming>, wait: bool) -> Result<bool, ApiError> {
    let streamed = events::wanted(req);
    if streamed && !wait {
        return Err(ApiError::BadQuery {
            param: "wait".into(),
            message: "live events (Accept: application/x-ndjson) follow the run to its end; \
                      wait=false cannot go with them: follow a started task with GET /tasks/{ref}/events"
                .into(),
        });
    }
    Ok(streamed)
}

/// Query parameters; only `wait` exists, and anything else is refused by name.
struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(q: Option<&str>) -> Result<Query, ApiError> {
        let pairs = q
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        Ok(Query { pairs })
    }

    fn none(&self) -> Result<(), ApiError> {
        match self.pairs.first() {
            Some((k, _)) => Err(ApiError::BadQuery {
                param: k.clone(),
                message: format!("unknown query parameter `{k}`"),
            }),
            None => Ok(()),
        }
    }

    /// `all` on `GET /tasks`: also finished tasks still within their TTL.
    fn all(&self) -> Result<bool, ApiError> {
        let mut all = false;
        for (k, v) in &self.pairs {
            match (k.as_str(), v.as_str()) {
                ("all", "true" | "1" | "") => all = true,
                ("all", "false" | "0") => all = false,
                ("all", _) => {
                    return Err(ApiError::BadQuery {
                        param: k.clone(),
                        message: format!("all must be true or false, not `{v}`"),
                    })
                }
                _ => {
                    return Err(ApiError::BadQuery {
                        param: k.clone(),
                        message: format!("unknown query parameter `{k}`"),
                    })
                }
            }
        }
        Ok(all)
    }

    fn wait(&self) -> Result<bool, ApiError> {
        let mut wait = true;
        for (k, v) in &self.pairs {
            match (k.as_str(), v.as_str()) {
                ("wait", "true" | "1" | "") => wait = true,
                ("wait", "false" | "0") => wait = false,
                ("wait", _) => {
                    return Err(ApiError::BadQuery {
                        param: k.clone(),
                        message: format!("wait must be true or false, not `{v}`"),
                    })
                }
                _ => {
                    return Err(ApiError::BadQuery {
                        param: k.clone(),
                        message: format!("unknown query parameter `{k}`"),
                    })
                }
            }
        }
        Ok(wait)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret (the token's length is fixed by the operator); content is.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<ApiBody> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    json_body(status, ApiBody::bytes(body))
}

fn json_body(status: StatusCode, body: ApiBody) -> Response<ApiBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A task's answer: compact JSON, the form its kept file has, so a waited POST or PUT and a
/// later GET of the same task answer the same bytes whichever way each is built.
fn compact<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<ApiBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    json_body(status, ApiBody::bytes(body))
}

/// A task's view as [`compact`] JSON, its outputs encoded chunk by chunk as in a kept file
/// (not copied into one string and escaped by serde_json, which costs ten times more for
/// megabytes of short lines).
fn view_json(view: &TaskView) -> Vec<u8> {
    let mut out = Vec::new();
    push_view_json(&mut out, view);
    out
}

/// [`view_json`] appended to `out`, where an answer of several views is built.
fn push_view_json(out: &mut Vec<u8>, view: &TaskView) {
    let start = out.len();
    if crate::state::write_view(&mut *out, view).is_err() {
        out.truncate(start);
        match serde_json::to_vec(view) {
            Ok(json) => out.extend_from_slice(&json),
            Err(_) => out.extend_from_slice(b"{}"),
        }
    }
}

/// The answer of a POST or PUT, in the request's shape (an array for an array): each task's
/// kept file streamed as is, or its view built in memory when it was not kept (no state
/// directory, directory full, or not waited for).
fn views_answer(status: StatusCode, views: &[TaskView], is_array: bool) -> Response<ApiBody> {
    let in_memory = || {
        let mut body = Vec::new();
        if is_array {
            body.push(b'[');
        }
        for (i, view) in views.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            push_view_json(&mut body, view);
        }
        if is_array {
            body.push(b']');
        }
        json_body(status, ApiBody::bytes(body))
    };
    if views.iter().all(|v| v.kept.is_none()) {
        return in_memory();
    }
    let mut parts = Vec::with_capacity(views.len() * 2 + 1);
    if is_array {
        parts.push(Part::Bytes(Bytes::from_static(b"[")));
    }
    for (i, view) in views.iter().enumerate() {
        if i > 0 {
            parts.push(Part::Bytes(Bytes::from_static(b",")));
        }
        parts.push(match &view.kept {
            Some(stored) => Part::Kept(stored.clone()),
            None => Part::Bytes(view_json(view).into()),
        });
    }
    if is_array {
        parts.push(Part::Bytes(Bytes::from_static(b"]")));
    }
    match FileBody::parts(parts) {
        Ok(body) => json_body(status, kept_body(body)),
        // A file removed since it was written (the task's TTL, a DELETE): the views still
        // hold the results, so the same bytes are built in memory.
        Err(_) => in_memory(),
    }
}

fn kept_body(body: FileBody) -> ApiBody {
    ApiBody::Kept(body)
}

/// What follows `/tasks/{reference}/files` in `path`, its leading '/' kept ("" for none).
fn files_path<'a>(path: &'a str, reference: &str) -> &'a str {
    let prefix = format!("/tasks/{reference}/files");
    path.strip_prefix(&prefix).unwrap_or("")
}

/// `%XX` escapes decoded; None when one is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A task's file as its raw bytes, or a directory as a tar archive, streamed.
fn path_answer(out: PathOut) -> Response<ApiBody> {
    let (body, content_type, length) = match out {
        PathOut::File { size, body } => (body, "application/octet-stream", Some(size)),
        PathOut::Tree { body } => (body, "application/x-tar", None),
    };
    let mut resp = Response::new(ApiBody::Path(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(n) = length {
        resp.headers_mut()
            .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    resp
}

fn empty(status: StatusCode) -> Response<ApiBody> {
    let mut resp = Response::new(ApiBody::bytes(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn set_location(resp: &mut Response<ApiBody>, id: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!("/tasks/{id}")) {
        resp.headers_mut().insert(LOCATION, v);
    }
}

fn allow_header(resp: &mut Response<ApiBody>, allow: &'static str) {
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_table() {
        assert_eq!(route(&Method::GET, "/tasks"), Ok(Route::ListTasks));
        assert_eq!(route(&Method::POST, "/tasks"), Ok(Route::CreateTask));
        assert_eq!(route(&Method::GET, "/tasks/abc"), Ok(Route::GetTask("abc")));
        assert_eq!(route(&Method::PUT, "/tasks/abc"), Ok(Route::PutTask("abc")));
        assert_eq!(
            route(&Method::DELETE, "/tasks/abc"),
            Ok(Route::DeleteTask("abc"))
        );
        assert_eq!(
            route(&Method::GET, "/tasks/abc/events"),
            Ok(Route::TaskEvents("abc"))
        );
        assert_eq!(
            route(&Method::POST, "/tasks/abc/events"),
            Err(ApiError::MethodNotAllowed("GET, HEAD"))
        );
        assert_eq!(route(&Method::GET, "/health"), Ok(Route::Health));
        assert_eq!(route(&Method::GET, "/openapi.json"), Ok(Route::OpenApi));
        assert_eq!(route(&Method::GET, "/metrics"), Ok(Route::Metrics));
        assert_eq!(
            route(&Method::POST, "/openapi.json"),
            Err(ApiError::MethodNotAllowed("GET, HEAD"))
        );
        assert_eq!(
            route(&Method::DELETE, "/tasks"),
            Err(ApiError::MethodNotAllowed("GET, HEAD, POST"))
        );
        assert_eq!(
            route(&Method::POST, "/tasks/x"),
            Err(ApiError::MethodNotAllowed("GET, HEAD, PUT, DELETE"))
        );
        // HEAD goes wherever GET goes, and nowhere else.
        for (path, get) in [
            ("/health", Route::Health),
            ("/openapi.json", Route::OpenApi),
            ("/metrics", Route::Metrics),
            ("/tasks", Route::ListTasks),
            ("/tasks/abc", Route::GetTask("abc")),
        ] {
            assert_eq!(route(&Method::HEAD, path), Ok(get), "{path}");
        }
        assert!(matches!(
            route(&Method::HEAD, "/nope"),
            Err(ApiError::RouteNotFound(_))
        ));
        assert!(matches!(
            route(&Method::GET, "/tasks/"),
            Err(ApiError::RouteNotFound(_))
        ));
        assert!(matches!(
            route(&Method::GET, "/tasks/a/b"),
            Err(ApiError::RouteNotFound(_))
        ));
        let files = "/tasks/abc/files/out/a%20b.txt";
        assert_eq!(
            route(&Method::GET, files),
            Ok(Route::GetPath("abc", "/out/a%20b.txt"))
        );
        assert_eq!(
            route(&Method::HEAD, files),
            Ok(Route::GetPath("abc", "/out/a%20b.txt"))
        );
        assert_eq!(
            route(&Method::GET, "/tasks/abc/files"),
            Ok(Route::GetPath("abc", ""))
        );
        assert_eq!(
            route(&Method::PUT, files),
            Err(ApiError::MethodNotAllowed("GET, HEAD"))
        );
        assert_eq!(percent_decode("/a%20b/%C3%A9").as_deref(), Some("/a b/é"));
        assert_eq!(percent_decode("/a%2"), None);
        assert_eq!(percent_decode("/%ff"), None);
        assert!(matches!(
            route(&Method::GET, "/"),
            Err(ApiError::RouteNotFound(_))
        ));
    }

    #[test]
    fn query_wait() {
        assert!(Query::parse(None).unwrap().wait().unwrap());
        assert!(!Query::parse(Some("wait=false")).unwrap().wait().unwrap());
        assert!(Query::parse(Some("wait=maybe")).unwrap().wait().is_err());
        assert!(Query::parse(Some("wiat=false")).unwrap().wait().is_err());
        assert!(Query::parse(Some("x=1")).unwrap().none().is_err());
        assert!(Query::parse(Some("")).unwrap().none().is_ok());
        assert!(Query::parse(Some("all=true")).unwrap().all().unwrap());
        assert!(!Query::parse(None).unwrap().all().unwrap());
        assert!(Query::parse(Some("all=yes")).unwrap().all().is_err());
        assert!(Query::parse(Some("wait=false")).unwrap().all().is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokem"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
    }
}
