//! Rolling updates and rollbacks, with Swarm's `update_config` meaning:
//! replicas move to the new spec `parallelism` at a time, each batch gated
//! on health and watched for `monitor`, `delay` between batches; on
//! failure beyond `max_failure_ratio`, `failure_action` pauses, continues
//! or rolls back.
//!
//! The progress of a rollout lives in the store, not in this process: each
//! host's desired state says `spec` (new), `previous` (old) and `updated`
//! (replicas 1..=updated run the new spec). Moving forward raises
//! `updated`; rolling back lowers it. So a rollout can be resumed from what
//! the store says ([`done_from`]) by whoever leads next.
//!
//! # Guarantees
//!
//! - At most one batch is away from a healthy, ready state at any time, so
//!   a stop-first rollout never has fewer than `replicas - parallelism`
//!   replicas serving; start-first never has fewer than `replicas`.
//! - A replica counts as updated only when its container runs the new spec,
//!   is healthy (or running, without a health check), the old container is
//!   gone, and it stayed so for `monitor`.
//! - Nothing here deletes a volume.

mod calls;
mod member_rolls;
mod resume;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::error::Error;
use infra_proto::bus::v1::{DesiredService, EventKind, Health, RolloutState, ServiceRecord, ServiceSpec, UpdatePolicy};
use infra_proto::coordinator::v1 as api;

use tokio::sync::mpsc;

use crate::coordinator::Coordinator;

/// One replica in rollout order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Host it runs on.
    pub host: String,
    /// Replica index there.
    pub replica: u32,
}

/// Rollout order over `counts` (host -> replicas): replica 1 of every host,
/// then replica 2 of every host, ..., so one batch spreads over hosts and
/// every host's updated replicas stay a prefix `1..=updated`.
pub fn slots(counts: &BTreeMap<String, u32>) -> Vec<Slot> {
    let max = counts.values().copied().max().unwrap_or(0);
    let mut out = Vec::new();
    for r in 1..=max {
        for (h, n) in counts {
            if r <= *n {
                out.push(Slot {
                    host: h.clone(),
                    replica: r,
                });
            }
        }
    }
    out
}

/// Each host's `updated` once the first `done` slots of `order` run the
/// new spec.
pub fn updated_after(order: &[Slot], done: usize) -> BTreeMap<String, u32> {
    let mut out: BTreeMap<String, u32> = order.iter().map(|s| (s.host.clone(), 0)).collect();
    for s in &order[..done.min(order.len())] {
        let u = out.entry(s.host.clone()).or_default();
        *u = (*u).max(s.replica);
    }
    out
}

/// How many slots of `order` are done, from the hosts' `updated` values in
/// the store (the longest prefix they cover).
pub fn done_from(order: &[Slot], updated: &BTreeMap<String, u32>) -> usize {
    order
        .iter()
        .take_while(|s| updated.get(&s.host).copied().unwrap_or(0) >= s.replica)
        .count()
}

/// Whether `failed` of `total` replicas is more than the policy tolerates.
pub fn too_many_failures(failed: usize, total: usize, max_ratio: f64) -> bool {
    total > 0 && failed as f64 > max_ratio * total as f64
}

fn secs(d: Option<&prost_types::Duration>) -> Duration {
    d.map_or(Duration::ZERO, |d| {
        Duration::from_secs(d.seconds.max(0) as u64) + Duration::from_nanos(d.nanos.max(0) as u64)
    })
}

/// How a roll ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RollEnd {
    /// Every slot reached the target.
    Done,
    /// Too many replicas failed; `at` slots were moved when it stopped.
    Failed {
        /// Slots done (forward) or still on the new spec (back).
        at: usize,
        /// What failed, per replica.
        why: String,
    },
}

/// What a rollout needs to report as it goes.
pub(crate) struct Reporter<'a> {
    pub name: &'a str,
    pub tier: &'a str,
    pub deployment: &'a str,
    pub tx: &'a mpsc::Sender<Result<api::DeployProgress, Error>>,
}

