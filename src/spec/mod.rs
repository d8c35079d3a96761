//! The task specification v1.0: request bytes in, validated task specs out. Pure data and
//! validation: no I/O, no Docker, no clock; server bounds come in as a parameter.
//!
//! - this file: the validated types, the strict wire format, and [`parse`].
//! - `fields`: one check per task field (version, image, ttl, name, pwd, env, cmd, user).
//! - `resource`: files and mounts, and the paths no resource may reach.
//! - `limits`: resource limits against the server's defaults, maxima and the engine's minimums.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

mod fields;
mod limits;
mod resource;

pub use fields::{check_name, MAX_ARGV_BYTES, MAX_ENV_BYTES};
pub use limits::{MIN_MEMORY_MB, MIN_NANO_CPUS, MIN_PIDS, MIN_TIMEOUT_MS};
use resource::reserved;
pub use resource::{
    check_volume_name, collect_path, is_reserved, normalise_host_path, MAX_COLLECT_PATHS,
};

/// Server-side defaults and maxima a task is validated against (from the configuration).
#[derive(Debug, Clone)]
pub struct Bounds {
    /// TTL when a task names none, seconds.
    pub ttl_default: u64,
    /// Largest TTL a task may ask for, seconds.
    pub ttl_max: u64,
    /// Limits applied when a task asks for none.
    pub limits_default: Limits,
    /// Largest limits a task may ask for.
    pub limits_max: Limits,
    /// Largest decoded size of one embedded resource, bytes.
    pub resource_max_bytes: usize,
    /// Most commands one request may run per task.
    pub max_commands: usize,
    /// Host directories a task may mount (`mnt` with a host path); empty allows none.
    pub binds: Vec<BindRule>,
}

/// A host directory the operator opened to `mnt` (`--allow-bind DIR` or `DIR:ro`).
///
/// The engine resolves a bind's host path itself, following symlinks, so a mount may only
/// name a path that no task could have changed: either `dir` itself, which a task mounting
/// it can fill but never replace, or, for a `tree` opened read-only to every task, any
/// directory under it, since no task can write there to plant a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRule {
    /// Absolute host directory without `.`, `..` or a trailing slash.
    pub dir: String,
    /// `DIR:ro`: `dir` and every directory under it may be mounted, read-only only.
    /// Otherwise only `dir` itself, read-write or read-only.
    pub tree: bool,
}

/// Resource limits of one task; every one is always set (Docker reads 0 as unlimited).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Memory (and memory+swap, so no swap) in MiB.
    pub memory_mb: u64,
    /// CPUs, fractional.
    pub cpus: f64,
    /// Most processes in the container.
    pub pids: u64,
    /// Wall-clock limit per command, seconds.
    pub timeout_s: f64,
    /// Output kept per stream per command, bytes.
    pub output_bytes: u64,
    /// What the task may write to its container's file systems, MiB.
    pub disk_mb: u64,
}

/// A validated task. Field meanings are those of the README's task spec section.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Keep the container running after `cmds`, for later PUTs.
    pub daemon: bool,
    /// Image to create the container from; None is only valid for a PUT into a live task.
    pub image: Option<String>,
    /// Seconds until the container is removed.
    pub ttl: u64,
    /// Whether the task named its TTL; a PUT into a live task must not silently drop one.
    pub ttl_given: bool,
    /// Files placed before the commands run.
    pub resources: Vec<Resource>,
    /// Human-readable name, unique among live tasks.
    pub name: Option<String>,
    /// Absolute working directory of the commands.
    pub pwd: Option<String>,
    /// Environment, sorted by key so containers are created deterministically.
    pub env: Vec<(String, String)>,
    /// Commands, run in order until one fails.
    pub cmds: Vec<Cmd>,
    /// Limits after applying the server defaults.
    pub limits: Limits,
    /// User to run as (`name`, `uid` or `uid:gid`); None is the server's choice.
    pub user: Option<String>,
    /// Volumes and allowed host directories to mount, from `resources[].mnt`.
    pub mounts: Vec<Mount>,
    /// Read-only root filesystem; resources, `pwd` and `/tmp` get writable volumes.
    pub read_only: bool,
    /// Absolute paths read out of the container after each run (`collect`).
    pub collect: Vec<String>,
    /// Where the final view of each run is POSTed (http or https, parsed like `src`; its
    /// destination is checked when it is called, since DNS may change).
    pub callback_url: Option<String>,
}

/// A mount, checked for syntax and against the allowed host directories. What it names on
/// the engine (a volume of this instance, a host path free of symlinks) is checked when the
/// task is created, since that needs I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Field path of the resource that asked for it.
    pub field: String,
    /// What is mounted.
    pub source: MountSource,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

/// The two things a task may mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A named volume as the task calls it; Lessl maps it to a volume of its own instance.
    Volume(String),
    /// A normalised absolute host path, under `rule`'s directory.
    Host { path: String, rule: BindRule },
}

/// One command: a shell string or an exec-form argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run through `/bin/sh -c`.
    Shell(String),
    /// Run directly, no shell involved.
    Exec(Vec<String>),
}

impl Command {
    /// The argv that runs this command inside the container.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Exec(argv) => argv.clone(),
        }
    }
}

/// One element of `cmd`: what to run, and what it reads on its standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    /// The command itself.
    pub run: Command,
    /// Bytes the command reads, then end of file; None: end of file at once.
    pub stdin: Option<Vec<u8>>,
    /// Given as an object (`{"run": ...}`), so its result echoes an object too.
    pub object: bool,
}

impl Cmd {
    /// A bare command (string or array) without stdin.
    pub fn plain(run: Command) -> Cmd {
        Cmd {
            run,
            stdin: None,
            object: false,
        }
    }

    /// The argv that runs this command inside the container.
    pub fn argv(&self) -> Vec<String> {
        self.run.argv()
    }
}

