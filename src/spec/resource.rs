//! The `resources` of a task: files (embedded, downloaded, or archives to unpack) and
//! mounts (named volumes or host directories the operator allowed), each checked on its own,
//! and the paths no resource may reach. Pure: `src` URLs are parsed, never fetched.

use std::borrow::Cow;

use base64::Engine as _;

use super::fields::{check_abs_path, is_docker_name};
use super::{BindRule, Bounds, Content, Mount, MountSource, RawResource, Resource, SpecError};

/// Paths Lessl itself owns or the kernel provides: no file or mount may land there.
const RESERVED: [&str; 4] = ["/.lessl", "/proc", "/sys", "/dev"];

/// Whether `path` (absolute, normalised) is or is under a reserved directory.
pub fn is_reserved(path: &str) -> bool {
    RESERVED
        .iter()
        .any(|r| path == *r || path.starts_with(&format!("{r}/")))
}

/// The error for a path under [`RESERVED`], naming them all.
pub(super) fn reserved(field: &str) -> SpecError {
    let (last, rest) = RESERVED.split_last().expect("RESERVED is not empty");
    SpecError::invalid(
        field,
        format!("must not be under {} or {last}", rest.join(", ")),
    )
}

/// What one entry of `resources` asks for.
enum Placed {
    File {
        path: String,
        content: Content,
        mode: u32,
    },
    Mount(Mount),
}

/// Every entry of `resources`, files in order, mounts into `mounts` (a mount target at most
/// once). `long` holds the `data` the parser left in the body, by entry index. Errors are
/// prefixed with the entry's path, `resources[i]`.
pub(super) fn resources(
    raw: Option<Vec<RawResource>>,
    long: &[(usize, &str)],
    bounds: &Bounds,
    mounts: &mut Vec<Mount>,
) -> Result<Vec<Resource>, SpecError> {
    let mut files = Vec::new();
    for (i, mut r) in raw.unwrap_or_default().into_iter().enumerate() {
        let field = format!("resources[{i}]");
        let long = long.iter().find(|(at, _)| *at == i).map(|(_, text)| *text);
        let data = match (r.data.take(), long) {
            // The parser left an empty string in the text's place.
            (Some(placeholder), Some(text)) if placeholder.is_empty() => Some(Cow::Borrowed(text)),
            (data, _) => data.map(Cow::Owned),
        };
        match parse_resource(r, data, bounds).map_err(|e| e.prefixed(&field))? {
            Placed::File {
                path,
                content,
                mode,
            } => files.push(Resource {
                field,
                path,
                content,
                mode,
            }),
            Placed::Mount(mut m) => {
                if mounts.iter().any(|o| o.target == m.target) {
                    return Err(SpecError::invalid(
                        format!("{field}.mnt"),
                        format!("{} is mounted twice", m.target),
                    ));
                }
                m.field = field;
                mounts.push(m);
            }
        }
    }
    Ok(files)
}

/// One entry; its `data` apart, borrowed from the body when it was long.
fn parse_resource(
    r: RawResource,
    data: Option<Cow<'_, str>>,
    bounds: &Bounds,
) -> Result<Placed, SpecError> {
    if let Some(mnt) = &r.mnt {
        return mount_only(&r, data.is_some(), mnt, bounds).map(Placed::Mount);
    }
    let dest = destination(r.dest)?;
    let content_type = r.content_type.unwrap_or_else(|| "text/plain".into());
    let tar = is_tar_type(&content_type);
    let mode = mode(r.mode.as_deref(), tar)?;
    let path = file_path(dest, r.src.as_deref(), tar)?;
    let content = match (data, r.src) {
        (Some(data), _) => content(data, &content_type, tar, bounds)?,
        (None, Some(url)) => Content::Download { url, archive: tar },
        (None, None) => {
            return Err(SpecError::invalid(
                "data",
                "a resource needs `data`, `src` or `mnt`",
            ))
        }
    };
    Ok(Placed::File {
        path,
        content,
        mode,
    })
}

/// A `mnt` entry, which takes no other field.
fn mount_only(r: &RawResource, data: bool, mnt: &str, bounds: &Bounds) -> Result<Mount, SpecError> {
    let extra = [
        ("content_type", r.content_type.is_some()),
        ("data", data),
        ("src", r.src.is_some()),
        ("dest", r.dest.is_some()),
        ("mode", r.mode.is_some()),
    ];
    if let Some((name, _)) = extra.iter().find(|(_, given)| *given) {
        return Err(SpecError::invalid(
            *name,
            "a `mnt` resource takes no other field",
        ));
    }
    parse_mount(mnt, bounds).map_err(|m| SpecError::invalid("mnt", m))
}

