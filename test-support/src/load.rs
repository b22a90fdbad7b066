//! A background client doing numbered operations (writes through a proxy,
//! requests through the gateway) for as long as a test runs, and what it
//! saw: what was acknowledged, what failed (when, and how long the attempt
//! took), and the longest gap between two acknowledgements.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a [`Load`] saw.
#[derive(Clone, Debug, Default)]
pub struct Writes {
    /// Operations acknowledged, by number.
    pub acked: Vec<u64>,
    /// Failed attempts, one line each: the number, when it came after the
    /// last acknowledged one, how long it took, why.
    pub failed: Vec<String>,
    /// The longest time between two acknowledged operations.
    pub longest_gap: Duration,
    /// When each of `acked` was acknowledged (same order), so that the
    /// figures of several loads can be merged ([`Writes::merge`]).
    pub acked_at: Vec<Instant>,
}

impl Writes {
    /// The writes of several loads that ran together, as one: every
    /// acknowledgement in time order, every failure, and the longest time
    /// with no acknowledgement from any of them after `since` (the end of
    /// the previous window, or the loads' start).
    pub fn merge(parts: Vec<Writes>, since: Instant) -> Writes {
        let mut acks: Vec<(Instant, u64)> = Vec::new();
        let mut failed = Vec::new();
        for p in parts {
            acks.extend(p.acked_at.into_iter().zip(p.acked));
            failed.extend(p.failed);
        }
        acks.sort();
        let mut last = since;
        let mut longest_gap = Duration::ZERO;
        for (t, _) in &acks {
            longest_gap = longest_gap.max(t.saturating_duration_since(last));
            last = last.max(*t);
        }
        Writes {
            acked: acks.iter().map(|(_, n)| *n).collect(),
            acked_at: acks.iter().map(|(t, _)| *t).collect(),
            failed,
            longest_gap,
        }
    }
}

/// Runs `op(n)` for `n = first, first + 1, ...` (or every `step`th
/// number, [`Load::stepping`]) every `every` until dropped (or thirty
/// minutes pass), on a thread of its own.
pub struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Writes>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// The longest a load runs, whatever the test does.
const LIMIT: Duration = Duration::from_secs(1800);

impl Load {
    /// Starts it. `op` says `Ok` when the operation was acknowledged, or
    /// why not.
    pub fn start<F>(first: u64, every: Duration, op: F) -> Self
    where
        F: FnMut(u64) -> Result<(), String> + Send + 'static,
    {
        Self::stepping(first, 1, every, op)
    }

    /// As [`Load::start`], with `n = first, first + step, ...` (several
    /// loads sharing one number space, one per key stream).
    pub fn stepping<F>(first: u64, step: u64, every: Duration, mut op: F) -> Self
    where
        F: FnMut(u64) -> Result<(), String> + Send + 'static,
    {
        let step = step.max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Writes>> = Arc::default();
        let (s, out) = (stop.clone(), seen.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + LIMIT;
            let mut last_ok = Instant::now();
            let mut n = first;
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                let t = Instant::now();
                let r = op(n);
                let mut g = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match r {
                    Ok(()) => {
                        g.longest_gap = g.longest_gap.max(last_ok.elapsed());
                        last_ok = Instant::now();
                        g.acked.push(n);
                        g.acked_at.push(last_ok);
                    }
                    Err(e) => g.failed.push(format!(
                        "{n} (+{}ms, took {}ms): {e}",
                        t.duration_since(last_ok).as_millis(),
                        t.elapsed().as_millis()
                    )),
                }
                drop(g);
                n += step;
                std::thread::sleep(every);
            }
        });
        Self {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    /// What it saw so far, and reset.
    pub fn take(&self) -> Writes {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_counts_what_was_acknowledged_and_what_failed_in_order() {
        let load = Load::start(10, Duration::from_millis(5), |n| {
            if n % 3 == 0 { Err("no".into()) } else { Ok(()) }
        });
        crate::wait_for("some operations", Duration::from_secs(10), || {
            load.seen.lock().unwrap().acked.len() >= 4
        });
        drop(load.stop.clone());
        let w = load.take();
        assert_eq!(w.acked[..2], [10, 11]);
        assert!(w.failed[0].starts_with("12 (+"), "{:?}", w.failed);
        assert!(w.acked.iter().all(|n| n % 3 != 0));
    }

    #[test]
    fn stepping_loads_merge_into_one_time_ordered_record() {
        let start = Instant::now();
        let loads: Vec<Load> = (0..3)
            .map(|i| Load::stepping(i, 3, Duration::from_millis(5), |_| Ok(())))
            .collect();
        crate::wait_for("some operations", Duration::from_secs(10), || {
            loads.iter().all(|l| l.seen.lock().unwrap().acked.len() >= 3)
        });
        let w = Writes::merge(loads.iter().map(Load::take).collect(), start);
        for i in 0..3 {
            assert!(w.acked.contains(&i) && w.acked.contains(&(i + 3)), "{:?}", w.acked);
        }
        assert!(w.acked_at.windows(2).all(|p| p[0] <= p[1]));
        assert_eq!(w.acked.len(), w.acked_at.len());
        assert!(w.longest_gap > Duration::ZERO);
    }
}
