//! A running command's output past a small in-memory budget, kept in a spill file in the
//! state directory instead of in memory, and the [`Output`] of a finished command that reads
//! it back in chunks. It owns only the `*.spill` files it creates (the state directory's sweep
//! removes those a crash left) and knows nothing of Docker, HTTP or tasks.
//!
//! A spill file lives as long as the last [`Output`] that refers to it: it is removed when the
//! run's result file is written (the task drops its in-memory results then) or the results are
//! read back into memory because they could not be written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::log;

/// Suffix of spill files; the state directory's sweep removes them at start.
pub const SUFFIX: &str = ".spill";
/// Bytes of a stream kept in memory before they go to a spill file.
pub const BUDGET: usize = 256 << 10;
/// Size of the reads when an output is read back.
const CHUNK: usize = 64 << 10;

/// Where a command's output spills, or nowhere (no usable state directory: memory up to the
/// cap, as before spill files existed).
#[derive(Debug, Clone)]
pub struct Spiller {
    /// The instance's state directory.
    dir: Option<PathBuf>,
    /// Bytes a stream keeps in memory before spilling.
    budget: usize,
}

impl Spiller {
    pub fn new(dir: Option<PathBuf>, budget: usize) -> Spiller {
        Spiller { dir, budget }
    }

    /// Keeps everything in memory.
    pub fn memory_only() -> Spiller {
        Spiller::new(None, usize::MAX)
    }

    /// A new, empty spill file with a name no other of this process has.
    fn create(&self) -> io::Result<SpillFile> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = self
            .dir
            .as_ref()
            .ok_or_else(|| io::Error::other("no state directory"))?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}{SUFFIX}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(SpillFile { path, file })
    }
}

/// An append-only spill file read back at offsets while it grows: a run's event journal
/// ([`crate::tasks::journal`]) past its memory budget. Removed when dropped.
#[derive(Debug)]
pub struct AppendFile(SpillFile);

impl Spiller {
    /// Bytes a stream keeps in memory before spilling.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// A new, empty append-only file; fails without a state directory.
    pub fn append_file(&self) -> io::Result<AppendFile> {
        self.create().map(AppendFile)
    }
}

impl AppendFile {
    pub fn append(&self, bytes: &[u8]) -> io::Result<()> {
        (&self.0.file).write_all(bytes)
    }

    pub fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        self.0.file.read_at(buf, at)
    }
}

/// One spill file; removed when dropped.
#[derive(Debug)]
struct SpillFile {
    path: PathBuf,
    file: File,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            log!(warn: "spill file {}: removing: {e}", self.path.display());
        }
    }
}

/// What a command printed on one stream, within the cap: the first `spilled` bytes in a spill
/// file (if any), then `mem`. Cloning shares the file.
#[derive(Debug, Clone, Default)]
pub struct Output {
    file: Option<Arc<SpillFile>>,
    /// Bytes of the output in the file, from its start.
    spilled: u64,
    /// The bytes after those in the file.
    mem: Vec<u8>,
}

impl Output {
    /// Bytes of output, as printed (not as encoded in JSON).
    pub fn len(&self) -> u64 {
        self.spilled + self.mem.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether part of it lies in a spill file.
    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Calls `f` with the output's bytes in order, in chunks of at most 64 KiB plus the
    /// in-memory rest, never holding it whole.
    pub fn for_each_chunk(&self, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        if let Some(spill) = &self.file {
            let mut buf = vec![0; CHUNK];
            let mut at = 0u64;
            while at < self.spilled {
                let want = CHUNK.min((self.spilled - at) as usize);
                let n = spill.file.read_at(&mut buf[..want], at)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the spill file is shorter than what was written to it",
                    ));
                }
                f(&buf[..n])?;
                at += n as u64;
            }
        }
        f(&self.mem)
    }

    /// The bytes, whole; for answers that must be built in memory and for tests.
    pub fn to_bytes(&self) -> io::Result<Vec<u8>> {
        let mut all = Vec::with_capacity(self.len() as usize);
        self.for_each_chunk(|c| {
            all.extend_from_slice(c);
            Ok(())
        })?;
        Ok(all)
    }

    /// The text as `String::from_utf8_lossy` reads it.
    pub fn to_string_lossy(&self) -> io::Result<String> {
        Ok(String::from_utf8_lossy(&self.to_bytes()?).into_owned())
    }

    /// Reads a spilled output back into memory and lets its file go: for results that could
    /// not be written to the state directory and so stay in memory until their TTL.
    pub fn into_memory(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            self.mem = self.to_bytes()?;
            self.file = None;
            self.spilled = 0;
        }
        Ok(())
    }
}

