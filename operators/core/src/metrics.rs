//! Prometheus metrics: the operator's own families ([`OperatorMetrics`])
//! and a tiny HTTP server ([`serve`]) answering `GET /metrics` in the
//! OpenMetrics text format, on the hyper already in the tree (no web
//! framework: one route is all it needs).
//!
//! Families carry no `host` or `tier` label: Prometheus adds those as target
//! labels from the observability operator's `targets.json`, and a scraped
//! label of the same name would be renamed `exported_host`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use infra_proto::bus::v1::{EventKind, Health, ObservedService};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The content type of [`prometheus_client::encoding::text::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// First port of the operators' default metrics addresses: the gateway's is
/// `127.0.0.1:9461`, then one per tier in the order of the gRPC ports
/// (auth 9462, data 9463, ..., communication 9469).
pub const FIRST_OPERATOR_PORT: u16 = 9461;
/// The default metrics port of the tier whose default gRPC port is
/// `grpc_port` (50061 -> 9461, ..., 50069 -> 9469).
pub fn default_operator_port(grpc_port: u16) -> u16 {
    FIRST_OPERATOR_PORT.saturating_add(grpc_port.saturating_sub(50061))
}

/// The coordinator's default metrics port (`127.0.0.1:9460`).
pub const COORDINATOR_PORT: u16 = 9460;
/// How often the gauges over the observed state are refreshed.
const REFRESH: Duration = Duration::from_secs(5);
/// Bound on reading one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A `result` label: `ok` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// A `kind` label (an event kind's subject token, `restarted`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The event kind.
    pub kind: &'static str,
}

/// A `health` label (`healthy`, `unhealthy`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabel {
    /// The health.
    pub health: &'static str,
}

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

/// Every health a service can report, as label values: each is rendered
/// (0 when no service has it) so a dashboard shows a line for it.
pub const HEALTHS: [Health; 7] = [
    Health::Starting,
    Health::Healthy,
    Health::Unhealthy,
    Health::Running,
    Health::Stopped,
    Health::Failed,
    Health::Completed,
];

/// A health as a label value (`healthy`).
pub fn health_token(h: Health) -> &'static str {
    match h {
        Health::Unspecified => "unspecified",
        Health::Starting => "starting",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
        Health::Running => "running",
        Health::Stopped => "stopped",
        Health::Failed => "failed",
        Health::Completed => "completed",
    }
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
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciles",
            "Reconcile passes of one service, by result (ok, error)",
            reconciles.clone(),
        );
        let reconcile_duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        registry.register(
            "reconcile_duration_seconds",
            "How long one reconcile pass of one service took",
            reconcile_duration.clone(),
        );
        let restarts = Counter::default();
        registry.register(
            "restarts",
            "Containers restarted by the operator (unhealthy or exited, within the restart budget)",
            restarts.clone(),
        );
        let events = Family::<KindLabel, Counter>::default();
        registry.register("events", "Events published, by kind", events.clone());
        let services = Family::<HealthLabel, Gauge>::default();
        registry.register(
            "services",
            "Services of this tier on this host, by health",
            services.clone(),
        );
        let service_health = Family::<ServiceHealthLabel, Gauge>::default();
        registry.register(
            "service_health",
            "1 for each service (label name) of this tier on this host, labelled with its health",
            service_health.clone(),
        );
        let containers = Family::<StateLabel, Gauge>::default();
        registry.register(
            "containers",
            "Containers the operator owns on this host, by Docker state",
            containers.clone(),
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

/// Encodes a registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
    out
}

/// The series names a rendering exposes, from its `# TYPE` lines: a counter
/// `x` is scraped as `x_total`, a histogram as `x_bucket`, `x_sum` and
/// `x_count`, a gauge as `x`. Used by tests that check that dashboards and
/// alert rules name only what exists.
pub fn series_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("#") || parts.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["bucket", "sum", "count"] {
                    names.insert(format!("{name}_{s}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
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

/// Parses a `metrics_listen` value: `None` when empty (metrics off).
pub fn parse_listen(field: &str, value: &str) -> Result<Option<SocketAddr>, crate::app::ConfigError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|e| {
        crate::app::ConfigError(format!(
            "{field}: {value:?} is not a socket address ({e}); \"\" turns metrics off"
        ))
    })
}

/// Where Prometheus should scrape a server bound to `bound`: an unspecified
/// address (`0.0.0.0`, `::`) is replaced by `addr`, the host's private
/// address, when there is one.
pub fn advertised(bound: SocketAddr, addr: Option<&str>) -> String {
    match addr.filter(|a| !a.is_empty()) {
        Some(a) if bound.ip().is_unspecified() => {
            if a.contains(':') {
                format!("[{a}]:{}", bound.port())
            } else {
                format!("{a}:{}", bound.port())
            }
        }
        _ => bound.to_string(),
    }
}

/// Binds the metrics listener, naming the key when it fails.
pub async fn bind(field: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{field}: cannot listen on {addr}: {e}")))
}

/// Serves `GET /metrics` (and `/` for a person with a browser) until
/// `shutdown`, rendering with `render` on every request. Connection errors
/// are logged at debug level: a scraper that hangs up is not news.
pub async fn serve<F>(listener: TcpListener, render: F, shutdown: CancellationToken)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let render = render.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let render = render.clone();
                async move { Ok::<_, Infallible>(answer(&req, || render())) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(REQUEST_TIMEOUT)
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                () = shutdown.cancelled() => {}
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "metrics: connection ended with an error");
                },
            }
        });
    }
}

fn answer(req: &Request<Incoming>, render: impl Fn() -> String) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &str| {
        let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
        *r.status_mut() = status;
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(render())));
            if let Ok(v) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        }
        "/" => plain(StatusCode::OK, "metrics at /metrics\n"),
        _ => plain(StatusCode::NOT_FOUND, "not found: metrics are at /metrics\n"),
    }
}

#[cfg(test)]
mod tests {
    use infra_proto::bus::v1::ContainerStatus;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    #[test]
    fn an_unspecified_listen_address_is_advertised_at_the_hosts_private_address() {
        let any: SocketAddr = "0.0.0.0:9463".parse().unwrap();
        assert_eq!(advertised(any, Some("10.0.0.5")), "10.0.0.5:9463");
        assert_eq!(advertised(any, None), "0.0.0.0:9463");
        let lo: SocketAddr = "127.0.0.1:9463".parse().unwrap();
        assert_eq!(advertised(lo, Some("10.0.0.5")), "127.0.0.1:9463");
        assert_eq!(parse_listen("metrics_listen", "").unwrap(), None);
        let e = parse_listen("metrics_listen", "nope").unwrap_err().to_string();
        assert!(e.contains("metrics_listen") && e.contains("nope"), "{e}");
    }

    #[tokio::test]
    async fn the_server_answers_get_metrics_with_the_rendering() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, || "x_total 1\n# EOF\n".to_owned(), stop.clone()));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
                .await
                .expect("the server answers within 5s")
                .unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("application/openmetrics-text"), "{ok}");
        assert!(ok.ends_with("x_total 1\n# EOF\n"), "{ok}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
