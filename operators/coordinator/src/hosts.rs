//! Hosts as the coordinator sees them beyond their heartbeats: drained by
//! a person, or lost because no operator of theirs heartbeats any more.
//!
//! # Guarantees
//!
//! - A drain starts a drained host's replicated stateless replicas on other
//!   hosts that satisfy their constraints, waits until they are healthy
//!   there, and only then takes them off the drained host (start-first).
//! - A lost host's replicated stateless replicas start on other hosts at
//!   once; the lost host's desired state for them is marked absent, so when
//!   it comes back its operators remove them and nothing runs twice.
//! - Stateful services (named volumes) pinned to a drained or lost host are
//!   reported (`service_stranded`), never moved: their data is there.
//! - Only the leading coordinator declares hosts lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::error::Error;
use infra_proto::bus::v1::{DesiredService, EventKind, Health, HostState, ServiceRecord, ServiceSpec};
use infra_proto::coordinator::v1 as api;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::coordinator::Coordinator;
use crate::placement::{self, Rules};

/// What an evacuation did.
#[derive(Debug, Default)]
pub struct Evacuation {
    /// Services whose replicas now run elsewhere (with where).
    pub moved: Vec<String>,
    /// Stateful services left on the host, with why.
    pub stranded: Vec<String>,
    /// Services that could not be (fully) placed elsewhere, with why.
    pub pending: Vec<String>,
}

fn with_replicas(spec: &ServiceSpec, n: u32) -> ServiceSpec {
    let mut s = spec.clone();
    s.replicas = n;
    s
}

