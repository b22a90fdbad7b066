//! Kafka's update order (what Strimzi's KafkaRoller does): one broker at a
//! time, never one whose absence would take a partition below its
//! `min.insync.replicas`, each back in every ISR it belongs to before the
//! next, the active controller last.
//!
//! Everything goes through the Confluent REST Proxy v3 admin API that the
//! catalog ships (`kafka-rest-proxy`, port 8082), a documented HTTP API
//! over Kafka's own admin client:
//!
//! - `GET /v3/clusters`: the cluster id and its `controller` link
//!   (`.../brokers/{id}`);
//! - `GET /v3/clusters/{id}/brokers`: which brokers are registered, with
//!   their advertised `host`;
//! - `GET /v3/clusters/{id}/brokers/{b}/partition-replicas`: every replica
//!   broker `b` holds, with `is_in_sync` and `is_leader`;
//! - `GET /v3/clusters/{id}/topics/{t}/partitions/{p}/replicas`: the ISR of
//!   one partition;
//! - `GET /v3/clusters/{id}/topics/{t}/configs/min.insync.replicas`: the
//!   topic's effective value (the broker default when the topic sets none,
//!   as the config's `source` says).
//!
//! Kafka cannot run on the machines this project is built on (no image can
//! be pulled and Debian has no Kafka), so this hook is tested against a fake
//! REST Proxy that answers with the documented response shapes, not against
//! a real cluster.
//!
//! # Members and broker ids
//!
//! A member is a broker service (`kafka-1`..`kafka-3`). Its broker id is the
//! registered broker whose advertised `host` is the service name (the
//! catalog advertises `PLAINTEXT://kafka-N:9092`, `hostname: kafka-N`), or
//! a fully qualified name starting with it. Where brokers advertise
//! something else, the label [`BROKERS_LABEL`] maps names to ids
//! (`infra.update-order.kafka-brokers: kafka-1=1,kafka-2=2,kafka-3=3`, the
//! members' `KAFKA_NODE_ID`s), on every broker service.
//!
//! # Where the REST Proxy is
//!
//! The label [`REST_PROXY_LABEL`] lists REST Proxy addresses the
//! coordinator can reach (`10.0.0.5:8082`, several comma separated, tried in
//! turn). Without it, the hook asks a REST Proxy at each member host's
//! private address on the port `infra.update-order.port` names (set it to
//! `"8082"`, the default), for a deployment that runs
//! one REST Proxy per broker host publishing there.
//!
//! The catalog's `05-messaging/kafka` does not carry these labels: its REST
//! Proxy publishes no port, so a coordinator could not reach it. Label the
//! brokers `infra.update-order: kafka` once one is reachable.
//!
//! # Assumptions
//!
//! - The `controller` the REST Proxy reports is what Kafka's
//!   `DescribeCluster` answers. With ZooKeeper that is the active
//!   controller; in KRaft brokers answer a live broker instead of the
//!   quorum leader (KIP-631), so "controller last" is then only as good as
//!   that answer. Every other gate (ISR, `min.insync.replicas`) holds
//!   either way.
//! - A broker that is not in a partition's ISR does not shrink it by
//!   restarting, so it may go even when that partition is already at its
//!   minimum.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{HookError, HookFuture, Member, UpdateOrder, http};

/// The REST Proxy's port (what `infra.update-order.port` should say).
pub const DEFAULT_PORT: u16 = 8082;
/// Label: `name=id` pairs mapping broker services to broker ids.
pub const BROKERS_LABEL: &str = "infra.update-order.kafka-brokers";
/// Label: `addr:port` of REST Proxies to ask (comma separated).
pub const REST_PROXY_LABEL: &str = "infra.update-order.kafka-rest-proxy";
/// How long one REST call may take.
const CALL: Duration = Duration::from_secs(5);
/// How often to ask again while waiting.
const POLL: Duration = Duration::from_millis(300);
/// At most this many partitions are named in one message.
const NAMED: usize = 5;

/// The Kafka hook; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct Kafka {
    /// REST Proxies to ask; empty: each member's address and port.
    pub proxies: Vec<(String, u16)>,
    /// Broker ids by service name, where advertised hosts do not tell.
    pub broker_ids: BTreeMap<String, i32>,
}

#[derive(Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
}

#[derive(Deserialize)]
struct Related {
    #[serde(default)]
    related: String,
}

#[derive(Deserialize)]
struct ClusterData {
    cluster_id: String,
    #[serde(default)]
    controller: Option<Related>,
}

#[derive(Deserialize)]
struct BrokerData {
    broker_id: i32,
    #[serde(default)]
    host: Option<String>,
}

/// One replica as `.../replicas` and `.../partition-replicas` list it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Replica {
    /// The topic.
    pub topic_name: String,
    /// The partition.
    pub partition_id: i32,
    /// The broker that holds this replica.
    pub broker_id: i32,
    /// Whether it leads the partition.
    #[serde(default)]
    pub is_leader: bool,
    /// Whether it is in the partition's ISR.
    #[serde(default)]
    pub is_in_sync: bool,
}

