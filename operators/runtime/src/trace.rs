//! Traces over OTLP, so that one deploy is one trace across the
//! coordinator and every operator it touches.
//!
//! Off unless an endpoint is configured (`[log] otlp_endpoint`,
//! `INFRA_LOG__OTLP_ENDPOINT`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`);
//! then every `tracing` span is also an OpenTelemetry span, exported over
//! OTLP/gRPC (tonic) in batches (`OTEL_BSP_*` tune them).
//!
//! # How the context travels
//!
//! W3C trace context (`traceparent`) everywhere:
//! - **gRPC**: the coordinator reads `traceparent` from the request
//!   metadata ([`grpc_span`]), so `grpcurl -H traceparent:...` or an
//!   instrumented client puts a deploy in its own trace.
//! - **NATS messages**: every event is published with a `traceparent`
//!   header ([`current`], through the bus's trace hook).
//! - **Desired state**: the coordinator's writes carry the context in
//!   `DesiredService.traceparent`, and the operator's reconcile of that
//!   write is a child of it ([`set_parent`]). A field and not a header:
//!   NATS KV watchers (async-nats `kv::Entry`) are not given the headers of
//!   the message behind an entry.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::app::{ConfigError, LogFormat};

/// The W3C header and metadata key.
pub const TRACEPARENT: &str = "traceparent";

/// Where traces go, and what the process is called in them.
#[derive(Clone, Debug)]
pub struct Exporting {
    /// OTLP/gRPC endpoint (`http://tempo:4317`); `None`: the standard
    /// `OTEL_EXPORTER_OTLP_*` environment.
    pub endpoint: Option<String>,
    /// `service.name` (`operator-data`, `coordinator`).
    pub service: String,
    /// `host.name`: the host id.
    pub host: String,
}

impl Exporting {
    /// Tracing is on when an endpoint is configured or the standard
    /// environment names one.
    pub fn wanted(endpoint: Option<&str>) -> bool {
        endpoint.is_some_and(|e| !e.is_empty())
            || ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
                .iter()
                .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
    }
}

/// Keeps the exporter; [`Telemetry::shutdown`] flushes what is buffered.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops the exporter. Call it from
    /// outside the runtime's `block_on` while the runtime is still alive
    /// (the gRPC channel's tasks run on it).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("traces: shutdown: {e}");
        }
    }
}

/// Installs logging (JSON or text on stderr; `RUST_LOG` overrides
/// `filter`) and, when `export` is given, the OTLP layer. Must run inside a Tokio runtime context
/// (`Runtime::enter`): the gRPC channel spawns its worker there.
pub fn init(format: LogFormat, filter: &str, export: Option<Exporting>) -> Result<Telemetry, ConfigError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let (otel, provider) = match export {
        Some(x) => {
            use opentelemetry_otlp::WithExportConfig;
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(Duration::from_secs(5));
            if let Some(e) = x.endpoint.as_deref().filter(|e| !e.is_empty()) {
                builder = builder.with_endpoint(e);
            }
            let exporter = builder
                .build()
                .map_err(|e| ConfigError(format!("log.otlp_endpoint: {e}")))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(x.service.clone())
                .with_attribute(opentelemetry::KeyValue::new("host.name", x.host.clone()))
                .build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            let tracer = provider.tracer("infra");
            (Some(tracing_opentelemetry::layer().with_tracer(tracer)), Some(provider))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}

use tracing_subscriber::Layer as _;

/// The `traceparent` of the current span, when traces are exported.
pub fn current() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of `traceparent` (ignored when empty or
/// malformed: a bad header must never fail a request).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The span of one gRPC call (for tonic's `Server::trace_fn`): named after
/// the method, a child of the caller's `traceparent` when it sent one.
/// Health checks and reflection get none.
pub fn grpc_span(path: &str, traceparent: Option<&str>) -> tracing::Span {
    if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("grpc", otel.name = path, otel.kind = "server", rpc.system = "grpc");
    if let Some(tp) = traceparent {
        set_parent(&span, tp);
    }
    span
}

/// The trace id of a `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    parts.next().filter(|t| t.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_there_is_no_context_to_send() {
        let span = tracing::info_span!("x");
        let _g = span.enter();
        assert_eq!(current(), None);
    }

    #[test]
    fn the_trace_id_is_read_from_a_traceparent() {
        assert_eq!(
            trace_id("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(trace_id("garbage"), None);
    }

    #[test]
    fn a_span_joins_the_trace_it_is_given() {
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("t"));
        let sub = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(sub, || {
            let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let span = tracing::info_span!("reconcile");
            set_parent(&span, parent);
            let child = span.in_scope(|| current().expect("a context"));
            assert_eq!(trace_id(&child), trace_id(parent));
            assert_ne!(child, parent, "the child has its own span id");
            // A malformed parent is ignored: a new root.
            let other = tracing::info_span!("other");
            set_parent(&other, "00-zz-zz-01");
            let theirs = other.in_scope(|| current().expect("a context"));
            assert_ne!(trace_id(&theirs), trace_id(parent));
        });
    }
}
