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
}

/// Runs `op(n)` for `n = first, first + 1, ...` every `every` until
/// dropped (or ten minutes pass), on a thread of its own.
pub struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Writes>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// The longest a load runs, whatever the test does.
const LIMIT: Duration = Duration::from_secs(900);

impl Load {
    /// Starts it. `op` says `Ok` when the operation was acknowledged, or
    /// why not.
    pub fn start<F>(first: u64, every: Duration, mut op: F) -> Self
    where
        F: FnMut(u64) -> Result<(), String> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Writes>> = Arc::default();
        let (s, out) = (stop.clone(), seen.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + LIMIT;
            let mut last_ok = Instant::now();
            let mut n = first.saturating_sub(1);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                n += 1;
                let t = Instant::now();
                let r = op(n);
                let mut g = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match r {
                    Ok(()) => {
                        g.longest_gap = g.longest_gap.max(last_ok.elapsed());
                        last_ok = Instant::now();
                        g.acked.push(n);
                    }
                    Err(e) => g.failed.push(format!(
                        "{n} (+{}ms, took {}ms): {e}",
                        t.duration_since(last_ok).as_millis(),
                        t.elapsed().as_millis()
                    )),
                }
                drop(g);
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
}
