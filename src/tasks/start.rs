//! Making a task's container: its configuration (limits, mounts, the agent, labels), its
//! files, its attach stream, and the search for a container whose create answer was lost.
//! Never runs commands.

use super::*;

impl Tasks {
    /// Creates, fills and starts the container of one task, and registers its record. On
    /// failure nothing is left behind.
    pub(super) async fn start_task(
        &self,
        spec: &TaskSpec,
        archive: files::Uploads,
        now: u64,
    ) -> Result<Shared, TaskError> {
        let image = spec.image.clone().unwrap_or_default();
        let expires = now + spec.ttl * 1000;
        let binds = self
            .inner
            .volumes
            .binds(&*self.inner.engine, &spec.mounts)
            .await?;
        let quota = self.asks_for_quota();
        self.inner.agent.prepare(&*self.inner.engine).await?;
        let mut config = self.container_config(spec, &image, now, expires, binds, quota);
        let lane = self.with_lane(&mut config);
        let name = spec.name.as_deref().map(|n| self.container_name(n));
        let created = self
            .create_container(spec, &image, name.as_deref(), &mut config, quota)
            .await;
        let created = self.lane_created(created, lane)?;
        let id = created.id;
        // Registered at once, so reconciliation never mistakes it for an orphan.
        let mut record = Record::new(&id, spec.name.clone(), image, spec.daemon, now, expires);
        record.read_only = spec.read_only;
        record.callback_url = spec.callback_url.clone();
        let record = self.register(record);
        let warnings = created.warnings.unwrap_or_default();
        let result = async {
            if !warnings.is_empty() {
                return Err(TaskError::LimitDiscarded { warnings });
            }
            let image = spec.image.as_deref().unwrap_or_default();
            self.inner.agent.ensure(&*self.inner.engine, image).await?;
            // Once started, the agent places the files in about a millisecond, where an
            // archive upload before start costs tens; a read-only root takes them before.
            let mut archive = Some(archive);
            let by_agent = !spec.read_only && !spec.resources.is_empty();
            if !by_agent {
                self.upload(&id, archive.take()).await?;
            }
            // Attached before start, so not a byte of the agent's answers is missed.
            let channel = self.open_channel(&id).await;
            record.lock().unwrap().channel = channel.clone();
            self.inner.engine.start_container(&id).await?;
            // The hello (and the lane's offer) now, so the lane is up by the first request.
            if let Some(chan) = &channel {
                chan.greet().await;
            }
            if let Some(chan) = channel.filter(|_| by_agent) {
                match self.place_by_agent(&chan, &spec.resources, now / 1000).await? {
                    placing::ByAgent::Placed => archive = None,
                    placing::ByAgent::Fallback(why) => {
                        task_log!(Info, &id, None; "the agent did not place the files ({why}); uploading an archive")
                    }
                }
            }
            // No commands ran yet: the files are in place before the first one.
            self.upload(&id, archive).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.forget(&id, EndReason::Failed);
            self.remove_in_background(id);
            return Err(e);
        }
        record.lock().unwrap().life = TaskState::Running;
        let image = record.lock().unwrap().image.clone();
        task_log!(Info, &id, spec.name.as_deref(); "started from {image}");
        Ok(record)
    }

    /// Creates the container from `config`, pulling its image first where the operator
    /// allows it, and turns the engine's refusals into the client's errors. A create whose
    /// answer was lost is looked for and removed.
    /// One create, with the storage quota when `quota` asks for it. An engine that refuses
    /// the quota teaches Lessl it has none (its words, or its `/info` when the words are
    /// another engine's), and the create is made again without it.
    pub(super) async fn create_with_quota(
        &self,
        name: Option<&str>,
        config: &mut ContainerConfig,
        quota: bool,
    ) -> Result<CreateResponse, DockerError> {
        let attempt = self.inner.engine.create_container(name, config).await;
        let refused = match &attempt {
            Err(e) if quota && matches!(e.status(), Some(400 | 500)) => e,
            _ => return attempt,
        };
        let limit = if refuses_storage_opt(refused) {
            // overlay2 on xfs without `pquota`, say: only a create tells.
            let limit =
                DiskLimit::Unbounded(format!("the engine refused a storage quota: {refused}"));
            self.learn_disk_limit(limit.clone());
            limit
        } else {
            self.disk_limit().await
        };
        if !matches!(limit, DiskLimit::Unbounded(_)) {
            return attempt;
        }
        config.host_config.storage_opt.clear();
        self.inner.engine.create_container(name, config).await
    }

