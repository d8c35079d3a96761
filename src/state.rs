//! The state directory: the final view of each task's last run, one file per task under
//! `<state-dir>/<instance>/`, written atomically, read back after a restart, removed at the
//! TTL. It owns only its instance's subdirectory (other instances may share the state dir) and
//! knows nothing of Docker, HTTP or task lifecycles: callers say what to write and when to forget.
//!
//! A file is one header line (a small JSON [`Summary`]: who, when it expires, how long the
//! body is) then the body, exactly the JSON a `GET` answers. The header lets a restart list and
//! sweep files without parsing megabytes of output, and lets a half-written file (body shorter
//! than announced) be told apart from a whole one. The body is written chunk by chunk
//! ([`write_view`]): commands' output, in memory or in spill files, is never built whole.
//!
//! The spill files of running commands ([`crate::spill`]) live in the same directory; a start
//! sweeps those a crash left.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use serde::{Deserialize, Serialize};

use crate::log;
use crate::spill::{self, Output, Spiller};
use crate::tasks::run::CmdResult;
use crate::tasks::view::{RunFailure, TaskView};

/// Written in every header; a file with another value is not ours (or from a future Lessl).
const FORMAT: u32 = 1;
/// Suffix of finished files; anything else in the directory is not a result.
const SUFFIX: &str = ".json";
/// Suffix of files being written; one left by a crash is half-written by definition.
const TEMP_SUFFIX: &str = ".tmp";
/// A header is a few hundred bytes; a longer first line is not a header.
const MAX_HEADER: u64 = 64 << 10;
/// Chunk size when streaming a body to a client: each chunk is a hop from the blocking
/// thread that reads the file to the connection's task, and 64 KiB hops cost a 12 MB
/// answer ~8 ms more CPU than these. At most two wait in the channel per answer.
const CHUNK: usize = 256 << 10;
/// A result file is written in pieces this large: megabytes of output in 64 KiB writes cost
/// about 10 ms more per 8 MB (each write a trip through the file system's write path).
const WRITE_BUFFER: usize = 256 << 10;

/// What a restart needs of a task without reading its results: the view minus `results`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Always [`FORMAT`]; tells our files from anything else.
    pub lessl_state: u32,
    pub id: String,
    pub name: Option<String>,
    pub image: String,
    pub state: String,
    pub daemon: bool,
    /// Unix milliseconds.
    pub created: u64,
    /// Unix milliseconds: the task's TTL; the file is removed then, or swept at a start after.
    pub expires: u64,
    pub failed_command: Option<usize>,
    pub error: Option<RunFailure>,
    /// Bytes of the body after the header line; a shorter file was cut while being written.
    pub body_len: u64,
}

/// Where a kept body lies in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// Why a result could not be kept or read back. Named after the step that failed.
#[derive(Debug)]
pub enum StateError {
    /// The state directory is not usable: results stay in memory only.
    Disabled,
    /// Keeping this result would take the directory past `--state-max-mb`.
    Full { needed: u64, max: u64 },
    /// Creating or writing the temporary file failed.
    WriteTemp(io::Error),
    /// Flushing the file or the directory to disk failed.
    Sync(io::Error),
    /// Renaming the temporary file over the result failed.
    Rename(io::Error),
    /// Opening or reading a kept result failed.
    Read(io::Error),
    /// A file in the directory is not a result Lessl wrote (damaged, foreign, half-written).
    Damaged(String),
    /// A newer run of the same task was kept already: this older one is not written over it.
    Superseded,
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Disabled => f.write_str("the state directory is not in use"),
            StateError::Full { needed, max } => write!(
                f,
                "the state directory is full: keeping {needed} more bytes would pass --state-max-mb ({max} bytes)"
            ),
            StateError::WriteTemp(e) => write!(f, "writing the temporary file: {e}"),
            StateError::Sync(e) => write!(f, "flushing to disk: {e}"),
            StateError::Rename(e) => write!(f, "renaming into place: {e}"),
            StateError::Read(e) => write!(f, "reading a kept result: {e}"),
            StateError::Damaged(why) => f.write_str(why),
            StateError::Superseded => f.write_str("a newer run of the task was kept already"),
        }
    }
}