#[derive(Deserialize)]
struct ConfigData {
    #[serde(default)]
    value: Option<String>,
}

/// What `GET /v3/clusters` and `.../brokers` say.
struct View {
    id: String,
    controller: Option<i32>,
    brokers: Vec<BrokerData>,
}

impl Kafka {
    /// The hook the labels describe; a bad [`BROKERS_LABEL`] or
    /// [`REST_PROXY_LABEL`] is an error naming the label and the entry.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<Self, HookError> {
        let mut k = Kafka::default();
        if let Some(v) = labels.get(BROKERS_LABEL) {
            for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let parsed = entry
                    .split_once('=')
                    .and_then(|(n, id)| Some((n.trim(), id.trim().parse::<i32>().ok()?)))
                    .filter(|(n, _)| !n.is_empty());
                let Some((name, id)) = parsed else {
                    return Err(HookError(format!(
                        "label {BROKERS_LABEL}: {entry:?} is not name=broker-id (kafka-1=1)"
                    )));
                };
                k.broker_ids.insert(name.to_owned(), id);
            }
        }
        if let Some(v) = labels.get(REST_PROXY_LABEL) {
            for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let addr = entry.trim_start_matches("http://").trim_end_matches('/');
                let parsed = addr
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                    .filter(|(h, _)| !h.is_empty());
                let Some(hp) = parsed else {
                    return Err(HookError(format!(
                        "label {REST_PROXY_LABEL}: {entry:?} is not addr:port (10.0.0.5:8082)"
                    )));
                };
                k.proxies.push(hp);
            }
        }
        Ok(k)
    }

    fn endpoints(&self, members: &[Member]) -> Vec<(String, u16)> {
        if !self.proxies.is_empty() {
            return self.proxies.clone();
        }
        let mut out: Vec<(String, u16)> = Vec::new();
        for m in members.iter().filter(|m| !m.addr.is_empty() && m.port != 0) {
            if !out.iter().any(|(a, p)| *a == m.addr && *p == m.port) {
                out.push((m.addr.clone(), m.port));
            }
        }
        out
    }

    /// `GET path` from the first REST Proxy that answers 200 with JSON of
    /// the expected shape, with what each other one said.
    async fn get<T: DeserializeOwned>(&self, members: &[Member], path: &str) -> Result<T, HookError> {
        let mut errors = Vec::new();
        let eps = self.endpoints(members);
        if eps.is_empty() {
            return Err(HookError(format!(
                "no Kafka REST Proxy to ask for {path}: set label {REST_PROXY_LABEL} (addr:port)"
            )));
        }
        for (addr, port) in eps {
            match http(&addr, port, "GET", path, None, CALL).await {
                Ok((200, body)) => match parse_body::<T>(&body) {
                    Ok(v) => return Ok(v),
                    Err(e) => errors.push(format!("{addr}:{port}: not the REST Proxy's JSON ({e})")),
                },
                Ok((code, body)) => errors.push(format!("{addr}:{port} answered {code} {}", short(&body))),
                Err(e) => errors.push(e.0),
            }
        }
        Err(HookError(format!(
            "no Kafka REST Proxy answered GET {path}: {}",
            errors.join("; ")
        )))
    }

    async fn view(&self, members: &[Member]) -> Result<View, HookError> {
        let clusters: List<ClusterData> = self.get(members, "/v3/clusters").await?;
        let Some(c) = clusters.data.into_iter().next() else {
            return Err(HookError("GET /v3/clusters listed no Kafka cluster".into()));
        };
        let controller = c.controller.and_then(|r| {
            r.related
                .rsplit_once("/brokers/")
                .and_then(|(_, id)| id.trim_end_matches('/').parse().ok())
        });
        let brokers: List<BrokerData> = self
            .get(members, &format!("/v3/clusters/{}/brokers", c.cluster_id))
            .await?;
        Ok(View {
            id: c.cluster_id,
            controller,
            brokers: brokers.data,
        })
    }

    /// The broker id of `member`: the label's map, else the registered
    /// broker that advertises the member's name as its host.
    fn broker_id(&self, member: &Member, view: &View) -> Result<i32, HookError> {
        if let Some(id) = self.broker_ids.get(&member.name) {
            return Ok(*id);
        }
        let name = member.name.as_str();
        let found = view.brokers.iter().find(|b| {
            b.host
                .as_deref()
                .is_some_and(|h| h == name || h.strip_prefix(name).is_some_and(|rest| rest.starts_with('.')))
        });
        found.map(|b| b.broker_id).ok_or_else(|| {
            let seen: Vec<String> = view
                .brokers
                .iter()
                .map(|b| format!("{} at {}", b.broker_id, b.host.as_deref().unwrap_or("?")))
                .collect();
            HookError(format!(
                "{name}: no registered Kafka broker advertises host {name} (brokers: {}); map it with label {BROKERS_LABEL} ({name}=<KAFKA_NODE_ID>)",
                if seen.is_empty() { "none".into() } else { seen.join(", ") }
            ))
        })
    }

    async fn replicas_of(&self, members: &[Member], view: &View, broker: i32) -> Result<Vec<Replica>, HookError> {
        let l: List<Replica> = self
            .get(
                members,
                &format!("/v3/clusters/{}/brokers/{broker}/partition-replicas", view.id),
            )
            .await?;
        Ok(l.data)
    }

    async fn min_isr(&self, members: &[Member], view: &View, topic: &str) -> Result<usize, HookError> {
        let c: ConfigData = self
            .get(
                members,
                &format!("/v3/clusters/{}/topics/{topic}/configs/min.insync.replicas", view.id),
            )
            .await?;
        match c.value.as_deref() {
            None => Ok(1),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| HookError(format!("topic {topic}: min.insync.replicas is {v:?}, not a number"))),
        }
    }

    /// Why taking `broker` down now would drop a partition below its
    /// `min.insync.replicas`, one line per partition (empty: it may go).
    async fn would_drop(&self, members: &[Member], view: &View, broker: i32) -> Result<Vec<String>, HookError> {
        let mut why = Vec::new();
        let mut mins: BTreeMap<String, usize> = BTreeMap::new();
        for r in self.replicas_of(members, view, broker).await? {
            if !r.is_in_sync {
                continue;
            }
            let min = match mins.get(&r.topic_name) {
                Some(m) => *m,
                None => {
                    let m = self.min_isr(members, view, &r.topic_name).await?;
                    mins.insert(r.topic_name.clone(), m);
                    m
                }
            };
            let all: List<Replica> = self
                .get(
                    members,
                    &format!(
                        "/v3/clusters/{}/topics/{}/partitions/{}/replicas",
                        view.id, r.topic_name, r.partition_id
                    ),
                )
                .await?;
            let isr: Vec<i32> = all.data.iter().filter(|x| x.is_in_sync).map(|x| x.broker_id).collect();
            let left = isr.iter().filter(|&&b| b != broker).count();
            if left < min {
                why.push(format!(
                    "topic {} partition {} has in-sync replicas {} and min.insync.replicas {min}: without broker {broker} it would have {left}",
                    r.topic_name,
                    r.partition_id,
                    ids(&isr)
                ));
            }
        }
        Ok(why)
    }

    /// Whether `broker` is registered and in every ISR it belongs to, and
    /// if not, why.
    async fn back_in_sync(&self, member: &Member, members: &[Member]) -> Result<(), String> {
        let view = self.view(members).await.map_err(|e| e.0)?;
        let broker = self.broker_id(member, &view).map_err(|e| e.0)?;
        if !view.brokers.iter().any(|b| b.broker_id == broker) {
            return Err(format!("broker {broker} is not registered in the cluster"));
        }
        let out: Vec<String> = self
            .replicas_of(members, &view, broker)
            .await
            .map_err(|e| e.0)?
            .iter()
            .filter(|r| !r.is_in_sync)
            .map(|r| format!("topic {} partition {}", r.topic_name, r.partition_id))
            .collect();
        if out.is_empty() {
            Ok(())
        } else {
            Err(format!("broker {broker} is not in the ISR of {}", named(&out)))
        }
    }
}

