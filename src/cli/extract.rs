//! Writing files that came out of a task under a local directory (`lessl cp`, `lessl run
//! --collect-to`), never outside it: names are clean relative paths (no `..`, not absolute),
//! no directory on the way may be a symlink, and no existing symlink is written through.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::tar::reader::{Event, Kind, Reader};

/// What could not be written, and why; the message names the entry.
#[derive(Debug)]
pub struct ExtractError(pub String);

impl std::fmt::Display for ExtractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse(name: &str, why: impl std::fmt::Display) -> ExtractError {
    ExtractError(format!("`{name}`: {why}"))
}

/// `name` (relative, '/'-separated) as a path under `root`, refusing anything that is not a
/// plain relative path.
fn under(root: &Path, name: &str) -> Result<PathBuf, ExtractError> {
    let rel = Path::new(name);
    if name.is_empty() || name.contains('\0') {
        return Err(refuse(name, "not a file name"));
    }
    let mut out = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return Err(refuse(name, "leaves the target directory")),
        }
    }
    if out == root {
        return Err(refuse(name, "names the target directory itself"));
    }
    Ok(out)
}

/// `name` as a path under `root`, refused when it is not a plain relative path.
pub fn under_checked(root: &Path, name: &str) -> Result<PathBuf, ExtractError> {
    under(root, name)
}

/// Creates the directories between `root` and `path` (not `path` itself), refusing any that
/// exists as something other than a real directory: a symlink there would lead outside.
fn make_parents(root: &Path, path: &Path, name: &str) -> Result<(), ExtractError> {
    let rel = path.strip_prefix(root).expect("under root");
    let mut at = root.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for c in &parents[..parents.len().saturating_sub(1)] {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(refuse(
                    name,
                    format!("{} is not a directory (a symlink?)", at.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&at).map_err(|e| refuse(name, e))?
            }
            Err(e) => return Err(refuse(name, e)),
        }
    }
    Ok(())
}

/// Opens `name` under `root` for writing, replacing a regular file but never following a
/// symlink at any step.
pub fn create_file(root: &Path, name: &str, mode: u32) -> Result<File, ExtractError> {
    let path = under(root, name)?;
    make_parents(root, &path, name)?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode & 0o777)
        .custom_flags(libc_o_nofollow())
        .open(&path)
        .map_err(|e| refuse(name, format!("cannot write {}: {e}", path.display())))?;
    // An existing file keeps its mode on open; the one from the task is wanted.
    file.set_permissions(fs::Permissions::from_mode(mode & 0o777))
        .map_err(|e| refuse(name, e))?;
    Ok(file)
}

/// Makes directory `name` under `root` (and its parents).
pub fn create_dir(root: &Path, name: &str, mode: u32) -> Result<(), ExtractError> {
    let path = under(root, name)?;
    make_parents(root, &path, name)?;
    match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err(refuse(name, "exists and is not a directory")),
        Err(_) => {
            fs::create_dir(&path).map_err(|e| refuse(name, e))?;
            // Owner bits kept writable so the files inside can be written.
            let mode = (mode & 0o777) | 0o700;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(|e| refuse(name, e))
        }
    }
}

/// Makes symlink `name` under `root` pointing at `target` (as written; it is never followed).
pub fn create_symlink(root: &Path, name: &str, target: &str) -> Result<(), ExtractError> {
    let path = under(root, name)?;
    make_parents(root, &path, name)?;
    if fs::symlink_metadata(&path).is_ok() {
        return Err(refuse(name, "already exists"));
    }
    std::os::unix::fs::symlink(target, &path).map_err(|e| refuse(name, e))
}

/// `O_NOFOLLOW` on Linux (all architectures Lessl builds for).
fn libc_o_nofollow() -> i32 {
    if cfg!(any(target_arch = "aarch64", target_arch = "arm")) {
        0o100000
    } else {
        0o400000
    }
}

/// A tar archive unpacked under `root` as it streams in, with the rules above. Hard links and
/// special files are skipped, each named in the returned notes.
pub struct Unpacker {
    root: PathBuf,
    reader: Reader,
    open: Option<File>,
    pub notes: Vec<String>,
}

impl Unpacker {
    pub fn new(root: &Path) -> Unpacker {
        Unpacker {
            root: root.to_path_buf(),
            reader: Reader::new(),
            open: None,
            notes: Vec::new(),
        }
    }

