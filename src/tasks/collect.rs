//! Files out of a container through the engine's archive API: a run's `collect` paths read
//! into `files` within the server's maximum (after the run, before a finished container is
//! removed), and one path of a live task streamed to a client as raw bytes or a tar archive.
//! Nothing is followed out of the container: the engine resolves every path inside it, and a
//! symlink that `collect` meets is reported as a link.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::engine::{Engine, Reader};
use super::record::Container;
use super::view::{CollectedFile, Files, RunFailure, TaskState};
use super::{Shared, TaskError, Tasks};
use crate::docker::PathStat;
use crate::spec;
use crate::tar::reader::{Event, Kind, Member, Reader as TarReader};

/// What each entry costs against `--max-collect-bytes` besides its data: its tar header. It
/// bounds the number of entries (and so the size of `files`) as well as their bytes.
pub const ENTRY_COST: u64 = 512;
/// One run's whole collection; a container that serves its archive slower than this is
/// reported per path (`collect.timeout`) rather than holding the run's answer.
const DEADLINE: Duration = Duration::from_secs(60);
/// Bytes read from the engine at a time.
const CHUNK: usize = 64 << 10;

/// Codes of the per-path errors in `files`.
pub const NOT_FOUND: &str = "collect.not_found";
pub const TOO_LARGE: &str = "collect.too_large";
pub const NOT_REGULAR: &str = "collect.skipped";
pub const CONTAINER_GONE: &str = "collect.container_gone";
pub const READ: &str = "collect.read";
pub const TIMEOUT: &str = "collect.timeout";

fn left_out(path: &str, code: &str, message: String) -> CollectedFile {
    CollectedFile {
        path: path.to_string(),
        size: None,
        mode: None,
        data_base64: None,
        link: None,
        error: Some(RunFailure {
            code: code.to_string(),
            message,
        }),
    }
}

fn octal(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

fn too_large(max: u64) -> String {
    format!("left out: what this run collects is limited to {max} bytes (--max-collect-bytes; each entry counts its size plus {ENTRY_COST})")
}

/// `rel` (a clean relative member name) under `dir` (absolute).
fn join(dir: &str, rel: &str) -> String {
    match (dir, rel) {
        (d, "") => d.to_string(),
        ("/", r) => format!("/{r}"),
        (d, r) => format!("{d}/{r}"),
    }
}

/// The directory Docker names an archive's members from: the parent of the path asked for.
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// What reading a path's archive asks next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    More,
    Stop,
}

/// The entries of one path's archive, turned into `files` within the bytes `left`. Pure: fed
/// the reader's events.
struct PathFiles<'a> {
    requested: &'a str,
    parent: &'a str,
    max: u64,
    left: &'a mut u64,
    files: &'a mut Vec<CollectedFile>,
    /// The file whose data is being read: its index in `files`, its bytes so far, its size.
    open: Option<(usize, Vec<u8>, u64)>,
}

