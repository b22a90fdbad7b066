//! Scale: a deployed service's replica count, bounded and placed.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use infra_proto::bus::v1::{DesiredService, EventKind};
use infra_proto::coordinator::v1 as api;
use tokio::sync::{mpsc, watch};

use crate::coordinator::*;
use crate::deploy::{Board, Progress, Step};
use crate::placement::{self, Outcome, Rules, Usage};
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
        let deadline = if req.timeout_seconds > 0 {
            Duration::from_secs(u64::from(req.timeout_seconds))
        } else {
            self.settings.deploy_timeout
        };
        let deployment = nuid::next().to_string();
        let mut spec = spec;
        spec.replicas = req.replicas;
        let (update, back) = (
            record.update.clone().unwrap_or_default(),
            record.rollback.clone().unwrap_or_default(),
        );
        let mut p = Prepared {
            spec,
            rules,
            outcome: Outcome::default(),
            existing,
            update,
            back,
        };
        if req.replicas == 0 {
            // Nothing to place: take it off every host, keep the record.
            self.claim(&req.service).cancel();
            for d in p.existing.iter().filter(|d| !d.absent) {
                let mut gone = d.clone();
                gone.absent = true;
                gone.remove_volumes = false;
                gone.generation += 1;
                gone.deployment_id.clone_from(&deployment);
                self.bus.put_desired(&gone).await.map_err(unavailable)?;
            }
            let mut r = record;
            r.replicas = 0;
            r.placement.clear();
            r.pending_replicas = 0;
            r.pending_reason.clear();
            r.updated_at = Some(infra_proto::now());
            r.deployment_id.clone_from(&deployment);
            self.bus.put_record(&r).await.map_err(unavailable)?;
            self.event(
                EventKind::ServiceScaled,
                &req.service,
                &p.spec.tier,
                &deployment,
                format!("{now} -> 0"),
            )
            .await;
            let _ = tx
                .send(Ok(api::DeployProgress {
                    deployment_id: deployment,
                    service: req.service.clone(),
                    tier: p.spec.tier.clone(),
                    phase: api::Phase::Done as i32,
                    message: format!("scaled {now} -> 0"),
                    time: Some(infra_proto::now()),
                    ..Default::default()
                }))
                .await;
            return Ok(());
        }
        let hosts = self.eligible_hosts().await?;
        let parsed = Rules::from_spec(&p.spec.tier, req.replicas, &p.rules)
            .map_err(invalid)?
            .reserving(placement::Reservation::of(&p.spec));
        let others = self.bus.list_records().await.map_err(unavailable)?;
        let all_desired = self.bus.list_desired(None).await.map_err(unavailable)?;
        let mut usage = Usage {
            reserved: placement::reserved_by_others(&all_desired, &req.service),
            ..Usage::default()
        };
        for r in others.iter().filter(|r| r.service != req.service) {
            let per = r.rules.as_ref().map_or(0, |x| x.gpus);
            for (h, n) in &r.placement {
                if r.tier == p.spec.tier {
                    *usage.tier_load.entry(h.clone()).or_default() += 1;
                }
                *usage.gpus_used.entry(h.clone()).or_default() += per * n;
            }
        }
        p.outcome = placement::place(&parsed, &hosts, &p.current(), &usage);
        if p.outcome.short_of_room {
            return Err(Error::precondition(format!(
                "{} cannot have {} replicas: {}; nothing was changed",
                req.service, req.replicas, p.outcome.reason
            )));
        }
        // This call now owns the service's count: an earlier Scale still
        // waiting for its own count stops.
        let superseded = self.claim(&req.service);
        self.event(
            EventKind::ServiceScaled,
            &req.service,
            &p.spec.tier,
            &deployment,
            format!("{now} -> {} (hosts {})", req.replicas, p.hosts_label()),
        )
        .await;
        let tier = p.spec.tier.clone();
        let step = Step {
            name: &req.service,
            deps: Vec::new(),
            deadline,
            wait_limit: Duration::ZERO,
            deployment: &deployment,
            board: Arc::new(watch::channel(Board::new()).0),
            graph: None,
            tx: &tx,
            until_completed: false,
        };
        let outcome = tokio::select! {
            o = self.deploy_one(step, p) => Some(o),
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
        let _ = tx
            .send(Ok(api::DeployProgress {
                deployment_id: deployment,
                service: req.service.clone(),
                tier,
                phase: api::Phase::Done as i32,
                message,
                time: Some(infra_proto::now()),
                ready: u32::from(ok),
                failed: u32::from(!ok),
                ..Default::default()
            }))
            .await;
        Ok(())
    }
}
