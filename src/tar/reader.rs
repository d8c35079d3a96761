//! A streaming tar reader: a pure state machine fed the archive in chunks of any size, which
//! yields each member's header and then its data as slices of the input, never holding more
//! than one header block and the extended records (long names, pax) of the member at hand.

use super::{
    member_path, padding, until_nul, Pending, RawHeader, TarError, BLOCK, TYPE_DIR,
    TYPE_GNU_LONG_LINK, TYPE_GNU_LONG_NAME, TYPE_HARDLINK, TYPE_OLD_FILE, TYPE_PAX,
    TYPE_PAX_GLOBAL, TYPE_SYMLINK,
};

/// Extended records of one member at most (Docker writes pax records for xattrs, a few
/// hundred bytes); more is a hostile or broken archive.
const MAX_META: u64 = 64 << 10;
/// Type of a contiguous file: a regular file for every reader.
const TYPE_CONTIGUOUS: u8 = b'7';

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    /// A fifo, device, sparse file or anything else: its data (if any) is skipped.
    Other(u8),
}

/// A member's header, with its extended records applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Clean relative path: no leading "./", no trailing '/', never absolute or with '..'
    /// (refused with [`TarError::BadPath`]); "" for the archive's root directory.
    pub path: String,
    pub kind: Kind,
    /// Permission bits (0o7777).
    pub mode: u32,
    /// Bytes of data that follow (as [`Event::Data`]); 0 for anything but a file.
    pub size: u64,
    /// Target of a symlink or hard link, as written (UTF-8, lossy).
    pub link: String,
}

/// One step through the archive.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A member starts; its data, if any, follows.
    Member(Member),
    /// The next bytes of the current member's data.
    Data(&'a [u8]),
    /// The end-of-archive block: nothing after it is read.
    End,
}

#[derive(Debug)]
enum State {
    /// Filling the header block.
    Header,
    /// Reading an extended record's body into `meta`.
    Meta {
        typeflag: u8,
        left: u64,
        pad: usize,
        header_at: u64,
    },
    /// Passing a member's data on (`emit`) or skipping it.
    Data {
        left: u64,
        pad: usize,
        emit: bool,
    },
    /// Skipping the padding after data.
    Pad {
        left: usize,
    },
    Done,
}

/// The reader. Feed it with [`Reader::next`] until it returns `Ok(None)` (more input needed)
/// or [`Event::End`]. An error is final.
pub struct Reader {
    state: State,
    block: Box<[u8; BLOCK]>,
    filled: usize,
    meta: Vec<u8>,
    pending: Pending,
    /// Bytes of the archive consumed so far, for error offsets.
    offset: u64,
}

impl Default for Reader {
    fn default() -> Self {
        Self::new()
    }
}

impl Reader {
    pub fn new() -> Reader {
        Reader {
            state: State::Header,
            block: Box::new([0; BLOCK]),
            filled: 0,
            meta: Vec::new(),
            pending: Pending::default(),
            offset: 0,
        }
    }

