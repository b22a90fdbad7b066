//! Deploy: every service of a selection brought up as soon as its
//! dependencies meet their conditions, each in steps: hold, await
//! dependencies, record, dispatch, await ready.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use infra_compose::{DependencyCondition, Graph};
use infra_proto::bus::v1::{DesiredService, EventKind, Health, ObservedService, ServiceRecord, ServiceSpec};
use infra_proto::coordinator::v1 as api;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::coordinator::*;
use crate::plan::{Prepared, cond_name};
use crate::rollout::Reporter;

/// The progress of a service over all its hosts: the least advanced one.
pub(crate) fn aggregate(each: &[Progress]) -> Progress {
    if each.is_empty() {
        return Progress::Waiting;
    }
    if each.contains(&Progress::Failed) {
        return Progress::Failed;
    }
    if each.iter().all(|p| *p == Progress::Completed) {
        return Progress::Completed;
    }
    if each.contains(&Progress::Waiting) {
        return Progress::Waiting;
    }
    if each.contains(&Progress::Started) {
        return Progress::Started;
    }
    Progress::Healthy
}

/// Where a service stands during a deploy, as its dependents see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    Waiting,
    Started,
    Healthy,
    Completed,
    Failed,
}

impl Progress {
    fn word(self) -> &'static str {
        match self {
            Progress::Waiting => "not started",
            Progress::Started => "started but not healthy",
            Progress::Healthy => "running (healthy)",
            Progress::Completed => "completed",
            Progress::Failed => "failed",
        }
    }
}

/// What the services of one deploy know of each other: how far each has
/// come, and whether its own step has ended (so a dependent never waits
/// for a condition that can no longer be met).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Standing {
    pub(crate) progress: Progress,
    pub(crate) ended: bool,
}

pub(crate) type Board = HashMap<String, Standing>;

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
    pub(crate) tx: &'a mpsc::Sender<Result<api::DeployProgress, Error>>,
    /// A dependent in this deploy needs it run to completion
    /// (`service_completed_successfully`): it is ready once it has exited
    /// 0, not while it runs.
    pub(crate) until_completed: bool,
}

/// Marks a service's step ended when dropped, whether it returned or
/// panicked: its dependents stop waiting for it either way.
pub(crate) struct EndOnDrop {
    pub(crate) name: String,
    pub(crate) board: Arc<watch::Sender<Board>>,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.board.send_modify(|m| {
            m.entry(self.name.clone())
                .or_insert(Standing {
                    progress: Progress::Failed,
                    ended: true,
                })
                .ended = true;
        });
    }
}

/// Where one host's share stands. A report counts only once it is about
/// the desired write it answers (`generation`): an operator still busy
/// with an older write must not make a newer one look done.
pub(crate) fn progress_of(o: &ObservedService, spec: &ServiceSpec, hash: &str, generation: u64) -> Progress {
    let want = spec.replicas.max(1);
    let current: Vec<_> = o.containers.iter().filter(|c| c.spec_hash == hash).collect();
    if o.generation < generation {
        return Progress::Waiting;
    }
    if o.health() == Health::Failed {
        return Progress::Failed;
    }
    if o.spec_hash != hash || (current.len() as u32) < want || current.len() != o.containers.len() {
        return Progress::Waiting;
    }
    match o.health() {
        Health::Healthy | Health::Running => Progress::Healthy,
        Health::Completed => Progress::Completed,
        _ if o.running_replicas >= 1 => Progress::Started,
        _ => Progress::Waiting,
    }
}

pub(crate) fn meets(p: Progress, cond: DependencyCondition) -> bool {
    match cond {
        DependencyCondition::ServiceStarted => matches!(p, Progress::Started | Progress::Healthy | Progress::Completed),
        DependencyCondition::ServiceHealthy => p == Progress::Healthy,
        DependencyCondition::ServiceCompletedSuccessfully => p == Progress::Completed,
    }
}

impl Coordinator {
    /// Brings the selection up in dependency order, streaming progress to
    /// `tx`. Every check happens before the first write; afterwards a
    /// failing service blocks only what depends on it.
    pub async fn deploy(
        &self,
        req: api::DeployRequest,
        tx: mpsc::Sender<Result<api::DeployProgress, Error>>,
    ) -> Result<(), Error> {
        self.deploy_as(nuid::next().to_string(), req, tx).await
    }

