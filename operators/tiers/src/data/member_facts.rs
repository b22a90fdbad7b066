//! What the data tier's member-status extensions (Patroni's, Valkey's)
//! share: finding this host's members of one kind, and publishing one
//! heartbeat fact per member (`member.<service>` =
//! `<kind>: <line>`, [`infra_bus::facts::MEMBER_PREFIX`]) that goes away when
//! the member does.

use std::collections::{BTreeMap, BTreeSet};

use infra_products::Member;
use operator_core::{Facts, TierContext};

/// The members on this host whose spec carries `infra.update-order:
/// <kind>`, each with its labels, at this host's private address and the
/// port published there for its hook's port (the label
/// `infra.update-order.port`, else `default_port`). Without an `addr`
/// label (one host) nothing is published, so there are none.
pub async fn local(ctx: &TierContext, kind: &str, default_port: u16) -> Vec<(BTreeMap<String, String>, Member)> {
    let Some(addr) = ctx.labels.get(infra_bus::facts::ADDR).filter(|a| !a.is_empty()) else {
        return Vec::new();
    };
    let desired = ctx
        .bus
        .list_desired(Some((&ctx.host, ctx.tier)))
        .await
        .unwrap_or_default();
    let mut out = Vec::new();
    for d in desired.iter().filter(|d| !d.absent) {
        let Some(s) = &d.spec else { continue };
        if s.labels.get(infra_products::ORDER_LABEL).map(String::as_str) != Some(kind) {
            continue;
        }
        let target = infra_products::port_from(&s.labels, default_port);
        let Some(port) = s
            .ports
            .iter()
            .find(|p| p.target == u32::from(target) && p.published != 0)
            .and_then(|p| u16::try_from(p.published).ok())
        else {
            continue;
        };
        out.push((
            s.labels.clone(),
            Member {
                name: s.name.clone(),
                host: ctx.host.clone(),
                replica: 1,
                addr: addr.clone(),
                port,
            },
        ));
    }
    out
}

/// The member facts one extension has published.
#[derive(Debug, Default)]
pub struct Shown(BTreeSet<String>);

impl Shown {
    /// Publishes this round's `(service, line)` as `member.<service>` =
    /// `<kind>: <line>` and removes the facts of members not in it.
    pub fn publish(&mut self, facts: &Facts, kind: &str, lines: Vec<(String, String)>) {
        let mut now = BTreeSet::new();
        for (service, line) in lines {
            let key = format!("{}{service}", infra_bus::facts::MEMBER_PREFIX);
            facts.set(&key, format!("{kind}: {line}"));
            now.insert(key);
        }
        for gone in self.0.difference(&now) {
            facts.remove(gone);
        }
        self.0 = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_fact_goes_when_the_member_does() {
        let facts = Facts::default();
        let mut shown = Shown::default();
        shown.publish(
            &facts,
            "valkey",
            vec![
                ("a".into(), "primary running".into()),
                ("b".into(), "replica down".into()),
            ],
        );
        assert_eq!(facts.snapshot()["member.a"], "valkey: primary running");
        shown.publish(&facts, "valkey", vec![("b".into(), "replica streaming".into())]);
        let now = facts.snapshot();
        assert!(!now.contains_key("member.a"), "{now:?}");
        assert_eq!(now["member.b"], "valkey: replica streaming");
    }
}
