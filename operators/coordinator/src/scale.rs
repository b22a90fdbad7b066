//! Scale: a deployed service's replica count, bounded and placed.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use infra_proto::bus::v1::{DesiredService, EventKind, ServiceRecord};
use infra_proto::coordinator::v1 as api;
use tokio::sync::{mpsc, watch};

use crate::coordinator::*;
use crate::deploy::{Board, Progress, Step};
use crate::placement::{self, Outcome, Rules};
use crate::plan::Prepared;

impl Coordinator {
    /// Sets a deployed service's replica count: places the new count by the
    /// service's rules (keeping replicas where they are), starts what is
    /// new, removes what is surplus, and streams progress to `tx` until
    /// every host has its share ready. The spec is the one last applied, not
    /// the catalog's: scaling never rolls out an edit.
    #[tracing::instrument(name = "scale", skip_all)]
    pub async fn scale(
        &self,
        req: api::ScaleRequest,
        tx: mpsc::Sender<Result<api::DeployProgress, Error>>,
    ) -> Result<(), Error> {
        let target = self.scale_target(&req).await?;
        let deployment = nuid::next().to_string();
        if req.replicas == 0 {
            return self.scale_to_zero(target, &deployment, &tx).await;
        }
        let now = target.now;
        let mut p = target.prepared;
        p.spec.replicas = req.replicas;
        p.outcome = self.place_scaled(&p, req.replicas).await?;
        if p.outcome.short_of_room {
            return Err(Error::precondition(format!(
                "{} cannot have {} replicas: {}; nothing was changed",
                req.service, req.replicas, p.outcome.reason
            )));
        }
        // This call now owns the service's count: an earlier Scale still
        // waiting for its own count stops.
        let superseded = self.claim(&req.service);
        let tier = p.spec.tier.clone();
        let change = format!("{now} -> {} (hosts {})", req.replicas, p.hosts_label());
        self.event(EventKind::ServiceScaled, &req.service, &tier, &deployment, change)
            .await;
        let step = Step {
            name: &req.service,
            deps: Vec::new(),
            deadline: if req.timeout_seconds > 0 {
                Duration::from_secs(u64::from(req.timeout_seconds))
            } else {
                self.settings.deploy_timeout
            },
            wait_limit: Duration::ZERO,
            deployment: &deployment,
            board: Arc::new(watch::channel(Board::new()).0),
            graph: None,
            tx: &tx,
            until_completed: false,
        };
        // Boxed: a replica's deploy is a deep future, and a call's task
        // should not carry it inline.
        let outcome = tokio::select! {
            o = Box::pin(self.deploy_one(step, p)) => Some(o),
            () = superseded.cancelled() => None,
        };
        let ok = matches!(outcome, Some(Progress::Healthy | Progress::Completed));
        let message = match outcome {
            Some(_) => format!("scaled {now} -> {}", req.replicas),
            None => format!(
                "superseded: a newer Scale of {} took over before {} replicas were ready",
                req.service, req.replicas
            ),
        };
        let done = api::DeployProgress {
            ready: u32::from(ok),
            failed: u32::from(!ok),
            ..done(&deployment, &req.service, &tier, message)
        };
        let _ = tx.send(Ok(done)).await;
        Ok(())
    }