    /// Unpacks the next bytes of the archive.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), ExtractError> {
        loop {
            let event = self
                .reader
                .next(&mut input)
                .map_err(|e| ExtractError(format!("unreadable archive: {e}")))?;
            match event {
                None => return Ok(()),
                Some(Event::End) => {
                    self.open = None;
                    return Ok(());
                }
                Some(Event::Data(d)) => {
                    if let Some(f) = &mut self.open {
                        f.write_all(d).map_err(|e| ExtractError(e.to_string()))?;
                    }
                }
                Some(Event::Member(m)) => {
                    self.open = None;
                    match m.kind {
                        Kind::Dir if m.path.is_empty() => {}
                        Kind::Dir => create_dir(&self.root, &m.path, m.mode)?,
                        Kind::File => self.open = Some(create_file(&self.root, &m.path, m.mode)?),
                        Kind::Symlink => create_symlink(&self.root, &m.path, &m.link)?,
                        Kind::Hardlink => self
                            .notes
                            .push(format!("{}: a hard link to {}, skipped", m.path, m.link)),
                        Kind::Other(_) => self
                            .notes
                            .push(format!("{}: a special file, skipped", m.path)),
                    }
                }
            }
        }
    }

    /// Whether the whole archive was read.
    pub fn finished(&self) -> bool {
        self.reader.is_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::TarBuilder;

    struct Temp(PathBuf);
    impl Temp {
        fn new(tag: &str) -> Temp {
            let dir = std::env::temp_dir().join(format!(
                "lessl-extract-{}-{tag}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Temp(dir)
        }
    }
    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A ustar file header named `name` (no checks: any bytes a hostile engine could send).
    fn raw_file(name: &str, data: &[u8]) -> Vec<u8> {
        let mut block = crate::tar::raw_hardlink_for_tests("placeholder", "x");
        block[..100].fill(0);
        block[..name.len()].copy_from_slice(name.as_bytes());
        block[156] = b'0';
        block[157..257].fill(0);
        block[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        block[148..156].fill(b' ');
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        block.extend_from_slice(data);
        block.resize(block.len().div_ceil(512) * 512, 0);
        block
    }

    fn unpack(root: &Path, tar: &[u8]) -> Result<(), ExtractError> {
        let mut u = Unpacker::new(root);
        for chunk in tar.chunks(100) {
            u.feed(chunk)?;
        }
        Ok(())
    }

    #[test]
    fn a_tree_unpacks_with_modes() {
        let t = Temp::new("tree");
        let mut b = TarBuilder::new(0);
        b.dir("tree", 0o755).unwrap();
        b.file("tree/sub/bin", 0o751, &[0, 1, 2, 255]).unwrap();
        b.symlink("tree/pw", "/etc/passwd").unwrap();
        unpack(&t.0, &b.finish()).unwrap();
        assert_eq!(fs::read(t.0.join("tree/sub/bin")).unwrap(), [0, 1, 2, 255]);
        let mode = fs::metadata(t.0.join("tree/sub/bin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o751);
        assert_eq!(
            fs::read_link(t.0.join("tree/pw")).unwrap(),
            Path::new("/etc/passwd")
        );
    }

    #[test]
    fn hostile_names_never_leave_the_directory() {
        let outer = Temp::new("hostile");
        let root = outer.0.join("root");
        fs::create_dir(&root).unwrap();
        for name in ["../escape", "/abs-escape", "a/../../escape", "./../escape"] {
            let mut tar = raw_file(name, b"pwned");
            tar.extend_from_slice(&[0; 1024]);
            assert!(unpack(&root, &tar).is_err(), "{name}");
        }
        assert!(!outer.0.join("escape").exists());
        assert!(!Path::new("/abs-escape").exists());
        // A symlink of the archive, then a file through it.
        let mut tar = Vec::new();
        let mut b = TarBuilder::new(0);
        b.symlink("link", outer.0.to_str().unwrap()).unwrap();
        let mut first = b.finish();
        first.truncate(first.len() - 1024);
        tar.extend(first);
        tar.extend(raw_file("link/escape", b"pwned"));
        tar.extend_from_slice(&[0; 1024]);
        assert!(unpack(&root, &tar).is_err());
        assert!(!outer.0.join("escape").exists());
        // A symlink already in the directory, as a parent and as the file itself.
        let other = Temp::new("hostile-existing");
        let root = other.0.join("root");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outer.0, root.join("dir")).unwrap();
        std::os::unix::fs::symlink(outer.0.join("target"), root.join("file")).unwrap();
        assert!(create_file(&root, "dir/escape", 0o644).is_err());
        assert!(create_file(&root, "file", 0o644).is_err());
        assert!(!outer.0.join("escape").exists());
        assert!(!outer.0.join("target").exists());
        assert!(under(&root, "").is_err());
        assert!(under(&root, ".").is_err());
    }
}
