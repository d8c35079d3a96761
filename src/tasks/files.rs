//! Turns a task's resources into the one plain tar archive uploaded at `/` before its
//! commands run, or into the same entries as a placement request for the agent. Pure: bytes
//! in, bytes out.

use std::borrow::Cow;

use crate::spec::{Content, Resource};
use crate::tar::{self, TarBuilder};

/// A resource that cannot be packed, naming it (`resources[1].data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackError {
    pub field: String,
    pub message: String,
}

/// The archive for `resources`, or None when there is nothing to place. Paths are absolute
/// in the spec and relative to `/` in the archive.
pub fn pack(resources: &[Resource], mtime: u64) -> Result<Option<Vec<u8>>, PackError> {
    pack_at(resources, mtime, ROOT_RESERVED)
}

/// Top-level names an archive unpacked at `/` must not touch: Lessl's agent lives in
/// `.lessl` (the contract keeps it out of reach of every spec field, archives included) and
/// the kernel provides the others. Relative, as archive entries are.
const ROOT_RESERVED: &[&str] = &[".lessl", "proc", "sys", "dev"];

/// [`pack`], refusing entries under `reserved` (relative to where the archive unpacks).
fn pack_at(
    resources: &[Resource],
    mtime: u64,
    reserved: &[&str],
) -> Result<Option<Vec<u8>>, PackError> {
    if resources.is_empty() {
        return Ok(None);
    }
    let mut builder = TarBuilder::new(mtime).reserving(reserved);
    for r in resources {
        let rel = r.path.trim_start_matches('/').trim_end_matches('/');
        let fail = |e: tar::TarError, what: &str| PackError {
            field: format!("{}.{what}", r.field),
            message: e.to_string(),
        };
        match &r.content {
            Content::File(data) => builder
                .file(rel, r.mode, data)
                .map_err(|e| fail(e, "dest"))?,
            // An archive at `/` has an empty prefix: its entries land at the root as they are.
            Content::Archive(bytes) => {
                tar::rebase(bytes, rel, &mut builder).map_err(|e| fail(e, "data"))?
            }
            // Downloads are fetched (and replaced by their bytes) before packing.
            Content::Download { url, .. } => {
                return Err(PackError {
                    field: format!("{}.src", r.field),
                    message: format!("{url} was not downloaded before packing"),
                })
            }
        }
    }
    Ok(Some(builder.finish()))
}

/// The bytes that follow a placement on the agent's lane, one part per entry with a `size`.
pub type Payload<'a> = Vec<Cow<'a, [u8]>>;

