//! The data tier's Patroni status: every few seconds the data operator asks
//! each Patroni member on its host (`GET /cluster` on the member's REST
//! API, at this host's private address and the port published there) for
//! its role, state, timeline and lag, and publishes them as a heartbeat
//! fact `member.<service>` = `patroni: <role> <state> timeline <t> lag <l>`
//! ([`infra_bus::facts::MEMBER_PREFIX`]), which the coordinator's `GetStatus`
//! shows in the member's row.
//!
//! Why facts: they already travel in every heartbeat and expire with it,
//! so a member whose operator is gone shows nothing stale; no new bus
//! payload is needed.
//!
//! Leader changes: the same loop remembers each cluster's leader (and
//! timeline) as this host's members see it; when a later view names
//! another leader, and that leader is a member on this host, the operator
//! publishes one `member_leader_changed` event (service: the new leader;
//! reason: cluster, old and new leader, timeline, failover or switchover).
//! Only the new leader's host says it, so a change is told once, not once
//! per host; a host that just started has no previous leader and says
//! nothing. A failover is a change whose old leader is no longer listed
//! in the cluster (its DCS session expired with its host); after a
//! switchover the old leader is still a member.
//!
//! Members are the services on this host whose spec carries the label
//! `infra.update-order: patroni` (the label the member-aware rollout
//! reads). Without an `addr` label (one host) the REST port is not
//! published and nothing is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use infra_products::patroni;
use infra_proto::bus::v1::EventKind;

use crate::data::member_facts;
use operator_core::{Extension, TierContext};

/// How often the members are asked (also how soon a new leader is told).
const EVERY: Duration = Duration::from_secs(2);

/// This tier's Patroni extension.
pub const REPORT: Extension = status;

fn status(ctx: TierContext) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(run(ctx))
}

/// One line for a member as `/cluster` lists it.
pub fn describe(m: &patroni::ClusterMember) -> String {
    let mut out = format!("{} {}", m.role, m.state);
    if let Some(t) = m.timeline {
        out += &format!(" timeline {t}");
    }
    if !m.is_leader() {
        match m.lag_bytes() {
            Some(l) => out += &format!(" lag {l}"),
            None => out += " lag unknown",
        }
    }
    out
}

/// A cluster's leader as one view shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The leading member's name.
    pub name: String,
    /// Its timeline, when Patroni says.
    pub timeline: Option<u64>,
}

/// The running leader of a `/cluster` view, if it has one.
pub fn leader_of(view: &[patroni::ClusterMember]) -> Option<Leader> {
    view.iter()
        .find(|m| m.is_leader() && m.state == "running")
        .map(|m| Leader {
            name: m.name.clone(),
            timeline: m.timeline,
        })
}

/// A new leader of one cluster, between two views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderChange {
    /// The cluster (its `infra.update-order.cluster` label).
    pub cluster: String,
    /// Who led before.
    pub old: String,
    /// Who leads now.
    pub new: String,
    /// The new leader's timeline.
    pub timeline: Option<u64>,
    /// The old leader is gone from the cluster (not a switchover).
    pub failover: bool,
}

impl LeaderChange {
    /// The event's reason.
    pub fn reason(&self) -> String {
        let how = if self.failover {
            format!("failover ({} is no longer a member)", self.old)
        } else {
            format!("switchover ({} is still a member)", self.old)
        };
        let timeline = self.timeline.map_or_else(|| "unknown".to_string(), |t| t.to_string());
        format!(
            "cluster {}: leader {} -> {} by {how}, timeline {timeline}",
            self.cluster, self.old, self.new
        )
    }
}

/// Whether `view` shows another leader than `before`, settled: a new
/// leader's timeline is past the old one (Patroni updates a promoted
/// member's timeline on its next cycle, so a view right after the
/// promotion may still show the old one; the change is told then).
pub fn leader_change(cluster: &str, before: &Leader, view: &[patroni::ClusterMember]) -> Option<LeaderChange> {
    let now = leader_of(view)?;
    if now.name == before.name {
        return None;
    }
    if let (Some(t), Some(b)) = (now.timeline, before.timeline)
        && t <= b
    {
        return None;
    }
    Some(LeaderChange {
        cluster: cluster.to_owned(),
        old: before.name.clone(),
        new: now.name,
        timeline: now.timeline,
        failover: !view.iter().any(|m| m.name == before.name),
    })
}

