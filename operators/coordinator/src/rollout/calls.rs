//! The rollout calls: Rollout, Rollback, and the roll a Deploy of a
//! changed spec makes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::error::Error;
use infra_proto::bus::v1::{DesiredService, EventKind, ServiceSpec, UpdatePolicy};
use infra_proto::coordinator::v1 as api;
use tokio::sync::mpsc;

use crate::convert::{self};
use crate::coordinator::*;
use crate::reach::reach_spec;
use crate::rollout::{self, Reporter};

impl Coordinator {
    /// Rolls what runs of a service to `new` when it differs, or resumes a
    /// rollout to `new` that was left midway. `Ok(true)` when it rolled.
    pub(crate) async fn roll_if_changed(
        &self,
        r: &Reporter<'_>,
        existing: &[DesiredService],
        new: &ServiceSpec,
        update: &UpdatePolicy,
        back: &UpdatePolicy,
        deadline: Duration,
    ) -> Result<bool, String> {
        let running: Vec<&DesiredService> = existing
            .iter()
            .filter(|d| !d.absent && !d.hold && d.spec.is_some())
            .collect();
        let Some(first) = running.first() else { return Ok(false) };
        let counts: BTreeMap<String, u32> = running
            .iter()
            .map(|d| (d.host.clone(), d.spec.as_ref().map_or(1, |s| s.replicas.max(1))))
            .collect();
        let hash = infra_proto::spec::spec_hash(new);
        let current = first.spec.as_ref().expect("filtered");
        if let Some(prev) = running.iter().find_map(|d| d.previous.as_ref()) {
            if infra_proto::spec::spec_hash(current) != hash {
                return Err(format!(
                    "a rollout of {} to another spec is paused or in progress: Rollout resumes it, Rollback undoes it",
                    r.name
                ));
            }
            let updated: BTreeMap<String, u32> = running.iter().map(|d| (d.host.clone(), d.updated)).collect();
            let at = rollout::done_from(&rollout::slots(&counts), &updated);
            r.send(
                api::Phase::Updating,
                String::new(),
                format!("resuming the rollout at replica {}", at + 1),
            )
            .await;
            let prev = prev.clone();
            self.rollout(r, &prev, new, &counts, at, update, back, deadline, false)
                .await?;
            return Ok(true);
        }
        if infra_proto::spec::spec_hash(current) == hash {
            return Ok(false);
        }
        let old = current.clone();
        self.rollout(r, &old, new, &counts, 0, update, back, deadline, false)
            .await?;
        Ok(true)
    }

    /// Rolls a deployed service to the catalog's spec (with `image` and
    /// `environment` laid over it), as its update_config says.
    #[tracing::instrument(name = "rollout", skip_all)]
    pub async fn rollout_service(
        &self,
        req: api::RolloutRequest,
        tx: mpsc::Sender<Result<api::DeployProgress, Error>>,
    ) -> Result<(), Error> {
        if req.service.is_empty() {
            return Err(invalid("service: must name a service"));
        }
        let catalog = self.load().await?;
        let svc = catalog.services.get(&req.service).ok_or_else(|| {
            Error::not_found(format!(
                "service: no service {:?} in the catalog at {}",
                req.service,
                catalog.root.display()
            ))
        })?;
        let env = Self::env();
        let (mut spec, mut contents) =
            convert::to_spec(&catalog, &self.settings.project, svc, &env).map_err(invalid)?;
        if !req.image.is_empty() {
            spec.image.clone_from(&req.image);
            // The credentials of the new image's registry.
            let auth = convert::registry::credentials(&catalog, svc, &spec.image, &env).map_err(invalid)?;
            spec.registry_auth_key = auth.as_ref().map(|a| a.key.clone()).unwrap_or_default();
            contents.extend(auth);
        }
        for (k, v) in &req.environment {
            if k.is_empty() || k.contains('=') {
                return Err(invalid(format!("environment: {k:?} is not a variable name")));
            }
            spec.environment.insert(k.clone(), v.clone());
        }
        let existing: Vec<DesiredService> = self
            .bus
            .list_desired(None)
            .await
            .map_err(unavailable)?
            .into_iter()
            .filter(|d| d.spec.as_ref().is_some_and(|s| s.name == req.service))
            .collect();
        if !existing.iter().any(|d| !d.absent && !d.hold) {
            return Err(Error::precondition(format!(
                "service {:?} is not deployed: deploy it first",
                req.service
            )));
        }
        // The same cross-host reach as a deploy gives it.
        let everyone = self.bus.list_desired(None).await.map_err(unavailable)?;
        let mut placed: HashMap<String, Vec<String>> = HashMap::new();
        for d in everyone.iter().filter(|d| !d.absent) {
            if let Some(s) = &d.spec {
                placed.entry(s.name.clone()).or_default().push(d.host.clone());
            }
        }
        let mine = placed.get(&req.service).cloned().unwrap_or_default();
        let hosts = self.eligible_hosts().await?;
        reach_spec(&catalog, &hosts, &placed, &req.service, &mine, &mut spec);
        // Replicas stay as they are: a rollout changes the spec, not the count.
        spec.replicas = existing
            .iter()
            .filter(|d| !d.absent)
            .filter_map(|d| d.spec.as_ref())
            .map(|s| s.replicas.max(1))
            .sum();
        let logins = convert::registry::logins(&catalog, &env).map_err(invalid)?;
        let previous = existing.iter().filter(|d| !d.absent).find_map(|d| d.spec.as_ref());
        if let Some(host) = mine.first()
            && let Some(note) = self.pin_image(&mut spec, previous, host, &logins).await
        {
            tracing::warn!(service = %req.service, "{note}");
        }
        for c in contents {
            self.bus.put_secret(&c.key, c.content).await.map_err(unavailable)?;
        }
        let deadline = self.deadline(req.timeout_seconds);
        let deployment = nuid::next().to_string();
        let r = Reporter {
            name: &req.service,
            tier: &spec.tier,
            deployment: &deployment,
            tx: &tx,
        };
        let (update, back) = (convert::update_policy(svc, false), convert::update_policy(svc, true));
        if let Ok(Some(mut rec)) = self.bus.get_record(&spec.tier, &req.service).await {
            rec.update = Some(update.clone());
            rec.rollback = Some(back.clone());
            self.write_or_log(&format!("record of {}", req.service), || self.bus.put_record(&rec))
                .await;
        }
        let outcome = self
            .roll_if_changed(&r, &existing, &spec, &update, &back, deadline)
            .await;
        let (ok, message) = match outcome {
            Ok(true) => (true, "rolled out".to_string()),
            Ok(false) => (true, "unchanged: every replica already runs this spec".to_string()),
            Err(e) => (false, e),
        };
        self.done(&r, ok, message).await;
        Ok(())
    }

