//! The engine's archive API: stat a path in a container, read it out as a tar, unpack a tar
//! into it.

use base64::Engine as _;
use hyper::body::Incoming;
use hyper::{Method, Response};

use super::{Body, Cause, Docker, DockerError, Step};
use crate::util::percent_encode;

impl Docker {
    /// Where `path` in container `id` leads: None when it does not exist, else the target of
    /// a symlink (resolved by Docker from the container's root), or "" for anything else.
    pub async fn stat_path(&self, id: &str, path: &str) -> Result<Option<String>, DockerError> {
        Ok(self.stat(id, path).await?.map(|s| s.link_target))
    }

    /// The size in bytes of `path` in container `id` (which may be created and never
    /// started; its volumes are mounted for the call), or None when it does not exist.
    pub async fn path_size(&self, id: &str, path: &str) -> Result<Option<u64>, DockerError> {
        Ok(self.stat(id, path).await?.map(|s| s.size))
    }

    async fn stat(&self, id: &str, path: &str) -> Result<Option<PathStat>, DockerError> {
        let query = format!("/containers/{id}/archive?path={}", percent_encode(path));
        let resp = match self
            .send(Step::StatPath, Method::HEAD, &query, Body::Empty)
            .await
        {
            Ok(resp) => resp,
            Err(e) if e.status() == Some(404) => return Ok(None),
            Err(e) => return Err(e),
        };
        path_stat(Step::StatPath, &resp).map(Some)
    }

    /// Reads `path` out of container `id` (running or not): what Docker says of the path,
    /// and a tar archive of it (a directory with its tree; a symlink as the link itself) as
    /// the unread body, for the caller to stream under its own deadline. A missing path and
    /// a missing container are both Docker's 404.
    pub async fn get_archive(&self, id: &str, path: &str) -> Result<Archive, DockerError> {
        let query = format!("/containers/{id}/archive?path={}", percent_encode(path));
        let resp = self
            .send(Step::GetArchive, Method::GET, &query, Body::Empty)
            .await?;
        let stat = path_stat(Step::GetArchive, &resp)?;
        Ok(Archive {
            stat,
            body: resp.into_body(),
        })
    }

    /// Unpacks a plain tar archive at `dir` (which must exist) in the container.
    pub async fn put_archive(&self, id: &str, dir: &str, tar: Vec<u8>) -> Result<(), DockerError> {
        let path = format!("/containers/{id}/archive?path={}", percent_encode(dir));
        self.send(Step::PutArchive, Method::PUT, &path, Body::Tar(tar.into()))
            .await
            .map(drop)
    }
}

/// What Docker's `X-Docker-Container-Path-Stat` header says of a path; only the fields read.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct PathStat {
    #[serde(default)]
    pub size: u64,
    /// Go's `os.FileMode`: permission bits and type bits (see [`PathStat::is_dir`]).
    #[serde(default)]
    pub mode: u32,
    /// For a symlink, its target resolved from the container's root; "" otherwise.
    #[serde(rename = "linkTarget", default)]
    pub link_target: String,
}

impl PathStat {
    /// Go's `os.ModeDir`.
    const MODE_DIR: u32 = 1 << 31;
    /// Go's symlink, named pipe, socket, device, char device and irregular bits.
    const MODE_NOT_REGULAR: u32 =
        (1 << 27) | (1 << 25) | (1 << 24) | (1 << 26) | (1 << 21) | (1 << 19);

    pub fn is_dir(&self) -> bool {
        self.mode & Self::MODE_DIR != 0
    }

    pub fn is_regular(&self) -> bool {
        self.mode & (Self::MODE_DIR | Self::MODE_NOT_REGULAR) == 0
    }
}

/// A path read out of a container: what it is, and its tar archive, unread.
pub struct Archive {
    pub stat: PathStat,
    pub body: Incoming,
}

/// Decodes the `X-Docker-Container-Path-Stat` header of an archive answer.
fn path_stat(step: Step, resp: &Response<Incoming>) -> Result<PathStat, DockerError> {
    let decode = |m: String| DockerError {
        step,
        cause: Cause::Decode(m),
    };
    let header = resp
        .headers()
        .get("x-docker-container-path-stat")
        .ok_or_else(|| decode("no X-Docker-Container-Path-Stat header".into()))?;
    let json = base64::engine::general_purpose::STANDARD
        .decode(header.as_bytes())
        .map_err(|e| decode(e.to_string()))?;
    serde_json::from_slice(&json).map_err(|e| decode(e.to_string()))
}