/// Paths one task may `collect` at most: each is one archive read per run.
pub const MAX_COLLECT_PATHS: usize = 64;

/// `collect`: absolute paths under the `dest` rules, not the root, each once; a trailing
/// '/' is dropped.
pub(super) fn collect(raw: Option<Vec<String>>) -> Result<Vec<String>, SpecError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_COLLECT_PATHS {
        return Err(SpecError::invalid(
            "collect",
            format!("at most {MAX_COLLECT_PATHS} paths"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let field = format!("collect[{i}]");
        let path = collect_path(&p).map_err(|m| SpecError::invalid(&field, m))?;
        if out.contains(&path) {
            return Err(SpecError::invalid(field, format!("`{path}` appears twice")));
        }
        out.push(path);
    }
    Ok(out)
}

/// A path files are read out of (`collect`, `GET /tasks/{ref}/files/...`): absolute, clean,
/// not the root and nowhere reserved; returned without a trailing '/'.
pub fn collect_path(p: &str) -> Result<String, String> {
    check_abs_path(p)?;
    let path = p.trim_end_matches('/');
    if path.is_empty() {
        return Err("the root cannot be read out; name a directory".into());
    }
    if is_reserved(path) {
        let (last, rest) = RESERVED.split_last().expect("RESERVED is not empty");
        return Err(format!("must not be under {} or {last}", rest.join(", ")));
    }
    Ok(path.to_string())
}

/// `dest`: required, absolute, and nowhere reserved.
fn destination(dest: Option<String>) -> Result<String, SpecError> {
    let dest = dest.ok_or_else(|| SpecError::invalid("dest", "required"))?;
    check_abs_path(&dest).map_err(|m| SpecError::invalid("dest", m))?;
    if is_reserved(&dest) {
        return Err(reserved("dest"));
    }
    Ok(dest)
}

/// The file's mode, 0644 unless given; an archive keeps the modes of its entries.
fn mode(raw: Option<&str>, tar: bool) -> Result<u32, SpecError> {
    match raw {
        None => Ok(0o644),
        Some(_) if tar => Err(SpecError::invalid("mode", "an archive keeps its own modes")),
        Some(m) => parse_mode(m).ok_or_else(|| {
            SpecError::invalid(
                "mode",
                format!("`{m}` is not an octal mode such as \"0755\""),
            )
        }),
    }
}

/// Where the file lands. With `src`, `dest` is a directory and the file is named after the
/// URL's last segment (an archive unpacks into `dest` itself).
fn file_path(dest: String, src: Option<&str>, tar: bool) -> Result<String, SpecError> {
    if let Some(src) = src {
        crate::fetch::parse_url(src).map_err(|e| SpecError::invalid("src", e.to_string()))?;
    }
    let path = match src {
        Some(src) if !tar => {
            let name = url_file_name(src).ok_or_else(|| {
                SpecError::invalid(
                    "src",
                    "cannot name the file: the URL's path has no last segment",
                )
            })?;
            format!("{}/{}", dest.trim_end_matches('/'), name)
        }
        _ => dest,
    };
    if path == "/" && !tar {
        return Err(SpecError::invalid("dest", "a file cannot be placed at `/`"));
    }
    Ok(path)
}

/// Embedded `data`: literal text for text types, base64 for the rest, within the size cap.
fn content(
    data: Cow<'_, str>,
    content_type: &str,
    tar: bool,
    bounds: &Bounds,
) -> Result<Content, SpecError> {
    let bytes = if is_text_type(content_type) {
        data.into_owned().into_bytes()
    } else {
        if data.len() / 4 * 3 > (bounds.resource_max_bytes + 3) * 2 {
            return Err(too_large(bounds));
        }
        // Unwrapped base64 (what programs send) decodes as it is, without a copy.
        let decoded = crate::b64::decode(data.as_bytes());
        if let Ok(bytes) = decoded.as_ref() {
            if bytes.len() > bounds.resource_max_bytes {
                return Err(too_large(bounds));
            }
        }
        // Wrapped base64 (76-column lines) is common in hand-written specs.
        let compact: Vec<u8> = match decoded {
            Ok(_) => Vec::new(),
            Err(_) => data.bytes().filter(|b| !b.is_ascii_whitespace()).collect(),
        };
        if compact.len() / 4 * 3 > bounds.resource_max_bytes + 3 {
            return Err(too_large(bounds));
        }
        decoded
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(&compact))
            .map_err(|e| {
                SpecError::invalid(
                    "data",
                    format!("not valid base64 for `{content_type}`: {e}"),
                )
            })?
    };
    if bytes.len() > bounds.resource_max_bytes {
        return Err(too_large(bounds));
    }
    Ok(if tar {
        Content::Archive(bytes)
    } else {
        Content::File(bytes)
    })
}

/// Types whose `data` is literal UTF-8 text rather than base64.
fn is_text_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/ecmascript"
                | "application/x-sh"
                | "application/x-shellscript"
                | "application/x-python"
                | "application/x-yaml"
                | "application/yaml"
                | "application/toml"
                | "application/sql"
        )
}

