//! Member-aware rolls: a service labelled `infra.update-order` (Patroni,
//! Valkey, RabbitMQ, Kafka) rolls member by member in the order its hook
//! says, each member's turn taken under a per-cluster lock so that the
//! members of one cluster never restart together.

use std::collections::BTreeMap;
use std::time::Duration;

use infra_products::{Member, UpdateOrder};
use infra_proto::bus::v1::{EventKind, ServiceSpec, UpdatePolicy};

use super::*;
use crate::coordinator::{ADDR_LABEL, Coordinator};

/// One member of a cluster restarts at a time, in this process: the
/// members of a cluster written as separate services roll in separate
/// tasks of one deploy.
pub(crate) struct ClusterLock {
    pub(crate) turn: tokio::sync::Mutex<()>,
    /// Members queued for their turn.
    pub(crate) waiting: std::sync::Mutex<Vec<Member>>,
}

/// How long the member the hook puts last waits for the others of the same
/// deploy to queue (the others: a share by their place in the order), and
/// at most how often it lets them go first.
pub(crate) const LAST_GRACE: Duration = Duration::from_secs(2);

pub(crate) const LAST_DEFERRALS: u32 = 1800;

impl ClusterLock {
    /// Waits for this member's turn. A member lets every queued member that
    /// the hook orders before it go first (Patroni: the replicas before the
    /// leader; Valkey: every replica before the primaries), the order asked
    /// afresh at each turn since roles move as members roll. So a deploy
    /// that rolls the whole cluster restarts the replicas first and hands
    /// each leading role over once.
    pub(crate) async fn turn(
        &self,
        hook: &dyn UpdateOrder,
        member: &Member,
        all: &[Member],
    ) -> tokio::sync::MutexGuard<'_, ()> {
        let rank = |idx: &[usize], m: &Member| idx.iter().position(|&i| all.get(i) == Some(m));
        // The later in the order, the longer it waits for the others of the
        // same deploy to queue (the last: LAST_GRACE), so they queue in order.
        let idx = hook.order(all).await;
        if let Some(r) = rank(&idx, member).filter(|&r| r > 0 && all.len() > 1) {
            let steps = u32::try_from(all.len() - 1).unwrap_or(u32::MAX);
            tokio::time::sleep(LAST_GRACE * u32::try_from(r).unwrap_or(u32::MAX) / steps).await;
        }
        let queued = || self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Queued from here until it returns, deferring included, so a
        // member that lets others go first is never passed over itself.
        queued().push(member.clone());
        let mut deferred = 0;
        let guard = loop {
            let guard = self.turn.lock().await;
            if deferred < LAST_DEFERRALS {
                let others: Vec<Member> = queued().iter().filter(|m| *m != member).cloned().collect();
                if !others.is_empty() {
                    let idx = hook.order(all).await;
                    let mine = rank(&idx, member);
                    if others
                        .iter()
                        .any(|q| rank(&idx, q).zip(mine).is_some_and(|(a, b)| a < b))
                    {
                        drop(guard);
                        deferred += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            break guard;
        };
        let mut q = queued();
        if let Some(i) = q.iter().position(|m| m == member) {
            q.remove(i);
        }
        drop(q);
        guard
    }
}

pub(crate) fn cluster_lock(cluster: &str) -> std::sync::Arc<ClusterLock> {
    static LOCKS: std::sync::LazyLock<std::sync::Mutex<BTreeMap<String, std::sync::Arc<ClusterLock>>>> =
        std::sync::LazyLock::new(Default::default);
    LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(cluster.to_owned())
        .or_insert_with(|| {
            std::sync::Arc::new(ClusterLock {
                turn: tokio::sync::Mutex::new(()),
                waiting: std::sync::Mutex::new(Vec::new()),
            })
        })
        .clone()
}

impl Coordinator {
    /// [`Self::roll`] for a stateful cluster with an update-order hook
    /// (`infra.update-order` label): one member at a time in the hook's
    /// order, `before_restart` before its desired state changes,
    /// `ready_for_next` after it is healthy on the target spec. Any failure
    /// stops the roll (whatever `failure_action` says afterwards), so the
    /// members not yet touched keep the cluster serving.
    ///
    /// Members of one cluster written as separate services (`pg-0`..`pg-2`)
    /// are rolled by separate calls; a per-cluster lock keeps them one at a
    /// time, and the member the hook puts last (Patroni's leader) lets the
    /// others that are queued go first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn roll_members(
        &self,
        r: &Reporter<'_>,
        hook: &dyn UpdateOrder,
        new: &ServiceSpec,
        old: &ServiceSpec,
        counts: &BTreeMap<String, u32>,
        from_k: usize,
        to_k: usize,
        policy: &UpdatePolicy,
        deadline: Duration,
    ) -> RollEnd {
        let spec = if to_k >= from_k { new } else { old };
        let cluster = infra_products::cluster_from(&spec.labels).unwrap_or_else(|| hook.kind().to_owned());
        let hash = infra_proto::spec::spec_hash(spec);
        let base = slots(counts);
        let mut order: Vec<Slot> = base[..from_k.min(to_k)].to_vec();
        let range: Vec<Slot> = base[from_k.min(to_k)..from_k.max(to_k)].to_vec();
        let all = self.cluster_members(&cluster, hook.default_port()).await;
        let mine: Vec<Member> = range
            .iter()
            .map(|s| {
                all.iter()
                    .find(|m| m.host == s.host && m.replica == s.replica && m.name == r.name)
                    .cloned()
                    .unwrap_or_else(|| Member {
                        name: r.name.to_owned(),
                        host: s.host.clone(),
                        replica: s.replica,
                        addr: String::new(),
                        port: 0,
                    })
            })
            .collect();
        let idx = hook.order(&mine).await;
        let ranked: Vec<Slot> = idx.iter().filter_map(|&i| range.get(i).cloned()).collect();
        // Going back, the members move back in the hook's order too; the
        // store's `updated` prefix then holds them in reverse, so the one
        // moving back is always the last of the prefix.
        let forward = to_k >= from_k;
        if forward {
            order.extend(ranked.iter().cloned());
        } else {
            order.extend(ranked.iter().rev().cloned());
        }
        order.extend(base[from_k.max(to_k)..].iter().cloned());
        let (lo, hi) = (from_k.min(to_k), from_k.max(to_k));
        let lock = cluster_lock(&cluster);
        let batches = ranked.len();
        for (i, slot) in ranked.iter().enumerate() {
            let member = mine
                .iter()
                .find(|m| m.host == slot.host && m.replica == slot.replica)
                .cloned()
                .expect("one member per slot");
            let (at, next) = if forward {
                (lo + i, lo + i + 1)
            } else {
                (hi - i, hi - i - 1)
            };
            let _turn = lock.turn(hook, &member, &all).await;
            let all = self.cluster_members(&cluster, hook.default_port()).await;
            let which = format!("{} replica {} ({})", slot.host, slot.replica, member.name);
            let stop = |why: String, at: usize| RollEnd::Failed {
                at,
                why: format!("{which}: {why}"),
            };
            if let Err(e) = hook.before_restart(&member, &all).await {
                return stop(e.0, at);
            }
            if let Err(why) = self
                .move_slots(r, new, old, counts, &order, next, std::slice::from_ref(slot), policy)
                .await
            {
                return stop(why, at);
            }
            let bad = self
                .wait_slots(
                    r.tier,
                    r.name,
                    std::slice::from_ref(slot),
                    &hash,
                    deadline,
                    secs(policy.monitor.as_ref()),
                )
                .await;
            if !bad.is_empty() {
                return stop(bad.join("; "), next);
            }
            if let Err(e) = hook.ready_for_next(&member, &all, deadline).await {
                return stop(e.0, next);
            }
            let (phase, verb) = if forward {
                (api::Phase::Updating, "on the new spec")
            } else {
                (api::Phase::RollingBack, "back on the previous spec")
            };
            let msg = format!("member {} of {batches}: {which} {verb} and caught up", i + 1);
            r.send(phase, which.clone(), msg.clone()).await;
            self.note_progress(r, next, 0).await;
            self.coordinator_event(EventKind::RolloutBatchDone, r, msg).await;
        }
        RollEnd::Done
    }

    /// The members of `cluster`: every replica of every service whose
    /// desired spec names it, at its host's private address and the port
    /// the hook talks to as published there.
    pub(crate) async fn cluster_members(&self, cluster: &str, default_port: u16) -> Vec<Member> {
        let desired = self.bus().list_desired(None).await.unwrap_or_default();
        let beats = self.bus().list_heartbeats().await.unwrap_or_default();
        let mut out = Vec::new();
        for d in desired.iter().filter(|d| !d.absent) {
            let Some(s) = &d.spec else { continue };
            if infra_products::cluster_from(&s.labels).as_deref() != Some(cluster) {
                continue;
            }
            let target = infra_products::port_from(&s.labels, default_port);
            let port = s
                .ports
                .iter()
                .find(|p| p.target == u32::from(target) && p.published != 0)
                .map_or(target, |p| u16::try_from(p.published).unwrap_or(target));
            let addr = beats
                .iter()
                .filter(|b| b.host == d.host)
                .find_map(|b| b.labels.get(ADDR_LABEL).filter(|a| !a.is_empty()).cloned())
                .unwrap_or_else(|| "127.0.0.1".into());
            for replica in 1..=s.replicas.max(1) {
                out.push(Member {
                    name: s.name.clone(),
                    host: d.host.clone(),
                    replica,
                    addr: addr.clone(),
                    port,
                });
            }
        }
        out.sort_by(|a, b| (&a.name, a.replica).cmp(&(&b.name, b.replica)));
        out
    }
}
