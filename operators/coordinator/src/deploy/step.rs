//! One service's part of a deploy (or of a scale), in five steps:
//!
//! 1. **hold**: a new service that must wait has its containers created
//!    now, held, so only `start` is left when its gate opens;
//! 2. **await dependencies**: until each meets its condition, fails, or
//!    its own step ends short of it;
//! 3. **record**: the service record (wanted, placed, pending, revision);
//! 4. **dispatch**: a changed spec rolls by `update_config`, then desired
//!    state goes to every host of the placement and off the others;
//! 5. **await ready**: until every host reports it ready (completed, for a
//!    job a dependent needs completed), one fails, or the deadline passes.
//!
//! # Guarantees
//! Every wait ends: met, failed with the reason, or timed out naming what
//! it waited for. A failure fails this service only, and names the chains
//! of its dependents it blocks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use infra_compose::{DependencyCondition, Graph};
use infra_proto::bus::v1::{DesiredService, EventKind, Health, ObservedService, ServiceRecord, ServiceSpec};
use infra_proto::coordinator::v1 as api;
use tokio::sync::watch;

use super::{Board, Progress, Standing, aggregate, meets, progress_of, unmet};
use crate::coordinator::{Coordinator, ProgressTx};
use crate::plan::{Prepared, cond_name};
use crate::rollout::Reporter;

/// One service's part of a deploy (or of a scale: no dependencies, no
/// graph).
pub(crate) struct Step<'a> {
    pub(crate) name: &'a str,
    pub(crate) deps: Vec<(String, DependencyCondition)>,
    /// How long it may take to be ready once dispatched.
    pub(crate) deadline: Duration,
    /// How long it may wait for its dependencies (a backstop: the wait
    /// ends when they meet their conditions or their steps end).
    pub(crate) wait_limit: Duration,
    pub(crate) deployment: &'a str,
    pub(crate) board: Arc<watch::Sender<Board>>,
    pub(crate) graph: Option<&'a Graph>,
    pub(crate) tx: &'a ProgressTx,
    /// A dependent in this deploy needs it run to completion
    /// (`service_completed_successfully`): it is ready once it has exited
    /// 0, not while it runs.
    pub(crate) until_completed: bool,
}

/// One host's share, as dispatched: what it must report ready.
struct Target {
    host: String,
    spec: ServiceSpec,
    hash: String,
    /// The desired write it must answer (or a later one).
    generation: u64,
}

/// A step and what its messages say of the service.
struct Run<'a> {
    step: Step<'a>,
    tier: String,
    /// `h1, h2 (2)`.
    hosts: String,
}