    async fn create_container(
        &self,
        spec: &TaskSpec,
        image: &str,
        name: Option<&str>,
        config: &mut ContainerConfig,
        quota: bool,
    ) -> Result<CreateResponse, TaskError> {
        let mut attempt = self.create_with_quota(name, config, quota).await;
        if attempt.as_ref().is_err_and(|e| e.status() == Some(404)) && self.may_pull(image) {
            log!("pulling {image}, which Docker does not have");
            attempt = match self
                .inner
                .engine
                .pull_image(image, self.inner.settings.pull_timeout)
                .await
            {
                Ok(()) => self.create_with_quota(name, config, quota).await,
                // The registry refused or could not be reached: the image stays unknown.
                Err(e) if e.status().is_some() => {
                    return Err(TaskError::ImageUnknown {
                        image: image.to_string(),
                        message: e.to_string(),
                    })
                }
                Err(e) => Err(e),
            };
        }
        match attempt {
            Ok(c) => Ok(c),
            Err(e) if e.status() == Some(404) => Err(TaskError::ImageUnknown {
                image: image.to_string(),
                message: e.to_string(),
            }),
            // Docker answers a taken name with 409, Podman with 500: whatever the status, a
            // container holding the name is the clash.
            Err(e) if spec.name.is_some() && self.name_taken(name).await => {
                log!(debug: "create refused for a taken name: {e}");
                Err(TaskError::NameClash(spec.name.clone().unwrap_or_default()))
            }
            Err(e) if e.status() == Some(400) => Err(TaskError::Request {
                field: String::new(),
                message: format!("Docker refused the container: {e}"),
            }),
            // The engine makes the working directory at create and answers 500 ("Cannot
            // mkdir: /etc/passwd is not a directory") when a file is in the way: the client's
            // mistake, not the engine's failure.
            Err(e)
                if spec.pwd.as_deref().is_some_and(|pwd| {
                    e.to_string()
                        .contains(&format!("{} is not a directory", pwd.trim_end_matches('/')))
                }) =>
            {
                Err(TaskError::Request {
                    field: "pwd".into(),
                    message: format!("pwd is not a directory in the image: {e}"),
                })
            }
            Err(e) => {
                self.sweep_lost_create(config);
                Err(e.into())
            }
        }
    }

