//! A run's live output as NDJSON event lines (DESIGN.md section 7, "Live output"): the run
//! appends them as things happen, and every reader (the POST or PUT answer, each follower of
//! `GET /tasks/{ref}/events`) reads them with its own cursor, woken on each append. The
//! journal is append-only, in memory up to a small budget and then in a spill file
//! ([`crate::spill::AppendFile`]): a slow reader costs disk, never Lessl's memory, and never
//! stalls the run. Its size is bounded by the run's output caps, since events carry only the
//! output kept within them. What it stores are records ([`Record`]): output as the raw text
//! it is, escaped into its `stdout`/`stderr` line only for a reader that reads it, and other
//! events as their lines. The two lines that hold whole outputs (`exit`, `end`) are kept as
//! the values they show and written out for each reader that reaches them, from the output's
//! own spill file and the kept result. So a run nobody follows costs one raw copy of its
//! output, and no JSON. Also here: the events of a finished run rebuilt from its final view,
//! and the UTF-8 decoder that keeps a character split across chunks whole. No HTTP, no
//! Docker.

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use hyper::body::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::run::CmdResult;
use super::view::{RunFailure, TaskView};
use crate::spill::{AppendFile, Spiller};
use crate::state;

/// The media type of event streams.
pub const MEDIA_TYPE: &str = "application/x-ndjson";
/// Journal bytes kept in memory before the rest goes to a spill file: small, since every
/// run has a journal (a follower may join any run) whether or not anyone reads it.
const BUDGET: usize = 64 << 10;
/// Bytes of records a reader takes at once (their lines may be longer: output escapes).
const READ: usize = 64 << 10;
/// Most text one output record holds: a larger chunk is split, so that a read stays small.
const MAX_DATA: usize = 64 << 10;

/// One event line, as the contract names it. Generic over what a task view and a result
/// are, so a live run (typed) and a rebuilt one (JSON read back) write the same lines.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Event<'a, V: Serialize, R: Serialize> {
    Task {
        task: &'a V,
    },
    Start {
        id: &'a str,
        index: usize,
    },
    Stdout {
        id: &'a str,
        index: usize,
        data: &'a str,
    },
    Stderr {
        id: &'a str,
        index: usize,
        data: &'a str,
    },
    Exit {
        id: &'a str,
        index: usize,
        result: &'a R,
    },
    Error {
        id: &'a str,
        error: &'a Value,
    },
    End {
        task: &'a V,
    },
}

/// One line, newline included. Only small events take this path (a view without results,
/// a chunk of output): results go through [`state::write_result`], never whole in memory.
fn line<V: Serialize, R: Serialize>(event: &Event<'_, V, R>) -> Vec<u8> {
    let mut l = serde_json::to_vec(event).unwrap_or_default();
    l.push(b'\n');
    l
}

/// A `stdout` or `stderr` event line, as [`line`] writes it, escaped by
/// [`crate::json_stream::quote`]: serde_json's escaping costs two `memcpy` calls per escape,
/// which output of short lines (`yes`) turns into most of a run's CPU time.
fn data_line(id: &str, index: usize, stderr: bool, data: &str) -> Vec<u8> {
    let mut l = Vec::with_capacity(data.len() + data.len() / 2 + id.len() + 64);
    l.extend_from_slice(b"{\"event\":\"");
    l.extend_from_slice(if stderr { b"stderr" } else { b"stdout" });
    l.extend_from_slice(b"\",\"id\":");
    crate::json_stream::quote(id, &mut l);
    l.extend_from_slice(format!(",\"index\":{index},\"data\":").as_bytes());
    crate::json_stream::quote(data, &mut l);
    l.extend_from_slice(b"}\n");
    l
}

/// What one stored record is: `[kind u8][index u32 LE][len u32 LE]`, then `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// A whole event line, newline included.
    Line,
    /// Text command `index` wrote on stdout (valid UTF-8), its line made when read.
    Stdout(u32),
    Stderr(u32),
}

const HEAD: usize = 9;

impl Record {
    fn head(self, len: usize) -> [u8; HEAD] {
        let (kind, index) = match self {
            Record::Line => (0u8, 0),
            Record::Stdout(i) => (1, i),
            Record::Stderr(i) => (2, i),
        };
        let mut h = [0u8; HEAD];
        h[0] = kind;
        h[1..5].copy_from_slice(&index.to_le_bytes());
        h[5..9].copy_from_slice(&(len as u32).to_le_bytes());
        h
    }