/// The request for the agent to write `resources` itself (in a running container), under the
/// very rules [`pack`] applies: each resource is built as its own archive (so a refusal names
/// it) and its entries sent as they would be extracted. With it, the bytes of each entry that
/// has a `size`, in order: a file resource's own (never copied), an archive's entries' copied
/// out of it. None when there is nothing to place.
pub fn placement(
    resources: &[Resource],
    mtime: u64,
) -> Result<Option<(crate::agent::protocol::Place, Payload<'_>)>, PackError> {
    use crate::agent::protocol::{EntryKind, Place, PlaceEntry, PlaceResource};
    if resources.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(resources.len());
    let mut payload = Vec::new();
    for r in resources {
        let mut builder = TarBuilder::new(mtime).reserving(ROOT_RESERVED);
        let rel = r.path.trim_start_matches('/').trim_end_matches('/');
        let fail = |e: tar::TarError, what: &str| PackError {
            field: format!("{}.{what}", r.field),
            message: e.to_string(),
        };
        // A file's bytes go straight from the resource: the builder checks only its name.
        let (archive, own) = match &r.content {
            Content::File(data) => {
                builder
                    .file(rel, r.mode, &[])
                    .map_err(|e| fail(e, "dest"))?;
                (false, Some(data.as_slice()))
            }
            Content::Archive(bytes) => {
                tar::rebase(bytes, rel, &mut builder).map_err(|e| fail(e, "data"))?;
                (true, None)
            }
            Content::Download { url, .. } => {
                return Err(PackError {
                    field: format!("{}.src", r.field),
                    message: format!("{url} was not downloaded before placing"),
                })
            }
        };
        let entries = builder
            .entries()
            .map(|e| PlaceEntry {
                path: format!("/{}", e.name),
                kind: match e.kind {
                    tar::Kind::File => EntryKind::File,
                    tar::Kind::Dir => EntryKind::Dir,
                    tar::Kind::Symlink => EntryKind::Symlink,
                    tar::Kind::Hardlink => EntryKind::Hardlink,
                },
                mode: e.mode,
                link: match e.kind {
                    tar::Kind::Hardlink => format!("/{}", e.link),
                    _ => e.link.to_string(),
                },
                data: String::new(),
                size: match (e.kind, own) {
                    (tar::Kind::File, Some(data)) if !data.is_empty() => {
                        payload.push(Cow::Borrowed(data));
                        Some(data.len() as u64)
                    }
                    _ if !e.data.is_empty() => {
                        payload.push(Cow::Owned(e.data.to_vec()));
                        Some(e.data.len() as u64)
                    }
                    _ => None,
                },
            })
            .collect();
        out.push(PlaceResource {
            home: format!("/{}", home_of(r).trim_start_matches('/')),
            archive,
            entries,
        });
    }
    Ok(Some((Place { resources: out }, payload)))
}

/// Why the destinations of a task's resources could not be checked in its container.
#[derive(Debug)]
pub enum ReachError<E> {
    /// A destination leads into a reserved directory (through a symlink already there).
    Refused(PackError),
    /// Looking a path up failed.
    Stat(E),
}

/// Checks, in a container that already ran commands, that no resource lands in a reserved
/// directory (`/.lessl`, `/proc`...) through a symlink planted there: the engine unpacks an
/// archive following the symlinks of each entry's parent directories. `stat(path)` says
/// whether `path` exists and, for a symlink, where it leads (fully resolved from the
/// container's root, as Docker answers). Only the directories above a file (an archive's
/// `dest` and above) matter: the last component is replaced, never followed, on extraction.
/// A task could still swap a directory for a link between this check and the upload; that
/// only changes which of its own container's directories the file lands in.
pub async fn check_reachable<E, F, Fut>(
    resources: &[Resource],
    mut stat: F,
) -> Result<(), ReachError<E>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>, E>>,
{
    // Entries of one archive share most of their directories: each is looked up once.
    let mut seen: std::collections::HashMap<String, Option<String>> = Default::default();
    for r in resources {
        for (dir, what) in chains(r)? {
            let refused = |via: &str, lands: &str| {
                ReachError::Refused(PackError {
                    field: format!("{}.{what}", r.field),
                    message: format!(
                        "{} goes through {} into {lands}, which is reserved for Lessl or the kernel",
                        r.path,
                        if via.is_empty() { "/" } else { via }
                    ),
                })
            };
            // The directories resolved so far; "" is the root.
            let mut at = String::new();
            for part in dir.split('/').filter(|p| !p.is_empty()) {
                let next = format!("{at}/{part}");
                if crate::spec::is_reserved(&next) {
                    return Err(refused(&at, &next));
                }
                let found = match seen.get(&next) {
                    Some(found) => found.clone(),
                    None => {
                        let found = stat(next.clone()).await.map_err(ReachError::Stat)?;
                        seen.insert(next.clone(), found.clone());
                        found
                    }
                };
                match found {
                    // Missing: the engine creates it and what is below it as directories.
                    None => break,
                    Some(link) if !link.is_empty() => {
                        let target = link.trim_end_matches('/');
                        if crate::spec::is_reserved(target) {
                            return Err(refused(&next, target));
                        }
                        at = target.to_string();
                    }
                    Some(_) => at = next,
                }
            }
        }
    }
    Ok(())
}

