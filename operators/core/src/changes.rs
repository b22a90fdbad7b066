//! When a tier extension should look again: on any change of observed
//! state on the bus (debounced), and on a resync timer, whatever events were
//! missed. Written once for every extension that renders from what runs
//! (gateway routes, scrape targets, cluster formation).

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use infra_bus::Change;
use infra_proto::bus::v1::ObservedService;

use crate::TierContext;

/// Bound on opening the watch.
const WATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The next moments to look again. See [`ObservedChanges::next`].
pub struct ObservedChanges {
    what: &'static str,
    debounce: Duration,
    tick: tokio::time::Interval,
    watch: Option<BoxStream<'static, infra_bus::Result<Change<ObservedService>>>>,
}

impl ObservedChanges {
    /// Looks every `resync`, and `debounce` after a burst of changes;
    /// `what` names the extension in logs.
    pub fn new(what: &'static str, resync: Duration, debounce: Duration) -> Self {
        Self {
            what,
            debounce,
            tick: tokio::time::interval(resync),
            watch: None,
        }
    }

    /// Waits until it is time to look again: `true` then (the first call
    /// returns at once), `false` on shutdown. A watch that fails or ends is
    /// opened again; meanwhile the resync timer still fires.
    pub async fn next(&mut self, ctx: &TierContext) -> bool {
        if self.watch.is_none() {
            match tokio::time::timeout(WATCH_TIMEOUT, ctx.bus.watch_observed()).await {
                Ok(Ok(w)) => self.watch = Some(w),
                Ok(Err(e)) => tracing::warn!(error = %e, "{}: cannot watch observed state; retrying", self.what),
                Err(_) => tracing::warn!("{}: watching observed state timed out; retrying", self.what),
            }
        }
        let watch = &mut self.watch;
        let changed = async {
            match watch.as_mut() {
                Some(w) => Some(w.next().await),
                None => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    None
                }
            }
        };
        tokio::select! {
            () = ctx.shutdown.cancelled() => return false,
            _ = self.tick.tick() => {}
            ev = changed => {
                if matches!(ev, Some(None)) {
                    self.watch = None; // the watch ended: open a new one
                }
                // Debounce: take what else arrives within the window.
                if let Some(w) = self.watch.as_mut() {
                    let until = tokio::time::Instant::now() + self.debounce;
                    while let Ok(Some(_)) = tokio::time::timeout_at(until, w.next()).await {}
                }
            }
        }
        !ctx.shutdown.is_cancelled()
    }
}
