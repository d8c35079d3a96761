//! The warm pool: started, never-used containers per image, each with its agent's attach
//! stream open, each given to at most one task. Only the bookkeeping lives here; creating
//! and removing containers is the task service's job.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::channel::Channel;

/// One idle pooled container.
#[derive(Debug)]
pub struct Warm {
    pub id: String,
    /// Open attach stream to its agent.
    pub channel: Arc<Channel>,
    /// When it was started, to retire it before its label's expiry.
    pub born: Instant,
}

#[derive(Debug, Default)]
pub struct Pool {
    /// How many idle containers to keep per image (`--warm IMAGE=N`).
    targets: Vec<(String, usize)>,
    /// Idle containers per image, oldest first. std Mutex, never held across an `.await`.
    idle: Mutex<HashMap<String, VecDeque<Warm>>>,
    /// Wakes the refill loop after a take.
    pub wake: Notify,
    /// Drained for shutdown: takes no more containers.
    closed: std::sync::atomic::AtomicBool,
}

impl Pool {
    pub fn new(targets: Vec<(String, usize)>) -> Pool {
        Pool {
            closed: Default::default(),
            targets,
            ..Pool::default()
        }
    }

    pub fn serves(&self, image: &str) -> bool {
        self.targets.iter().any(|(i, n)| i == image && *n > 0)
    }

    /// An idle container for `image`, never one whose stream has closed (removed under us).
    pub fn take(&self, image: &str) -> Option<Warm> {
        let mut idle = self.idle.lock().unwrap();
        let queue = idle.get_mut(image)?;
        while let Some(w) = queue.pop_front() {
            if !w.channel.is_closed() {
                return Some(w);
            }
        }
        None
    }

    /// Whether the pool was drained for shutdown.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Pools `warm`; once the pool was drained it is handed back, for the caller to remove.
    pub fn put(&self, image: &str, warm: Warm) -> Option<Warm> {
        let mut idle = self.idle.lock().unwrap();
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Some(warm);
        }
        idle.entry(image.to_string()).or_default().push_back(warm);
        None
    }

    /// Images and how many containers each lacks.
    pub fn deficit(&self) -> Vec<(String, usize)> {
        let idle = self.idle.lock().unwrap();
        self.targets
            .iter()
            .filter_map(|(image, want)| {
                let have = idle
                    .get(image)
                    .map_or(0, |q| q.iter().filter(|w| !w.channel.is_closed()).count());
                (have < *want).then(|| (image.clone(), want - have))
            })
            .collect()
    }

    /// Takes out every idle container born before `cutoff` (or whose stream closed).
    pub fn retire(&self, cutoff: Instant) -> Vec<String> {
        let mut idle = self.idle.lock().unwrap();
        let mut out = Vec::new();
        for queue in idle.values_mut() {
            queue.retain(|w| {
                let keep = w.born >= cutoff && !w.channel.is_closed();
                if !keep {
                    out.push(w.id.clone());
                }
                keep
            });
        }
        out
    }

    /// Empties the pool, returning every container id.
    pub fn drain(&self) -> Vec<String> {
        let mut idle = self.idle.lock().unwrap();
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        idle.drain()
            .flat_map(|(_, q)| q.into_iter().map(|w| w.id))
            .collect()
    }

    /// Idle containers across images.
    pub fn len(&self) -> usize {
        self.idle.lock().unwrap().values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn warm(id: &str) -> (Warm, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64);
        let (r, w) = tokio::io::split(ours);
        let channel = Channel::over(r, Box::new(w), id, None);
        let born = Instant::now();
        (
            Warm {
                id: id.into(),
                channel,
                born,
            },
            theirs,
        )
    }

    #[tokio::test]
    async fn each_container_is_given_once_and_dead_ones_never() {
        let pool = Pool::new(vec![("img".into(), 2), ("other".into(), 0)]);
        assert!(pool.serves("img") && !pool.serves("other") && !pool.serves("x"));
        assert_eq!(pool.deficit(), vec![("img".to_string(), 2)]);
        let (a, _a_peer) = warm("a");
        let (b, b_peer) = warm("b");
        pool.put("img", a);
        pool.put("img", b);
        assert!(pool.deficit().is_empty());
        // b's container goes away: its stream closes.
        drop(b_peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.deficit(), vec![("img".to_string(), 1)]);
        assert_eq!(pool.take("img").map(|w| w.id), Some("a".into()));
        assert!(
            pool.take("img").is_none(),
            "a closed container is never given out"
        );
        assert!(pool.take("x").is_none());
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn old_containers_are_retired_and_drain_empties() {
        let pool = Pool::new(vec![("img".into(), 3)]);
        let (a, _pa) = warm("a");
        let cutoff = Instant::now() + Duration::from_millis(1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (b, _pb) = warm("b");
        pool.put("img", a);
        pool.put("img", b);
        assert_eq!(pool.retire(cutoff), vec!["a".to_string()]);
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.drain(), vec!["b".to_string()]);
        assert!(pool.is_empty());
        // A container made while shutdown drained the pool is handed back, not pooled.
        assert!(pool.is_closed());
        let (c, _pc) = warm("c");
        assert_eq!(pool.put("img", c).map(|w| w.id), Some("c".to_string()));
        assert!(pool.is_empty());
    }
}
