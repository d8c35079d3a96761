//! Builds plain tar archives in memory: the archives Lessl uploads, and the entries the agent
//! places from them.

use super::*;

/// One header block's worth of fields; names must already fit (longer input is cut).
pub(super) struct Header<'a> {
    pub(super) name: &'a [u8],
    pub(super) prefix: &'a [u8],
    pub(super) mode: u32,
    pub(super) size: u64,
    pub(super) mtime: u64,
    pub(super) typeflag: u8,
    pub(super) link: &'a [u8],
    pub(super) magic: &'a [u8; 8],
}

impl Header<'_> {
    pub(super) fn encode(&self) -> [u8; BLOCK] {
        let mut block = [0u8; BLOCK];
        put_bytes(&mut block[0..100], self.name);
        put_octal(&mut block[100..108], u64::from(self.mode));
        put_octal(&mut block[108..116], 0);
        put_octal(&mut block[116..124], 0);
        put_octal(&mut block[124..136], self.size);
        put_octal(&mut block[136..148], self.mtime);
        block[156] = self.typeflag;
        put_bytes(&mut block[157..257], self.link);
        block[257..265].copy_from_slice(self.magic);
        put_bytes(&mut block[265..297], b"root");
        put_bytes(&mut block[297..329], b"root");
        put_octal(&mut block[329..337], 0);
        put_octal(&mut block[337..345], 0);
        put_bytes(&mut block[345..500], self.prefix);
        block[148..156].fill(b' ');
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        // Traditional layout: six digits, NUL, space.
        put_octal(&mut block[148..155], sum);
        block
    }
}

fn put_bytes(field: &mut [u8], value: &[u8]) {
    let len = value.len().min(field.len());
    field[..len].copy_from_slice(&value[..len]);
}

/// Zero-padded octal digits followed by a NUL; callers keep values within the field.
pub(super) fn put_octal(field: &mut [u8], mut value: u64) {
    let Some((last, digits)) = field.split_last_mut() else {
        return;
    };
    *last = 0;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value & 7) as u8;
        value >>= 3;
    }
}

/// Builds a tar archive in memory; every entry is owned by uid/gid 0.
#[derive(Debug, Clone)]
pub struct TarBuilder {
    /// The archive so far.
    buf: Vec<u8>,
    /// Stamped on every entry.
    mtime: u64,
    /// Names no entry may have or be under (Lessl's own `.lessl`, the kernel's `proc`...).
    reserved: Vec<String>,
    /// Non-directory entries written so far: a hard link may only name one of them, since
    /// a link to a later or missing entry fails (or links into the image) on extraction.
    written: std::collections::HashSet<String>,
    /// Every entry name written so far, directories included, in order.
    pub(super) names: Vec<String>,
    /// Every entry written so far, in order, with where its data sits in `buf`.
    built: Vec<Built>,
}

/// What kind of thing an entry of a [`TarBuilder`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
}

#[derive(Debug, Clone)]
struct Built {
    name: String,
    kind: Kind,
    mode: u32,
    link: String,
    data: std::ops::Range<usize>,
}

/// One entry of a [`TarBuilder`], as an extractor would create it: for writers that place
/// the files themselves (the agent) under exactly the rules the archive was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltEntry<'a> {
    /// Relative, clean, without a trailing '/'.
    pub name: &'a str,
    pub kind: Kind,
    pub mode: u32,
    /// A symlink's target or a hard link's (relative) entry name; empty otherwise.
    pub link: &'a str,
    pub data: &'a [u8],
}

impl TarBuilder {
    /// `mtime` (unix seconds) is stamped on every entry; times past the ustar limit
    /// (year 2242) are clamped rather than refused, as they only matter for display.
    pub fn new(mtime: u64) -> Self {
        Self {
            buf: Vec::new(),
            mtime: mtime.min(MAX_OCTAL_11),
            reserved: Vec::new(),
            written: Default::default(),
            names: Vec::new(),
            built: Vec::new(),
        }
    }