impl Run<'_> {
    async fn report(&self, phase: api::Phase, message: String, blocks: Vec<String>) {
        let ev = api::DeployProgress {
            deployment_id: self.step.deployment.to_owned(),
            service: self.step.name.to_owned(),
            tier: self.tier.clone(),
            host: self.hosts.clone(),
            phase: phase as i32,
            message,
            time: Some(infra_proto::now()),
            blocks,
            ..Default::default()
        };
        // A caller that went away does not stop the deploy.
        let _ = self.step.tx.send(Ok(ev)).await;
    }

    /// Tells the dependents how far this service has come.
    fn set(&self, p: Progress) {
        self.step.board.send_modify(|m| {
            m.entry(self.step.name.to_owned())
                .or_insert(Standing {
                    progress: p,
                    ended: false,
                })
                .progress = p;
        });
    }

    /// The chains of dependents this service blocks.
    fn blocks(&self) -> Vec<String> {
        let name = self.step.name;
        self.step
            .graph
            .map(|g| {
                g.blocked_by(name)
                    .iter()
                    .filter_map(|b| g.blocking_chain(name, b).map(|c| c.join(" -> ")))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Coordinator {
    /// Runs one service's step: see the module docs. Returns `Waiting`
    /// when it was blocked by a dependency.
    pub(crate) async fn deploy_one(&self, step: Step<'_>, mut p: Prepared) -> Progress {
        let run = Run {
            tier: p.spec.tier.clone(),
            hosts: p.hosts_label(),
            step,
        };
        let held = self.hold(&run, &p).await;
        if let Err(blocked) = self.await_dependencies(&run, &p, held).await {
            return blocked;
        }
        let record = match self.record(&run, &p).await {
            Ok(r) => r,
            Err(e) => return self.fail(&run, e).await,
        };
        let targets = match self.dispatch(&run, &mut p, held).await {
            Ok(t) => t,
            Err(e) => return self.fail(&run, e).await,
        };
        self.await_ready(&run, &p, &targets, record.replicas).await
    }

    /// Fails the service for `message`, naming what it blocks.
    async fn fail(&self, run: &Run<'_>, message: String) -> Progress {
        let blocks = run.blocks();
        run.set(Progress::Failed);
        run.report(api::Phase::Failed, message.clone(), blocks.clone()).await;
        let why = if blocks.is_empty() {
            message
        } else {
            format!("{message}; blocks {}", blocks.join(", "))
        };
        self.event(
            EventKind::ServiceFailed,
            run.step.name,
            &run.tier,
            run.step.deployment,
            why,
        )
        .await;
        Progress::Failed
    }

    /// Step 1. A new service that must wait: its containers are created
    /// now (held, not started), so that only `start` is left when the gate
    /// opens; its start time, not its creation, is what the gate orders.
    /// Whether it was held.
    async fn hold(&self, run: &Run<'_>, p: &Prepared) -> bool {
        let held = !run.step.deps.is_empty() && !p.deployed() && !p.outcome.hosts.is_empty();
        if held {
            for (h, n) in &p.outcome.hosts {
                let desired = DesiredService {
                    spec: Some(p.spec_for(*n)),
                    host: h.clone(),
                    generation: p.on(h).map_or(0, |d| d.generation) + 1,
                    deployment_id: run.step.deployment.to_owned(),
                    hold: true,
                    ..Default::default()
                };
                // Only an optimisation: the dispatch creates what is missing.
                if let Err(e) = self.bus.put_desired(&desired).await {
                    tracing::warn!(service = run.step.name, host = %h, error = %e, "could not pre-create; will create at dispatch");
                }
            }
        }
        held
    }

    /// Step 2. Waits for every dependency to meet its condition. `Err`
    /// (with what to return) when one never will: it failed, completed
    /// without ever being healthy, its step ended short of the condition,
    /// or the wait limit passed. A held service is then taken off again.
    async fn await_dependencies(&self, run: &Run<'_>, p: &Prepared, held: bool) -> Result<(), Progress> {
        let Step {
            name, deps, wait_limit, ..
        } = &run.step;
        let (name, wait_limit) = (*name, *wait_limit);
        if deps.is_empty() {
            return Ok(());
        }
        run.report(
            api::Phase::Waiting,
            deps.iter()
                .map(|(d, c)| format!("{d} ({})", cond_name(*c)))
                .collect::<Vec<_>>()
                .join(", "),
            vec![],
        )
        .await;
        let mut board = run.step.board.subscribe();
        let since = Instant::now();
        loop {
            let st = board.borrow_and_update().clone();
            let left = wait_limit.saturating_sub(since.elapsed());
            if let Some((d, why)) = unmet(name, deps, &st, left, wait_limit) {
                let chain = run
                    .step
                    .graph
                    .and_then(|g| g.blocking_chain(d, name))
                    .map(|c| c.join(" -> "))
                    .unwrap_or_else(|| format!("{d} -> {name}"));
                run.set(Progress::Failed);
                run.report(
                    api::Phase::Blocked,
                    format!("blocked: dependency {d} {why} ({chain})"),
                    vec![],
                )
                .await;
                self.event(
                    EventKind::ServiceBlocked,
                    name,
                    &run.tier,
                    run.step.deployment,
                    format!("dependency {d} {why}: {chain}"),
                )
                .await;
                // Nothing stays behind for a service that never started.
                if held {
                    for h in p.outcome.hosts.keys() {
                        self.write_or_log(&format!("held {name} taken off {h}"), || {
                            self.bus.delete_desired(h, &run.tier, name)
                        })
                        .await;
                    }
                }
                return Err(Progress::Waiting);
            }
            if deps
                .iter()
                .all(|(d, c)| st.get(d).is_some_and(|s| meets(s.progress, *c)))
            {
                return Ok(());
            }
            // A closed board (the deploy is gone) ends the wait too.
            if let Ok(Err(_)) = tokio::time::timeout(left, board.changed()).await {
                return Err(Progress::Waiting);
            }
        }
    }

    /// Step 3. The service-level record: what is wanted, where, what is
    /// pending, which revision runs. A changed spec becomes a new revision
    /// only once its rollout is done. `Err` when it cannot be written, or
    /// when no host can take any replica.
    async fn record(&self, run: &Run<'_>, p: &Prepared) -> Result<ServiceRecord, String> {
        let (name, tier, deployment) = (run.step.name, run.tier.as_str(), run.step.deployment);
        let before = self.bus.get_record(tier, name).await.ok().flatten().unwrap_or_default();
        let running_spec = p
            .existing
            .iter()
            .filter(|d| !d.absent && !d.hold)
            .find_map(|d| d.spec.clone());
        let changed = running_spec
            .as_ref()
            .is_some_and(|o| infra_proto::spec::spec_hash(o) != infra_proto::spec::spec_hash(&p.spec));
        let replicas = if p.rules.global {
            p.outcome.placed()
        } else {
            p.spec.replicas.max(1)
        };
        let mut record = ServiceRecord {
            service: name.to_owned(),
            tier: tier.to_owned(),
            replicas,
            rules: Some(p.rules.clone()),
            placement: p.outcome.hosts.clone().into_iter().collect(),
            pending_replicas: p.outcome.pending,
            pending_reason: p.outcome.reason.clone(),
            deployment_id: deployment.to_owned(),
            updated_at: Some(infra_proto::now()),
            spec: Some(p.spec.clone()),
            revision: before.revision.max(1),
            previous_spec: before.previous_spec.clone(),
            update: Some(p.update.clone()),
            rollback: Some(p.back.clone()),
            rollout: before.rollout.clone(),
        };
        if changed && let Some(old) = before.spec.clone().or(running_spec.clone()) {
            let mut old = old;
            old.replicas = replicas;
            record.spec = Some(old);
        }
        self.write(&format!("record of {name}"), || self.bus.put_record(&record))
            .await
            .map_err(|e| format!("could not write the service record: {e}"))?;
        if p.outcome.pending > 0 {
            self.event(
                EventKind::ServicePending,
                name,
                tier,
                deployment,
                format!(
                    "{} replica{} pending: {}",
                    p.outcome.pending,
                    if p.outcome.pending == 1 { "" } else { "s" },
                    p.outcome.reason
                ),
            )
            .await;
        }
        if p.outcome.hosts.is_empty() {
            return Err(format!("pending: {}", p.outcome.reason));
        }
        Ok(record)
    }

    /// Step 4. A changed spec on what runs rolls over it as
    /// `update_config` says; then desired state goes to every host whose
    /// share is not already what is wanted, and off the hosts the service
    /// no longer has (volumes are kept). The hosts' shares to wait for.
    async fn dispatch(&self, run: &Run<'_>, p: &mut Prepared, held: bool) -> Result<Vec<Target>, String> {
        let (name, tier, deployment) = (run.step.name, run.tier.as_str(), run.step.deployment);
        if !held {
            let r = Reporter {
                name,
                tier,
                deployment,
                tx: run.step.tx,
            };
            if self
                .roll_if_changed(&r, &p.existing, &p.spec, &p.update, &p.back, run.step.deadline)
                .await?
            {
                p.existing = self
                    .bus
                    .list_desired(None)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|d| d.spec.as_ref().is_some_and(|s| s.name == name))
                    .collect();
            }
        }
        let mut all_unchanged = true;
        let mut targets = Vec::new();
        for (h, n) in &p.outcome.hosts {
            let spec = p.spec_for(*n);
            let hash = infra_proto::spec::spec_hash(&spec);
            // A service still held by an interrupted deploy is not
            // unchanged: it must be released.
            let existing = p.on(h);
            let unchanged = existing.is_some_and(|d| {
                !d.absent
                    && !d.hold
                    && d.previous.is_none()
                    && d.spec
                        .as_ref()
                        .is_some_and(|s| infra_proto::spec::same_desired(s, &spec) && s.replicas.max(1) == *n)
            });
            let mut generation = existing.map_or(0, |d| d.generation);
            if !unchanged {
                all_unchanged = false;
                generation += if held { 2 } else { 1 };
                let desired = DesiredService {
                    spec: Some(spec.clone()),
                    host: h.clone(),
                    generation,
                    deployment_id: deployment.to_owned(),
                    ..Default::default()
                };
                self.write(&format!("desired state of {name} on {h}"), || {
                    self.bus.put_desired(&desired)
                })
                .await
                .map_err(|e| format!("could not write desired state on {h}: {e}"))?;
            }
            targets.push(Target {
                host: h.clone(),
                spec,
                hash,
                generation,
            });
        }
        for d in p
            .existing
            .iter()
            .filter(|d| !d.absent && !p.outcome.hosts.contains_key(&d.host))
        {
            all_unchanged = false;
            let mut gone = d.clone();
            gone.absent = true;
            gone.remove_volumes = false;
            gone.generation += 1;
            gone.deployment_id = deployment.to_owned();
            self.write(&format!("{name} taken off {}", d.host), || self.bus.put_desired(&gone))
                .await
                .map_err(|e| format!("could not take it off {}: {e}", d.host))?;
        }
        run.report(
            api::Phase::Dispatched,
            if all_unchanged {
                "unchanged".into()
            } else {
                format!("to {}", run.hosts)
            },
            vec![],
        )
        .await;
        self.event(
            EventKind::ServiceDispatched,
            name,
            tier,
            deployment,
            format!("hosts {}", run.hosts),
        )
        .await;
        Ok(targets)
    }

    /// Step 5. Waits until every host has it ready (or one failed, or the
    /// deadline passed). A one-shot job that a dependent needs completed is
    /// ready once it has exited 0, not while it runs.
    async fn await_ready(&self, run: &Run<'_>, p: &Prepared, targets: &[Target], wanted: u32) -> Progress {
        let (name, tier, deadline, until_completed) = (
            run.step.name,
            run.tier.as_str(),
            run.step.deadline,
            run.step.until_completed,
        );
        let done = |p: Progress| {
            if until_completed {
                p == Progress::Completed
            } else {
                matches!(p, Progress::Healthy | Progress::Completed)
            }
        };
        let start = Instant::now();
        let mut changes = self.cache.subscribe();
        let mut last = Progress::Waiting;
        loop {
            let mut each = Vec::with_capacity(targets.len());
            let mut laggard: Option<(&str, Option<ObservedService>)> = None;
            for t in targets {
                let obs = self.cache.get(&t.host, tier, name).await;
                let now = obs
                    .as_ref()
                    .map_or(Progress::Waiting, |o| progress_of(o, &t.spec, &t.hash, t.generation));
                if now == Progress::Failed {
                    let o = obs.unwrap_or_default();
                    let why = if o.message.is_empty() {
                        "failed".to_string()
                    } else {
                        o.message.clone()
                    };
                    let msg = if targets.len() > 1 {
                        format!("{}: {why}", t.host)
                    } else {
                        why
                    };
                    return self.fail(run, msg).await;
                }
                if laggard.is_none() && !done(now) {
                    laggard = Some((&t.host, obs));
                }
                each.push(now);
            }
            let now = aggregate(&each);
            if now != last {
                run.set(now);
                last = now;
            }
            if done(now) {
                let health = self
                    .cache
                    .get(&targets[0].host, tier, name)
                    .await
                    .map_or(Health::Healthy, |o| o.health());
                let mut msg = format!("{health:?}").to_lowercase();
                if p.outcome.pending > 0 {
                    msg.push_str(&format!(
                        "; {} of {wanted} replicas placed, {} pending: {}",
                        p.outcome.placed(),
                        p.outcome.pending,
                        p.outcome.reason
                    ));
                }
                run.report(api::Phase::Ready, msg, vec![]).await;
                self.event(EventKind::ServiceReady, name, tier, run.step.deployment, String::new())
                    .await;
                return now;
            }
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                let (h, obs) = laggard.unwrap_or(("", None));
                let seen = obs.map_or_else(
                    || format!("no report from the {tier} operator on {h}"),
                    |o| {
                        format!(
                            "{}{:?}, {} of {} replicas healthy{}",
                            if targets.len() > 1 {
                                format!("{h}: ")
                            } else {
                                String::new()
                            },
                            o.health(),
                            o.healthy_replicas,
                            o.desired_replicas,
                            if o.message.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", o.message)
                            }
                        )
                    },
                );
                let what = if until_completed { "not completed" } else { "not ready" };
                return self
                    .fail(run, format!("{what} after {}s ({seen})", deadline.as_secs()))
                    .await;
            }
            // Woken by any observed change; looked at every second anyway.
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), changes.changed()).await;
        }
    }
}
