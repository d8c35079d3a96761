//! Plain (uncompressed) tar archives for Docker's archive API: builds them in memory, re-roots user archives under a directory, and reads archives as a stream ([`reader`]); does no I/O and must never let an entry escape its destination.

mod builder;
pub mod reader;

pub use builder::*;
#[cfg(test)]
use builder::{put_octal, Header};

use std::collections::HashMap;
use std::fmt;

const BLOCK: usize = 512;
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
/// Linux's PATH_MAX: a longer name could not be created on extraction anyway, and the cap
/// keeps per-entry work bounded when a hostile archive carries huge names.
const MAX_PATH: usize = 4096;
/// Largest value of an 11-digit octal field (size, mtime): 8 GiB - 1.
const MAX_OCTAL_11: u64 = 0o77_777_777_777;
/// Error messages echo paths back to API clients; a hostile archive must not make them huge.
const SHOWN_PATH_LEN: usize = 256;

const USTAR_MAGIC: &[u8; 8] = b"ustar\x0000";
const GNU_MAGIC: &[u8; 8] = b"ustar  \x00";
const GNU_LONG_NAME_ENTRY: &[u8] = b"././@LongLink";

const TYPE_FILE: u8 = b'0';
const TYPE_OLD_FILE: u8 = 0;
const TYPE_HARDLINK: u8 = b'1';
const TYPE_SYMLINK: u8 = b'2';
const TYPE_DIR: u8 = b'5';
const TYPE_GNU_LONG_NAME: u8 = b'L';
const TYPE_GNU_LONG_LINK: u8 = b'K';
const TYPE_PAX: u8 = b'x';
const TYPE_PAX_GLOBAL: u8 = b'g';

/// Why an archive could not be built or re-rooted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarError {
    /// Validating an entry name or link target: it is not a safe relative path.
    BadPath { path: String, reason: &'static str },
    /// Writing an entry whose data does not fit the ustar size field (8 GiB).
    TooLarge { path: String, size: u64 },
    /// Reading a header of the user archive (checksum, number field, extended record).
    ReadHeader { offset: usize, reason: &'static str },
    /// Copying an entry type we do not carry over (device, fifo, sparse file, ...).
    UnsupportedEntry { path: String, kind: u8 },
    /// Reading the user archive: it ends inside an entry or before its end-of-archive block.
    Truncated { offset: usize },
}

impl fmt::Display for TarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadPath { path, reason } => write!(f, "bad tar path {path:?}: {reason}"),
            Self::TooLarge { path, size } => write!(
                f,
                "tar entry {path:?} is too large ({size} bytes, at most {MAX_OCTAL_11})"
            ),
            Self::ReadHeader { offset, reason } => {
                write!(f, "bad tar header at byte {offset}: {reason}")
            }
            Self::UnsupportedEntry { path, kind } => write!(
                f,
                "unsupported tar entry {path:?} of type '{}'",
                kind.escape_ascii()
            ),
            Self::Truncated { offset } => write!(f, "tar archive truncated at byte {offset}"),
        }
    }
}

impl std::error::Error for TarError {}

fn shown(path: &str) -> String {
    if path.len() <= SHOWN_PATH_LEN {
        return path.to_owned();
    }
    let mut end = SHOWN_PATH_LEN;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &path[..end])
}

fn bad_path(path: &str, reason: &'static str) -> TarError {
    TarError::BadPath {
        path: shown(path),
        reason,
    }
}

/// Rules for every name we write: relative, '/'-separated, no empty/'.'/'..' component, no NUL.
fn check_path(path: &str) -> Result<(), TarError> {
    let reason = if path.is_empty() {
        "empty path"
    } else if path.len() > MAX_PATH {
        "longer than 4096 bytes"
    } else if path.contains('\0') {
        "contains NUL"
    } else if path.starts_with('/') {
        "absolute path"
    } else if path.split('/').any(str::is_empty) {
        "empty component"
    } else if path.split('/').any(|part| part == ".") {
        "'.' component"
    } else if path.split('/').any(|part| part == "..") {
        "'..' component"
    } else {
        return Ok(());
    };
    Err(bad_path(path, reason))
}

fn check_symlink_target(path: &str, target: &str) -> Result<(), TarError> {
    let reason = if target.is_empty() {
        "empty symlink target"
    } else if target.len() > MAX_PATH {
        "symlink target longer than 4096 bytes"
    } else if target.contains('\0') {
        "symlink target contains NUL"
    } else {
        return Ok(());
    };
    Err(bad_path(path, reason))
}

fn data_size(path: &str, len: usize) -> Result<u64, TarError> {
    let size = u64::try_from(len).unwrap_or(u64::MAX);
    if size > MAX_OCTAL_11 {
        return Err(TarError::TooLarge {
            path: shown(path),
            size,
        });
    }
    Ok(size)
}

fn padding(len: usize) -> usize {
    (BLOCK - len % BLOCK) % BLOCK
}

/// Splits a long name into ustar (name, prefix) fields, or None when no '/' allows it.
fn split_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= NAME_LEN {
        return Some((name, &[]));
    }
    // The first '/' that leaves a short enough tail gives the shortest prefix.
    let first_fit = name.len() - NAME_LEN - 1;
    let slash = first_fit + name[first_fit..].iter().position(|&b| b == b'/')?;
    if slash > PREFIX_LEN || slash + 1 == name.len() {
        return None;
    }
    Some((&name[slash + 1..], &name[..slash]))
}