impl PathFiles<'_> {
    fn event(&mut self, event: Event<'_>) -> Next {
        match event {
            Event::Member(m) => self.member(m),
            Event::Data(d) => {
                if let Some((_, data, _)) = &mut self.open {
                    data.extend_from_slice(d);
                }
                self.close_if_full();
                Next::More
            }
            Event::End => Next::Stop,
        }
    }

    fn member(&mut self, m: Member) -> Next {
        let path = join(self.parent, &m.path);
        let inside = path == self.requested
            || path
                .strip_prefix(self.requested)
                .is_some_and(|rest| rest.starts_with('/'));
        if !inside {
            self.files.push(left_out(
                self.requested,
                READ,
                format!("the engine's archive holds `{path}`, outside the path asked for"),
            ));
            return Next::Stop;
        }
        let cost = ENTRY_COST
            .saturating_add(m.size)
            .saturating_add(m.link.len() as u64);
        if cost > *self.left {
            let mut entry = left_out(&path, TOO_LARGE, too_large(self.max));
            if m.kind == Kind::File {
                entry.size = Some(m.size);
                entry.mode = Some(octal(m.mode));
            }
            self.files.push(entry);
            if path != self.requested {
                self.files.push(left_out(
                    self.requested,
                    TOO_LARGE,
                    format!(
                        "the rest of `{}` was not read: {}",
                        self.requested,
                        too_large(self.max)
                    ),
                ));
            }
            // Nothing more of this path is read: the engine's stream is dropped here. Later
            // paths may still fit what is left.
            return Next::Stop;
        }
        *self.left -= cost;
        let entry = |size, mode, link| CollectedFile {
            path: path.clone(),
            size,
            mode,
            data_base64: None,
            link,
            error: None,
        };
        match m.kind {
            Kind::Dir => {}
            Kind::File => {
                self.files
                    .push(entry(Some(m.size), Some(octal(m.mode)), None));
                let capacity = usize::try_from(m.size).unwrap_or(0);
                self.open = Some((self.files.len() - 1, Vec::with_capacity(capacity), m.size));
                self.close_if_full();
            }
            Kind::Symlink => self.files.push(entry(None, None, Some(m.link))),
            Kind::Hardlink => {
                let target = crate::tar::reader::clean(&m.link)
                    .map(|t| join(self.parent, &t))
                    .unwrap_or(m.link);
                self.files.push(left_out(
                    &path,
                    NOT_REGULAR,
                    format!("a hard link to `{target}`: its content is collected there"),
                ));
            }
            Kind::Other(kind) => {
                let what = match kind {
                    b'3' => "a character device",
                    b'4' => "a block device",
                    b'6' => "a fifo",
                    b'S' => "a sparse file",
                    _ => "not a regular file, directory or symlink",
                };
                self.files.push(left_out(
                    &path,
                    NOT_REGULAR,
                    format!("{what}: not collected"),
                ));
            }
        }
        Next::More
    }

    fn close_if_full(&mut self) {
        if let Some((index, data, size)) = &self.open {
            if data.len() as u64 >= *size {
                let encoded = base64::engine::general_purpose::STANDARD.encode(data);
                self.files[*index].data_base64 = Some(encoded);
                self.open = None;
            }
        }
    }

    /// The archive ended (or broke) before its end: a file half read is reported, not cut.
    fn cut(&mut self, why: String) {
        if let Some((index, _, _)) = self.open.take() {
            let file = &mut self.files[index];
            file.error = Some(RunFailure {
                code: READ.into(),
                message: why.clone(),
            });
        }
        self.files.push(left_out(self.requested, READ, why));
    }
}

/// Reads `paths` out of container `id` into `files`, within `max` bytes in all.
pub async fn collect(
    engine: &dyn Engine,
    id: &str,
    paths: &[String],
    max: u64,
) -> Vec<CollectedFile> {
    let mut files = Vec::new();
    let mut left = max;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for path in paths {
        if tokio::time::Instant::now() >= deadline {
            files.push(left_out(path, TIMEOUT, timed_out()));
            continue;
        }
        let read = read_path(engine, id, path, max, &mut left, &mut files);
        if tokio::time::timeout_at(deadline, read).await.is_err() {
            files.push(left_out(path, TIMEOUT, timed_out()));
        }
    }
    files
}

fn timed_out() -> String {
    format!(
        "not read: collecting took longer than {}s",
        DEADLINE.as_secs()
    )
}

async fn read_path(
    engine: &dyn Engine,
    id: &str,
    path: &str,
    max: u64,
    left: &mut u64,
    files: &mut Vec<CollectedFile>,
) {
    let (stat, mut body) = match open(engine, id, path).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            files.push(left_out(
                path,
                NOT_FOUND,
                "no such file or directory".into(),
            ));
            return;
        }
        Err(failure) => {
            files.push(left_out(path, &failure.code, failure.message));
            return;
        }
    };
    // A lone file that cannot fit is not read at all.
    if stat.is_regular() && stat.size.saturating_add(ENTRY_COST) > *left {
        let mut entry = left_out(path, TOO_LARGE, too_large(max));
        entry.size = Some(stat.size);
        files.push(entry);
        return;
    }
    let mut out = PathFiles {
        requested: path,
        parent: parent(path),
        max,
        left,
        files,
        open: None,
    };
    let mut tar = TarReader::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match body.read(&mut buf).await {
            Ok(0) => {
                out.cut("the engine's archive ended early".into());
                return;
            }
            Ok(n) => n,
            Err(e) => {
                out.cut(format!("reading the engine's archive failed: {e}"));
                return;
            }
        };
        let mut input = &buf[..n];
        loop {
            match tar.next(&mut input) {
                Ok(Some(event)) => {
                    if out.event(event) == Next::Stop {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    out.cut(format!("the engine's archive is unreadable: {e}"));
                    return;
                }
            }
        }
    }
}