    /// Undoes a rollout in progress or paused, or goes back to the previous
    /// revision, as the service's rollback_config says.
    #[tracing::instrument(name = "rollback", skip_all)]
    pub async fn rollback_service(
        &self,
        req: api::RollbackRequest,
        tx: mpsc::Sender<Result<api::DeployProgress, Error>>,
    ) -> Result<(), Error> {
        if req.service.is_empty() {
            return Err(invalid("service: must name a service"));
        }
        let records = self.bus.list_records().await.map_err(unavailable)?;
        let Some(record) = records.into_iter().find(|r| r.service == req.service) else {
            return Err(Error::precondition(format!(
                "service {:?} is not deployed: nothing to roll back",
                req.service
            )));
        };
        let existing: Vec<DesiredService> = self
            .bus
            .list_desired(None)
            .await
            .map_err(unavailable)?
            .into_iter()
            .filter(|d| !d.absent && !d.hold && d.spec.as_ref().is_some_and(|s| s.name == req.service))
            .collect();
        let Some(first) = existing.first().and_then(|d| d.spec.clone()) else {
            return Err(Error::precondition(format!(
                "service {:?} runs nowhere: nothing to roll back",
                req.service
            )));
        };
        let counts: BTreeMap<String, u32> = existing
            .iter()
            .map(|d| (d.host.clone(), d.spec.as_ref().map_or(1, |s| s.replicas.max(1))))
            .collect();
        let (update, back) = (
            record.update.clone().unwrap_or_default(),
            record.rollback.clone().unwrap_or_default(),
        );
        let deadline = self.deadline(req.timeout_seconds);
        let deployment = nuid::next().to_string();
        let r = Reporter {
            name: &req.service,
            tier: &record.tier,
            deployment: &deployment,
            tx: &tx,
        };
        // A rollout midway: take its updated replicas back.
        if let Some(prev) = existing.iter().find_map(|d| d.previous.clone()) {
            let updated: BTreeMap<String, u32> = existing.iter().map(|d| (d.host.clone(), d.updated)).collect();
            let at = rollout::done_from(&rollout::slots(&counts), &updated);
            self.event(
                EventKind::RollbackStarted,
                &req.service,
                &record.tier,
                &deployment,
                format!("{at} replicas"),
            )
            .await;
            let end = self.roll(&r, &first, &prev, &counts, at, 0, &back, deadline).await;
            let settled = self.settle(&r, &prev, &counts).await;
            if let Ok(Some(mut rec)) = self.bus.get_record(&record.tier, &req.service).await {
                rec.rollout = None;
                self.write_or_log(&format!("record of {}", req.service), || self.bus.put_record(&rec))
                    .await;
            }
            let (ok, msg) = match (end, settled) {
                (rollout::RollEnd::Done, Ok(())) => {
                    self.event(
                        EventKind::RollbackFinished,
                        &req.service,
                        &record.tier,
                        &deployment,
                        "back on the previous spec".into(),
                    )
                    .await;
                    (true, format!("rolled back {at} replicas to the previous spec"))
                }
                (rollout::RollEnd::Failed { why, .. }, _) => (false, format!("rollback failed: {why}")),
                (_, Err(e)) => (false, e),
            };
            self.done(&r, ok, msg).await;
            return Ok(());
        }
        let Some(target) = record.previous_spec.clone() else {
            return Err(Error::precondition(format!(
                "{} has no previous revision to go back to (revision {} is its first)",
                req.service,
                record.revision.max(1)
            )));
        };
        let outcome = self
            .rollout(&r, &first, &target, &counts, 0, &back, &update, deadline, true)
            .await;
        let (ok, msg) = match outcome {
            Ok(()) => (
                true,
                format!("back on the previous revision (now revision {})", record.revision + 1),
            ),
            Err(e) => (false, e),
        };
        self.done(&r, ok, msg).await;
        Ok(())
    }

    pub(crate) fn deadline(&self, secs: u32) -> Duration {
        if secs > 0 {
            Duration::from_secs(u64::from(secs))
        } else {
            self.settings.deploy_timeout
        }
    }

    pub(crate) async fn done(&self, r: &Reporter<'_>, ok: bool, message: String) {
        let _ =
            r.tx.send(Ok(api::DeployProgress {
                deployment_id: r.deployment.to_owned(),
                service: r.name.to_owned(),
                tier: r.tier.to_owned(),
                phase: api::Phase::Done as i32,
                message,
                time: Some(infra_proto::now()),
                ready: u32::from(ok),
                failed: u32::from(!ok),
                ..Default::default()
            }))
            .await;
    }
}
