//! Deploy: every service of a selection brought up as soon as its
//! dependencies meet their conditions, each in steps: hold, await
//! dependencies, record, dispatch, await ready.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use infra_compose::DependencyCondition;
use infra_proto::bus::v1::{EventKind, Health, ObservedService, ServiceSpec};
use infra_proto::coordinator::v1 as api;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::coordinator::*;

use crate::plan::cond_name;

mod resume;
mod step;

pub use resume::resume_deploys;

pub(crate) use step::Step;

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
        let (catalog, head) = self.load_revision().await?;
        let (_, graph) = self.resolve(&catalog, req.selection.as_ref())?;
        let crate::plan::Preparation {
            services: prepared,
            secrets,
            pin_notes,
            ..
        } = self.prepare(&catalog, &graph).await?;
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
                catalog_revision: head.number,
                message: pin_notes
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, note)| note.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
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
        let mut msg = format!(
            "{ready} ready, {failed} failed, {blocked} blocked (catalog revision {})",
            head.number
        );
        let orphans = self.orphans(&catalog).await?;
        if req.prune {
            for name in self.prune(&orphans).await? {
                let tier = orphans.iter().find(|o| o.name == name).map(|o| o.tier.clone());
                send(api::DeployProgress {
                    deployment_id: deployment.clone(),
                    service: name,
                    tier: tier.unwrap_or_default(),
                    phase: api::Phase::Removed as i32,
                    message: "not in the catalog any more: removed (volumes kept)".into(),
                    time: Some(infra_proto::now()),
                    ..Default::default()
                })
                .await;
            }
        } else if !orphans.is_empty() {
            msg += &format!(
                "; deployed but no longer in the catalog, left running (prune: true removes them): {}",
                orphans.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
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
            catalog_revision: head.number,
            ..Default::default()
        })
        .await;
        Ok(())
    }
}

/// The first dependency that will never meet its condition, and why: it
/// failed, it completed without ever being healthy, its step ended short
/// of the condition, or the wait limit passed (`left` is zero).
pub(crate) fn unmet<'d>(
    name: &str,
    deps: &'d [(String, DependencyCondition)],
    st: &Board,
    left: Duration,
    wait_limit: Duration,
) -> Option<(&'d String, String)> {
    let failed = deps.iter().find_map(|(d, c)| {
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
    failed.or_else(|| {
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
    })
}

#[cfg(test)]
mod tests {
    use infra_proto::bus::v1::ContainerStatus;

    use super::*;

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
}
