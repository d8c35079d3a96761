//! Finding tasks: this process's records (registered, adopted from labels, forgotten with
//! their end reason) and the engine's containers of this instance, by id, short id or name;
//! and the answers of GET and the listings. Never starts, runs or removes anything.

use super::*;

impl Tasks {
    /// Makes a new task known: its record, and its TTL armed.
    pub(super) fn register(&self, record: Record) -> Shared {
        let (id, expires) = (record.id.clone(), record.expires);
        let shared = Arc::new(Mutex::new(record));
        self.inner
            .records
            .lock()
            .unwrap()
            .insert(id.clone(), shared.clone());
        self.inner.expiry.arm(&id, instant_of(expires));
        shared
    }

    /// The record of a live container, made from its labels if this process has none.
    pub(super) fn adopt(&self, found: &Found) -> Shared {
        let mut records = self.inner.records.lock().unwrap();
        records
            .entry(found.id.clone())
            .or_insert_with(|| {
                let daemon = found.labels.get(LABEL_DAEMON).map(String::as_str) == Some("true");
                let mut record = Record::new(
                    &found.id,
                    found.labels.get(LABEL_NAME).cloned(),
                    found.image.clone(),
                    daemon,
                    label_u64(&found.labels, LABEL_CREATED).unwrap_or(0),
                    label_u64(&found.labels, LABEL_EXPIRES).unwrap_or(0),
                );
                record.life = TaskState::Idle;
                record.attachable = found.labels.contains_key(LABEL_CHANNEL);
                if let Some(key) = found.labels.get(LABEL_LANE) {
                    self.inner.lanes.adopt(&found.id, key);
                }
                record.container = if found.running {
                    Container::Up
                } else {
                    Container::Stopped
                };
                record.read_only = found.labels.contains_key(LABEL_READ_ONLY);
                record.callback_url = found.labels.get(LABEL_CALLBACK).cloned();
                if let Some((s, stored)) = self.inner.restored.lock().unwrap().remove(&found.id) {
                    record.failed_command = s.failed_command;
                    record.error = s.error;
                    // A state name this Lessl does not write makes the kept view stale,
                    // which GET handles by patching in today's state.
                    let written = TaskState::parse(&s.state).unwrap_or(TaskState::Exited);
                    record.stored = Some((stored, written));
                }
                // Whoever adopts first (a request may beat the reconciliation after a
                // restart) arms the TTL from the label; reconciliation skips known records.
                self.inner.expiry.arm(&found.id, instant_of(record.expires));
                Arc::new(Mutex::new(record))
            })
            .clone()
    }

    /// Drops the record of `id`, marking why for a run still using it.
    pub(super) fn forget(&self, id: &str, why: EndReason) -> Option<Shared> {
        self.inner.expiry.disarm(id);
        let record = self.inner.records.lock().unwrap().remove(id);
        if why.discards_results() {
            self.inner.store.remove(id);
        }
        if let Some(r) = &record {
            r.lock().unwrap().ended = Some(why);
        }
        record
    }

    pub(super) fn record(&self, id: &str) -> Option<Shared> {
        self.inner.records.lock().unwrap().get(id).cloned()
    }

    /// A finished task this process still remembers, by id, short id or name; of several
    /// sharing a name, the newest.
    pub(super) fn remembered(&self, reference: &str) -> Option<Shared> {
        let records = self.inner.records.lock().unwrap();
        records
            .values()
            .filter_map(|r| {
                let g = r.lock().unwrap();
                g.answers_to(reference)
                    .then(|| ((g.created, g.id.clone()), r.clone()))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, r)| r)
    }

    /// A running task this process mirrors, with an open stream to its agent, by id, short
    /// id or name; only while the mirror of Docker is live.
    pub(super) fn live_record(&self, reference: &str) -> Option<Shared> {
        if !self.inner.mirrored.load(Ordering::SeqCst) {
            return None;
        }
        let records = self.inner.records.lock().unwrap();
        records
            .values()
            .find(|r| {
                let r = r.lock().unwrap();
                let open = r.channel.as_ref().is_some_and(|c| !c.is_closed());
                r.answers_to(reference) && r.takes_commands() && open
            })
            .cloned()
    }