impl std::error::Error for StateError {}

impl StateError {
    /// The stable code shown in a view whose results could not be kept.
    pub fn code(&self) -> &'static str {
        match self {
            StateError::Full { .. } => "state.full",
            StateError::Disabled => "state.disabled",
            StateError::Damaged(_) | StateError::Read(_) => "state.read",
            StateError::WriteTemp(_) | StateError::Sync(_) | StateError::Rename(_) => "state.write",
            StateError::Superseded => "state.superseded",
        }
    }
}

/// Subdirectory of the instance's directory that holds the agents' lanes, not results.
pub const LANES_DIR: &str = "lanes";

/// The instance's state directory, or none when it could not be used.
pub struct Store {
    /// `<state-dir>/<instance>`; None keeps results in memory only.
    dir: Option<PathBuf>,
    /// Disk use never goes past this (`--state-max-mb`).
    max_bytes: u64,
    /// Size of each kept file, by task id: the disk use the bound is checked against.
    sizes: Mutex<HashMap<String, u64>>,
    /// By task id, the newest run kept, behind a lock held while one of its runs is written:
    /// concurrent runs of a daemon end in any order, and an older one must never rename its
    /// file over a newer one's. std Mutexes: the outer one only to find the inner one.
    runs: Mutex<HashMap<String, Arc<Mutex<u64>>>>,
}

impl Store {
    /// A store that keeps nothing on disk.
    pub fn memory_only() -> Store {
        Store {
            dir: None,
            max_bytes: 0,
            sizes: Mutex::default(),
            runs: Mutex::default(),
        }
    }

