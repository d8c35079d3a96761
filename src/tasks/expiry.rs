//! The one owner of TTL deadlines: a schedule of (deadline, container id) and the background
//! loop that sleeps until the next one. Deadlines come from container labels, so a restarted
//! Lessl re-arms them; this module only keeps the timers, it never decides a TTL.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Pure schedule: no clock of its own, callers pass `now`.
#[derive(Debug, Default)]
pub struct Schedule {
    /// Ordered by deadline, so the next one is the first.
    queue: BTreeSet<(Instant, String)>,
    /// Each id's current deadline, so re-arming replaces rather than duplicates.
    by_id: HashMap<String, Instant>,
}

impl Schedule {
    /// Sets (or moves) the deadline of `id`.
    pub fn arm(&mut self, id: &str, at: Instant) {
        self.disarm(id);
        self.queue.insert((at, id.to_string()));
        self.by_id.insert(id.to_string(), at);
    }

    pub fn disarm(&mut self, id: &str) {
        if let Some(at) = self.by_id.remove(id) {
            self.queue.remove(&(at, id.to_string()));
        }
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Removes and returns every id whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.queue.first() {
            if *at > now {
                break;
            }
            let (_, id) = self.queue.pop_first().expect("first exists");
            self.by_id.remove(&id);
            due.push(id);
        }
        due
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The schedule shared between the tasks that arm timers and the loop that fires them.
#[derive(Debug, Default)]
pub struct Expiry {
    /// std Mutex: held only for a few map operations, never across an `.await`.
    schedule: Mutex<Schedule>,
    /// Wakes the loop when a deadline earlier than the one it sleeps on is armed.
    changed: Notify,
}

impl Expiry {
    pub fn arm(&self, id: &str, at: Instant) {
        self.schedule.lock().unwrap().arm(id, at);
        self.changed.notify_one();
    }

    pub fn disarm(&self, id: &str) {
        self.schedule.lock().unwrap().disarm(id);
    }

    pub fn len(&self) -> usize {
        self.schedule.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.schedule.lock().unwrap().is_empty()
    }

    /// Waits until at least one deadline has passed and returns the ids that are due.
    pub async fn next_due(&self) -> Vec<String> {
        loop {
            // Registered before reading the schedule, so an arm in between is not missed.
            let changed = self.changed.notified();
            let next = {
                let mut s = self.schedule.lock().unwrap();
                let due = s.pop_due(Instant::now());
                if !due.is_empty() {
                    return due;
                }
                s.next()
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn schedule_orders_and_replaces() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.arm("b", t0 + Duration::from_secs(20));
        s.arm("a", t0 + Duration::from_secs(10));
        s.arm("c", t0 + Duration::from_secs(30));
        s.arm("c", t0 + Duration::from_secs(5)); // re-armed earlier
        assert_eq!(s.len(), 3);
        assert_eq!(s.next(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(s.pop_due(t0 + Duration::from_secs(10)), vec!["c", "a"]);
        assert!(s.pop_due(t0 + Duration::from_secs(19)).is_empty());
        s.disarm("b");
        assert!(s.is_empty());
        assert_eq!(s.next(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn loop_fires_in_order_without_sleeping() {
        let e = Arc::new(Expiry::default());
        let t0 = Instant::now();
        e.arm("late", t0 + Duration::from_secs(100));
        let waiter = {
            let e = e.clone();
            tokio::spawn(async move { e.next_due().await })
        };
        tokio::task::yield_now().await;
        // An earlier deadline armed while the loop sleeps wakes it.
        e.arm("early", t0 + Duration::from_secs(10));
        let due = waiter.await.unwrap();
        assert_eq!(due, vec!["early"]);
        assert!(Instant::now() >= t0 + Duration::from_secs(10));
        assert!(Instant::now() < t0 + Duration::from_secs(100));
        assert_eq!(e.next_due().await, vec!["late"]);
        assert!(e.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn disarmed_never_fires() {
        let e = Arc::new(Expiry::default());
        let t0 = Instant::now();
        e.arm("gone", t0 + Duration::from_secs(5));
        e.arm("kept", t0 + Duration::from_secs(50));
        e.disarm("gone");
        assert_eq!(e.next_due().await, vec!["kept"]);
        assert!(Instant::now() >= t0 + Duration::from_secs(50));
    }
}
