//! The client's arguments: the subcommands, their flags and `LESSL_*` variables (clap), and
//! the exit code the client itself fails with. No I/O.

use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Subcommand};

/// Where `lessl serve` listens unless told otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8734";

/// Exit code when Lessl could not complete a run, as `docker run` uses it for its own
/// failures: distinct from any code a command is likely to exit with.
pub const RUN_FAILED_EXIT: u8 = 125;

/// The client subcommands, flattened into `lessl`'s own.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a task file (`-` for stdin): print each command's output, exit with the failing
    /// command's code.
    Run(RunArgs),
    /// Run a command in a live daemon task; exit with its code.
    Exec(ExecArgs),
    /// List the live tasks.
    Ps(PsArgs),
    /// Show one task as JSON.
    Status(StatusArgs),
    /// Remove tasks (their containers are killed).
    Rm(RmArgs),
    /// List (`ls`) or remove (`rm NAME...`) this Lessl's named volumes.
    Volume(VolumeArgs),
    /// Copy a file or directory out of a live task: `lessl cp TASK:/path LOCAL`.
    Cp(CpArgs),
    /// Print a task's output: its last run's, or with `-f` its current run's as it comes.
    Logs(LogsArgs),
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// The task (id, short id or name) and an absolute path in it: `TASK:/path`.
    #[arg(value_name = "TASK:/PATH")]
    pub source: String,
    /// Where to write: a file's new name (or a directory to put it in); for a directory, the
    /// local directory it is unpacked into (created when missing), keeping its own name.
    pub dest: PathBuf,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Task id, short id or name.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub task: String,
    /// Follow the current run until it ends.
    #[arg(short, long)]
    pub follow: bool,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    pub action: VolumeAction,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Subcommand)]
pub enum VolumeAction {
    /// List the volumes: name, whether a container mounts it, the engine's name.
    Ls,
    /// Remove volumes by the names tasks give them.
    Rm {
        #[arg(required = true, value_parser = NonEmptyStringValueParser::new())]
        names: Vec<String>,
    },
}

/// How to reach the daemon; shared by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The Lessl to talk to: http://host:port or unix:/path.
    #[arg(long, env = "LESSL_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// File holding the bearer token to send.
    #[arg(long, env = "LESSL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Task file (one task object or an array), or `-` to read it from stdin.
    pub file: PathBuf,
    /// Do not wait for the commands: print the task id(s) once the containers started.
    #[arg(short, long)]
    pub detach: bool,
    /// Print the API's JSON answer (ids and results) instead of the commands' output.
    #[arg(long, conflicts_with = "detach")]
    pub json: bool,
    /// Write the files the task's `collect` brought back under DIR (their absolute paths
    /// made relative to it; one subdirectory per task, named after it, for an array).
    #[arg(long, value_name = "DIR", conflicts_with = "detach")]
    pub collect_to: Option<PathBuf>,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Task id, short id or name.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub task: String,
    /// The command and its arguments, run without a shell (after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present = "shell",
        conflicts_with = "shell",
        value_name = "CMD"
    )]
    pub argv: Vec<String>,
    /// Run this string through `/bin/sh -c` instead.
    #[arg(long, value_name = "STRING")]
    pub shell: Option<String>,
    /// Set an environment variable for the command (repeatable).
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory of the command (absolute; created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Print the API's JSON answer as it is.
    #[arg(long, conflicts_with = "quiet")]
    pub json: bool,
    /// Print only the full task ids, one a line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Also list finished tasks whose results are kept until their TTL.
    #[arg(short, long)]
    pub all: bool,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Task id, short id or name.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub task: String,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Task ids, short ids or names.
    #[arg(required = true, value_parser = NonEmptyStringValueParser::new())]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub conn: Connection,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

impl Command {
    /// The exit code when the client itself fails. `run` and `exec` otherwise pass a command's
    /// own code through, so like `docker run` they use 125, which a script can tell apart
    /// from the command exiting 1.
    pub fn error_exit_code(&self) -> u8 {
        match self {
            Command::Run(_) | Command::Exec(_) => RUN_FAILED_EXIT,
            Command::Ps(_)
            | Command::Status(_)
            | Command::Rm(_)
            | Command::Volume(_)
            | Command::Cp(_)
            | Command::Logs(_) => 1,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
        assert!(parse_env("A").is_err());
        assert!(parse_env("=b").is_err());
    }
}
