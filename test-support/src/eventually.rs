//! Waiting for a condition, bounded: the one way tests wait.

use std::time::{Duration, Instant};

/// How often a condition is looked at.
pub const POLL: Duration = Duration::from_millis(250);

/// Waits until `ok()` holds, looking every [`POLL`]; panics naming `what`
/// if it does not within `limit`. Returns how long it took.
pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(POLL);
    }
    start.elapsed()
}

/// [`wait_for`] for async conditions.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut ok: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ok().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(POLL).await;
    }
    start.elapsed()
}

/// Waits until `f()` gives a value, looking every `every`; panics naming
/// `what` (and what `context()` says then, such as the processes' logs)
/// if it does not within `limit`.
pub fn poll_with<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= limit {
            panic!("{what}: not within {limit:?}\n{}", context());
        }
        std::thread::sleep(every);
    }
}

/// [`poll_with`] without context.
pub fn poll<T>(what: &str, limit: Duration, every: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_with(what, limit, every, f, String::new)
}

/// Async: waits until `f()` gives a value, looking every 100 ms; panics
/// naming `what` if it does not within `limit`.
pub async fn eventually_some<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that `cond` becomes true within `limit` (a `Duration`),
/// looking every [`POLL`]; the message says what did not happen.
///
/// ```
/// use std::time::Duration;
/// let mut n = 0;
/// infra_test_support::assert_eventually!({ n += 1; n > 2 }, Duration::from_secs(5), "n passes 2");
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $limit:expr, $($what:tt)+) => {
        $crate::eventually::wait_for(&format!($($what)+), $limit, || $cond)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_that_comes_true_ends_the_wait_and_one_that_never_does_panics() {
        let mut n = 0;
        let took = wait_for("counting", Duration::from_secs(5), || {
            n += 1;
            n >= 2
        });
        assert!(took >= POLL);
        let never = std::panic::catch_unwind(|| wait_for("never", Duration::from_millis(300), || false));
        let msg = never.unwrap_err().downcast::<String>().map(|s| *s).unwrap_or_default();
        assert!(msg.contains("never: not within"), "{msg}");
    }
}