    /// Whether the end-of-archive block was read.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Consumes from the front of `input` and returns the next event, or None when `input`
    /// is used up before one is complete.
    pub fn next<'a>(&mut self, input: &mut &'a [u8]) -> Result<Option<Event<'a>>, TarError> {
        loop {
            match &mut self.state {
                State::Done => {
                    *input = &[];
                    return Ok(None);
                }
                State::Header => {
                    let n = (BLOCK - self.filled).min(input.len());
                    self.block[self.filled..self.filled + n].copy_from_slice(&input[..n]);
                    self.filled += n;
                    *input = &input[n..];
                    self.offset += n as u64;
                    if self.filled < BLOCK {
                        return Ok(None);
                    }
                    self.filled = 0;
                    if let Some(event) = self.header()? {
                        return Ok(Some(event));
                    }
                }
                State::Meta {
                    typeflag,
                    left,
                    pad,
                    header_at,
                } => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    self.meta.extend_from_slice(&input[..n]);
                    *input = &input[n..];
                    self.offset += n as u64;
                    *left -= n as u64;
                    if *left > 0 {
                        return Ok(None);
                    }
                    let (typeflag, pad, header_at) = (*typeflag, *pad, *header_at);
                    let data = std::mem::take(&mut self.meta);
                    match typeflag {
                        TYPE_GNU_LONG_NAME => {
                            self.pending.long_name = Some(until_nul(&data).to_vec())
                        }
                        TYPE_GNU_LONG_LINK => {
                            self.pending.long_link = Some(until_nul(&data).to_vec())
                        }
                        TYPE_PAX => self
                            .pending
                            .read_pax(&data, usize::try_from(header_at).unwrap_or(usize::MAX))?,
                        _ => {}
                    }
                    self.state = State::Pad { left: pad };
                }
                State::Data { left, pad, emit } => {
                    if *left == 0 {
                        self.state = State::Pad { left: *pad };
                        continue;
                    }
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    let (data, rest) = input.split_at(n);
                    *input = rest;
                    self.offset += n as u64;
                    *left -= n as u64;
                    if *emit {
                        return Ok(Some(Event::Data(data)));
                    }
                }
                State::Pad { left } => {
                    let n = (*left).min(input.len());
                    *input = &input[n..];
                    self.offset += n as u64;
                    *left -= n;
                    if *left > 0 {
                        return Ok(None);
                    }
                    self.state = State::Header;
                }
            }
        }
    }

    /// A whole header block was read: the event it makes, if any, and the next state.
    fn header(&mut self) -> Result<Option<Event<'static>>, TarError> {
        let header_at = self.offset - BLOCK as u64;
        let at = usize::try_from(header_at).unwrap_or(usize::MAX);
        if self.block.iter().all(|&b| b == 0) {
            if !self.pending.is_empty() {
                return Err(TarError::ReadHeader {
                    offset: at,
                    reason: "extended header not followed by an entry",
                });
            }
            self.state = State::Done;
            return Ok(Some(Event::End));
        }
        let header = RawHeader::parse(&self.block[..], at)?;
        let is_meta = matches!(
            header.typeflag,
            TYPE_GNU_LONG_NAME | TYPE_GNU_LONG_LINK | TYPE_PAX | TYPE_PAX_GLOBAL
        );
        if is_meta {
            let pad = padding_u64(header.size);
            if header.typeflag == TYPE_PAX_GLOBAL {
                self.state = State::Data {
                    left: header.size,
                    pad,
                    emit: false,
                };
                return Ok(None);
            }
            if header.size > MAX_META {
                return Err(TarError::ReadHeader {
                    offset: at,
                    reason: "extended header larger than 64 KiB",
                });
            }
            self.state = State::Meta {
                typeflag: header.typeflag,
                left: header.size,
                pad,
                header_at,
            };
            return Ok(None);
        }
        let meta = std::mem::take(&mut self.pending);
        let size = meta.size.unwrap_or(header.size);
        let name = meta.pax_path.or(meta.long_name).unwrap_or(header.name);
        let link = meta.pax_link.or(meta.long_link).unwrap_or(header.link);
        let kind = match header.typeflag {
            TYPE_DIR => Kind::Dir,
            TYPE_OLD_FILE if name.last() == Some(&b'/') => Kind::Dir,
            super::TYPE_FILE | TYPE_OLD_FILE | TYPE_CONTIGUOUS => Kind::File,
            TYPE_SYMLINK => Kind::Symlink,
            TYPE_HARDLINK => Kind::Hardlink,
            other => Kind::Other(other),
        };
        if matches!(kind, Kind::Dir | Kind::Symlink | Kind::Hardlink) && size > 0 {
            return Err(TarError::ReadHeader {
                offset: at,
                reason: "link or directory entry carries data",
            });
        }
        let path = member_path(&name)?;
        self.state = State::Data {
            left: size,
            pad: padding_u64(size),
            emit: kind == Kind::File,
        };
        Ok(Some(Event::Member(Member {
            path,
            kind,
            mode: header.mode,
            size: if kind == Kind::File { size } else { 0 },
            link: String::from_utf8_lossy(&link).into_owned(),
        })))
    }
}

/// A member name (or hard-link target) as [`Member::path`] gives it: clean and relative.
pub fn clean(raw: &str) -> Result<String, TarError> {
    member_path(raw.as_bytes())
}

