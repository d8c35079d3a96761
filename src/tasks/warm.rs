//! The warm pool's life: making pooled containers, keeping the pool at its targets, and
//! giving one to a task that fits it. The bookkeeping itself is in [`super::pool`].

use super::*;

impl Tasks {
    /// Keeps the warm pool at its targets: refills after takes, replaces old containers.
    pub(super) async fn refill_pool(&self) {
        loop {
            let woken = self.inner.pool.wake.notified();
            let cutoff = tokio::time::Instant::now().checked_sub(POOL_RECYCLE);
            for id in cutoff
                .map(|c| self.inner.pool.retire(c))
                .unwrap_or_default()
            {
                self.remove_in_background(id);
            }
            let mut failed = false;
            for (image, missing) in self.inner.pool.deficit() {
                for _ in 0..missing {
                    // Shutdown waits for a container being made; one it drained the pool
                    // before is removed, not pooled.
                    let _guard = self.inner.background.enter();
                    if self.inner.pool.is_closed() {
                        return;
                    }
                    match self.start_warm(&image).await {
                        Ok(w) => {
                            if let Some(late) = self.inner.pool.put(&image, w) {
                                self.remove_in_background(late.id);
                                return;
                            }
                        }
                        Err(e) => {
                            log!(warn: "warm pool: cannot start a container of {image}: {e}");
                            failed = true;
                            break;
                        }
                    }
                }
            }
            let wait = if failed { POOL_RETRY } else { POOL_RECYCLE / 4 };
            let _ = tokio::time::timeout(wait, woken).await;
        }
    }

    /// Creates, attaches and starts one pooled container with the default settings.
    pub(super) async fn start_warm(&self, image: &str) -> Result<pool::Warm, TaskError> {
        let now = now_ms();
        let spec = TaskSpec {
            daemon: false,
            image: Some(image.to_string()),
            ttl: 2 * POOL_RECYCLE.as_secs(),
            ttl_given: false,
            resources: Vec::new(),
            name: None,
            pwd: None,
            env: Vec::new(),
            cmds: Vec::new(),
            limits: self.inner.settings.bounds.limits_default,
            user: None,
            mounts: Vec::new(),
            read_only: false,
            collect: Vec::new(),
            callback_url: None,
        };
        let quota = self.asks_for_quota();
        self.inner.agent.prepare(&*self.inner.engine).await?;
        let mut config =
            self.container_config(&spec, image, now, now + spec.ttl * 1000, Vec::new(), quota);
        config
            .labels
            .insert(LABEL_POOL.to_string(), "true".to_string());
        let lane = self.with_lane(&mut config);
        let created = self.create_with_quota(None, &mut config, quota).await;
        let created = match self.lane_created(created, lane) {
            Ok(c) => c,
            Err(e) => {
                // Only a create whose answer was lost may have made a container.
                if e.status().is_none() {
                    self.sweep_lost_create(&config);
                }
                return Err(e.into());
            }
        };
        let id = created.id;
        let started = async {
            if let Some(w) = created.warnings.filter(|w| !w.is_empty()) {
                return Err(TaskError::LimitDiscarded { warnings: w });
            }
            self.inner.agent.ensure(&*self.inner.engine, image).await?;
            let lane = self.inner.lanes.offer(&id);
            let channel = channel::Channel::open(&*self.inner.engine, &id, lane)
                .await
                .map_err(|e| match e {
                    channel::ChannelError::Attach(d) => TaskError::Docker(d),
                    channel::ChannelError::Closed => TaskError::Request {
                        field: String::new(),
                        message: "attach stream closed at once".into(),
                    },
                })?;
            self.inner.engine.start_container(&id).await?;
            channel.greet().await;
            Ok(channel)
        }
        .await;
        match started {
            Ok(channel) => Ok(pool::Warm {
                id,
                channel,
                born: tokio::time::Instant::now(),
            }),
            Err(e) => {
                self.remove_in_background(id);
                Err(e)
            }
        }
    }

    /// Whether a task can run in a pooled container: one made with the defaults, no name,
    /// no mounts, never a daemon (its labels say non-daemon and default TTL).
    pub(super) fn warm_eligible(&self, spec: &TaskSpec) -> bool {
        let d = &self.inner.settings.bounds.limits_default;
        let l = &spec.limits;
        !spec.daemon
            && spec.name.is_none()
            && spec.mounts.is_empty()
            && spec.user.is_none()
            && !spec.read_only
            && (l.memory_mb, l.pids, l.disk_mb) == (d.memory_mb, d.pids, d.disk_mb)
            && l.cpus == d.cpus
            && spec
                .image
                .as_deref()
                .is_some_and(|i| self.inner.pool.serves(i))
    }

    /// Gives a pooled container to a task: its files placed, its record and TTL set.
    pub(super) async fn start_in_warm(
        &self,
        spec: &TaskSpec,
        archive: files::Uploads,
        warm: pool::Warm,
        now: u64,
    ) -> Result<Shared, TaskError> {
        self.inner.pool.wake.notify_one();
        let id = warm.id.clone();
        let expires = now + spec.ttl * 1000;
        let mut record = Record::new(
            &id,
            None,
            spec.image.clone().unwrap_or_default(),
            false,
            now,
            expires,
        );
        let chan = warm.channel.clone();
        record.channel = Some(warm.channel);
        record.callback_url = spec.callback_url.clone();
        let record = self.register(record);
        let placed = async {
            // The agent is up and reading: it writes the files faster than the engine would.
            if !spec.resources.is_empty() {
                match self
                    .place_by_agent(&chan, &spec.resources, now / 1000)
                    .await?
                {
                    placing::ByAgent::Placed => return Ok(()),
                    placing::ByAgent::Fallback(why) => {
                        task_log!(Info, &id, None; "the agent did not place the files ({why}); uploading an archive")
                    }
                }
            }
            for (dir, tar) in archive {
                self.inner.engine.put_archive(&id, &dir, tar).await?;
            }
            Ok::<(), TaskError>(())
        }
        .await;
        if let Err(e) = placed {
            self.forget(&id, EndReason::Failed);
            self.remove_in_background(id);
            return Err(e);
        }
        record.lock().unwrap().life = TaskState::Running;
        Ok(record)
    }
}
