//! `UpgradeOperators` (`infractl hosts upgrade`): a new operators image
//! rolled over the hosts one at a time. The coordinator only sequences:
//! it asks one operator of a host over the bus, and that host replaces
//! its own install container (`operator_core::upgrade`); the roll goes on
//! once every tier of the host heartbeats again, from the new image, and
//! stops at the first host that does not.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use infra_proto::bus::v1::{EventKind, Heartbeat, OperatorsUpgrade};
use infra_proto::coordinator::v1 as api;

use crate::Coordinator;
use crate::coordinator::ProgressTx;
use crate::error::Error;

/// The host label that names the image a host's operators run from.
const IMAGE_LABEL: &str = "operator_image";

fn started(hb: &Heartbeat) -> (i64, i32) {
    hb.started_at.as_ref().map_or((0, 0), |t| (t.seconds, t.nanos))
}

impl Coordinator {
    /// Rolls `req.image` over the hosts (see the module docs).
    pub async fn upgrade_operators(&self, req: api::UpgradeOperatorsRequest, tx: ProgressTx) -> Result<(), Error> {
        if req.image.trim().is_empty() {
            return Err(Error::invalid("image: name the new operators image"));
        }
        let deployment = nuid::next().to_string();
        let send = |host: &str, phase: api::Phase, message: String| {
            let tx = tx.clone();
            let line = api::DeployProgress {
                deployment_id: deployment.clone(),
                host: host.to_owned(),
                phase: phase as i32,
                message,
                time: Some(infra_proto::now()),
                ..Default::default()
            };
            async move {
                let _ = tx.send(Ok(line)).await;
            }
        };
        let beats = self.heartbeats().await?;
        let mut tiers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for b in &beats {
            tiers.entry(b.host.clone()).or_default().insert(b.tier.clone());
        }
        let hosts: Vec<String> = if req.hosts.is_empty() {
            tiers.keys().cloned().collect()
        } else {
            for h in &req.hosts {
                if !tiers.contains_key(h) {
                    return Err(Error::not_found(format!("hosts: no operator of {h:?} heartbeats")));
                }
            }
            req.hosts.clone()
        };
        let limit = Duration::from_secs(if req.timeout_seconds > 0 {
            u64::from(req.timeout_seconds)
        } else {
            120
        });
        let mut done: Vec<String> = Vec::new();
        for host in &hosts {
            let on: Vec<&Heartbeat> = beats.iter().filter(|b| &b.host == host).collect();
            if on.iter().all(|b| b.labels.get(IMAGE_LABEL) == Some(&req.image)) {
                send(host, api::Phase::Ready, format!("already on {}", req.image)).await;
                continue;
            }
            let before: BTreeMap<String, (i64, i32)> = on.iter().map(|b| (b.tier.clone(), started(b))).collect();
            let ask_tier = on[0].tier.clone();
            let t0 = Instant::now();
            send(
                host,
                api::Phase::Updating,
                format!("the {ask_tier} operator restarts the operators on {}", req.image),
            )
            .await;
            let stop = |why: String| {
                let upgraded = if done.is_empty() {
                    "none".to_owned()
                } else {
                    done.join(", ")
                };
                Error::precondition(format!(
                    "host {host}: {why}; the roll stops here (upgraded: {upgraded}; not asked: the hosts after {host})"
                ))
            };
            let ask = OperatorsUpgrade {
                image: req.image.clone(),
                container: String::new(),
            };
            match self
                .bus
                .upgrade_operators(host, &ask_tier, &ask, Duration::from_secs(330))
                .await
            {
                Ok(r) if r.error.is_empty() => {}
                Ok(r) => {
                    send(host, api::Phase::Failed, r.error.clone()).await;
                    return Err(stop(r.error));
                }
                Err(e) => {
                    send(host, api::Phase::Failed, e.to_string()).await;
                    return Err(stop(e.to_string()));
                }
            }
            // Back: every tier heartbeats from a new process on the image.
            let want = &tiers[host];
            let back = loop {
                let now = self.heartbeats().await.unwrap_or_default();
                let fresh: BTreeSet<String> = now
                    .iter()
                    .filter(|b| &b.host == host)
                    .filter(|b| b.labels.get(IMAGE_LABEL) == Some(&req.image))
                    .filter(|b| before.get(&b.tier).is_none_or(|s| started(b) > *s))
                    .map(|b| b.tier.clone())
                    .collect();
                if fresh.is_superset(want) {
                    break true;
                }
                if t0.elapsed() > limit {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            if !back {
                let why = format!(
                    "its operators did not heartbeat from {} within {}s (the host's helper puts the previous ones \
                     back when the new ones do not keep running)",
                    req.image,
                    limit.as_secs()
                );
                send(host, api::Phase::Failed, why.clone()).await;
                return Err(stop(why));
            }
            let took = t0.elapsed();
            send(
                host,
                api::Phase::Ready,
                format!(
                    "on {} in {:.1}s ({})",
                    req.image,
                    took.as_secs_f64(),
                    want.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
            .await;
            done.push(format!("{host} {:.1}s", took.as_secs_f64()));
        }
        let summary = format!(
            "operators on {}: {}",
            req.image,
            if done.is_empty() {
                "nothing to do".to_owned()
            } else {
                done.join(", ")
            }
        );
        self.event(EventKind::OperatorsUpgraded, "", "", &deployment, summary.clone())
            .await;
        send("", api::Phase::Done, summary).await;
        Ok(())
    }
}
