//! RabbitMQ's update order: one node at a time, never one whose shutdown
//! would cost a quorum queue its quorum (or a mirrored classic queue its
//! last synchronised mirror), each back in the cluster with every queue
//! member on it online again before the next.
//!
//! Everything goes through the management plugin's HTTP API, at each
//! member host's private address and the port it publishes for
//! `infra.update-order.port` (default `"15672"`):
//!
//! - before a node restarts: `GET /api/nodes` (every node running, no
//!   network partition), then, on that node itself,
//!   `GET /api/health/checks/node-is-quorum-critical` and
//!   `GET /api/health/checks/node-is-mirror-sync-critical` (a 503 names the
//!   queues; a 404, RabbitMQ 4 without mirroring, passes);
//! - after it is healthy on the new spec: `GET /api/nodes` (the node is
//!   back and running, no partition) and `GET /api/queues` (every quorum
//!   queue with a member on that node has all its members `online`; every
//!   mirrored classic queue has all its `slave_nodes` in
//!   `synchronised_slave_nodes`), polled until the deadline.
//!
//! RabbitMQ 3.10 can list a quorum queue's `online` twice in one object,
//! its own view and the statistics database's, and the two disagree for
//! some seconds after a node returns; a member counts as online only when
//! every copy lists it.
//!
//! # Members
//!
//! A member is a node service (`rabbit-0`); its node is the one whose host
//! part is the service name (`rabbit@rabbit-0`, the service's `hostname`).
//!
//! # Credentials
//!
//! The API wants basic auth. The user is the label [`USER_LABEL`] (default
//! `guest`); the password is the Docker secret the label
//! [`PASSWORD_SECRET_LABEL`] names (the service's `RABBITMQ_DEFAULT_PASS`
//! secret), read from the secrets bucket (`infra_secrets`) the coordinator
//! fills at deploy, through the [`Secrets`] the hook is built with (the
//! coordinator's bus). The password is never logged, never put in an
//! error, and its `Debug` is redacted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::kafka::parse_body;
use super::{HookError, HookFuture, Member, Secret, Secrets, UpdateOrder};

/// The management API's port (what `infra.update-order.port` should say).
pub const DEFAULT_PORT: u16 = 15672;
/// Label: the management API user (default `guest`).
pub const USER_LABEL: &str = "infra.update-order.rabbitmq-user";
/// Label: the secret (compose `secrets:` name) holding that user's
/// password.
pub const PASSWORD_SECRET_LABEL: &str = "infra.update-order.rabbitmq-password-secret";
/// How long one API call may take.
const CALL: Duration = Duration::from_secs(5);
/// How often to ask again while waiting.
const POLL: Duration = Duration::from_millis(500);
/// At most this many queues are named in one message.
const NAMED: usize = 5;

/// The RabbitMQ hook; see the module docs.
#[derive(Clone, Debug)]
pub struct RabbitMq {
    /// Management API user.
    pub user: String,
    /// The secret holding its password (`None`: the password is `guest`
    /// unless [`RabbitMq::password`] is set).
    pub password_secret: Option<String>,
    /// The password itself, when known up front (tests); otherwise it is
    /// read from the secret at each call, so a rotated secret is picked up.
    pub password: Option<Secret>,
    /// Where the password is read.
    pub secrets: Secrets,
}

impl RabbitMq {
    /// The hook the labels describe.
    pub fn from_labels(labels: &BTreeMap<String, String>, secrets: &Secrets) -> Result<Self, HookError> {
        let user = labels.get(USER_LABEL).filter(|u| !u.is_empty()).cloned();
        let secret = labels.get(PASSWORD_SECRET_LABEL).filter(|s| !s.is_empty()).cloned();
        if user.as_deref().is_some_and(|u| u.contains(':')) {
            return Err(HookError(format!("label {USER_LABEL}: a user name cannot contain ':'")));
        }
        Ok(Self {
            user: user.unwrap_or_else(|| "guest".into()),
            password_secret: secret,
            password: None,
            secrets: secrets.clone(),
        })
    }

