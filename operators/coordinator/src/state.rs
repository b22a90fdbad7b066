//! The coordinator's view of observed state: every service's observed
//! record, kept current by a watch on the observed bucket, with a change
//! counter that deploy tasks wait on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use infra_bus::{Bus, Change};
use infra_proto::bus::v1::ObservedService;
use tokio::sync::{RwLock, watch};
use tokio_util::sync::CancellationToken;

/// Observed state of every service on every host, by bus key.
#[derive(Clone)]
pub struct ObservedCache {
    map: Arc<RwLock<HashMap<String, ObservedService>>>,
    changed: watch::Sender<u64>,
}

impl Default for ObservedCache {
    fn default() -> Self {
        Self {
            map: Arc::default(),
            changed: watch::channel(0).0,
        }
    }
}

fn key(host: &str, tier: &str, service: &str) -> String {
    format!("{host}/{tier}/{service}")
}

impl ObservedCache {
    /// Observed state of one service on one host.
    pub async fn get(&self, host: &str, tier: &str, service: &str) -> Option<ObservedService> {
        self.map.read().await.get(&key(host, tier, service)).cloned()
    }

    /// Every observed record.
    pub async fn all(&self) -> Vec<ObservedService> {
        self.map.read().await.values().cloned().collect()
    }

    /// A receiver that ticks on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    async fn put(&self, o: ObservedService) {
        self.map.write().await.insert(key(&o.host, &o.tier, &o.service), o);
        self.changed.send_modify(|n| *n += 1);
    }

    async fn remove_key(&self, bus_key: &str) {
        if let Some((h, t, s)) = infra_bus::subject::parse_service_key(bus_key) {
            self.map.write().await.remove(&key(h, t, s));
            self.changed.send_modify(|n| *n += 1);
        }
    }

    async fn replace(&self, list: Vec<ObservedService>) {
        let fresh: HashMap<String, ObservedService> = list
            .into_iter()
            .map(|o| (key(&o.host, &o.tier, &o.service), o))
            .collect();
        *self.map.write().await = fresh;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Keeps the cache current until `shutdown`: watch, then list, and
    /// again after any interruption.
    pub async fn follow(self, bus: Bus, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let watch = bus.watch_observed().await;
            let listed = bus.list_observed(None).await;
            match (watch, listed) {
                (Ok(mut w), Ok(list)) => {
                    backoff = Duration::from_millis(200);
                    self.replace(list).await;
                    loop {
                        let next = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            n = w.next() => n,
                        };
                        match next {
                            Some(Ok(Change::Put { value, .. })) => self.put(value).await,
                            Some(Ok(Change::Delete { key })) => self.remove_key(&key).await,
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "observed-state watch failed; re-listing");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "cannot read observed state"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
