//! The seam between the task layer and the container engine: every call `tasks` makes, as
//! one object-safe trait. The Docker client implements it for real; [`fake`] implements it in
//! memory, so the lifecycle, TTLs, adoption after a restart and DELETE races are unit-tested
//! on paused time, as mini-redis tests its `Db`. Knows nothing of tasks: it only forwards.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Incoming};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::docker::models::{
    ContainerConfig, ContainerInspect, ContainerSummary, CreateResponse, EngineInfo, ExecConfig,
    ExecInspect, IdResponse, Volume, VolumeRemoved,
};
use crate::docker::{Docker, DockerError, PathStat, Removed};

/// One engine call in flight.
pub type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, DockerError>> + Send + 'a>>;

/// A two-way byte stream to a container: its attach stream.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// A byte stream from the engine: events, or an exec's multiplexed output.
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// The engine calls of the task layer. Every one is the Docker Engine API call of the same
/// name (see `crate::docker`), with its typed outcomes.
pub trait Engine: Send + Sync + 'static {
    fn ping(&self) -> Call<'_, ()>;
    fn api_version(&self) -> Call<'_, String>;
    fn info(&self) -> Call<'_, EngineInfo>;
    fn create_container<'a>(
        &'a self,
        name: Option<&'a str>,
        config: &'a ContainerConfig,
    ) -> Call<'a, CreateResponse>;
    fn start_container<'a>(&'a self, id: &'a str) -> Call<'a, ()>;
    fn inspect_container<'a>(&'a self, id: &'a str) -> Call<'a, ContainerInspect>;
    fn list_containers<'a>(&'a self, labels: &'a [String]) -> Call<'a, Vec<ContainerSummary>>;
    fn remove_container<'a>(&'a self, id: &'a str) -> Call<'a, Removed>;
    fn wait_removed<'a>(&'a self, id: &'a str) -> Call<'a, ()>;
    fn attach<'a>(&'a self, id: &'a str) -> Call<'a, Box<dyn Duplex>>;
    fn events<'a>(&'a self, labels: &'a [String]) -> Call<'a, Reader>;
    fn pull_image<'a>(&'a self, image: &'a str, deadline: Duration) -> Call<'a, ()>;
    fn put_archive<'a>(&'a self, id: &'a str, dir: &'a str, tar: Vec<u8>) -> Call<'a, ()>;
    fn stat_path<'a>(&'a self, id: &'a str, path: &'a str) -> Call<'a, Option<String>>;
    fn path_size<'a>(&'a self, id: &'a str, path: &'a str) -> Call<'a, Option<u64>>;
    /// What `path` is and its tar archive, as a stream (`Docker::get_archive`).
    fn get_archive<'a>(&'a self, id: &'a str, path: &'a str) -> Call<'a, (PathStat, Reader)>;
    fn create_exec<'a>(&'a self, id: &'a str, config: &'a ExecConfig) -> Call<'a, IdResponse>;
    fn start_exec<'a>(&'a self, exec_id: &'a str) -> Call<'a, Reader>;
    fn start_exec_with_stdin<'a>(&'a self, exec_id: &'a str) -> Call<'a, Box<dyn Duplex>>;
    fn inspect_exec<'a>(&'a self, exec_id: &'a str) -> Call<'a, ExecInspect>;
    fn create_volume<'a>(
        &'a self,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> Call<'a, Volume>;
    fn inspect_volume<'a>(&'a self, name: &'a str) -> Call<'a, Option<Volume>>;
    fn list_volumes<'a>(&'a self, labels: &'a [String]) -> Call<'a, Vec<Volume>>;
    fn remove_volume<'a>(&'a self, name: &'a str) -> Call<'a, VolumeRemoved>;
}

