//! Turns a task's resources into the one plain tar archive uploaded at `/` before its
//! commands run. Pure: bytes in, bytes out.

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
    if resources.is_empty() {
        return Ok(None);
    }
    let mut builder = TarBuilder::new(mtime);
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
