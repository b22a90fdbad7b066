//! Dependents follow a move: when host loss or a drain starts a service on
//! other hosts, every service that reaches it across hosts by name (an
//! `extra_hosts` entry `name:@host:<host>`, see `reach.rs`) is pointed at
//! where it runs now. Its spec changes, so its operator makes its
//! containers again with the new address.
//!
//! # Guarantees
//! - Only the entries naming the moved service change: the rest of each
//!   dependent's spec is the one it runs (no newer catalog rolls in).
//! - A dependent now on a host of the moved service loses the entry (the
//!   engine's DNS finds it there); one on another host gets the entry for
//!   the first of the service's hosts.

use std::collections::BTreeMap;

use infra_proto::bus::v1::{DesiredService, EventKind, ServiceSpec};
use infra_proto::reach::HostRef;

use crate::coordinator::Coordinator;

/// The `extra_hosts` of `spec`, on `host`, with `service` (running on
/// `hosts`) reached where it runs now; `None` when nothing changes.
pub(crate) fn followed(spec: &ServiceSpec, host: &str, service: &str, hosts: &[String]) -> Option<Vec<String>> {
    let depends = spec.depends_on.iter().any(|d| d.service == service);
    let had: Vec<&String> = spec
        .extra_hosts
        .iter()
        .filter(|e| HostRef::parse(e).is_some_and(|r| r.name == service))
        .collect();
    if !depends && had.is_empty() {
        return None;
    }
    let mut out: Vec<String> = spec
        .extra_hosts
        .iter()
        .filter(|e| HostRef::parse(e).is_none_or(|r| r.name != service))
        .cloned()
        .collect();
    if !hosts.iter().any(|h| h == host)
        && let Some(to) = hosts.first()
    {
        out.push(HostRef::new(service, to).entry());
    }
    (out != spec.extra_hosts).then_some(out)
}

impl Coordinator {
    /// Points every dependent of `service` at `hosts`, where it runs after
    /// a move (see the module docs). Returns the dependents rewritten, as
    /// `name on host`.
    pub(crate) async fn follow_move(
        &self,
        service: &str,
        hosts: &BTreeMap<String, u32>,
        deployment: &str,
    ) -> Vec<String> {
        let hosts: Vec<String> = hosts.iter().filter(|(_, n)| **n > 0).map(|(h, _)| h.clone()).collect();
        if hosts.is_empty() {
            return Vec::new();
        }
        let Ok(desired) = self.bus().list_desired(None).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for d in desired.iter().filter(|d| !d.absent) {
            let Some(spec) = d.spec.as_ref().filter(|s| s.name != service) else {
                continue;
            };
            let Some(extra) = followed(spec, &d.host, service, &hosts) else {
                continue;
            };
            let mut spec = spec.clone();
            spec.extra_hosts = extra;
            let mut previous = d.previous.clone();
            if let Some(p) = previous.as_mut()
                && let Some(e) = followed(p, &d.host, service, &hosts)
            {
                p.extra_hosts = e;
            }
            let next = DesiredService {
                spec: Some(spec.clone()),
                previous,
                generation: d.generation + 1,
                deployment_id: deployment.to_owned(),
                ..d.clone()
            };
            let what = format!("{} on {} reaches {service} on {}", spec.name, d.host, hosts.join(", "));
            self.write_or_log(&format!("desired state of {} on {}", spec.name, d.host), || {
                self.bus().put_desired(&next)
            })
            .await;
            self.event(
                EventKind::ServiceMoved,
                &spec.name,
                &spec.tier,
                deployment,
                what.clone(),
            )
            .await;
            out.push(what);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use infra_proto::bus::v1::DependencySpec;

    use super::*;

    fn client(extra: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: "client".into(),
            depends_on: vec![DependencySpec {
                service: "api".into(),
                ..Default::default()
            }],
            extra_hosts: extra.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_dependent_is_pointed_at_the_new_host_and_keeps_its_other_entries() {
        let s = client(&["api:@host:h2", "db:@host:h3", "static:10.0.0.9"]);
        let e = followed(&s, "h1", "api", &["h4".into()]).unwrap();
        assert_eq!(e, ["db:@host:h3", "static:10.0.0.9", "api:@host:h4"]);
        // Now beside it: the engine's DNS finds it, the entry goes.
        let e = followed(&s, "h4", "api", &["h4".into()]).unwrap();
        assert_eq!(e, ["db:@host:h3", "static:10.0.0.9"]);
        // Was beside it, now elsewhere: the entry comes.
        let e = followed(&client(&[]), "h1", "api", &["h2".into()]).unwrap();
        assert_eq!(e, ["api:@host:h2"]);
        // Already right, or not a dependent: nothing to write.
        assert_eq!(followed(&client(&["api:@host:h2"]), "h1", "api", &["h2".into()]), None);
        let other = ServiceSpec {
            name: "other".into(),
            ..Default::default()
        };
        assert_eq!(followed(&other, "h1", "api", &["h2".into()]), None);
    }
}
