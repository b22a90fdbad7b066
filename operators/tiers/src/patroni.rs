//! The data tier's Patroni status: every few seconds the data operator asks
//! each Patroni member on its host (`GET /cluster` on the member's REST
//! API, at this host's private address and the port published there) for
//! its role, state, timeline and lag, and publishes them as a heartbeat
//! fact `member.<service>` = `patroni: <role> <state> timeline <t> lag <l>`
//! ([`members::STATE_FACT_PREFIX`]), which the coordinator's `GetStatus`
//! shows in the member's row.
//!
//! Why facts: they already travel in every heartbeat and expire with it,
//! so a member whose operator is gone shows nothing stale; no new bus
//! payload is needed.
//!
//! Members are the services on this host whose spec carries the label
//! `infra.update-order: patroni` (the label the member-aware rollout
//! reads). Without an `addr` label (one host) the REST port is not
//! published and nothing is reported.

use std::collections::BTreeSet;
use std::time::Duration;

use operator_core::members::{self, Member, patroni};
use operator_core::{Extension, TierContext};

/// How often the members are asked.
const EVERY: Duration = Duration::from_secs(5);

/// This tier's Patroni extension.
pub const EXTENSIONS: &[Extension] = &[status];

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

async fn run(ctx: TierContext) {
    let mut shown: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut now = BTreeSet::new();
        let addr = ctx.labels.get("addr").filter(|a| !a.is_empty()).cloned();
        let desired = ctx
            .bus
            .list_desired(Some((&ctx.host, ctx.tier)))
            .await
            .unwrap_or_default();
        for d in desired.iter().filter(|d| !d.absent) {
            let Some(s) = &d.spec else { continue };
            if s.labels.get(members::ORDER_LABEL).map(String::as_str) != Some("patroni") {
                continue;
            }
            let Some(addr) = &addr else { continue };
            let target = members::port_from(&s.labels, 8008);
            let Some(port) = s
                .ports
                .iter()
                .find(|p| p.target == u32::from(target) && p.published != 0)
                .and_then(|p| u16::try_from(p.published).ok())
            else {
                continue;
            };
            let me = Member {
                name: s.name.clone(),
                host: ctx.host.clone(),
                replica: 1,
                addr: addr.clone(),
                port,
            };
            let line = match patroni::cluster(std::slice::from_ref(&me)).await {
                Ok(view) => view
                    .iter()
                    .find(|m| m.name == s.name)
                    .map_or_else(|| "not a member of its cluster".to_string(), describe),
                Err(e) => format!("unreachable: {}", e.0),
            };
            let key = format!("{}{}", members::STATE_FACT_PREFIX, s.name);
            ctx.facts.set(&key, format!("patroni: {line}"));
            now.insert(key);
        }
        for gone in shown.difference(&now) {
            ctx.facts.remove(gone);
        }
        shown = now;
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
}
