//! Process-wide counters and histograms, rendered in Prometheus' text format for
//! `GET /metrics`. Lock-free atomics only, so recording costs nothing on hot paths; modules
//! record what happened, and this module knows nothing of what the numbers mean.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::docker::Step;

/// Upper bounds of histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// A fixed-bucket histogram of durations.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    /// Sum in microseconds, to keep it an integer.
    sum_us: AtomicU64,
    total: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS.len()],
            sum_us: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        // Cumulative buckets are summed at render time; each observation lands in one.
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let total = self.total.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }
}

/// How a task's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every command exited 0.
    Succeeded,
    /// A command exited non-zero (or timed out, or was OOM-killed).
    CommandFailed,
    /// Lessl could not complete the run (container gone, Docker failed, TTL reached).
    Errored,
}

const OUTCOMES: [(Outcome, &str); 3] = [
    (Outcome::Succeeded, "succeeded"),
    (Outcome::CommandFailed, "command_failed"),
    (Outcome::Errored, "error"),
];

/// How a callback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// The URL or its address was refused (internal, not opened by the operator).
    Refused,
    /// The receiver answered 4xx or an unfollowed redirect: not retried.
    Rejected,
    /// Every attempt failed on a connection error, a timeout or a 5xx.
    GaveUp,
}

const CALLBACK_OUTCOMES: [(CallbackOutcome, &str); 4] = [
    (CallbackOutcome::Delivered, "delivered"),
    (CallbackOutcome::Refused, "refused"),
    (CallbackOutcome::Rejected, "rejected"),
    (CallbackOutcome::GaveUp, "gave_up"),
];

/// How an offer of the agent's lane ended, or one connection to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneOutcome {
    /// The agent connected with the token.
    Up,
    /// Nobody sent the token in time: the attach stream carries everything.
    NoAgent,
    /// A connection without the right token (counted per connection).
    Refused,
}

/// The `# HELP` and `# TYPE` lines of one metric.
fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// Every metric Lessl keeps.
pub struct Metrics {
    runs: [AtomicU64; 3],
    run_seconds: Histogram,
    command_seconds: Histogram,
    /// Per Docker step, at `step as usize` (the order of `Step::ALL`).
    docker_seconds: [Histogram; Step::ALL.len()],
    docker_errors: [AtomicU64; Step::ALL.len()],
    /// By status class 2xx..5xx.
    http: [AtomicU64; 4],
    warm_taken: AtomicU64,
    cold_started: AtomicU64,
    /// Runs whose results could not be written to the state directory (full, or failing).
    results_not_kept: AtomicU64,
    /// Callbacks by how they ended, in the order of `CALLBACK_OUTCOMES`.
    callbacks: [AtomicU64; 4],
    /// Callback attempts that failed, retried or not.
    callback_attempts_failed: AtomicU64,
    /// Lane offers that came up, that found no agent; connections refused.
    lanes: [AtomicU64; 3],
    /// Requests sent to agents, over the attach stream and over the lane.
    agent_requests: [AtomicU64; 2],
}

pub static METRICS: Metrics = Metrics::new();

/// Point-in-time values the task layer reports when metrics are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub live_tasks: usize,
    pub running_tasks: usize,
    pub pooled_containers: usize,
}

impl Metrics {
    const fn new() -> Self {
        Metrics {
            runs: [const { AtomicU64::new(0) }; 3],
            run_seconds: Histogram::new(),
            command_seconds: Histogram::new(),
            docker_seconds: [const { Histogram::new() }; Step::ALL.len()],
            docker_errors: [const { AtomicU64::new(0) }; Step::ALL.len()],
            http: [const { AtomicU64::new(0) }; 4],
            warm_taken: AtomicU64::new(0),
            cold_started: AtomicU64::new(0),
            results_not_kept: AtomicU64::new(0),
            callbacks: [const { AtomicU64::new(0) }; 4],
            callback_attempts_failed: AtomicU64::new(0),
            lanes: [const { AtomicU64::new(0) }; 3],
            agent_requests: [const { AtomicU64::new(0) }; 2],
        }
    }