/// Appends every entry of the user `archive` to `out`, with `prefix` (a relative path, same
/// rules as [`TarBuilder::file`]) prepended to each name and to hard-link targets. An empty
/// `prefix` is the root: entries keep their own (cleaned) names.
///
/// Names may start with "./" (stripped; a bare "." or "./" root directory is skipped); absolute
/// names, names with '..' components and names that pass through a symlink of the same archive
/// are refused. Regular files, hard links, symlinks and directories are copied, with GNU long
/// name/link records and pax `path`/`linkpath`/`size` records honoured; anything else is an
/// error naming the entry. Modes are kept (masked to 0o7777); owners are not. On error `out`
/// may hold part of the archive and must be discarded.
pub fn rebase(archive: &[u8], prefix: &str, out: &mut TarBuilder) -> Result<(), TarError> {
    if !prefix.is_empty() {
        check_path(prefix)?;
    }
    let mut pos = 0usize;
    let mut pending = Pending::default();
    let mut links = LinkTree::new();
    loop {
        let block = pos
            .checked_add(BLOCK)
            .and_then(|end| archive.get(pos..end))
            .ok_or(TarError::Truncated { offset: pos })?;
        if block.iter().all(|&b| b == 0) {
            if pending.is_empty() {
                return Ok(());
            }
            return Err(TarError::ReadHeader {
                offset: pos,
                reason: "extended header not followed by an entry",
            });
        }
        let header = RawHeader::parse(block, pos)?;
        let is_meta = matches!(
            header.typeflag,
            TYPE_GNU_LONG_NAME | TYPE_GNU_LONG_LINK | TYPE_PAX | TYPE_PAX_GLOBAL
        );
        let size = if is_meta {
            header.size
        } else {
            pending.size.take().unwrap_or(header.size)
        };
        let data_start = pos + BLOCK;
        let data_end = usize::try_from(size)
            .ok()
            .and_then(|size| data_start.checked_add(size))
            .filter(|&end| end <= archive.len())
            .ok_or(TarError::Truncated { offset: data_start })?;
        let data = &archive[data_start..data_end];
        let header_at = pos;
        pos = data_end
            .checked_add(padding(data.len()))
            .ok_or(TarError::Truncated { offset: data_end })?;
        match header.typeflag {
            TYPE_GNU_LONG_NAME => pending.long_name = Some(until_nul(data).to_vec()),
            TYPE_GNU_LONG_LINK => pending.long_link = Some(until_nul(data).to_vec()),
            TYPE_PAX => pending.read_pax(data, header_at)?,
            TYPE_PAX_GLOBAL => {}
            _ => {
                let meta = std::mem::take(&mut pending);
                let entry = Entry {
                    name: meta.pax_path.or(meta.long_name).unwrap_or(header.name),
                    link: meta.pax_link.or(meta.long_link).unwrap_or(header.link),
                    typeflag: header.typeflag,
                    mode: header.mode,
                    data,
                };
                entry.copy_into(prefix, out, &mut links, header_at)?;
            }
        }
    }
}

/// The cleaned names of a user archive's entries (what [`rebase`] at the root would write),
/// under the same checks as [`rebase`].
pub fn entry_names(archive: &[u8]) -> Result<Vec<String>, TarError> {
    let mut out = TarBuilder::new(0);
    rebase(archive, "", &mut out)?;
    Ok(out.names)
}

struct RawHeader {
    name: Vec<u8>,
    link: Vec<u8>,
    mode: u32,
    size: u64,
    typeflag: u8,
}

