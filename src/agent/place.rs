//! The agent writing a task's files itself ([`protocol::Place`]): every directory walked
//! from `/` one component at a time without following a symlink blindly (each link read and
//! resolved here, and refused where it leads under `/.lessl`, `/proc`, `/sys` or `/dev`),
//! every file staged under a temporary name in its target directory and renamed into place
//! only once all of them are staged (a command never sees half a file, and a refused set
//! leaves nothing behind). The rules run over the [`Fs`] trait, so they are tested without
//! a container; [`Real`] is the system-call implementation.

use std::io;

use super::protocol::{EntryKind, Place, PlaceEntry, PlaceResource, Placed, Refusal};
use crate::spec::is_reserved;

/// Symlinks followed while walking one path, as the kernel's own limit.
const MAX_HOPS: u32 = 40;

/// What a name in a directory is.
#[derive(Debug)]
pub enum Opened<D> {
    Dir(D),
    Symlink(String),
    Missing,
    /// Something that is neither a directory nor a symlink (a file in the way).
    Other,
}

/// The file-system operations placement needs, all relative to an open directory and none
/// following a symlink in its last component.
pub trait Fs {
    type Dir: Clone;
    type File;
    fn root(&mut self) -> io::Result<Self::Dir>;
    fn open_dir(&mut self, at: &Self::Dir, name: &str) -> io::Result<Opened<Self::Dir>>;
    /// Creates a directory; Ok(None) when the name exists already.
    fn make_dir(&mut self, at: &Self::Dir, name: &str, mode: u32) -> io::Result<Option<()>>;
    fn remove_dir(&mut self, at: &Self::Dir, name: &str) -> io::Result<()>;
    /// Whether `name` is a directory (not following a symlink).
    fn is_dir(&mut self, at: &Self::Dir, name: &str) -> io::Result<bool>;
    /// A new, empty file under a fresh name, open for writing; and its name.
    fn create_temp(&mut self, at: &Self::Dir) -> io::Result<(Self::File, String)>;
    /// Appends to a file made by `create_temp`.
    fn write(&mut self, file: &mut Self::File, data: &[u8]) -> io::Result<()>;
    /// Gives a file made by `create_temp` its `mode` and closes it.
    fn seal(&mut self, file: Self::File, mode: u32) -> io::Result<()>;
    fn symlink_temp(&mut self, at: &Self::Dir, target: &str) -> io::Result<String>;
    fn link_temp(&mut self, from: &Self::Dir, name: &str, at: &Self::Dir) -> io::Result<String>;
    fn rename(&mut self, at: &Self::Dir, from: &str, to: &str) -> io::Result<()>;
    fn unlink(&mut self, at: &Self::Dir, name: &str) -> io::Result<()>;
}

/// Why a path could not be walked or an entry placed.
#[derive(Debug)]
pub enum PlaceError {
    /// The rules forbid it: the client's error.
    Forbidden(String),
    /// The file system refused (permissions, a file in the way, no space).
    Failed(String),
}

/// A directory reached by [`walk`], and the real path it has.
struct Reached<D> {
    dir: D,
    path: String,
}

/// Walks `path` (absolute) from the root, creating missing directories (`mode` for the last
/// one, 0755 above) and recording them in `created`. A symlink met on the way is read and its
/// target walked instead, relative to where it sits or from the root, `..` never above the
/// root; the real path is checked against the reserved directories at every step.
fn walk<F: Fs>(
    fs: &mut F,
    path: &str,
    last_mode: u32,
    created: &mut Vec<(F::Dir, String)>,
) -> Result<Reached<F::Dir>, PlaceError> {
    let failed = |what: &str, e: io::Error| PlaceError::Failed(format!("{what}: {e}"));
    let root = fs.root().map_err(|e| failed("/", e))?;
    // The directories entered so far, by name, with the root first.
    let mut stack: Vec<(String, F::Dir)> = vec![(String::new(), root)];
    let real = |stack: &[(String, F::Dir)]| -> String {
        let names: Vec<&str> = stack[1..].iter().map(|(n, _)| n.as_str()).collect();
        format!("/{}", names.join("/"))
    };
    let mut todo: std::collections::VecDeque<String> = components(path).collect();
    // Components still to walk from the given path, and from symlinks (always in front): only
    // the given path's last one gets `last_mode`.
    let (mut given_left, mut link_left) = (todo.len(), 0usize);
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        let is_last_given = if link_left > 0 {
            link_left -= 1;
            false
        } else {
            given_left -= 1;
            given_left == 0
        };
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let here = real(&stack);
        let next = format!("{}/{part}", here.trim_end_matches('/'));
        if is_reserved(&next) {
            return Err(PlaceError::Forbidden(format!(
                "{path} goes through {here} into {next}, which is reserved for Lessl or the kernel"
            )));
        }
        let at = stack.last().expect("the root stays").1.clone();
        let opened = fs.open_dir(&at, &part).map_err(|e| failed(&next, e))?;
        let opened = match opened {
            Opened::Missing => {
                let mode = if is_last_given { last_mode } else { 0o755 };
                if fs
                    .make_dir(&at, &part, mode)
                    .map_err(|e| failed(&next, e))?
                    .is_some()
                {
                    created.push((at.clone(), part.clone()));
                }
                fs.open_dir(&at, &part).map_err(|e| failed(&next, e))?
            }
            o => o,
        };
        match opened {
            Opened::Dir(d) => stack.push((part, d)),
            Opened::Symlink(target) => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(PlaceError::Forbidden(format!(
                        "{path}: too many symbolic links at {next}"
                    )));
                }
                if target.starts_with('/') {
                    stack.truncate(1);
                }
                for c in components(&target).rev() {
                    todo.push_front(c);
                    link_left += 1;
                }
            }
            Opened::Missing => {
                return Err(PlaceError::Failed(format!("{next} vanished while placing")))
            }
            Opened::Other => return Err(PlaceError::Failed(format!("{next} is not a directory"))),
        }
    }
    let path = real(&stack);
    let dir = stack.pop().expect("the root stays").1;
    Ok(Reached { dir, path })
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