/// The directories the engine walks (following symlinks) to place `r`, each with the field
/// that put it there: the resource's home (`dest`), and for an archive the parent directory of
/// every entry (`data`).
fn chains<E>(r: &Resource) -> Result<Vec<(String, &'static str)>, ReachError<E>> {
    let home = home_of(r).to_string();
    let mut out = vec![(home.clone(), "dest")];
    if let Content::Archive(bytes) = &r.content {
        let names = crate::tar::entry_names(bytes).map_err(|e| {
            ReachError::Refused(PackError {
                field: format!("{}.data", r.field),
                message: e.to_string(),
            })
        })?;
        let mut dirs: Vec<String> = names
            .iter()
            .filter_map(|n| n.rsplit_once('/').map(|(dir, _)| format!("{home}/{dir}")))
            .collect();
        dirs.sort();
        dirs.dedup();
        out.extend(dirs.into_iter().map(|d| (d, "data")));
    }
    Ok(out)
}

/// Archives to upload, each with the directory it unpacks at.
pub type Uploads = Vec<(String, Vec<u8>)>;

/// What a task's resources become: one archive at `/`, or with a read-only root, one per
/// writable directory.
pub fn uploads(
    resources: &[Resource],
    read_only: bool,
    pwd: Option<&str>,
    mtime: u64,
) -> Result<Uploads, PackError> {
    if read_only {
        let dirs = writable_dirs(resources, pwd)?;
        return pack_into(resources, &dirs, mtime);
    }
    Ok(pack(resources, mtime)?
        .map(|tar| ("/".to_string(), tar))
        .into_iter()
        .collect())
}

/// The directory a resource needs to be writable: a file's parent, an archive's `dest`.
fn home_of(r: &Resource) -> &str {
    match r.content {
        Content::Archive(_) | Content::Download { archive: true, .. } => {
            r.path.trim_end_matches('/')
        }
        Content::File(_) | Content::Download { archive: false, .. } => {
            r.path.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("")
        }
    }
}

fn under(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{dir}/"))
}

/// The directories a task with a read-only root needs writable: `/tmp`, its `pwd`, and the
/// home of each resource, with nested ones folded into their ancestors.
pub fn writable_dirs(resources: &[Resource], pwd: Option<&str>) -> Result<Vec<String>, PackError> {
    let mut dirs: Vec<String> = vec!["/tmp".to_string()];
    dirs.extend(pwd.map(|p| p.trim_end_matches('/').to_string()));
    for r in resources {
        let home = home_of(r);
        if home.is_empty() {
            return Err(PackError {
                field: format!("{}.dest", r.field),
                message: "with read_only, files need a directory of their own, not `/`".into(),
            });
        }
        dirs.push(home.to_string());
    }
    dirs.sort();
    dirs.dedup();
    let folded: Vec<String> = dirs
        .iter()
        .filter(|d| !dirs.iter().any(|o| o != *d && under(d, o)))
        .cloned()
        .collect();
    Ok(folded)
}