    /// The container of a task. `binds` are its mounts, resolved; `quota` caps its writable
    /// layer at `limits.disk_mb` (only where the engine's storage driver can).
    pub(super) fn container_config(
        &self,
        spec: &TaskSpec,
        image: &str,
        now: u64,
        expires: u64,
        binds: Vec<String>,
        quota: bool,
    ) -> ContainerConfig {
        let s = &self.inner.settings;
        let mut labels = BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_INSTANCE.to_string(), s.instance.clone()),
            (LABEL_DAEMON.to_string(), spec.daemon.to_string()),
            (LABEL_CREATED.to_string(), now.to_string()),
            (LABEL_EXPIRES.to_string(), expires.to_string()),
        ]);
        if let Some(n) = &spec.name {
            labels.insert(LABEL_NAME.to_string(), n.clone());
        }
        labels.insert(LABEL_CHANNEL.to_string(), "attach".to_string());
        labels.insert(LABEL_TOKEN.to_string(), create_token());
        if spec.read_only {
            labels.insert(LABEL_READ_ONLY.to_string(), "true".to_string());
        }
        if let Some(url) = &spec.callback_url {
            labels.insert(LABEL_CALLBACK.to_string(), url.clone());
        }
        let memory = (spec.limits.memory_mb as i64).saturating_mul(1 << 20);
        ContainerConfig {
            image: image.to_string(),
            entrypoint: vec![AGENT_PATH.to_string(), "agent".to_string()],
            cmd: Vec::new(),
            env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: spec.pwd.clone(),
            user: self.user_for(spec).ok().flatten(),
            labels,
            volumes: if spec.read_only {
                files::writable_dirs(&spec.resources, spec.pwd.as_deref())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| (d, serde_json::json!({})))
                    .collect()
            } else {
                BTreeMap::new()
            },
            network_disabled: true,
            open_stdin: true,
            stdin_once: false,
            attach_stdin: true,
            attach_stdout: true,
            attach_stderr: true,
            host_config: HostConfig {
                network_mode: "none".into(),
                cap_drop: vec!["ALL".into()],
                security_opt: vec!["no-new-privileges".into()],
                memory,
                memory_swap: memory,
                nano_cpus: spec.limits.nano_cpus(),
                pids_limit: spec.limits.pids as i64,
                binds: std::iter::once(self.inner.agent.bind())
                    .chain(binds)
                    .collect(),
                log_config: LogConfig {
                    kind: "none".into(),
                },
                readonly_rootfs: spec.read_only,
                runtime: s.runtime.clone(),
                storage_opt: if quota {
                    BTreeMap::from([("size".to_string(), format!("{}M", spec.limits.disk_mb))])
                } else {
                    BTreeMap::new()
                },
            },
        }
    }

    /// Downloads every `src` resource, all at once, replacing each by the bytes it fetched.
    pub(super) async fn fetch_resources(
        &self,
        resources: &mut [spec::Resource],
    ) -> Result<(), TaskError> {
        let mut jobs = Vec::new();
        for (i, r) in resources.iter().enumerate() {
            if let spec::Content::Download { url, .. } = &r.content {
                let (url, policy) = (url.clone(), self.inner.settings.fetch.clone());
                jobs.push((
                    i,
                    tokio::spawn(async move { fetch::download(&url, &policy).await }),
                ));
            }
        }
        for (i, job) in jobs {
            let r = &mut resources[i];
            let fetched = job.await.expect("download task panicked");
            let bytes = fetched.map_err(|error| TaskError::Download {
                field: format!("{}.src", r.field),
                error,
            })?;
            let archive = matches!(r.content, spec::Content::Download { archive: true, .. });
            r.content = if archive {
                spec::Content::Archive(bytes)
            } else {
                spec::Content::File(bytes)
            };
        }
        Ok(())
    }

    /// Attaches to a container's agent; on failure the task falls back to exec, which
    /// works everywhere, so this is logged rather than fatal.
    pub(super) async fn open_channel(&self, id: &str) -> Option<Arc<channel::Channel>> {
        if self.inner.settings.exec_only {
            return None;
        }
        let lane = self.inner.lanes.offer(id);
        match channel::Channel::open(&*self.inner.engine, id, lane).await {
            Ok(c) => Some(c),
            Err(e) => {
                task_log!(Warn, id, None; "no attach stream ({e:?}); commands go by exec");
                None
            }
        }
    }

    /// Gives the container about to be made from `config` a lane, when lanes are on: its
    /// directory mounted and its key labelled. Returns the key.
    pub(super) fn with_lane(&self, config: &mut ContainerConfig) -> Option<String> {
        if self.inner.settings.exec_only {
            return None;
        }
        let (key, bind) = self.inner.lanes.prepare()?;
        config.host_config.binds.push(bind);
        config.labels.insert(LABEL_LANE.to_string(), key.clone());
        Some(key)
    }

    /// After a create: the new container's lane is remembered, or a failed create's removed.
    pub(super) fn lane_created<E>(
        &self,
        created: Result<CreateResponse, E>,
        lane: Option<String>,
    ) -> Result<CreateResponse, E> {
        if let Some(key) = lane {
            match &created {
                Ok(c) => self.inner.lanes.adopt(&c.id, &key),
                Err(_) => self.inner.lanes.discard(&key),
            }
        }
        created
    }

    /// A create that failed without Docker's answer (timeout, broken connection) may still
    /// have made the container: look for it by its token for a while and remove it.
    pub(super) fn sweep_lost_create(&self, config: &ContainerConfig) {
        let Some(token) = config.labels.get(LABEL_TOKEN) else {
            return;
        };
        let labels = [
            LABEL_MANAGED.to_string(),
            self.instance_label(),
            format!("{LABEL_TOKEN}={token}"),
        ];
        let docker = self.inner.engine.clone();
        let guard = self.inner.background.enter();
        tokio::spawn(async move {
            let _guard = guard;
            let until = tokio::time::Instant::now() + SWEEP_FOR;
            while tokio::time::Instant::now() < until {
                if let Ok(found) = docker.list_containers(&labels).await {
                    for c in &found {
                        if docker.remove_container(&c.id).await.is_ok() {
                            task_log!(Warn, &c.id, None; "removed: created although its create call failed");
                        }
                    }
                    if !found.is_empty() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
}

/// A token no other create of this process (or another) will carry.
pub(super) fn create_token() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{n:x}", std::process::id(), nanos)
}
