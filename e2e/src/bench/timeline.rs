//! Per-service timelines of one bring-up, from the Docker engine's own
//! container events (`start`, `health_status: healthy`), recorded the same
//! way for both systems, and the critical-path bound they imply.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bollard::Docker;
use bollard::query_parameters::EventsOptions;
use futures::StreamExt;

use super::compose::{Cond, Svc};

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Records the container events of one Compose project while alive.
pub struct Recorder {
    events: Arc<Mutex<Vec<(String, String, i64)>>>,
    task: tokio::task::JoinHandle<()>,
    bus_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Recorder {
    /// Subscribes to container events whose `project_label` is `project`;
    /// the service name comes from `service_label`. Returns once the
    /// subscription is open.
    pub async fn start(docker: &Docker, project_label: &str, project: &str, service_label: &str) -> Self {
        let opts = EventsOptions {
            since: Some(((now_ns() / 1_000_000_000) - 1).to_string()),
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                ("label".to_string(), vec![format!("{project_label}={project}")]),
            ])),
            ..Default::default()
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let service_label = service_label.to_owned();
        let mut stream = docker.events(Some(opts));
        let task = tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let service = m
                    .actor
                    .and_then(|a| a.attributes)
                    .and_then(|a| a.get(&service_label).cloned())
                    .unwrap_or_default();
                let at = m.time_nano.unwrap_or_else(|| m.time.unwrap_or(0) * 1_000_000_000);
                if let Ok(mut v) = sink.lock() {
                    v.push((service, m.action.unwrap_or_default(), at));
                }
            }
        });
        // Give the engine a moment to register the subscription.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        Self {
            events,
            task,
            bus_task: Mutex::new(None),
        }
    }

    /// Also records the operators' `healthy` events from the bus (a raw
    /// NATS subscriber), as `health_status: healthy` at the event's time:
    /// the platform counts a container healthy when its operator's early
    /// probe passes, often before Docker's own first check.
    pub async fn record_bus(&self, nats_url: &str, host: &str) -> Result<(), String> {
        use prost::Message;
        let client = async_nats::connect(nats_url)
            .await
            .map_err(|e| format!("NATS {nats_url}: {e}"))?;
        let mut sub = client
            .subscribe(format!("infra.events.{host}.>"))
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        let sink = self.events.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Some(m) = sub.next().await {
                let Ok(ev) = infra_proto::bus::v1::Event::decode(m.payload) else {
                    continue;
                };
                if ev.kind() != infra_proto::bus::v1::EventKind::Healthy {
                    continue;
                }
                let at = ev.time.map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos));
                if let Ok(mut v) = sink.lock() {
                    v.push((ev.service, "health_status: healthy".into(), at));
                }
            }
        });
        if let Ok(mut slot) = self.bus_task.lock() {
            *slot = Some(task);
        }
        Ok(())
    }

    /// Stops recording; the timeline of every service relative to `t0_ns`.
    pub fn finish(self, t0_ns: i64) -> Timeline {
        self.task.abort();
        if let Some(t) = self.bus_task.lock().ok().and_then(|mut s| s.take()) {
            t.abort();
        }
        let mut events = self.events.lock().map(|v| v.clone()).unwrap_or_default();
        // Earliest first, whichever source it came from.
        events.sort_by_key(|e| e.2);
        let mut svcs: BTreeMap<String, Times> = BTreeMap::new();
        for (service, action, at) in events {
            if at < t0_ns || service.is_empty() {
                continue;
            }
            let t = svcs.entry(service).or_default();
            let s = (at - t0_ns) as f64 / 1e9;
            match action.as_str() {
                "start" if t.start.is_none() => t.start = Some(s),
                "health_status: healthy" if t.healthy.is_none() => t.healthy = Some(s),
                a if a.starts_with("die") => t.died += 1,
                _ => {}
            }
        }
        Timeline { svcs }
    }
}

/// When one service started and became healthy, in seconds after t0.
#[derive(Clone, Copy, Debug, Default)]
pub struct Times {
    /// First container start.
    pub start: Option<f64>,
    /// First healthy health status.
    pub healthy: Option<f64>,
    /// Container deaths seen (restarts).
    pub died: u32,
}

/// Every service's times in one bring-up.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// By service.
    pub svcs: BTreeMap<String, Times>,
}

