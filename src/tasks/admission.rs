//! Admission: who may run what, and how many at once. Run slots with a short bounded
//! queue, daemon slots, and the operator's allow-lists of images and users.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::OwnedSemaphorePermit;

use super::*;

impl Tasks {
    /// A run slot for each of `n` tasks, waiting in the bounded queue when all are taken.
    pub(super) async fn admit(&self, n: usize) -> Result<OwnedSemaphorePermit, TaskError> {
        let s = &self.inner.settings;
        if n > s.max_running {
            return Err(TaskError::Request {
                field: String::new(),
                message: format!(
                    "a batch of {n} tasks is more than the {} this server runs at once",
                    s.max_running
                ),
            });
        }
        let n = n as u32;
        if let Ok(p) = self.inner.admission.clone().try_acquire_many_owned(n) {
            return Ok(p);
        }
        let _queued = Queued::enter(&self.inner.queued, s.max_queue).ok_or(TaskError::Busy)?;
        match tokio::time::timeout(
            s.queue_timeout,
            self.inner.admission.clone().acquire_many_owned(n),
        )
        .await
        {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) | Err(_) => Err(TaskError::Busy),
        }
    }

    /// Reserves `n` daemon slots for creates in flight, released on drop. The daemons that
    /// hold a slot are counted from the records themselves, never kept as a number by hand;
    /// only the creates not yet registered are.
    pub(super) fn reserve_daemons(&self, n: usize) -> Result<Reservation<'_>, TaskError> {
        let max = self.inner.settings.max_daemons;
        // Counted and reserved under the records' lock, so two creates cannot both take the
        // last slot.
        let records = self.inner.records.lock().unwrap();
        let live = records
            .values()
            .filter(|r| r.lock().unwrap().holds_daemon_slot())
            .count();
        let counter = &self.inner.daemons_starting;
        if n > 0 && live + counter.load(Ordering::SeqCst) + n > max {
            return Err(TaskError::TooManyDaemons(max));
        }
        counter.fetch_add(n, Ordering::SeqCst);
        drop(records);
        Ok(Reservation { counter, n })
    }

    pub(super) fn check_image(&self, image: &str) -> Result<(), TaskError> {
        if self
            .inner
            .settings
            .allow_images
            .iter()
            .any(|p| glob(p, image))
        {
            Ok(())
        } else {
            Err(TaskError::ImageNotAllowed(image.to_string()))
        }
    }

    /// Whether the operator lets Lessl pull `image` when Docker does not have it.
    pub(super) fn may_pull(&self, image: &str) -> bool {
        self.inner
            .settings
            .allow_pull
            .iter()
            .any(|p| glob(p, image))
    }

    /// The user a task runs as: its own choice if the operator allows it, else the default.
    pub(super) fn user_for(&self, spec: &TaskSpec) -> Result<Option<String>, TaskError> {
        let s = &self.inner.settings;
        match &spec.user {
            None => Ok(s.default_user.clone()),
            Some(u) if s.allow_users.iter().any(|a| a == u) => Ok(Some(u.clone())),
            Some(u) => Err(TaskError::UserNotAllowed(u.clone())),
        }
    }
}

/// The fewest processes a gVisor sandbox starts with: its kernel's own threads count against
/// the pids limit. Measured with Debian's runsc (ptrace platform): 16 never starts, 32 and 48
/// sometimes do; 64 always did.
pub const GVISOR_MIN_PIDS: u64 = 64;

/// Refuses limits the runtime cannot start a container under, rather than failing later with
/// an engine error; `Err` says why.
pub fn check_runtime_floor(runtime: Option<&str>, limits: &Limits) -> Result<(), String> {
    let gvisor = runtime.is_some_and(|r| r.contains("runsc"));
    if gvisor && limits.pids < GVISOR_MIN_PIDS {
        return Err(format!(
            "{} is below the minimum of {GVISOR_MIN_PIDS} processes under gVisor (--runtime \
             runsc), whose kernel threads count against the limit",
            limits.pids
        ));
    }
    Ok(())
}

/// Daemon slots taken for creates in flight; given back on drop, by which time the
/// records of the tasks created hold them.
pub(super) struct Reservation<'a> {
    counter: &'a AtomicUsize,
    n: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.n, Ordering::SeqCst);
    }
}

/// A place in the admission queue, given back on drop.
pub(super) struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    pub(super) fn enter(counter: &'a AtomicUsize, max: usize) -> Option<Self> {
        let before = counter.fetch_add(1, Ordering::SeqCst);
        let place = Queued(counter);
        (before < max).then_some(place)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One permit per task out of a permit for the whole batch.
pub(super) fn split_permit(
    mut permit: OwnedSemaphorePermit,
    n: usize,
) -> Vec<OwnedSemaphorePermit> {
    let mut out: Vec<_> = (1..n).filter_map(|_| permit.split(1)).collect();
    out.push(permit);
    out
}

/// `*` matches any run of characters; everything else matches itself.
pub(super) fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(at) => rest = &rest[at + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "anything/at:all"));
        assert!(glob("lessl-test/*", "lessl-test/busybox"));
        assert!(!glob("lessl-test/*", "evil/lessl-test/busybox"));
        assert!(glob("*/busybox:*", "lessl-test/busybox:1.36"));
        assert!(glob("python:3.*-slim", "python:3.12-slim"));
        assert!(!glob("python:3.*-slim", "python:3.12"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(!glob("a*a", "a"));
    }

    #[test]
    fn queue_places_are_bounded_and_returned() {
        let counter = AtomicUsize::new(0);
        let a = Queued::enter(&counter, 2).unwrap();
        let b = Queued::enter(&counter, 2).unwrap();
        assert!(Queued::enter(&counter, 2).is_none());
        drop(a);
        let c = Queued::enter(&counter, 2);
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(counter.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn permits_split_one_per_task() {
        let sem = Arc::new(tokio::sync::Semaphore::new(5));
        let p = sem.clone().try_acquire_many_owned(3).unwrap();
        let parts = split_permit(p, 3);
        assert_eq!(parts.len(), 3);
        assert_eq!(sem.available_permits(), 2);
        drop(parts);
        assert_eq!(sem.available_permits(), 5);
    }
}