impl RawHeader {
    fn parse(block: &[u8], offset: usize) -> Result<Self, TarError> {
        let fail = |reason| TarError::ReadHeader { offset, reason };
        verify_checksum(block).map_err(fail)?;
        let mode = parse_number(&block[100..108]).ok_or(fail("bad mode field"))?;
        let size = parse_number(&block[124..136]).ok_or(fail("bad size field"))?;
        let mut name = until_nul(&block[0..100]).to_vec();
        // GNU headers reuse these bytes for times, so only true ustar has a prefix.
        if &block[257..263] == b"ustar\0" {
            let prefix = until_nul(&block[345..500]);
            if !prefix.is_empty() {
                let mut full = prefix.to_vec();
                full.push(b'/');
                full.extend_from_slice(&name);
                name = full;
            }
        }
        Ok(Self {
            name,
            link: until_nul(&block[157..257]).to_vec(),
            // Type bits some writers put in the mode are carried by the typeflag instead.
            mode: u32::try_from(mode & 0o7777).unwrap_or(0),
            size,
            typeflag: block[156],
        })
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Accepts the unsigned sum and, like GNU tar, the signed sum some old writers produced.
fn verify_checksum(block: &[u8]) -> Result<(), &'static str> {
    let stored = parse_number(&block[148..156]).ok_or("bad checksum field")?;
    // The checksum field itself counts as eight spaces.
    let (mut unsigned, mut high) = (8 * u64::from(b' '), 0u64);
    for &byte in block[..148].iter().chain(&block[156..]) {
        unsigned += u64::from(byte);
        high += u64::from(byte >> 7);
    }
    // Summed as signed chars, every byte >= 0x80 counts 256 less.
    let signed = i128::from(unsigned) - 256 * i128::from(high);
    if stored == unsigned || i128::from(stored) == signed {
        Ok(())
    } else {
        Err("checksum mismatch")
    }
}

/// Octal (space/NUL padded) or GNU base-256 for big values; None on anything else.
fn parse_number(field: &[u8]) -> Option<u64> {
    if let Some((&first, rest)) = field.split_first() {
        if first & 0x80 != 0 {
            // 0xff marks a negative number, meaningless for the fields we read.
            if first != 0x80 {
                return None;
            }
            return rest.iter().try_fold(0u64, |acc, &byte| {
                acc.checked_mul(256)?.checked_add(u64::from(byte))
            });
        }
    }
    let mut value = 0u64;
    let mut seen_digit = false;
    let mut ended = false;
    for &byte in field {
        match byte {
            b'0'..=b'7' if !ended => {
                value = value.checked_mul(8)?.checked_add(u64::from(byte - b'0'))?;
                seen_digit = true;
            }
            b' ' | 0 => ended = seen_digit,
            _ => return None,
        }
    }
    Some(value)
}

/// Extended-header values waiting for the entry they apply to.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    size: Option<u64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none()
            && self.long_link.is_none()
            && self.pax_path.is_none()
            && self.pax_link.is_none()
            && self.size.is_none()
    }

    /// Pax records are `"<len> <key>=<value>\n"`, `<len>` counting the whole record.
    fn read_pax(&mut self, mut body: &[u8], offset: usize) -> Result<(), TarError> {
        let fail = |reason| TarError::ReadHeader { offset, reason };
        // Some writers pad the body with NULs.
        while !body.iter().all(|&b| b == 0) {
            let space = body
                .iter()
                .position(|&b| b == b' ')
                .ok_or(fail("pax record without length"))?;
            let len = parse_decimal(&body[..space]).ok_or(fail("bad pax record length"))?;
            if len <= space + 1 || len > body.len() || body[len - 1] != b'\n' {
                return Err(fail("bad pax record length"));
            }
            let record = &body[space + 1..len - 1];
            body = &body[len..];
            let eq = record
                .iter()
                .position(|&b| b == b'=')
                .ok_or(fail("pax record without '='"))?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            // An empty value cancels the record, falling back to the header field.
            let value_or_none = (!value.is_empty()).then(|| value.to_vec());
            match key {
                b"path" => self.pax_path = value_or_none,
                b"linkpath" => self.pax_link = value_or_none,
                // Needed to find the next header when the real size exceeds the octal field.
                b"size" if value.is_empty() => self.size = None,
                b"size" => {
                    let size = parse_decimal(value).and_then(|n| u64::try_from(n).ok());
                    self.size = Some(size.ok_or(fail("bad pax size"))?);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn parse_decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |acc, &byte| {
        if !byte.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(usize::from(byte - b'0'))
    })
}

/// A member of the user archive with its extended headers applied.
struct Entry<'a> {
    name: Vec<u8>,
    link: Vec<u8>,
    typeflag: u8,
    mode: u32,
    data: &'a [u8],
}

impl Entry<'_> {
    fn copy_into(
        self,
        prefix: &str,
        out: &mut TarBuilder,
        links: &mut LinkTree,
        offset: usize,
    ) -> Result<(), TarError> {
        let is_dir = self.typeflag == TYPE_DIR
            || (self.typeflag == TYPE_OLD_FILE && self.name.last() == Some(&b'/'));
        match self.typeflag {
            TYPE_FILE | TYPE_OLD_FILE | TYPE_HARDLINK | TYPE_SYMLINK | TYPE_DIR => {}
            kind => {
                return Err(TarError::UnsupportedEntry {
                    path: shown(&String::from_utf8_lossy(&self.name)),
                    kind,
                })
            }
        }
        let header_only = is_dir || matches!(self.typeflag, TYPE_HARDLINK | TYPE_SYMLINK);
        // Readers disagree on whether such data is skipped, so its meaning is ambiguous.
        if header_only && !self.data.is_empty() {
            return Err(TarError::ReadHeader {
                offset,
                reason: "link or directory entry carries data",
            });
        }
        let rel = member_path(&self.name)?;
        if rel.is_empty() {
            if is_dir {
                return Ok(());
            }
            return Err(bad_path(".", "names the archive root"));
        }
        if links.crosses_link(&rel) {
            return Err(bad_path(&rel, "goes through a symlink of the same archive"));
        }
        let full = under(prefix, &rel);
        if is_dir {
            return out.dir(&full, self.mode);
        }
        match self.typeflag {
            TYPE_SYMLINK => {
                let target = std::str::from_utf8(&self.link)
                    .map_err(|_| bad_path(&full, "symlink target is not UTF-8"))?;
                out.symlink(&full, target)?;
                links.insert(&rel);
                Ok(())
            }
            TYPE_HARDLINK => {
                let target = member_path(&self.link)?;
                if target.is_empty() {
                    return Err(bad_path(&full, "hard link to the archive root"));
                }
                if links.crosses_link(&target) {
                    return Err(bad_path(
                        &target,
                        "goes through a symlink of the same archive",
                    ));
                }
                out.hardlink(&full, &under(prefix, &target))
            }
            _ => out.file(&full, self.mode, self.data),
        }
    }
}

fn under(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() {
        rel.to_owned()
    } else {
        format!("{prefix}/{rel}")
    }
}

/// A member name as a clean relative path: empty and '.' components dropped (which strips
/// "./" and trailing '/'), '..' and absolute names refused. The archive root gives "".
fn member_path(raw: &[u8]) -> Result<String, TarError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| bad_path(&String::from_utf8_lossy(raw), "not UTF-8"))?;
    if text.starts_with('/') {
        return Err(bad_path(text, "absolute path"));
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad_path(text, "'..' component")),
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

/// Symlinks created so far, as a tree of path components so a lookup costs one hash per
/// component however deep or long the name is.
struct LinkTree {
    nodes: Vec<LinkNode>,
}

#[derive(Default)]
struct LinkNode {
    children: HashMap<String, usize>,
    is_link: bool,
}

impl LinkTree {
    fn new() -> Self {
        Self {
            nodes: vec![LinkNode::default()],
        }
    }

    fn insert(&mut self, path: &str) {
        let mut at = 0;
        for part in path.split('/') {
            at = match self.nodes[at].children.get(part) {
                Some(&child) => child,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(LinkNode::default());
                    self.nodes[at].children.insert(part.to_owned(), child);
                    child
                }
            };
        }
        self.nodes[at].is_link = true;
    }

    /// Whether a proper ancestor of `path` is a symlink: extracting it would write wherever
    /// that link points. The path itself may be a link, which extraction replaces.
    fn crosses_link(&self, path: &str) -> bool {
        let mut at = 0;
        let mut parts = path.split('/').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                return false;
            }
            match self.nodes[at].children.get(part) {
                Some(&child) => at = child,
                None => return false,
            }
            if self.nodes[at].is_link {
                return true;
            }
        }
        false
    }
}