    /// The record a head starts, and its length; None for bytes this journal never wrote.
    fn parse(h: &[u8]) -> Option<(Record, usize)> {
        let index = u32::from_le_bytes(h.get(1..5)?.try_into().ok()?);
        let len = u32::from_le_bytes(h.get(5..9)?.try_into().ok()?) as usize;
        let record = match h[0] {
            0 => Record::Line,
            1 => Record::Stdout(index),
            2 => Record::Stderr(index),
            _ => return None,
        };
        Some((record, len))
    }
}

/// The bytes of a journal: the first `spilled` in the file, then `mem`.
#[derive(Debug)]
struct Store {
    spiller: Spiller,
    budget: usize,
    file: Option<Arc<AppendFile>>,
    spilled: u64,
    mem: Vec<u8>,
    /// Spilling failed once: the rest stays in memory, bounded by the output caps.
    failed: bool,
    ended: bool,
    /// Lines that hold a whole output (`exit`, `end`), by the byte offset they stand at:
    /// kept as the values they show and written out for each reader that gets there, so
    /// a run nobody reads never encodes or stores its outputs again.
    deferred: Vec<(u64, Arc<Deferred>)>,
}

/// A line written out only when read.
#[derive(Debug)]
enum Deferred {
    Exit { index: usize, result: CmdResult },
    End { view: TaskView },
}

impl Deferred {
    /// Writes the line, newline included, its outputs chunk by chunk.
    fn write(&self, id: &str, w: &mut impl Write) -> io::Result<()> {
        // The line's object opens here and closes after the match, whichever event it is.
        w.write_all(b"{")?;
        match self {
            Deferred::Exit { index, result } => {
                let id = serde_json::to_string(id).map_err(io::Error::other)?;
                write!(w, r#""event":"exit","id":{id},"index":{index},"result":"#)?;
                state::write_result(w, result)?;
            }
            Deferred::End { view } => {
                w.write_all(br#""event":"end","task":"#)?;
                // The kept file holds these very bytes: copied, not encoded again.
                match view.kept.as_ref().and_then(|k| kept(k).ok()) {
                    Some((mut file, len)) => {
                        if io::copy(&mut file, w)? != len {
                            return Err(io::Error::other("the kept file is shorter than kept"));
                        }
                    }
                    None => state::write_view(w, view)?,
                }
            }
        }
        w.write_all(b"}\n")
    }
}

/// What readers wait on: how far the journal goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    /// Bytes appended.
    len: u64,
    /// Deferred lines.
    items: usize,
    ended: bool,
}

impl Store {
    fn mark(&self) -> Mark {
        Mark {
            len: self.spilled + self.mem.len() as u64,
            items: self.deferred.len(),
            ended: self.ended,
        }
    }
}

/// The event lines of one run of one task.
#[derive(Debug)]
pub struct Journal {
    /// The task's id, which every command event names.
    id: String,
    /// A std mutex, never held across an await: appends and reads copy under it and go.
    store: Mutex<Store>,
    /// How far the journal goes, for readers to wait on.
    mark: watch::Sender<Mark>,
}

impl Journal {
    /// A journal for a run of task `id`, whose first line is the `task` event.
    pub fn begin(id: &str, spiller: Spiller, task: &TaskView) -> Writer {
        let budget = BUDGET.min(spiller.budget());
        let journal = Journal {
            id: id.to_string(),
            store: Mutex::new(Store {
                spiller,
                budget,
                file: None,
                spilled: 0,
                mem: Vec::new(),
                failed: false,
                ended: false,
                deferred: Vec::new(),
            }),
            mark: watch::channel(Mark {
                len: 0,
                items: 0,
                ended: false,
            })
            .0,
        };
        journal.append(&line::<_, CmdResult>(&Event::Task { task: &shell(task) }));
        Writer(Arc::new(journal))
    }

    /// The task's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A reader from the first line.
    pub fn reader(self: &Arc<Self>) -> Reader {
        Reader {
            journal: self.clone(),
            at: 0,
            item: 0,
            expanding: None,
            at_line_end: true,
            mark: self.mark.subscribe(),
        }
    }

