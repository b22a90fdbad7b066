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
//! - What reaches a moved service across hosts by name follows it
//!   (`follow.rs`).

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

/// One evacuation of `host`: what the moves share.
struct Evacuating<'a> {
    host: &'a str,
    wait_healthy: bool,
    deadline: Duration,
    deployment: &'a str,
    /// What the other hosts carry, without `host`.
    others: placement::Ledger,
    /// The hosts a replica may go to (not `host`).
    hosts: Vec<placement::HostView>,
    desired: &'a [DesiredService],
}

impl Evacuating<'_> {
    /// Where `rec`'s replicas go without the host: the placement and the
    /// hosts whose count changes. A global service stays where it runs
    /// elsewhere. None when its rules no longer parse.
    fn replace(
        &self,
        rec: &ServiceRecord,
        rules_pb: &infra_proto::bus::v1::PlacementSpec,
        spec: &ServiceSpec,
    ) -> Option<(placement::Outcome, Vec<(String, u32)>)> {
        let current: BTreeMap<String, u32> = self
            .desired
            .iter()
            .filter(|d| !d.absent && d.host != self.host && d.spec.as_ref().is_some_and(|s| s.name == rec.service))
            .map(|d| (d.host.clone(), d.spec.as_ref().map_or(1, |s| s.replicas.max(1))))
            .collect();
        if rules_pb.global {
            let outcome = placement::Outcome {
                hosts: current,
                ..Default::default()
            };
            return Some((outcome, Vec::new()));
        }
        let rules = Rules::from_spec(&rec.tier, rec.replicas.max(1), rules_pb).ok()?;
        let rules = rules.reserving(placement::Reservation::of(spec));
        let usage = self.others.usage_for(&rec.tier, &rec.service, &rules_pb.group);
        let outcome = placement::place(&rules, &self.hosts, &current, &usage);
        let targets = outcome
            .hosts
            .iter()
            .filter(|(h, n)| current.get(*h).copied().unwrap_or(0) != **n)
            .map(|(h, n)| (h.clone(), *n))
            .collect();
        Some((outcome, targets))
    }
}

/// A drain's progress stream.
pub(crate) struct Progress {
    pub(crate) tx: mpsc::Sender<Result<api::DeployProgress, Error>>,
    pub(crate) deployment: String,
    pub(crate) host: String,
}

impl Progress {
    /// Sends one progress line; a client that went away is no error.
    pub(crate) async fn send(&self, phase: api::Phase, service: &str, message: String) {
        let line = api::DeployProgress {
            deployment_id: self.deployment.clone(),
            service: service.to_owned(),
            host: self.host.clone(),
            phase: phase as i32,
            message,
            time: Some(infra_proto::now()),
            ..Default::default()
        };
        if self.tx.send(Ok(line)).await.is_err() {
            tracing::debug!(host = %self.host, "drain: the client went away");
        }
    }
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

    /// Drains `req.host` (or makes it active again with `undo`): no new
    /// replicas go there, and its replicated stateless services move to
    /// other hosts, healthy there before they are taken off it.
    pub async fn drain(
        &self,
        req: api::DrainRequest,
        tx: mpsc::Sender<Result<api::DeployProgress, Error>>,
    ) -> Result<(), Error> {
        if req.host.is_empty() {
            return Err(Error::invalid("host: must name a host"));
        }
        infra_bus::Token::new("host", &req.host).map_err(|e| Error::invalid(e.to_string()))?;
        let progress = Progress {
            tx,
            deployment: nuid::next().to_string(),
            host: req.host.clone(),
        };
        if req.undo {
            return self.undrain(&progress).await;
        }
        self.mark_drained(&progress).await?;
        let deadline = if req.timeout_seconds > 0 {
            Duration::from_secs(u64::from(req.timeout_seconds))
        } else {
            Duration::from_secs(300)
        };
        let ev = self.evacuate(&req.host, true, deadline, &progress.deployment).await;
        for m in &ev.moved {
            progress.send(api::Phase::Ready, m, "moved".into()).await;
        }
        for s in &ev.stranded {
            progress
                .send(api::Phase::Blocked, s, "stateful: stays on the drained host".into())
                .await;
        }
        for p in &ev.pending {
            progress
                .send(api::Phase::Failed, p, "could not be placed elsewhere".into())
                .await;
        }
        let summary = format!(
            "moved: {}; stranded (stateful): {}; pending: {}",
            list(&ev.moved),
            list(&ev.stranded),
            list(&ev.pending)
        );
        progress.send(api::Phase::Done, "", summary).await;
        Ok(())
    }

    /// Undo of a drain: the host takes new replicas again.
    async fn undrain(&self, progress: &Progress) -> Result<(), Error> {
        let host = &progress.host;
        self.bus()
            .delete_host_state(host)
            .await
            .map_err(|e| Error::unavailable(e.to_string()))?;
        let what = format!("{host} is active again");
        self.event(EventKind::HostDrained, "", "", &progress.deployment, what)
            .await;
        let msg = format!("{host} is active again: new replicas may go there");
        progress.send(api::Phase::Done, "", msg).await;
        Ok(())
    }

