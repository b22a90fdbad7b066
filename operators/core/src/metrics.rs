//! Prometheus metrics: the operator's own families ([`OperatorMetrics`]);
//! the server, the rendering and the shared labels are
//! [`infra_runtime::metrics`]'s (re-exported here).
//!
//! Families carry no `host` or `tier` label: Prometheus adds those as target
//! labels from the observability operator's `targets.json`, and a scraped
//! label of the same name would be renamed `exported_host`.

use std::sync::Arc;
use std::time::Duration;

use infra_proto::bus::v1::{EventKind, Health, ObservedService};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use infra_runtime::metrics::*;

/// How often the gauges over the observed state are refreshed.
const REFRESH: Duration = Duration::from_secs(5);

/// A service (`name`) and its `health`: one series per service, value 1,
/// so an alert can name the service. `name`, not `service`: Prometheus
/// gives every target a `service` label (the operator's), and a scraped
/// label of that name would be renamed `exported_service`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceHealthLabel {
    /// The service.
    pub name: String,
    /// Its health on this host.
    pub health: &'static str,
}

/// A container `state` label (`running`, `exited`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// Docker's state.
    pub state: String,
}

/// A `version` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// The binary's version.
    pub version: String,
}

/// An operator's metrics (prefix `infra_operator_`). Cheap to share
/// through an [`Arc`]; every update is a few atomic operations.
#[derive(Debug)]
pub struct OperatorMetrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_duration: Histogram,
    restarts: Counter,
    events: Family<KindLabel, Counter>,
    services: Family<HealthLabel, Gauge>,
    service_health: Family<ServiceHealthLabel, Gauge>,
    containers: Family<StateLabel, Gauge>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new(crate::VERSION)
    }
}

impl OperatorMetrics {
    /// Registers every family. `version` goes into `infra_operator_info`.
    pub fn new(version: &str) -> Self {
        let mut registry = Registry::with_prefix("infra_operator");
        let reconciles = register(
            &mut registry,
            "reconciles",
            "Reconcile passes of one service, by result (ok, error)",
            Family::<ResultLabel, Counter>::default(),
        );
        let reconcile_duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        registry.register(
            "reconcile_duration_seconds",
            "How long one reconcile pass of one service took",
            reconcile_duration.clone(),
        );
        let restarts = register(
            &mut registry,
            "restarts",
            "Containers restarted by the operator (unhealthy or exited, within the restart budget)",
            Counter::default(),
        );
        let events = register(
            &mut registry,
            "events",
            "Events published, by kind",
            Family::<KindLabel, Counter>::default(),
        );
        let services = register(
            &mut registry,
            "services",
            "Services of this tier on this host, by health",
            Family::<HealthLabel, Gauge>::default(),
        );
        let service_health = register(
            &mut registry,
            "service_health",
            "1 for each service (label name) of this tier on this host, labelled with its health",
            Family::<ServiceHealthLabel, Gauge>::default(),
        );
        let containers = register(
            &mut registry,
            "containers",
            "Containers the operator owns on this host, by Docker state",
            Family::<StateLabel, Gauge>::default(),
        );
        let info = Family::<VersionLabel, Gauge>::default();
        info.get_or_create(&VersionLabel {
            version: version.to_owned(),
        })
        .set(1);
        registry.register("info", "The operator's version (value 1)", info);
        for result in ["ok", "error"] {
            let _ = reconciles.get_or_create(&ResultLabel { result });
        }
        for h in HEALTHS {
            let _ = services.get_or_create(&HealthLabel {
                health: health_token(h),
            });
        }
        Self {
            registry,
            reconciles,
            reconcile_duration,
            restarts,
            events,
            services,
            service_health,
            containers,
        }
    }

    /// Metrics with one sample in every family (a family without a sample
    /// is not rendered): what tests list the series names from.
    pub fn exercised() -> Self {
        let m = Self::new(crate::VERSION);
        m.reconciled(Duration::from_millis(1), true);
        m.event(EventKind::Restarted);
        m.observe(&[ObservedService {
            service: "example".into(),
            health: Health::Healthy as i32,
            containers: vec![infra_proto::bus::v1::ContainerStatus {
                state: "running".into(),
                ..Default::default()
            }],
            ..Default::default()
        }]);
        m
    }

