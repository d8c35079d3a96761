//! Lessl: one static binary that runs tasks in Docker containers over a small REST API.
//!
//! Dependencies point one way: `main` → [`server`] → [`api`] → [`tasks`] → [`docker`], with
//! [`spec`] shared as pure data and nothing importing the API layer. What each module owns,
//! and every module of this crate it imports (checked against its `use crate::…` lines):
//!
//! - [`config`]: `lessl serve` flags and `LESSL_*` variables, validated once into the nested
//!   `Config` each layer takes whole. Imports `spec`, `tasks` (its `Settings`), `fetch`
//!   (its `Policy`), `log` (levels), `docker` (the `DOCKER_HOST` rule).
//! - [`server`]: the listener, connections, and graceful shutdown. Imports `config`, `api`,
//!   `tasks`, `docker`, `systemd`, `log`.
//! - [`api`]: routing, auth, body limits, the one error-to-status `match`. Imports `tasks`,
//!   `spec`, `state` (kept files), `docker` and `fetch` (their errors), `metrics`, `log`.
//! - [`tasks`]: task lifecycle, command runs, TTLs, reconciliation after restarts, behind an
//!   engine seam (`tasks::engine`). Imports `docker`, `spec`, `fetch`, `callback`, `state`,
//!   `spill`, `tar`, `agent` (its protocol), `metrics`, `log`, `util`.
//! - [`state`]: the state directory where finished runs' results survive restarts. Imports
//!   `log`, `spill`, `json_stream` and, against the grain, `tasks::view` (the view it
//!   stores).
//! - [`spill`]: a running command's output past a small memory budget, in spill files in
//!   the state directory. Imports `log`.
//! - [`json_stream`]: the JSON string encoder that writes output into result files in
//!   chunks; pure. Imports nothing.
//! - [`spec`]: the task spec v1.0, parsed and validated; no I/O. Imports `fetch` (its URL
//!   parser, pure) and `b64`.
//! - [`docker`]: the Engine API client over the Unix socket or TCP with TLS, and stream
//!   demultiplexing. Imports `metrics` (each call's time) and `util`.
//! - [`fetch`]: `src` downloads over http(s), refusing internal destinations (SSRF). Imports
//!   `util`.
//! - [`callback`]: delivery of a run's final view to the task's `callback_url`: signed,
//!   SSRF-checked (through `fetch`), retried. Imports `fetch`.
//! - [`metrics`]: counters and histograms for `GET /metrics` (Prometheus text format). Imports
//!   `docker::Step`, pure data, for its one slot per Docker step: the one pair of modules
//!   that name each other.
//! - [`log`]: the event log on stderr, text or JSON, with levels. Imports `util`.
//! - [`systemd`]: readiness notifications (`NOTIFY_SOCKET`) and socket activation
//!   (`LISTEN_FDS`). Imports `log`.
//! - [`cli`]: the command-line client (`run`, `exec`, `ps`, `status`, `rm`); it only speaks
//!   HTTP to a Lessl, and no other module imports it. Imports `util`.
//! - [`tar`]: the plain tar archives that carry resources into containers. Imports nothing.
//! - [`b64`]: base64 decoding of the megabytes a resource's `data` carries; pure. Imports
//!   nothing.
//! - [`agent`]: what runs inside task containers: the keep-alive and the command supervisor.
//!   Imports `spec` (its reserved paths, pure) and `b64`.
//! - [`util`]: the error chain, short ids, the clock, RFC 3339, percent-encoding. Imports
//!   nothing, so any module may use it.
//! - [`alloc`]: the binary's allocator, the system's with a cache of large freed blocks.
//!   Imports nothing.

pub mod agent;
pub mod alloc;
pub mod api;
pub mod b64;
pub mod callback;
pub mod cli;
pub mod config;
pub mod docker;
pub mod fetch;
pub mod json_stream;
pub mod log;
pub mod metrics;
pub mod server;
pub mod spec;
pub mod spill;
pub mod state;
pub mod systemd;
pub mod tar;
pub mod tasks;
pub mod util;