fn is_tar_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/x-tar")
        || essence.eq_ignore_ascii_case("application/tar")
}

/// `"0755"`, `"755"` or `"0o755"`: permission bits, at most 07777.
fn parse_mode(m: &str) -> Option<u32> {
    let digits = m.strip_prefix("0o").unwrap_or(m);
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|v| *v <= 0o7777)
}

/// Docker's short syntax `SOURCE:/target[:ro|:rw]`, with a named volume or an allowed host path.
fn parse_mount(spec: &str, bounds: &Bounds) -> Result<Mount, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [s, t] => (*s, *t, false),
        [s, t, "ro"] => (*s, *t, true),
        [s, t, "rw"] => (*s, *t, false),
        _ => {
            return Err(format!(
                "`{spec}` is not NAME:/path, NAME:/path:ro or /host:/path[:ro]"
            ))
        }
    };
    check_abs_path(target)?;
    if target == "/" || is_reserved(target) {
        return Err(format!("cannot mount over {target}"));
    }
    let source = if source.starts_with('/') {
        let path = normalise_host_path(source)?;
        let rule = bind_rule_for(&path, read_only, &bounds.binds)?;
        MountSource::Host { path, rule }
    } else {
        check_volume_name(source)?;
        MountSource::Volume(source.to_string())
    };
    Ok(Mount {
        field: String::new(),
        source,
        target: target.to_string(),
        read_only,
    })
}

/// Volume names as tasks give them: Docker's alphabet, short enough to prefix.
pub fn check_volume_name(name: &str) -> Result<(), String> {
    if is_docker_name(name) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is neither a volume name (1 to 64 of [A-Za-z0-9_.-]) nor an absolute host path"
        ))
    }
}

/// The operator's rule that lets a task mount host `path`, or why none does.
fn bind_rule_for(path: &str, read_only: bool, rules: &[BindRule]) -> Result<BindRule, String> {
    let under = |dir: &str| path == dir || path.starts_with(&format!("{dir}/"));
    if let Some(rule) = rules.iter().find(|r| r.dir == path && !r.tree) {
        return Ok(rule.clone());
    }
    if let Some(rule) = rules.iter().find(|r| r.tree && under(&r.dir)) {
        if !read_only {
            return Err(format!(
                "{} is opened read-only (--allow-bind {}:ro): mount it with `:ro`",
                path, rule.dir
            ));
        }
        return Ok(rule.clone());
    }
    if let Some(rule) = rules.iter().find(|r| under(&r.dir)) {
        return Err(format!(
            "only {dir} itself may be mounted, not a directory under it: tasks can write in \
             {dir} and plant symlinks the engine would follow on the host (the operator can \
             open a tree read-only with --allow-bind DIR:ro)",
            dir = rule.dir
        ));
    }
    Err(format!(
        "host path {path} is not a directory the operator allowed (--allow-bind)"
    ))
}

/// Collapses duplicate slashes and a trailing slash; `.` and `..` are refused, not resolved,
/// so what is checked against the allowed directories is what the engine is asked to mount.
pub fn normalise_host_path(p: &str) -> Result<String, String> {
    if p.contains('\0') {
        return Err("host path contains a NUL byte".into());
    }
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(format!("host path `{p}` has a `.` or `..` component"));
    }
    Ok(format!("/{}", parts.join("/")))
}

fn too_large(bounds: &Bounds) -> SpecError {
    SpecError::TooLarge {
        field: "data".into(),
        message: format!(
            "decoded content is over this server's limit of {} bytes",
            bounds.resource_max_bytes
        ),
    }
}

/// The last segment of a URL's path, if it is a usable file name.
pub(super) fn url_file_name(url: &str) -> Option<String> {
    let after_scheme = url.split_once("://").map(|(_, r)| r)?;
    let path = after_scheme.split(['?', '#']).next()?;
    let path = path.split_once('/').map(|(_, p)| p)?;
    let last = path.rsplit('/').next()?;
    let ok = !last.is_empty() && last != "." && last != ".." && !last.contains(['\0', '%', '\\']);
    ok.then(|| last.to_string())
}