impl UpdateOrder for Kafka {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn default_port(&self) -> u16 {
        8082
    }

    fn order<'a>(&'a self, members: &'a [Member]) -> HookFuture<'a, Vec<usize>> {
        Box::pin(async move {
            let mut idx: Vec<usize> = (0..members.len()).collect();
            let Ok(view) = self.view(members).await else {
                return idx;
            };
            let Some(ctl) = view.controller else { return idx };
            // Stable: the others keep their order, the controller goes last.
            idx.sort_by_key(|&i| self.broker_id(&members[i], &view).ok() == Some(ctl));
            idx
        })
    }

    fn before_restart<'a>(
        &'a self,
        member: &'a Member,
        members: &'a [Member],
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let view = self.view(members).await?;
            let broker = self.broker_id(member, &view)?;
            let why = self.would_drop(members, &view, broker).await?;
            if why.is_empty() {
                return Ok(());
            }
            Err(HookError(format!(
                "broker {broker} ({}) must not restart now: {}",
                member.name,
                named(&why)
            )))
        })
    }

    fn ready_for_next<'a>(
        &'a self,
        member: &'a Member,
        members: &'a [Member],
        deadline: Duration,
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let what = format!("{} was not back in every ISR", member.name);
            super::poll_until(&what, deadline, POLL, || self.back_in_sync(member, members)).await
        })
    }
}

/// A response body as JSON ([`http`] has already decoded a chunked one).
pub(crate) fn parse_body<T: DeserializeOwned>(body: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(body)
}

fn ids(v: &[i32]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

fn named(items: &[String]) -> String {
    let mut s = items.iter().take(NAMED).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > NAMED {
        s.push_str(&format!("; and {} more", items.len() - NAMED));
    }
    s
}

fn short(body: &str) -> String {
    let t = body.trim();
    t.chars().take(200).collect()
}

#[cfg(test)]
mod tests;