    /// Appends one event line (newline included).
    fn append(&self, line: &[u8]) {
        self.record(Record::Line, line);
    }

    /// Appends one record; readers see it at once, whole.
    fn record(&self, record: Record, payload: &[u8]) {
        let mut s = self.store.lock().unwrap();
        if s.ended {
            return;
        }
        s.push(&record.head(payload.len()));
        s.push(payload);
        // Under the lock, so readers never see the journal go back.
        self.mark.send_replace(s.mark());
    }

    /// A line written out when read, standing after everything appended so far.
    fn defer(&self, item: Deferred) {
        let mut s = self.store.lock().unwrap();
        if s.ended {
            return;
        }
        let at = s.mark().len;
        s.deferred.push((at, Arc::new(item)));
        self.mark.send_replace(s.mark());
    }

    /// The deferred line `i`, when there is one.
    fn item(&self, i: usize) -> Option<(u64, Arc<Deferred>)> {
        self.store.lock().unwrap().deferred.get(i).cloned()
    }

    fn close(&self) {
        let mut s = self.store.lock().unwrap();
        s.ended = true;
        self.mark.send_replace(s.mark());
    }

    /// Appends to `buf` the `len` bytes from `at`, which were appended before.
    fn read_exact(&self, at: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        let start = buf.len();
        while buf.len() - start < len {
            let got = (buf.len() - start) as u64;
            let before = buf.len();
            self.read_into(at + got, len - (before - start), buf)?;
            if buf.len() == before {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the events end inside a record",
                ));
            }
        }
        Ok(())
    }

    /// Appends to `buf` at most `max` bytes from `at`.
    fn read_into(&self, at: u64, max: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        let s = self.store.lock().unwrap();
        if at >= s.spilled {
            let from = (at - s.spilled) as usize;
            let to = s.mem.len().min(from + max);
            buf.extend_from_slice(&s.mem[from.min(to)..to]);
            return Ok(());
        }
        // Bytes before `spilled` never change: read them without the lock.
        let file = s.file.clone().expect("spilled bytes have a file");
        let want = max.min((s.spilled - at) as usize);
        drop(s);
        let start = buf.len();
        buf.resize(start + want, 0);
        let mut got = 0;
        while got < want {
            let n = file.read_at(&mut buf[start + got..], at + got as u64)?;
            if n == 0 {
                buf.truncate(start + got);
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the events file is shorter than what was written to it",
                ));
            }
            got += n;
        }
        Ok(())
    }
}

impl Store {
    /// Appends bytes (memory, then the file), not yet shown to readers.
    fn push(&mut self, bytes: &[u8]) {
        self.mem.extend_from_slice(bytes);
        if self.mem.len() > self.budget && !self.failed {
            if let Err(e) = self.spill() {
                crate::log!(warn: "spilling a run's events failed ({e}); the rest is kept in memory");
                self.failed = true;
            }
        }
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some(Arc::new(self.spiller.append_file()?));
        }
        self.file
            .as_ref()
            .expect("created above")
            .append(&self.mem)?;
        self.spilled += self.mem.len() as u64;
        self.mem.clear();
        Ok(())
    }
}

/// The run's handle on its journal: it writes the events, and ends the journal when dropped
/// (whatever ended the run: a panic or a shutdown too), so no reader waits forever.
#[derive(Debug)]
pub struct Writer(Arc<Journal>);

impl Writer {
    pub fn journal(&self) -> &Arc<Journal> {
        &self.0
    }

    /// The `start` event of command `index`, and the handle its output goes through.
    pub fn command(&self, index: usize) -> CommandEvents {
        let j = &self.0;
        j.append(&line::<TaskView, CmdResult>(&Event::Start {
            id: &j.id,
            index,
        }));
        CommandEvents {
            journal: j.clone(),
            index,
            out: Utf8Carry::default(),
            err: Utf8Carry::default(),
        }
    }

