//! A running command's output past a small in-memory budget, kept in a spill file in the
//! state directory instead of in memory (and, beside it, encoded as its JSON string while it
//! is printed), and the [`Output`] of a finished command that reads either back in chunks. It
//! owns only the `*.spill` files it creates (the state directory's sweep removes those a crash
//! left) and knows nothing of Docker, HTTP or tasks.
//!
//! A spill file lives as long as the last [`Output`] that refers to it: it is removed when the
//! run's result file is written (the task drops its in-memory results then) or the results are
//! read back into memory because they could not be written; its pages are freed off the
//! dropping thread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::json_stream::JsonString;
use crate::log;

/// Suffix of spill files; the state directory's sweep removes them at start.
pub const SUFFIX: &str = ".spill";
/// Bytes of a stream kept in memory before they go to a spill file.
pub const BUDGET: usize = 256 << 10;
/// Largest read when an output is read back.
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
        Ok(SpillFile {
            path,
            file: Some(file),
        })
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
        (self.0.file()).write_all(bytes)
    }

    pub fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        self.0.file().read_at(buf, at)
    }
}

/// One spill file; removed when dropped.
#[derive(Debug)]
struct SpillFile {
    path: PathBuf,
    /// Taken only by `drop`.
    file: Option<File>,
}

impl SpillFile {
    fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("a spill file is open until dropped")
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            log!(warn: "spill file {}: removing: {e}", self.path.display());
        }
        if let Some(file) = self.file.take() {
            close_off_thread(file);
        }
    }
}

/// Closes `file` on a blocking thread when there is a runtime. Closing the last descriptor
/// of a file whose name is gone frees its pages: milliseconds for the megabytes of a spill
/// or a replaced result file, which must not hold the thread about to send an answer.
pub fn close_off_thread(file: File) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(file))),
        Err(_) => drop(file),
    }
}

/// Bytes of one stream in order: the first `spilled` in `file` (if any), then `mem`. Cloning
/// shares the file.
#[derive(Debug, Clone, Default)]
struct Kept {
    file: Option<Arc<SpillFile>>,
    spilled: u64,
    mem: Vec<u8>,
}

impl Kept {
    fn len(&self) -> u64 {
        self.spilled + self.mem.len() as u64
    }