/// One archive per writable directory holding resources, its entries relative to it: a
/// read-only root takes uploads only onto its volumes.
pub fn pack_into(
    resources: &[Resource],
    dirs: &[String],
    mtime: u64,
) -> Result<Vec<(String, Vec<u8>)>, PackError> {
    let mut out = Vec::new();
    for dir in dirs {
        let inside: Vec<Resource> = resources
            .iter()
            .filter(|r| under(&r.path, dir))
            .map(|r| Resource {
                path: format!("/{}", r.path[dir.len()..].trim_start_matches('/')),
                ..r.clone()
            })
            .collect();
        // Never `/` (writable_dirs refuses it), so nothing here can reach the root's names.
        if let Some(tar) = pack_at(&inside, mtime, &[])? {
            out.push((dir.clone(), tar));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(field: &str, path: &str) -> Resource {
        Resource {
            field: field.into(),
            path: path.into(),
            content: Content::File(b"x".to_vec()),
            mode: 0o644,
        }
    }

    #[test]
    fn writable_dirs_fold_nested_ones() {
        let rs = [
            file("r0", "/opt/app/run.sh"),
            file("r1", "/opt/app/lib/x"),
            file("r2", "/etc/app.conf"),
        ];
        let dirs = writable_dirs(&rs, Some("/opt")).unwrap();
        assert_eq!(dirs, ["/etc", "/opt", "/tmp"]);
        let e = writable_dirs(&[file("resources[3]", "/top")], None).unwrap_err();
        assert_eq!(e.field, "resources[3].dest");
    }

    fn archive(field: &str, dest: &str, entries: &[(&str, Option<&str>)]) -> Resource {
        // (name, None) is a file; (name, Some(target)) a hard link to target, in this order.
        // The builder refuses a forward link, so links are written as raw headers.
        let mut bytes = Vec::new();
        for (name, link) in entries {
            match link {
                None => {
                    let mut one = TarBuilder::new(0);
                    one.file(name, 0o644, b"x").unwrap();
                    bytes.extend_from_slice(&one.finish()[..1024]);
                }
                Some(target) => bytes.extend(crate::tar::raw_hardlink_for_tests(name, target)),
            }
        }
        bytes.resize(bytes.len() + 1024, 0);
        Resource {
            field: field.into(),
            path: dest.into(),
            content: Content::Archive(bytes),
            mode: 0o644,
        }
    }

    #[test]
    fn an_archive_at_the_root_cannot_reach_reserved_directories() {
        for name in [".lessl/lessl", ".lessl", "proc/x", "dev/null"] {
            let e = pack(&[archive("resources[1]", "/", &[(name, None)])], 0).unwrap_err();
            assert_eq!(e.field, "resources[1].data", "{name}");
        }
        // Elsewhere the same names are ordinary ones.
        assert!(pack(&[archive("r", "/opt", &[(".lessl/x", None)])], 0).is_ok());
        assert!(pack(&[archive("r", "/", &[(".lesslx/y", None)])], 0).is_ok());
    }

    #[test]
    fn a_hard_link_must_name_an_earlier_entry() {
        let forward = archive("resources[0]", "/srv", &[("a", Some("b")), ("b", None)]);
        assert_eq!(pack(&[forward], 0).unwrap_err().field, "resources[0].data");
        let missing = archive("resources[0]", "/srv", &[("a", Some("etc/passwd"))]);
        assert_eq!(pack(&[missing], 0).unwrap_err().field, "resources[0].data");
        let backward = archive("resources[0]", "/srv", &[("b", None), ("a", Some("b"))]);
        assert!(pack(&[backward], 0).is_ok());
    }

    #[test]
    fn placement_sends_what_the_archive_holds_under_the_same_refusals() {
        use crate::agent::protocol::EntryKind;
        let rs = [
            file("resources[0]", "/opt/job.sh"),
            archive("resources[1]", "/srv", &[("a/b", None), ("c", Some("a/b"))]),
        ];
        let (mut p, payload) = placement(&rs, 0).unwrap().unwrap();
        // The file's byte, then the archive's one file (the hard link carries none).
        assert_eq!(payload, [&b"x"[..], &b"x"[..]]);
        assert_eq!(p.payload_len(), 2);
        p.inline(&payload);
        assert_eq!(p.payload_len(), 0);
        let (f, a) = (&p.resources[0], &p.resources[1]);
        assert_eq!((f.home.as_str(), f.archive), ("/opt", false));
        assert_eq!(f.entries[0].path, "/opt/job.sh");
        assert_eq!(
            (f.entries[0].kind, f.entries[0].mode),
            (EntryKind::File, 0o644)
        );
        assert_eq!(f.entries[0].data, "eA==");
        assert_eq!((a.home.as_str(), a.archive), ("/srv", true));
        let got: Vec<(&str, EntryKind, &str)> = a
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind, e.link.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/srv/a/b", EntryKind::File, ""),
                ("/srv/c", EntryKind::Hardlink, "/srv/a/b")
            ]
        );
        assert_eq!(placement(&[], 0).unwrap(), None);
        for bad in [
            archive("resources[1]", "/", &[(".lessl/x", None)]),
            archive("resources[1]", "/srv", &[("a", Some("b")), ("b", None)]),
        ] {
            let e = placement(&[file("r", "/ok"), bad], 0).unwrap_err();
            assert_eq!(e.field, "resources[1].data");
        }
    }

    /// A container's paths for `check_reachable`: path to Some(link target or "").
    fn stat_in(
        fs: &'static [(&'static str, &'static str)],
    ) -> impl FnMut(String) -> std::future::Ready<Result<Option<String>, ()>> {
        move |p: String| {
            let found = fs.iter().find(|(path, _)| *path == p);
            std::future::ready(Ok(found.map(|(_, link)| link.to_string())))
        }
    }

    fn reach(rs: &[Resource], fs: &'static [(&'static str, &'static str)]) -> Result<(), String> {
        let run = check_reachable(rs, stat_in(fs));
        match tokio_test_block_on(run) {
            Ok(()) => Ok(()),
            Err(ReachError::Refused(e)) => Err(e.field),
            Err(ReachError::Stat(())) => Err("stat".into()),
        }
    }

    fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_planted_symlink_cannot_lead_a_resource_into_lessl() {
        const FS: &[(&str, &str)] = &[
            ("/tmp", ""),
            ("/tmp/l", "/.lessl"),
            ("/tmp/root", "/"),
            ("/tmp/ok", "/srv"),
            ("/srv", ""),
            ("/.lessl", ""),
        ];
        assert_eq!(
            reach(&[file("resources[0]", "/tmp/l/evil")], FS),
            Err("resources[0].dest".into())
        );
        assert_eq!(
            reach(
                &[file("r", "/a"), file("resources[1]", "/tmp/root/.lessl/x")],
                FS
            ),
            Err("resources[1].dest".into())
        );
        // The last component is replaced on extraction, never followed.
        assert_eq!(reach(&[file("r", "/tmp/l")], FS), Ok(()));
        assert_eq!(
            reach(&[file("r", "/tmp/ok/x"), file("r", "/new/dir/x")], FS),
            Ok(())
        );
    }

    #[test]
    fn a_planted_symlink_inside_an_archive_s_dest_is_found_too() {
        const FS: &[(&str, &str)] = &[("/srv", ""), ("/srv/x", "/.lessl")];
        let tar = archive("resources[0]", "/srv", &[("x/evil", None)]);
        assert_eq!(reach(&[tar], FS), Err("resources[0].data".into()));
        let at_root = archive("resources[2]", "/", &[("srv/x/evil", None)]);
        assert_eq!(reach(&[at_root], FS), Err("resources[2].data".into()));
        let fine = archive("r", "/srv", &[("y/ok", None), ("x", None)]);
        assert_eq!(reach(&[fine], FS), Ok(()));
    }

    #[test]
    fn archives_are_rooted_at_their_directory() {
        let rs = [file("r0", "/opt/app/run.sh"), file("r1", "/etc/app.conf")];
        let dirs = writable_dirs(&rs, None).unwrap();
        let packed = pack_into(&rs, &dirs, 0).unwrap();
        let names: Vec<&str> = packed.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(names, ["/etc", "/opt/app"]);
        // The entry under /opt/app is `run.sh`, not `opt/app/run.sh`.
        let (_, tar) = &packed[1];
        assert_eq!(&tar[..6], b"run.sh");
    }
}
