//! A task's resource limits: the server's defaults and maxima applied to what it asks for,
//! and the engine's minimums every limit is held to, in the unit the engine receives.

use super::{Bounds, Limits, RawLimits, SpecError};

pub(super) fn apply_limits(raw: Option<RawLimits>, bounds: &Bounds) -> Result<Limits, SpecError> {
    let d = bounds.limits_default;
    let m = bounds.limits_max;
    let Some(raw) = raw else {
        return Ok(d);
    };
    fn whole(field: &str, v: Option<i64>, default: u64, max: u64) -> Result<u64, SpecError> {
        match v {
            None => Ok(default.min(max)),
            Some(v) if v <= 0 => Err(SpecError::invalid(field, "must be positive")),
            Some(v) if v as u64 > max => Err(SpecError::invalid(
                field,
                format!("{v} is over this server's maximum of {max}"),
            )),
            Some(v) => Ok(v as u64),
        }
    }
    fn frac(field: &str, v: Option<f64>, default: f64, max: f64) -> Result<f64, SpecError> {
        match v {
            None => Ok(default.min(max)),
            Some(v) if !v.is_finite() || v <= 0.0 => {
                Err(SpecError::invalid(field, "must be positive"))
            }
            Some(v) if v > max => Err(SpecError::invalid(
                field,
                format!("{v} is over this server's maximum of {max}"),
            )),
            Some(v) => Ok(v),
        }
    }
    let limits = Limits {
        memory_mb: whole("memory_mb", raw.memory_mb, d.memory_mb, m.memory_mb)?,
        cpus: frac("cpus", raw.cpus, d.cpus, m.cpus)?,
        pids: whole("pids", raw.pids, d.pids, m.pids)?,
        timeout_s: frac("timeout_s", raw.timeout_s, d.timeout_s, m.timeout_s)?,
        output_bytes: whole(
            "output_bytes",
            raw.output_bytes,
            d.output_bytes,
            m.output_bytes,
        )?,
        disk_mb: whole("disk_mb", raw.disk_mb, d.disk_mb, m.disk_mb)?,
    };
    limits
        .below_minimum()
        .map_or(Ok(limits), |(field, message)| {
            Err(SpecError::invalid(field, message))
        })
}

/// Docker's smallest CPU limit: `NanoCpus` below 10^7 is refused, and 0 means no limit.
pub const MIN_NANO_CPUS: i64 = 10_000_000;
/// Docker's smallest memory limit, MiB (the engine refuses less than 6 MiB).
pub const MIN_MEMORY_MB: u64 = 6;
/// The fewest processes a task can do anything with: the agent (the container's first
/// process), `/bin/sh -c`, the command it runs and one pipe stage. Fewer and a shell command
/// cannot even fork, which would look like a broken image rather than a limit.
pub const MIN_PIDS: u64 = 4;
/// The agent receives the command timeout in whole milliseconds.
pub const MIN_TIMEOUT_MS: u64 = 1;

impl Limits {
    /// `NanoCpus` as the engine receives it (rounded, so 0.01 is exactly Docker's minimum).
    pub fn nano_cpus(&self) -> i64 {
        (self.cpus * 1e9).round() as i64
    }

    /// The command timeout in the agent's unit, milliseconds, rounded up.
    pub fn timeout_ms(&self) -> u64 {
        (self.timeout_s * 1000.0).ceil() as u64
    }

    /// The first limit (by field name) that the engine or the agent would receive as 0 or
    /// below its minimum, with a message naming the minimum. Checked in the unit that is
    /// sent, so a value that rounds to nothing (`cpus: 1e-10` is `NanoCpus: 0`, which
    /// Docker reads as unlimited) is refused, never silently unlimited.
    pub fn below_minimum(&self) -> Option<(&'static str, String)> {
        if !(self.cpus.is_finite() && self.nano_cpus() >= MIN_NANO_CPUS) {
            return Some((
                "cpus",
                format!(
                    "{} is below the minimum of 0.01 CPU (Docker's smallest CPU limit)",
                    self.cpus
                ),
            ));
        }
        if self.memory_mb < MIN_MEMORY_MB {
            return Some((
                "memory_mb",
                format!(
                    "{} MiB is below the minimum of {MIN_MEMORY_MB} MiB (Docker's smallest memory limit)",
                    self.memory_mb
                ),
            ));
        }
        if self.pids < MIN_PIDS {
            return Some((
                "pids",
                format!(
                    "{} is below the minimum of {MIN_PIDS} processes (the agent, a shell, a command and a pipe)",
                    self.pids
                ),
            ));
        }
        // Less than a millisecond would be sent as one: a different limit than asked for.
        if !(self.timeout_s.is_finite() && self.timeout_s * 1000.0 >= MIN_TIMEOUT_MS as f64) {
            return Some((
                "timeout_s",
                format!("{} s is below the minimum of 0.001 s", self.timeout_s),
            ));
        }
        if self.output_bytes == 0 {
            return Some(("output_bytes", "must be at least 1 byte".to_string()));
        }
        None
    }
}