impl From<&str> for Output {
    fn from(s: &str) -> Output {
        Output {
            mem: s.as_bytes().to_vec(),
            ..Output::default()
        }
    }
}

/// Serialized as the lossy UTF-8 text, built whole: only answers built in memory take this
/// path; result files are written by [`crate::state`] chunk by chunk.
impl Serialize for Output {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.to_string_lossy().map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

/// One stream's output being written: in memory up to the budget, then to a spill file.
#[derive(Debug)]
pub struct Sink {
    spiller: Spiller,
    file: Option<Arc<SpillFile>>,
    spilled: u64,
    mem: Vec<u8>,
    /// Spilling failed once (disk full, directory gone): the rest stays in memory, up to the
    /// cap, as it would without a state directory.
    failed: bool,
}

impl Sink {
    pub fn new(spiller: Spiller) -> Sink {
        Sink {
            spiller,
            file: None,
            spilled: 0,
            mem: Vec::new(),
            failed: false,
        }
    }

    /// Keeps `bytes` (already within the cap).
    pub fn push(&mut self, bytes: &[u8]) {
        self.mem.extend_from_slice(bytes);
        if self.mem.len() > self.spiller.budget && !self.failed {
            // A plain blocking write: it lands in the page cache, at most the budget plus one
            // frame at a time, cheaper than a hop to a blocking thread per frame.
            if let Err(e) = self.spill() {
                log!(warn: "spilling output to the state directory failed ({e}); the rest of this stream is kept in memory");
                self.failed = true;
            }
        }
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some(Arc::new(self.spiller.create()?));
        }
        let spill = self.file.as_ref().expect("created above");
        (&spill.file).write_all(&self.mem)?;
        self.spilled += self.mem.len() as u64;
        self.mem.clear();
        Ok(())
    }

    /// What was kept so far, sharing the spill file; the sink goes on.
    pub fn output(&self) -> Output {
        Output {
            file: self.file.clone(),
            spilled: self.spilled,
            mem: self.mem.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lessl-spill-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn spill_files(dir: &PathBuf) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(SUFFIX)
            })
            .count()
    }

    #[test]
    fn past_the_budget_output_goes_to_a_file_removed_with_the_last_output() {
        let dir = temp_dir("budget");
        let mut sink = Sink::new(Spiller::new(Some(dir.clone()), 10));
        let mut want = Vec::new();
        for i in 0..50u8 {
            let chunk = vec![i; 1 + (i as usize % 7)];
            sink.push(&chunk);
            want.extend_from_slice(&chunk);
            assert!(sink.mem.len() <= 10, "memory stays within the budget");
        }
        let out = sink.output();
        assert!(out.is_spilled());
        assert_eq!(out.len(), want.len() as u64);
        assert_eq!(out.to_bytes().unwrap(), want);
        assert_eq!(spill_files(&dir), 1);
        let copy = out.clone();
        drop(sink);
        drop(out);
        assert_eq!(spill_files(&dir), 1, "a clone still refers to it");
        let mut copy = copy;
        copy.into_memory().unwrap();
        assert!(!copy.is_spilled());
        assert_eq!(copy.to_bytes().unwrap(), want);
        assert_eq!(spill_files(&dir), 0, "read back into memory, the file goes");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_directory_everything_stays_in_memory() {
        let mut sink = Sink::new(Spiller::memory_only());
        sink.push(&[7; 1000]);
        let out = sink.output();
        assert!(!out.is_spilled());
        assert_eq!(out.to_bytes().unwrap(), vec![7; 1000]);
        // A directory that cannot take files: memory, once it failed.
        let mut sink = Sink::new(Spiller::new(Some("/nonexistent/lessl".into()), 4));
        sink.push(b"abcdefgh");
        sink.push(b"ij");
        assert!(sink.failed);
        assert_eq!(sink.output().to_bytes().unwrap(), b"abcdefghij");
    }

    #[test]
    fn chunks_come_in_order_and_serialize_lossily() {
        let dir = temp_dir("chunks");
        let mut sink = Sink::new(Spiller::new(Some(dir.clone()), 3));
        sink.push(b"h\xc3");
        sink.push(b"\xa9llo\xff!");
        let out = sink.output();
        assert_eq!(out.to_string_lossy().unwrap(), "héllo\u{fffd}!");
        assert_eq!(serde_json::to_string(&out).unwrap(), "\"héllo\u{fffd}!\"");
        drop((sink, out));
        assert_eq!(spill_files(&dir), 0);
        let _ = fs::remove_dir_all(&dir);
    }
}
