//! An in-memory engine for unit tests: containers with names, labels and states; an attach
//! stream served by a fake agent that speaks the real protocol; an event stream; and a log
//! of every call. Commands understand a tiny shell: `echo WORDS`, `sleep SECONDS` (on
//! tokio's clock, so paused time skips it) and `exit N`, joined by `;`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, WriteHalf};

use super::{Call, Duplex, Engine, Reader};
use crate::agent::protocol::{Exit, Frame, Request};
use crate::docker::models::{
    ContainerConfig, ContainerInspect, ContainerSummary, CreateResponse, EngineInfo, ExecConfig,
    ExecInspect, IdResponse, Volume, VolumeRemoved,
};
use crate::docker::{Cause, DockerError, PathStat, Removed, Step};

/// One container of the fake engine.
#[derive(Debug, Clone)]
struct Container {
    id: String,
    name: Option<String>,
    image: String,
    labels: BTreeMap<String, String>,
    /// `created`, `running` or `exited`.
    status: String,
}

#[derive(Default)]
struct State {
    containers: BTreeMap<String, Container>,
    /// Images `create_container` knows; others are a 404, as an unknown image is.
    images: Vec<String>,
    /// Writers of open event streams.
    events: Vec<WriteHalf<DuplexStream>>,
    /// Images a pull brings; others fail to pull, as from an unreachable registry.
    pullable: Vec<String>,
    /// Refuse `StorageOpt` as overlay2 on ext4 does.
    no_quota: bool,
    /// Every call, as `verb id`, for tests to assert on.
    calls: Vec<String>,
    /// The fake agent of each attached container; stopped when it is removed, which ends
    /// its attach stream as the real engine does.
    agents: BTreeMap<String, tokio::task::JoinHandle<()>>,
    /// What `get_archive` serves, by path, in every container.
    archives: BTreeMap<String, (PathStat, Vec<u8>)>,
    serial: u64,
}

/// The fake engine. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct FakeEngine {
    state: Mutex<State>,
}

fn status_error(step: Step, status: u16, message: &str) -> DockerError {
    DockerError {
        step,
        cause: Cause::Status {
            status,
            message: message.to_string(),
        },
    }
}

impl FakeEngine {
    /// An engine that knows `images`.
    pub fn with_images(images: &[&str]) -> Arc<FakeEngine> {
        let engine = FakeEngine::default();
        engine.state.lock().unwrap().images = images.iter().map(|s| s.to_string()).collect();
        Arc::new(engine)
    }

    /// An engine whose storage driver refuses per-container quotas, in Docker's words.
    pub fn without_quota(images: &[&str]) -> Arc<FakeEngine> {
        let engine = FakeEngine::with_images(images);
        engine.state.lock().unwrap().no_quota = true;
        engine
    }

    /// Lets a pull of `image` succeed.
    pub fn offer_pull(&self, image: &str) {
        self.state.lock().unwrap().pullable.push(image.to_string());
    }

    /// Serves `tar` (with `stat`) for `path` in every container that exists.
    pub fn offer_archive(&self, path: &str, stat: PathStat, tar: Vec<u8>) {
        let mut state = self.state.lock().unwrap();
        state.archives.insert(path.to_string(), (stat, tar));
    }