    /// The run's last lines: an `error` event when it failed, then `end`; readers stop there.
    pub fn end(&self, view: &TaskView) {
        let j = &self.0;
        if let Some(error) = &view.error {
            let error = failure_json(error);
            j.append(&line::<TaskView, CmdResult>(&Event::Error {
                id: &j.id,
                error: &error,
            }));
        }
        j.defer(Deferred::End { view: view.clone() });
        j.close();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The kept body of a run, to be read once.
fn kept(stored: &state::Stored) -> io::Result<(impl io::Read, u64)> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(&stored.path)?;
    file.seek(io::SeekFrom::Start(stored.offset))?;
    Ok((file.take(stored.len), stored.len))
}

/// The task as the `task` event shows it: the run's results are still to come.
fn shell(view: &TaskView) -> TaskView {
    let mut v = view.clone();
    v.results = Vec::new();
    v
}

fn failure_json(f: &RunFailure) -> Value {
    serde_json::to_value(f).unwrap_or(Value::Null)
}

/// One command's events: its output as it comes, then its `exit`.
#[derive(Debug)]
pub struct CommandEvents {
    journal: Arc<Journal>,
    index: usize,
    out: Utf8Carry,
    err: Utf8Carry,
}

impl CommandEvents {
    /// Output kept within the cap on stdout.
    pub fn stdout(&mut self, bytes: &[u8]) {
        let text = self.out.feed(bytes);
        self.data(false, &text);
    }

    /// Output kept within the cap on stderr.
    pub fn stderr(&mut self, bytes: &[u8]) {
        let text = self.err.feed(bytes);
        self.data(true, &text);
    }

    /// The text as it is, in records of at most [`MAX_DATA`] bytes cut between characters:
    /// escaped into its line only when read.
    fn data(&self, stderr: bool, mut data: &str) {
        let index = self.index as u32;
        let record = if stderr {
            Record::Stderr(index)
        } else {
            Record::Stdout(index)
        };
        while !data.is_empty() {
            let mut cut = data.len().min(MAX_DATA);
            while !data.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, rest) = data.split_at(cut);
            self.journal.record(record, piece.as_bytes());
            data = rest;
        }
    }

    /// The command's `exit` with its final result, after what its streams still held back
    /// (an incomplete character at the end of the output, shown as the result shows it).
    pub fn exit(mut self, result: &CmdResult) {
        let (out, err) = (self.out.finish(), self.err.finish());
        self.data(false, &out);
        self.data(true, &err);
        self.journal.defer(Deferred::Exit {
            index: self.index,
            result: result.clone(),
        });
    }
}

/// A reader's place in a journal.
#[derive(Debug)]
pub struct Reader {
    journal: Arc<Journal>,
    /// Bytes read so far.
    at: u64,
    /// Deferred lines read (or being read) so far.
    item: usize,
    /// The deferred line being written out for this reader, chunk by chunk.
    expanding: Option<mpsc::Receiver<io::Result<Bytes>>>,
    at_line_end: bool,
    mark: watch::Receiver<Mark>,
}

impl Reader {
    /// The next bytes, as soon as there are any: whole lines, or a piece of one line longer
    /// than a read (its end comes with the next reads; a reader never holds a whole long
    /// line). None once the journal has ended and everything was read (or a file failed,
    /// which leaves the stream without `end`).
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(rx) = &mut self.expanding {
                match rx.recv().await {
                    Some(Ok(b)) => {
                        self.at_line_end = b.last() == Some(&b'\n');
                        return Some(b);
                    }
                    Some(Err(e)) => {
                        crate::log!(warn: "writing a run's event out failed: {e}");
                        self.expanding = None;
                        return None;
                    }
                    None => {
                        self.expanding = None;
                        self.item += 1;
                        continue;
                    }
                }
            }
            let mark = *self.mark.borrow_and_update();
            let next = (self.item < mark.items)
                .then(|| self.journal.item(self.item))
                .flatten();
            let until = match &next {
                Some((at, item)) if *at == self.at => {
                    self.expanding = Some(expand(self.journal.id.clone(), item.clone()));
                    continue;
                }
                Some((at, _)) => *at,
                None => mark.len,
            };
            if self.at < until {
                return match self.read(until) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        crate::log!(warn: "reading a run's events back failed: {e}");
                        None
                    }
                };
            }
            if mark.ended || self.mark.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Whether everything read so far ends with a whole line (always, since a read returns
    /// whole records' lines; kept for the readers that check).
    pub fn at_line_end(&self) -> bool {
        self.at_line_end
    }

    /// The lines of the records from `at` to `until`, up to [`READ`] bytes of records (and
    /// at least one record): output escaped into its `stdout` or `stderr` line now.
    fn read(&mut self, until: u64) -> io::Result<Bytes> {
        let (mut out, mut raw) = (Vec::new(), Vec::new());
        let mut taken = 0;
        while self.at < until && (taken == 0 || taken + HEAD <= READ) {
            raw.clear();
            self.journal.read_exact(self.at, HEAD, &mut raw)?;
            let (record, len) = Record::parse(&raw)
                .ok_or_else(|| io::Error::other("the events hold a record of no known kind"))?;
            raw.clear();
            self.journal
                .read_exact(self.at + HEAD as u64, len, &mut raw)?;
            match record {
                Record::Line => out.extend_from_slice(&raw),
                Record::Stdout(i) | Record::Stderr(i) => {
                    let text = String::from_utf8_lossy(&raw);
                    let stderr = matches!(record, Record::Stderr(_));
                    out.extend(data_line(&self.journal.id, i as usize, stderr, &text));
                }
            }
            self.at += (HEAD + len) as u64;
            taken += HEAD + len;
        }
        self.at_line_end = true;
        Ok(Bytes::from(out))
    }
}

