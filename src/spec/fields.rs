//! One check per field of a task (`version`, `image`, `ttl`, `task_name`, `pwd`, `env`,
//! `cmd`, `user`): each takes the raw value and gives the validated one, or a [`SpecError`]
//! naming the field. Pure: no I/O.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{is_reserved, reserved, Bounds, Cmd, Command, RawCommand, RawCommands, SpecError};

/// Linux's `MAX_ARG_STRLEN`: the longest single argument or environment string `execve`
/// takes, its NUL included. Longer ones fail only when the command starts (E2BIG), after the
/// container exists, so they are refused here instead.
pub(super) const MAX_ARG_STRLEN: usize = 128 << 10;
/// All of a task's environment, bytes (`NAME=value` and a NUL each). `execve` takes argv and
/// environment together within a quarter of the stack limit (2 MiB by default); this leaves
/// the larger part of it to the command.
pub const MAX_ENV_BYTES: usize = 128 << 10;
/// All of one command's argv, bytes (each string and its NUL), for the same reason.
pub const MAX_ARGV_BYTES: usize = 512 << 10;

/// `1.0` as a number or a string; absent means 1.0.
pub(super) fn version(v: Option<&Value>) -> Result<(), SpecError> {
    let ok = match v {
        None => true,
        Some(Value::Number(n)) => n.as_f64() == Some(1.0),
        Some(Value::String(s)) => s == "1.0" || s == "1",
        Some(_) => false,
    };
    match v {
        Some(v) if !ok => Err(SpecError::invalid(
            "version",
            format!("unsupported spec version {v}; this server speaks 1.0"),
        )),
        _ => Ok(()),
    }
}

pub(super) fn image(raw: Option<String>) -> Result<Option<String>, SpecError> {
    raw.map(|i| check_image(&i).map(|_| i)).transpose()
}

/// Seconds until removal: the server's default when absent, never over its maximum.
pub(super) fn ttl(raw: Option<i64>, bounds: &Bounds) -> Result<u64, SpecError> {
    match raw {
        None => Ok(bounds.ttl_default.min(bounds.ttl_max)),
        Some(t) if t <= 0 => Err(SpecError::invalid(
            "ttl",
            "must be a positive number of seconds",
        )),
        Some(t) if t as u64 > bounds.ttl_max => Err(SpecError::invalid(
            "ttl",
            format!(
                "{t} s is over this server's maximum of {} s",
                bounds.ttl_max
            ),
        )),
        Some(t) => Ok(t as u64),
    }
}

pub(super) fn name(raw: Option<String>) -> Result<Option<String>, SpecError> {
    raw.map(|n| check_name(&n).map(|_| n)).transpose()
}

pub(super) fn pwd(raw: Option<String>) -> Result<Option<String>, SpecError> {
    raw.map(|p| {
        check_abs_path(&p).map_err(|m| SpecError::invalid("pwd", m))?;
        // `/.lessl` holds the agent: a task that works there could not shadow it (the
        // bind is read-only), but the contract keeps it out of every spec field.
        if is_reserved(p.trim_end_matches('/')) {
            return Err(reserved("pwd"));
        }
        Ok(p)
    })
    .transpose()
}

/// The environment, each `NAME=value` within what `execve` takes, and all of it too.
pub(super) fn env(
    raw: Option<BTreeMap<String, String>>,
) -> Result<Vec<(String, String)>, SpecError> {
    let env = raw
        .unwrap_or_default()
        .into_iter()
        .map(env_entry)
        .collect::<Result<Vec<_>, _>>()?;
    let env_bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if env_bytes > MAX_ENV_BYTES {
        return Err(SpecError::invalid(
            "env",
            format!("{env_bytes} bytes in all is over the limit of {MAX_ENV_BYTES} bytes"),
        ));
    }
    Ok(env)
}

fn env_entry((k, v): (String, String)) -> Result<(String, String), SpecError> {
    let field = format!("env.{k}");
    if k.is_empty() || k.contains('=') || k.contains('\0') {
        return Err(SpecError::invalid(
            field,
            "a variable name must be non-empty, without `=` or NUL",
        ));
    }
    if v.contains('\0') {
        return Err(SpecError::invalid(field, "value contains a NUL byte"));
    }
    // `NAME=value` and its NUL are one string of the command's environment.
    if k.len() + v.len() + 2 > MAX_ARG_STRLEN {
        return Err(SpecError::invalid(
            field,
            format!(
                "`NAME=value` is {} bytes; at most {} (Linux's limit on one string)",
                k.len() + v.len() + 1,
                MAX_ARG_STRLEN - 1
            ),
        ));
    }
    Ok((k, v))
}

/// A callback URL parses like a `src` URL (http or https, no credentials); where it leads
/// is checked only when it is called.
pub(super) fn callback_url(raw: Option<String>) -> Result<Option<String>, SpecError> {
    let Some(url) = raw else { return Ok(None) };
    crate::fetch::parse_url(&url).map_err(|e| SpecError::invalid("callback_url", e.to_string()))?;
    Ok(Some(url))
}

