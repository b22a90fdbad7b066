//! The metrics plumbing every binary shares: the label sets, the
//! OpenMetrics rendering and a tiny HTTP server ([`serve`]) answering
//! `GET /metrics`, on the hyper already in the tree (no web framework: one
//! route is all it needs).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use infra_proto::bus::v1::Health;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Registers `metric` as `name` with `help` and hands it back, so a
/// family is declared and registered in one statement.
pub fn register<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

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
