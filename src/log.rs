//! The event log: one line per event on stderr, human-readable or JSON, filtered by level.
//! Set once at start (`--log-level`/`LESSL_LOG`, `--log-format`/`LESSL_LOG_FORMAT`); lines
//! about a task carry its id and name. Knows nothing of what the events mean.

use std::fmt;
use std::sync::OnceLock;

use crate::util::{rfc3339, short, unix_now};

/// How much to log, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// How lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

static SETTINGS: OnceLock<(Level, Format)> = OnceLock::new();

/// Sets the level and format; the first call wins (tests and the agent never call it and
/// get `info` as text).
pub fn init(level: Level, format: Format) {
    let _ = SETTINGS.set((level, format));
}

fn settings() -> (Level, Format) {
    *SETTINGS.get().unwrap_or(&(Level::Info, Format::Text))
}

/// The task a line is about.
#[derive(Debug, Clone, Copy)]
pub struct About<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
}

/// Writes one line if `level` is enabled.
pub fn event(level: Level, about: Option<About<'_>>, args: fmt::Arguments<'_>) {
    let (max, format) = settings();
    if level > max {
        return;
    }
    eprintln!(
        "{}",
        render(format, level, about, unix_now(), &args.to_string())
    );
}

fn render(format: Format, level: Level, about: Option<About<'_>>, unix: u64, msg: &str) -> String {
    let ts = rfc3339(unix);
    match format {
        Format::Text => {
            let task = match about {
                Some(About { id, name: Some(n) }) => format!("task {} ({n}): ", short(id)),
                Some(About { id, name: None }) => format!("task {}: ", short(id)),
                None => String::new(),
            };
            let tag = if level == Level::Info {
                String::new()
            } else {
                format!("{} ", level.as_str())
            };
            format!("{ts} lessl: {tag}{task}{msg}")
        }
        Format::Json => {
            let mut v = serde_json::json!({"ts": ts, "level": level.as_str(), "msg": msg});
            if let Some(a) = about {
                v["task"] = a.id.into();
                v["name"] = a.name.into();
            }
            v.to_string()
        }
    }
}

/// Lifecycle lines of the daemon itself (listening, stopped): written whatever the level,
/// since operators and supervisors wait for them.
pub fn notice(args: fmt::Arguments<'_>) {
    let (_, format) = settings();
    eprintln!(
        "{}",
        render(format, Level::Info, None, unix_now(), &args.to_string())
    );
}

/// `log!("...")` at info; `log!(warn: "...")` or any level; about no task.
#[macro_export]
macro_rules! log {
    (notice: $($arg:tt)*) => { $crate::log::notice(format_args!($($arg)*)) };
    (error: $($arg:tt)*) => { $crate::log::event($crate::log::Level::Error, None, format_args!($($arg)*)) };
    (warn: $($arg:tt)*) => { $crate::log::event($crate::log::Level::Warn, None, format_args!($($arg)*)) };
    (debug: $($arg:tt)*) => { $crate::log::event($crate::log::Level::Debug, None, format_args!($($arg)*)) };
    ($($arg:tt)*) => { $crate::log::event($crate::log::Level::Info, None, format_args!($($arg)*)) };
}

/// `task_log!(level, id, name; "...")`: a line about one task, carrying its id and name.
#[macro_export]
macro_rules! task_log {
    ($level:ident, $id:expr, $name:expr; $($arg:tt)*) => {
        $crate::log::event(
            $crate::log::Level::$level,
            Some($crate::log::About { id: $id, name: $name }),
            format_args!($($arg)*),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_lines() {
        let about = Some(About {
            id: "0123456789abcdef",
            name: Some("web"),
        });
        assert_eq!(
            render(Format::Text, Level::Info, about, 0, "started"),
            "1970-01-01T00:00:00Z lessl: task 0123456789ab (web): started"
        );
        assert_eq!(
            render(Format::Text, Level::Warn, None, 0, "retrying"),
            "1970-01-01T00:00:00Z lessl: warn retrying"
        );
        let v: serde_json::Value =
            serde_json::from_str(&render(Format::Json, Level::Error, about, 0, "a \"b\"")).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["task"], "0123456789abcdef");
        assert_eq!(v["name"], "web");
        assert_eq!(v["msg"], "a \"b\"");
        assert_eq!(v["ts"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn levels_order_and_parse() {
        assert!(
            Level::Debug > Level::Info && Level::Info > Level::Warn && Level::Warn > Level::Error
        );
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse("trace"), None);
    }
}