    /// Calls `f` with the bytes in order, in chunks of at most [`CHUNK`] plus the in-memory
    /// rest, never holding them whole.
    fn for_each_chunk(&self, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        if let Some(spill) = &self.file {
            let mut buf = vec![0; CHUNK.min(self.spilled as usize)];
            let mut at = 0u64;
            while at < self.spilled {
                let want = buf.len().min((self.spilled - at) as usize);
                let n = spill.file().read_at(&mut buf[..want], at)?;
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

    /// Moves the bytes in memory to the spill file (made on first use) once they are over
    /// the budget. A plain blocking write: it lands in the page cache, at most the budget
    /// plus one frame at a time, cheaper than a hop to a blocking thread per frame.
    fn spill_past_budget(&mut self, spiller: &Spiller) -> io::Result<()> {
        if self.mem.len() <= spiller.budget {
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(Arc::new(spiller.create()?));
        }
        let spill = self.file.as_ref().expect("created above");
        spill.file().write_all(&self.mem)?;
        self.spilled += self.mem.len() as u64;
        self.mem.clear();
        Ok(())
    }
}

/// What a command printed on one stream, within the cap. Cloning shares its spill files.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// The bytes as printed.
    raw: Kept,
    /// The same output encoded as one JSON string (quotes included) while it was printed,
    /// so that a result file copies it instead of encoding megabytes after the command
    /// ended, on the answer's path. None without a state directory, once spilling it failed,
    /// or once it grew past twice the output: the raw bytes are encoded when written then,
    /// as they always can be.
    json: Option<Kept>,
}

impl Output {
    /// Bytes of output, as printed (not as encoded in JSON).
    pub fn len(&self) -> u64 {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether part of it lies in a spill file.
    pub fn is_spilled(&self) -> bool {
        self.raw.file.is_some()
    }

    /// Calls `f` with the output's bytes in order, in chunks of at most [`CHUNK`] plus the
    /// in-memory rest, never holding it whole.
    pub fn for_each_chunk(&self, f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        self.raw.for_each_chunk(f)
    }

    /// Calls `f` with the output as one JSON string, quotes included, in chunks: byte for
    /// byte what `serde_json` writes for its lossy text ([`crate::json_stream`]).
    pub fn for_each_json_chunk(
        &self,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if let Some(json) = &self.json {
            return json.for_each_chunk(f);
        }
        let mut enc = JsonString::new();
        let mut buf = Vec::new();
        self.raw.for_each_chunk(|chunk| {
            enc.feed(chunk, &mut buf);
            f(&buf)?;
            buf.clear();
            Ok(())
        })?;
        enc.finish(&mut buf);
        f(&buf)
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

    /// Reads a spilled output back into memory and lets its files go: for results that
    /// could not be written to the state directory and so stay in memory until their TTL.
    pub fn into_memory(&mut self) -> io::Result<()> {
        self.json = None;
        if self.raw.file.is_some() {
            self.raw = Kept {
                mem: self.to_bytes()?,
                ..Kept::default()
            };
        }
        Ok(())
    }
}

impl From<&str> for Output {
    fn from(s: &str) -> Output {
        Output {
            raw: Kept {
                mem: s.as_bytes().to_vec(),
                ..Kept::default()
            },
            json: None,
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

/// One stream's output being written: in memory up to the budget, then to a spill file;
/// with a state directory, also encoded as JSON as it comes (see [`Output`]).
#[derive(Debug)]
pub struct Sink {
    spiller: Spiller,
    raw: Kept,
    /// Spilling failed once (disk full, directory gone): the rest stays in memory, up to the
    /// cap, as it would without a state directory.
    failed: bool,
    json: Option<(JsonString, Kept)>,
}

impl Sink {
    pub fn new(spiller: Spiller) -> Sink {
        let json = spiller
            .dir
            .is_some()
            .then(|| (JsonString::new(), Kept::default()));
        Sink {
            spiller,
            raw: Kept::default(),
            failed: false,
            json,
        }
    }

    /// Keeps `bytes` (already within the cap).
    pub fn push(&mut self, bytes: &[u8]) {
        self.raw.mem.extend_from_slice(bytes);
        if !self.failed {
            if let Err(e) = self.raw.spill_past_budget(&self.spiller) {
                log!(warn: "spilling output to the state directory failed ({e}); the rest of this stream is kept in memory");
                self.failed = true;
            }
        }
        if let Some((enc, json)) = &mut self.json {
            enc.feed(bytes, &mut json.mem);
            // Output of control bytes encodes to six times its size (`\u0001`): past twice
            // the raw bytes (and a budget's slack), the copy would cost more disk than the
            // escaping it saves later.
            let bloated = json.len() > 2 * self.raw.len() + self.spiller.budget as u64;
            if bloated || json.spill_past_budget(&self.spiller).is_err() {
                // Its result is encoded from the raw bytes when written instead.
                self.json = None;
            }
        }
    }

    /// What was kept so far, sharing the spill files; the sink goes on.
    pub fn output(&self) -> Output {
        Output {
            raw: self.raw.clone(),
            json: self.json.as_ref().map(|(enc, json)| {
                let mut done = json.clone();
                enc.clone().finish(&mut done.mem);
                done
            }),
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
            let chunk = vec![b'a' + i % 26; 1 + (i as usize % 7)];
            sink.push(&chunk);
            want.extend_from_slice(&chunk);
            assert!(sink.raw.mem.len() <= 10, "memory stays within the budget");
            let json = &sink
                .json
                .as_ref()
                .expect("a state directory: encoded too")
                .1;
            assert!(json.mem.len() <= 10, "its encoding too");
        }
        let out = sink.output();
        assert!(out.is_spilled());
        assert_eq!(out.len(), want.len() as u64);
        assert_eq!(out.to_bytes().unwrap(), want);
        assert_eq!(spill_files(&dir), 2, "the bytes and their encoding");
        let copy = out.clone();
        drop(sink);
        drop(out);
        assert_eq!(spill_files(&dir), 2, "a clone still refers to them");
        let mut copy = copy;
        copy.into_memory().unwrap();
        assert!(!copy.is_spilled());
        assert_eq!(copy.to_bytes().unwrap(), want);
        assert_eq!(spill_files(&dir), 0, "read back into memory, the files go");
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

    fn json_of(out: &Output) -> Vec<u8> {
        let mut all = Vec::new();
        out.for_each_json_chunk(|c| {
            all.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        all
    }

    /// What a result file must hold for `bytes`: serde_json's string of their lossy text.
    fn expected(bytes: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&String::from_utf8_lossy(bytes)).unwrap()
    }

    #[test]
    fn the_encoding_kept_while_writing_is_the_whole_ones_at_every_split() {
        let dir = temp_dir("split");
        let text: &[u8] = b"a\"b\n\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\x01\xff\xe2\x82 z\xf0\x9f";
        for budget in [2, 5, 1 << 20] {
            for cut in 0..=text.len() {
                let mut sink = Sink::new(Spiller::new(Some(dir.clone()), budget));
                sink.push(&text[..cut]);
                // A snapshot mid-stream is a string of its own, ended where it stands.
                assert_eq!(json_of(&sink.output()), expected(&text[..cut]), "cut {cut}");
                sink.push(&text[cut..]);
                let out = sink.output();
                assert!(out.json.is_some(), "encoded while written");
                assert_eq!(json_of(&out), expected(text), "budget {budget}, cut {cut}");
                assert_eq!(out.to_bytes().unwrap(), text);
            }
            let mut sink = Sink::new(Spiller::new(Some(dir.clone()), budget));
            for b in text {
                sink.push(std::slice::from_ref(b));
            }
            assert_eq!(json_of(&sink.output()), expected(text), "byte by byte");
        }
        assert_eq!(spill_files(&dir), 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn output_that_encodes_to_many_times_its_size_is_encoded_when_read() {
        let dir = temp_dir("bloat");
        let mut sink = Sink::new(Spiller::new(Some(dir.clone()), 16));
        sink.push(b"plain text, then control bytes: ");
        assert!(sink.json.is_some());
        let mut all = b"plain text, then control bytes: ".to_vec();
        for _ in 0..8 {
            sink.push(&[1; 8]);
            all.extend_from_slice(&[1; 8]);
        }
        assert!(
            sink.json.is_none(),
            "past twice its size, the encoding is dropped"
        );
        assert_eq!(json_of(&sink.output()), expected(&all));
        drop(sink);
        assert_eq!(spill_files(&dir), 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_kept_encoding_the_bytes_are_encoded_when_read() {
        let text = b"line\n\xffend\xc3";
        // Memory only: nothing is encoded ahead.
        let mut sink = Sink::new(Spiller::memory_only());
        sink.push(text);
        assert!(sink.json.is_none());
        assert_eq!(json_of(&sink.output()), expected(text));
        // A directory that fails: the encoding is dropped at its first spill, not half kept.
        let mut sink = Sink::new(Spiller::new(Some("/nonexistent/lessl".into()), 4));
        sink.push(text);
        sink.push(b"more");
        assert!(sink.json.is_none());
        let mut all = text.to_vec();
        all.extend_from_slice(b"more");
        assert_eq!(json_of(&sink.output()), expected(&all));
        // Read back into memory: the encoding goes with the files.
        let dir = temp_dir("back");
        let mut sink = Sink::new(Spiller::new(Some(dir.clone()), 3));
        sink.push(text);
        let mut out = sink.output();
        drop(sink);
        out.into_memory().unwrap();
        assert!(out.json.is_none());
        assert_eq!(json_of(&out), expected(text));
        assert_eq!(spill_files(&dir), 0);
        let _ = fs::remove_dir_all(&dir);
    }
}