    /// What a Scale starts from: the service's record and last applied
    /// spec, after every check that can refuse it (nothing changed yet).
    async fn scale_target(&self, req: &api::ScaleRequest) -> Result<ScaleTarget, Error> {
        if req.service.is_empty() {
            return Err(invalid("service: must name a service"));
        }
        if req.replicas > self.settings.max_replicas {
            return Err(invalid(format!(
                "replicas: {} is more than one service may have here (max_replicas = {} in the coordinator's \
                 configuration); nothing was changed",
                req.replicas, self.settings.max_replicas
            )));
        }
        let records = self.bus.list_records().await.map_err(unavailable)?;
        let Some(record) = records.into_iter().find(|r| r.service == req.service) else {
            return Err(Error::precondition(format!(
                "service {:?} is not deployed: deploy it first",
                req.service
            )));
        };
        let (Some(spec), Some(rules)) = (record.spec.clone(), record.rules.clone()) else {
            return Err(Error::precondition(format!(
                "service {:?} was deployed by an older coordinator: deploy it again to scale it",
                req.service
            )));
        };
        if rules.global {
            return Err(Error::precondition(format!(
                "{} is global (deploy.mode: global): it runs one replica on every eligible host, so it cannot be \
                 scaled; change its placement constraints instead",
                req.service
            )));
        }
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let existing: Vec<DesiredService> = desired
            .into_iter()
            .filter(|d| d.spec.as_ref().is_some_and(|s| s.name == req.service))
            .collect();
        let now: u32 = existing
            .iter()
            .filter(|d| !d.absent)
            .filter_map(|d| d.spec.as_ref())
            .map(|s| s.replicas.max(1))
            .sum();
        if rules.stateful && req.replicas != now {
            let volumes: Vec<&str> = spec
                .mounts
                .iter()
                .filter(|m| m.kind() == infra_proto::bus::v1::MountKind::Volume)
                .map(|m| m.source.as_str())
                .collect();
            return Err(Error::precondition(format!(
                "{} keeps its state in named volumes ({}): the {} operator does not know how to scale it (a new \
                 replica would start on an empty volume of its own); scale a clustered service by its members",
                req.service,
                volumes.join(", "),
                spec.tier
            )));
        }
        let prepared = Prepared {
            spec,
            rules,
            outcome: Outcome::default(),
            existing,
            update: record.update.clone().unwrap_or_default(),
            back: record.rollback.clone().unwrap_or_default(),
        };
        Ok(ScaleTarget { record, prepared, now })
    }

    /// Places `replicas` of `p` by its rules beside everything else.
    async fn place_scaled(&self, p: &Prepared, replicas: u32) -> Result<Outcome, Error> {
        let hosts = self.eligible_hosts().await?;
        let rules = Rules::from_spec(&p.spec.tier, replicas, &p.rules)
            .map_err(invalid)?
            .reserving(placement::Reservation::of(&p.spec));
        let records = self.bus.list_records().await.map_err(unavailable)?;
        let desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let usage =
            placement::Ledger::from_state(&desired, &records).usage_for(&p.spec.tier, &p.spec.name, &p.rules.group);
        Ok(placement::place(&rules, &hosts, &p.current(), &usage))
    }

    /// Scale to 0: nothing to place; the service comes off every host and
    /// its record stays (a later Scale brings it back).
    async fn scale_to_zero(
        &self,
        target: ScaleTarget,
        deployment: &str,
        tx: &mpsc::Sender<Result<api::DeployProgress, Error>>,
    ) -> Result<(), Error> {
        let ScaleTarget {
            record,
            prepared: p,
            now,
        } = target;
        self.claim(&record.service).cancel();
        for d in p.existing.iter().filter(|d| !d.absent) {
            let mut gone = d.clone();
            gone.absent = true;
            gone.remove_volumes = false;
            gone.generation += 1;
            gone.deployment_id = deployment.to_owned();
            self.bus.put_desired(&gone).await.map_err(unavailable)?;
        }
        let mut r = record;
        r.replicas = 0;
        r.placement.clear();
        r.pending_replicas = 0;
        r.pending_reason.clear();
        r.updated_at = Some(infra_proto::now());
        r.deployment_id = deployment.to_owned();
        self.bus.put_record(&r).await.map_err(unavailable)?;
        let (service, tier) = (&r.service, &p.spec.tier);
        self.event(
            EventKind::ServiceScaled,
            service,
            tier,
            deployment,
            format!("{now} -> 0"),
        )
        .await;
        let _ = tx
            .send(Ok(done(deployment, service, tier, format!("scaled {now} -> 0"))))
            .await;
        Ok(())
    }
}

/// A deployed service a Scale may change.
struct ScaleTarget {
    record: ServiceRecord,
    prepared: Prepared,
    /// Replicas it has now.
    now: u32,
}

/// The last progress message of a Scale.
fn done(deployment: &str, service: &str, tier: &str, message: String) -> api::DeployProgress {
    api::DeployProgress {
        deployment_id: deployment.to_owned(),
        service: service.to_owned(),
        tier: tier.to_owned(),
        phase: api::Phase::Done as i32,
        message,
        time: Some(infra_proto::now()),
        ..Default::default()
    }
}
