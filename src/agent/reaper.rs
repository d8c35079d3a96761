//! The one waiter for child processes in the agent. As PID 1 the agent must reap every
//! orphan with `waitpid(-1)`, which would also steal the exit status of its own commands from
//! any other waiter; so this reaper reaps everything and hands each status it reaps to the
//! command waiting for that pid, if any.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::Mutex;

use tokio::sync::oneshot;

use libc::{waitpid, WNOHANG};

pub struct Reaper {
    /// Whether to reap every child (PID 1) or only the ones spawned here.
    scope: Scope,
    /// std Mutex: held for map operations only, never across an `.await`.
    state: Mutex<State>,
}

/// Which children a reaper waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every child, orphans included: the duty of PID 1.
    All,
    /// Only the children spawned through this reaper, so other waiters in the same process
    /// (tests, std's own `wait`) keep theirs.
    Own,
}

#[derive(Default)]
struct State {
    /// Commands waiting for their exit status, by pid.
    waiting: HashMap<i32, oneshot::Sender<i32>>,
    /// Statuses reaped while a spawn was in flight and its pid not yet registered.
    early: HashMap<i32, i32>,
    /// Spawns between fork and registration; while any is, unknown exits are kept.
    spawning: usize,
}

impl Reaper {
    pub fn new(scope: Scope) -> Self {
        Reaper {
            scope,
            state: Mutex::default(),
        }
    }

    /// Spawns `cmd` and returns the child with a receiver for its raw wait status.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, oneshot::Receiver<i32>)> {
        self.state.lock().unwrap().spawning += 1;
        let spawned = cmd.spawn();
        let mut state = self.state.lock().unwrap();
        state.spawning -= 1;
        let (tx, rx) = oneshot::channel();
        let result = match spawned {
            Ok(child) => {
                let pid = child.id() as i32;
                match state.early.remove(&pid) {
                    Some(status) => {
                        let _ = tx.send(status);
                    }
                    None => {
                        state.waiting.insert(pid, tx);
                    }
                }
                drop(state);
                // A child that exited before it was registered sent its SIGCHLD already.
                if self.scope == Scope::Own {
                    self.reap_all();
                }
                state = self.state.lock().unwrap();
                Ok((child, rx))
            }
            Err(e) => Err(e),
        };
        if state.spawning == 0 {
            // Whatever is left belonged to nobody of ours: orphans, already reaped.
            state.early.clear();
        }
        result
    }

    /// Reaps the children that have exited (on SIGCHLD), delivering the ones someone awaits.
    pub fn reap_all(&self) {
        if self.scope == Scope::Own {
            let pids: Vec<i32> = self.state.lock().unwrap().waiting.keys().copied().collect();
            for pid in pids {
                let mut status = 0;
                // SAFETY: waitpid on our own child with a valid out-pointer; never blocks.
                if unsafe { waitpid(pid, &mut status, WNOHANG) } == pid {
                    if let Some(tx) = self.state.lock().unwrap().waiting.remove(&pid) {
                        let _ = tx.send(status);
                    }
                }
            }
            return;
        }
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid out-pointer; -1 is any child; WNOHANG never blocks.
            let pid = unsafe { waitpid(-1, &mut status, WNOHANG) };
            if pid <= 0 {
                return;
            }
            let mut state = self.state.lock().unwrap();
            if let Some(tx) = state.waiting.remove(&pid) {
                let _ = tx.send(status);
            } else if state.spawning > 0 {
                state.early.insert(pid, status);
            }
        }
    }
}
