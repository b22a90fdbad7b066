//! The coordinator's Prometheus metrics (prefix `infra_coordinator_`),
//! served on `metrics_listen` by operator-core's metrics server.
//!
//! Derived from the outside, not counted inside the logic: deploy and
//! rollout steps from this coordinator's own events on the bus (every step
//! the logic takes it already announces there), the gauges from the bus
//! state (observed services, heartbeats, host states) and the leader
//! election's watch. So the deploy and rollout code needs no metrics
//! handle, and what the metrics say is what a person watching events sees.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use infra_bus::Bus;
use infra_proto::bus::v1::{Event, EventKind, Heartbeat, HostState, ObservedService};
use infra_runtime::metrics::{HEALTHS, health_token, register};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the gauges over the bus state are refreshed.
const REFRESH: Duration = Duration::from_secs(5);
/// Bound on each bus listing.
const BUS_TIMEOUT: Duration = Duration::from_secs(5);

/// A `step` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// The step (`started`, `batch_done`, `rollback_started`, ...).
    pub step: &'static str,
}

// The `kind` and `health` labels are the operators' (one definition).
pub use infra_runtime::metrics::{HealthLabel, KindLabel};

/// A host `state` label: `up`, `drained` or `lost`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state.
    pub state: &'static str,
}

/// Which counter an event adds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `infra_coordinator_deploy_steps_total{step}`.
    Deploy(&'static str),
    /// `infra_coordinator_rollout_steps_total{step}`.
    Rollout(&'static str),
    /// `infra_coordinator_host_events_total{kind}`.
    Host(&'static str),
}

/// Deploy steps, each rendered from the start (0 until it happens) so
/// `increase()` in an alert sees the first one.
pub const DEPLOY_STEPS: [&str; 6] = ["started", "dispatched", "ready", "failed", "blocked", "finished"];
/// Rollout steps, likewise.
pub const ROLLOUT_STEPS: [&str; 7] = [
    "started",
    "batch_done",
    "finished",
    "failed",
    "paused",
    "rollback_started",
    "rollback_finished",
];
/// Host events, likewise.
pub const HOST_EVENTS: [&str; 5] = ["lost", "returned", "drained", "service_moved", "service_stranded"];

/// The counter an event kind adds to; `None` for kinds not counted here.
pub fn step_of(kind: EventKind) -> Option<Step> {
    use EventKind as K;
    Some(match kind {
        K::DeployStarted => Step::Deploy("started"),
        K::ServiceDispatched => Step::Deploy("dispatched"),
        K::ServiceReady => Step::Deploy("ready"),
        K::ServiceFailed => Step::Deploy("failed"),
        K::ServiceBlocked => Step::Deploy("blocked"),
        K::DeployFinished => Step::Deploy("finished"),
        K::RolloutStarted => Step::Rollout("started"),
        K::RolloutBatchDone => Step::Rollout("batch_done"),
        K::RolloutFinished => Step::Rollout("finished"),
        K::RolloutFailed => Step::Rollout("failed"),
        K::RolloutPaused => Step::Rollout("paused"),
        K::RollbackStarted => Step::Rollout("rollback_started"),
        K::RollbackFinished => Step::Rollout("rollback_finished"),
        K::HostLost => Step::Host("lost"),
        K::HostReturned => Step::Host("returned"),
        K::HostDrained => Step::Host("drained"),
        K::ServiceMoved => Step::Host("service_moved"),
        K::ServiceStranded => Step::Host("service_stranded"),
        _ => return None,
    })
}

/// The coordinator's metrics.
#[derive(Debug)]
pub struct CoordinatorMetrics {
    registry: Registry,
    deploy_steps: Family<StepLabel, Counter>,
    rollout_steps: Family<StepLabel, Counter>,
    host_events: Family<KindLabel, Counter>,
    services: Family<HealthLabel, Gauge>,
    hosts: Family<StateLabel, Gauge>,
    version_skew: Gauge,
    leader: Gauge,
    bus_write_failures: Counter,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CoordinatorMetrics {
    /// Registers every family, each label value at 0.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("infra_coordinator");
        let deploy_steps = register(
            &mut registry,
            "deploy_steps",
            "Deploy steps this coordinator took (started, dispatched, ready, failed, blocked, finished)",
            Family::<StepLabel, Counter>::default(),
        );
        let rollout_steps = register(
            &mut registry,
            "rollout_steps",
            "Rollout steps this coordinator took (started, batch_done, finished, failed, paused, rollback_started, rollback_finished)",
            Family::<StepLabel, Counter>::default(),
        );
        let host_events = register(
            &mut registry,
            "host_events",
            "Hosts lost, returned and drained, and services moved or stranded because of it",
            Family::<KindLabel, Counter>::default(),
        );
        let services = register(
            &mut registry,
            "services",
            "Services on hosts (one per service and host), by health, from the observed state",
            Family::<HealthLabel, Gauge>::default(),
        );
        let hosts = register(
            &mut registry,
            "hosts",
            "Hosts by state: up (heartbeating), drained, lost",
            Family::<StateLabel, Gauge>::default(),
        );
        let version_skew = register(
            &mut registry,
            "operators_version_skew",
            "Operators heartbeating with another version than this coordinator's (an upgrade left half done)",
            Gauge::default(),
        );
        let bus_write_failures = register(
            &mut registry,
            "bus_write_failures",
            "Bus writes that failed after their retries and did not stop the call that made them (each is logged with what it was and why)",
            Counter::default(),
        );
        let leader = register(
            &mut registry,
            "leader",
            "1 while this coordinator holds the leader lease, else 0",
            Gauge::default(),
        );
        let info = Family::<Vec<(String, String)>, Gauge>::default();
        info.get_or_create(&vec![("version".into(), crate::VERSION.into())])
            .set(1);
        registry.register("info", "The coordinator's version (value 1)", info);
        for step in DEPLOY_STEPS {
            let _ = deploy_steps.get_or_create(&StepLabel { step });
        }
        for step in ROLLOUT_STEPS {
            let _ = rollout_steps.get_or_create(&StepLabel { step });
        }
        for kind in HOST_EVENTS {
            let _ = host_events.get_or_create(&KindLabel { kind });
        }
        for h in HEALTHS {
            let _ = services.get_or_create(&HealthLabel {
                health: health_token(h),
            });
        }
        for state in ["up", "drained", "lost"] {
            let _ = hosts.get_or_create(&StateLabel { state });
        }
        Self {
            registry,
            deploy_steps,
            rollout_steps,
            host_events,
            services,
            hosts,
            version_skew,
            leader,
            bus_write_failures,
        }
    }

    /// The counter of bus writes that failed without failing their call;
    /// the coordinator increments it.
    pub fn bus_write_failures(&self) -> Counter {
        self.bus_write_failures.clone()
    }

    /// Counts one of this coordinator's events.
    pub fn event(&self, ev: &Event) {
        match step_of(ev.kind()) {
            Some(Step::Deploy(step)) => {
                self.deploy_steps.get_or_create(&StepLabel { step }).inc();
            }
            Some(Step::Rollout(step)) => {
                self.rollout_steps.get_or_create(&StepLabel { step }).inc();
            }
            Some(Step::Host(kind)) => {
                self.host_events.get_or_create(&KindLabel { kind }).inc();
            }
            None => {}
        }
    }

    /// Sets the gauges from the bus state.
    pub fn observe(&self, observed: &[ObservedService], heartbeats: &[Heartbeat], states: &[HostState]) {
        for h in HEALTHS {
            let n = observed.iter().filter(|o| o.health() == h).count();
            self.services
                .get_or_create(&HealthLabel {
                    health: health_token(h),
                })
                .set(n as i64);
        }
        let skewed = heartbeats.iter().filter(|h| h.version != crate::VERSION).count();
        self.version_skew.set(skewed as i64);
        let (up, drained, lost) = host_counts(heartbeats, states);
        for (state, n) in [("up", up), ("drained", drained), ("lost", lost)] {
            self.hosts.get_or_create(&StateLabel { state }).set(n as i64);
        }
    }

    /// Sets the leader gauge.
    pub fn leading(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition (OpenMetrics).
    pub fn render(&self) -> String {
        infra_runtime::metrics::render(&self.registry)
    }
}

/// Hosts up (heartbeating, neither drained nor lost), drained, and lost.
/// A drained host that still heartbeats is drained, not up: no new
/// replica goes there.
pub fn host_counts(heartbeats: &[Heartbeat], states: &[HostState]) -> (usize, usize, usize) {
    let by_host: BTreeMap<&str, &HostState> = states.iter().map(|s| (s.host.as_str(), s)).collect();
    let mut all: BTreeSet<&str> = heartbeats.iter().map(|h| h.host.as_str()).collect();
    all.extend(by_host.keys());
    let (mut up, mut drained, mut lost) = (0, 0, 0);
    for h in all {
        match by_host.get(h) {
            Some(s) if s.lost => lost += 1,
            Some(s) if s.drained => drained += 1,
            _ => up += 1,
        }
    }
    (up, drained, lost)
}

/// Serves the metrics on `listener` and keeps them up to date until
/// `shutdown`: counts this coordinator's events (`id`), follows the
/// election (`leading`), refreshes the gauges from the bus.
pub async fn run(
    metrics: Arc<CoordinatorMetrics>,
    bus: Bus,
    id: String,
    mut leading: watch::Receiver<bool>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let m = metrics.clone();
    tokio::spawn(infra_runtime::metrics::serve(
        listener,
        move || m.render(),
        shutdown.clone(),
    ));
    metrics.leading(*leading.borrow());
    let mut events = None;
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        if events.is_none() {
            match tokio::time::timeout(BUS_TIMEOUT, bus.subscribe_events(Some(&id), None, None)).await {
                Ok(Ok(s)) => events = Some(s),
                Ok(Err(e)) => tracing::warn!(error = %e, "metrics: cannot follow this coordinator's events; retrying"),
                Err(_) => tracing::warn!("metrics: subscribing to events timed out; retrying"),
            }
        }
        let next = async {
            match events.as_mut() {
                Some(s) => s.next().await,
                None => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    None
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            ev = next => match ev {
                Some(ev) if ev.source == "coordinator" => metrics.event(&ev),
                Some(_) => {}
                None => events = None,
            },
            r = leading.changed() => match r {
                Ok(()) => metrics.leading(*leading.borrow()),
                Err(_) => metrics.leading(false),
            },
            _ = tick.tick() => refresh(&bus, &metrics).await,
        }
    }
}

async fn refresh(bus: &Bus, metrics: &CoordinatorMetrics) {
    let listed = tokio::time::timeout(BUS_TIMEOUT, async {
        Ok::<_, infra_bus::BusError>((
            bus.list_observed(None).await?,
            bus.list_heartbeats().await?,
            bus.list_host_states().await?,
        ))
    })
    .await;
    match listed {
        Ok(Ok((observed, heartbeats, states))) => metrics.observe(&observed, &heartbeats, &states),
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics: cannot read the bus; the gauges stay as they are"),
        Err(_) => tracing::debug!("metrics: reading the bus timed out; the gauges stay as they are"),
    }
}

#[cfg(test)]
mod tests {
    use infra_proto::bus::v1::Health;

    use super::*;

    fn ev(kind: EventKind) -> Event {
        Event {
            kind: kind as i32,
            source: "coordinator".into(),
            ..Default::default()
        }
    }

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }

    #[test]
    fn deploy_and_rollout_steps_are_counted_from_the_coordinators_events() {
        let m = CoordinatorMetrics::new();
        for k in [
            EventKind::DeployStarted,
            EventKind::ServiceDispatched,
            EventKind::ServiceReady,
            EventKind::DeployFinished,
            EventKind::RolloutStarted,
            EventKind::RolloutBatchDone,
            EventKind::RolloutBatchDone,
            EventKind::RolloutFailed,
            EventKind::RollbackStarted,
            EventKind::RollbackFinished,
            EventKind::HostLost,
            EventKind::LeaderElected,
        ] {
            m.event(&ev(k));
        }
        let text = m.render();
        has(&text, "infra_coordinator_deploy_steps_total{step=\"started\"} 1");
        has(&text, "infra_coordinator_deploy_steps_total{step=\"finished\"} 1");
        has(&text, "infra_coordinator_deploy_steps_total{step=\"failed\"} 0");
        has(&text, "infra_coordinator_rollout_steps_total{step=\"batch_done\"} 2");
        has(&text, "infra_coordinator_rollout_steps_total{step=\"failed\"} 1");
        has(
            &text,
            "infra_coordinator_rollout_steps_total{step=\"rollback_started\"} 1",
        );
        has(&text, "infra_coordinator_rollout_steps_total{step=\"finished\"} 0");
        has(&text, "infra_coordinator_host_events_total{kind=\"lost\"} 1");
    }

    /// Every `infra_operator_*` / `infra_coordinator_*` name in `text`.
    fn names_in(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for prefix in ["infra_operator_", "infra_coordinator_"] {
            let mut rest = text;
            while let Some(i) = rest.find(prefix) {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                out.insert(tail[..end].to_owned());
                rest = &tail[end..];
            }
        }
        out
    }

    /// Every series name the operators and the coordinator expose.
    fn exposed() -> BTreeSet<String> {
        let mut names =
            infra_runtime::metrics::series_names(&operator_core::metrics::OperatorMetrics::exercised().render());
        names.extend(infra_runtime::metrics::series_names(
            &CoordinatorMetrics::new().render(),
        ));
        names
    }

    fn observability(rel: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../compose/06-observability")
            .join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn the_platform_dashboard_parses_and_names_only_metrics_the_code_registers() {
        let text = observability("grafana/provisioning/dashboards/platform.json");
        let dash: serde_json::Value = serde_json::from_str(&text).expect("platform.json is JSON");
        assert_eq!(dash["uid"], "infra-platform");
        let exprs: Vec<&str> = dash["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
            .filter_map(|t| t["expr"].as_str())
            .collect();
        assert!(exprs.len() >= 10, "{exprs:?}");
        let used = names_in(&exprs.join("\n"));
        let exposed = exposed();
        let unknown: Vec<&String> = used.difference(&exposed).collect();
        assert!(
            unknown.is_empty(),
            "the dashboard names {unknown:?}, which no code registers; exposed: {exposed:?}"
        );
        for wanted in [
            "infra_coordinator_hosts",
            "infra_coordinator_services",
            "infra_coordinator_rollout_steps_total",
            "infra_operator_restarts_total",
            "infra_operator_services",
        ] {
            assert!(used.contains(wanted), "the dashboard shows {wanted}");
        }
        let provider = observability("grafana/provisioning/dashboards/dashboards.yml");
        assert!(provider.contains("/etc/grafana/provisioning/dashboards"), "{provider}");
    }

    #[test]
    fn the_platform_alert_rules_name_only_metrics_the_code_registers() {
        let text = observability("prometheus/rules/platform.yml");
        let rules: serde_json::Value = serde_norway::from_str(&text).expect("platform.yml is YAML");
        let alerts: BTreeMap<&str, &str> = rules["groups"][0]["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| (r["alert"].as_str().unwrap_or(""), r["expr"].as_str().unwrap_or("")))
            .collect();
        for a in ["InfraServiceUnhealthy", "InfraHostLost", "InfraRolloutReverted"] {
            assert!(alerts.contains_key(a), "{a} in {alerts:?}");
        }
        let used = names_in(&alerts.values().copied().collect::<Vec<_>>().join("\n"));
        let unknown: Vec<String> = used.difference(&exposed()).cloned().collect();
        assert!(
            unknown.is_empty(),
            "the alert rules name {unknown:?}, which no code registers"
        );
    }

    #[test]
    fn hosts_are_up_drained_or_lost_and_services_are_counted_by_health() {
        let m = CoordinatorMetrics::new();
        let hb = |h: &str| Heartbeat {
            host: h.into(),
            version: crate::VERSION.into(),
            ..Default::default()
        };
        let st = |h: &str, drained: bool, lost: bool| HostState {
            host: h.into(),
            drained,
            lost,
            ..Default::default()
        };
        let obs = |s: &str, h: Health| ObservedService {
            service: s.into(),
            health: h as i32,
            ..Default::default()
        };
        m.observe(
            &[
                obs("postgres", Health::Healthy),
                obs("grafana", Health::Healthy),
                obs("minio", Health::Unhealthy),
            ],
            &[
                hb("host1"),
                hb("host1"),
                hb("host2"),
                Heartbeat {
                    version: "0.0.1".into(),
                    ..hb("host3")
                },
            ],
            &[st("host2", true, false), st("host4", false, true)],
        );
        m.leading(true);
        let text = m.render();
        has(&text, "infra_coordinator_hosts{state=\"up\"} 2");
        has(&text, "infra_coordinator_hosts{state=\"drained\"} 1");
        has(&text, "infra_coordinator_hosts{state=\"lost\"} 1");
        has(&text, "infra_coordinator_services{health=\"healthy\"} 2");
        has(&text, "infra_coordinator_services{health=\"unhealthy\"} 1");
        has(&text, "infra_coordinator_leader 1");
        has(&text, "infra_coordinator_operators_version_skew 1");
    }
}