fn padding_u64(size: u64) -> usize {
    padding((size % BLOCK as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::super::TarBuilder;
    use super::*;

    /// Every event of `archive` fed in chunks of the given sizes (cycled), data joined per
    /// member so the split points do not show.
    fn events(archive: &[u8], chunks: &[usize]) -> Result<Vec<(Member, Vec<u8>)>, TarError> {
        let mut reader = Reader::new();
        let mut out: Vec<(Member, Vec<u8>)> = Vec::new();
        let mut rest = archive;
        let mut i = 0;
        let mut ended = false;
        while !rest.is_empty() && !ended {
            let n = chunks[i % chunks.len()].min(rest.len());
            i += 1;
            let mut chunk = &rest[..n];
            rest = &rest[n..];
            while let Some(event) = reader.next(&mut chunk)? {
                match event {
                    Event::Member(m) => out.push((m, Vec::new())),
                    Event::Data(d) => out.last_mut().expect("data before a member").1.extend(d),
                    Event::End => ended = true,
                }
            }
            assert!(chunk.is_empty(), "a chunk was not used up");
        }
        assert!(reader.is_done(), "no end-of-archive block");
        Ok(out)
    }

    fn sample() -> Vec<u8> {
        let mut b = TarBuilder::new(0);
        b.dir("out", 0o755).unwrap();
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1300).collect();
        b.file("out/bin", 0o600, &bytes).unwrap();
        b.file("out/empty", 0o644, b"").unwrap();
        b.symlink("out/pw", "/etc/passwd").unwrap();
        let long = format!("out/{}", "n".repeat(300));
        b.file(&long, 0o755, b"long name").unwrap();
        b.finish()
    }

    fn check(got: &[(Member, Vec<u8>)]) {
        let names: Vec<&str> = got.iter().map(|(m, _)| m.path.as_str()).collect();
        assert_eq!(names[..4], ["out", "out/bin", "out/empty", "out/pw"]);
        assert_eq!(names[4], format!("out/{}", "n".repeat(300)));
        assert_eq!(got[0].0.kind, Kind::Dir);
        assert_eq!(got[1].0.kind, Kind::File);
        assert_eq!(got[1].0.mode, 0o600);
        assert_eq!(got[1].0.size, 1300);
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1300).collect();
        assert_eq!(got[1].1, bytes);
        assert_eq!(got[2].1, b"");
        assert_eq!(got[3].0.kind, Kind::Symlink);
        assert_eq!(got[3].0.link, "/etc/passwd");
        assert_eq!(got[4].1, b"long name");
        assert_eq!(got[4].0.mode, 0o755);
    }

    #[test]
    fn reads_every_split_point() {
        let archive = sample();
        check(&events(&archive, &[archive.len()]).unwrap());
        for at in 1..archive.len() {
            let got = events(&archive, &[at, archive.len()]).unwrap();
            check(&got);
        }
    }

    #[test]
    fn reads_byte_by_byte_and_in_odd_chunks() {
        let archive = sample();
        check(&events(&archive, &[1]).unwrap());
        check(&events(&archive, &[7, 511, 3, 1024, 513]).unwrap());
    }

    #[test]
    fn nothing_after_the_end_is_read() {
        let mut archive = sample();
        archive.extend_from_slice(b"trailing garbage that is not a header");
        check(&events(&archive, &[100]).unwrap());
    }

    #[test]
    fn hostile_names_are_refused() {
        for name in ["../escape", "/etc/passwd", "a/../../b"] {
            let mut block = super::super::raw_hardlink_for_tests("placeholder", "x");
            // A file entry named `name`: rewrite the name and type, then the checksum.
            block[..100].fill(0);
            block[..name.len()].copy_from_slice(name.as_bytes());
            block[156] = b'0';
            block[157..257].fill(0);
            block[148..156].fill(b' ');
            let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
            block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            block.extend_from_slice(&[0; 1024]);
            let err = events(&block, &[block.len()]).unwrap_err();
            assert!(matches!(err, TarError::BadPath { .. }), "{name}: {err:?}");
        }
    }

    #[test]
    fn a_cut_archive_asks_for_more_and_a_corrupt_header_fails() {
        let archive = sample();
        let mut reader = Reader::new();
        let mut part = &archive[..700];
        while reader.next(&mut part).unwrap().is_some() {}
        assert!(!reader.is_done());
        let mut bad = archive.clone();
        bad[10] ^= 0xff;
        assert!(matches!(
            events(&bad, &[bad.len()]),
            Err(TarError::ReadHeader { .. })
        ));
    }

    #[test]
    fn huge_extended_headers_are_refused() {
        // A pax header announcing 1 MiB of records.
        let mut block = super::super::raw_hardlink_for_tests("pax", "x");
        block[156] = b'x';
        block[124..136].copy_from_slice(b"00004000000\0");
        block[157..257].fill(0);
        block[148..156].fill(b' ');
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut input = &block[..];
        assert!(matches!(
            Reader::new().next(&mut input),
            Err(TarError::ReadHeader { .. })
        ));
    }
}