    /// Counts one reconcile pass and its duration.
    pub fn reconciled(&self, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles.get_or_create(&ResultLabel { result }).inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Counts one event published (a `restarted` one is also a restart).
    pub fn event(&self, kind: EventKind) {
        self.events
            .get_or_create(&KindLabel {
                kind: infra_bus::event_kind_token(kind),
            })
            .inc();
        if kind == EventKind::Restarted {
            self.restarts.inc();
        }
    }

    /// Sets the gauges from this operator's observed state.
    pub fn observe(&self, observed: &[ObservedService]) {
        for h in HEALTHS {
            let n = observed.iter().filter(|o| o.health() == h).count();
            self.services
                .get_or_create(&HealthLabel {
                    health: health_token(h),
                })
                .set(n as i64);
        }
        self.service_health.clear();
        for o in observed {
            self.service_health
                .get_or_create(&ServiceHealthLabel {
                    name: o.service.clone(),
                    health: health_token(o.health()),
                })
                .set(1);
        }
        let mut states: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for c in observed.iter().flat_map(|o| &o.containers) {
            *states.entry(c.state.clone()).or_default() += 1;
        }
        // A state nobody is in any more reads 0 rather than vanishing.
        for s in crate::decide::ContainerState::ALL {
            states.entry(s.as_str().to_owned()).or_default();
        }
        for (state, n) in states {
            self.containers.get_or_create(&StateLabel { state }).set(n);
        }
    }

    /// The text exposition (OpenMetrics).
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// Keeps the observed-state gauges fresh until `shutdown`.
pub async fn refresh_loop(ctx: Arc<crate::reconcile::Ctx>, metrics: Arc<OperatorMetrics>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        metrics.observe(&ctx.observed().await);
    }
}

#[cfg(test)]
mod tests {
    use infra_proto::bus::v1::ContainerStatus;

    use super::*;

    fn observed(service: &str, health: Health, states: &[&str]) -> ObservedService {
        ObservedService {
            service: service.into(),
            health: health as i32,
            containers: states
                .iter()
                .map(|s| ContainerStatus {
                    state: (*s).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_rendering_counts_reconciles_events_restarts_and_services_by_health() {
        let m = OperatorMetrics::new("1.2.3");
        m.reconciled(Duration::from_millis(20), true);
        m.reconciled(Duration::from_millis(40), true);
        m.reconciled(Duration::from_secs(2), false);
        m.event(EventKind::Restarted);
        m.event(EventKind::Healthy);
        m.event(EventKind::Healthy);
        m.observe(&[
            observed("postgres", Health::Healthy, &["running"]),
            observed("valkey", Health::Healthy, &["running", "running"]),
            observed("minio", Health::Unhealthy, &["running"]),
        ]);
        let text = m.render();
        for line in [
            "infra_operator_reconciles_total{result=\"ok\"} 2",
            "infra_operator_reconciles_total{result=\"error\"} 1",
            "infra_operator_reconcile_duration_seconds_count 3",
            "infra_operator_reconcile_duration_seconds_bucket{le=\"0.025\"} 1",
            "infra_operator_restarts_total 1",
            "infra_operator_events_total{kind=\"healthy\"} 2",
            "infra_operator_events_total{kind=\"restarted\"} 1",
            "infra_operator_services{health=\"healthy\"} 2",
            "infra_operator_services{health=\"unhealthy\"} 1",
            "infra_operator_services{health=\"failed\"} 0",
            "infra_operator_service_health{name=\"minio\",health=\"unhealthy\"} 1",
            "infra_operator_containers{state=\"running\"} 4",
            "infra_operator_containers{state=\"exited\"} 0",
            "infra_operator_info{version=\"1.2.3\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF:\n{text}");
    }

    #[test]
    fn a_service_that_recovers_loses_its_unhealthy_series() {
        let m = OperatorMetrics::new("1");
        m.observe(&[observed("minio", Health::Unhealthy, &["running"])]);
        m.observe(&[observed("minio", Health::Healthy, &["running"])]);
        let text = m.render();
        assert!(!text.contains("name=\"minio\",health=\"unhealthy\""), "{text}");
        assert!(text.contains("infra_operator_service_health{name=\"minio\",health=\"healthy\"} 1"));
    }

    #[test]
    fn series_names_follow_the_openmetrics_suffixes() {
        let names = series_names(&OperatorMetrics::exercised().render());
        for n in [
            "infra_operator_reconciles_total",
            "infra_operator_reconcile_duration_seconds_bucket",
            "infra_operator_restarts_total",
            "infra_operator_events_total",
            "infra_operator_services",
            "infra_operator_containers",
            "infra_operator_service_health",
            "infra_operator_info",
        ] {
            assert!(names.contains(n), "{n} not in {names:?}");
        }
    }
}