/// A file (or unpacked archive) to place in the container.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Field path of this resource in the request (`resources[2]`), for error messages later on.
    pub field: String,
    /// Absolute path: the file itself, or the directory an archive unpacks into.
    pub path: String,
    /// What goes there.
    pub content: Content,
    /// Permission bits of a file (0644 unless the resource says `mode`).
    pub mode: u32,
}

/// The content of a resource.
#[derive(Debug, Clone)]
pub enum Content {
    /// A regular file with these bytes.
    File(Vec<u8>),
    /// A plain tar archive unpacked at the resource's path.
    Archive(Vec<u8>),
    /// Bytes to fetch from `url` first: a file, or an archive to unpack.
    Download { url: String, archive: bool },
}

/// Why a request body is not a valid task spec. Every variant names the field at fault as a
/// path (`[1].resources[0].dest`); an empty path means the body as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// The body is not JSON, or a field has the wrong type or is unknown.
    Decode { field: String, message: String },
    /// A field has the right type but an unacceptable value.
    Invalid { field: String, message: String },
    /// An embedded resource is larger than the server allows.
    TooLarge { field: String, message: String },
}

impl SpecError {
    /// The path of the field at fault; empty for the body as a whole.
    pub fn field(&self) -> &str {
        match self {
            SpecError::Decode { field, .. }
            | SpecError::Invalid { field, .. }
            | SpecError::TooLarge { field, .. } => field,
        }
    }

    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    fn prefixed(self, prefix: &str) -> Self {
        let join = |field: String| match (prefix.is_empty(), field.is_empty()) {
            (true, _) => field,
            (false, true) => prefix.to_string(),
            (false, false) if field.starts_with('[') => format!("{prefix}{field}"),
            (false, false) => format!("{prefix}.{field}"),
        };
        match self {
            SpecError::Decode { field, message } => SpecError::Decode {
                field: join(field),
                message,
            },
            SpecError::Invalid { field, message } => SpecError::Invalid {
                field: join(field),
                message,
            },
            SpecError::TooLarge { field, message } => SpecError::TooLarge {
                field: join(field),
                message,
            },
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Decode { field, message }
            | SpecError::Invalid { field, message }
            | SpecError::TooLarge { field, message }
                if field.is_empty() =>
            {
                f.write_str(message)
            }
            SpecError::Decode { field, message }
            | SpecError::Invalid { field, message }
            | SpecError::TooLarge { field, message } => write!(f, "{field}: {message}"),
        }
    }
}

impl std::error::Error for SpecError {}

// ---------------------------------------------------------------------------------------------
// Wire format. Strict: unknown fields are refused so a typo is never silently ignored.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    version: Option<Value>,
    daemon: Option<bool>,
    image: Option<String>,
    ttl: Option<i64>,
    resources: Option<Vec<RawResource>>,
    task_name: Option<String>,
    pwd: Option<String>,
    env: Option<BTreeMap<String, String>>,
    cmd: Option<RawCommands>,
    limits: Option<RawLimits>,
    user: Option<String>,
    read_only: Option<bool>,
    collect: Option<Vec<String>>,
    callback_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    content_type: Option<String>,
    data: Option<String>,
    src: Option<String>,
    dest: Option<String>,
    mnt: Option<String>,
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_mb: Option<i64>,
    cpus: Option<f64>,
    pids: Option<i64>,
    timeout_s: Option<f64>,
    output_bytes: Option<i64>,
    disk_mb: Option<i64>,
}

/// `cmd` is a list of commands; a bare string is accepted as a list of one.
enum RawCommands {
    One(String),
    Many(Vec<RawCommand>),
}

/// One command: a string (shell form), an array of strings (exec form), or an object
/// naming one of those as `run` beside its stdin.
struct RawCommand {
    run: Command,
    stdin: Option<String>,
    stdin_base64: Option<String>,
    object: bool,
}

/// The object form of a command.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommandObject {
    run: RawRun,
    stdin: Option<String>,
    stdin_base64: Option<String>,
}

/// What a command runs: a string (shell form) or an array of strings (exec form).
struct RawRun(Command);