impl Coordinator {
    /// Host states by host.
    pub(crate) async fn host_states(&self) -> HashMap<String, HostState> {
        self.bus()
            .list_host_states()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|h| (h.host.clone(), h))
            .collect()
    }

    /// The hosts placement may use now: heard from, not drained.
    pub(crate) async fn eligible_hosts(&self) -> Result<Vec<placement::HostView>, Error> {
        let states = self.host_states().await;
        let mut hosts = placement::hosts_from(&self.heartbeats().await?);
        hosts.retain(|h| !states.get(&h.name).is_some_and(|s| s.drained || s.lost));
        Ok(hosts)
    }

    /// Drains a host (or makes it active again), streaming progress.
    pub async fn drain(
        &self,
        req: api::DrainRequest,
        tx: mpsc::Sender<Result<api::DeployProgress, Error>>,
    ) -> Result<(), Error> {
        if req.host.is_empty() {
            return Err(Error::invalid("host: must name a host"));
        }
        infra_bus::Token::new("host", &req.host).map_err(|e| Error::invalid(e.to_string()))?;
        let deployment = nuid::next().to_string();
        let send = |phase: api::Phase, service: String, message: String| {
            let tx = tx.clone();
            let deployment = deployment.clone();
            let host = req.host.clone();
            async move {
                let _ = tx
                    .send(Ok(api::DeployProgress {
                        deployment_id: deployment,
                        service,
                        host,
                        phase: phase as i32,
                        message,
                        time: Some(infra_proto::now()),
                        ..Default::default()
                    }))
                    .await;
            }
        };
        if req.undo {
            self.bus()
                .delete_host_state(&req.host)
                .await
                .map_err(|e| Error::unavailable(e.to_string()))?;
            self.event(
                EventKind::HostDrained,
                "",
                "",
                &deployment,
                format!("{} is active again", req.host),
            )
            .await;
            send(
                api::Phase::Done,
                String::new(),
                format!("{} is active again: new replicas may go there", req.host),
            )
            .await;
            return Ok(());
        }
        let known = self.heartbeats().await?.iter().any(|h| h.host == req.host)
            || self
                .bus()
                .list_desired(None)
                .await
                .map_err(|e| Error::unavailable(e.to_string()))?
                .iter()
                .any(|d| d.host == req.host);
        if !known {
            return Err(Error::not_found(format!(
                "host: no host {:?} heartbeats or runs anything",
                req.host
            )));
        }
        self.bus()
            .put_host_state(&HostState {
                host: req.host.clone(),
                drained: true,
                since: Some(infra_proto::now()),
                reason: "drained on request".into(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::unavailable(e.to_string()))?;
        self.event(
            EventKind::HostDrained,
            "",
            "",
            &deployment,
            format!("{} drained", req.host),
        )
        .await;
        send(
            api::Phase::Planned,
            String::new(),
            format!("{} drained: no new replicas go there", req.host),
        )
        .await;
        let deadline = if req.timeout_seconds > 0 {
            Duration::from_secs(u64::from(req.timeout_seconds))
        } else {
            Duration::from_secs(300)
        };
        let ev = self.evacuate(&req.host, true, deadline, &deployment).await;
        for m in &ev.moved {
            send(api::Phase::Ready, m.clone(), "moved".into()).await;
        }
        for s in &ev.stranded {
            send(
                api::Phase::Blocked,
                s.clone(),
                "stateful: stays on the drained host".into(),
            )
            .await;
        }
        for p in &ev.pending {
            send(api::Phase::Failed, p.clone(), "could not be placed elsewhere".into()).await;
        }
        send(
            api::Phase::Done,
            String::new(),
            format!(
                "moved: {}; stranded (stateful): {}; pending: {}",
                list(&ev.moved),
                list(&ev.stranded),
                list(&ev.pending)
            ),
        )
        .await;
        Ok(())
    }

    /// Moves every replicated stateless service off `host`. With
    /// `wait_healthy` (a drain) the new replicas must be healthy before the
    /// host's are taken off; without (a lost host) they are taken off at
    /// once.
    pub(crate) async fn evacuate(
        &self,
        host: &str,
        wait_healthy: bool,
        deadline: Duration,
        deployment: &str,
    ) -> Evacuation {
        let mut out = Evacuation::default();
        let Ok(records) = self.bus().list_records().await else {
            return out;
        };
        let Ok(desired) = self.bus().list_desired(None).await else {
            return out;
        };
        let others = placement::Ledger::from_state(&desired, &records).without_host(host);
        let hosts = self.eligible_hosts().await.unwrap_or_default();
        let hosts: Vec<_> = hosts.into_iter().filter(|h| h.name != host).collect();
        for rec in records {
            let Some(here) = desired
                .iter()
                .find(|d| d.host == host && !d.absent && d.spec.as_ref().is_some_and(|s| s.name == rec.service))
            else {
                continue;
            };
            let rules_pb = rec.rules.clone().unwrap_or_default();
            if rules_pb.stateful {
                let why = format!(
                    "{} keeps its state in named volumes on {host}: reported, not moved",
                    rec.service
                );
                self.event(EventKind::ServiceStranded, &rec.service, &rec.tier, deployment, why)
                    .await;
                out.stranded.push(rec.service.clone());
                continue;
            }
            let spec = here.spec.clone().unwrap_or_default();
            let spec = ServiceSpec {
                replicas: 0,
                ..here.previous.clone().filter(|_| here.updated == 0).unwrap_or(spec)
            };
            let current: BTreeMap<String, u32> = desired
                .iter()
                .filter(|d| !d.absent && d.host != host && d.spec.as_ref().is_some_and(|s| s.name == rec.service))
                .map(|d| (d.host.clone(), d.spec.as_ref().map_or(1, |s| s.replicas.max(1))))
                .collect();
            let mut targets: Vec<(String, u32)> = Vec::new();
            let mut outcome = placement::Outcome {
                hosts: current.clone(),
                ..Default::default()
            };
            if !rules_pb.global {
                let Ok(rules) = Rules::from_spec(&rec.tier, rec.replicas.max(1), &rules_pb) else {
                    continue;
                };
                let rules = rules.reserving(placement::Reservation::of(&spec));
                outcome = placement::place(&rules, &hosts, &current, &others.usage_for(&rec.tier, &rec.service));
                for (h, n) in &outcome.hosts {
                    if current.get(h).copied().unwrap_or(0) != *n {
                        targets.push((h.clone(), *n));
                    }
                }
            }
            // A drain keeps what no other host can take where it is: better
            // on a drained host than nowhere.
            if wait_healthy && outcome.pending > 0 {
                out.pending.push(format!("{} stays: {}", rec.service, outcome.reason));
                continue;
            }
            for (h, n) in &targets {
                let existing = desired
                    .iter()
                    .find(|d| d.host == *h && d.spec.as_ref().is_some_and(|s| s.name == rec.service));
                let d = DesiredService {
                    spec: Some(with_replicas(&spec, *n)),
                    host: h.clone(),
                    generation: existing.map_or(0, |d| d.generation) + 1,
                    deployment_id: deployment.to_owned(),
                    ..Default::default()
                };
                self.write_or_log(&format!("desired state of {} on {h}", rec.service), || {
                    self.bus().put_desired(&d)
                })
                .await;
            }
            if wait_healthy && !targets.is_empty() {
                let ready = self
                    .wait_ready(&rec.tier, &rec.service, &targets, &spec, deadline)
                    .await;
                if let Err(e) = ready {
                    // Keep the host's replicas: better two than none.
                    out.pending.push(format!("{} ({e})", rec.service));
                    continue;
                }
            }
            let mut gone = here.clone();
            gone.absent = true;
            gone.remove_volumes = false;
            gone.generation += 1;
            gone.deployment_id = deployment.to_owned();
            self.write_or_log(&format!("{} taken off {host}", rec.service), || {
                self.bus().put_desired(&gone)
            })
            .await;
            let placed = ServiceRecord {
                placement: outcome.hosts.clone().into_iter().collect(),
                pending_replicas: outcome.pending,
                pending_reason: outcome.reason.clone(),
                updated_at: Some(infra_proto::now()),
                ..rec.clone()
            };
            self.write_or_log(&format!("record of {}", rec.service), || self.bus().put_record(&placed))
                .await;
            let whereto = targets.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>().join(", ");
            if outcome.pending > 0 {
                self.event(
                    EventKind::ServicePending,
                    &rec.service,
                    &rec.tier,
                    deployment,
                    format!("{} replicas pending: {}", outcome.pending, outcome.reason),
                )
                .await;
                out.pending.push(format!("{} ({})", rec.service, outcome.reason));
            }
            if !targets.is_empty() {
                self.event(
                    EventKind::ServiceMoved,
                    &rec.service,
                    &rec.tier,
                    deployment,
                    format!("off {host}, to {whereto}"),
                )
                .await;
                out.moved.push(format!("{} -> {whereto}", rec.service));
            } else if outcome.pending == 0 {
                out.moved.push(format!("{} (already elsewhere)", rec.service));
            }
        }
        out
    }

    /// Waits until every `(host, replicas)` target runs `spec` healthy.
    async fn wait_ready(
        &self,
        tier: &str,
        name: &str,
        targets: &[(String, u32)],
        spec: &ServiceSpec,
        deadline: Duration,
    ) -> Result<(), String> {
        let hash = infra_proto::spec::spec_hash(spec);
        let start = Instant::now();
        let mut changes = self.cache().subscribe();
        loop {
            let mut missing = Vec::new();
            for (h, n) in targets {
                let ok = self.cache().get(h, tier, name).await.is_some_and(|o| {
                    o.spec_hash == hash
                        && o.containers.iter().filter(|c| c.spec_hash == hash).count() as u32 >= *n
                        && matches!(o.health(), Health::Healthy | Health::Running | Health::Completed)
                });
                if !ok {
                    missing.push(h.clone());
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= deadline {
                return Err(format!(
                    "not healthy on {} within {}s",
                    missing.join(", "),
                    deadline.as_secs()
                ));
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
        }
    }

    /// Watches heartbeats until `shutdown`: a host that ran something and
    /// whose operators all went silent for the loss time is declared lost
    /// and evacuated; a lost host heard from again is active again. Only
    /// the leader acts.
    pub async fn watch_hosts(self, shutdown: CancellationToken) {
        let mut missing_since: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.is_leader() {
                missing_since.clear();
                continue;
            }
            let (Ok(hb), Ok(desired)) = (self.heartbeats().await, self.bus().list_desired(None).await) else {
                continue;
            };
            let alive: BTreeSet<String> = hb.iter().map(|h| h.host.clone()).collect();
            let states = self.host_states().await;
            let running: BTreeSet<String> = desired.iter().filter(|d| !d.absent).map(|d| d.host.clone()).collect();
            for host in running.iter().filter(|h| !alive.contains(*h)) {
                if states.get(host).is_some_and(|s| s.lost) {
                    continue;
                }
                let since = *missing_since.entry(host.clone()).or_insert_with(Instant::now);
                if since.elapsed() < self.settings().host_lost_after {
                    continue;
                }
                let deployment = nuid::next().to_string();
                let reason = format!(
                    "no heartbeat for {}s",
                    since.elapsed().as_secs() + self.settings().heartbeat_grace().as_secs()
                );
                let _ = self
                    .bus()
                    .put_host_state(&HostState {
                        host: host.clone(),
                        lost: true,
                        drained: states.get(host).is_some_and(|s| s.drained),
                        since: Some(infra_proto::now()),
                        reason: reason.clone(),
                    })
                    .await;
                self.event(EventKind::HostLost, "", "", &deployment, format!("{host}: {reason}"))
                    .await;
                tracing::warn!(host, %reason, "host lost; moving its stateless replicas");
                let ev = self.evacuate(host, false, Duration::ZERO, &deployment).await;
                tracing::info!(host, moved = ?ev.moved, stranded = ?ev.stranded, pending = ?ev.pending, "evacuated");
            }
            missing_since.retain(|h, _| !alive.contains(h));
            for (host, st) in &states {
                if st.lost && alive.contains(host) {
                    if st.drained {
                        let _ = self
                            .bus()
                            .put_host_state(&HostState {
                                lost: false,
                                ..st.clone()
                            })
                            .await;
                    } else {
                        self.write_or_log(&format!("state of {host}"), || self.bus().delete_host_state(host))
                            .await;
                    }
                    self.event(EventKind::HostReturned, "", "", "", format!("{host} heartbeats again"))
                        .await;
                    tracing::info!(host, "host is back");
                }
            }
        }
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() { "none".into() } else { v.join(", ") }
}