impl Reporter<'_> {
    pub(crate) async fn send(&self, phase: api::Phase, host: String, message: String) {
        let _ = self
            .tx
            .send(Ok(api::DeployProgress {
                deployment_id: self.deployment.to_owned(),
                service: self.name.to_owned(),
                tier: self.tier.to_owned(),
                host,
                phase: phase as i32,
                message,
                time: Some(infra_proto::now()),
                ..Default::default()
            }))
            .await;
    }
}

fn with_replicas(spec: &ServiceSpec, n: u32) -> ServiceSpec {
    let mut s = spec.clone();
    s.replicas = n;
    s
}

impl Coordinator {
    /// Moves slots `from_k..to_k` of the rollout `old -> new` over `counts`
    /// (forward when `to_k > from_k`, back otherwise), batch by batch as
    /// `policy` says. The hosts' desired state carries the progress.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn roll(
        &self,
        r: &Reporter<'_>,
        new: &ServiceSpec,
        old: &ServiceSpec,
        counts: &BTreeMap<String, u32>,
        from_k: usize,
        to_k: usize,
        policy: &UpdatePolicy,
        deadline: Duration,
    ) -> RollEnd {
        let order = slots(counts);
        let total = order.len();
        let to_k = to_k.min(total);
        let labels = if new.labels.contains_key(infra_products::ORDER_LABEL) {
            &new.labels
        } else {
            &old.labels
        };
        // The hook runs on the members' hosts, asked over the bus: the
        // coordinator needs no path to them (`infra_products::remote`).
        match infra_products::remote::Remote::for_labels(self.bus().clone(), r.tier, labels) {
            Ok(None) => {}
            Ok(Some(hook)) => {
                return self
                    .roll_members(r, &hook, new, old, counts, from_k, to_k, policy, deadline)
                    .await;
            }
            Err(e) => return RollEnd::Failed { at: from_k, why: e.0 },
        }
        let forward = to_k >= from_k;
        let step = if policy.parallelism == 0 {
            total.max(1)
        } else {
            policy.parallelism as usize
        };
        let hash = infra_proto::spec::spec_hash(if forward { new } else { old });
        let batches = from_k.abs_diff(to_k).div_ceil(step);
        let (mut k, mut failed, mut batch) = (from_k, 0usize, 0usize);
        while k != to_k {
            batch += 1;
            let next = if forward {
                (k + step).min(to_k)
            } else {
                k.saturating_sub(step).max(to_k)
            };
            let moved: Vec<Slot> = order[k.min(next)..k.max(next)].to_vec();
            if let Err(why) = self.move_slots(r, new, old, counts, &order, next, &moved, policy).await {
                return RollEnd::Failed { at: k, why };
            }
            let which = moved
                .iter()
                .map(|s| format!("{} replica {}", s.host, s.replica))
                .collect::<Vec<_>>()
                .join(", ");
            let bad = self
                .wait_slots(r.tier, r.name, &moved, &hash, deadline, secs(policy.monitor.as_ref()))
                .await;
            let ok = bad.is_empty();
            failed += bad.len();
            let (phase, verb) = if forward {
                (api::Phase::Updating, "on the new spec")
            } else {
                (api::Phase::RollingBack, "back on the previous spec")
            };
            if ok {
                r.send(
                    phase,
                    which.clone(),
                    format!("batch {batch} of {batches}: {which} {verb}"),
                )
                .await;
            } else {
                r.send(
                    phase,
                    which.clone(),
                    format!("batch {batch} of {batches}: {}", bad.join("; ")),
                )
                .await;
            }
            self.note_progress(r, next, failed).await;
            self.coordinator_event(
                EventKind::RolloutBatchDone,
                r,
                format!(
                    "batch {batch} of {batches}: {which}{}",
                    if ok {
                        String::new()
                    } else {
                        format!(" ({})", bad.join("; "))
                    }
                ),
            )
            .await;
            if !ok && policy.failure_action != "continue" && too_many_failures(failed, total, policy.max_failure_ratio)
            {
                return RollEnd::Failed {
                    at: next,
                    why: bad.join("; "),
                };
            }
            k = next;
            let delay = secs(policy.delay.as_ref());
            if k != to_k && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        RollEnd::Done
    }

    /// Writes the desired state of the hosts of `moved`: the first `next`
    /// slots of `order` on `new`, the rest on `old`.
    #[allow(clippy::too_many_arguments)]
    async fn move_slots(
        &self,
        r: &Reporter<'_>,
        new: &ServiceSpec,
        old: &ServiceSpec,
        counts: &BTreeMap<String, u32>,
        order: &[Slot],
        next: usize,
        moved: &[Slot],
        policy: &UpdatePolicy,
    ) -> Result<(), String> {
        let updated = updated_after(order, next);
        for h in moved
            .iter()
            .map(|s| s.host.clone())
            .collect::<std::collections::BTreeSet<_>>()
        {
            let n = counts.get(&h).copied().unwrap_or(1);
            let existing = self.bus().get_desired(&h, r.tier, r.name).await.ok().flatten();
            let d = DesiredService {
                spec: Some(with_replicas(new, n)),
                host: h.clone(),
                generation: existing.map_or(0, |d| d.generation) + 1,
                deployment_id: r.deployment.to_owned(),
                previous: Some(with_replicas(old, n)),
                updated: updated.get(&h).copied().unwrap_or(0),
                start_first: policy.start_first,
                ..Default::default()
            };
            self.bus()
                .put_desired(&d)
                .await
                .map_err(|e| format!("could not write desired state on {h}: {e}"))?;
        }
        Ok(())
    }

    /// Ends a rollout on every host: all replicas on `spec`, no previous.
    pub(crate) async fn settle(
        &self,
        r: &Reporter<'_>,
        spec: &ServiceSpec,
        counts: &BTreeMap<String, u32>,
    ) -> Result<(), String> {
        for (h, n) in counts {
            let existing = self.bus().get_desired(h, r.tier, r.name).await.ok().flatten();
            let d = DesiredService {
                spec: Some(with_replicas(spec, *n)),
                host: h.clone(),
                generation: existing.map_or(0, |d| d.generation) + 1,
                deployment_id: r.deployment.to_owned(),
                ..Default::default()
            };
            self.bus()
                .put_desired(&d)
                .await
                .map_err(|e| format!("could not write desired state on {h}: {e}"))?;
        }
        Ok(())
    }

    /// Waits until every slot runs `hash`, ready and alone, then watches it
    /// for `monitor`. Returns what failed, one line per replica (empty when
    /// all made it).
    async fn wait_slots(
        &self,
        tier: &str,
        name: &str,
        slots: &[Slot],
        hash: &str,
        deadline: Duration,
        monitor: Duration,
    ) -> Vec<String> {
        let start = Instant::now();
        let mut changes = self.cache().subscribe();
        let mut ready_since: Option<Instant> = None;
        loop {
            let mut bad = Vec::new();
            let mut pending = Vec::new();
            for s in slots {
                let obs = self.cache().get(&s.host, tier, name).await;
                let Some(o) = obs else {
                    pending.push(format!("{} replica {}: no report from its operator", s.host, s.replica));
                    continue;
                };
                let mine: Vec<_> = o.containers.iter().filter(|c| c.replica == s.replica).collect();
                let new: Vec<_> = mine.iter().filter(|c| c.spec_hash == hash).collect();
                if let Some(c) = new
                    .iter()
                    .find(|c| matches!(c.health(), Health::Unhealthy | Health::Failed))
                {
                    bad.push(format!(
                        "{} replica {}: {}",
                        s.host,
                        s.replica,
                        format!("{:?}", c.health()).to_lowercase()
                    ));
                } else if o.health() == Health::Failed && !o.message.is_empty() && o.spec_hash == hash {
                    // (A failure reported for another spec, before this
                    // rollout reached the host, is not this one's.)
                    bad.push(format!("{} replica {}: {}", s.host, s.replica, o.message));
                } else if !(new.len() == 1
                    && mine.len() == 1
                    && matches!(new[0].health(), Health::Healthy | Health::Running | Health::Completed))
                {
                    pending.push(format!(
                        "{} replica {}: {}",
                        s.host,
                        s.replica,
                        new.first()
                            .map_or("not created yet".to_string(), |c| format!("{:?}", c.health())
                                .to_lowercase())
                    ));
                }
            }
            if !bad.is_empty() {
                return bad;
            }
            if pending.is_empty() {
                let since = *ready_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= monitor {
                    return Vec::new();
                }
            } else if ready_since.is_some() {
                // It was ready and is not any more: that is a failure.
                return pending
                    .into_iter()
                    .map(|p| format!("{p} (after being ready)"))
                    .collect();
            }
            if start.elapsed() >= deadline {
                return pending
                    .into_iter()
                    .map(|p| format!("{p}; not ready within {}s", deadline.as_secs()))
                    .collect();
            }
            let left = if ready_since.is_some() {
                monitor.saturating_sub(ready_since.map_or(Duration::ZERO, |t| t.elapsed()))
            } else {
                deadline.saturating_sub(start.elapsed())
            };
            let _ = tokio::time::timeout(
                left.clamp(Duration::from_millis(10), Duration::from_millis(500)),
                changes.changed(),
            )
            .await;
        }
    }

    /// Records how far the rollout got in the service record.
    async fn note_progress(&self, r: &Reporter<'_>, done: usize, failed: usize) {
        let Ok(Some(mut rec)) = self.bus().get_record(r.tier, r.name).await else {
            return;
        };
        if let Some(st) = rec.rollout.as_mut() {
            st.done = done as u32;
            st.failed = failed as u32;
        }
        rec.updated_at = Some(infra_proto::now());
        self.write_or_log(&format!("record of {}", r.name), || self.bus().put_record(&rec))
            .await;
    }

    pub(crate) async fn coordinator_event(&self, kind: EventKind, r: &Reporter<'_>, reason: String) {
        self.event(kind, r.name, r.tier, r.deployment, reason).await;
    }

    /// Rolls `name` from `old` to `new` over `counts`, from slot
    /// `resume_at`, and handles a failure as `update.failure_action` says:
    /// `rollback` undoes it with the `back` policy, `pause` leaves it where
    /// it stopped. Keeps the service record current. `Ok` when the service
    /// ends on `new`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn rollout(
        &self,
        r: &Reporter<'_>,
        old: &ServiceSpec,
        new: &ServiceSpec,
        counts: &BTreeMap<String, u32>,
        resume_at: usize,
        update: &UpdatePolicy,
        back: &UpdatePolicy,
        deadline: Duration,
        is_rollback: bool,
    ) -> Result<(), String> {
        let total = slots(counts).len();
        self.set_rollout(
            r,
            Some(RolloutState {
                id: r.deployment.to_owned(),
                target: Some(new.clone()),
                from: Some(old.clone()),
                done: resume_at as u32,
                failed: 0,
                phase: if is_rollback { "rolling_back" } else { "rolling" }.into(),
                message: String::new(),
                started_at: Some(infra_proto::now()),
                rollback: is_rollback,
            }),
        )
        .await;
        let (start_kind, end_kind) = if is_rollback {
            (EventKind::RollbackStarted, EventKind::RollbackFinished)
        } else {
            (EventKind::RolloutStarted, EventKind::RolloutFinished)
        };
        self.coordinator_event(
            start_kind,
            r,
            format!(
                "{} replicas, {} at a time, {}{}",
                total,
                if update.parallelism == 0 {
                    "all".to_string()
                } else {
                    update.parallelism.to_string()
                },
                if update.start_first {
                    "start-first"
                } else {
                    "stop-first"
                },
                if resume_at > 0 {
                    format!(", resuming at {resume_at}")
                } else {
                    String::new()
                }
            ),
        )
        .await;
        match self.roll(r, new, old, counts, resume_at, total, update, deadline).await {
            RollEnd::Done => {
                self.settle(r, new, counts).await?;
                self.coordinator_event(end_kind, r, format!("{total} replicas on the new spec"))
                    .await;
                self.finish_record(r, old, new).await;
                Ok(())
            }
            RollEnd::Failed { at, why } => {
                self.coordinator_event(EventKind::RolloutFailed, r, why.clone()).await;
                if update.failure_action == "rollback" {
                    r.send(
                        api::Phase::RollingBack,
                        String::new(),
                        format!("rollout failed ({why}); rolling back {at} replicas"),
                    )
                    .await;
                    self.coordinator_event(EventKind::RollbackStarted, r, format!("after: {why}"))
                        .await;
                    let end = self.roll(r, new, old, counts, at, 0, back, deadline).await;
                    let settled = self.settle(r, old, counts).await;
                    self.set_rollout(r, None).await;
                    return match (end, settled) {
                        (RollEnd::Done, Ok(())) => {
                            self.coordinator_event(EventKind::RollbackFinished, r, "back on the previous spec".into())
                                .await;
                            Err(format!("rollout failed and was rolled back: {why}"))
                        }
                        (RollEnd::Failed { why: w2, .. }, _) => {
                            Err(format!("rollout failed ({why}) and so did its rollback ({w2})"))
                        }
                        (_, Err(e)) => Err(format!("rollout failed ({why}); rollback: {e}")),
                    };
                }
                // Pause: the updated replicas keep the new spec.
                let msg = format!("paused after {at} of {total} replicas: {why}; Rollout resumes, Rollback undoes");
                self.set_rollout_phase(r, "paused", &msg).await;
                self.coordinator_event(EventKind::RolloutPaused, r, msg.clone()).await;
                r.send(api::Phase::Paused, String::new(), msg.clone()).await;
                Err(msg)
            }
        }
    }

    async fn set_rollout(&self, r: &Reporter<'_>, st: Option<RolloutState>) {
        if let Ok(Some(mut rec)) = self.bus().get_record(r.tier, r.name).await {
            rec.rollout = st;
            rec.updated_at = Some(infra_proto::now());
            self.write_or_log(&format!("record of {}", r.name), || self.bus().put_record(&rec))
                .await;
        }
    }

    async fn set_rollout_phase(&self, r: &Reporter<'_>, phase: &str, msg: &str) {
        if let Ok(Some(mut rec)) = self.bus().get_record(r.tier, r.name).await {
            if let Some(st) = rec.rollout.as_mut() {
                st.phase = phase.into();
                st.message = msg.into();
            }
            self.write_or_log(&format!("record of {}", r.name), || self.bus().put_record(&rec))
                .await;
        }
    }

    /// The service is on `new`: a new revision, `old` the previous one.
    async fn finish_record(&self, r: &Reporter<'_>, old: &ServiceSpec, new: &ServiceSpec) {
        let mut rec = self
            .bus()
            .get_record(r.tier, r.name)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| ServiceRecord {
                service: r.name.to_owned(),
                tier: r.tier.to_owned(),
                ..Default::default()
            });
        let total = rec.spec.as_ref().map_or(new.replicas, |s| s.replicas);
        rec.previous_spec = Some(with_replicas(old, total));
        rec.spec = Some(with_replicas(new, total));
        rec.revision += 1;
        rec.rollout = None;
        rec.updated_at = Some(infra_proto::now());
        self.write_or_log(&format!("record of {}", r.name), || self.bus().put_record(&rec))
            .await;
    }
}

#[cfg(test)]
mod tests;