/// The rules Lessl already applied, checked again: absolute, no `.`/`..`/empty component, no
/// NUL, not reserved, at most 4096 bytes.
fn check_path(path: &str) -> Result<(), PlaceError> {
    let bad = |why: &str| Err(PlaceError::Forbidden(format!("{path:?} {why}")));
    if !path.starts_with('/') || path.len() < 2 {
        return bad("is not an absolute path below /");
    }
    if path.len() > 4096 || path.contains('\0') {
        return bad("is too long or holds NUL");
    }
    if path[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("is not a clean path");
    }
    if is_reserved(path) {
        return bad("is reserved for Lessl or the kernel");
    }
    Ok(())
}

/// A file staged under a temporary name, to be renamed to `name` in `dir`.
struct Staged<D> {
    dir: D,
    temp: String,
    name: String,
    /// The entry's path as given, for hard links to name it.
    path: String,
}

/// Everything done so far, undone on failure.
struct Work<D> {
    staged: Vec<Staged<D>>,
    created: Vec<(D, String)>,
}

/// A staged file still taking its bytes from the payload.
struct Filling<F: Fs> {
    file: F::File,
    staged: Staged<F::Dir>,
    mode: u32,
    /// Bytes announced, and bytes still to come.
    size: u64,
    left: u64,
    /// The resource it belongs to, and its field at fault (`dest`, or an archive's `data`).
    index: usize,
    field: &'static str,
}

/// A placement in progress: entries are staged in order as far as the payload has arrived,
/// each file's bytes written as they come, so the agent never holds a payload of megabytes
/// (its memory is the task's) and writes while Lessl still sends. Fed the payload in pieces
/// of any size ([`Placing::feed`]), then [`Placing::finish`]ed: every file renamed into place,
/// or none. After a refusal the rest of the payload is taken and dropped, so the next request
/// on the lane starts where it should.
pub struct Placing<F: Fs> {
    /// Resources not started yet, and the entries left of the one being placed.
    resources: std::iter::Enumerate<std::vec::IntoIter<PlaceResource>>,
    current: Option<(usize, &'static str, std::vec::IntoIter<PlaceEntry>)>,
    /// The index of the last resource started: bytes no entry takes are laid on it.
    last: usize,
    filling: Option<Filling<F>>,
    work: Work<F::Dir>,
    refusal: Option<Refusal>,
}

impl<F: Fs> Placing<F> {
    /// Stages what needs no payload up to the first file that does.
    pub fn start(fs: &mut F, place: Place) -> Placing<F> {
        let mut placing = Placing {
            resources: place.resources.into_iter().enumerate(),
            current: None,
            last: 0,
            filling: None,
            work: Work {
                staged: Vec::new(),
                created: Vec::new(),
            },
            refusal: None,
        };
        placing.advance(fs);
        placing
    }

    /// The next piece of the payload, in order.
    pub fn feed(&mut self, fs: &mut F, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.refusal.is_none() {
            let Some(filling) = self.filling.as_mut() else {
                self.refuse_last(PlaceError::Forbidden(
                    "the payload holds more bytes than its entries announce".into(),
                ));
                return;
            };
            let take = bytes
                .len()
                .min(usize::try_from(filling.left).unwrap_or(usize::MAX));
            let (mine, rest) = bytes.split_at(take);
            bytes = rest;
            if let Err(e) = fs.write(&mut filling.file, mine) {
                let reason = format!("{}: {e}", filling.staged.path);
                self.drop_filling(fs, PlaceError::Failed(reason));
                return;
            }
            filling.left -= take as u64;
            if filling.left == 0 {
                self.seal(fs);
                self.advance(fs);
            }
        }
    }

    /// The payload was cut short (the lane ended): everything staged and made is undone,
    /// whatever the entries announced, since nobody is left to answer.
    pub fn abandon(mut self, fs: &mut F) {
        if self.refusal.is_none() {
            self.refusal = Some(refusal(
                self.last,
                "data",
                PlaceError::Failed("the payload was cut short".into()),
            ));
        }
        self.finish(fs);
    }