    /// Every call so far, as `verb id` (`get_archive id path`), in order.
    pub fn call_log(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Ids of the containers that exist now.
    pub fn containers(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .containers
            .keys()
            .cloned()
            .collect()
    }

    /// How many calls named `verb` were made.
    pub fn calls(&self, verb: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.calls.iter().filter(|c| c.starts_with(verb)).count()
    }

    /// A container as another client would leave it: created and started outside Lessl.
    pub fn add_running(&self, labels: &[(&str, &str)], image: &str) -> String {
        let mut state = self.state.lock().unwrap();
        let id = next_id(&mut state);
        state.containers.insert(
            id.clone(),
            Container {
                id: id.clone(),
                name: None,
                image: image.to_string(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                status: "running".into(),
            },
        );
        id
    }

    /// Removes a container behind Lessl's back, as `docker rm -f` would.
    pub fn remove_behind(&self, id: &str) {
        let mut state = self.state.lock().unwrap();
        state.containers.remove(id);
        if let Some(agent) = state.agents.remove(id) {
            agent.abort();
        }
        emit(&mut state, "destroy", id);
    }

    fn find(&self, reference: &str) -> Option<Container> {
        let state = self.state.lock().unwrap();
        let wanted = reference.trim_start_matches('/');
        state
            .containers
            .values()
            .find(|c| c.id == wanted || c.name.as_deref() == Some(wanted))
            .or_else(|| {
                let mut by_prefix = state
                    .containers
                    .values()
                    .filter(|c| c.id.starts_with(wanted));
                match (by_prefix.next(), by_prefix.next()) {
                    (Some(c), None) if wanted.len() >= 12 => Some(c),
                    _ => None,
                }
            })
            .cloned()
    }

    fn log(&self, call: String) {
        self.state.lock().unwrap().calls.push(call);
    }
}

fn next_id(state: &mut State) -> String {
    state.serial += 1;
    format!("{:064x}", 0xfa4e_0000_u64 + state.serial)
}

/// Tells every open event stream that `action` happened to `id`.
fn emit(state: &mut State, action: &str, id: &str) {
    let line = format!(
        "{}\n",
        serde_json::json!({"Action": action, "Actor": {"ID": id}})
    );
    for w in &mut state.events {
        // The reader is the mirror's, which reads as fast as lines come; a full buffer
        // would mean a test far beyond what this fake is for.
        let _ = write_now(w, line.as_bytes());
    }
}

/// Writes without waiting: event lines are small and the buffer large.
fn write_now(w: &mut WriteHalf<DuplexStream>, bytes: &[u8]) -> std::io::Result<()> {
    use std::task::{Context, Poll};
    use tokio::io::AsyncWrite;
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    match std::pin::Pin::new(w).poll_write(&mut cx, bytes) {
        Poll::Ready(Ok(n)) if n == bytes.len() => Ok(()),
        Poll::Ready(Err(e)) => Err(e),
        _ => Err(std::io::Error::other("event buffer full")),
    }
}

fn matches_labels(labels: &BTreeMap<String, String>, filters: &[String]) -> bool {
    filters.iter().all(|f| match f.split_once('=') {
        Some((k, v)) => labels.get(k).map(String::as_str) == Some(v),
        None => labels.contains_key(f.as_str()),
    })
}

/// Runs the fake agent on the container's side of an attach stream: answers hellos and runs
/// commands in the fake's tiny shell, each in its own task, as the real agent does.
async fn agent(side: DuplexStream) {
    let (mut read, write) = tokio::io::split(side);
    let write = Arc::new(tokio::sync::Mutex::new(write));
    let mut seen: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(end) = seen.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = seen.drain(..=end).collect();
            let Ok(request) = serde_json::from_slice::<Request>(&line) else {
                continue;
            };
            let write = write.clone();
            tokio::spawn(async move {
                let frames = match request.hello_nonce() {
                    Some(nonce) => vec![Frame::Hello(nonce)],
                    None => {
                        say(&write, &[Frame::Started(request.id)]).await;
                        run_script(request.id, &request.argv).await
                    }
                };
                say(&write, &frames).await;
            });
        }
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn say(write: &tokio::sync::Mutex<WriteHalf<DuplexStream>>, frames: &[Frame]) {
    let payload: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
    let mut wire = vec![1, 0, 0, 0];
    wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    wire.extend_from_slice(&payload);
    let _ = write.lock().await.write_all(&wire).await;
}

/// `echo`, `sleep` and `exit`, separated by `;`, from a `/bin/sh -c` argv.
async fn run_script(id: u64, argv: &[String]) -> Vec<Frame> {
    let script = match argv {
        [sh, c, script] if sh == "/bin/sh" && c == "-c" => script.clone(),
        other => other.join(" "),
    };
    let mut out = Vec::new();
    let mut code = 0;
    for step in script.split(';').map(str::trim) {
        if let Some(words) = step.strip_prefix("echo ") {
            out.extend_from_slice(words.as_bytes());
            out.push(b'\n');
        } else if let Some(secs) = step.strip_prefix("sleep ") {
            let secs: f64 = secs.parse().unwrap_or(0.0);
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        } else if let Some(n) = step.strip_prefix("exit ") {
            code = n.parse().unwrap_or(1);
            break;
        }
    }
    vec![
        Frame::Stdout(id, out),
        Frame::Exit(
            id,
            Exit {
                exit_code: code,
                timed_out: false,
                oom_killed: false,
            },
        ),
    ]
}

impl Engine for FakeEngine {
    fn ping(&self) -> Call<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn api_version(&self) -> Call<'_, String> {
        Box::pin(async { Ok("1.41".to_string()) })
    }
    fn info(&self) -> Call<'_, EngineInfo> {
        Box::pin(async {
            Ok(serde_json::from_value(serde_json::json!({"Driver": "fake"})).unwrap())
        })
    }
    fn create_container<'a>(
        &'a self,
        name: Option<&'a str>,
        config: &'a ContainerConfig,
    ) -> Call<'a, CreateResponse> {
        Box::pin(async move {
            self.log(format!("create {}", name.unwrap_or("-")));
            let mut state = self.state.lock().unwrap();
            if !state.images.contains(&config.image) {
                return Err(status_error(Step::CreateContainer, 404, "No such image"));
            }
            if state.no_quota && !config.host_config.storage_opt.is_empty() {
                return Err(status_error(
                    Step::CreateContainer,
                    500,
                    "--storage-opt is supported only for overlay over xfs with 'pquota' mount option",
                ));
            }
            if name.is_some() && state.containers.values().any(|c| c.name.as_deref() == name) {
                return Err(status_error(Step::CreateContainer, 409, "name in use"));
            }
            let id = next_id(&mut state);
            state.containers.insert(
                id.clone(),
                Container {
                    id: id.clone(),
                    name: name.map(str::to_string),
                    image: config.image.clone(),
                    labels: config.labels.clone(),
                    status: "created".into(),
                },
            );
            Ok(CreateResponse { id, warnings: None })
        })
    }
    fn start_container<'a>(&'a self, id: &'a str) -> Call<'a, ()> {
        Box::pin(async move {
            self.log(format!("start {id}"));
            let mut state = self.state.lock().unwrap();
            match state.containers.get_mut(id) {
                Some(c) => {
                    c.status = "running".into();
                    Ok(())
                }
                None => Err(status_error(Step::StartContainer, 404, "No such container")),
            }
        })
    }
    fn inspect_container<'a>(&'a self, id: &'a str) -> Call<'a, ContainerInspect> {
        Box::pin(async move {
            let c = self
                .find(id)
                .ok_or_else(|| status_error(Step::InspectContainer, 404, "No such container"))?;
            let v = serde_json::json!({
                "Id": c.id,
                "State": {"Status": c.status, "Running": c.status == "running"},
                "Config": {"Image": c.image, "Labels": c.labels},
            });
            Ok(serde_json::from_value(v).unwrap())
        })
    }
    fn list_containers<'a>(&'a self, labels: &'a [String]) -> Call<'a, Vec<ContainerSummary>> {
        Box::pin(async move {
            let state = self.state.lock().unwrap();
            Ok(state
                .containers
                .values()
                .filter(|c| matches_labels(&c.labels, labels))
                .map(|c| {
                    serde_json::from_value(serde_json::json!({
                        "Id": c.id, "Image": c.image, "State": c.status, "Labels": c.labels,
                    }))
                    .unwrap()
                })
                .collect())
        })
    }
    fn remove_container<'a>(&'a self, id: &'a str) -> Call<'a, Removed> {
        Box::pin(async move {
            self.log(format!("remove {id}"));
            let mut state = self.state.lock().unwrap();
            match state.containers.remove(id) {
                Some(_) => {
                    if let Some(agent) = state.agents.remove(id) {
                        agent.abort();
                    }
                    emit(&mut state, "destroy", id);
                    Ok(Removed::Yes)
                }
                None => Ok(Removed::Gone),
            }
        })
    }
    fn wait_removed<'a>(&'a self, _id: &'a str) -> Call<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn attach<'a>(&'a self, id: &'a str) -> Call<'a, Box<dyn Duplex>> {
        Box::pin(async move {
            self.find(id)
                .ok_or_else(|| status_error(Step::Attach, 404, "No such container"))?;
            let (lessl_side, container_side) = tokio::io::duplex(1 << 16);
            let running = tokio::spawn(agent(container_side));
            self.state
                .lock()
                .unwrap()
                .agents
                .insert(id.to_string(), running);
            Ok(Box::new(lessl_side) as Box<dyn Duplex>)
        })
    }
    fn events<'a>(&'a self, _labels: &'a [String]) -> Call<'a, Reader> {
        Box::pin(async move {
            let (reader, writer) = tokio::io::duplex(1 << 20);
            let (_, w) = tokio::io::split(writer);
            self.state.lock().unwrap().events.push(w);
            Ok(Box::new(reader) as Reader)
        })
    }
    fn pull_image<'a>(&'a self, image: &'a str, _deadline: Duration) -> Call<'a, ()> {
        Box::pin(async move {
            let mut state = self.state.lock().unwrap();
            if !state.pullable.iter().any(|i| i == image) {
                return Err(status_error(Step::PullImage, 404, "no registry"));
            }
            state.images.push(image.to_string());
            Ok(())
        })
    }
    fn put_archive<'a>(&'a self, id: &'a str, _dir: &'a str, _tar: Vec<u8>) -> Call<'a, ()> {
        Box::pin(async move {
            self.log(format!("put_archive {id}"));
            Ok(())
        })
    }
    fn stat_path<'a>(&'a self, _id: &'a str, _path: &'a str) -> Call<'a, Option<String>> {
        Box::pin(async { Ok(None) })
    }
    fn path_size<'a>(&'a self, _id: &'a str, _path: &'a str) -> Call<'a, Option<u64>> {
        Box::pin(async { Ok(None) })
    }
    fn get_archive<'a>(&'a self, id: &'a str, path: &'a str) -> Call<'a, (PathStat, Reader)> {
        Box::pin(async move {
            self.log(format!("get_archive {id} {path}"));
            let state = self.state.lock().unwrap();
            if !state.containers.contains_key(id) {
                return Err(status_error(Step::GetArchive, 404, "No such container"));
            }
            match state.archives.get(path) {
                Some((stat, tar)) => Ok((
                    stat.clone(),
                    Box::new(std::io::Cursor::new(tar.clone())) as Reader,
                )),
                None => Err(status_error(
                    Step::GetArchive,
                    404,
                    "Could not find the file",
                )),
            }
        })
    }
    fn create_exec<'a>(&'a self, _id: &'a str, _config: &'a ExecConfig) -> Call<'a, IdResponse> {
        Box::pin(async { Err(status_error(Step::CreateExec, 500, "the fake runs no exec")) })
    }
    fn start_exec<'a>(&'a self, _exec_id: &'a str) -> Call<'a, Reader> {
        Box::pin(async { Err(status_error(Step::StartExec, 500, "the fake runs no exec")) })
    }
    fn start_exec_with_stdin<'a>(&'a self, _exec_id: &'a str) -> Call<'a, Box<dyn Duplex>> {
        Box::pin(async { Err(status_error(Step::StartExec, 500, "the fake runs no exec")) })
    }
    fn inspect_exec<'a>(&'a self, _exec_id: &'a str) -> Call<'a, ExecInspect> {
        Box::pin(async {
            Err(status_error(
                Step::InspectExec,
                500,
                "the fake runs no exec",
            ))
        })
    }
    fn create_volume<'a>(
        &'a self,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> Call<'a, Volume> {
        Box::pin(async move {
            Ok(
                serde_json::from_value(serde_json::json!({"Name": name, "Labels": labels}))
                    .unwrap(),
            )
        })
    }
    fn inspect_volume<'a>(&'a self, _name: &'a str) -> Call<'a, Option<Volume>> {
        Box::pin(async { Ok(None) })
    }
    fn list_volumes<'a>(&'a self, _labels: &'a [String]) -> Call<'a, Vec<Volume>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn remove_volume<'a>(&'a self, _name: &'a str) -> Call<'a, VolumeRemoved> {
        Box::pin(async { Ok(VolumeRemoved::Gone) })
    }
}