    /// Opens (creating) `<root>/<instance>`; when it cannot be created or written, says so
    /// once and keeps results in memory only, so Lessl still starts.
    pub fn open(root: &Path, instance: &str, max_bytes: u64) -> Store {
        let dir = root.join(instance);
        let usable = fs::create_dir_all(&dir).and_then(|()| {
            // Creating a directory can succeed where writing in it does not (read-only mount).
            let probe = dir.join(format!(".probe{TEMP_SUFFIX}"));
            File::create(&probe)?.write_all(b"probe")?;
            fs::remove_file(&probe)
        });
        match usable {
            Ok(()) => Store {
                dir: Some(dir),
                max_bytes,
                sizes: Mutex::default(),
                runs: Mutex::default(),
            },
            Err(e) => {
                log!(warn: "state directory {} is not usable ({e}); results are kept in memory only and lost at a restart", dir.display());
                Store::memory_only()
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.dir.is_some()
    }

    /// `<state-dir>/<instance>`, when results are kept there.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Where running commands spill their output: this directory, or memory only.
    pub fn spiller(&self) -> Spiller {
        match &self.dir {
            Some(dir) => Spiller::new(Some(dir.clone()), spill::BUDGET),
            None => Spiller::memory_only(),
        }
    }

    fn path_of(&self, id: &str) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{id}{SUFFIX}")))
    }

    /// Reads the directory at start: removes files whose task expired (`now` in unix ms) and
    /// temporary files a crash left, skips anything else it cannot read with one log line, and
    /// returns the summaries of the results still within their TTL.
    pub fn sweep(&self, now: u64) -> Vec<(Summary, Stored)> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                log!(warn: "state directory {}: {e}; no results read back", dir.display());
                return Vec::new();
            }
        };
        let mut kept = Vec::new();
        let (mut expired, mut skipped) = (0, 0);
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(TEMP_SUFFIX) {
                log!(warn: "state: removing {name}, a file a crash left half-written");
                let _ = fs::remove_file(&path);
                skipped += 1;
                continue;
            }
            // Output of a command that ran when Lessl stopped: its run never ended here.
            if name.ends_with(spill::SUFFIX) {
                log!(warn: "state: removing {name}, output a crash left spilled");
                let _ = fs::remove_file(&path);
                skipped += 1;
                continue;
            }
            // The agents' lanes (src/tasks/lane.rs) live beside the results.
            if name == LANES_DIR {
                continue;
            }
            let Some(id) = name.strip_suffix(SUFFIX).filter(|id| is_task_id(id)) else {
                log!(warn: "state: skipping {name}: not a file Lessl writes");
                skipped += 1;
                continue;
            };
            match read_header(&path, id) {
                Ok((summary, _)) if summary.expires <= now => {
                    let _ = fs::remove_file(&path);
                    expired += 1;
                }
                Ok((summary, stored)) => {
                    self.sizes
                        .lock()
                        .unwrap()
                        .insert(id.to_string(), stored.offset + stored.len);
                    kept.push((summary, stored));
                }
                Err(e) => {
                    log!(warn: "state: skipping {name}: {e}");
                    skipped += 1;
                }
            }
        }
        log!(
            "state: {} result(s) read back from {}, {expired} expired and removed, {skipped} skipped",
            kept.len(),
            dir.display()
        );
        kept
    }

    /// [`Store::write`] for run number `seq` of its task: runs of one task are written one at
    /// a time, and a run older than one already kept is [`StateError::Superseded`].
    pub fn write_run(
        &self,
        summary: Summary,
        view: &TaskView,
        seq: u64,
    ) -> Result<Stored, StateError> {
        let newest = self
            .runs
            .lock()
            .unwrap()
            .entry(summary.id.clone())
            .or_default()
            .clone();
        let mut newest = newest.lock().unwrap();
        if seq < *newest {
            return Err(StateError::Superseded);
        }
        let stored = self.write(summary, view)?;
        *newest = seq;
        Ok(stored)
    }

    /// Keeps `view` (exactly what `GET` answers) as the result of task `summary.id`, replacing
    /// the previous one atomically: temporary file, fsync, rename, fsync of the directory.
    pub fn write(&self, mut summary: Summary, view: &TaskView) -> Result<Stored, StateError> {
        let path = self.path_of(&summary.id).ok_or(StateError::Disabled)?;
        let dir = self.dir.as_ref().ok_or(StateError::Disabled)?;
        // Checked before writing with a lower bound of the size, and after with the real one.
        let estimate = view
            .results
            .iter()
            .map(|r| r.stdout.len() + r.stderr.len())
            .sum::<u64>();
        self.check_room(&summary.id, estimate)?;
        // Unique per write: two writers never share a temporary file.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp = dir.join(format!("{}.{n}{TEMP_SUFFIX}", summary.id));
        let written = (|| {
            let mut file = BufWriter::with_capacity(
                WRITE_BUFFER,
                Writeback::new(File::create(&temp).map_err(StateError::WriteTemp)?),
            );
            // The header comes first but holds the body's length: a placeholder of fixed
            // width, patched once the body is written.
            summary.body_len = u64::MAX;
            let placeholder = header_line(&summary);
            file.write_all(&placeholder)
                .map_err(StateError::WriteTemp)?;
            let mut counting = Counting {
                inner: &mut file,
                n: 0,
            };
            write_view(&mut counting, view).map_err(StateError::WriteTemp)?;
            let body_len = counting.n;
            let mut file = file
                .into_inner()
                .map_err(|e| StateError::WriteTemp(e.into_error()))?
                .file;
            summary.body_len = body_len;
            let header = pad_to(header_line(&summary), placeholder.len());
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.write_all(&header))
                .map_err(StateError::WriteTemp)?;
            file.sync_all().map_err(StateError::Sync)?;
            Ok(Stored {
                path: path.clone(),
                offset: header.len() as u64,
                len: body_len,
            })
        })();
        let stored = match written {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        if let Err(e) = self.check_room(&summary.id, stored.offset + stored.len) {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        // The result this one replaces is held open across the rename, so that freeing its
        // pages happens when it is closed off this thread, not in the rename.
        let replaced = File::open(&path).ok();
        fs::rename(&temp, &path).map_err(|e| {
            let _ = fs::remove_file(&temp);
            StateError::Rename(e)
        })?;
        if let Some(replaced) = replaced {
            spill::close_off_thread(replaced);
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StateError::Sync)?;
        self.sizes
            .lock()
            .unwrap()
            .insert(summary.id.clone(), stored.offset + stored.len);
        Ok(stored)
    }

    /// Errs when `bytes` more for task `id` (replacing its current file) would pass the bound.
    fn check_room(&self, id: &str, bytes: u64) -> Result<(), StateError> {
        let sizes = self.sizes.lock().unwrap();
        let others: u64 = sizes
            .iter()
            .filter(|(k, _)| k.as_str() != id)
            .map(|(_, v)| v)
            .sum();
        if others.saturating_add(bytes) > self.max_bytes {
            return Err(StateError::Full {
                needed: bytes,
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Removes the kept result of `id`, at its TTL or its DELETE.
    pub fn remove(&self, id: &str) {
        let Some(path) = self.path_of(id) else { return };
        self.sizes.lock().unwrap().remove(id);
        self.runs.lock().unwrap().remove(id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log!(warn: "state: removing {}: {e}", path.display()),
        }
    }
}

/// Writes `view` exactly as `serde_json::to_writer` would (compact), but each command's output
/// chunk by chunk from memory and its spill file, so no output is ever a whole `String`. The
/// derived serialization stays the one source of the layout: the view and each result are
/// serialized with empty outputs, and the outputs are written into the gaps. Their keys can be
/// found unambiguously because a `"` inside any JSON string is escaped.
pub fn write_view(w: &mut impl Write, view: &TaskView) -> io::Result<()> {
    // Struct literals without `..`: a field added to either type is a compile error here.
    let shell = TaskView {
        id: view.id.clone(),
        name: view.name.clone(),
        image: view.image.clone(),
        state: view.state,
        daemon: view.daemon,
        created_at: view.created_at.clone(),
        expires_at: view.expires_at.clone(),
        results: Vec::new(),
        failed_command: view.failed_command,
        error: view.error.clone(),
        persist_error: view.persist_error.clone(),
        files: view.files.clone(),
        kept: None,
    };
    let shell = serde_json::to_vec(&shell).map_err(io::Error::other)?;
    let (head, tail) = split_after(&shell, b"\"results\":[", b"]")?;
    w.write_all(head)?;
    for (i, r) in view.results.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_result(w, r)?;
    }
    w.write_all(tail)
}

/// Writes one command's result as `serde_json::to_writer` would, its outputs chunk by chunk.
pub fn write_result(w: &mut impl Write, r: &CmdResult) -> io::Result<()> {
    let empty = CmdResult {
        cmd: r.cmd.clone(),
        exit_code: r.exit_code,
        stdout: Output::default(),
        stderr: Output::default(),
        duration_ms: r.duration_ms,
        timed_out: r.timed_out,
        truncated: r.truncated,
        oom_killed: r.oom_killed,
    };
    let empty = serde_json::to_vec(&empty).map_err(io::Error::other)?;
    let (before, rest) = split_after(&empty, b"\"stdout\":", b"\"\"")?;
    w.write_all(before)?;
    write_output(w, &r.stdout)?;
    let (between, after) = split_after(&rest[2..], b"\"stderr\":", b"\"\"")?;
    w.write_all(between)?;
    write_output(w, &r.stderr)?;
    w.write_all(&after[2..])
}

/// Splits `json` right after the first `key` that `value` follows: (up to and with `key`,
/// from `value` on).
fn split_after<'a>(json: &'a [u8], key: &[u8], value: &[u8]) -> io::Result<(&'a [u8], &'a [u8])> {
    let at = json
        .windows(key.len() + value.len())
        .position(|w| w.starts_with(key) && w.ends_with(value))
        .ok_or_else(|| io::Error::other("the view's layout has no place for its results"))?;
    Ok(json.split_at(at + key.len()))
}

/// Writes `output` as a JSON string, chunk by chunk.
fn write_output(w: &mut impl Write, output: &Output) -> io::Result<()> {
    output.for_each_json_chunk(|chunk| w.write_all(chunk))
}

/// Bytes written between two requests to start writing them back.
const WRITEBACK_EVERY: u64 = 1 << 20;

/// A result file being written, whose pages the disk starts taking every
/// [`WRITEBACK_EVERY`] bytes (`sync_file_range`, which does not wait): by the `fsync` that
/// ends the write, most of a large result is on disk already, so the wait for it overlaps the
/// copying rather than following it.
struct Writeback {
    file: File,
    written: u64,
    started: u64,
}

impl Writeback {
    fn new(file: File) -> Writeback {
        Writeback {
            file,
            written: 0,
            started: 0,
        }
    }
}

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_EVERY {
            start_writeback(&self.file, self.started, self.written - self.started);
            self.started = self.written;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` back to disk, without
/// waiting; best effort (the `fsync` after is what counts).
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a valid descriptor; the call reads no memory of ours.
    unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Counts bytes on their way to the file: the body's length for the header.
struct Counting<'a, W> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn header_line(summary: &Summary) -> Vec<u8> {
    let mut line = serde_json::to_vec(summary).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Pads a header to the placeholder's width with spaces before its newline (JSON allows them).
fn pad_to(mut line: Vec<u8>, width: usize) -> Vec<u8> {
    line.pop();
    while line.len() + 1 < width {
        line.push(b' ');
    }
    line.push(b'\n');
    line
}

/// Docker's full container id: 64 lowercase hex digits.
fn is_task_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads and checks the header of the file of task `id`: ours, about that task, and whole.
fn read_header(path: &Path, id: &str) -> Result<(Summary, Stored), StateError> {
    let file = File::open(path).map_err(StateError::Read)?;
    let size = file.metadata().map_err(StateError::Read)?.len();
    let mut line = Vec::new();
    BufReader::new(file)
        .take(MAX_HEADER)
        .read_until(b'\n', &mut line)
        .map_err(StateError::Read)?;
    if line.last() != Some(&b'\n') {
        return Err(StateError::Damaged("no header line".into()));
    }
    let summary: Summary = serde_json::from_slice(&line)
        .map_err(|e| StateError::Damaged(format!("header is not Lessl's: {e}")))?;
    if summary.lessl_state != FORMAT {
        return Err(StateError::Damaged(format!(
            "format {} is not {FORMAT}",
            summary.lessl_state
        )));
    }
    if summary.id != id {
        return Err(StateError::Damaged(format!(
            "it names task {}, not the one in its name",
            summary.id
        )));
    }
    let offset = line.len() as u64;
    if offset.checked_add(summary.body_len) != Some(size) {
        return Err(StateError::Damaged(format!(
            "{size} bytes where its header announces {}: cut while written",
            offset.saturating_add(summary.body_len)
        )));
    }
    Ok((
        summary,
        Stored {
            path: path.to_path_buf(),
            offset,
            len: size - offset,
        },
    ))
}

/// Reads a whole kept body into memory: only for the rare answers that must change it.
pub fn read_body(stored: &Stored) -> Result<Vec<u8>, StateError> {
    let mut file = File::open(&stored.path).map_err(StateError::Read)?;
    file.seek(SeekFrom::Start(stored.offset))
        .map_err(StateError::Read)?;
    let mut body = Vec::new();
    file.take(stored.len)
        .read_to_end(&mut body)
        .map_err(StateError::Read)?;
    if body.len() as u64 != stored.len {
        return Err(StateError::Damaged("the file is shorter than kept".into()));
    }
    Ok(body)
}

/// A piece of an answer streamed by [`FileBody`].
#[derive(Debug)]
pub enum Part {
    /// Bytes built in memory (a bracket, a comma, a view that could not be kept).
    Bytes(Bytes),
    /// A kept result, read from its file.
    Kept(Stored),
}

/// A piece whose file is already open.
enum Opened {
    Bytes(Bytes),
    File(File, u64),
}

/// A response body read from kept files (and small pieces in memory) in chunks by a blocking
/// thread, so answering a large result never holds it whole. Every file is opened before the
/// answer starts: a file removed since is an error the caller can still turn into a 404 or
/// answer from memory.
pub struct FileBody {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
}

impl FileBody {
    pub fn open(stored: &Stored) -> Result<FileBody, StateError> {
        FileBody::parts(vec![Part::Kept(stored.clone())])
    }

    /// The concatenation of `parts`, e.g. `[`, a kept result, `,`, another, `]`.
    pub fn parts(parts: Vec<Part>) -> Result<FileBody, StateError> {
        let mut opened = Vec::with_capacity(parts.len());
        let mut total = 0u64;
        for part in parts {
            match part {
                Part::Bytes(b) => {
                    total += b.len() as u64;
                    opened.push(Opened::Bytes(b));
                }
                Part::Kept(stored) => {
                    let mut file = File::open(&stored.path).map_err(StateError::Read)?;
                    file.seek(SeekFrom::Start(stored.offset))
                        .map_err(StateError::Read)?;
                    total += stored.len;
                    opened.push(Opened::File(file, stored.len));
                }
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            for part in opened {
                let (mut file, len) = match part {
                    Opened::Bytes(b) => {
                        if tx.blocking_send(Ok(b)).is_err() {
                            return;
                        }
                        continue;
                    }
                    Opened::File(file, len) => (file, len),
                };
                let mut left = len;
                while left > 0 {
                    let mut buf = vec![0; CHUNK.min(left as usize)];
                    let chunk = match file.read(&mut buf) {
                        Ok(0) => Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "kept result is shorter than announced",
                        )),
                        Ok(n) => {
                            buf.truncate(n);
                            left -= n as u64;
                            Ok(Bytes::from(buf))
                        }
                        Err(e) => Err(e),
                    };
                    let failed = chunk.is_err();
                    // The client went away: stop reading.
                    if tx.blocking_send(chunk).is_err() || failed {
                        return;
                    }
                }
            }
        });
        Ok(FileBody {
            rx,
            remaining: total,
        })
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.remaining = self.remaining.saturating_sub(b.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Opens `path` for appending, for tests that damage a file.
#[cfg(test)]
fn append(path: &Path) -> File {
    fs::OpenOptions::new().append(true).open(path).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lessl-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn id(n: u8) -> String {
        format!("{:064x}", n)
    }

    #[test]
    fn a_file_written_with_early_writeback_holds_every_byte_in_order() {
        let root = temp_root("writeback");
        fs::create_dir_all(&root).unwrap();
        let path = root.join("f");
        let bytes: Vec<u8> = (0..(3 << 20) + 12_345).map(|i| (i % 251) as u8).collect();
        let mut w = Writeback::new(File::create(&path).unwrap());
        // Pieces of odd sizes, so the marks fall inside writes.
        for piece in bytes.chunks(100_003) {
            w.write_all(piece).unwrap();
        }
        assert_eq!(w.written, bytes.len() as u64);
        // Writeback was started at the first write past each MiB since the last start: after
        // 11 pieces and after 22 (the rest, under a MiB, waits for the fsync).
        assert_eq!(w.started, 22 * 100_003);
        w.file.sync_all().unwrap();
        assert_eq!(fs::read(&path).unwrap(), bytes);
        fs::remove_dir_all(&root).unwrap();
    }

    fn view(id: &str, stdout: &str) -> TaskView {
        TaskView {
            id: id.to_string(),
            name: Some("n".into()),
            image: "img".into(),
            state: crate::tasks::view::TaskState::Finished,
            daemon: false,
            created_at: "1970-01-01T00:00:00Z".into(),
            expires_at: "1970-01-01T00:00:10Z".into(),
            results: vec![CmdResult {
                cmd: serde_json::json!("echo"),
                exit_code: Some(0),
                stdout: stdout.into(),
                stderr: Output::default(),
                duration_ms: 1,
                timed_out: false,
                truncated: false,
                oom_killed: false,
            }],
            failed_command: None,
            error: None,
            persist_error: None,
            files: None,
            kept: None,
        }
    }

    fn summary(id: &str, expires: u64) -> Summary {
        Summary {
            lessl_state: FORMAT,
            id: id.to_string(),
            name: Some("n".into()),
            image: "img".into(),
            state: "finished".into(),
            daemon: false,
            created: 0,
            expires,
            failed_command: None,
            error: None,
            body_len: 0,
        }
    }

    #[test]
    fn write_then_read_back_exactly() {
        let root = temp_root("rw");
        let store = Store::open(&root, "i", 1 << 20);
        assert!(store.enabled());
        let v = view(&id(1), "hello \"world\"\n\u{1}é");
        let stored = store.write(summary(&id(1), 5_000), &v).unwrap();
        assert_eq!(read_body(&stored).unwrap(), serde_json::to_vec(&v).unwrap());
        // Replaced atomically: a second write leaves one file and no temporary.
        let v2 = view(&id(1), "second");
        let stored = store.write(summary(&id(1), 5_000), &v2).unwrap();
        assert_eq!(
            read_body(&stored).unwrap(),
            serde_json::to_vec(&v2).unwrap()
        );
        let names: Vec<_> = fs::read_dir(root.join("i"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![format!("{}.json", id(1))]);
        // A fresh store of the same directory finds it.
        let again = Store::open(&root, "i", 1 << 20);
        let kept = again.sweep(1_000);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0.id, id(1));
        assert_eq!(kept[0].1, stored);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn sweep_removes_expired_and_half_written_and_skips_foreign() {
        let root = temp_root("sweep");
        let store = Store::open(&root, "i", 1 << 20);
        store
            .write(summary(&id(1), 1_000), &view(&id(1), "a"))
            .unwrap();
        store
            .write(summary(&id(2), 9_000), &view(&id(2), "b"))
            .unwrap();
        let cut = store
            .write(summary(&id(3), 9_000), &view(&id(3), "c"))
            .unwrap();
        let dir = root.join("i");
        // Cut short, as a crash mid-write without the rename would never leave, but a disk might.
        let f = fs::OpenOptions::new().write(true).open(&cut.path).unwrap();
        f.set_len(cut.offset + 2).unwrap();
        // One longer than announced.
        let long = store
            .write(summary(&id(4), 9_000), &view(&id(4), "d"))
            .unwrap();
        append(&long.path).write_all(b"x").unwrap();
        fs::write(dir.join(format!("{}.tmp", id(5))), b"{\"half").unwrap();
        fs::write(dir.join("notes.txt"), b"someone else's").unwrap();
        fs::write(dir.join(format!("{}.json", id(6))), b"garbage\n").unwrap();
        fs::write(dir.join(format!("{}.json", id(7))), b"").unwrap();
        // A valid file under another task's name.
        fs::copy(
            dir.join(format!("{}.json", id(2))),
            dir.join(format!("{}.json", id(8))),
        )
        .unwrap();

        let kept = Store::open(&root, "i", 1 << 20).sweep(5_000);
        let ids: Vec<_> = kept.iter().map(|(s, _)| s.id.clone()).collect();
        assert_eq!(ids, vec![id(2)]);
        assert!(
            !dir.join(format!("{}.json", id(1))).exists(),
            "expired file swept"
        );
        assert!(
            !dir.join(format!("{}.tmp", id(5))).exists(),
            "temp file swept"
        );
        assert!(
            dir.join("notes.txt").exists(),
            "foreign files are left alone"
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn full_directory_refuses_and_keeps_nothing() {
        let root = temp_root("full");
        let store = Store::open(&root, "i", 1500);
        store
            .write(summary(&id(1), 9_000), &view(&id(1), "small"))
            .unwrap();
        let big = "x".repeat(700);
        let err = store
            .write(summary(&id(2), 9_000), &view(&id(2), &big))
            .unwrap_err();
        assert_eq!(err.code(), "state.full");
        assert!(!root.join("i").join(format!("{}.json", id(2))).exists());
        assert!(!root.join("i").join(format!("{}.tmp", id(2))).exists());
        // Removing the first makes room.
        store.remove(&id(1));
        store
            .write(summary(&id(2), 9_000), &view(&id(2), &big))
            .unwrap();
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn unwritable_directory_means_memory_only() {
        let root = temp_root("ro");
        fs::write(&root, b"a file, not a directory").unwrap();
        let store = Store::open(&root, "i", 1 << 20);
        assert!(!store.enabled());
        assert!(matches!(
            store.write(summary(&id(1), 1), &view(&id(1), "a")),
            Err(StateError::Disabled)
        ));
        assert!(store.sweep(0).is_empty());
        let _ = fs::remove_file(&root);
    }

    /// An output that lies partly in a spill file, built through the same sink a run uses.
    fn spilled(dir: &Path, bytes: &[u8]) -> Output {
        let mut sink = crate::spill::Sink::new(Spiller::new(Some(dir.to_path_buf()), 5));
        for c in bytes.chunks(3) {
            sink.push(c);
        }
        sink.output()
    }

    #[test]
    fn the_streamed_body_is_serde_jsons_compact_form_byte_for_byte() {
        let root = temp_root("stream");
        fs::create_dir_all(&root).unwrap();
        let mut v = view(&id(1), "plain");
        v.name = Some("\"results\":[] in a name".into());
        v.error = Some(RunFailure {
            code: "c".into(),
            message: "\"stdout\":\"\"".into(),
        });
        let tricky = b"\xe2\x82\xac split \xf0\x9d\x84\x9e, bad \xff\xc3 \"q\" \\ \x01\n\xe2\x82";
        let mut second = v.results[0].clone();
        second.cmd = serde_json::json!(["sh", "\"stdout\":\"\"", "\"stderr\":\"\""]);
        second.stdout = spilled(&root, tricky);
        second.stderr = spilled(&root, &[b'e'; 1000]);
        second.exit_code = None;
        second.truncated = true;
        assert!(second.stdout.is_spilled());
        v.results.push(second);
        v.persist_error = Some(RunFailure {
            code: "state.full".into(),
            message: "m".into(),
        });
        let mut streamed = Vec::new();
        write_view(&mut streamed, &v).unwrap();
        assert_eq!(
            String::from_utf8(streamed).unwrap(),
            serde_json::to_string(&v).unwrap()
        );
        // No results at all.
        v.results.clear();
        let mut streamed = Vec::new();
        write_view(&mut streamed, &v).unwrap();
        assert_eq!(streamed, serde_json::to_vec(&v).unwrap());
        let _ = fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn file_body_joins_kept_files_and_memory() {
        use http_body_util::BodyExt;
        let root = temp_root("parts");
        let store = Store::open(&root, "i", 1 << 30);
        let a = view(&id(1), &"a".repeat(CHUNK + 1));
        let b = view(&id(2), "b");
        let sa = store.write(summary(&id(1), 9_000), &a).unwrap();
        let parts = vec![
            Part::Bytes(Bytes::from_static(b"[")),
            Part::Kept(sa.clone()),
            Part::Bytes(Bytes::from_static(b",")),
            Part::Bytes(serde_json::to_vec(&b).unwrap().into()),
            Part::Bytes(Bytes::from_static(b"]")),
        ];
        let body = FileBody::parts(parts).unwrap();
        assert_eq!(
            body.size_hint().exact(),
            Some(sa.len + 3 + serde_json::to_vec(&b).unwrap().len() as u64)
        );
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(
            got.as_ref(),
            serde_json::to_vec(&[&a, &b]).unwrap().as_slice()
        );
        // A kept file gone before the answer starts is an error, not a short answer.
        store.remove(&id(1));
        assert!(FileBody::parts(vec![Part::Kept(sa)]).is_err());
        let _ = fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn file_body_streams_the_body_only() {
        use http_body_util::BodyExt;
        let root = temp_root("body");
        let store = Store::open(&root, "i", 1 << 30);
        let v = view(&id(1), &"y".repeat(3 * CHUNK + 7));
        let stored = store.write(summary(&id(1), 9_000), &v).unwrap();
        let body = FileBody::open(&stored).unwrap();
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got.as_ref(), serde_json::to_vec(&v).unwrap().as_slice());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn an_older_run_never_replaces_a_newer_one() {
        let root = temp_root("runs");
        let store = Store::open(&root, "i", u64::MAX);
        let newer = store
            .write_run(summary(&id(1), 9_000), &view(&id(1), "newer"), 7)
            .unwrap();
        assert!(matches!(
            store.write_run(summary(&id(1), 9_000), &view(&id(1), "older"), 6),
            Err(StateError::Superseded)
        ));
        let body = read_body(&newer).unwrap();
        assert!(String::from_utf8_lossy(&body).contains("newer"));
        // Concurrent writers of one task never share a temporary file.
        std::thread::scope(|s| {
            for seq in 8..16 {
                let store = &store;
                s.spawn(move || {
                    let v = view(&id(1), &format!("run {seq}"));
                    match store.write_run(summary(&id(1), 9_000), &v, seq) {
                        Ok(_) | Err(StateError::Superseded) => {}
                        Err(e) => panic!("run {seq}: {e}"),
                    }
                });
            }
        });
        let dir = root.join("i");
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, [format!("{}.json", id(1))], "no temporary file left");
        fs::remove_dir_all(root).unwrap();
    }
}