    /// Once the whole payload was fed: every file renamed into place, or, if anything was
    /// refused or the payload ended short, everything staged and made undone.
    pub fn finish(mut self, fs: &mut F) -> Placed {
        if let Some(f) = &self.filling {
            let reason = format!(
                "{}: {} bytes announced, {} left in the payload",
                f.staged.path,
                f.size,
                f.size - f.left
            );
            self.drop_filling(fs, PlaceError::Forbidden(reason));
        }
        let mut work = self.work;
        let mut refusal = self.refusal;
        if refusal.is_none() {
            let mut renamed = 0;
            for s in &work.staged {
                if let Err(e) = fs.rename(&s.dir, &s.temp, &s.name) {
                    refusal = Some(Refusal {
                        index: 0,
                        field: "dest".into(),
                        reason: format!("cannot rename into {}: {e}", s.path),
                        forbidden: false,
                    });
                    break;
                }
                renamed += 1;
            }
            work.staged.drain(..renamed);
            if refusal.is_none() {
                return Placed { refused: None };
            }
        }
        for s in work.staged.iter().rev() {
            let _ = fs.unlink(&s.dir, &s.temp);
        }
        for (at, name) in work.created.iter().rev() {
            let _ = fs.remove_dir(at, name);
        }
        Placed { refused: refusal }
    }

    /// Stages entries until one waits for payload bytes, everything is staged, or one is
    /// refused.
    fn advance(&mut self, fs: &mut F) {
        while self.refusal.is_none() && self.filling.is_none() {
            let Some((index, field, entries)) = self.current.as_mut() else {
                let Some((index, resource)) = self.resources.next() else {
                    return;
                };
                let field = if resource.archive { "data" } else { "dest" };
                self.last = index;
                if let Err(e) = walk(fs, &resource.home, 0o755, &mut self.work.created) {
                    self.refusal = Some(refusal(index, "dest", e));
                    return;
                }
                self.current = Some((index, field, resource.entries.into_iter()));
                continue;
            };
            let (index, field) = (*index, *field);
            let Some(entry) = entries.next() else {
                self.current = None;
                continue;
            };
            match stage(fs, entry, &mut self.work) {
                Ok(None) => {}
                Ok(Some((file, staged, mode, size))) => {
                    self.filling = Some(Filling {
                        file,
                        staged,
                        mode,
                        size,
                        left: size,
                        index,
                        field,
                    });
                    if size == 0 {
                        self.seal(fs);
                    }
                }
                Err(e) => self.refusal = Some(refusal(index, field, e)),
            }
        }
    }

    /// The file being filled is whole: its mode set and it joins the staged ones.
    fn seal(&mut self, fs: &mut F) {
        let Some(f) = self.filling.take() else {
            return;
        };
        match fs.seal(f.file, f.mode) {
            Ok(()) => self.work.staged.push(f.staged),
            Err(e) => {
                let _ = fs.unlink(&f.staged.dir, &f.staged.temp);
                let reason = format!("{}: {e}", f.staged.path);
                self.refusal = Some(refusal(f.index, f.field, PlaceError::Failed(reason)));
            }
        }
    }

    /// The file being filled is given up (a write failed, the payload ended short), with the
    /// refusal that says why.
    fn drop_filling(&mut self, fs: &mut F, e: PlaceError) {
        if let Some(f) = self.filling.take() {
            drop(f.file);
            let _ = fs.unlink(&f.staged.dir, &f.staged.temp);
            self.refusal = Some(refusal(f.index, f.field, e));
        }
    }