/// Writes a deferred line out on a blocking thread (its outputs may lie in spill files), in
/// chunks of at most [`READ`] handed over one or two at a time: the reader's pace.
fn expand(id: String, item: Arc<Deferred>) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut w = Chunks {
            tx: &tx,
            buf: Vec::with_capacity(READ),
        };
        if let Err(e) = item.write(&id, &mut w).and_then(|()| w.send()) {
            // A reader that went away: nobody to tell.
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// Gathers writes into chunks for a reader.
struct Chunks<'a> {
    tx: &'a mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Chunks<'_> {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(READ)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reader went away"))
    }
}

impl Write for Chunks<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= READ {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The events of a run that has ended, rebuilt at once from its final view (as GET answers
/// it): `task`, per result `start`, its whole `stdout` and `stderr`, `exit`, then `error`
/// when it failed, and `end`.
pub fn replay(view: &Value) -> Vec<u8> {
    let id = view.get("id").and_then(Value::as_str).unwrap_or_default();
    let mut head = view.clone();
    // As the run's first line had it: its outcome is still to come.
    if let Some(o) = head.as_object_mut() {
        o.insert("results".into(), Value::Array(Vec::new()));
        o.insert("failed_command".into(), Value::Null);
        o.remove("error");
        o.remove("persist_error");
    }
    let mut out = line::<_, Value>(&Event::Task { task: &head });
    let empty = Vec::new();
    let results = view
        .get("results")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (index, result) in results.iter().enumerate() {
        out.extend(line::<Value, Value>(&Event::Start { id, index }));
        for (key, stderr) in [("stdout", false), ("stderr", true)] {
            let data = result.get(key).and_then(Value::as_str).unwrap_or_default();
            if data.is_empty() {
                continue;
            }
            out.extend(line::<Value, Value>(&if stderr {
                Event::Stderr { id, index, data }
            } else {
                Event::Stdout { id, index, data }
            }));
        }
        out.extend(line::<Value, _>(&Event::Exit { id, index, result }));
    }
    if let Some(error) = view.get("error").filter(|e| e.is_object()) {
        out.extend(line::<Value, Value>(&Event::Error { id, error }));
    }
    out.extend(line::<_, Value>(&Event::End { task: view }));
    out
}

/// Bytes to text across chunks, as `String::from_utf8_lossy` reads them whole: a character
/// cut at the end of a chunk waits for the next one; only bytes that are really invalid
/// become U+FFFD. Pure.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    /// The start of a character the last chunk ended inside (at most 3 bytes).
    held: Vec<u8>,
}

impl Utf8Carry {
    pub fn feed<'a>(&mut self, bytes: &'a [u8]) -> Cow<'a, str> {
        // The common case, a chunk of whole characters: no copy.
        if self.held.is_empty() {
            if let Ok(s) = std::str::from_utf8(bytes) {
                return Cow::Borrowed(s);
            }
        }
        let mut all = std::mem::take(&mut self.held);
        all.extend_from_slice(bytes);
        let mut text = String::with_capacity(all.len());
        let mut rest = &all[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    break;
                }
                Err(e) => {
                    let (ok, after) = rest.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(ok).expect("checked valid"));
                    match e.error_len() {
                        Some(n) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            self.held = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        Cow::Owned(text)
    }