/// A hard-link header as any writer may produce it, forward links included (which the
/// builder refuses), for tests of code that reads archives.
#[cfg(test)]
pub(crate) fn raw_hardlink_for_tests(name: &str, target: &str) -> Vec<u8> {
    Header {
        name: name.as_bytes(),
        prefix: &[],
        mode: 0o644,
        size: 0,
        mtime: 0,
        typeflag: TYPE_HARDLINK,
        link: target.as_bytes(),
        magic: USTAR_MAGIC,
    }
    .encode()
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const TAR: &str = "/usr/bin/tar";
    /// 2023-11-14 22:13:20 UTC
    const MTIME: u64 = 1_700_000_000;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("lessl-tar-test-{}-{n}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn run_tar(args: &[&str]) -> String {
        let out = Command::new(TAR).args(args).output().expect("run tar");
        assert!(
            out.status.success(),
            "tar {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("tar output is UTF-8")
    }

    fn write_archive(dir: &TempDir, archive: &[u8]) -> String {
        let file = dir.path().join("archive.tar");
        fs::write(&file, archive).expect("write archive");
        file.to_str().expect("UTF-8 temp path").to_owned()
    }

    /// `tar -tv` lines as (permissions, owner, size, date time, name part).
    fn list_verbose(dir: &TempDir, archive: &[u8]) -> Vec<(String, String, String, String)> {
        let file = write_archive(dir, archive);
        run_tar(&["--utc", "-tvf", &file])
            .lines()
            .map(|line| {
                let mut rest = line;
                let mut fields = Vec::new();
                for _ in 0..5 {
                    rest = rest.trim_start();
                    let end = rest.find(' ').expect("tar -tv field");
                    fields.push(&rest[..end]);
                    rest = &rest[end..];
                }
                (
                    fields[0].to_owned(),
                    format!("{} {}", fields[1], fields[2]),
                    format!("{} {}", fields[3], fields[4]),
                    rest.trim_start().to_owned(),
                )
            })
            .collect()
    }

    fn list_names(dir: &TempDir, archive: &[u8]) -> Vec<String> {
        let file = write_archive(dir, archive);
        run_tar(&["-tf", &file])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn extract(dir: &TempDir, archive: &[u8]) -> PathBuf {
        let file = write_archive(dir, archive);
        let root = dir.path().join("out");
        fs::create_dir_all(&root).expect("create extract dir");
        run_tar(&["-xf", &file, "-C", root.to_str().expect("UTF-8 path")]);
        root
    }

    /// A path of `len` bytes made of 49-byte components, so ustar splits are possible.
    fn long_path(len: usize, last: &str) -> String {
        let mut path = String::new();
        let mut n = 0;
        while path.len() + 49 + last.len() <= len {
            path.push_str(&format!("d{n:02}{}/", "x".repeat(45)));
            n += 1;
        }
        match len - path.len() - last.len() {
            0 => {}
            1 => path.push('z'),
            filler => {
                path.push_str(&"y".repeat(filler - 1));
                path.push('/');
            }
        }
        path.push_str(last);
        path
    }

    fn pax_record(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let len = (1..=4)
            .map(|digits| body.len() + digits)
            .find(|total| total.to_string().len() + body.len() == *total)
            .expect("pax record length");
        format!("{len}{body}").into_bytes()
    }

    /// A raw header block with a valid checksum and an arbitrary (unchecked) name.
    fn raw_entry(name: &[u8], typeflag: u8, link: &[u8], data: &[u8]) -> Vec<u8> {
        let header = Header {
            name,
            prefix: &[],
            mode: 0o644,
            size: data.len() as u64,
            mtime: MTIME,
            typeflag,
            link,
            magic: USTAR_MAGIC,
        };
        let mut out = header.encode().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len() + padding(data.len()), 0);
        out
    }

    /// Recomputes a hand-edited header's checksum so the edit itself gets parsed.
    fn reseal(block: &mut [u8]) {
        block[148..156].fill(b' ');
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        put_octal(&mut block[148..155], sum);
    }

    fn end_blocks(mut archive: Vec<u8>) -> Vec<u8> {
        archive.resize(archive.len() + 2 * BLOCK, 0);
        archive
    }

    fn rebase_err(archive: &[u8]) -> TarError {
        let mut out = TarBuilder::new(MTIME);
        rebase(archive, "opt/x", &mut out).expect_err("archive must be refused")
    }

    #[test]
    fn builder_listing_shows_names_modes_sizes_and_times() {
        let dir = TempDir::new("listing");
        let mut tar = TarBuilder::new(MTIME);
        assert!(tar.is_empty());
        tar.file("hello.txt", 0o644, b"hello world").unwrap();
        tar.dir("sub", 0o755).unwrap();
        tar.file("sub/run.sh", 0o100_4755, b"#!/bin/sh\n").unwrap();
        tar.symlink("link", "hello.txt").unwrap();
        tar.hardlink("hard", "hello.txt").unwrap();
        assert_eq!(tar.len(), 7 * BLOCK, "5 headers + 2 data blocks");
        let archive = tar.finish();
        assert_eq!(archive.len(), 9 * BLOCK);

        let when = "2023-11-14 22:13";
        let row = |perm: &str, size: &str, name: &str| {
            (
                perm.to_owned(),
                format!("root/root {size}"),
                when.to_owned(),
                name.to_owned(),
            )
        };
        assert_eq!(
            list_verbose(&dir, &archive),
            vec![
                row("-rw-r--r--", "11", "hello.txt"),
                row("drwxr-xr-x", "0", "sub/"),
                row("-rwsr-xr-x", "10", "sub/run.sh"),
                row("lrwxrwxrwx", "0", "link -> hello.txt"),
                row("hrw-r--r--", "0", "hard link to hello.txt"),
            ]
        );
    }

    #[test]
    fn builder_long_names_extract_byte_for_byte() {
        let dir = TempDir::new("long");
        let path150 = long_path(150, "f150.txt");
        let path300 = long_path(300, "f300.txt");
        let single = "s".repeat(120);
        let long_dir = long_path(180, "dir");
        let long_target = format!("../{}", "t".repeat(150));
        assert_eq!((path150.len(), path300.len()), (150, 300));

        // 150 bytes fit the ustar prefix/name split: one header, one data block.
        let mut only150 = TarBuilder::new(MTIME);
        only150.file(&path150, 0o644, b"x").unwrap();
        assert_eq!(only150.len(), 2 * BLOCK);

        let data300: Vec<u8> = (0..2000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut tar = TarBuilder::new(MTIME);
        tar.file(&path150, 0o600, b"one fifty").unwrap();
        tar.file(&path300, 0o644, &data300).unwrap();
        tar.file(&single, 0o644, b"").unwrap();
        tar.dir(&long_dir, 0o750).unwrap();
        tar.symlink("short", &long_target).unwrap();
        tar.symlink(&path300.replace("f300.txt", "l300"), &long_target)
            .unwrap();
        tar.hardlink("hard", &path300).unwrap();
        let archive = tar.finish();

        let names = list_names(&dir, &archive);
        assert_eq!(
            names,
            vec![
                path150.clone(),
                path300.clone(),
                single.clone(),
                format!("{long_dir}/"),
                "short".to_owned(),
                path300.replace("f300.txt", "l300"),
                "hard".to_owned(),
            ]
        );
        let root = extract(&dir, &archive);
        assert_eq!(fs::read(root.join(&path150)).unwrap(), b"one fifty");
        assert_eq!(fs::read(root.join(&path300)).unwrap(), data300);
        assert_eq!(fs::read(root.join(&single)).unwrap(), b"");
        assert!(root.join(&long_dir).is_dir());
        for link in ["short".to_owned(), path300.replace("f300.txt", "l300")] {
            let target = fs::read_link(root.join(link)).unwrap();
            assert_eq!(target.to_str(), Some(long_target.as_str()));
        }
        let original = fs::metadata(root.join(&path300)).unwrap();
        let hard = fs::metadata(root.join("hard")).unwrap();
        assert_eq!(original.ino(), hard.ino());
    }

    #[test]
    fn builder_refuses_bad_paths_without_writing() {
        let mut tar = TarBuilder::new(MTIME);
        for path in [
            "", "a//b", "./a", "a/..", "a\0b", "/abs", "a/", "..", "a/./b",
        ] {
            assert!(
                matches!(tar.file(path, 0o644, b"x"), Err(TarError::BadPath { .. })),
                "file {path:?}"
            );
            assert!(tar.dir(path, 0o755).is_err(), "dir {path:?}");
            assert!(tar.symlink(path, "t").is_err(), "symlink {path:?}");
            assert!(tar.hardlink(path, "t").is_err(), "hardlink {path:?}");
            assert!(
                tar.hardlink("ok", path).is_err(),
                "hardlink target {path:?}"
            );
        }
        assert!(tar.symlink("ok", "a\0b").is_err());
        assert!(tar.symlink("ok", "").is_err());
        assert!(tar.file(&"a".repeat(MAX_PATH + 1), 0o644, b"").is_err());
        assert!(tar.is_empty(), "refused entries write nothing");
        assert_eq!(
            tar.file("a//b", 0o644, b""),
            Err(TarError::BadPath {
                path: "a//b".to_owned(),
                reason: "empty component"
            })
        );
        // Symlink targets are free text otherwise.
        tar.symlink("ok", "/abs/../x").unwrap();
        assert!(!tar.is_empty());
    }

    #[test]
    fn oversized_data_is_refused_and_mtime_clamped() {
        assert_eq!(data_size("f", 5), Ok(5));
        let too_big = usize::try_from(MAX_OCTAL_11 + 1).unwrap();
        assert_eq!(
            data_size("f", too_big),
            Err(TarError::TooLarge {
                path: "f".to_owned(),
                size: MAX_OCTAL_11 + 1
            })
        );
        let mut tar = TarBuilder::new(u64::MAX);
        tar.file("f", 0o644, b"").unwrap();
        let archive = tar.finish();
        assert_eq!(parse_number(&archive[136..148]), Some(MAX_OCTAL_11));
    }

    fn make_source_tree(root: &Path, long_dir: &str, long_file: &str) {
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(root.join(long_dir)).unwrap();
        fs::write(root.join("hello.txt"), b"hello\n").unwrap();
        fs::write(root.join("sub/inner.bin"), [0u8, 1, 2, 255, 10]).unwrap();
        let restricted = fs::Permissions::from_mode(0o640);
        fs::set_permissions(root.join("sub/inner.bin"), restricted).unwrap();
        fs::write(root.join(long_file), b"long single component\n").unwrap();
        fs::write(root.join(long_dir).join("deep.txt"), b"deep\n").unwrap();
        std::os::unix::fs::symlink("hello.txt", root.join("link")).unwrap();
        fs::hard_link(root.join("hello.txt"), root.join("hard")).unwrap();
    }

    fn rebase_system_tar(format: &str) {
        let dir = TempDir::new(format);
        let src = dir.path().join("src");
        let long_dir = format!("{}/{}", "a".repeat(60), "b".repeat(60));
        let long_file = "c".repeat(120);
        make_source_tree(&src, &long_dir, &long_file);
        let user_tar = dir.path().join("user.tar");
        run_tar(&[
            &format!("--format={format}"),
            "--owner=1234",
            "--group=5678",
            "--numeric-owner",
            "-cf",
            user_tar.to_str().unwrap(),
            "-C",
            src.to_str().unwrap(),
            ".",
        ]);
        let user = fs::read(&user_tar).unwrap();
        assert!(list_names(&dir, &user).iter().all(|n| n.starts_with("./")));

        let mut out = TarBuilder::new(MTIME);
        out.file("before.txt", 0o644, b"mine").unwrap();
        rebase(&user, "opt/x", &mut out).unwrap();
        let archive = out.finish();

        let listed = list_verbose(&dir, &archive);
        let mut names: Vec<&str> = listed.iter().map(|row| row.3.as_str()).collect();
        names.sort_unstable();
        let hard_row = names
            .iter()
            .find(|n| n.contains(" link to "))
            .expect("one hard link")
            .to_string();
        let mut expected = vec![
            "before.txt".to_owned(),
            format!("opt/x/{}/", "a".repeat(60)),
            format!("opt/x/{long_dir}/"),
            format!("opt/x/{long_dir}/deep.txt"),
            format!("opt/x/{long_file}"),
            "opt/x/link -> hello.txt".to_owned(),
            "opt/x/sub/".to_owned(),
            "opt/x/sub/inner.bin".to_owned(),
            hard_row.clone(),
        ];
        // Whichever of the two names tar met first holds the data.
        let (file, linked) = if hard_row.starts_with("opt/x/hard ") {
            ("hello.txt", "opt/x/hard link to opt/x/hello.txt")
        } else {
            ("hard", "opt/x/hello.txt link to opt/x/hard")
        };
        assert_eq!(hard_row, linked);
        expected.push(format!("opt/x/{file}"));
        expected.sort_unstable();
        assert_eq!(names, expected);
        for (perm, owner, when, name) in &listed {
            assert!(owner.starts_with("root/root "), "{name}: {owner}");
            assert_eq!(when, "2023-11-14 22:13", "{name}");
            if name.ends_with("inner.bin") {
                assert_eq!(
                    (perm.as_str(), owner.as_str()),
                    ("-rw-r-----", "root/root 5")
                );
            }
        }

        let root = extract(&dir, &archive);
        let x = root.join("opt/x");
        assert_eq!(fs::read(root.join("before.txt")).unwrap(), b"mine");
        assert_eq!(fs::read(x.join("hello.txt")).unwrap(), b"hello\n");
        assert_eq!(fs::read(x.join("hard")).unwrap(), b"hello\n");
        assert_eq!(
            fs::metadata(x.join("hard")).unwrap().ino(),
            fs::metadata(x.join("hello.txt")).unwrap().ino()
        );
        assert_eq!(
            fs::read(x.join("sub/inner.bin")).unwrap(),
            [0u8, 1, 2, 255, 10]
        );
        assert_eq!(
            fs::read(x.join(&long_file)).unwrap(),
            b"long single component\n"
        );
        assert_eq!(
            fs::read(x.join(&long_dir).join("deep.txt")).unwrap(),
            b"deep\n"
        );
        assert_eq!(
            fs::read_link(x.join("link")).unwrap().to_str(),
            Some("hello.txt")
        );
    }

    #[test]
    fn rebase_gnu_format_archive_from_system_tar() {
        rebase_system_tar("gnu");
    }

    #[test]
    fn rebase_pax_format_archive_from_system_tar() {
        rebase_system_tar("pax");
    }

    #[test]
    fn rebase_with_empty_prefix_keeps_names_at_the_root() {
        let mut archive = raw_entry(b"./", TYPE_DIR, b"", b"");
        archive.extend(raw_entry(b"./etc/app.conf", TYPE_FILE, b"", b"k=v\n"));
        archive.extend(raw_entry(
            b"./etc/same.conf",
            TYPE_HARDLINK,
            b"./etc/app.conf",
            b"",
        ));
        let mut out = TarBuilder::new(MTIME);
        rebase(&end_blocks(archive), "", &mut out).unwrap();
        let dir = TempDir::new("root");
        let rebased = out.finish();
        assert_eq!(
            list_names(&dir, &rebased),
            ["etc/app.conf", "etc/same.conf"]
        );
        let root = extract(&dir, &rebased);
        assert_eq!(fs::read(root.join("etc/same.conf")).unwrap(), b"k=v\n");
        let escaping = end_blocks(raw_entry(b"../x", TYPE_FILE, b"", b""));
        let mut out = TarBuilder::new(MTIME);
        assert!(rebase(&escaping, "", &mut out).is_err());
    }

    #[test]
    fn rebase_refuses_escaping_names() {
        for name in [
            &b"../evil"[..],
            b"/etc/passwd",
            b"a/../../b",
            b"a/..",
            b"\xff",
        ] {
            let archive = end_blocks(raw_entry(name, TYPE_FILE, b"", b"x"));
            assert!(
                matches!(rebase_err(&archive), TarError::BadPath { .. }),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        let hardlink_out = end_blocks(raw_entry(b"h", TYPE_HARDLINK, b"../../etc/shadow", b""));
        assert!(matches!(
            rebase_err(&hardlink_out),
            TarError::BadPath { .. }
        ));
        // A long name record is held to the same rules as the header name.
        let mut gnu = raw_entry(GNU_LONG_NAME_ENTRY, TYPE_GNU_LONG_NAME, b"", b"../evil\0");
        gnu.extend(raw_entry(b"innocent", TYPE_FILE, b"", b"x"));
        assert_eq!(
            rebase_err(&end_blocks(gnu)),
            TarError::BadPath {
                path: "../evil".to_owned(),
                reason: "'..' component"
            }
        );
        let mut out = TarBuilder::new(MTIME);
        let fine = end_blocks(raw_entry(b"ok", TYPE_FILE, b"", b"x"));
        assert!(rebase(&fine, "../x", &mut out).is_err(), "bad prefix");
        assert!(rebase(&fine, "/x", &mut out).is_err(), "absolute prefix");
        assert!(out.is_empty());
    }

    #[test]
    fn rebase_refuses_writing_through_an_archive_symlink() {
        let mut archive = raw_entry(b"d", TYPE_SYMLINK, b"/etc", b"");
        archive.extend(raw_entry(
            b"d/passwd",
            TYPE_FILE,
            b"",
            b"root::0:0::/:/bin/sh\n",
        ));
        assert_eq!(
            rebase_err(&end_blocks(archive)),
            TarError::BadPath {
                path: "d/passwd".to_owned(),
                reason: "goes through a symlink of the same archive"
            }
        );
        let mut via_link = raw_entry(b"d", TYPE_SYMLINK, b"/etc", b"");
        via_link.extend(raw_entry(b"h", TYPE_HARDLINK, b"./d/shadow", b""));
        assert!(matches!(
            rebase_err(&end_blocks(via_link)),
            TarError::BadPath { .. }
        ));
        // Replacing the link itself, or linking to it, stays inside the destination.
        let mut replace = raw_entry(b"d", TYPE_SYMLINK, b"/etc", b"");
        replace.extend(raw_entry(b"d", TYPE_FILE, b"", b"x"));
        replace.extend(raw_entry(b"h", TYPE_HARDLINK, b"d", b""));
        let mut out = TarBuilder::new(MTIME);
        rebase(&end_blocks(replace), "p", &mut out).unwrap();
        assert_eq!(out.len(), 4 * BLOCK);
    }

    #[test]
    fn rebase_refuses_hard_links_to_later_or_missing_entries() {
        let mut forward = raw_entry(b"early", TYPE_HARDLINK, b"late", b"");
        forward.extend(raw_entry(b"late", TYPE_FILE, b"", b"x"));
        assert_eq!(
            rebase_err(&end_blocks(forward)),
            TarError::BadPath {
                path: "opt/x/early".to_owned(),
                reason: "hard link to an entry that is not earlier in the archive"
            }
        );
        let missing = end_blocks(raw_entry(b"h", TYPE_HARDLINK, b"etc/passwd", b""));
        assert!(matches!(rebase_err(&missing), TarError::BadPath { .. }));
        // A directory is not something a hard link can name either.
        let mut to_dir = raw_entry(b"d/", TYPE_DIR, b"", b"");
        to_dir.extend(raw_entry(b"h", TYPE_HARDLINK, b"d", b""));
        assert!(matches!(
            rebase_err(&end_blocks(to_dir)),
            TarError::BadPath { .. }
        ));
        let mut backward = raw_entry(b"f", TYPE_FILE, b"", b"x");
        backward.extend(raw_entry(b"h", TYPE_HARDLINK, b"f", b""));
        let mut out = TarBuilder::new(MTIME);
        rebase(&end_blocks(backward), "p", &mut out).unwrap();
    }

    #[test]
    fn reserved_names_are_refused_with_their_links() {
        let mut tar = TarBuilder::new(MTIME).reserving(&[".lessl"]);
        for path in [".lessl", ".lessl/lessl", ".lessl/a/b"] {
            assert!(tar.file(path, 0o644, b"x").is_err(), "{path}");
            assert!(tar.dir(path, 0o755).is_err(), "{path}");
            assert!(tar.symlink(path, "/").is_err(), "{path}");
        }
        tar.file(".lesslx", 0o644, b"x").unwrap();
        tar.file("a/.lessl", 0o644, b"x").unwrap();
        assert!(tar.hardlink(".lessl/h", ".lesslx").is_err());
        let archive = end_blocks(raw_entry(b"./.lessl/lessl", TYPE_FILE, b"", b"x"));
        let mut out = TarBuilder::new(MTIME).reserving(&[".lessl"]);
        assert!(matches!(
            rebase(&archive, "", &mut out),
            Err(TarError::BadPath { .. })
        ));
    }

    #[test]
    fn rebase_refuses_devices_and_other_special_entries() {
        let archive = end_blocks(raw_entry(b"dev/null", b'3', b"", b""));
        assert_eq!(
            rebase_err(&archive),
            TarError::UnsupportedEntry {
                path: "dev/null".to_owned(),
                kind: b'3'
            }
        );
        for kind in [b'4', b'6', b'S', b'7'] {
            let archive = end_blocks(raw_entry(b"special", kind, b"", b""));
            assert!(matches!(
                rebase_err(&archive),
                TarError::UnsupportedEntry { kind: k, .. } if k == kind
            ));
        }
        assert_eq!(
            TarError::UnsupportedEntry {
                path: "p".to_owned(),
                kind: 0x1b
            }
            .to_string(),
            "unsupported tar entry \"p\" of type '\\x1b'"
        );
    }

    #[test]
    fn rebase_refuses_bad_checksum_and_truncation() {
        let mut tar = TarBuilder::new(MTIME);
        tar.file("a.txt", 0o644, &[7u8; 700]).unwrap();
        let good = tar.finish();
        let mut bad = good.clone();
        bad[0] = b'b';
        assert_eq!(
            rebase_err(&bad),
            TarError::ReadHeader {
                offset: 0,
                reason: "checksum mismatch"
            }
        );
        assert_eq!(
            rebase_err(&good[..BLOCK + 300]),
            TarError::Truncated { offset: BLOCK }
        );
        assert_eq!(
            rebase_err(&good[..3 * BLOCK]),
            TarError::Truncated { offset: 3 * BLOCK },
            "no end-of-archive block"
        );
        assert_eq!(rebase_err(&[]), TarError::Truncated { offset: 0 });
        let mut out = TarBuilder::new(MTIME);
        rebase(&good, "p", &mut out).unwrap();
        assert_eq!(out.len(), 3 * BLOCK);
    }

    #[test]
    fn rebase_huge_declared_size_is_truncated_not_allocated() {
        let header = Header {
            name: b"big",
            prefix: &[],
            mode: 0o644,
            size: MAX_OCTAL_11,
            mtime: 0,
            typeflag: TYPE_FILE,
            link: &[],
            magic: USTAR_MAGIC,
        };
        let archive = end_blocks(header.encode().to_vec());
        assert_eq!(rebase_err(&archive), TarError::Truncated { offset: BLOCK });
        let mut pax = raw_entry(b"pax", TYPE_PAX, b"", b"29 size=99999999999999999999\n");
        pax.extend(raw_entry(b"f", TYPE_FILE, b"", b""));
        assert!(matches!(
            rebase_err(&end_blocks(pax)),
            TarError::ReadHeader { .. } | TarError::Truncated { .. }
        ));
    }

    #[test]
    fn rebase_reads_pax_records_and_rejects_malformed_ones() {
        let mut records = pax_record("path", "dir/name.txt");
        records.extend(pax_record("size", "400"));
        records.extend(pax_record("mtime", "1.25"));
        assert_eq!(&records[..23], b"21 path=dir/name.txt\n12");
        let mut pax = raw_entry(b"PaxHeaders/x", TYPE_PAX, b"", &records);
        pax.extend(raw_entry(b"short", TYPE_FILE, b"", &[5u8; 400]));
        pax.extend(raw_entry(b"g", TYPE_PAX_GLOBAL, b"", b"16 path=ignored\n"));
        pax.extend(raw_entry(b"plain", TYPE_FILE, b"", b"p"));
        let mut out = TarBuilder::new(MTIME);
        rebase(&end_blocks(pax), "p", &mut out).unwrap();
        let dir = TempDir::new("pax");
        let archive = out.finish();
        assert_eq!(list_names(&dir, &archive), ["p/dir/name.txt", "p/plain"]);
        let root = extract(&dir, &archive);
        assert_eq!(fs::read(root.join("p/dir/name.txt")).unwrap(), [5u8; 400]);

        for body in [
            &b"20 path=dir/name.txt"[..],
            b"99 path=x\n",
            b"2 path=x\n",
            b"x path=x\n",
            b"10 pathx\n\n",
            b"nolength",
        ] {
            let mut bad = raw_entry(b"PaxHeaders/x", TYPE_PAX, b"", body);
            bad.extend(raw_entry(b"f", TYPE_FILE, b"", b""));
            assert!(
                matches!(
                    rebase_err(&end_blocks(bad)),
                    TarError::ReadHeader { offset: 0, .. }
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let dangling = end_blocks(raw_entry(b"PaxHeaders/x", TYPE_PAX, b"", b"10 path=x\n"));
        assert_eq!(
            rebase_err(&dangling),
            TarError::ReadHeader {
                offset: 2 * BLOCK,
                reason: "extended header not followed by an entry"
            }
        );
    }

    #[test]
    fn rebase_keeps_mode_bits_and_skips_the_root_entry() {
        let mut archive = raw_entry(b"./", TYPE_DIR, b"", b"");
        let mut file = raw_entry(b"./tool", TYPE_FILE, b"", b"bin");
        put_octal(&mut file[100..108], 0o106_755);
        put_octal(&mut file[108..116], 1000);
        reseal(&mut file[..BLOCK]);
        archive.extend(file);
        archive.extend(raw_entry(b"old/", TYPE_OLD_FILE, b"", b""));
        let mut out = TarBuilder::new(MTIME);
        rebase(&end_blocks(archive), "p", &mut out).unwrap();
        let rebased = out.finish();
        let dir = TempDir::new("mode");
        let listed = list_verbose(&dir, &rebased);
        let rows: Vec<(&str, &str, &str)> = listed
            .iter()
            .map(|(perm, owner, _, name)| (perm.as_str(), owner.as_str(), name.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("-rwsr-sr-x", "root/root 3", "p/tool"),
                ("drw-r--r--", "root/root 0", "p/old/"),
            ]
        );
        // The mode of a rebased directory comes from its header.
        assert_eq!(
            parse_number(&rebased[BLOCK * 2 + 100..BLOCK * 2 + 108]),
            Some(0o644)
        );
    }

    #[test]
    fn rebase_never_panics_on_damaged_archives() {
        let mut tar = TarBuilder::new(MTIME);
        tar.file(&long_path(300, "f"), 0o644, b"data").unwrap();
        tar.symlink("s", &"t".repeat(150)).unwrap();
        tar.hardlink("h", &long_path(300, "f")).unwrap();
        tar.dir("d", 0o755).unwrap();
        let content_len = tar.len();
        let good = tar.finish();
        let mut out = TarBuilder::new(MTIME);
        rebase(&good, "p", &mut out).unwrap();
        for cut in 0..good.len() {
            let mut out = TarBuilder::new(MTIME);
            let result = rebase(&good[..cut], "p", &mut out);
            assert_eq!(result.is_ok(), cut >= content_len + BLOCK, "cut at {cut}");
        }
        let is_header =
            |block: &[u8]| block.iter().any(|&b| b != 0) && verify_checksum(block).is_ok();
        const DAMAGE: [u8; 8] = [0, 0xff, b'7', b'/', b'.', b' ', b'x', b'L'];
        let mut accepted = 0;
        for i in 0..good.len() {
            let block = i / BLOCK * BLOCK..(i / BLOCK + 1) * BLOCK;
            let header = is_header(&good[block.clone()]);
            // Two values per byte, rotating through the table, keep the run short in debug builds.
            for k in 0..2 {
                let value = DAMAGE[(i * 3 + k) % DAMAGE.len()];
                let mut damaged = good.clone();
                damaged[i] = value;
                // Resealed, a damaged header reaches the field parsers instead of the checksum.
                if header {
                    reseal(&mut damaged[block.clone()]);
                }
                let mut out = TarBuilder::new(MTIME);
                if rebase(&damaged, "p", &mut out).is_ok() {
                    accepted += 1;
                    assert!(out.len() <= 4 * good.len());
                }
            }
        }
        assert!(accepted > 0, "damage to data bytes and padding is harmless");
        assert!(
            accepted < 5 * good.len(),
            "damaged names and fields are refused"
        );
    }

    #[test]
    fn number_fields_and_checksums_parse_like_gnu_tar() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"  644 \0"), Some(0o644));
        assert_eq!(parse_number(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_number(b"12 3\0"), None, "digits after the terminator");
        assert_eq!(parse_number(b"0000009\0"), None, "not octal");
        let mut base256 = [0u8; 12];
        base256[0] = 0x80;
        base256[10] = 1;
        assert_eq!(parse_number(&base256), Some(256));
        assert_eq!(parse_number(&[0xff; 12]), None, "negative");
        let mut huge = [0xffu8; 12];
        huge[0] = 0x80;
        assert_eq!(parse_number(&huge), None, "overflows u64");

        let mut block = raw_entry("caf\u{e9}".as_bytes(), TYPE_FILE, b"", b"");
        assert_eq!(verify_checksum(&block[..BLOCK]), Ok(()));
        // Old writers summed signed chars; é is two bytes >= 0x80.
        let unsigned = parse_number(&block[148..156]).unwrap();
        put_octal(&mut block[148..155], unsigned - 2 * 256);
        assert_eq!(verify_checksum(&block[..BLOCK]), Ok(()));
        put_octal(&mut block[148..155], unsigned - 1);
        assert_eq!(verify_checksum(&block[..BLOCK]), Err("checksum mismatch"));
        block[148..156].copy_from_slice(b"nonsense");
        assert_eq!(verify_checksum(&block[..BLOCK]), Err("bad checksum field"));
    }

    #[test]
    fn errors_display_the_failed_step() {
        assert_eq!(
            bad_path("a//b", "empty component").to_string(),
            "bad tar path \"a//b\": empty component"
        );
        assert_eq!(
            TarError::Truncated { offset: 512 }.to_string(),
            "tar archive truncated at byte 512"
        );
        let long = bad_path(&"é".repeat(1000), "x");
        let TarError::BadPath { path, .. } = long else {
            panic!("BadPath expected")
        };
        assert!(path.len() <= SHOWN_PATH_LEN + 3 && path.ends_with("..."));
    }
}
