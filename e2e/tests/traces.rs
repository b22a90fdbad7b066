//! One deploy is one trace: the coordinator and the operators export spans
//! over OTLP/gRPC, and the context travels in gRPC metadata (the caller's
//! `traceparent`), in the desired state the coordinator writes, and in the
//! headers of the events on NATS.
//!
//! The collector is a small OTLP receiver in this test (the real
//! `TraceService` of opentelemetry-proto, on tonic): it records every span
//! with the `service.name` of the process that sent it. Everything else is
//! real: the binaries, nats-server, the Docker engine, grpcurl.
//!
//! Images: `infra-local/redis:7`, `infra-local/nginx:1`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use infra_e2e::{Options, Platform, write};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// One span as the collector received it.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    /// String attributes (the span's fields).
    attrs: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(v) => Some((kv.key.clone(), v.clone())),
                            Value::IntValue(v) => Some((kv.key.clone(), v.to_string())),
                            _ => None,
                        })
                        .collect();
                    got.push(Got {
                        attrs,
                        service: service.clone(),
                        name: s.name,
                        trace: hex(&s.trace_id),
                        id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A cross-tier catalog: `web` (gateway tier) needs `cache` (data tier)
/// healthy first.
fn catalog(root: &Path) {
    write(
        root,
        "04-data/cache/docker-compose.yml",
        r#"services:
  cache:
    image: infra-local/redis:7
    command: ["redis-server", "--save", ""]
    healthcheck:
      test: ["CMD", "redis-cli", "ping"]
      interval: 1s
      timeout: 2s
      retries: 10
"#,
    );
    write(
        root,
        "01-gateway/web/docker-compose.yml",
        r#"services:
  web:
    image: infra-local/nginx:1
    depends_on:
      cache:
        condition: service_healthy
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1/"]
      interval: 1s
      timeout: 2s
      retries: 10
"#,
    );
}

/// Walks up from `span` through the parents the collector has; returns the
/// names on the way (the span itself first).
fn ancestry<'a>(span: &'a Got, by_id: &HashMap<&str, &'a Got>) -> Vec<&'a Got> {
    let mut out = vec![span];
    let mut at = span;
    while let Some(p) = by_id.get(at.parent.as_str()) {
        out.push(p);
        at = p;
        if out.len() > 64 {
            break;
        }
    }
    out
}

#[test]
fn one_deploy_is_one_trace_across_the_coordinator_and_the_operators() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let collector = Collector::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let otlp = listener.local_addr().unwrap();
    {
        let c = collector.clone();
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(c))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
    }

    let dir = tempfile::tempdir().unwrap();
    catalog(dir.path());
    let mut o = Options::over("traces", dir.path(), &["data", "gateway"]);
    o.proc_env = vec![
        ("INFRA_LOG__OTLP_ENDPOINT".into(), format!("http://{otlp}")),
        // Export every 200 ms, not every 5 s, so the test need not wait.
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
    ];
    let p = Platform::start(o);

    // Every event on the bus, with the trace context of its headers.
    let events: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    {
        let (url, events) = (p.nats.url(), events.clone());
        let mut sub = rt.block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            client.subscribe("infra.events.>").await.unwrap()
        });
        rt.spawn(async move {
            while let Some(m) = sub.next().await {
                let tp = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("traceparent"))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                events.lock().unwrap().push((m.subject.to_string(), tp));
            }
        });
    }

    // The caller's own trace: grpcurl sends its context as metadata.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let out = Command::new(std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into()))
        .args([
            "-plaintext",
            "-H",
            &format!("traceparent: 00-{trace}-{caller}-01"),
            "-d",
            r#"{"timeoutSeconds":120}"#,
            &p.grpc,
            "infra.coordinator.v1.CoordinatorService/Deploy",
        ])
        .output()
        .expect("grpcurl");
    let progress = infra_e2e::parse_json_stream(&String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "deploy: {}", String::from_utf8_lossy(&out.stderr));
    let done = progress.last().expect("progress");
    assert_eq!(done["ready"], 2, "both services ready: {progress:#?}\n{}", p.all_logs());

    // Wait for the spans of the deploy to arrive from every process.
    let wanted: BTreeSet<&str> = ["coordinator", "operator-data", "operator-gateway"].into();
    let t0 = Instant::now();
    let spans = loop {
        let spans: Vec<Got> = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace == trace)
            .cloned()
            .collect();
        let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
        let started = |svc: &str| {
            spans
                .iter()
                .any(|s| s.service == format!("operator-{svc}") && s.name == "docker.start")
        };
        let coordinator = |name: &str| {
            spans
                .iter()
                .filter(|s| s.service == "coordinator" && s.name.ends_with(name))
                .count()
        };
        // Spans are exported as they end: `deploy` ends last on the
        // coordinator, but an operator's pass (the parent of its docker
        // spans) may end after it: wait until every operator span's parent
        // has arrived too (bounded; past it, the ancestry check below says
        // which span is cut off).
        let ids: BTreeSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
        let parents_in = spans
            .iter()
            .filter(|s| s.service.starts_with("operator-"))
            .all(|s| ids.contains(s.parent.as_str()));
        let whole = wanted.is_subset(&services)
            && started("data")
            && started("gateway")
            && coordinator("deploy") == 1
            && coordinator("/Deploy") == 1
            && coordinator("service") == 2;
        if whole && (parents_in || t0.elapsed() > Duration::from_secs(20)) {
            break spans;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the deploy's trace {trace} never held spans of {wanted:?} with a docker.start from each operator; got {:#?}\nall: {:#?}",
            services,
            collector
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|s| (&s.service, &s.name, &s.trace))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(300));
    };

    // One tree: the coordinator's gRPC span is the child of the caller's
    // span, `deploy` under it, a `service` span per service, and every
    // operator span reaches `deploy` through its parents.
    let by_id: HashMap<&str, &Got> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let rpc = spans
        .iter()
        .find(|s| s.service == "coordinator" && s.name.ends_with("/Deploy"))
        .unwrap_or_else(|| {
            panic!(
                "no Deploy call span among {:?}",
                spans
                    .iter()
                    .map(|s| (&s.service, &s.name, &s.parent))
                    .collect::<Vec<_>>()
            )
        });
    assert_eq!(rpc.parent, caller, "the call span is a child of the caller's");
    let deploy = spans
        .iter()
        .find(|s| s.service == "coordinator" && s.name == "deploy")
        .expect("a deploy span");
    assert_eq!(deploy.parent, rpc.id, "deploy runs under the call");
    for tier in ["data", "gateway"] {
        let ours: Vec<&Got> = spans
            .iter()
            .filter(|s| s.service == format!("operator-{tier}"))
            .collect();
        for s in &ours {
            let up = ancestry(s, &by_id);
            assert!(
                up.iter().any(|a| a.id == deploy.id),
                "{tier} span {} does not reach the deploy span: {:?}",
                s.name,
                up.iter().map(|a| (&a.service, &a.name)).collect::<Vec<_>>()
            );
        }
        let names: BTreeSet<&str> = ours.iter().map(|s| s.name.as_str()).collect();
        for n in ["reconcile", "docker.create", "docker.start"] {
            assert!(names.contains(n), "operator-{tier} spans {names:?} lack {n}");
        }
        println!(
            "TRACE | operator-{tier}: {} spans in the deploy's trace ({names:?})",
            ours.len()
        );
    }
    // The reconciles of `cache` (data) and `web` (gateway) hang under the
    // coordinator's span for that service.
    for (tier, svc) in [("data", "cache"), ("gateway", "web")] {
        let of_service = spans
            .iter()
            .find(|s| {
                s.service == "coordinator"
                    && s.name == "service"
                    && s.attrs.get("service").map(String::as_str) == Some(svc)
            })
            .unwrap_or_else(|| panic!("no coordinator span for {svc}"));
        assert_eq!(of_service.parent, deploy.id, "{svc}'s span is a child of deploy");
        let reconciles: Vec<&Got> = spans
            .iter()
            .filter(|s| s.service == format!("operator-{tier}") && s.name == "reconcile")
            .collect();
        assert!(
            reconciles
                .iter()
                .all(|r| r.attrs.get("service").map(String::as_str) == Some(svc)
                    && ancestry(r, &by_id).iter().any(|a| a.id == of_service.id)),
            "every {tier} reconcile is {svc}'s and under its coordinator span"
        );
    }

    // Events on NATS carry the same trace in their headers: the coordinator's
    // deploy events and the operators' container events.
    let t0 = Instant::now();
    loop {
        let ev = events.lock().unwrap().clone();
        let traced = |part: &str| ev.iter().any(|(subj, tp)| subj.contains(part) && tp.contains(trace));
        if traced(".data.cache.") && traced(".gateway.web.") && traced(".coordinator._.deploy_") {
            println!(
                "TRACE | {} events on NATS, {} with the deploy's traceparent header",
                ev.len(),
                ev.iter().filter(|(_, tp)| tp.contains(trace)).count()
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "events without the deploy's traceparent: {ev:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "TRACE | one trace {trace}: {} spans from {:?}",
        spans.len(),
        spans.iter().map(|s| s.service.as_str()).collect::<BTreeSet<_>>()
    );
    drop(p);
}