    /// What is still held, as the end of the output: an incomplete character is invalid.
    pub fn finish(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        String::from_utf8_lossy(&held).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: [&[u8]; 6] = [
        b"plain ascii\n",
        "h\u{e9}llo \u{20ac} \u{1f600}!".as_bytes(),
        b"bad \xff\xfe in the middle \xc3",
        b"\xe2\x82 cut then ascii \xf0\x9f\x98",
        b"\xed\xa0\x80 surrogate, overlong \xc0\xaf",
        b"\xf0\x9f\x98\x80\xf0\x9f",
    ];

    fn decode(parts: &[&[u8]]) -> String {
        let mut c = Utf8Carry::default();
        let mut text = String::new();
        for p in parts {
            text.push_str(&c.feed(p));
            assert!(c.held.len() <= 3);
        }
        text + &c.finish()
    }

    #[test]
    fn every_split_decodes_as_the_whole_does() {
        for s in SAMPLES {
            let whole = String::from_utf8_lossy(s).into_owned();
            assert_eq!(decode(&[s]), whole);
            for i in 0..=s.len() {
                assert_eq!(decode(&[&s[..i], &s[i..]]), whole, "{s:?} at {i}");
                for j in i..=s.len() {
                    assert_eq!(
                        decode(&[&s[..i], &s[i..j], &s[j..]]),
                        whole,
                        "{s:?} at {i},{j}"
                    );
                }
            }
            // One byte at a time.
            let bytes: Vec<&[u8]> = s.chunks(1).collect();
            assert_eq!(decode(&bytes), whole);
        }
    }

    #[test]
    fn a_whole_character_is_never_held() {
        let mut c = Utf8Carry::default();
        assert_eq!(c.feed("\u{e9}".as_bytes()), "\u{e9}");
        assert_eq!(c.feed(b"\xe2\x82"), "");
        assert_eq!(c.feed(b"\xac"), "\u{20ac}");
        assert_eq!(c.finish(), "");
    }

    fn view(id: &str) -> TaskView {
        super::super::record::Record::new(id, None, "img".into(), false, 0, 1).view()
    }

    fn lines(all: &[u8]) -> Vec<Value> {
        all.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    async fn read_all(mut r: Reader) -> (Vec<u8>, usize) {
        let (mut all, mut reads) = (Vec::new(), 0);
        while let Some(b) = r.next().await {
            // Records of at most READ bytes; output escapes to at most 6 bytes a byte.
            assert!(b.len() <= 6 * READ + 256, "{}", b.len());
            all.extend_from_slice(&b);
            reads += 1;
        }
        (all, reads)
    }

    fn result(stdout: &str) -> CmdResult {
        CmdResult {
            cmd: "x".into(),
            exit_code: Some(0),
            stdout: stdout.into(),
            stderr: "".into(),
            duration_ms: 1,
            timed_out: false,
            truncated: false,
            oom_killed: false,
        }
    }

    /// Readers joining before, during and after the run all read the same lines, whether
    /// the journal stays in memory or spills; the live events rebuild as `replay` does.
    #[tokio::test]
    async fn every_reader_reads_every_line_in_order() {
        let dir = std::env::temp_dir().join(format!("lessl-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for spiller in [Spiller::memory_only(), Spiller::new(Some(dir.clone()), 100)] {
            let w = Journal::begin("t1", spiller, &view("t1"));
            let early = tokio::spawn(read_all(w.journal().reader()));
            let mut c = w.command(0);
            let mut printed = Vec::new();
            for i in 0..200 {
                let chunk = format!("line {i} \u{e9}\n").into_bytes();
                // Cut inside the two-byte character.
                let cut = chunk.len() - 2;
                c.stdout(&chunk[..cut]);
                c.stdout(&chunk[cut..]);
                printed.extend_from_slice(&chunk);
            }
            let middle = tokio::spawn(read_all(w.journal().reader()));
            c.exit(&result(&String::from_utf8_lossy(&printed)));
            let mut done = view("t1");
            done.results = vec![result(&String::from_utf8_lossy(&printed))];
            w.end(&done);
            let late = read_all(w.journal().reader()).await.0;
            let (early, reads) = early.await.unwrap();
            assert_eq!(early, late);
            assert_eq!(middle.await.unwrap().0, late);
            assert!(
                reads > 1 || late.len() < READ,
                "a reader takes lines as they come"
            );
            let events = lines(&late);
            assert_eq!(events[0]["event"], "task");
            assert_eq!(events[1]["event"], "start");
            let text: String = events
                .iter()
                .filter(|e| e["event"] == "stdout")
                .map(|e| e["data"].as_str().unwrap())
                .collect();
            assert_eq!(text.as_bytes(), printed);
            assert!(events
                .iter()
                .filter(|e| e["event"] == "stdout")
                .all(|e| e["id"] == "t1" && e["index"] == 0));
            let exit = &events[events.len() - 2];
            assert_eq!(exit["event"], "exit");
            assert_eq!(
                exit["result"]["stdout"].as_str().unwrap().as_bytes(),
                printed
            );
            assert_eq!(events.last().unwrap()["event"], "end");
            // Rebuilt from the final view: the same events, output in one chunk each.
            let rebuilt = lines(&replay(&serde_json::to_value(&done).unwrap()));
            let kinds = |e: &[Value]| -> Vec<String> {
                let mut k: Vec<String> = e.iter().map(|e| e["event"].to_string()).collect();
                k.dedup();
                k
            };
            assert_eq!(kinds(&rebuilt), kinds(&events));
            assert_eq!(rebuilt.last(), events.last());
            drop(w);
        }
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "the spill file goes with the journal"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_dropped_writer_ends_the_stream_and_a_failure_is_an_error_line() {
        let w = Journal::begin("t2", Spiller::memory_only(), &view("t2"));
        let r = w.journal().reader();
        drop(w);
        let (all, _) = read_all(r).await;
        assert_eq!(
            lines(&all).len(),
            1,
            "the task line, then the end of the stream"
        );

        let w = Journal::begin("t3", Spiller::memory_only(), &view("t3"));
        let mut failed = view("t3");
        failed.error = Some(RunFailure {
            code: "task.container_stopped".into(),
            message: "gone".into(),
        });
        w.end(&failed);
        let events = lines(&read_all(w.journal().reader()).await.0);
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["task", "error", "end"]);
        assert_eq!(events[1]["error"]["code"], "task.container_stopped");
        let rebuilt = lines(&replay(&serde_json::to_value(&failed).unwrap()));
        assert_eq!(rebuilt, events);
    }

    #[test]
    fn data_lines_are_what_serde_writes() {
        for data in [
            "",
            "y\ny\n",
            "\"q\" \\ \u{1} \t é \u{FFFD} 💡",
            "\r\n\u{7f}",
        ] {
            for stderr in [false, true] {
                let (id, index) = ("a\"b", 7);
                let event = if stderr {
                    Event::Stderr { id, index, data }
                } else {
                    Event::Stdout { id, index, data }
                };
                assert_eq!(
                    data_line(id, index, stderr, data),
                    line::<TaskView, CmdResult>(&event),
                    "{data:?}"
                );
            }
        }
    }

    #[test]
    fn long_output_is_stored_raw_in_pieces_cut_between_characters_and_read_as_whole_lines() {
        let w = Journal::begin("t4", Spiller::memory_only(), &view("t4"));
        let mut c = w.command(0);
        // A two-byte character straddles every MAX_DATA boundary of the first chunk.
        let big = format!("x{}", "\u{e9}".repeat(3 * MAX_DATA / 2));
        c.stdout(big.as_bytes());
        c.stdout(b"y\n");
        let stored = w.journal().mark.borrow().len as usize;
        assert!(
            stored < big.len() + 6 * HEAD + 512,
            "output is kept raw, not escaped: {stored} bytes for {}",
            big.len()
        );
        let mut r = w.journal().reader();
        let len = r.mark.borrow().len;
        let mut pieces = Vec::new();
        while r.at < len {
            let got = r.read(len).unwrap();
            assert!(r.at_line_end());
            assert_eq!(got.last(), Some(&b'\n'));
            pieces.extend(lines(&got));
        }
        assert_eq!(pieces[0]["event"], "task");
        assert_eq!(pieces[1]["event"], "start");
        let data: Vec<&str> = pieces[2..]
            .iter()
            .map(|e| e["data"].as_str().unwrap())
            .collect();
        assert!(data.iter().all(|d| d.len() <= MAX_DATA));
        assert!(data.len() >= 4, "{} pieces", data.len());
        assert_eq!(data.concat(), format!("{big}y\n"));
    }
}