    /// The task `reference` when it takes commands now; a known task that does not (finished,
    /// stopped, on its way out) is a 409 naming its state, whatever the timing.
    pub(super) async fn record_taking_commands(
        &self,
        reference: &str,
    ) -> Result<Option<Shared>, TaskError> {
        let not_running = |state| TaskError::NotRunning {
            reference: reference.to_string(),
            state,
        };
        let record = match self.resolve(reference).await? {
            Some(found) => match self.record(&found.id) {
                Some(r) => r,
                None if found.running => self.adopt(&found),
                None => return Err(not_running(TaskState::of_container(false, &found.status))),
            },
            None => match self.remembered(reference) {
                Some(r) => return Err(not_running(r.lock().unwrap().state())),
                None => return Err(TaskError::NotFound(reference.to_string())),
            },
        };
        let (takes, state) = {
            let r = record.lock().unwrap();
            (r.takes_commands(), r.state())
        };
        if takes {
            Ok(Some(record))
        } else {
            Err(not_running(state))
        }
    }

    pub(super) async fn list_own(&self) -> Result<Vec<Found>, TaskError> {
        let labels = [LABEL_MANAGED.to_string(), self.instance_label()];
        let list = self.inner.engine.list_containers(&labels).await?;
        Ok(list
            .into_iter()
            .filter(|c| !is_going(&c.state))
            .map(|c| Found {
                running: c.state == "running",
                status: c.state,
                id: c.id,
                image: c.image,
                labels: c.labels.unwrap_or_default(),
            })
            .collect())
    }

    /// Whether a container already holds the engine name `name`.
    pub(super) async fn name_taken(&self, name: Option<&str>) -> bool {
        match name {
            Some(n) => self.inner.engine.inspect_container(n).await.is_ok(),
            None => false,
        }
    }

    /// A pooled container not yet given to a task is not a task.
    pub(super) fn idle_in_pool(&self, c: &Found) -> bool {
        c.labels.contains_key(LABEL_POOL) && self.record(&c.id).is_none()
    }

    pub(super) fn owns(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.contains_key(LABEL_MANAGED)
            && labels.get(LABEL_INSTANCE) == Some(&self.inner.settings.instance)
    }

