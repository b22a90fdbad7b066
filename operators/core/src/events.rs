//! Publishing what happens: to the bus (JetStream, durable) and to local
//! gRPC watchers.

use std::sync::Arc;
use std::time::Duration;

use infra_bus::Bus;
use infra_proto::bus::v1::{Event, EventKind};
use tokio::sync::broadcast;

/// Where an operator's events go. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventSink {
    bus: Bus,
    local: broadcast::Sender<Event>,
    host: String,
    tier: String,
    source: String,
    /// Counts what is sent, and carries the operator's other metrics to
    /// the reconcile loop (which holds the sink).
    metrics: Arc<crate::metrics::OperatorMetrics>,
}

impl EventSink {
    /// A sink for events of `tier` on `host`.
    pub fn new(bus: Bus, host: &str, tier: &str, source: &str) -> Self {
        let (local, _) = broadcast::channel(1024);
        Self {
            bus,
            local,
            host: host.to_owned(),
            tier: tier.to_owned(),
            source: source.to_owned(),
            metrics: Arc::default(),
        }
    }

    /// The operator's metrics (events are counted as they are sent).
    pub fn metrics(&self) -> &Arc<crate::metrics::OperatorMetrics> {
        &self.metrics
    }

    /// Local subscribers (the operator's gRPC `WatchEvents`).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }

    /// Emits one event about `service`. A bus failure is logged, not
    /// returned: losing an event must not stop a reconcile (events make the
    /// system fast; observed state makes it correct).
    pub async fn emit(
        &self,
        kind: EventKind,
        service: &str,
        container_id: &str,
        replica: u32,
        reason: impl Into<String>,
    ) {
        let ev = Event {
            id: String::new(),
            time: Some(infra_proto::now()),
            kind: kind as i32,
            host: self.host.clone(),
            tier: self.tier.clone(),
            service: service.to_owned(),
            container_id: container_id.to_owned(),
            replica,
            reason: reason.into(),
            source: self.source.clone(),
            deployment_id: String::new(),
            sequence: 0,
        };
        self.send(ev).await;
    }

    /// Emits a prepared event (fills host, tier and source when empty).
    pub async fn send(&self, mut ev: Event) {
        if ev.host.is_empty() {
            ev.host.clone_from(&self.host);
        }
        if ev.tier.is_empty() {
            ev.tier.clone_from(&self.tier);
        }
        if ev.source.is_empty() {
            ev.source.clone_from(&self.source);
        }
        if ev.time.is_none() {
            ev.time = Some(infra_proto::now());
        }
        tracing::info!(
            kind = infra_bus::event_kind_token(ev.kind()),
            service = %ev.service,
            container = %short(&ev.container_id),
            replica = ev.replica,
            reason = %ev.reason,
            "event"
        );
        self.metrics.event(ev.kind());
        let _ = self.local.send(ev.clone());
        match tokio::time::timeout(Duration::from_secs(5), self.bus.publish_event(&ev)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not publish event"),
            Err(_) => tracing::warn!("could not publish event within 5s (NATS unreachable?)"),
        }
    }
}

/// First 12 characters of a container id, as Docker shows them.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