    pub fn callback_ended(&self, outcome: CallbackOutcome) {
        let i = CALLBACK_OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.callbacks[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn callback_attempt_failed(&self) {
        self.callback_attempts_failed
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn run_ended(&self, outcome: Outcome, took: Duration) {
        let i = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.runs[i].fetch_add(1, Ordering::Relaxed);
        self.run_seconds.observe(took);
    }

    pub fn command_ran(&self, took: Duration) {
        self.command_seconds.observe(took);
    }

    pub fn docker_call(&self, step: Step, took: Duration, failed: bool) {
        let i = step as usize;
        self.docker_seconds[i].observe(took);
        if failed {
            self.docker_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn http_answered(&self, status: u16) {
        if let Some(c) = self.http.get((status / 100).saturating_sub(2) as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn task_started(&self, warm: bool) {
        let c = if warm {
            &self.warm_taken
        } else {
            &self.cold_started
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lane_ended(&self, outcome: LaneOutcome) {
        self.lanes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A request went to an agent, over its lane or its attach stream.
    pub fn agent_request(&self, lane: bool) {
        self.agent_requests[usize::from(lane)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn result_not_kept(&self) {
        self.results_not_kept.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::new();
        help(
            &mut out,
            "lessl_runs_total",
            "counter",
            "Task runs (a POST's or a PUT's commands) by outcome.",
        );
        for (i, (_, label)) in OUTCOMES.iter().enumerate() {
            let n = self.runs[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "lessl_runs_total{{outcome=\"{label}\"}} {n}");
        }
        help(
            &mut out,
            "lessl_tasks_started_total",
            "counter",
            "Tasks started, by container origin.",
        );
        let warm = self.warm_taken.load(Ordering::Relaxed);
        let cold = self.cold_started.load(Ordering::Relaxed);
        let _ = writeln!(out, "lessl_tasks_started_total{{start=\"warm\"}} {warm}");
        let _ = writeln!(out, "lessl_tasks_started_total{{start=\"cold\"}} {cold}");
        help(
            &mut out,
            "lessl_results_not_kept_total",
            "counter",
            "Runs whose results could not be written to the state directory.",
        );
        let n = self.results_not_kept.load(Ordering::Relaxed);
        let _ = writeln!(out, "lessl_results_not_kept_total {n}");
        self.render_callbacks(&mut out);
        self.render_lanes(&mut out);
        help(
            &mut out,
            "lessl_run_duration_seconds",
            "histogram",
            "Wall time of task runs.",
        );
        self.run_seconds
            .render(&mut out, "lessl_run_duration_seconds", "");
        help(
            &mut out,
            "lessl_command_duration_seconds",
            "histogram",
            "Wall time of single commands.",
        );
        self.command_seconds
            .render(&mut out, "lessl_command_duration_seconds", "");
        help(
            &mut out,
            "lessl_docker_call_duration_seconds",
            "histogram",
            "Docker Engine API calls by step.",
        );
        for (i, step) in Step::ALL.iter().enumerate() {
            if self.docker_seconds[i].total.load(Ordering::Relaxed) > 0 {
                let labels = format!("step=\"{}\"", step.code());
                self.docker_seconds[i].render(
                    &mut out,
                    "lessl_docker_call_duration_seconds",
                    &labels,
                );
            }
        }
        help(
            &mut out,
            "lessl_docker_errors_total",
            "counter",
            "Docker Engine API calls that failed, by step.",
        );
        for (i, step) in Step::ALL.iter().enumerate() {
            let n = self.docker_errors[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "lessl_docker_errors_total{{step=\"{}\"}} {n}",
                step.code()
            );
        }
        help(
            &mut out,
            "lessl_http_responses_total",
            "counter",
            "API answers by status class.",
        );
        for (i, class) in ["2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let n = self.http[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "lessl_http_responses_total{{class=\"{class}\"}} {n}");
        }
        help(
            &mut out,
            "lessl_live_tasks",
            "gauge",
            "Tasks whose containers exist.",
        );
        let _ = writeln!(out, "lessl_live_tasks {}", g.live_tasks);
        help(
            &mut out,
            "lessl_running_tasks",
            "gauge",
            "Tasks running commands now.",
        );
        let _ = writeln!(out, "lessl_running_tasks {}", g.running_tasks);
        help(
            &mut out,
            "lessl_pooled_containers",
            "gauge",
            "Idle warm-pool containers.",
        );
        let _ = writeln!(out, "lessl_pooled_containers {}", g.pooled_containers);
        out
    }

    fn render_callbacks(&self, out: &mut String) {
        help(
            out,
            "lessl_callbacks_total",
            "counter",
            "Callbacks (a run's final view POSTed to its callback_url) by how they ended.",
        );
        for (i, (_, label)) in CALLBACK_OUTCOMES.iter().enumerate() {
            let n = self.callbacks[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "lessl_callbacks_total{{outcome=\"{label}\"}} {n}");
        }
        help(
            out,
            "lessl_callback_attempts_failed_total",
            "counter",
            "Callback attempts that failed (connection error, timeout, refusal or non-2xx).",
        );
        let n = self.callback_attempts_failed.load(Ordering::Relaxed);
        let _ = writeln!(out, "lessl_callback_attempts_failed_total {n}");
    }

    fn render_lanes(&self, out: &mut String) {
        help(
            out,
            "lessl_lanes_total",
            "counter",
            "Offers of an agent's lane (its socket past the engine) by outcome: up, or no_agent when none connected in time (an older agent, a runtime without host sockets).",
        );
        for (outcome, label) in [(LaneOutcome::Up, "up"), (LaneOutcome::NoAgent, "no_agent")] {
            let n = self.lanes[outcome as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "lessl_lanes_total{{outcome=\"{label}\"}} {n}");
        }
        help(
            out,
            "lessl_lane_connections_refused_total",
            "counter",
            "Connections to an offered lane that did not send its token (a command in the container, say).",
        );
        let n = self.lanes[LaneOutcome::Refused as usize].load(Ordering::Relaxed);
        let _ = writeln!(out, "lessl_lane_connections_refused_total {n}");
        help(
            out,
            "lessl_agent_requests_total",
            "counter",
            "Requests sent to agents (commands, placements), by transport: the engine's attach stream, or the lane.",
        );
        for (i, label) in ["attach", "lane"].iter().enumerate() {
            let n = self.agent_requests[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "lessl_agent_requests_total{{transport=\"{label}\"}} {n}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(500));
        let mut out = String::new();
        h.render(&mut out, "x", "step=\"s\"");
        assert!(
            out.contains("x_bucket{step=\"s\",le=\"0.001\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{step=\"s\",le=\"0.05\"} 2\n"));
        assert!(out.contains("x_bucket{step=\"s\",le=\"120\"} 2\n"));
        assert!(out.contains("x_bucket{step=\"s\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{step=\"s\"} 3\n"));
        assert!(out.contains("x_sum{step=\"s\"} 500.0305\n"));
    }

    #[test]
    fn every_docker_step_has_a_slot_and_a_line() {
        let m = Metrics::new();
        for step in Step::ALL {
            m.docker_call(step, Duration::from_millis(1), true);
        }
        let text = m.render(Gauges::default());
        for step in Step::ALL {
            let line = format!("lessl_docker_errors_total{{step=\"{}\"}} 1", step.code());
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn rendering_has_every_family() {
        let m = Metrics::new();
        m.run_ended(Outcome::CommandFailed, Duration::from_millis(3));
        m.docker_call(Step::CreateContainer, Duration::from_millis(40), true);
        m.http_answered(201);
        m.http_answered(503);
        m.callback_ended(CallbackOutcome::GaveUp);
        m.callback_attempt_failed();
        let text = m.render(Gauges {
            live_tasks: 2,
            running_tasks: 1,
            pooled_containers: 3,
        });
        for line in [
            "lessl_runs_total{outcome=\"command_failed\"} 1",
            "lessl_docker_errors_total{step=\"docker.container.create\"} 1",
            "lessl_docker_call_duration_seconds_count{step=\"docker.container.create\"} 1",
            "lessl_http_responses_total{class=\"2xx\"} 1",
            "lessl_http_responses_total{class=\"5xx\"} 1",
            "lessl_live_tasks 2",
            "lessl_running_tasks 1",
            "lessl_pooled_containers 3",
            "lessl_callbacks_total{outcome=\"gave_up\"} 1",
            "lessl_callbacks_total{outcome=\"delivered\"} 0",
            "lessl_callback_attempts_failed_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