    /// A refusal for bytes no entry takes, laid on the last resource.
    fn refuse_last(&mut self, e: PlaceError) {
        self.refusal = Some(refusal(self.last, "data", e));
    }
}

fn refusal(index: usize, field: &str, e: PlaceError) -> Refusal {
    let (forbidden, reason) = match e {
        PlaceError::Forbidden(r) => (true, r),
        PlaceError::Failed(r) => (false, r),
    };
    Refusal {
        index,
        field: field.to_string(),
        reason,
        forbidden,
    }
}

/// What staging an entry left to do: a file to fill from the payload (its handle, where it
/// goes, its mode and its size), or nothing.
type ToFill<F> = Option<(<F as Fs>::File, Staged<<F as Fs>::Dir>, u32, u64)>;

/// Stages one entry: its directory walked (and made), its content under a temporary name,
/// except the bytes of a file that come from the payload, which are left to fill.
fn stage<F: Fs>(
    fs: &mut F,
    entry: PlaceEntry,
    work: &mut Work<F::Dir>,
) -> Result<ToFill<F>, PlaceError> {
    check_path(&entry.path)?;
    let failed = |e: io::Error| PlaceError::Failed(format!("{}: {e}", entry.path));
    if entry.kind == EntryKind::Dir {
        walk(fs, &entry.path, entry.mode & 0o7777, &mut work.created)?;
        return Ok(None);
    }
    let (parent, name) = entry.path.rsplit_once('/').expect("absolute");
    let reached = walk(fs, parent, 0o755, &mut work.created)?;
    let real = format!("{}/{name}", reached.path.trim_end_matches('/'));
    if is_reserved(&real) {
        return Err(PlaceError::Forbidden(format!(
            "{} lands at {real}, which is reserved for Lessl or the kernel",
            entry.path
        )));
    }
    if fs.is_dir(&reached.dir, name).map_err(failed)? {
        return Err(PlaceError::Failed(format!(
            "{real} is a directory and cannot be replaced by a file"
        )));
    }
    let temp = match entry.kind {
        EntryKind::File => {
            let (mut file, temp) = fs.create_temp(&reached.dir).map_err(failed)?;
            let staged = Staged {
                dir: reached.dir,
                temp,
                name: name.to_string(),
                path: entry.path.clone(),
            };
            let mode = entry.mode & 0o7777;
            if let Some(size) = entry.size {
                return Ok(Some((file, staged, mode, size)));
            }
            let written = crate::b64::decode(entry.data.as_bytes())
                .map_err(|e| PlaceError::Forbidden(format!("{}: bad base64: {e}", entry.path)))
                .and_then(|data| fs.write(&mut file, &data).map_err(failed))
                .and_then(|()| fs.seal(file, mode).map_err(failed));
            if let Err(e) = written {
                let _ = fs.unlink(&staged.dir, &staged.temp);
                return Err(e);
            }
            work.staged.push(staged);
            return Ok(None);
        }
        EntryKind::Symlink => fs.symlink_temp(&reached.dir, &entry.link).map_err(failed)?,
        EntryKind::Hardlink => {
            let Some(target) = work.staged.iter().find(|s| s.path == entry.link) else {
                return Err(PlaceError::Forbidden(format!(
                    "{}: hard link to {}, which is not an earlier entry",
                    entry.path, entry.link
                )));
            };
            let (dir, temp) = (target.dir.clone(), target.temp.clone());
            fs.link_temp(&dir, &temp, &reached.dir).map_err(failed)?
        }
        EntryKind::Dir => unreachable!("handled above"),
    };
    work.staged.push(Staged {
        dir: reached.dir,
        temp,
        name: name.to_string(),
        path: entry.path,
    });
    Ok(None)
}

/// The real file system, through `*at` system calls on `O_PATH` directory descriptors.
/// Large files a placement replaced are held until [`Real::let_go`]: the rename that drops a
/// file's last name frees its pages, milliseconds for megabytes, while an `O_PATH` descriptor
/// (which opens nothing: no FIFO blocks, no device acts) keeps that for later.
#[derive(Default)]
pub struct Real {
    replaced: Vec<std::os::fd::OwnedFd>,
}

/// Replaced files smaller than this are let go in the rename: holding them saves nothing.
const HOLD_FROM: u64 = 1 << 20;

impl Real {
    /// Lets the replaced files go on a thread of their own, called once the answer is
    /// queued; inline when the task's pids limit allows no thread (the spawn's error drops
    /// them here).
    pub fn let_go(self) {
        if self.replaced.is_empty() {
            return;
        }
        let replaced = self.replaced;
        let _ = std::thread::Builder::new()
            .name("lessl-let-go".into())
            .spawn(move || drop(replaced));
    }

    /// The regular file at `name`, if it is one of at least [`HOLD_FROM`] bytes.
    fn large_file(at: &std::os::fd::OwnedFd, name: &str) -> Option<std::os::fd::OwnedFd> {
        let held =
            std::fs::File::from(sys::openat(at, name, libc::O_PATH | libc::O_NOFOLLOW, 0).ok()?);
        let meta = held.metadata().ok()?;
        (meta.is_file() && meta.len() >= HOLD_FROM).then(|| held.into())
    }

    /// Unique in this process's life, so a staged file never collides with another.
    fn temp_name(&mut self) -> String {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(".lessl-{}-{n}.tmp", std::process::id())
    }
}

mod sys {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    pub fn cstr(s: &str) -> io::Result<CString> {
        CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    }

