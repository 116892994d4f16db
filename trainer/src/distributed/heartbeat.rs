//! Rank liveness: every rank bumps a counter in the rendezvous store each `interval` from a
//! background thread and watches everyone else's. A rank whose counter stops for `timeout` (a
//! killed process, a lost host) makes this rank exit with an error naming it, whatever this
//! rank was doing — a collective blocked on the lost rank, or local work that would only meet
//! it later. The loss of the store itself means rank 0, which serves it, is gone.
//! (docs/distributed.md, "Failures".)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::process_group::Store;
use super::Result;

/// Exit status of a rank stopped because another rank was lost.
pub const LOST_RANK_EXIT_CODE: i32 = 17;

/// Store key of `rank`'s heartbeat counter.
fn beat_key(rank: usize) -> String {
    format!("spatialthinker/heartbeat/{rank}")
}

/// Store key set when `rank` finished and stopped beating on purpose.
fn done_key(rank: usize) -> String {
    format!("spatialthinker/done/{rank}")
}

/// What the watcher thread last saw of each rank.
#[derive(Debug)]
struct Seen {
    /// Last counter value and when it last changed.
    beats: Vec<(i64, Instant)>,
}

/// The running heartbeat of this rank.
#[derive(Debug)]
pub struct Heartbeat {
    store: Arc<Store>,
    rank: usize,
    interval: Duration,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts beating for `rank` of `world` through its own store connection (`store`), and
    /// watching the others: after `timeout` of silence from one, `on_lost` is called with the
    /// message (the trainer prints it and exits with [`LOST_RANK_EXIT_CODE`]).
    pub fn start(
        store: Store,
        rank: usize,
        world: usize,
        interval: Duration,
        timeout: Duration,
        on_lost: Box<dyn Fn(&str) + Send>,
    ) -> Result<Self> {
        let store = Arc::new(store);
        store.add(&beat_key(rank), 1)?;
        let now = Instant::now();
        let seen = Arc::new(Mutex::new(Seen {
            beats: vec![(0, now); world],
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (store, seen, stop) = (store.clone(), seen.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("heartbeat-{rank}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(interval);
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Some(msg) = beat(&store, rank, world, timeout, &seen) {
                            if !stop.load(Ordering::Relaxed) {
                                on_lost(&msg);
                            }
                            break;
                        }
                    }
                })
                .map_err(|e| super::DistError::Invalid(format!("starting the heartbeat: {e}")))?
        };
        Ok(Heartbeat {
            store,
            rank,
            interval,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Ranks whose heartbeat stopped, for naming the culprit of a failed collective: after
    /// waiting `4 × interval`, those not seen beating for `2.5 × interval` (a live rank beats
    /// every interval and is read every interval, so it is never seen older than two).
    pub fn silent_ranks(&self) -> Vec<usize> {
        std::thread::sleep(self.interval * 4);
        let quiet = self.interval.mul_f64(2.5);
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.beats
            .iter()
            .enumerate()
            .filter(|&(r, (_, at))| r != self.rank && at.elapsed() > quiet)
            .map(|(r, _)| r)
            .collect()
    }

    /// Marks this rank as finished and stops beating; others no longer watch it.
    pub fn finish(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.store.set(&done_key(self.rank), b"1")?;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Ok(())
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One beat: bump our counter, read the others'. Returns the message when a rank is lost.
fn beat(
    store: &Store,
    rank: usize,
    world: usize,
    timeout: Duration,
    seen: &Mutex<Seen>,
) -> Option<String> {
    let store_lost = |e: super::DistError| {
        Some(format!(
            "rank {rank} lost the rendezvous store at {} ({e}): rank 0, which serves it, has exited or its host is unreachable",
            store.addr()
        ))
    };
    if let Err(e) = store.add(&beat_key(rank), 1) {
        return store_lost(e);
    }
    for other in (0..world).filter(|&r| r != rank) {
        let value = match store.add(&beat_key(other), 0) {
            Ok(v) => v,
            Err(e) => return store_lost(e),
        };
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        let (last, at) = s.beats[other];
        if value != last {
            s.beats[other] = (value, Instant::now());
        } else if at.elapsed() > timeout {
            drop(s);
            match store.try_get(&done_key(other)) {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => return store_lost(e),
            }
            return Some(format!(
                "rank {other} sent no heartbeat for {:.0} s (distributed.heartbeat_timeout_s): it was killed, crashed or its host is unreachable; rank {rank} stops too",
                at.elapsed().as_secs_f64()
            ));
        }
    }
    None
}