impl Engine for Docker {
    fn ping(&self) -> Call<'_, ()> {
        Box::pin(Docker::ping(self))
    }
    fn api_version(&self) -> Call<'_, String> {
        Box::pin(Docker::api_version(self))
    }
    fn info(&self) -> Call<'_, EngineInfo> {
        Box::pin(Docker::info(self))
    }
    fn create_container<'a>(
        &'a self,
        name: Option<&'a str>,
        config: &'a ContainerConfig,
    ) -> Call<'a, CreateResponse> {
        Box::pin(Docker::create_container(self, name, config))
    }
    fn start_container<'a>(&'a self, id: &'a str) -> Call<'a, ()> {
        Box::pin(Docker::start_container(self, id))
    }
    fn inspect_container<'a>(&'a self, id: &'a str) -> Call<'a, ContainerInspect> {
        Box::pin(Docker::inspect_container(self, id))
    }
    fn list_containers<'a>(&'a self, labels: &'a [String]) -> Call<'a, Vec<ContainerSummary>> {
        Box::pin(Docker::list_containers(self, labels))
    }
    fn remove_container<'a>(&'a self, id: &'a str) -> Call<'a, Removed> {
        Box::pin(Docker::remove_container(self, id))
    }
    fn wait_removed<'a>(&'a self, id: &'a str) -> Call<'a, ()> {
        Box::pin(Docker::wait_removed(self, id))
    }
    fn attach<'a>(&'a self, id: &'a str) -> Call<'a, Box<dyn Duplex>> {
        Box::pin(async move {
            let io = Docker::attach(self, id).await?;
            Ok(Box::new(io) as Box<dyn Duplex>)
        })
    }
    fn events<'a>(&'a self, labels: &'a [String]) -> Call<'a, Reader> {
        Box::pin(async move {
            let body = Docker::events(self, labels).await?;
            Ok(Box::new(BodyReader::new(body)) as Reader)
        })
    }
    fn pull_image<'a>(&'a self, image: &'a str, deadline: Duration) -> Call<'a, ()> {
        Box::pin(Docker::pull_image(self, image, deadline))
    }
    fn put_archive<'a>(&'a self, id: &'a str, dir: &'a str, tar: Vec<u8>) -> Call<'a, ()> {
        Box::pin(Docker::put_archive(self, id, dir, tar))
    }
    fn stat_path<'a>(&'a self, id: &'a str, path: &'a str) -> Call<'a, Option<String>> {
        Box::pin(Docker::stat_path(self, id, path))
    }
    fn path_size<'a>(&'a self, id: &'a str, path: &'a str) -> Call<'a, Option<u64>> {
        Box::pin(Docker::path_size(self, id, path))
    }
    fn get_archive<'a>(&'a self, id: &'a str, path: &'a str) -> Call<'a, (PathStat, Reader)> {
        Box::pin(async move {
            let archive = Docker::get_archive(self, id, path).await?;
            Ok((
                archive.stat,
                Box::new(BodyReader::new(archive.body)) as Reader,
            ))
        })
    }
    fn create_exec<'a>(&'a self, id: &'a str, config: &'a ExecConfig) -> Call<'a, IdResponse> {
        Box::pin(Docker::create_exec(self, id, config))
    }
    fn start_exec<'a>(&'a self, exec_id: &'a str) -> Call<'a, Reader> {
        Box::pin(async move {
            let body = Docker::start_exec(self, exec_id).await?;
            Ok(Box::new(BodyReader::new(body)) as Reader)
        })
    }
    fn start_exec_with_stdin<'a>(&'a self, exec_id: &'a str) -> Call<'a, Box<dyn Duplex>> {
        Box::pin(async move {
            let io = Docker::start_exec_with_stdin(self, exec_id).await?;
            Ok(Box::new(io) as Box<dyn Duplex>)
        })
    }
    fn inspect_exec<'a>(&'a self, exec_id: &'a str) -> Call<'a, ExecInspect> {
        Box::pin(Docker::inspect_exec(self, exec_id))
    }
    fn create_volume<'a>(
        &'a self,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> Call<'a, Volume> {
        Box::pin(Docker::create_volume(self, name, labels))
    }
    fn inspect_volume<'a>(&'a self, name: &'a str) -> Call<'a, Option<Volume>> {
        Box::pin(Docker::inspect_volume(self, name))
    }
    fn list_volumes<'a>(&'a self, labels: &'a [String]) -> Call<'a, Vec<Volume>> {
        Box::pin(Docker::list_volumes(self, labels))
    }
    fn remove_volume<'a>(&'a self, name: &'a str) -> Call<'a, VolumeRemoved> {
        Box::pin(Docker::remove_volume(self, name))
    }
}

/// A response body read as a byte stream: the frames' data in order; a broken body is an
/// I/O error, as a broken socket would be.
pub struct BodyReader {
    body: Incoming,
    /// Data of the last frame not yet read out.
    pending: Bytes,
}

impl BodyReader {
    pub fn new(body: Incoming) -> BodyReader {
        BodyReader {
            body,
            pending: Bytes::new(),
        }
    }
}

impl AsyncRead for BodyReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                // End of body: a read of 0 bytes.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(std::io::Error::other(e.to_string())))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending = data;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub mod fake;