    pub fn check(r: libc::c_int) -> io::Result<libc::c_int> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    pub fn openat(at: &OwnedFd, name: &str, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
        let name = cstr(name)?;
        // SAFETY: a valid descriptor and a NUL-terminated name; the new descriptor is ours.
        let fd = check(unsafe {
            libc::openat(at.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC, mode)
        })?;
        // SAFETY: just opened, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn lstat_mode(at: &OwnedFd, name: &str) -> io::Result<u32> {
        let name = cstr(name)?;
        // SAFETY: fstatat fills the zeroed stat it is given.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            check(libc::fstatat(
                at.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            ))?;
            Ok(st.st_mode)
        }
    }

    pub fn readlinkat(at: &OwnedFd, name: &str) -> io::Result<String> {
        let name = cstr(name)?;
        let mut buf = vec![0u8; 4097];
        // SAFETY: the buffer is valid for its length.
        let n = unsafe {
            libc::readlinkat(
                at.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        String::from_utf8(buf).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
    }
}

impl Fs for Real {
    type Dir = std::sync::Arc<std::os::fd::OwnedFd>;
    type File = std::fs::File;

    fn root(&mut self) -> io::Result<Self::Dir> {
        let root = std::fs::File::open("/")?;
        Ok(std::sync::Arc::new(root.into()))
    }

    fn open_dir(&mut self, at: &Self::Dir, name: &str) -> io::Result<Opened<Self::Dir>> {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        match sys::openat(at, name, flags, 0) {
            Ok(fd) => Ok(Opened::Dir(std::sync::Arc::new(fd))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Opened::Missing),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                let mode = sys::lstat_mode(at, name)?;
                if mode & libc::S_IFMT == libc::S_IFLNK {
                    Ok(Opened::Symlink(sys::readlinkat(at, name)?))
                } else {
                    Ok(Opened::Other)
                }
            }
            Err(e) => Err(e),
        }
    }

    fn make_dir(&mut self, at: &Self::Dir, name: &str, mode: u32) -> io::Result<Option<()>> {
        use std::os::fd::AsRawFd;
        let c = sys::cstr(name)?;
        // SAFETY: a valid descriptor and a NUL-terminated name.
        match sys::check(unsafe { libc::mkdirat(at.as_raw_fd(), c.as_ptr(), mode) }) {
            Ok(_) => Ok(Some(())),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove_dir(&mut self, at: &Self::Dir, name: &str) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let c = sys::cstr(name)?;
        // SAFETY: as above.
        sys::check(unsafe { libc::unlinkat(at.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
            .map(drop)
    }

    fn is_dir(&mut self, at: &Self::Dir, name: &str) -> io::Result<bool> {
        match sys::lstat_mode(at, name) {
            Ok(mode) => Ok(mode & libc::S_IFMT == libc::S_IFDIR),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn create_temp(&mut self, at: &Self::Dir) -> io::Result<(std::fs::File, String)> {
        let temp = self.temp_name();
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let fd = sys::openat(at, &temp, flags, 0o600)?;
        Ok((std::fs::File::from(fd), temp))
    }

    fn write(&mut self, file: &mut std::fs::File, data: &[u8]) -> io::Result<()> {
        io::Write::write_all(file, data)
    }

    fn seal(&mut self, file: std::fs::File, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
    }

    fn symlink_temp(&mut self, at: &Self::Dir, target: &str) -> io::Result<String> {
        use std::os::fd::AsRawFd;
        let temp = self.temp_name();
        let (t, n) = (sys::cstr(target)?, sys::cstr(&temp)?);
        // SAFETY: valid descriptor and NUL-terminated strings.
        sys::check(unsafe { libc::symlinkat(t.as_ptr(), at.as_raw_fd(), n.as_ptr()) })?;
        Ok(temp)
    }

    fn link_temp(&mut self, from: &Self::Dir, name: &str, at: &Self::Dir) -> io::Result<String> {
        use std::os::fd::AsRawFd;
        let temp = self.temp_name();
        let (f, n) = (sys::cstr(name)?, sys::cstr(&temp)?);
        // SAFETY: valid descriptors and NUL-terminated strings; flags 0 never follows.
        sys::check(unsafe {
            libc::linkat(from.as_raw_fd(), f.as_ptr(), at.as_raw_fd(), n.as_ptr(), 0)
        })?;
        Ok(temp)
    }

    fn rename(&mut self, at: &Self::Dir, from: &str, to: &str) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (f, t) = (sys::cstr(from)?, sys::cstr(to)?);
        let held = Real::large_file(at, to);
        // SAFETY: valid descriptor and NUL-terminated strings.
        sys::check(unsafe {
            libc::renameat(at.as_raw_fd(), f.as_ptr(), at.as_raw_fd(), t.as_ptr())
        })?;
        self.replaced.extend(held);
        Ok(())
    }

    fn unlink(&mut self, at: &Self::Dir, name: &str) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let c = sys::cstr(name)?;
        // SAFETY: valid descriptor and NUL-terminated name.
        sys::check(unsafe { libc::unlinkat(at.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::PlaceResource;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Node {
        Dir,
        File(Vec<u8>, u32),
        Link(String),
    }

    /// An in-memory file system; a directory handle is its real path ("" is the root).
    #[derive(Default)]
    struct Fake {
        nodes: BTreeMap<String, Node>,
        temps: u32,
        /// Creating a file fails once this many were made (a full disk).
        fail_after: Option<u32>,
        /// Writes fail once this many bytes were written.
        fail_write_at: Option<usize>,
        written: usize,
    }

    impl Fake {
        fn with(nodes: &[(&str, Node)]) -> Fake {
            let mut f = Fake::default();
            for (p, n) in nodes {
                f.nodes.insert(p.to_string(), n.clone());
            }
            f
        }
        fn join(at: &str, name: &str) -> String {
            format!("{at}/{name}")
        }
        fn add(&mut self, at: &str, node: Node) -> io::Result<String> {
            if self.fail_after.is_some_and(|n| self.temps >= n) {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.temps += 1;
            let name = format!(".tmp{}", self.temps);
            self.nodes.insert(Fake::join(at, &name), node);
            Ok(name)
        }
    }

    impl Fs for Fake {
        type Dir = String;
        /// The file's path.
        type File = String;
        fn root(&mut self) -> io::Result<String> {
            Ok(String::new())
        }
        fn open_dir(&mut self, at: &String, name: &str) -> io::Result<Opened<String>> {
            let p = Fake::join(at, name);
            Ok(match self.nodes.get(&p) {
                None => Opened::Missing,
                Some(Node::Dir) => Opened::Dir(p),
                Some(Node::Link(t)) => Opened::Symlink(t.clone()),
                Some(Node::File(..)) => Opened::Other,
            })
        }
        fn make_dir(&mut self, at: &String, name: &str, _: u32) -> io::Result<Option<()>> {
            let p = Fake::join(at, name);
            if self.nodes.contains_key(&p) {
                return Ok(None);
            }
            self.nodes.insert(p, Node::Dir);
            Ok(Some(()))
        }
        fn remove_dir(&mut self, at: &String, name: &str) -> io::Result<()> {
            self.nodes.remove(&Fake::join(at, name));
            Ok(())
        }
        fn is_dir(&mut self, at: &String, name: &str) -> io::Result<bool> {
            Ok(self.nodes.get(&Fake::join(at, name)) == Some(&Node::Dir))
        }
        fn create_temp(&mut self, at: &String) -> io::Result<(String, String)> {
            let name = self.add(at, Node::File(Vec::new(), 0o600))?;
            Ok((Fake::join(at, &name), name))
        }
        fn write(&mut self, file: &mut String, data: &[u8]) -> io::Result<()> {
            if self
                .fail_write_at
                .is_some_and(|n| self.written + data.len() > n)
            {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.written += data.len();
            match self.nodes.get_mut(file.as_str()) {
                Some(Node::File(bytes, _)) => bytes.extend_from_slice(data),
                _ => panic!("{file} is not a staged file"),
            }
            Ok(())
        }
        fn seal(&mut self, file: String, mode: u32) -> io::Result<()> {
            match self.nodes.get_mut(&file) {
                Some(Node::File(_, m)) => *m = mode,
                _ => panic!("{file} is not a staged file"),
            }
            Ok(())
        }
        fn symlink_temp(&mut self, at: &String, target: &str) -> io::Result<String> {
            self.add(at, Node::Link(target.to_string()))
        }
        fn link_temp(&mut self, from: &String, name: &str, at: &String) -> io::Result<String> {
            let node = self.nodes[&Fake::join(from, name)].clone();
            self.add(at, node)
        }
        fn rename(&mut self, at: &String, from: &str, to: &str) -> io::Result<()> {
            let node = self.nodes.remove(&Fake::join(at, from)).unwrap();
            self.nodes.insert(Fake::join(at, to), node);
            Ok(())
        }
        fn unlink(&mut self, at: &String, name: &str) -> io::Result<()> {
            self.nodes.remove(&Fake::join(at, name));
            Ok(())
        }
    }

    fn file(path: &str, data: &[u8]) -> PlaceEntry {
        use base64::Engine as _;
        PlaceEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o640,
            link: String::new(),
            data: base64::engine::general_purpose::STANDARD.encode(data),
            size: None,
        }
    }

    fn res(home: &str, archive: bool, entries: Vec<PlaceEntry>) -> PlaceResource {
        PlaceResource {
            home: home.into(),
            archive,
            entries,
        }
    }

    fn planted() -> Fake {
        Fake::with(&[
            ("/tmp", Node::Dir),
            ("/.lessl", Node::Dir),
            ("/tmp/x", Node::Link("/.lessl".into())),
            ("/tmp/root", Node::Link("/".into())),
            ("/tmp/up", Node::Link("../../../proc".into())),
            ("/tmp/ok", Node::Link("../srv".into())),
            ("/srv", Node::Dir),
            ("/tmp/a", Node::Link("/tmp/b".into())),
            ("/tmp/b", Node::Link("/tmp/a".into())),
            ("/tmp/f", Node::File(b"x".to_vec(), 0o644)),
        ])
    }

    /// A placement fed its whole payload at once.
    fn place_all(fs: &mut Fake, place: Place, payload: &[u8]) -> Placed {
        let mut placing = Placing::start(fs, place);
        placing.feed(fs, payload);
        placing.finish(fs)
    }

    fn refusal(fs: &mut Fake, rs: Vec<PlaceResource>) -> Option<(usize, String, bool)> {
        place_all(fs, Place { resources: rs }, &[])
            .refused
            .map(|r| (r.index, r.field, r.forbidden))
    }

    #[test]
    fn payload_entries_take_their_bytes_in_order_and_a_short_payload_places_nothing() {
        let sized = |path: &str, n: u64| PlaceEntry {
            data: String::new(),
            size: Some(n),
            ..file(path, b"")
        };
        let mut fs = planted();
        let rs = vec![
            res("/srv", false, vec![sized("/srv/a", 3)]),
            res(
                "/opt",
                false,
                vec![file("/opt/b64", b"b"), sized("/opt/c", 2)],
            ),
        ];
        let placed = place_all(&mut fs, Place { resources: rs }, b"aaacc");
        assert_eq!(placed.refused, None);
        assert_eq!(fs.nodes["/srv/a"], Node::File(b"aaa".to_vec(), 0o640));
        assert_eq!(fs.nodes["/opt/b64"], Node::File(b"b".to_vec(), 0o640));
        assert_eq!(fs.nodes["/opt/c"], Node::File(b"cc".to_vec(), 0o640));
        let mut fs = planted();
        let before = fs.nodes.clone();
        let rs = vec![res(
            "/srv",
            false,
            vec![sized("/srv/a", 3), sized("/srv/b", 3)],
        )];
        let placed = place_all(&mut fs, Place { resources: rs }, b"aaab");
        let refused = placed.refused.unwrap();
        assert!(refused.forbidden && refused.reason.contains("3 bytes announced, 1 left"));
        assert_eq!(fs.nodes, before, "nothing placed");
    }

    #[test]
    fn files_land_whole_with_their_mode_and_missing_directories_made() {
        let mut fs = planted();
        let bytes: Vec<u8> = (0..=255).collect();
        let got = refusal(
            &mut fs,
            vec![
                res("/opt/app", false, vec![file("/opt/app/run.sh", &bytes)]),
                res("/tmp/ok", false, vec![file("/tmp/ok/via-link", b"y")]),
            ],
        );
        assert_eq!(got, None);
        assert_eq!(fs.nodes["/opt"], Node::Dir);
        assert_eq!(fs.nodes["/opt/app/run.sh"], Node::File(bytes, 0o640));
        // A link inside the rules is followed, as the engine's extraction does.
        assert_eq!(fs.nodes["/srv/via-link"], Node::File(b"y".to_vec(), 0o640));
        assert!(!fs.nodes.keys().any(|k| k.contains(".tmp")));
    }

    #[test]
    fn planted_symlinks_never_lead_into_reserved_directories() {
        for (home, path) in [
            ("/tmp/x", "/tmp/x/evil"),
            ("/tmp/root/.lessl", "/tmp/root/.lessl/evil"),
            ("/tmp/up", "/tmp/up/evil"),
            ("/tmp/root/tmp/root/dev", "/tmp/root/tmp/root/dev/evil"),
            ("/tmp/a", "/tmp/a/evil"),
        ] {
            let mut fs = planted();
            let before = fs.nodes.clone();
            let got = refusal(
                &mut fs,
                vec![
                    res("/new/dir", false, vec![file("/new/dir/good", b"g")]),
                    res(home, false, vec![file(path, b"e")]),
                ],
            );
            assert_eq!(got, Some((1, "dest".into(), true)), "{path}");
            assert_eq!(
                fs.nodes, before,
                "{path}: nothing left, made directories too"
            );
        }
        // The last component is replaced, never followed.
        let mut fs = planted();
        assert_eq!(
            refusal(
                &mut fs,
                vec![res("/tmp", false, vec![file("/tmp/x", b"n")])]
            ),
            None
        );
        assert_eq!(fs.nodes["/tmp/x"], Node::File(b"n".to_vec(), 0o640));
        assert!(fs.nodes.contains_key("/.lessl"));
    }

    #[test]
    fn archive_entries_name_data_and_links_are_placed_together() {
        let mut fs = planted();
        let link = |path: &str, kind, to: &str| PlaceEntry {
            path: path.into(),
            kind,
            mode: 0o777,
            link: to.into(),
            data: String::new(),
            size: None,
        };
        let dir = PlaceEntry {
            kind: EntryKind::Dir,
            mode: 0o750,
            ..link("/srv/t/d", EntryKind::Dir, "")
        };
        let got = refusal(
            &mut fs,
            vec![res(
                "/srv/t",
                true,
                vec![
                    dir,
                    file("/srv/t/d/a", b"a"),
                    link("/srv/t/d/s", EntryKind::Symlink, "a"),
                    link("/srv/t/d/h", EntryKind::Hardlink, "/srv/t/d/a"),
                ],
            )],
        );
        assert_eq!(got, None);
        assert_eq!(fs.nodes["/srv/t/d/s"], Node::Link("a".into()));
        assert_eq!(fs.nodes["/srv/t/d/h"], fs.nodes["/srv/t/d/a"]);
        // An entry through a planted link is the archive's `data`.
        let mut fs = planted();
        let got = refusal(
            &mut fs,
            vec![res("/tmp", true, vec![file("/tmp/root/proc/x", b"e")])],
        );
        assert_eq!(got, Some((0, "data".into(), true)));
        // A hard link to nothing earlier, and unclean paths, are refused.
        for bad in [
            link("/srv/h", EntryKind::Hardlink, "/etc/passwd"),
            file("/srv/../etc/x", b"e"),
            file("relative", b"e"),
            file("/proc/x", b"e"),
        ] {
            let mut fs = planted();
            let got = refusal(&mut fs, vec![res("/srv", true, vec![bad.clone()])]);
            assert_eq!(got, Some((0, "data".into(), true)), "{bad:?}");
        }
    }

    #[test]
    fn a_failing_write_undoes_the_whole_set() {
        let mut fs = planted();
        fs.fail_after = Some(2);
        let before = fs.nodes.clone();
        let got = refusal(
            &mut fs,
            vec![
                res("/a", false, vec![file("/a/1", b"1")]),
                res("/b/c", false, vec![file("/b/c/2", b"2")]),
                res("/d", false, vec![file("/d/3", b"3")]),
            ],
        );
        assert_eq!(got, Some((2, "dest".into(), false)));
        assert_eq!(fs.nodes, before);
        // A file in the way of a directory, or a directory in the way of a file: the file
        // system's refusal, not the rules'.
        let mut fs = planted();
        let got = refusal(
            &mut fs,
            vec![res("/tmp/f", false, vec![file("/tmp/f/x", b"")])],
        );
        assert_eq!(got, Some((0, "dest".into(), false)));
        let got = refusal(&mut fs, vec![res("/", false, vec![file("/srv", b"")])]);
        assert_eq!(got, Some((0, "dest".into(), false)));
    }

    /// An entry whose bytes come from the payload.
    fn sized(path: &str, n: u64) -> PlaceEntry {
        PlaceEntry {
            data: String::new(),
            size: Some(n),
            ..file(path, b"")
        }
    }

    /// A set of every kind: payload files in two resources (one empty, one in an archive
    /// with a directory, a link and a hard link to it), an inline file between them.
    fn mixed() -> (Place, Vec<u8>) {
        let link = |path: &str, kind, to: &str| PlaceEntry {
            kind,
            link: to.into(),
            ..file(path, b"")
        };
        let place = Place {
            resources: vec![
                res("/srv", false, vec![sized("/srv/a", 5)]),
                res("/opt", false, vec![file("/opt/inline", b"in")]),
                res("/opt", false, vec![sized("/opt/empty", 0)]),
                res(
                    "/srv/t",
                    true,
                    vec![
                        PlaceEntry {
                            kind: EntryKind::Dir,
                            ..file("/srv/t/d", b"")
                        },
                        sized("/srv/t/d/b", 4),
                        link("/srv/t/d/s", EntryKind::Symlink, "b"),
                        link("/srv/t/d/h", EntryKind::Hardlink, "/srv/t/d/b"),
                        sized("/srv/t/c", 3),
                    ],
                ),
            ],
        };
        (place, b"aaaaabbbbccc".to_vec())
    }

    #[test]
    fn a_payload_fed_in_any_pieces_places_the_same_files() {
        let (place, payload) = mixed();
        let mut whole = planted();
        assert_eq!(place_all(&mut whole, place.clone(), &payload).refused, None);
        assert_eq!(whole.nodes["/srv/a"], Node::File(b"aaaaa".to_vec(), 0o640));
        assert_eq!(whole.nodes["/opt/empty"], Node::File(Vec::new(), 0o640));
        assert_eq!(
            whole.nodes["/srv/t/d/h"],
            Node::File(b"bbbb".to_vec(), 0o640)
        );
        assert_eq!(whole.nodes["/srv/t/c"], Node::File(b"ccc".to_vec(), 0o640));
        assert!(!whole.nodes.keys().any(|k| k.contains(".tmp")));
        // Every cut into two pieces, and byte by byte (with empty pieces between).
        let mut splits: Vec<Vec<&[u8]>> = (0..=payload.len())
            .map(|at| vec![&payload[..at], &payload[at..]])
            .collect();
        splits.push(payload.chunks(1).flat_map(|b| [b, &[][..]]).collect());
        for pieces in splits {
            let mut fs = planted();
            let mut placing = Placing::start(&mut fs, place.clone());
            for piece in &pieces {
                placing.feed(&mut fs, piece);
            }
            assert_eq!(placing.finish(&mut fs).refused, None, "{pieces:?}");
            assert_eq!(fs.nodes, whole.nodes, "{pieces:?}");
        }
    }

    #[test]
    fn a_write_failing_midway_places_nothing_and_takes_the_rest() {
        let (place, payload) = mixed();
        // The failure lands in each payload file in turn: the first, and the archive's two.
        // (The inline file between them takes two bytes of the count.)
        for (fail_at, index) in [(2, 0), (7, 3), (12, 3)] {
            let mut fs = planted();
            let before = fs.nodes.clone();
            fs.fail_write_at = Some(fail_at);
            let mut placing = Placing::start(&mut fs, place.clone());
            for byte in payload.chunks(1) {
                placing.feed(&mut fs, byte);
            }
            let refused = placing.finish(&mut fs).refused.expect("refused");
            assert_eq!(
                (refused.index, refused.forbidden),
                (index, false),
                "{fail_at}"
            );
            assert!(
                refused.reason.contains("No space left"),
                "{}",
                refused.reason
            );
            assert_eq!(fs.nodes, before, "{fail_at}: nothing left");
        }
    }

    #[test]
    fn bytes_beyond_what_the_entries_announce_are_refused() {
        let (place, mut payload) = mixed();
        payload.push(b'x');
        let mut fs = planted();
        let before = fs.nodes.clone();
        let refused = place_all(&mut fs, place, &payload).refused.unwrap();
        assert!(
            refused.forbidden && refused.reason.contains("more bytes"),
            "{refused:?}"
        );
        assert_eq!(fs.nodes, before);
    }
}