    async fn password(&self) -> Result<Secret, HookError> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        let Some(name) = &self.password_secret else {
            return Ok(Secret("guest".into()));
        };
        self.secrets.read("rabbitmq", name, PASSWORD_SECRET_LABEL).await
    }

    /// `GET path` on one member, with basic auth; the status and body.
    async fn get(&self, m: &Member, path: &str, pw: &Secret) -> Result<(u16, String), HookError> {
        if m.addr.is_empty() || m.port == 0 {
            return Err(HookError(format!(
                "{}: no address known for its management API",
                m.name
            )));
        }
        request(&m.addr, m.port, path, &self.user, pw).await
    }

    /// `GET path` as JSON from the first member that answers 200.
    async fn get_any<T: serde::de::DeserializeOwned>(
        &self,
        members: &[Member],
        path: &str,
        pw: &Secret,
    ) -> Result<T, HookError> {
        let mut errors = Vec::new();
        for m in members {
            match self.get(m, path, pw).await {
                Ok((200, body)) => match parse_body::<T>(&body) {
                    Ok(v) => return Ok(v),
                    Err(e) => errors.push(format!("{}: not the management API's JSON ({e})", m.name)),
                },
                Ok((401, _)) => errors.push(format!(
                    "{}: 401, user {:?} was refused (check {PASSWORD_SECRET_LABEL})",
                    m.name, self.user
                )),
                Ok((code, body)) => errors.push(format!("{}: {code} {}", m.name, short(&body))),
                Err(e) => errors.push(e.0),
            }
        }
        Err(HookError(format!(
            "no RabbitMQ node answered GET {path}: {}",
            errors.join("; ")
        )))
    }

    /// Why the cluster's nodes are not all running and together (empty:
    /// they are), as `GET /api/nodes` says; `want` must be among them.
    async fn nodes_problems(&self, members: &[Member], want: &Member, pw: &Secret) -> Result<Vec<String>, HookError> {
        let nodes: Vec<Node> = self
            .get_any(members, "/api/nodes?columns=name,running,partitions", pw)
            .await?;
        let mut why = Vec::new();
        if !nodes.iter().any(|n| is_node_of(&n.name, &want.name)) {
            why.push(format!(
                "no node of {} (rabbit@{}) is in the cluster",
                want.name, want.name
            ));
        }
        for n in &nodes {
            if !n.running {
                why.push(format!("{} is not running", n.name));
            }
            if !n.partitions.is_empty() {
                why.push(format!("{} is partitioned from {}", n.name, n.partitions.join(", ")));
            }
        }
        Ok(why)
    }

    /// Why queues on `member`'s node are not back in full (empty: they are).
    async fn queue_problems(&self, members: &[Member], member: &Member, pw: &Secret) -> Result<Vec<String>, HookError> {
        let queues: Vec<Pairs> = self
            .get_any(
                members,
                "/api/queues?columns=name,vhost,type,node,members,online,slave_nodes,synchronised_slave_nodes",
                pw,
            )
            .await?;
        let mut why = Vec::new();
        for q in &queues {
            let name = q.text("name");
            let vhost = q.text("vhost");
            let ms = q.names("members");
            if q.text("type") == "quorum" || !ms.is_empty() {
                if !ms.iter().any(|n| is_node_of(n, &member.name)) {
                    continue;
                }
                let copies = q.all_names("online");
                let offline: Vec<&String> = ms
                    .iter()
                    .filter(|n| copies.is_empty() || copies.iter().any(|c| !c.contains(n)))
                    .collect();
                if !offline.is_empty() {
                    why.push(format!(
                        "quorum queue {name} (vhost {vhost}) has {} of {} members online ({} not)",
                        ms.len() - offline.len(),
                        ms.len(),
                        offline.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
                continue;
            }
            let mirrors = q.names("slave_nodes");
            if mirrors.is_empty() {
                continue;
            }
            let synced = q.names("synchronised_slave_nodes");
            let lagging: Vec<&String> = mirrors.iter().filter(|n| !synced.contains(n)).collect();
            if !lagging.is_empty() {
                why.push(format!(
                    "classic queue {name} (vhost {vhost}) has mirrors not synchronised on {}",
                    lagging.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(why)
    }

    /// One of RabbitMQ's health checks on `member`'s own node: `Ok(None)`
    /// when it passes (or the version has no such check).
    async fn check(&self, member: &Member, name: &str, pw: &Secret) -> Result<Option<String>, HookError> {
        let path = format!("/api/health/checks/{name}");
        let (code, body) = self.get(member, &path, pw).await?;
        match code {
            200 | 404 => Ok(None),
            503 => {
                let doc: Check = parse_body(&body).unwrap_or_default();
                let qs: Vec<String> = doc
                    .queues
                    .iter()
                    .map(|q| format!("{} (vhost {})", q.name, q.virtual_host))
                    .collect();
                Ok(Some(format!(
                    "{name}: {}{}",
                    if doc.reason.is_empty() { "failed" } else { &doc.reason },
                    if qs.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", named(&qs))
                    }
                )))
            }
            401 => Err(HookError(format!(
                "{}: GET {path}: 401, user {:?} was refused (check {PASSWORD_SECRET_LABEL})",
                member.name, self.user
            ))),
            other => Err(HookError(format!(
                "{}: GET {path} answered {other} {}",
                member.name,
                short(&body)
            ))),
        }
    }
}

impl UpdateOrder for RabbitMq {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    fn default_port(&self) -> u16 {
        15672
    }

    fn order<'a>(&'a self, members: &'a [Member]) -> HookFuture<'a, Vec<usize>> {
        // No node leads a RabbitMQ cluster: the members go in their order.
        Box::pin(async move { (0..members.len()).collect() })
    }

    fn before_restart<'a>(
        &'a self,
        member: &'a Member,
        members: &'a [Member],
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let pw = self.password().await?;
            let mut why = self.nodes_problems(members, member, &pw).await?;
            for c in ["node-is-quorum-critical", "node-is-mirror-sync-critical"] {
                if let Some(w) = self.check(member, c, &pw).await? {
                    why.push(w);
                }
            }
            if why.is_empty() {
                return Ok(());
            }
            Err(HookError(format!(
                "{} must not restart now: {}",
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
            let pw = self.password().await?;
            let pw = &pw;
            let what = format!("{} was not back in the cluster with its queues online", member.name);
            super::poll_until(&what, deadline, POLL, || async move {
                let w = self.nodes_problems(members, member, pw).await.map_err(|e| e.0)?;
                if !w.is_empty() {
                    return Err(named(&w));
                }
                let q = self.queue_problems(members, member, pw).await.map_err(|e| e.0)?;
                if !q.is_empty() {
                    return Err(named(&q));
                }
                Ok(())
            })
            .await
        })
    }
}

#[derive(Deserialize)]
struct Node {
    name: String,
    #[serde(default)]
    running: bool,
    #[serde(default)]
    partitions: Vec<String>,
}

#[derive(Default, Deserialize)]
struct Check {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    queues: Vec<CheckQueue>,
}

#[derive(Default, Deserialize)]
struct CheckQueue {
    #[serde(default)]
    name: String,
    #[serde(default)]
    virtual_host: String,
}

/// A JSON object with its keys in order, duplicates kept (see the module
/// docs on `online`).
struct Pairs(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Pairs, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = m.next_entry::<String, serde_json::Value>()? {
                    v.push(kv);
                }
                Ok(Pairs(v))
            }
        }
        d.deserialize_map(V)
    }
}

impl Pairs {
    fn first(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn text(&self, key: &str) -> String {
        self.first(key).and_then(|v| v.as_str()).unwrap_or("").to_owned()
    }

    fn names(&self, key: &str) -> Vec<String> {
        self.first(key).map(names_of).unwrap_or_default()
    }

    fn all_names(&self, key: &str) -> Vec<Vec<String>> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| names_of(v))
            .collect()
    }
}

fn names_of(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Whether the Erlang node `node` (`rabbit@rabbit-0`, or a long name) is
/// the one of service `service`.
fn is_node_of(node: &str, service: &str) -> bool {
    node.split_once('@')
        .is_some_and(|(_, host)| host == service || host.strip_prefix(service).is_some_and(|r| r.starts_with('.')))
}

/// One GET with basic auth through the shared client ([`super::http_with`]:
/// cowboy's chunked bodies decoded). Errors never carry the credentials.
async fn request(addr: &str, port: u16, path: &str, user: &str, pw: &Secret) -> Result<(u16, String), HookError> {
    let auth = format!("Basic {}", base64(format!("{user}:{}", pw.0).as_bytes()));
    super::http_with(addr, port, "GET", path, None, &[("Authorization", auth.as_str())], CALL).await
}

/// Standard base64 with padding (RFC 4648), for the basic-auth header.
fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn named(items: &[String]) -> String {
    let mut s = items.iter().take(NAMED).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > NAMED {
        s.push_str(&format!("; and {} more", items.len() - NAMED));
    }
    s
}

fn short(body: &str) -> String {
    body.trim().chars().take(200).collect()
}

#[cfg(test)]
mod tests;