/// The archive of `path`, None when the path does not exist; a failure says why, with the
/// container gone told apart from a missing path (the engine answers 404 to both).
async fn open(
    engine: &dyn Engine,
    id: &str,
    path: &str,
) -> Result<Option<(PathStat, Reader)>, RunFailure> {
    match engine.get_archive(id, path).await {
        Ok(found) => Ok(Some(found)),
        Err(e) if e.status() == Some(404) => match engine.inspect_container(id).await {
            Err(gone) if gone.status() == Some(404) => Err(RunFailure {
                code: CONTAINER_GONE.into(),
                message: "not read: the task's container no longer exists".into(),
            }),
            _ => Ok(None),
        },
        Err(e) => Err(RunFailure {
            code: e.step.code().into(),
            message: e.to_string(),
        }),
    }
}

/// A live task's path, ready to stream.
pub enum PathOut {
    /// A regular file: its raw bytes, exactly `size` of them.
    File { size: u64, body: PathBody },
    /// A directory: the engine's tar archive of it, as is.
    Tree { body: PathBody },
}

impl Tasks {
    /// After a run and before its container may be removed: the run's `collect` paths read
    /// out, kept with the run's results (GET shows them) and returned for its answer. None
    /// when the task collects nothing.
    pub(super) async fn collect_after_run(
        &self,
        record: &Shared,
        seq: u64,
        paths: &[String],
    ) -> Option<Files> {
        if paths.is_empty() {
            return None;
        }
        let (id, gone) = {
            let r = record.lock().unwrap();
            (
                r.id.clone(),
                r.ended.is_some() || r.container == Container::Gone,
            )
        };
        let max = self.inner.settings.max_collect_bytes;
        let files = if gone {
            // Deleted, expired or removed under the run: nothing is asked of the engine.
            paths
                .iter()
                .map(|p| {
                    left_out(
                        p,
                        CONTAINER_GONE,
                        "not read: the task's container was removed during its run".into(),
                    )
                })
                .collect()
        } else {
            collect(&*self.inner.engine, &id, paths, max).await
        };
        let files = Files::new(files);
        let mut r = record.lock().unwrap();
        if r.seq == seq {
            r.files = Some(files.clone());
        }
        Some(files)
    }

    /// `GET /tasks/{reference}/files/{path}`: `path` read out of a live task, a symlink
    /// resolved by the engine inside the container.
    pub async fn read_path(&self, reference: &str, path: &str) -> Result<PathOut, TaskError> {
        let bad = |message: String| TaskError::Request {
            field: "path".into(),
            message,
        };
        let path = spec::collect_path(path).map_err(bad)?;
        let id = self.live_id(reference).await?;
        let engine = &*self.inner.engine;
        let not_found = || TaskError::PathNotFound(path.clone());
        let mut target = path.clone();
        // One hop: the engine gives a symlink's target already resolved from the root.
        for _ in 0..2 {
            let (stat, body) = match engine.get_archive(&id, &target).await {
                Ok(found) => found,
                Err(e) if e.status() == Some(404) => return Err(not_found()),
                Err(e) => return Err(TaskError::Docker(e)),
            };
            if !stat.link_target.is_empty() {
                target = spec::collect_path(&stat.link_target)
                    .map_err(|m| bad(format!("`{path}` leads to `{}`: {m}", stat.link_target)))?;
                continue;
            }
            if stat.is_dir() {
                return Ok(PathOut::Tree {
                    body: PathBody::tree(body),
                });
            }
            if stat.is_regular() {
                return Ok(PathOut::File {
                    size: stat.size,
                    body: PathBody::file(body, stat.size),
                });
            }
            return Err(bad(format!(
                "`{path}` is not a regular file or a directory"
            )));
        }
        Err(bad(format!("`{path}` is a chain of symlinks")))
    }