    /// The entries written so far, in order.
    pub fn entries(&self) -> impl Iterator<Item = BuiltEntry<'_>> {
        self.built.iter().map(|b| BuiltEntry {
            name: &b.name,
            kind: b.kind,
            mode: b.mode,
            link: &b.link,
            data: &self.buf[b.data.clone()],
        })
    }

    /// Refuses entries named `name` or under it (relative names, as entries have), and hard
    /// links to them.
    pub fn reserving(mut self, names: &[&str]) -> Self {
        self.reserved.extend(names.iter().map(|n| n.to_string()));
        self
    }

    /// The path rules, and none of the reserved names.
    fn check_name(&self, path: &str) -> Result<(), TarError> {
        check_path(path)?;
        let reserved = self.reserved.iter().any(|r| {
            path == r
                || path
                    .strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        });
        if reserved {
            return Err(bad_path(
                path,
                "is under a directory reserved for Lessl or the kernel",
            ));
        }
        Ok(())
    }

    /// Adds a regular file. `path` is relative, '/'-separated, without empty, '.' or '..'
    /// components or NUL. `mode` is masked to its permission bits (0o7777).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), TarError> {
        self.check_name(path)?;
        self.entry(path, TYPE_FILE, mode, "", data)?;
        self.written.insert(path.to_owned());
        Ok(())
    }

    /// Adds a directory (same path rules as [`TarBuilder::file`]).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), TarError> {
        self.check_name(path)?;
        // The trailing '/' is how old readers tell directories apart.
        self.entry(&format!("{path}/"), TYPE_DIR, mode, "", &[])
    }

    /// Adds a symlink; `target` is arbitrary non-empty text without NUL.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), TarError> {
        self.check_name(path)?;
        check_symlink_target(path, target)?;
        self.entry(path, TYPE_SYMLINK, 0o777, target, &[])?;
        self.written.insert(path.to_owned());
        Ok(())
    }

    /// Adds a hard link to an earlier non-directory entry of this archive; `target` follows
    /// the same rules as `path`.
    pub fn hardlink(&mut self, path: &str, target: &str) -> Result<(), TarError> {
        self.check_name(path)?;
        self.check_name(target)?;
        if !self.written.contains(target) {
            return Err(bad_path(
                path,
                "hard link to an entry that is not earlier in the archive",
            ));
        }
        self.entry(path, TYPE_HARDLINK, 0o644, target, &[])?;
        self.written.insert(path.to_owned());
        Ok(())
    }

    /// Bytes written so far, without the end-of-archive blocks.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends the two zero end blocks and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.resize(self.buf.len() + 2 * BLOCK, 0);
        self.buf
    }

    /// Everything is validated before the first byte is written, so a refused entry leaves
    /// the archive unchanged.
    fn entry(
        &mut self,
        name: &str,
        typeflag: u8,
        mode: u32,
        link: &str,
        data: &[u8],
    ) -> Result<(), TarError> {
        let size = data_size(name, data.len())?;
        let split = split_name(name.as_bytes());
        // GNU tar writes the link record first; readers accept either order.
        if link.len() > NAME_LEN {
            self.long_record(TYPE_GNU_LONG_LINK, link);
        }
        let (name_field, prefix_field) = match split {
            Some(fields) => fields,
            None => {
                self.long_record(TYPE_GNU_LONG_NAME, name);
                (name.as_bytes(), &[][..])
            }
        };
        let header = Header {
            name: name_field,
            prefix: prefix_field,
            mode: mode & 0o7777,
            size,
            mtime: self.mtime,
            typeflag,
            link: link.as_bytes(),
            magic: USTAR_MAGIC,
        };
        self.buf.extend_from_slice(&header.encode());
        let start = self.buf.len();
        self.append_data(data);
        self.names.push(name.trim_end_matches('/').to_owned());
        let kind = match typeflag {
            TYPE_DIR => Kind::Dir,
            TYPE_SYMLINK => Kind::Symlink,
            TYPE_HARDLINK => Kind::Hardlink,
            _ => Kind::File,
        };
        self.built.push(Built {
            name: name.trim_end_matches('/').to_owned(),
            kind,
            mode: mode & 0o7777,
            link: link.to_owned(),
            data: start..start + data.len(),
        });
        Ok(())
    }

    /// A GNU long name/link record: the full text, NUL-terminated, as the data of a
    /// pseudo-entry that applies to the next header.
    fn long_record(&mut self, typeflag: u8, text: &str) {
        let mut data = Vec::with_capacity(text.len() + 1);
        data.extend_from_slice(text.as_bytes());
        data.push(0);
        let header = Header {
            name: GNU_LONG_NAME_ENTRY,
            prefix: &[],
            mode: 0o644,
            // Bounded by MAX_PATH, far below the field's limit.
            size: u64::try_from(data.len()).unwrap_or(MAX_OCTAL_11),
            mtime: 0,
            typeflag,
            link: &[],
            magic: GNU_MAGIC,
        };
        self.buf.extend_from_slice(&header.encode());
        self.append_data(&data);
    }

    fn append_data(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len() + padding(data.len()), 0);
    }
}
