//! A task's runs: POST and PUT admitted and started, each command run over the attach
//! stream or by exec, the results recorded as they finish, the state a run leaves, the
//! results written to the state directory, and the removal of a finished container.

use super::*;
use journal::Journal;

/// A run just started.
pub(super) struct Started {
    /// The task as it is now (the answer of a `?wait=false` request).
    pub view: TaskView,
    /// Yields the task with this run's results when it ends.
    pub handle: tokio::task::JoinHandle<TaskView>,
    /// The run's live events.
    pub events: Arc<Journal>,
}

impl Started {
    /// The task with this run's results, once it ended.
    pub async fn ended(self) -> TaskView {
        self.handle.await.expect("task runner panicked")
    }
}

impl Tasks {
    /// POST: creates every task of the batch (all or none), then runs them concurrently.
    /// With `wait`, answers when every run has finished; otherwise as soon as all started.
    pub async fn create(
        &self,
        request: spec::Request,
        wait: bool,
    ) -> Result<Vec<TaskView>, TaskError> {
        let runs = self.create_runs(request).await?;
        let mut views = Vec::with_capacity(runs.len());
        for run in runs {
            views.push(if wait { run.ended().await } else { run.view });
        }
        Ok(views)
    }

    /// POST answered with live events: every task of the batch created (all or none), or
    /// the error before anything started; then each run's events, in the request's order.
    pub async fn create_streamed(
        &self,
        request: spec::Request,
    ) -> Result<Vec<Arc<Journal>>, TaskError> {
        let runs = self.create_runs(request).await?;
        Ok(runs.into_iter().map(|r| r.events).collect())
    }

    /// PUT answered with live events; whether it created the task, and the run's events.
    pub async fn put_streamed(
        &self,
        reference: &str,
        spec: TaskSpec,
    ) -> Result<(bool, Arc<Journal>), TaskError> {
        let (created, run) = self.put_run(reference, spec).await?;
        Ok((created, run.events))
    }

    /// POST: creates every task of the batch, then starts their runs.
    async fn create_runs(&self, request: spec::Request) -> Result<Vec<Started>, TaskError> {
        let spec::Request {
            tasks: specs,
            is_array,
        } = request;
        let field = |i: usize, f: &str| {
            if is_array {
                format!("[{i}].{f}")
            } else {
                f.to_string()
            }
        };
        let now = now_ms();
        let mut specs = specs;
        // Everything that can fail without Docker fails before Docker is touched.
        for (i, s) in specs.iter().enumerate() {
            let Some(image) = &s.image else {
                return Err(TaskError::Request {
                    field: field(i, "image"),
                    message: "`image` is required to create a task".into(),
                });
            };
            self.check_image(image)?;
            self.user_for(s)?;
            self.inner
                .volumes
                .check(&s.mounts)
                .map_err(|e| e.prefixed(is_array.then_some(i)))?;
            check_runtime_floor(self.inner.settings.runtime.as_deref(), &s.limits).map_err(
                |message| TaskError::Request {
                    field: field(i, "limits.pids"),
                    message,
                },
            )?;
        }
        let mut archives = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter_mut().enumerate() {
            self.fetch_resources(&mut s.resources)
                .await
                .map_err(|e| e.prefixed(if is_array { Some(i) } else { None }))?;
            let archive = files::uploads(&s.resources, s.read_only, s.pwd.as_deref(), now / 1000)
                .map_err(|e| TaskError::Pack {
                field: field(i, &e.field),
                message: e.message,
            })?;
            archives.push(archive);
        }
        let permit = self.admit(specs.len()).await?;
        let daemons = specs.iter().filter(|s| s.daemon).count();
        let reservation = self.reserve_daemons(daemons)?;
        let mut started = Vec::with_capacity(specs.len());
        for (i, (spec, archive)) in specs.into_iter().zip(archives).enumerate() {
            let warm = if self.warm_eligible(&spec) {
                spec.image.as_deref().and_then(|i| self.inner.pool.take(i))
            } else {
                None
            };
            crate::metrics::METRICS.task_started(warm.is_some());
            let start = match warm {
                Some(w) => self.start_in_warm(&spec, archive, w, now).await,
                None => self.start_task(&spec, archive, now).await,
            };
            match start {
                Ok(record) => started.push((record, spec)),
                Err(e) => {
                    for (record, _) in started {
                        let id = record.lock().unwrap().id.clone();
                        self.forget(&id, EndReason::Deleted);
                        self.remove_in_background(id);
                    }
                    return Err(e.prefixed(is_array.then_some(i)));
                }
            }
        }
        // The records hold their slots now.
        drop(reservation);
        let mut permits = admission::split_permit(permit, started.len());
        let mut runs = Vec::with_capacity(started.len());
        for (record, spec) in started {
            runs.push(self.spawn_run(record, spec, permits.pop()));
        }
        Ok(runs)
    }