async fn run(ctx: TierContext) {
    let mut shown = member_facts::Shown::default();
    // Each cluster's leader as last seen from this host.
    let mut leaders: BTreeMap<String, Leader> = BTreeMap::new();
    loop {
        let mut lines = Vec::new();
        // This round's view of each cluster, and its members on this host.
        let mut views: BTreeMap<String, (Vec<patroni::ClusterMember>, BTreeSet<String>)> = BTreeMap::new();
        for (labels, me) in member_facts::local(&ctx, "patroni", 8008).await {
            let line = match patroni::cluster(std::slice::from_ref(&me)).await {
                Ok(view) => {
                    let line = view
                        .iter()
                        .find(|m| m.name == me.name)
                        .map_or_else(|| "not a member of its cluster".to_string(), describe);
                    let cluster = infra_products::cluster_from(&labels).unwrap_or_else(|| "patroni".into());
                    let entry = views.entry(cluster).or_default();
                    entry.1.insert(me.name.clone());
                    // The first member's view with a leader stands for the cluster.
                    if leader_of(&entry.0).is_none() {
                        entry.0 = view;
                    }
                    line
                }
                Err(e) => format!("unreachable: {}", e.0),
            };
            lines.push((me.name, line));
        }
        shown.publish(&ctx.facts, "patroni", lines);
        for (cluster, (view, mine)) in views {
            let Some(current) = leader_of(&view) else { continue };
            if let Some(before) = leaders.get(&cluster)
                && before.name != current.name
            {
                let Some(change) = leader_change(&cluster, before, &view) else {
                    // Not settled yet: keep the old leader, ask again.
                    continue;
                };
                if mine.contains(&change.new) {
                    let reason = change.reason();
                    tracing::info!(cluster = %cluster, leader = %change.new, "{reason}");
                    ctx.reconcile
                        .events
                        .emit(EventKind::MemberLeaderChanged, &change.new, "", 0, reason)
                        .await;
                }
            }
            leaders.insert(cluster, current);
        }
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(json: &str) -> patroni::ClusterMember {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_member_is_described_by_role_state_timeline_and_lag() {
        let r = member(r#"{"name":"pg-1","role":"replica","state":"streaming","timeline":2,"lag":0}"#);
        assert_eq!(describe(&r), "replica streaming timeline 2 lag 0");
        let l = member(r#"{"name":"pg-0","role":"leader","state":"running","timeline":2}"#);
        assert_eq!(describe(&l), "leader running timeline 2");
        let s = member(r#"{"name":"pg-2","role":"replica","state":"stopped","lag":"unknown"}"#);
        assert_eq!(describe(&s), "replica stopped lag unknown");
    }

    fn view(json: &str) -> Vec<patroni::ClusterMember> {
        serde_json::from_str(json).unwrap()
    }

    fn was(name: &str) -> Leader {
        Leader {
            name: name.into(),
            timeline: Some(1),
        }
    }

    #[test]
    fn a_new_leader_whose_old_leader_is_gone_is_a_failover() {
        let v = view(
            r#"[{"name":"pg-1","role":"leader","state":"running","timeline":2},
                {"name":"pg-2","role":"replica","state":"streaming","timeline":2,"lag":0}]"#,
        );
        let c = leader_change("pg-cluster", &was("pg-0"), &v).unwrap();
        assert_eq!(
            c,
            LeaderChange {
                cluster: "pg-cluster".into(),
                old: "pg-0".into(),
                new: "pg-1".into(),
                timeline: Some(2),
                failover: true,
            }
        );
        assert_eq!(
            c.reason(),
            "cluster pg-cluster: leader pg-0 -> pg-1 by failover (pg-0 is no longer a member), timeline 2"
        );
    }

    #[test]
    fn a_new_leader_whose_old_leader_is_still_a_member_is_a_switchover() {
        let v = view(
            r#"[{"name":"pg-0","role":"replica","state":"stopped","lag":"unknown"},
                {"name":"pg-1","role":"leader","state":"running","timeline":3}]"#,
        );
        let c = leader_change("pg-cluster", &was("pg-0"), &v).unwrap();
        assert!(!c.failover);
        assert!(
            c.reason()
                .contains("by switchover (pg-0 is still a member), timeline 3"),
            "{}",
            c.reason()
        );
    }

    #[test]
    fn the_same_leader_or_no_running_leader_is_no_change() {
        let same = view(r#"[{"name":"pg-0","role":"leader","state":"running","timeline":1}]"#);
        assert_eq!(leader_change("c", &was("pg-0"), &same), None);
        // Mid-election: nobody leads yet; the change is told once someone does.
        let none = view(r#"[{"name":"pg-1","role":"replica","state":"running","lag":0}]"#);
        assert_eq!(leader_change("c", &was("pg-0"), &none), None);
        // Just promoted, its timeline not updated yet: told on a later view.
        let stale = view(r#"[{"name":"pg-1","role":"leader","state":"running","timeline":1}]"#);
        assert_eq!(leader_change("c", &was("pg-0"), &stale), None);
    }
}