    /// The container of a task that runs now (a run in progress, or a daemon between runs).
    async fn live_id(&self, reference: &str) -> Result<String, TaskError> {
        let not_running = |state| TaskError::NotRunning {
            reference: reference.to_string(),
            state,
        };
        let Some(found) = self.resolve(reference).await? else {
            return Err(match self.remembered(reference) {
                Some(r) => not_running(r.lock().unwrap().state()),
                None => TaskError::NotFound(reference.to_string()),
            });
        };
        let state = match self.record(&found.id) {
            Some(r) => {
                let r = r.lock().unwrap();
                match r.state() {
                    s if r.ended.is_some() => s,
                    TaskState::Running | TaskState::Idle => TaskState::Running,
                    TaskState::Failed if r.daemon => TaskState::Running,
                    s => s,
                }
            }
            None => TaskState::of_container(found.running, &found.status),
        };
        match state {
            TaskState::Running | TaskState::Idle if found.running => Ok(found.id),
            TaskState::Running | TaskState::Idle => Err(not_running(TaskState::Exited)),
            s => Err(not_running(s)),
        }
    }
}

/// The body of `GET /tasks/{ref}/files/{path}`: the engine's archive passed on as is, or the
/// data of its one regular file. Read a chunk at a time as the client takes it, so memory
/// stays at one chunk whatever the size.
pub struct PathBody {
    reader: Reader,
    buf: Box<[u8]>,
    mode: Mode,
}

enum Mode {
    Tree,
    File {
        tar: Box<TarReader>,
        /// Bytes still to send.
        left: u64,
        /// The file's member was seen.
        started: bool,
    },
}

impl PathBody {
    fn tree(reader: Reader) -> PathBody {
        PathBody {
            reader,
            buf: vec![0; CHUNK].into_boxed_slice(),
            mode: Mode::Tree,
        }
    }

    fn file(reader: Reader, size: u64) -> PathBody {
        PathBody {
            reader,
            buf: vec![0; CHUNK].into_boxed_slice(),
            mode: Mode::File {
                tar: Box::new(TarReader::new()),
                left: size,
                started: false,
            },
        }
    }
}

fn changed() -> io::Error {
    io::Error::other("the file changed while it was read")
}

/// The file data in `input`, as the file's one member of the archive; errors when the archive
/// does not hold exactly `left` more bytes of one regular file.
fn file_data(
    tar: &mut TarReader,
    started: &mut bool,
    left: &mut u64,
    mut input: &[u8],
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        match tar.next(&mut input).map_err(io::Error::other)? {
            None => return Ok(out),
            Some(Event::Member(m)) => {
                if *started || m.kind != Kind::File || m.size != *left {
                    return Err(changed());
                }
                *started = true;
            }
            Some(Event::Data(d)) => {
                if d.len() as u64 > *left {
                    return Err(changed());
                }
                *left -= d.len() as u64;
                out.extend_from_slice(d);
                if *left == 0 {
                    return Ok(out);
                }
            }
            Some(Event::End) => return Err(changed()),
        }
    }
}