    /// Starts a run of `spec`'s commands in the task of `record`, returning the task as it
    /// is now (for a 202) and the handle that yields it with this run's results.
    pub(super) fn spawn_run(
        &self,
        record: Shared,
        spec: TaskSpec,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Started {
        let seq = record.lock().unwrap().begin_run();
        let now = record.lock().unwrap().view();
        // A PUT naming its own callback_url is called back instead of the task's.
        let callback =
            (spec.callback_url.clone()).or_else(|| record.lock().unwrap().callback_url.clone());
        // Every run has its events, since a follower may join any run; GET /events finds
        // the newest run's on the record while it runs.
        let events = Journal::begin(&now.id, self.inner.store.spiller(), &now);
        let journal = events.journal().clone();
        record.lock().unwrap().events = Some(journal.clone());
        let this = self.clone();
        let guard = self.inner.background.enter();
        let started = std::time::Instant::now();
        let handle = tokio::spawn(async move {
            let _guard = guard;
            let _permit = permit;
            let outcome = this
                .run(
                    &record,
                    seq,
                    &spec.cmds,
                    &spec.env,
                    spec.pwd.as_deref(),
                    &spec.limits,
                    &events,
                )
                .await;
            let kind = match (&outcome.error, outcome.failed_command) {
                (Some(_), _) => crate::metrics::Outcome::Errored,
                (None, Some(_)) => crate::metrics::Outcome::CommandFailed,
                (None, None) => crate::metrics::Outcome::Succeeded,
            };
            crate::metrics::METRICS.run_ended(kind, started.elapsed());
            // Before `finish`, which removes a finished task's container.
            let files = this.collect_after_run(&record, seq, &spec.collect).await;
            let mut view = this.finish(&record, outcome);
            view.files = files;
            let view = this.persist(&record, seq, view).await;
            events.end(&view);
            let mut r = record.lock().unwrap();
            if r.events
                .as_ref()
                .is_some_and(|e| Arc::ptr_eq(e, events.journal()))
            {
                r.events = None;
            }
            drop(r);
            if let Some(url) = callback {
                this.call_back(url, &view);
            }
            view
        });
        Started {
            view: now,
            handle,
            events: journal,
        }
    }

    /// POSTs a run's final view to `url` in the background (under the guard shutdown waits
    /// for), so the answer to the request that started the run never waits for it. Each
    /// failed attempt is a metric and a log line; the URL is logged without its query,
    /// which may carry the receiver's secret.
    fn call_back(&self, url: String, view: &TaskView) {
        use crate::metrics::{CallbackOutcome, METRICS};
        let guard = self.inner.background.enter();
        let delivery = crate::callback::Delivery {
            policy: self.inner.settings.fetch.clone(),
            token: self.inner.settings.callback_token.clone(),
        };
        let view = view.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let (id, name) = (view.id.clone(), view.name.clone());
            let shown = url.split(['?', '#']).next().unwrap_or_default().to_string();
            // Error texts name the URL too: its query is cut out of them the same way.
            let query = url
                .find('?')
                .map(|at| url[at..].split('#').next().unwrap_or_default());
            let redact = move |text: String| match query {
                Some(q) if q.len() > 1 => text.replace(q, "?…"),
                _ => text,
            };
            // The answer's own encoding; spilled output is read from its files.
            let body = match tokio::task::spawn_blocking(move || {
                let mut body = Vec::new();
                state::write_view(&mut body, &view).map(|()| body)
            })
            .await
            {
                Ok(Ok(body)) => body,
                Ok(Err(e)) => {
                    METRICS.callback_ended(CallbackOutcome::GaveUp);
                    task_log!(Warn, &id, name.as_deref(); "callback to {shown} not sent: the view could not be encoded: {e}");
                    return;
                }
                Err(e) => {
                    METRICS.callback_ended(CallbackOutcome::GaveUp);
                    task_log!(Warn, &id, name.as_deref(); "callback to {shown} not sent: {e}");
                    return;
                }
            };
            let failed = |attempt: u32, e: &crate::fetch::FetchError, again: bool| {
                METRICS.callback_attempt_failed();
                let next = if again { "; retrying" } else { "" };
                let e = redact(e.to_string());
                task_log!(Warn, &id, name.as_deref(); "callback to {shown}: attempt {attempt} failed: {e}{next}");
            };
            use crate::callback::CallbackError;
            match crate::callback::deliver(&url, body.into(), &delivery, failed).await {
                Ok(code) => {
                    METRICS.callback_ended(CallbackOutcome::Delivered);
                    task_log!(Debug, &id, name.as_deref(); "callback to {shown} answered {code}");
                }
                Err(e) => {
                    METRICS.callback_ended(match e {
                        CallbackError::Refused(_) => CallbackOutcome::Refused,
                        CallbackError::Rejected(_) => CallbackOutcome::Rejected,
                        CallbackError::GaveUp { .. } => CallbackOutcome::GaveUp,
                    });
                    let e = redact(e.to_string());
                    task_log!(Warn, &id, name.as_deref(); "callback to {shown} failed: {e}");
                }
            }
        });
    }

    /// PUT: runs the spec's commands in the live task `reference`, or creates it (named
    /// `reference`) when there is none and the spec names an image. Returns whether it created.
    pub async fn put(
        &self,
        reference: &str,
        spec: TaskSpec,
        wait: bool,
    ) -> Result<(bool, TaskView), TaskError> {
        let (created, run) = self.put_run(reference, spec).await?;
        Ok((created, if wait { run.ended().await } else { run.view }))
    }

    /// PUT: checks and places what the spec brings, then starts the run.
    async fn put_run(
        &self,
        reference: &str,
        mut spec: TaskSpec,
    ) -> Result<(bool, Started), TaskError> {
        // A task this process watches live answers from memory: no Docker round trip.
        let record = match self.live_record(reference) {
            Some(r) => Some(r),
            None => self
                .record_taking_commands(reference)
                .await
                .or_else(|e| match e {
                    // No task at all by that name: a PUT with an image creates one.
                    TaskError::NotFound(_) => Ok(None),
                    e => Err(e),
                })?,
        };
        let Some(record) = record else {
            return self.put_creates(reference, spec).await;
        };
        let (id, name, read_only) = {
            let r = record.lock().unwrap();
            (r.id.clone(), r.name.clone(), r.read_only)
        };
        if let Some(r) = spec.resources.first().filter(|_| read_only) {
            return Err(TaskError::Request {
                field: format!("{}.dest", r.field),
                message: "this task's root filesystem is read-only: files are placed only when it is created".into(),
            });
        }
        if spec.name.is_some() && spec.name != name {
            return Err(TaskError::Request {
                field: "task_name".into(),
                message: "task_name differs from the task's name; a task cannot be renamed".into(),
            });
        }
        if let Some(m) = spec.mounts.first() {
            return Err(TaskError::Request {
                field: format!("{}.mnt", m.field),
                message: "mounts apply only when a task is created".into(),
            });
        }
        self.fetch_resources(&mut spec.resources).await?;
        self.place_in_running(&record, &id, &spec.resources).await?;
        let permit = self.admit(1).await?;
        Ok((false, self.spawn_run(record, spec, Some(permit))))
    }

    /// PUT to a name no live task has: creates the task, named after the path.
    pub(super) async fn put_creates(
        &self,
        reference: &str,
        mut spec: TaskSpec,
    ) -> Result<(bool, Started), TaskError> {
        if spec.image.is_none() {
            return Err(TaskError::NotFound(reference.to_string()));
        }
        if spec::check_name(reference).is_err() {
            return Err(TaskError::Request {
                field: "task_name".into(),
                message: format!(
                    "`{reference}` cannot name a new task: use [A-Za-z0-9_.-], 1 to 64 characters"
                ),
            });
        }
        if spec.name.as_deref().is_some_and(|n| n != reference) {
            return Err(TaskError::Request {
                field: "task_name".into(),
                message: "task_name differs from the task named in the path".into(),
            });
        }
        spec.name = Some(reference.to_string());
        let request = spec::Request {
            tasks: vec![spec],
            is_array: false,
        };
        let mut runs = self.create_runs(request).await?;
        Ok((true, runs.remove(0)))
    }

    /// The live channel of a record, attaching again (after a restart of Lessl, say) when the
    /// container was made for one.
    pub(super) async fn channel_for(&self, record: &Shared) -> Option<Arc<channel::Channel>> {
        let (id, current, attachable) = {
            let r = record.lock().unwrap();
            (r.id.clone(), r.channel.clone(), r.attachable)
        };
        match current {
            Some(c) if !c.is_closed() => return Some(c),
            // A dead channel (broken frames, closed input, a stuck agent) stays dead: this
            // container's commands go by exec from now on.
            Some(c) if c.is_dead() => {
                record.lock().unwrap().attachable = false;
                return None;
            }
            _ if !attachable || self.inner.settings.exec_only => return None,
            _ => {}
        }
        let fresh = self.open_channel(&id).await?;
        // A container of an older Lessl may carry the label without an agent that answers.
        if !fresh.synced(Duration::from_secs(2)).await {
            task_log!(Warn, &id, None; "agent did not answer on its attach stream; using exec");
            record.lock().unwrap().attachable = false;
            return None;
        }
        record.lock().unwrap().channel = Some(fresh.clone());
        Some(fresh)
    }

    /// Runs `cmds` in order until one fails, recording each result as it finishes.
    // The spec's parts, then where the run's events go.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run(
        &self,
        record: &Shared,
        seq: u64,
        cmds: &[Cmd],
        env: &[(String, String)],
        pwd: Option<&str>,
        limits: &Limits,
        events: &journal::Writer,
    ) -> RunOutcome {
        let id = record.lock().unwrap().id.clone();
        let mut out = RunOutcome::default();
        let spill = self.inner.store.spiller();
        for (i, cmd) in cmds.iter().enumerate() {
            let mut ev = events.command(i);
            let attached = match self.channel_for(record).await {
                Some(chan) => {
                    run::run_attached(&chan, cmd, env, pwd, limits, &spill, Some(&mut ev)).await
                }
                None => None,
            };
            // No channel, or the agent never read the request: nothing ran, so exec it.
            let outcome = match attached {
                Some(outcome) => outcome,
                None => {
                    let engine = &*self.inner.engine;
                    let ev = Some(&mut ev);
                    run::run_command(engine, &id, cmd, env, pwd, limits, &spill, ev).await
                }
            };
            let outcome = self.check_killed_with_container(&id, outcome).await;
            let ended = record.lock().unwrap().ended;
            let ended_failure = EndReason::failure;
            let r = outcome.as_ref().unwrap_or_else(RunError::partial);
            ev.exit(r);
            crate::metrics::METRICS.command_ran(Duration::from_millis(r.duration_ms));
            let done = match outcome {
                Ok(mut result) => {
                    // Killed with its container: whatever code Docker saw, it did not finish.
                    if ended.is_some() {
                        result.exit_code = None;
                    }
                    let ok = result.succeeded();
                    out.results.push(result);
                    if !ok {
                        out.failed_command = Some(i);
                        out.error = ended.map(ended_failure);
                    }
                    !ok
                }
                Err(RunError::Docker { partial, error }) => {
                    out.results.push(partial);
                    out.failed_command = Some(i);
                    out.error = Some(ended.map(ended_failure).unwrap_or_else(|| RunFailure {
                        code: error.step.code().to_string(),
                        message: error.to_string(),
                    }));
                    true
                }
                Err(RunError::Lost { partial, why }) => {
                    out.results.push(partial);
                    out.failed_command = Some(i);
                    out.error = Some(ended.map(ended_failure).unwrap_or_else(|| RunFailure {
                        code: "task.container_stopped".to_string(),
                        message: format!("the task's container stopped under the command: {why}"),
                    }));
                    true
                }
                Err(RunError::Unresponsive { partial, why }) => {
                    out.results.push(partial);
                    out.failed_command = Some(i);
                    out.error = Some(ended.map(ended_failure).unwrap_or_else(|| RunFailure {
                        code: "task.agent_unresponsive".to_string(),
                        message: format!("the task's agent did not run the command: {why}"),
                    }));
                    true
                }
                Err(RunError::ChannelBroken { partial, why }) => {
                    out.results.push(partial);
                    out.failed_command = Some(i);
                    out.error = Some(ended.map(ended_failure).unwrap_or_else(|| RunFailure {
                        code: "task.agent_channel_broken".to_string(),
                        message: format!("the channel to the task's agent broke: {why}"),
                    }));
                    true
                }
            };
            // GET shows the newest run's results as they finish.
            let mut r = record.lock().unwrap();
            if r.seq == seq {
                r.results = out.results.clone();
                r.failed_command = out.failed_command;
                r.error = out.error.clone();
            }
            if done {
                break;
            }
        }
        out
    }

    /// A command killed by a signal, or whose stream or exec failed, may have died with its
    /// container (a Docker restart stops every container; the OOM killer may take the whole
    /// sandbox): that is the task failing, not the command. A container the OOM killer ended
    /// is reported as the engine saw it: `oom_killed`, exit 137.
    pub(super) async fn check_killed_with_container(
        &self,
        id: &str,
        outcome: Result<CmdResult, RunError>,
    ) -> Result<CmdResult, RunError> {
        let result = match &outcome {
            Ok(r) if r.exit_code.is_some_and(|c| c >= 128) => r.clone(),
            Err(RunError::Lost { partial, .. }) => partial.clone(),
            // 409: Docker refused the exec because the container is not running.
            Err(RunError::Docker { partial, error }) if error.status() == Some(409) => {
                partial.clone()
            }
            _ => return outcome,
        };
        let unfinished = CmdResult {
            exit_code: None,
            ..result.clone()
        };
        match self.inner.engine.inspect_container(id).await {
            Ok(c) if c.state.running => outcome,
            Ok(c) if c.state.oom_killed => Err(RunError::Lost {
                partial: CmdResult {
                    exit_code: Some(crate::agent::SIGKILL_EXIT.into()),
                    oom_killed: true,
                    ..result
                },
                why: "the kernel's OOM killer ended the container (memory limit)".into(),
            }),
            Ok(_) if outcome.is_err() => outcome,
            Ok(c) => Err(RunError::Lost {
                partial: unfinished,
                why: format!("the container is {}", c.state.status),
            }),
            Err(e) if e.status() == Some(404) => Err(RunError::Lost {
                partial: unfinished,
                why: "the container was removed".into(),
            }),
            Err(_) if outcome.is_err() => outcome,
            // Docker itself is unreachable: the exit code cannot be trusted either.
            Err(error) => Err(RunError::Docker {
                partial: unfinished,
                error,
            }),
        }
    }

    /// After a run: a daemon waits for more; anything else is removed, off the answer's
    /// path. Returns the task with this run's own results.
    pub(super) fn finish(&self, record: &Shared, outcome: RunOutcome) -> TaskView {
        let (id, remove, mut view) = {
            let mut r = record.lock().unwrap();
            r.end_run();
            // A finished non-daemon task takes no more commands: its attach stream (one fd
            // here and one in the engine) must not live on until the TTL with the record.
            if !r.daemon && r.runs == 0 {
                r.channel = None;
            }
            (r.id.clone(), !r.daemon && r.runs == 0, r.view())
        };
        // This run's own answer: another run's failure does not make this one failed.
        if outcome.error.is_some() {
            view.state = TaskState::Failed;
        } else if view.state == TaskState::Failed {
            view.state = if view.daemon {
                TaskState::Idle
            } else {
                TaskState::Finished
            };
        }
        view.results = outcome.results;
        view.failed_command = outcome.failed_command;
        view.error = outcome.error;
        if remove {
            self.remove_in_background(id);
        }
        view
    }

    /// Writes a run's final view to the state directory and drops its results from memory;
    /// GET then streams them from disk. When they cannot be written (directory full or
    /// failing), they stay in memory and the view says so: nothing is silently dropped.
    pub(super) async fn persist(&self, record: &Shared, seq: u64, mut view: TaskView) -> TaskView {
        if !self.inner.store.enabled() {
            return view;
        }
        let summary = record.lock().unwrap().summary(&view);
        let this = self.clone();
        let (written, returned) = tokio::task::spawn_blocking(move || {
            let written = this.inner.store.write_run(summary, &view, seq);
            if written.is_err() {
                // Kept in memory until the TTL, as without a state directory: spill files go.
                run::into_memory(&mut view.results);
            }
            (written, view)
        })
        .await
        .expect("state writer panicked");
        view = returned;
        let mut r = record.lock().unwrap();
        match written {
            // A newer run started meanwhile: its own end will write; this file is stale. Or a
            // newer run ended first and was kept: this answer comes from memory.
            Ok(_) if r.seq != seq => {}
            Err(state::StateError::Superseded) => {}
            // Removed (TTL, DELETE) while it was written: the file must not outlive it.
            Ok(_) if r.ended.is_some_and(EndReason::discards_results) => {
                drop(r);
                self.inner.store.remove(&view.id);
            }
            Ok(stored) => {
                // The run's spill files go with the answer, which holds their last references.
                r.results = Vec::new();
                r.files = None;
                view.kept = Some(stored.clone());
                r.stored = Some((stored, view.state));
            }
            Err(e) => {
                crate::metrics::METRICS.result_not_kept();
                task_log!(Warn, &view.id, view.name.as_deref(); "results not kept on disk: {e}");
                let failure = RunFailure {
                    code: e.code().to_string(),
                    message: format!("the results were not written to the state directory and will not survive a restart: {e}"),
                };
                if r.seq == seq {
                    r.persist_error = Some(failure.clone());
                    r.results = view.results.clone();
                }
                view.persist_error = Some(failure);
            }
        }
        view
    }

    pub(super) fn remove_in_background(&self, id: String) {
        let docker = self.inner.engine.clone();
        let guard = self.inner.background.enter();
        tokio::spawn(async move {
            let _guard = guard;
            // The TTL timer stays armed: if this fails, expiry tries again.
            if let Err(e) = docker.remove_container(&id).await {
                task_log!(Warn, &id, None; "removal failed: {e}");
            }
        });
    }
}

/// What `GET /tasks/{ref}/events` reads.
pub enum Events {
    /// The run in progress: what it printed so far, then live until it ends.
    Live(Arc<Journal>),
    /// The last run has ended: its events rebuilt from its final view, whole.
    Ended(Vec<u8>),
}

impl Tasks {
    /// The events of the newest run of task `reference`.
    pub async fn events(&self, reference: &str) -> Result<Events, TaskError> {
        let live = {
            let records = self.inner.records.lock().unwrap();
            records.values().find_map(|r| {
                let r = r.lock().unwrap();
                r.events.clone().filter(|_| r.answers_to(reference))
            })
        };
        if let Some(journal) = live {
            return Ok(Events::Live(journal));
        }
        let view = match self.get(reference).await? {
            Answer::View(v) => serde_json::to_value(&*v).unwrap_or_default(),
            Answer::Json(v) => v,
            // Removed at its TTL since the lookup, or damaged: as GET would have it, gone.
            Answer::Kept(stored) => state::read_body(&stored)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| TaskError::NotFound(reference.to_string()))?,
        };
        Ok(Events::Ended(journal::replay(&view)))
    }
}
