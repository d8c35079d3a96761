//! Keeping the task records in step with Docker: the event stream that mirrors container
//! deaths and removals, the reconciliation that adopts or removes what an earlier Lessl (or
//! a stretch without events) left, and the removal of tasks whose TTL has come.

use super::*;

impl Tasks {
    /// Keeps the in-memory records a mirror of Docker: watches the event stream of this
    /// instance's containers, and after every (re)connection reconciles with a full listing,
    /// so nothing that happened while the stream was down is missed. While the mirror is
    /// live, listings are served from memory.
    pub(super) async fn mirror_docker(&self) {
        let labels = [LABEL_MANAGED.to_string(), self.instance_label()];
        let mut pool_started = false;
        loop {
            let events = match self.inner.engine.events(&labels).await {
                Ok(e) => e,
                Err(e) => {
                    log!(warn: "docker events: {e}; retrying in {RECONCILE_RETRY:?}");
                    tokio::time::sleep(RECONCILE_RETRY).await;
                    continue;
                }
            };
            if let Err(e) = self.reconcile().await {
                log!(warn: "reconcile: {e}; retrying in {RECONCILE_RETRY:?}");
                tokio::time::sleep(RECONCILE_RETRY).await;
                continue;
            }
            self.inner.mirrored.store(true, Ordering::SeqCst);
            if !pool_started && !self.inner.settings.warm.is_empty() {
                pool_started = true;
                let this = self.clone();
                tokio::spawn(async move { this.refill_pool().await });
            }
            let why = self.follow_events(events).await;
            self.inner.mirrored.store(false, Ordering::SeqCst);
            log!(warn: "docker events stream ended ({why}); reconnecting");
        }
    }

    /// Applies events until the stream ends; returns why it ended.
    pub(super) async fn follow_events(&self, mut events: engine::Reader) -> String {
        use tokio::io::AsyncReadExt;
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            let n = match events.read(&mut chunk).await {
                Ok(0) => return "end of stream".into(),
                Err(e) => return e.to_string(),
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if let Ok(event) = serde_json::from_slice::<crate::docker::models::Event>(&line) {
                    self.apply_event(&event.action, &event.actor.id);
                }
            }
        }
    }

    /// A container stopped or went away: the records say so at once.
    pub(super) fn apply_event(&self, action: &str, id: &str) {
        if matches!(action, "destroy" | "remove") {
            self.inner.lanes.release(id);
        }
        let Some(record) = self.record(id) else {
            return;
        };
        match action {
            "die" => {
                let mut r = record.lock().unwrap();
                if r.container == Container::Up {
                    r.container = Container::Stopped;
                }
            }
            // Docker says `destroy`; Podman's compatible API says `remove`.
            "destroy" | "remove" => {
                let daemon = {
                    let mut r = record.lock().unwrap();
                    r.container = Container::Gone;
                    r.daemon
                };
                // A daemon's record only mirrors its container; a finished non-daemon's
                // results stay visible until its TTL.
                if daemon {
                    self.forget(id, EndReason::Removed);
                }
            }
            _ => {}
        }
    }

    /// Adopts what an earlier Lessl left: re-arms the TTL of live daemon tasks and removes
    /// what expired, what never started and non-daemon tasks whose run died with that Lessl.
    pub async fn reconcile(&self) -> Result<(), TaskError> {
        let now = now_ms();
        let mut adopted = 0;
        let mut removed = 0;
        // Known before the listing, so a task created meanwhile is not taken for gone.
        let known: Vec<String> = self.inner.records.lock().unwrap().keys().cloned().collect();
        let listed = self.list_own().await?;
        // Records whose containers vanished while nobody watched.
        let present: std::collections::HashSet<&str> =
            listed.iter().map(|c| c.id.as_str()).collect();
        for id in known.iter().filter(|id| !present.contains(id.as_str())) {
            self.apply_event("destroy", id);
        }
        for c in listed {
            if let Some(record) = self.record(&c.id) {
                // "created" is a task of ours still starting, not a stopped one.
                record.lock().unwrap().container = match c.status.as_str() {
                    "exited" | "dead" => Container::Stopped,
                    _ => Container::Up,
                };
                continue;
            }
            let expires = label_u64(&c.labels, LABEL_EXPIRES).unwrap_or(0);
            let created = label_u64(&c.labels, LABEL_CREATED).unwrap_or(0);
            // Idle pooled containers of this process belong to the pool; an earlier
            // process's are stale (its pool is gone) and go.
            if c.labels.contains_key(LABEL_POOL) {
                if created < self.inner.boot
                    && self.inner.engine.remove_container(&c.id).await.is_ok()
                {
                    removed += 1;
                }
                continue;
            }
            let daemon = c.labels.get(LABEL_DAEMON).map(String::as_str) == Some("true");
            let orphan = created < self.inner.boot && (!daemon || !c.running);
            if expires <= now || orphan {
                match self.inner.engine.remove_container(&c.id).await {
                    Ok(_) => removed += 1,
                    Err(e) => {
                        task_log!(Warn, &c.id, c.labels.get(LABEL_NAME).map(String::as_str); "removing at start failed: {e}")
                    }
                }
            } else {
                self.adopt(&c);
                adopted += 1;
            }
        }
        // Every live container's lane is known now: the others' directories can go.
        self.inner.lanes.sweep();
        log!("reconciled: {adopted} task(s) adopted, {removed} removed");
        Ok(())
    }

    pub(super) async fn expire(&self, id: &str) {
        let record = self.forget(id, EndReason::Expired);
        let name = record.as_ref().and_then(|r| r.lock().unwrap().name.clone());
        match self.inner.engine.remove_container(id).await {
            Ok(_) => task_log!(Info, id, name.as_deref(); "TTL reached, removed"),
            Err(e) => {
                task_log!(Warn, id, name.as_deref(); "TTL removal failed ({e}); retrying");
                if let Some(r) = record {
                    r.lock().unwrap().ended = None;
                    self.inner.records.lock().unwrap().insert(id.to_string(), r);
                }
                self.inner
                    .expiry
                    .arm(id, tokio::time::Instant::now() + EXPIRY_RETRY);
            }
        }
    }
}
