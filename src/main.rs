//! `lessl`: argv to configuration to runtime; every failure leaves through `main` with one
//! message and a non-zero exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lessl::config::ServeArgs;
use lessl::server::{self, Listener};

/// musl's allocator with large freed blocks kept for reuse (see `src/alloc.rs`): the agent
/// in task containers is this binary too, and gains the same.
#[global_allocator]
static ALLOC: lessl::alloc::Retaining = lessl::alloc::Retaining;

#[derive(Parser)]
#[command(
    name = "lessl",
    version = version(),
    about = "Run tasks in Docker containers over a small REST API"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Serve(Box<ServeArgs>),
    /// Keep-alive PID 1 inside task containers (not for direct use).
    #[command(hide = true)]
    Agent,
    /// Supervise one command inside a task container (not for direct use).
    #[command(hide = true)]
    AgentRun {
        #[arg(long)]
        timeout_ms: u64,
        #[arg(long)]
        output_bytes: u64,
        #[arg(long)]
        cwd: Option<String>,
        /// The command reads this process's stdin (the exec's attached one).
        #[arg(long)]
        stdin: bool,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    #[command(flatten)]
    Client(lessl::cli::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve(args) => match serve(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lessl: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Agent => match lessl::agent::keep_alive() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lessl agent: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::AgentRun {
            timeout_ms,
            output_bytes,
            cwd,
            stdin,
            argv,
        } => {
            let code = lessl::agent::supervise(lessl::agent::RunOptions {
                timeout: Duration::from_millis(timeout_ms),
                output_bytes,
                cwd,
                stdin,
                argv,
            });
            ExitCode::from(u8::try_from(code).unwrap_or(255))
        }
        Cmd::Client(cmd) => {
            let failed = cmd.error_exit_code();
            match lessl::cli::main(cmd) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("lessl: {e}");
                    ExitCode::from(failed)
                }
            }
        }
    }
}

/// `--version`: the crate's version and the Docker Engine API range the client speaks, so an
/// operator can match it against `docker version` without reading the source.
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let (max, min) = (lessl::docker::MAX_API, lessl::docker::MIN_API);
        format!(
            "{} (Docker Engine API {}.{}, minimum {}.{})",
            env!("CARGO_PKG_VERSION"),
            max.0,
            max.1,
            min.0,
            min.1
        )
    })
}

fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let docker_host = std::env::var("DOCKER_HOST").ok();
    let config = args.into_config(docker_host.as_deref())?;
    lessl::log::init(config.log.level, config.log.format);
    // systemd's variables are read and unset while this process has one thread: changing the
    // environment once the runtime's threads run would race them.
    let inherited = lessl::systemd::take_listen_fds()?;
    let supervision = lessl::systemd::Supervision {
        notifier: lessl::systemd::Notifier::take_from_env()?,
        socket_inherited: inherited.is_some(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        server::preflight(&config).await?;
        // Before the socket exists, so no client and no service manager can see Lessl up
        // while a SIGTERM would still kill it outright.
        let shutdown = shutdown_signal();
        let listener = match inherited {
            Some(socket) => {
                lessl::log!(
                    "socket activation: serving the socket systemd passed; --listen is not used"
                );
                Listener::inherit(socket, &config.server)?
            }
            None => Listener::bind(&config.server)
                .await
                .map_err(|e| format!("cannot listen on {:?}: {e}", config.server.listen))?,
        };
        server::run_supervised(listener, config, shutdown, supervision).await;
        Ok(())
    })
}

/// Resolves at SIGTERM or SIGINT. The handlers are installed by this call, not when the
/// future is first polled: systemd may send SIGTERM right after READY=1, and a signal that
/// arrives before the handler exists kills the process instead of draining it, while one
/// that arrives as it is being installed can be lost (shutdown then hangs).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without handlers the default action (exit) applies, which is still a shutdown.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