impl Body for PathBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if let Mode::File { left: 0, .. } = this.mode {
                return Poll::Ready(None);
            }
            let mut read = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.reader).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(())) => {}
            }
            let n = read.filled().len();
            match &mut this.mode {
                Mode::Tree if n == 0 => return Poll::Ready(None),
                Mode::Tree => {
                    let chunk = Bytes::copy_from_slice(&this.buf[..n]);
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Mode::File { .. } if n == 0 => {
                    return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())))
                }
                Mode::File { tar, left, started } => {
                    match file_data(tar, started, left, &this.buf[..n]) {
                        Err(e) => return Poll::Ready(Some(Err(e))),
                        Ok(data) if data.is_empty() => {}
                        Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data.into())))),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.mode, Mode::File { left: 0, .. })
    }

    fn size_hint(&self) -> SizeHint {
        match self.mode {
            Mode::File { left, .. } => SizeHint::with_exact(left),
            Mode::Tree => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::TarBuilder;

    /// `files` of one path whose archive is `tar`, fed in chunks of `chunk` bytes.
    fn read(requested: &str, tar: &[u8], max: u64, chunk: usize) -> Vec<CollectedFile> {
        let mut files = Vec::new();
        let mut left = max;
        let mut out = PathFiles {
            requested,
            parent: parent(requested),
            max,
            left: &mut left,
            files: &mut files,
            open: None,
        };
        let mut reader = TarReader::new();
        'outer: for mut piece in tar.chunks(chunk) {
            while let Some(event) = reader.next(&mut piece).unwrap() {
                if out.event(event) == Next::Stop {
                    break 'outer;
                }
            }
        }
        files
    }

    fn tree() -> Vec<u8> {
        let mut b = TarBuilder::new(0);
        b.dir("out", 0o755).unwrap();
        b.file("out/a.txt", 0o644, b"hello\n").unwrap();
        let every: Vec<u8> = (0..=255u8).collect();
        b.file("out/sub/bin", 0o700, &every).unwrap();
        b.symlink("out/pw", "/etc/passwd").unwrap();
        b.file("out/z", 0o600, &[7; 3000]).unwrap();
        b.finish()
    }

    fn decode(f: &CollectedFile) -> Vec<u8> {
        let data = f.data_base64.as_deref().expect("data");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap()
    }

    #[test]
    fn a_tree_comes_out_whole_at_every_chunk_size() {
        let tar = tree();
        for chunk in [1, 7, 511, 512, 513, 4096, tar.len()] {
            let files = read("/work/out", &tar, 1 << 20, chunk);
            let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
            assert_eq!(
                paths,
                [
                    "/work/out/a.txt",
                    "/work/out/sub/bin",
                    "/work/out/pw",
                    "/work/out/z"
                ]
            );
            assert_eq!(decode(&files[0]), b"hello\n");
            assert_eq!(files[0].mode.as_deref(), Some("0644"));
            assert_eq!(decode(&files[1]), (0..=255u8).collect::<Vec<_>>());
            assert_eq!(files[1].mode.as_deref(), Some("0700"));
            assert_eq!(files[2].link.as_deref(), Some("/etc/passwd"));
            assert!(files[2].data_base64.is_none());
            assert_eq!(decode(&files[3]), vec![7; 3000]);
            assert!(files.iter().all(|f| f.error.is_none()));
        }
    }

    #[test]
    fn past_the_maximum_files_are_named_not_cut() {
        let tar = tree();
        // Room for the directory, a.txt and bin, not for z.
        let max = 4 * ENTRY_COST + 6 + 256 + 11;
        let files = read("/work/out", &tar, max, 100);
        let z = files.iter().find(|f| f.path == "/work/out/z").unwrap();
        assert_eq!(z.error.as_ref().unwrap().code, TOO_LARGE);
        assert_eq!(z.size, Some(3000));
        assert!(z.data_base64.is_none());
        let rest = files.last().unwrap();
        assert_eq!(rest.path, "/work/out");
        assert_eq!(rest.error.as_ref().unwrap().code, TOO_LARGE);
        assert_eq!(decode(&files[0]), b"hello\n");
    }

    #[test]
    fn members_outside_the_path_are_refused() {
        let mut b = TarBuilder::new(0);
        b.file("other", 0o644, b"x").unwrap();
        let files = read("/work/out", &b.finish(), 1 << 20, 512);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "/work/out");
        assert_eq!(files[0].error.as_ref().unwrap().code, READ);
    }

    #[test]
    fn a_file_at_the_root_and_joins() {
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b/c"), "/a/b/c");
        let mut b = TarBuilder::new(0);
        b.file("f", 0o640, b"").unwrap();
        let files = read("/f", &b.finish(), 1 << 20, 512);
        assert_eq!(files[0].path, "/f");
        assert_eq!(decode(&files[0]), b"");
        assert_eq!(files[0].size, Some(0));
    }

    #[test]
    fn a_file_body_is_the_member_data_at_every_split() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut b = TarBuilder::new(0);
        b.file("big", 0o644, &data).unwrap();
        let tar = b.finish();
        for at in 1..tar.len() {
            let (mut reader, mut started, mut left) = (TarReader::new(), false, 5000u64);
            let mut out = file_data(&mut reader, &mut started, &mut left, &tar[..at]).unwrap();
            if left > 0 {
                out.extend(file_data(&mut reader, &mut started, &mut left, &tar[at..]).unwrap());
            }
            assert_eq!(out, data, "split at {at}");
            assert_eq!(left, 0);
        }
        // A size other than the one announced is an error, never a cut file.
        let (mut reader, mut started, mut left) = (TarReader::new(), false, 4999u64);
        assert!(file_data(&mut reader, &mut started, &mut left, &tar).is_err());
    }
}