/// One line of the analysis.
#[derive(Clone, Debug)]
pub struct Row {
    /// Service.
    pub service: String,
    /// When its dependencies met their conditions (as observed), seconds.
    pub gate: f64,
    /// When it started.
    pub start: f64,
    /// When it was ready (healthy, or started without a health check).
    pub ready: f64,
    /// Its own time to healthy (ready - start).
    pub own: f64,
    /// Start delay after its gate opened: the orchestrator's reaction time
    /// (for services with no dependencies: time from t0 to start).
    pub lag: f64,
    /// Deaths.
    pub died: u32,
}

/// The bound and the rows.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// Per service.
    pub rows: Vec<Row>,
    /// Longest chain of own times-to-ready, conditions respected.
    pub bound: f64,
    /// That chain, first service first.
    pub path: Vec<String>,
    /// Last service ready, after t0 (from the engine's events).
    pub last_ready: f64,
}

impl Timeline {
    /// Analyses the timeline against the dependency graph; `None` when a
    /// service has no start (or no healthy event though it has a check).
    pub fn analyse(&self, graph: &BTreeMap<String, Svc>) -> Result<Analysis, String> {
        let mut start = BTreeMap::new();
        let mut ready = BTreeMap::new();
        for (name, svc) in graph {
            let t = self.svcs.get(name).copied().unwrap_or_default();
            let s = t.start.ok_or_else(|| format!("{name}: no start event"))?;
            let r = if svc.healthcheck {
                t.healthy.ok_or_else(|| format!("{name}: no healthy event"))?
            } else {
                s
            };
            start.insert(name.clone(), s);
            ready.insert(name.clone(), r);
        }
        // Observed gates and lags.
        let mut rows = Vec::new();
        for (name, svc) in graph {
            let gate = svc
                .deps
                .iter()
                .map(|(d, c)| match c {
                    Cond::Started => start[d],
                    Cond::Healthy | Cond::Completed => ready[d],
                })
                .fold(0.0_f64, f64::max);
            rows.push(Row {
                service: name.clone(),
                gate,
                start: start[name],
                ready: ready[name],
                own: ready[name] - start[name],
                lag: start[name] - gate,
                died: self.svcs.get(name).map_or(0, |t| t.died),
            });
        }
        rows.sort_by(|a, b| a.start.total_cmp(&b.start));
        // Ideal schedule: a service starts the moment its dependencies meet
        // their conditions (a `service_started` dependency counts as met
        // when it could start), then takes its own observed time to ready.
        let own: BTreeMap<&str, f64> = rows.iter().map(|r| (r.service.as_str(), r.own)).collect();
        // Per service: (could start, ready, the chain that gates it).
        type Memo = BTreeMap<String, (f64, f64, Vec<String>)>;
        fn ideal(
            n: &str,
            graph: &BTreeMap<String, Svc>,
            own: &BTreeMap<&str, f64>,
            memo: &mut Memo,
            depth: usize,
        ) -> (f64, f64, Vec<String>) {
            if let Some(v) = memo.get(n) {
                return v.clone();
            }
            let mut gate = (0.0, Vec::new());
            if depth < 64 {
                for (d, c) in &graph[n].deps {
                    let (ds, dr, mut chain) = ideal(d, graph, own, memo, depth + 1);
                    let (t, last) = if *c == Cond::Started {
                        (ds, format!("{d} (started)"))
                    } else {
                        (dr, format!("{d} {:.1}s", own[d.as_str()]))
                    };
                    if t > gate.0 || gate.1.is_empty() && t >= gate.0 {
                        chain.push(last);
                        gate = (t, chain);
                    }
                }
            }
            let v = (gate.0, gate.0 + own[n], gate.1);
            memo.insert(n.to_owned(), v.clone());
            v
        }
        let mut memo = Memo::new();
        let mut bound = (0.0, Vec::new());
        for name in graph.keys() {
            let (_, r, mut chain) = ideal(name, graph, &own, &mut memo, 0);
            if r > bound.0 {
                chain.push(format!("{name} {:.1}s", own[name.as_str()]));
                bound = (r, chain);
            }
        }
        let last_ready = ready.values().copied().fold(0.0, f64::max);
        Ok(Analysis {
            rows,
            bound: bound.0,
            path: bound.1,
            last_ready,
        })
    }
}
