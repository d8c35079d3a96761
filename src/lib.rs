//! Lessl: one static binary that runs tasks in Docker containers over a small REST API.
//!
//! Dependencies point one way: `main` → [`server`] → [`api`] → [`tasks`] → [`docker`],
//! with [`spec`] shared as pure data and nothing importing the API layer.
//!
//! - [`config`]: `lessl serve` flags and `LESSL_*` variables, validated once.
//! - [`server`]: the listener, connections, and graceful shutdown.
//! - [`api`]: routing, auth, body limits, the one error-to-status `match`.
//! - [`spec`]: the task spec v1.0, parsed and validated; no I/O.
//! - [`tasks`]: task lifecycle, command runs, TTLs, reconciliation after restarts.
//! - [`docker`]: the Engine API client over the Unix socket, and stream demultiplexing.
//! - [`fetch`]: `src` downloads over http(s), refusing internal destinations (SSRF).
//! - [`log`]: the event log on stderr, text or JSON, with levels.
//! - [`metrics`]: counters and histograms for `GET /metrics` (Prometheus text format).
//! - [`state`]: the state directory where finished runs' results survive restarts.
//! - [`tar`]: the plain tar archives that carry resources into containers.
//! - [`agent`]: what runs inside task containers: the keep-alive and the command supervisor.
//! - [`cli`]: the command-line client (`run`, `exec`, `ps`, `status`, `rm`); it only speaks HTTP
//!   to a Lessl, and no other module imports it.
//! - [`systemd`]: readiness notifications (`NOTIFY_SOCKET`) and socket activation (`LISTEN_FDS`).

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod docker;
pub mod fetch;
pub mod log;
pub mod metrics;
pub mod server;
pub mod spec;
pub mod state;
pub mod systemd;
pub mod tar;
pub mod tasks;
pub mod util;