    pub(super) async fn inspect_own(&self, docker_ref: &str) -> Result<Option<Found>, TaskError> {
        match self.inner.engine.inspect_container(docker_ref).await {
            Ok(c) => {
                let labels = c.config.labels.unwrap_or_default();
                // A container being removed (or dead) is gone as far as tasks go: a DELETE
                // that raced a removal already in progress must still read as gone.
                if !self.owns(&labels) || is_going(&c.state.status) {
                    return Ok(None);
                }
                Ok(Some(Found {
                    id: c.id,
                    image: c.config.image,
                    running: c.state.running,
                    status: c.state.status,
                    labels,
                }))
            }
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A live container of this instance by task name, full id or 12-character short id.
    pub(super) async fn resolve(&self, reference: &str) -> Result<Option<Found>, TaskError> {
        if spec::check_name(reference).is_ok() {
            if let Some(found) = self.inspect_own(&self.container_name(reference)).await? {
                return Ok(Some(found));
            }
        }
        let is_id = (reference.len() == 12 || reference.len() == 64)
            && reference
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if is_id {
            if let Some(found) = self.inspect_own(reference).await? {
                // Docker also resolves names and other prefix lengths; only ids count here.
                if found.id.starts_with(reference) && !self.idle_in_pool(&found) {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    pub(super) fn view_of(&self, found: &Found) -> TaskView {
        if let Some(record) = self.record(&found.id) {
            let mut view = record.lock().unwrap().view();
            if !found.running && matches!(view.state, TaskState::Idle | TaskState::Running) {
                view.state = TaskState::of_container(false, &found.status);
            }
            return view;
        }
        let label = |k| found.labels.get(k).cloned();
        TaskView {
            id: found.id.clone(),
            name: label(LABEL_NAME),
            image: found.image.clone(),
            state: TaskState::of_container(found.running, &found.status),
            daemon: label(LABEL_DAEMON).as_deref() == Some("true"),
            created_at: rfc3339(label_u64(&found.labels, LABEL_CREATED).unwrap_or(0) / 1000),
            expires_at: rfc3339(label_u64(&found.labels, LABEL_EXPIRES).unwrap_or(0) / 1000),
            results: Vec::new(),
            failed_command: None,
            error: None,
            persist_error: None,
            files: None,
            kept: None,
        }
    }

    /// The answer of a GET: from memory, or streamed from the state directory when the
    /// newest run's results are kept there and the task has not changed since.
    pub async fn get(&self, reference: &str) -> Result<Answer, TaskError> {
        let (record, view) = match self.resolve(reference).await? {
            Some(found) => (self.record(&found.id), self.view_of(&found)),
            None => match self.remembered(reference) {
                Some(r) => {
                    let view = r.lock().unwrap().view();
                    (Some(r), view)
                }
                None => return Err(TaskError::NotFound(reference.to_string())),
            },
        };
        let stored = record.and_then(|r| r.lock().unwrap().stored.clone());
        let Some((stored, written_state)) = stored else {
            return Ok(Answer::View(Box::new(view)));
        };
        if view.state == written_state {
            return Ok(Answer::Kept(stored));
        }
        // A daemon's container stopped since its run: the kept view, with today's state.
        let read = state::read_body(&stored).and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| state::StateError::Damaged(e.to_string()))
        });
        match read {
            Ok(serde_json::Value::Object(mut v)) => {
                v.insert("state".into(), view.state.as_str().into());
                Ok(Answer::Json(serde_json::Value::Object(v)))
            }
            // Lenient on what it reads back: the task without its results, never a 500.
            _ => {
                task_log!(Warn, &view.id, view.name.as_deref(); "kept results unreadable; answering without them");
                Ok(Answer::View(Box::new(view)))
            }
        }
    }

    /// Every live task of this instance, oldest first; with `all`, also finished tasks
    /// still within their TTL. Results kept on disk are left out (GET the task for them),
    /// so a listing never reads the state directory.
    pub async fn list(&self, all: bool) -> Result<Vec<serde_json::Value>, TaskError> {
        if all || self.inner.mirrored.load(Ordering::SeqCst) {
            let records = self.inner.records.lock().unwrap();
            let mut live: Vec<(u64, String, TaskView, bool)> = records
                .values()
                .filter_map(|r| {
                    let r = r.lock().unwrap();
                    (r.container != Container::Gone || all)
                        .then(|| (r.created, r.id.clone(), r.view(), r.stored.is_some()))
                })
                .collect();
            drop(records);
            live.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            return Ok(live
                .into_iter()
                .map(|(_, _, v, on_disk)| listed(&v, on_disk))
                .collect());
        }
        let mut found = self.list_own().await?;
        found.retain(|c| !self.idle_in_pool(c));
        found.sort_by_key(|c| {
            (
                label_u64(&c.labels, LABEL_CREATED).unwrap_or(0),
                c.id.clone(),
            )
        });
        Ok(found
            .iter()
            .map(|c| {
                let on_disk = self
                    .record(&c.id)
                    .is_some_and(|r| r.lock().unwrap().stored.is_some());
                listed(&self.view_of(c), on_disk)
            })
            .collect())
    }
}

/// What a GET answers: a view built in memory, a kept view patched, or the kept file itself.
#[derive(Debug)]
pub enum Answer {
    View(Box<TaskView>),
    Json(serde_json::Value),
    /// Exactly the bytes to answer, in the state directory.
    Kept(Stored),
}

/// A task as a listing shows it: results kept on disk are left out, so listing stays cheap.
pub(super) fn listed(view: &TaskView, on_disk: bool) -> serde_json::Value {
    let mut v = serde_json::to_value(view).unwrap_or_default();
    if on_disk {
        if let Some(o) = v.as_object_mut() {
            o.remove("results");
        }
    }
    v
}

/// Docker states of a container on its way out.
pub(super) fn is_going(status: &str) -> bool {
    matches!(status, "removing" | "dead")
}

pub(super) fn label_u64(labels: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    labels.get(key)?.parse().ok()
}