    /// [`Coordinator::deploy`] under the id `deployment` (its record's, so
    /// its events and its record name the same deploy).
    #[tracing::instrument(name = "deploy", skip_all, fields(deployment = tracing::field::Empty, services = tracing::field::Empty))]
    pub async fn deploy_as(
        &self,
        deployment: String,
        req: api::DeployRequest,
        tx: mpsc::Sender<Result<api::DeployProgress, Error>>,
    ) -> Result<(), Error> {
        let catalog = self.load().await?;
        let (_, graph) = self.resolve(&catalog, req.selection.as_ref())?;
        let (prepared, secrets) = self.prepare(&catalog, &graph).await?;
        let deadline = if req.timeout_seconds > 0 {
            Duration::from_secs(u64::from(req.timeout_seconds))
        } else {
            self.settings.deploy_timeout
        };
        tracing::Span::current()
            .record("deployment", deployment.as_str())
            .record("services", prepared.len());
        for s in secrets {
            self.bus.put_secret(&s.key, s.content).await.map_err(unavailable)?;
        }
        self.event(
            EventKind::DeployStarted,
            "",
            "",
            &deployment,
            format!("{} services", prepared.len()),
        )
        .await;

        let board = Arc::new(watch::channel(Board::new()).0);
        let graph = Arc::new(graph);
        let send = |p: api::DeployProgress| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Ok(p)).await;
            }
        };
        for (name, p) in &prepared {
            send(api::DeployProgress {
                deployment_id: deployment.clone(),
                service: name.clone(),
                tier: p.spec.tier.clone(),
                host: p.hosts_label(),
                phase: api::Phase::Planned as i32,
                time: Some(infra_proto::now()),
                ..Default::default()
            })
            .await;
        }
        // A dependency wait ends when the dependency's own step ends; the
        // limit is only a backstop against a step that never does: every
        // level of the graph may take its whole deadline.
        let wait_limit = deadline.saturating_mul(graph.levels().len().max(1) as u32);
        let mut tasks = tokio::task::JoinSet::new();
        for (name, p) in prepared {
            let me = self.clone();
            let deps: Vec<(String, DependencyCondition)> = catalog.services[&name]
                .depends_on
                .iter()
                .filter(|d| graph.contains(&d.service))
                .map(|d| (d.service.clone(), d.condition))
                .collect();
            let until_completed = catalog.services.values().any(|s| {
                graph.contains(&s.name)
                    && s.depends_on
                        .iter()
                        .any(|d| d.service == name && d.condition == DependencyCondition::ServiceCompletedSuccessfully)
            });
            let (board, graph, tx, deployment) = (board.clone(), graph.clone(), tx.clone(), deployment.clone());
            let span = tracing::info_span!("service", service = %name, tier = %p.spec.tier);
            tasks.spawn(
                async move {
                    let _end = EndOnDrop {
                        name: name.clone(),
                        board: board.clone(),
                    };
                    let step = Step {
                        name: &name,
                        deps,
                        deadline,
                        wait_limit,
                        deployment: &deployment,
                        board,
                        graph: Some(&graph),
                        tx: &tx,
                        until_completed,
                    };
                    let outcome = me.deploy_one(step, p).await;
                    (name, outcome)
                }
                .instrument(span),
            );
        }
        let (mut ready, mut failed, mut blocked) = (0u32, 0u32, 0u32);
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok((_, Progress::Failed)) => failed += 1,
                Ok((_, Progress::Waiting)) => blocked += 1,
                Ok(_) => ready += 1,
                Err(e) => {
                    tracing::error!(error = %e, "deploy task panicked");
                    failed += 1;
                }
            }
        }
        let msg = format!("{ready} ready, {failed} failed, {blocked} blocked");
        self.event(EventKind::DeployFinished, "", "", &deployment, msg.clone())
            .await;
        send(api::DeployProgress {
            deployment_id: deployment,
            phase: api::Phase::Done as i32,
            message: msg,
            time: Some(infra_proto::now()),
            ready,
            failed,
            blocked,
            ..Default::default()
        })
        .await;
        Ok(())
    }

    /// One service of a deploy (or of a scale, with no dependencies and
    /// no graph): wait for its dependencies, dispatch to every host its
    /// placement names, remove it from hosts it no longer has, wait until
    /// every host reports it ready. Returns `Waiting` when it was blocked.
    ///
    /// # Guarantees
    /// Every wait ends: a dependency wait when the dependency meets its
    /// condition, fails, or its step ends without meeting it (with the
    /// reason), else at `step.wait_limit`; the ready wait when the service
    /// is ready, fails, or `step.deadline` passes (naming what it waited
    /// for).
    pub(crate) async fn deploy_one(&self, step: Step<'_>, mut p: Prepared) -> Progress {
        let Step {
            name,
            deps,
            deadline,
            wait_limit,
            deployment,
            board,
            graph,
            tx,
            until_completed,
        } = step;
        let mut board_rx = board.subscribe();
        let tier_owned = p.spec.tier.clone();
        let tier: &str = &tier_owned;
        let hosts = p.hosts_label();
        let report = |phase: api::Phase, message: String, blocks: Vec<String>| {
            let ev = api::DeployProgress {
                deployment_id: deployment.to_owned(),
                service: name.to_owned(),
                tier: tier.to_owned(),
                host: hosts.clone(),
                phase: phase as i32,
                message,
                time: Some(infra_proto::now()),
                blocks,
                ..Default::default()
            };
            let tx = tx.clone();
            async move {
                let _ = tx.send(Ok(ev)).await;
            }
        };
        let set = |p: Progress| {
            board.send_modify(|m| {
                m.entry(name.to_owned())
                    .or_insert(Standing {
                        progress: p,
                        ended: false,
                    })
                    .progress = p;
            })
        };

        // A new service that must wait: have its containers created now
        // (held, not started), so that only `start` is left when the gate
        // opens. Its start time, not its creation, is what the gate orders.
        let held = !deps.is_empty() && !p.deployed() && !p.outcome.hosts.is_empty();
        if held {
            for (h, n) in &p.outcome.hosts {
                let desired = DesiredService {
                    spec: Some(p.spec_for(*n)),
                    host: h.clone(),
                    generation: p.on(h).map_or(0, |d| d.generation) + 1,
                    deployment_id: deployment.to_owned(),
                    hold: true,
                    ..Default::default()
                };
                if let Err(e) = self.bus.put_desired(&desired).await {
                    tracing::warn!(service = name, host = %h, error = %e, "could not pre-create; will create at dispatch");
                }
            }
        }

        // Wait for every dependency to meet its condition, or to fail.
        if !deps.is_empty() {
            report(
                api::Phase::Waiting,
                deps.iter()
                    .map(|(d, c)| format!("{d} ({})", cond_name(*c)))
                    .collect::<Vec<_>>()
                    .join(", "),
                vec![],
            )
            .await;
        }
        let waiting_since = Instant::now();
        loop {
            let st = board_rx.borrow_and_update().clone();
            // A failed dependency, one that finished without ever being
            // healthy, or one whose step ended short of the condition will
            // never meet it.
            let unmet = deps.iter().find_map(|(d, c)| {
                let s = st.get(d)?;
                if s.progress == Progress::Failed {
                    return Some((d, "failed".to_owned()));
                }
                if s.progress == Progress::Completed && *c == DependencyCondition::ServiceHealthy {
                    return Some((d, "completed without ever being healthy".to_owned()));
                }
                (s.ended && !meets(s.progress, *c)).then(|| {
                    (
                        d,
                        format!("ended {} but {name} needs it {}", s.progress.word(), cond_name(*c)),
                    )
                })
            });
            let left = wait_limit.saturating_sub(waiting_since.elapsed());
            let unmet = unmet.or_else(|| {
                if !left.is_zero() {
                    return None;
                }
                deps.iter()
                    .find(|(d, c)| !st.get(d).is_some_and(|s| meets(s.progress, *c)))
                    .map(|(d, c)| {
                        let seen = st.get(d).map_or("not started", |s| s.progress.word());
                        (
                            d,
                            format!(
                                "did not become {} within {}s (it is {seen})",
                                cond_name(*c),
                                wait_limit.as_secs()
                            ),
                        )
                    })
            });
            if let Some((d, why)) = unmet {
                let chain = graph
                    .and_then(|g| g.blocking_chain(d, name))
                    .map(|c| c.join(" -> "))
                    .unwrap_or_else(|| format!("{d} -> {name}"));
                set(Progress::Failed);
                report(
                    api::Phase::Blocked,
                    format!("blocked: dependency {d} {why} ({chain})"),
                    vec![],
                )
                .await;
                self.event(
                    EventKind::ServiceBlocked,
                    name,
                    tier,
                    deployment,
                    format!("dependency {d} {why}: {chain}"),
                )
                .await;
                // Nothing stays behind for a service that never started.
                if held {
                    for h in p.outcome.hosts.keys() {
                        self.write_or_log(&format!("held {name} taken off {h}"), || {
                            self.bus.delete_desired(h, tier, name)
                        })
                        .await;
                    }
                }
                return Progress::Waiting;
            }
            if deps
                .iter()
                .all(|(d, c)| st.get(d).is_some_and(|s| meets(s.progress, *c)))
            {
                break;
            }
            // A closed board (the deploy is gone) ends the wait too.
            if let Ok(Err(_)) = tokio::time::timeout(left, board_rx.changed()).await {
                return Progress::Waiting;
            }
        }

        let fail = |message: String| async move {
            let blocks: Vec<String> = graph
                .map(|g| {
                    g.blocked_by(name)
                        .iter()
                        .filter_map(|b| g.blocking_chain(name, b).map(|c| c.join(" -> ")))
                        .collect()
                })
                .unwrap_or_default();
            set(Progress::Failed);
            report(api::Phase::Failed, message.clone(), blocks.clone()).await;
            let why = if blocks.is_empty() {
                message
            } else {
                format!("{message}; blocks {}", blocks.join(", "))
            };
            self.event(EventKind::ServiceFailed, name, tier, deployment, why).await;
            Progress::Failed
        };

        // The service-level record: what is wanted, where, what is pending,
        // which revision runs. A changed spec becomes a new revision only
        // once its rollout is done.
        let before = self.bus.get_record(tier, name).await.ok().flatten().unwrap_or_default();
        let running_spec = p
            .existing
            .iter()
            .filter(|d| !d.absent && !d.hold)
            .find_map(|d| d.spec.clone());
        let changed = running_spec
            .as_ref()
            .is_some_and(|o| operator_core::spec::spec_hash(o) != operator_core::spec::spec_hash(&p.spec));
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
        if let Err(e) = self.bus.put_record(&record).await {
            return fail(format!("could not write the service record: {e}")).await;
        }
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
            return fail(format!("pending: {}", p.outcome.reason)).await;
        }

        // A changed spec on what runs rolls over it as update_config says;
        // then the placement below adds or removes replicas.
        if !held {
            let r = Reporter {
                name,
                tier,
                deployment,
                tx,
            };
            match self
                .roll_if_changed(&r, &p.existing, &p.spec, &p.update, &p.back, deadline)
                .await
            {
                Ok(false) => {}
                Ok(true) => {
                    p.existing = self
                        .bus
                        .list_desired(None)
                        .await
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|d| d.spec.as_ref().is_some_and(|s| s.name == name))
                        .collect();
                }
                Err(e) => return fail(e).await,
            }
        }

        // Dispatch: write desired state on every host whose share is not
        // already what we want; take it off hosts it no longer has (volumes
        // are kept).
        let mut all_unchanged = true;
        let mut targets: Vec<(String, ServiceSpec, String, u64)> = Vec::new();
        for (h, n) in &p.outcome.hosts {
            let spec = p.spec_for(*n);
            let hash = operator_core::spec::spec_hash(&spec);
            // A service still held by an interrupted deploy is not
            // unchanged: it must be released.
            let existing = p.on(h);
            let unchanged = existing.is_some_and(|d| {
                !d.absent
                    && !d.hold
                    && d.previous.is_none()
                    && d.spec
                        .as_ref()
                        .is_some_and(|s| operator_core::spec::spec_hash(s) == hash && s.replicas.max(1) == *n)
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
                if let Err(e) = self.bus.put_desired(&desired).await {
                    return fail(format!("could not write desired state on {h}: {e}")).await;
                }
            }
            targets.push((h.clone(), spec, hash, generation));
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
            if let Err(e) = self.bus.put_desired(&gone).await {
                return fail(format!("could not take it off {}: {e}", d.host)).await;
            }
        }
        report(
            api::Phase::Dispatched,
            if all_unchanged {
                "unchanged".into()
            } else {
                format!("to {hosts}")
            },
            vec![],
        )
        .await;
        self.event(
            EventKind::ServiceDispatched,
            name,
            tier,
            deployment,
            format!("hosts {hosts}"),
        )
        .await;

        // Wait until every host has it ready (or one failed, or time ran
        // out). A one-shot job that a dependent needs completed is ready
        // once it has exited 0, not while it runs.
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
            let mut laggard: Option<(String, Option<ObservedService>)> = None;
            for (h, spec, hash, generation) in &targets {
                let obs = self.cache.get(h, tier, name).await;
                let now = obs
                    .as_ref()
                    .map_or(Progress::Waiting, |o| progress_of(o, spec, hash, *generation));
                if now == Progress::Failed {
                    let o = obs.unwrap_or_default();
                    let why = if o.message.is_empty() {
                        "failed".to_string()
                    } else {
                        o.message.clone()
                    };
                    return fail(if targets.len() > 1 { format!("{h}: {why}") } else { why }).await;
                }
                if laggard.is_none() && !done(now) {
                    laggard = Some((h.clone(), obs));
                }
                each.push(now);
            }
            let now = aggregate(&each);
            if now != last {
                set(now);
                last = now;
            }
            if done(now) {
                let health = self
                    .cache
                    .get(&targets[0].0, tier, name)
                    .await
                    .map_or(Health::Healthy, |o| o.health());
                let mut msg = format!("{health:?}").to_lowercase();
                if p.outcome.pending > 0 {
                    msg.push_str(&format!(
                        "; {} of {} replicas placed, {} pending: {}",
                        p.outcome.placed(),
                        record.replicas,
                        p.outcome.pending,
                        p.outcome.reason
                    ));
                }
                report(api::Phase::Ready, msg, vec![]).await;
                self.event(EventKind::ServiceReady, name, tier, deployment, String::new())
                    .await;
                return now;
            }
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                let (h, obs) = laggard.unwrap_or_default();
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
                return fail(format!("{what} after {}s ({seen})", deadline.as_secs())).await;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), changes.changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use infra_proto::bus::v1::ContainerStatus;

    use super::*;
    use crate::plan::diff;

    fn spec(replicas: u32) -> ServiceSpec {
        ServiceSpec {
            name: "s".into(),
            tier: "data".into(),
            image: "i".into(),
            replicas,
            ..Default::default()
        }
    }

    fn observed(hash: &str, health: Health, hashes: &[&str], running: u32) -> ObservedService {
        ObservedService {
            spec_hash: hash.into(),
            health: health as i32,
            running_replicas: running,
            containers: hashes
                .iter()
                .map(|h| ContainerStatus {
                    spec_hash: (*h).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn readiness_needs_every_replica_on_the_new_spec() {
        let s = spec(2);
        let h = "new";
        // The old containers being healthy does not count.
        assert_eq!(
            progress_of(&observed("old", Health::Healthy, &["old", "old"], 2), &s, h, 0),
            Progress::Waiting
        );
        assert_eq!(
            progress_of(&observed(h, Health::Healthy, &[h, "old"], 2), &s, h, 0),
            Progress::Waiting
        );
        assert_eq!(
            progress_of(&observed(h, Health::Starting, &[h, h], 1), &s, h, 0),
            Progress::Started
        );
        assert_eq!(
            progress_of(&observed(h, Health::Healthy, &[h, h], 2), &s, h, 0),
            Progress::Healthy
        );
        assert_eq!(
            progress_of(&observed(h, Health::Failed, &[], 0), &s, h, 0),
            Progress::Failed
        );
        assert_eq!(
            progress_of(&observed(h, Health::Completed, &[h, h], 0), &s, h, 0),
            Progress::Completed
        );
    }

    #[test]
    fn a_report_about_an_older_write_does_not_count_even_when_it_looks_done() {
        let s = spec(2);
        let h = "new";
        let mut o = observed(h, Health::Healthy, &[h, h], 2);
        o.generation = 6;
        assert_eq!(progress_of(&o, &s, h, 7), Progress::Waiting);
        // Not even a failure: it may be the old write's.
        o.health = Health::Failed as i32;
        assert_eq!(progress_of(&o, &s, h, 7), Progress::Waiting);
        o.generation = 7;
        assert_eq!(progress_of(&o, &s, h, 7), Progress::Failed);
    }

    #[test]
    fn conditions_are_met_as_compose_defines_them() {
        use DependencyCondition::*;
        assert!(meets(Progress::Started, ServiceStarted));
        assert!(!meets(Progress::Started, ServiceHealthy));
        assert!(meets(Progress::Healthy, ServiceHealthy));
        assert!(!meets(Progress::Healthy, ServiceCompletedSuccessfully));
        assert!(meets(Progress::Completed, ServiceCompletedSuccessfully));
        assert!(!meets(Progress::Failed, ServiceStarted));
    }

    #[test]
    fn the_plan_diff_names_the_fields_that_changed() {
        let a = spec(1);
        let mut b = a.clone();
        b.image = "j".into();
        b.replicas = 3;
        b.environment.insert("K".into(), "V".into());
        assert_eq!(diff(&a, &b), vec!["image", "environment", "deploy.replicas"]);
        assert!(diff(&a, &a).is_empty());
    }
}