/// The commands, at most the server's maximum, each one runnable, their stdin together
/// within the size cap of one resource (what a body could otherwise smuggle in past it).
pub(super) fn commands(raw: Option<RawCommands>, bounds: &Bounds) -> Result<Vec<Cmd>, SpecError> {
    let raws = match raw {
        None => Vec::new(),
        Some(RawCommands::One(s)) => vec![RawCommand::bare(Command::Shell(s))],
        Some(RawCommands::Many(list)) => list,
    };
    if raws.len() > bounds.max_commands {
        return Err(SpecError::invalid(
            "cmd",
            format!(
                "{} commands is over this server's maximum of {}",
                raws.len(),
                bounds.max_commands
            ),
        ));
    }
    let mut stdin_total = 0usize;
    let mut cmds = Vec::with_capacity(raws.len());
    for (i, raw) in raws.into_iter().enumerate() {
        let field = format!("cmd[{i}]");
        let run_field = if raw.object {
            format!("{field}.run")
        } else {
            field.clone()
        };
        check_command(&run_field, &raw.run)?;
        check_argv_size(&run_field, &raw.run)?;
        let (stdin, stdin_field) = stdin(&field, raw.stdin, raw.stdin_base64)?;
        if let Some(bytes) = &stdin {
            stdin_total += bytes.len();
            if stdin_total > bounds.resource_max_bytes {
                return Err(SpecError::TooLarge {
                    field: stdin_field,
                    message: format!(
                        "the commands' stdin comes to {stdin_total} bytes, over this server's \
                         maximum of {} bytes per task",
                        bounds.resource_max_bytes
                    ),
                });
            }
        }
        cmds.push(Cmd {
            run: raw.run,
            stdin,
            object: raw.object,
        });
    }
    Ok(cmds)
}

/// A command's stdin, from text or base64 (one of the two), and the field it came from.
fn stdin(
    field: &str,
    text: Option<String>,
    base64: Option<String>,
) -> Result<(Option<Vec<u8>>, String), SpecError> {
    use base64::Engine as _;
    match (text, base64) {
        (Some(_), Some(_)) => Err(SpecError::invalid(
            format!("{field}.stdin"),
            "give `stdin` (text) or `stdin_base64` (bytes), not both",
        )),
        (Some(text), None) => Ok((Some(text.into_bytes()), format!("{field}.stdin"))),
        (None, Some(b64)) => {
            let at = format!("{field}.stdin_base64");
            // Wrapped base64 (76-column lines) is accepted, as for resources.
            let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map(|bytes| (Some(bytes), at.clone()))
                .map_err(|e| SpecError::invalid(at, format!("not valid base64: {e}")))
        }
        (None, None) => Ok((None, String::new())),
    }
}

/// A command that names something to run, without NUL bytes.
fn check_command(field: &str, c: &Command) -> Result<(), SpecError> {
    match c {
        Command::Shell(s) if s.trim().is_empty() => Err(SpecError::invalid(field, "empty command")),
        Command::Exec(argv) if argv.is_empty() => Err(SpecError::invalid(
            field,
            "an exec-form command needs at least the program",
        )),
        Command::Exec(argv) if argv[0].is_empty() => Err(SpecError::invalid(
            format!("{field}[0]"),
            "empty program name",
        )),
        Command::Shell(s) if s.contains('\0') => {
            Err(SpecError::invalid(field, "command contains a NUL byte"))
        }
        Command::Exec(argv) => match argv.iter().position(|a| a.contains('\0')) {
            Some(j) => Err(SpecError::invalid(
                format!("{field}[{j}]"),
                "argument contains a NUL byte",
            )),
            None => Ok(()),
        },
        Command::Shell(_) => Ok(()),
    }
}

/// Each string of the argv the command becomes fits `execve`, and so does the whole.
fn check_argv_size(field: &str, c: &Command) -> Result<(), SpecError> {
    let argv = match c {
        Command::Shell(s) => std::slice::from_ref(s),
        Command::Exec(argv) => argv.as_slice(),
    };
    for (j, a) in argv.iter().enumerate() {
        if a.len() + 1 > MAX_ARG_STRLEN {
            let at = match c {
                Command::Shell(_) => field.to_string(),
                Command::Exec(_) => format!("{field}[{j}]"),
            };
            return Err(SpecError::invalid(
                at,
                format!(
                    "{} bytes is over the limit of {} bytes for one argument (Linux's MAX_ARG_STRLEN)",
                    a.len(),
                    MAX_ARG_STRLEN - 1
                ),
            ));
        }
    }
    let total: usize = argv.iter().map(|a| a.len() + 1).sum();
    if total > MAX_ARGV_BYTES {
        return Err(SpecError::invalid(
            field,
            format!("{total} bytes of arguments is over the limit of {MAX_ARGV_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// `name`, `uid` or `uid:gid`.
pub(super) fn user(raw: Option<String>) -> Result<Option<String>, SpecError> {
    raw.map(|u| {
        let ok = !u.is_empty()
            && u.len() <= 64
            && u.split(':').count() <= 2
            && u.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if ok {
            Ok(u)
        } else {
            Err(SpecError::invalid(
                "user",
                "must be `name`, `uid` or `uid:gid`",
            ))
        }
    })
    .transpose()
}

fn check_image(image: &str) -> Result<(), SpecError> {
    let bad = image.is_empty()
        || image.len() > 255
        || image.starts_with('-')
        || image.chars().any(|c| c.is_whitespace() || c.is_control());
    if bad {
        return Err(SpecError::invalid(
            "image",
            "must be an image reference: 1 to 255 characters, no whitespace, not starting with `-`",
        ));
    }
    Ok(())
}

/// Docker's alphabet for container and volume names, which task and volume names become
/// (prefixed): 1 to 64 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub(super) fn is_docker_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 64
}

/// Task names double as Docker container names (prefixed), so they follow Docker's alphabet.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    if !is_docker_name(name) {
        return Err(SpecError::invalid(
            "task_name",
            "must be 1 to 64 characters of [A-Za-z0-9_.-], starting with a letter or digit",
        ));
    }
    Ok(())
}

/// Absolute, normalised enough to be unambiguous: no `..`, `.` or empty components, no NUL.
pub(super) fn check_abs_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("`{p}` is not an absolute path"));
    }
    if p.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    if p.len() > 4096 {
        return Err("path is longer than 4096 bytes".into());
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("`{p}` has an empty, `.` or `..` component"));
    }
    Ok(())
}