impl<'de> Deserialize<'de> for RawCommands {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCommands;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of commands (each a shell string or an array of strings)")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawCommands, E> {
                Ok(RawCommands::One(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCommands, A::Error> {
                let mut out = Vec::new();
                while let Some(c) = seq.next_element::<RawCommand>()? {
                    out.push(c);
                }
                Ok(RawCommands::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawRun {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRun;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a shell string or an array of strings (exec form)")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawRun, E> {
                Ok(RawRun(Command::Shell(s.to_string())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRun, A::Error> {
                let mut argv = Vec::new();
                while let Some(a) = seq.next_element::<String>()? {
                    argv.push(a);
                }
                Ok(RawRun(Command::Exec(argv)))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawCommand {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCommand;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a shell string, an array of strings (exec form), or an object with `run`",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawCommand, E> {
                Ok(RawCommand::bare(Command::Shell(s.to_string())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawCommand, A::Error> {
                let run = RawRun::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(RawCommand::bare(run.0))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawCommand, A::Error> {
                let o = RawCommandObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawCommand {
                    run: o.run.0,
                    stdin: o.stdin,
                    stdin_base64: o.stdin_base64,
                    object: true,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl RawCommand {
    fn bare(run: Command) -> RawCommand {
        RawCommand {
            run,
            stdin: None,
            stdin_base64: None,
            object: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing.

/// A parsed request body.
#[derive(Debug)]
pub struct Request {
    /// The tasks, in request order.
    pub tasks: Vec<TaskSpec>,
    /// Whether the body was an array, so the answer can have the same shape.
    pub is_array: bool,
}

/// Parses a request body: one task object or an array of them. Field paths of an array body
/// start with the element index (`[1].image`).
pub fn parse(body: &[u8], bounds: &Bounds) -> Result<Request, SpecError> {
    let long = std::cell::RefCell::new(Vec::new());
    let value = strict_json(body, &long)?;
    let long = long.into_inner();
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(SpecError::invalid("", "the task array is empty"));
            }
            let tasks = items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    parse_task(v, &long_data_of(&long, Some(i)), bounds)
                        .map_err(|e| e.prefixed(&format!("[{i}]")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            check_unique_names(&tasks)?;
            Ok(Request {
                tasks,
                is_array: true,
            })
        }
        Value::Object(_) => Ok(Request {
            tasks: vec![parse_task(value, &long_data_of(&long, None), bounds)?],
            is_array: false,
        }),
        _ => Err(SpecError::Decode {
            field: String::new(),
            message: "body must be a task object or an array of task objects".into(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Strict JSON: serde_json's own `Value` keeps the last of two equal keys, so a body that says
// `{"ttl": 10, "ttl": 86400}` would mean whatever the last writer wanted while a proxy or a log
// reader in front of Lessl saw the first. The body is read into a `Value` by this visitor
// instead, which refuses a repeated key and names its path.
//
// A resource's `data` may be megabytes (base64 of a file); copying it into the `Value` would
// cost about as much as parsing it. Such a string, when it stands in the body as it is (no
// escapes), stays there: the `Value` holds an empty string in its place, and validation takes
// the text from the body by task and resource index.

/// Strings at a resource's `data` from this long are borrowed from the body, not copied.
const BORROW_FROM: usize = 64 << 10;

/// Where a borrowed `data` stands: the task's index in an array body (None for one task
/// object), the resource's index, and the text.
type LongData<'de> = Vec<(Option<usize>, usize, &'de str)>;

/// The task's index (in an array body) and the resource's, when `path` is a `data` field of
/// a resource: `resources[1].data` or `[0].resources[1].data`.
fn resource_data_at(path: &str) -> Option<(Option<usize>, usize)> {
    let index = |digits: &str| digits.parse::<usize>().ok();
    let rest = path.strip_suffix("].data")?;
    let (task, resource) = rest.split_once("resources[")?;
    let task = match task {
        "" => None,
        t => Some(index(t.strip_prefix('[')?.strip_suffix("].")?)?),
    };
    Some((task, index(resource)?))
}

/// The borrowed `data` texts of one task, by resource index.
fn long_data_of<'de>(long: &LongData<'de>, task: Option<usize>) -> Vec<(usize, &'de str)> {
    long.iter()
        .filter(|(t, _, _)| *t == task)
        .map(|(_, r, text)| (*r, *text))
        .collect()
}

/// Reads one JSON text into a `Value`, refusing repeated keys in any object; long resource
/// `data` goes into `long` instead.
fn strict_json<'de>(
    body: &'de [u8],
    long: &std::cell::RefCell<LongData<'de>>,
) -> Result<Value, SpecError> {
    let duplicate = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let seed = Strict {
        path: String::new(),
        duplicate: &duplicate,
        long,
    };
    let parsed = de::DeserializeSeed::deserialize(seed, &mut de).and_then(|v| de.end().map(|_| v));
    match (parsed, duplicate.into_inner()) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(field)) => Err(SpecError::Decode {
            message: format!("`{field}` appears twice in the same object"),
            field,
        }),
        (Err(e), None) => Err(SpecError::Decode {
            field: String::new(),
            message: format!("body is not valid JSON: {e}"),
        }),
    }
}

/// Field path of an object member: `key` at the top, `parent.key` below.
fn member(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A JSON value at `path`; `duplicate` receives the path of the first repeated key, since a
/// serde error can carry only text.
struct Strict<'a, 'de> {
    path: String,
    duplicate: &'a std::cell::RefCell<Option<String>>,
    long: &'a std::cell::RefCell<LongData<'de>>,
}

impl<'de> de::DeserializeSeed<'de> for Strict<'_, 'de> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_, 'de> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Value, E> {
        if v.len() >= BORROW_FROM {
            if let Some((task, resource)) = resource_data_at(&self.path) {
                self.long.borrow_mut().push((task, resource, v));
                return Ok(Value::String(String::new()));
            }
        }
        self.visit_str(v)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let seed = Strict {
                path: format!("{}[{}]", self.path, out.len()),
                duplicate: self.duplicate,
                long: self.long,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = member(&self.path, &key);
            if out.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(path);
                return Err(de::Error::custom("duplicate key"));
            }
            let seed = Strict {
                path,
                duplicate: self.duplicate,
                long: self.long,
            };
            let value = map.next_value_seed(seed)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

fn check_unique_names(tasks: &[TaskSpec]) -> Result<(), SpecError> {
    for (i, t) in tasks.iter().enumerate() {
        if let Some(name) = &t.name {
            if tasks[..i].iter().any(|o| o.name.as_deref() == Some(name)) {
                return Err(SpecError::invalid(
                    format!("[{i}].task_name"),
                    format!("task_name `{name}` appears twice in the batch"),
                ));
            }
        }
    }
    Ok(())
}

/// One task's `Value`, with the `data` texts [`strict_json`] left in the body.
fn parse_task(
    value: Value,
    long: &[(usize, &str)],
    bounds: &Bounds,
) -> Result<TaskSpec, SpecError> {
    let raw: RawTask = serde_path_to_error::deserialize(value).map_err(|e| {
        let mut field = e.path().to_string();
        if field == "." {
            field.clear();
        }
        let message = e.inner().to_string();
        // serde reports an unknown field at its parent; the contract wants the field itself.
        if let Some(name) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            if field.is_empty() {
                field = name.to_string();
            } else if !field.ends_with(name) {
                field = format!("{field}.{name}");
            }
        }
        SpecError::Decode { field, message }
    })?;
    validate(raw, long, bounds)
}

/// The raw task, each field through its own check, in the order errors are reported.
fn validate(raw: RawTask, long: &[(usize, &str)], bounds: &Bounds) -> Result<TaskSpec, SpecError> {
    fields::version(raw.version.as_ref())?;
    // Filled by `resources` beside the files, so both come from one pass over the entries.
    let mut mounts = Vec::new();
    Ok(TaskSpec {
        daemon: raw.daemon.unwrap_or(false),
        image: fields::image(raw.image)?,
        ttl: fields::ttl(raw.ttl, bounds)?,
        ttl_given: raw.ttl.is_some(),
        name: fields::name(raw.task_name)?,
        pwd: fields::pwd(raw.pwd)?,
        env: fields::env(raw.env)?,
        cmds: fields::commands(raw.cmd, bounds)?,
        resources: resource::resources(raw.resources, long, bounds, &mut mounts)?,
        limits: limits::apply_limits(raw.limits, bounds).map_err(|e| e.prefixed("limits"))?,
        user: fields::user(raw.user)?,
        mounts,
        read_only: raw.read_only.unwrap_or(false),
        collect: resource::collect(raw.collect)?,
        callback_url: fields::callback_url(raw.callback_url)?,
    })
}

#[cfg(test)]
mod tests {
    use super::fields::MAX_ARG_STRLEN;
    use super::resource::url_file_name;
    use super::*;

    fn bounds() -> Bounds {
        let limits = Limits {
            memory_mb: 256,
            cpus: 1.0,
            pids: 128,
            timeout_s: 30.0,
            output_bytes: 1 << 20,
            disk_mb: 512,
        };
        Bounds {
            ttl_default: 300,
            ttl_max: 3600,
            limits_default: limits,
            limits_max: Limits {
                memory_mb: 1024,
                cpus: 2.0,
                pids: 1024,
                timeout_s: 600.0,
                output_bytes: 16 << 20,
                disk_mb: 4096,
            },
            resource_max_bytes: 1024,
            max_commands: 4,
            binds: vec![
                BindRule {
                    dir: "/srv/shared".into(),
                    tree: false,
                },
                BindRule {
                    dir: "/srv/data".into(),
                    tree: true,
                },
            ],
        }
    }

    fn one(body: &str) -> Result<TaskSpec, SpecError> {
        parse(body.as_bytes(), &bounds()).map(|mut r| {
            assert!(!r.is_array);
            r.tasks.remove(0)
        })
    }

    fn err(body: &str) -> SpecError {
        parse(body.as_bytes(), &bounds()).expect_err("must be refused")
    }

    #[test]
    fn contract_example_parses() {
        let body = r#"[{
          "version": 1.0, "daemon": true, "image": "my_python_image", "ttl": 3600,
          "resources": [{"content_type": "text/python", "data": "print('Hello World')",
                         "src": "http://example.com/hello.py", "dest": "/opt"}],
          "task_name": "hello_world", "pwd": "/opt", "env": {"KEY": "value"},
          "cmd": ["python hello.py"]}]"#;
        let parsed = parse(body.as_bytes(), &bounds()).unwrap();
        assert!(parsed.is_array);
        let tasks = parsed.tasks;
        assert_eq!(tasks.len(), 1);
        let t = &tasks[0];
        assert!(t.daemon);
        assert_eq!(t.image.as_deref(), Some("my_python_image"));
        assert_eq!(t.ttl, 3600);
        assert_eq!(t.name.as_deref(), Some("hello_world"));
        assert_eq!(t.pwd.as_deref(), Some("/opt"));
        assert_eq!(t.env, vec![("KEY".to_string(), "value".to_string())]);
        assert_eq!(
            t.cmds,
            vec![Cmd::plain(Command::Shell("python hello.py".into()))]
        );
        assert_eq!(t.resources[0].path, "/opt/hello.py");
        match &t.resources[0].content {
            Content::File(data) => assert_eq!(data, b"print('Hello World')"),
            other => panic!("expected a file, got {other:?}"),
        }
        assert_eq!(t.resources[0].mode, 0o644);
    }

    #[test]
    fn collect_paths_follow_the_dest_rules() {
        let t = one(r#"{"image":"i","collect":["/out/","/a/b.txt"]}"#).unwrap();
        assert_eq!(t.collect, ["/out", "/a/b.txt"]);
        assert!(one(r#"{"image":"i"}"#).unwrap().collect.is_empty());
        for (body, field) in [
            (r#"{"image":"i","collect":["rel"]}"#, "collect[0]"),
            (
                r#"{"image":"i","collect":["/ok","/a/../etc"]}"#,
                "collect[1]",
            ),
            (
                r#"{"image":"i","collect":["/proc/1/environ"]}"#,
                "collect[0]",
            ),
            (r#"{"image":"i","collect":["/.lessl/agent"]}"#, "collect[0]"),
            (r#"{"image":"i","collect":["/sys"]}"#, "collect[0]"),
            (r#"{"image":"i","collect":["/dev/"]}"#, "collect[0]"),
            (r#"{"image":"i","collect":["/"]}"#, "collect[0]"),
            (r#"{"image":"i","collect":["/a","/a/"]}"#, "collect[1]"),
            (r#"{"image":"i","collect":["/a\u0000b"]}"#, "collect[0]"),
        ] {
            assert_eq!(err(body).field(), field, "{body}");
        }
        let many: Vec<String> = (0..=resource::MAX_COLLECT_PATHS)
            .map(|i| format!("/f{i}"))
            .collect();
        let body = serde_json::json!({"image": "i", "collect": many}).to_string();
        assert_eq!(err(&body).field(), "collect");
        assert_eq!(err(r#"{"image":"i","collect":"/x"}"#).field(), "collect");
    }

    #[test]
    fn defaults_apply() {
        let t = one(r#"{"image": "busybox"}"#).unwrap();
        assert!(!t.daemon);
        assert_eq!(t.ttl, 300);
        assert!(!t.ttl_given);
        assert_eq!(t.limits, bounds().limits_default);
        assert!(t.cmds.is_empty());
    }

    #[test]
    fn version_spellings() {
        for ok in [r#"1.0"#, r#"1"#, r#""1.0""#] {
            assert!(
                one(&format!(r#"{{"image":"i","version":{ok}}}"#)).is_ok(),
                "{ok}"
            );
        }
        for bad in [r#"2.0"#, r#""2""#, r#"[]"#, r#"1.1"#] {
            assert_eq!(
                err(&format!(r#"{{"image":"i","version":{bad}}}"#)).field(),
                "version",
                "{bad}"
            );
        }
    }

    #[test]
    fn exec_form_and_bare_string() {
        let t = one(r#"{"image":"i","cmd":[["echo","a b"], "echo c"]}"#).unwrap();
        assert_eq!(
            t.cmds,
            vec![
                Cmd::plain(Command::Exec(vec!["echo".into(), "a b".into()])),
                Cmd::plain(Command::Shell("echo c".into()))
            ]
        );
        assert_eq!(t.cmds[1].argv(), vec!["/bin/sh", "-c", "echo c"]);
        let t = one(r#"{"image":"i","cmd":"echo hi"}"#).unwrap();
        assert_eq!(t.cmds, vec![Cmd::plain(Command::Shell("echo hi".into()))]);
    }

    #[test]
    fn base64_tar_and_text_resources() {
        let t = one(r#"{"image":"i","resources":[
              {"content_type":"application/octet-stream","data":"AAEC\n/w==","dest":"/bin.dat"},
              {"content_type":"application/x-tar","data":"","dest":"/srv"},
              {"data":"plain","dest":"/etc/x.conf"},
              {"content_type":"application/json","data":"{}","dest":"/x.json"}]}"#)
        .unwrap();
        match &t.resources[0].content {
            Content::File(data) => assert_eq!(data, &[0, 1, 2, 255]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&t.resources[1].content, Content::Archive(b) if b.is_empty()));
        assert!(matches!(&t.resources[2].content, Content::File(data) if data == b"plain"));
        assert!(matches!(&t.resources[3].content, Content::File(data) if data == b"{}"));
        assert_eq!(t.resources[3].field, "resources[3]");
    }

    #[test]
    fn long_data_is_read_where_it_stands_in_the_body() {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let roomy = Bounds {
            resource_max_bytes: 1 << 20,
            ..bounds()
        };
        let bytes: Vec<u8> = (0..BORROW_FROM as u32).map(|i| (i % 251) as u8).collect();
        let text = "t".repeat(BORROW_FROM);
        // `\/` is how some encoders write '/': a string with escapes is unescaped and copied.
        let escaped = b64(&[0xff; BORROW_FROM]).replace('/', "\\/");
        let body = serde_json::json!([
            {"image": "i", "resources": [
                {"data": "short", "dest": "/a"},
                {"content_type": "application/octet-stream", "data": b64(&bytes), "dest": "/b"}]},
            {"image": "i", "resources": [
                {"data": text, "dest": "/c"},
                {"content_type": "application/octet-stream", "data": "@", "dest": "/d"}]},
        ])
        .to_string()
        .replace("\"@\"", &format!("\"{escaped}\""));
        // The two long texts without escapes stay in the body; the escaped one is copied.
        let long = std::cell::RefCell::new(Vec::new());
        strict_json(body.as_bytes(), &long).unwrap();
        let kept: Vec<_> = long.into_inner().iter().map(|(t, r, _)| (*t, *r)).collect();
        assert_eq!(kept, [(Some(0), 1), (Some(1), 0)]);
        let tasks = parse(body.as_bytes(), &roomy).unwrap().tasks;
        let content = |t: usize, r: usize| match &tasks[t].resources[r].content {
            Content::File(data) => data.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(content(0, 0), b"short");
        assert_eq!(content(0, 1), bytes);
        assert_eq!(content(1, 0), text.as_bytes());
        assert_eq!(content(1, 1), vec![0xff; BORROW_FROM]);
        // Long data where it is refused is named as any other.
        let body = format!(r#"{{"image":"i","resources":[{{"mnt":"v:/v","data":"{text}"}}]}}"#);
        let e = parse(body.as_bytes(), &roomy).unwrap_err();
        assert_eq!(e.field(), "resources[0].data");
        let body = format!(r#"{{"image":"i","resources":[{{"data":"{text}","dest":"/x"}}]}}"#);
        let e = parse(body.as_bytes(), &bounds()).unwrap_err();
        assert!(matches!(e, SpecError::TooLarge { ref field, .. } if field == "resources[0].data"));
    }

    #[test]
    fn the_paths_of_resource_data_are_recognised_exactly() {
        assert_eq!(resource_data_at("resources[1].data"), Some((None, 1)));
        assert_eq!(
            resource_data_at("[0].resources[12].data"),
            Some((Some(0), 12))
        );
        for other in [
            "resources[1].dest",
            "resources[1].data.x",
            "x.resources[1].data",
            "[0].x.resources[1].data",
            "[a].resources[1].data",
            "resources[].data",
            "resources[-1].data",
            "env.data",
        ] {
            assert_eq!(resource_data_at(other), None, "{other}");
        }
    }

    /// Each bad input names the field at fault, by path.
    #[test]
    fn bad_inputs_name_their_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"image":"i","imgae":"x"}"#, "imgae"),
            (
                r#"{"image":"i","resources":[{"dest":"/a","data":"x","dst":"/b"}]}"#,
                "resources[0].dst",
            ),
            (r#"{"image":"i","ttl":0}"#, "ttl"),
            (r#"{"image":"i","ttl":-5}"#, "ttl"),
            (r#"{"image":"i","ttl":3601}"#, "ttl"),
            (r#"{"image":"i","ttl":"10"}"#, "ttl"),
            (r#"{"image":"i","ttl":1.5}"#, "ttl"),
            (r#"{"image":"i","daemon":"yes"}"#, "daemon"),
            (r#"{"image":""}"#, "image"),
            (r#"{"image":"a b"}"#, "image"),
            (r#"{"image":"i","task_name":"-x"}"#, "task_name"),
            (r#"{"image":"i","task_name":"a/b"}"#, "task_name"),
            (r#"{"image":"i","pwd":"rel"}"#, "pwd"),
            (r#"{"image":"i","pwd":"/a/../b"}"#, "pwd"),
            (r#"{"image":"i","pwd":"/proc/self"}"#, "pwd"),
            (r#"{"image":"i","env":{"A=B":"x"}}"#, "env.A=B"),
            (r#"{"image":"i","env":{"A":1}}"#, "env.A"),
            (r#"{"image":"i","cmd":[""]}"#, "cmd[0]"),
            (r#"{"image":"i","cmd":["ok", []]}"#, "cmd[1]"),
            (r#"{"image":"i","cmd":["ok", ["a", 1]]}"#, "cmd[1][1]"),
            (r#"{"image":"i","cmd":["a\u0000b"]}"#, "cmd[0]"),
            (r#"{"image":"i","cmd":["1","2","3","4","5"]}"#, "cmd"),
            (
                r#"{"image":"i","resources":[{"data":"x","dest":"rel"}]}"#,
                "resources[0].dest",
            ),
            (
                r#"{"image":"i","resources":[{"data":"x","dest":"/a/../etc"}]}"#,
                "resources[0].dest",
            ),
            (
                r#"{"image":"i","resources":[{"data":"x","dest":"/a\u0000"}]}"#,
                "resources[0].dest",
            ),
            (
                r#"{"image":"i","resources":[{"data":"x"}]}"#,
                "resources[0].dest",
            ),
            (
                r#"{"image":"i","resources":[{"dest":"/x"}]}"#,
                "resources[0].data",
            ),
            (
                r#"{"image":"i","resources":[{"dest":"/x","data":"x","content_type":"image/png"}]}"#,
                "resources[0].data",
            ),
            (
                r#"{"image":"i","resources":[{"dest":"/x","data":"x","src":"http://h/"}]}"#,
                "resources[0].src",
            ),
            (
                r#"{"image":"i","resources":[{"dest":"/x","mnt":"v:/x"}]}"#,
                "resources[0].dest",
            ),
            (
                r#"{"image":"i","limits":{"memory_mb":0}}"#,
                "limits.memory_mb",
            ),
            (r#"{"image":"i","limits":{"cpus":3}}"#, "limits.cpus"),
            (r#"{"image":"i","limits":{"pids":-1}}"#, "limits.pids"),
            (r#"{"image":"i","limits":{"swap":1}}"#, "limits.swap"),
            (r#"[{"image":"i"},{"image":"i","ttl":0}]"#, "[1].ttl"),
            (r#"[{"image":"i"},{"image":"i","bogus":1}]"#, "[1].bogus"),
            (
                r#"[{"image":"i","task_name":"a"},{"image":"i","task_name":"a"}]"#,
                "[1].task_name",
            ),
        ];
        for (body, field) in cases {
            let e = err(body);
            assert_eq!(e.field(), *field, "body {body} gave {e:?}");
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn duplicate_keys_are_refused_by_path() {
        let cases: &[(&str, &str)] = &[
            (r#"{"image":"i","ttl":10,"ttl":20}"#, "ttl"),
            (r#"{"image":"i","env":{"A":"1","B":"2","A":"3"}}"#, "env.A"),
            (
                r#"{"image":"i","limits":{"cpus":1,"cpus":0.5}}"#,
                "limits.cpus",
            ),
            (
                r#"{"image":"i","resources":[{"data":"x","dest":"/a"},{"dest":"/b","data":"y","dest":"/c"}]}"#,
                "resources[1].dest",
            ),
            (r#"[{"image":"i"},{"image":"i","image":"j"}]"#, "[1].image"),
            // Unknown fields are no exception: the repeat is found first.
            (r#"{"image":"i","x":1,"x":2}"#, "x"),
        ];
        for (body, field) in cases {
            let e = err(body);
            assert!(matches!(e, SpecError::Decode { .. }), "{body}: {e:?}");
            assert_eq!(e.field(), *field, "{body}");
            assert!(e.to_string().contains("twice"), "{e}");
        }
        // The same key in different objects is fine, and so is an equal value in an array.
        let t = one(r#"{"image":"i","env":{"image":"i"},"cmd":["a","a"]}"#).unwrap();
        assert_eq!(t.env, vec![("image".to_string(), "i".to_string())]);
        // Trailing garbage is still an error of the whole body.
        assert_eq!(err(r#"{"image":"i"} x"#).field(), "");
    }

    #[test]
    fn limits_that_round_to_nothing_are_refused_with_the_minimum() {
        let cases: &[(&str, &str, &str)] = &[
            (r#"{"cpus":1e-10}"#, "limits.cpus", "0.01"),
            (r#"{"cpus":0.0099}"#, "limits.cpus", "0.01"),
            (r#"{"memory_mb":5}"#, "limits.memory_mb", "6 MiB"),
            (r#"{"pids":3}"#, "limits.pids", "4"),
            (r#"{"timeout_s":1e-300}"#, "limits.timeout_s", "0.001"),
            (r#"{"timeout_s":0.0009}"#, "limits.timeout_s", "0.001"),
            (r#"{"timeout_s":0}"#, "limits.timeout_s", "positive"),
            (r#"{"output_bytes":0}"#, "limits.output_bytes", "positive"),
        ];
        for (limits, field, minimum) in cases {
            let e = err(&format!(r#"{{"image":"i","limits":{limits}}}"#));
            assert_eq!(e.field(), *field, "{limits}");
            assert!(e.to_string().contains(minimum), "{limits}: {e}");
        }
        let t = one(r#"{"image":"i","limits":{"cpus":0.01,"memory_mb":6,"pids":4}}"#).unwrap();
        assert_eq!(t.limits.nano_cpus(), MIN_NANO_CPUS);
        assert_eq!(t.limits.memory_mb, 6);
        let t = one(r#"{"image":"i","limits":{"timeout_s":0.001}}"#).unwrap();
        assert_eq!(t.limits.timeout_ms(), 1);
        assert_eq!(bounds().limits_default.below_minimum(), None);
    }

    #[test]
    fn environment_and_commands_fit_execve() {
        let big = "v".repeat(MAX_ARG_STRLEN);
        let e = err(&format!(r#"{{"image":"i","env":{{"BIG":"{big}"}}}}"#));
        assert_eq!(e.field(), "env.BIG");
        // Just under the per-string limit is fine alone, but not three times.
        let fits = "v".repeat(MAX_ARG_STRLEN - "A=".len() - 1);
        assert!(one(&format!(r#"{{"image":"i","env":{{"A":"{fits}"}}}}"#)).is_ok());
        let e = err(&format!(
            r#"{{"image":"i","env":{{"A":"{fits}","B":"{fits}"}}}}"#
        ));
        assert_eq!(e.field(), "env");
        let e = err(&format!(r#"{{"image":"i","cmd":["echo {big}"]}}"#));
        assert_eq!(e.field(), "cmd[0]");
        let e = err(&format!(r#"{{"image":"i","cmd":["ok",["echo","{big}"]]}}"#));
        assert_eq!(e.field(), "cmd[1][1]");
        let half = "a".repeat(100 << 10);
        let many = vec![format!("\"{half}\""); 6].join(",");
        let e = err(&format!(r#"{{"image":"i","cmd":[["echo",{many}]]}}"#));
        assert_eq!(e.field(), "cmd[0]");
    }

    #[test]
    fn pwd_cannot_reach_lessl_s_own_directory() {
        for pwd in ["/.lessl", "/.lessl/", "/.lessl/x", "/dev", "/sys/x"] {
            let e = err(&format!(r#"{{"image":"i","pwd":"{pwd}"}}"#));
            assert_eq!(e.field(), "pwd", "{pwd}");
        }
        assert!(one(r#"{"image":"i","pwd":"/.lesslx"}"#).is_ok());
    }

    #[test]
    fn whole_body_errors_have_no_field() {
        for body in ["", "nope", "[]", "42", r#""x""#, "{"] {
            assert_eq!(err(body).field(), "", "{body}");
        }
    }

    #[test]
    fn oversized_resource_is_too_large() {
        let big = "x".repeat(1025);
        let e = err(&format!(
            r#"{{"image":"i","resources":[{{"data":"{big}","dest":"/f"}}]}}"#
        ));
        assert!(
            matches!(e, SpecError::TooLarge { ref field, .. } if field == "resources[0].data"),
            "{e:?}"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let body = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(err(&body).field(), "");
    }

    #[test]
    fn downloads_modes_and_mounts() {
        let t = one(
            r#"{"image":"i","resources":[
              {"src":"https://example.com/a/run.sh?x=1","dest":"/opt","mode":"0755"},
              {"src":"http://example.com/site.tar","dest":"/srv/www","content_type":"application/x-tar"},
              {"mnt":"cache:/cache"},
              {"mnt":"/srv//shared/:/shared"},
              {"mnt":"/srv/data/sets/:/data:ro"}]}"#,
        )
        .unwrap();
        assert_eq!(t.resources.len(), 2);
        assert_eq!(t.resources[0].path, "/opt/run.sh");
        assert_eq!(t.resources[0].mode, 0o755);
        assert!(matches!(&t.resources[0].content,
            Content::Download { url, archive: false } if url == "https://example.com/a/run.sh?x=1"));
        assert_eq!(t.resources[1].path, "/srv/www");
        assert!(matches!(
            &t.resources[1].content,
            Content::Download { archive: true, .. }
        ));
        assert_eq!(t.mounts.len(), 3);
        assert_eq!(t.mounts[0].source, MountSource::Volume("cache".into()));
        assert!(!t.mounts[0].read_only);
        assert!(matches!(&t.mounts[1].source,
            MountSource::Host { path, rule } if path == "/srv/shared" && !rule.tree));
        assert_eq!(t.mounts[1].field, "resources[3]");
        assert!(matches!(&t.mounts[2].source,
            MountSource::Host { path, rule } if path == "/srv/data/sets" && rule.tree));
        assert!(t.mounts[2].read_only);
    }

    #[test]
    fn bad_downloads_modes_and_mounts() {
        let cases: &[(&str, &str)] = &[
            (r#"{"src":"file:///etc/passwd","dest":"/x"}"#, "src"),
            (r#"{"src":"ftp://h/x","dest":"/x"}"#, "src"),
            (r#"{"src":"http://user:pw@h/x","dest":"/x"}"#, "src"),
            (r#"{"src":"gopher://h/x","dest":"/x"}"#, "src"),
            (r#"{"src":"data:text/plain,hi","dest":"/x"}"#, "src"),
            (r#"{"data":"x","dest":"/x","mode":"999"}"#, "mode"),
            (r#"{"data":"x","dest":"/x","mode":"0100000"}"#, "mode"),
            (r#"{"data":"x","dest":"/x","mode":"rwx"}"#, "mode"),
            (
                r#"{"data":"","dest":"/x","mode":"0755","content_type":"application/x-tar"}"#,
                "mode",
            ),
            (r#"{"data":"x","dest":"/.lessl/lessl"}"#, "dest"),
            (r#"{"mnt":"/etc:/etc"}"#, "mnt"),
            (r#"{"mnt":"/srv/shared/../../etc:/x"}"#, "mnt"),
            (r#"{"mnt":"/srv/sharedother:/x"}"#, "mnt"),
            // Under a writable directory: a task may have planted a link there.
            (r#"{"mnt":"/srv/shared/root/etc:/x:ro"}"#, "mnt"),
            // A read-only tree is mounted read-only only.
            (r#"{"mnt":"/srv/data:/x"}"#, "mnt"),
            (r#"{"mnt":"/srv/data/sub:/x:rw"}"#, "mnt"),
            (r#"{"mnt":"vol:relative"}"#, "mnt"),
            (r#"{"mnt":"vol:/a/../b"}"#, "mnt"),
            (r#"{"mnt":"vol:/"}"#, "mnt"),
            (r#"{"mnt":"vol:/proc"}"#, "mnt"),
            (r#"{"mnt":"vol:/x:rx"}"#, "mnt"),
            (r#"{"mnt":"-vol:/x"}"#, "mnt"),
            (r#"{"mnt":"vol:/x","dest":"/y"}"#, "dest"),
        ];
        for (res, field) in cases {
            let e = err(&format!(r#"{{"image":"i","resources":[{res}]}}"#));
            assert_eq!(e.field(), format!("resources[0].{field}"), "{res}: {e}");
        }
        let e = err(r#"{"image":"i","resources":[{"mnt":"a:/x"},{"mnt":"b:/x"}]}"#);
        assert_eq!(e.field(), "resources[1].mnt");
    }

    #[test]
    fn callback_urls() {
        let t = one(r#"{"image":"i","callback_url":"https://example.com/hook?x=1"}"#).unwrap();
        assert_eq!(
            t.callback_url.as_deref(),
            Some("https://example.com/hook?x=1")
        );
        assert_eq!(one(r#"{"image":"i"}"#).unwrap().callback_url, None);
        for bad in [
            r#""ftp://h/x""#,
            r#""file:///etc/passwd""#,
            r#""http://user:pw@h/""#,
            r#""not a url""#,
            r#"" ""#,
            r#"1"#,
        ] {
            let e = err(&format!(r#"{{"image":"i","callback_url":{bad}}}"#));
            assert_eq!(e.field(), "callback_url", "{bad}: {e}");
        }
    }

    #[test]
    fn commands_with_stdin() {
        let t = one(r#"{"image":"i","cmd":[{"run":"cat","stdin":"hi\n"},
               {"run":["od","-c"],"stdin_base64":"AAEC\n/w=="},{"run":"true"},"echo"]}"#)
        .unwrap();
        assert_eq!(t.cmds[0].run, Command::Shell("cat".into()));
        assert_eq!(t.cmds[0].stdin.as_deref(), Some(&b"hi\n"[..]));
        assert!(t.cmds[0].object);
        assert_eq!(t.cmds[1].run, Command::Exec(vec!["od".into(), "-c".into()]));
        assert_eq!(t.cmds[1].stdin.as_deref(), Some(&[0u8, 1, 2, 255][..]));
        assert_eq!(t.cmds[2].stdin, None);
        assert!(t.cmds[2].object);
        assert_eq!(t.cmds[3], Cmd::plain(Command::Shell("echo".into())));
        // Empty stdin is stdin all the same: the command reads end of file.
        let t = one(r#"{"image":"i","cmd":[{"run":"cat","stdin":""}]}"#).unwrap();
        assert_eq!(t.cmds[0].stdin.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn bad_commands_with_stdin_name_their_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"run":"cat","stdin":"a","stdin_base64":"YQ=="}"#,
                "cmd[1].stdin",
            ),
            (
                r#"{"run":"cat","stdin_base64":"%%%"}"#,
                "cmd[1].stdin_base64",
            ),
            (r#"{"run":"cat","stdn":"a"}"#, "cmd[1].stdn"),
            (r#"{"stdin":"a"}"#, "cmd[1]"),
            (r#"{"run":""}"#, "cmd[1].run"),
            (r#"{"run":["a",1]}"#, "cmd[1].run[1]"),
            (r#"{"run":{"run":"cat"}}"#, "cmd[1].run"),
            (r#"{"run":"cat","stdin":1}"#, "cmd[1].stdin"),
            (r#"{"run":"cat","stdin":"a","stdin":"b"}"#, "cmd[1].stdin"),
        ];
        for (c, field) in cases {
            let e = err(&format!(r#"{{"image":"i","cmd":["ok",{c}]}}"#));
            assert_eq!(e.field(), *field, "{c}: {e}");
        }
    }

    #[test]
    fn stdin_of_a_task_is_capped_in_total() {
        // The test bounds allow 1024 bytes per resource; two commands of 600 are 1200.
        let part = "x".repeat(600);
        let e = err(&format!(
            r#"{{"image":"i","cmd":[{{"run":"cat","stdin":"{part}"}},{{"run":"cat","stdin":"{part}"}}]}}"#
        ));
        assert!(
            matches!(e, SpecError::TooLarge { ref field, .. } if field == "cmd[1].stdin"),
            "{e:?}"
        );
        assert!(one(&format!(
            r#"{{"image":"i","cmd":[{{"run":"cat","stdin":"{part}"}}]}}"#
        ))
        .is_ok());
    }

    #[test]
    fn url_file_names() {
        assert_eq!(
            url_file_name("http://h/a/b.py?x=1").as_deref(),
            Some("b.py")
        );
        assert_eq!(url_file_name("https://h:8/x#f").as_deref(), Some("x"));
        assert_eq!(url_file_name("http://h/dir/"), None);
        assert_eq!(url_file_name("http://h"), None);
        assert_eq!(url_file_name("http://h/.."), None);
    }
}