    /// Records the host as drained (a host nobody knows is refused).
    pub(crate) async fn mark_drained(&self, progress: &Progress) -> Result<(), Error> {
        let host = &progress.host;
        let known = self.heartbeats().await?.iter().any(|h| &h.host == host)
            || self
                .bus()
                .list_desired(None)
                .await
                .map_err(|e| Error::unavailable(e.to_string()))?
                .iter()
                .any(|d| &d.host == host);
        if !known {
            return Err(Error::not_found(format!(
                "host: no host {host:?} heartbeats or runs anything"
            )));
        }
        let state = HostState {
            host: host.clone(),
            drained: true,
            since: Some(infra_proto::now()),
            reason: "drained on request".into(),
            ..Default::default()
        };
        self.bus()
            .put_host_state(&state)
            .await
            .map_err(|e| Error::unavailable(e.to_string()))?;
        self.event(
            EventKind::HostDrained,
            "",
            "",
            &progress.deployment,
            format!("{host} drained"),
        )
        .await;
        let msg = format!("{host} drained: no new replicas go there");
        progress.send(api::Phase::Planned, "", msg).await;
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
        let hosts = self.eligible_hosts().await.unwrap_or_default();
        let ctx = Evacuating {
            host,
            wait_healthy,
            deadline,
            deployment,
            others: placement::Ledger::from_state(&desired, &records).without_host(host),
            hosts: hosts.into_iter().filter(|h| h.name != host).collect(),
            desired: &desired,
        };
        for rec in &records {
            let Some(here) = desired
                .iter()
                .find(|d| d.host == host && !d.absent && d.spec.as_ref().is_some_and(|s| s.name == rec.service))
            else {
                continue;
            };
            self.move_off(&ctx, rec, here, &mut out).await;
        }
        out
    }

    /// Moves one service's replicas off the host (see [`Self::evacuate`]).
    async fn move_off(&self, ctx: &Evacuating<'_>, rec: &ServiceRecord, here: &DesiredService, out: &mut Evacuation) {
        let (host, deployment) = (ctx.host, ctx.deployment);
        let rules_pb = rec.rules.clone().unwrap_or_default();
        if rules_pb.stateful {
            let why = format!(
                "{} keeps its state in named volumes on {host}: reported, not moved",
                rec.service
            );
            self.event(EventKind::ServiceStranded, &rec.service, &rec.tier, deployment, why)
                .await;
            out.stranded.push(rec.service.clone());
            return;
        }
        let spec = ServiceSpec {
            replicas: 0,
            ..here
                .previous
                .clone()
                .filter(|_| here.updated == 0)
                .unwrap_or_else(|| here.spec.clone().unwrap_or_default())
        };
        let Some((outcome, targets)) = ctx.replace(rec, &rules_pb, &spec) else {
            return;
        };
        // A drain keeps what no other host can take where it is: better
        // on a drained host than nowhere.
        if ctx.wait_healthy && outcome.pending > 0 {
            out.pending.push(format!("{} stays: {}", rec.service, outcome.reason));
            return;
        }
        for (h, n) in &targets {
            let existing = ctx
                .desired
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
        if ctx.wait_healthy && !targets.is_empty() {
            let ready = self
                .wait_ready(&rec.tier, &rec.service, &targets, &spec, ctx.deadline)
                .await;
            if let Err(e) = ready {
                // Keep the host's replicas: better two than none.
                out.pending.push(format!("{} ({e})", rec.service));
                return;
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
        // Whatever reaches it across hosts by name reaches it there now.
        Box::pin(self.follow_move(&rec.service, &outcome.hosts, deployment)).await;
        self.report_move(ctx, rec, &outcome, &targets, out).await;
    }

    /// The events and the evacuation's lists for one moved service.
    async fn report_move(
        &self,
        ctx: &Evacuating<'_>,
        rec: &ServiceRecord,
        outcome: &placement::Outcome,
        targets: &[(String, u32)],
        out: &mut Evacuation,
    ) {
        if outcome.pending > 0 {
            let why = format!("{} replicas pending: {}", outcome.pending, outcome.reason);
            self.event(EventKind::ServicePending, &rec.service, &rec.tier, ctx.deployment, why)
                .await;
            out.pending.push(format!("{} ({})", rec.service, outcome.reason));
        }
        if !targets.is_empty() {
            let whereto = targets.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>().join(", ");
            let what = format!("off {}, to {whereto}", ctx.host);
            self.event(EventKind::ServiceMoved, &rec.service, &rec.tier, ctx.deployment, what)
                .await;
            out.moved.push(format!("{} -> {whereto}", rec.service));
        } else if outcome.pending == 0 {
            out.moved.push(format!("{} (already elsewhere)", rec.service));
        }
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
                let lost = HostState {
                    host: host.clone(),
                    lost: true,
                    drained: states.get(host).is_some_and(|s| s.drained),
                    since: Some(infra_proto::now()),
                    reason: reason.clone(),
                };
                self.write_or_log(&format!("state of {host}"), || self.bus().put_host_state(&lost))
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
                        let back = HostState {
                            lost: false,
                            ..st.clone()
                        };
                        self.write_or_log(&format!("state of {host}"), || self.bus().put_host_state(&back))
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
