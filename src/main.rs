//! `lessl`: argv to configuration to runtime; every failure leaves through `main` with one
//! message and a non-zero exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lessl::config::ServeArgs;
use lessl::server::{self, Listener};

#[derive(Parser)]
#[command(
    name = "lessl",
    version,
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
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
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
            argv,
        } => {
            let code = lessl::agent::supervise(lessl::agent::RunOptions {
                timeout: Duration::from_millis(timeout_ms),
                output_bytes,
                cwd,
                argv,
            });
            ExitCode::from(u8::try_from(code).unwrap_or(255))
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let docker_host = std::env::var("DOCKER_HOST").ok();
    let config = args.into_config(docker_host.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = Listener::bind(&config)
            .await
            .map_err(|e| format!("cannot listen on {:?}: {e}", config.listen))?;
        server::run(listener, config, shutdown_signal()).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action (exit) applies, which is still a shutdown.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
