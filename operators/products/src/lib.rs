//! Member-aware update order for stateful clusters (Patroni, Valkey, Kafka,
//! RabbitMQ, etcd): the hook a rolling update consults before and after it
//! restarts one member, so a cluster keeps serving and loses nothing.
//!
//! A rollout moves replicas one batch at a time and gates each on container
//! health. For a cluster that is not enough: which member restarts last
//! (Patroni's leader, Kafka's active controller), what must be true before
//! the next (a replica streaming again, every partition back above
//! `min.insync.replicas`) and what to do first (a switchover, a Valkey
//! failover) depend on the software. [`UpdateOrder`] is that knowledge; the
//! rollout keeps the mechanics (desired state, health gates, progress).
//!
//! A service chooses its hook with the label [`ORDER_LABEL`]
//! (`infra.update-order: patroni`); [`for_labels`] builds it. The members of
//! one cluster are the services with the same [`CLUSTER_LABEL`] (default:
//! the hook's kind), so a cluster written as single-replica services
//! (`pg-0`, `pg-1`, `pg-2`) and one written as a replicated service are
//! handled alike.
//!
//! # Adding a kind
//!
//! Implement [`UpdateOrder`] (reach members with [`Member::addr`] and
//! [`Member::port`]) and add it to [`for_labels`]. Kafka: `order` puts the
//! active controller last, `ready_for_next` checks that no partition is
//! under `min.insync.replicas`; Valkey: `before_restart` runs `CLUSTER
//! FAILOVER` on a replica of a primary; etcd: `order` puts the leader last,
//! `ready_for_next` waits for `/health` and the member's raft index.
//! A hook that logs in to the members reads its password through the
//! [`Secrets`] that [`for_labels`] hands it (the coordinator's secrets
//! bucket), when it needs it; a wait until the next member may go is a
//! [`poll_until`].

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Label that selects a service's update-order hook (`patroni`).
pub const ORDER_LABEL: &str = "infra.update-order";
/// Label that names the cluster a member belongs to (default: the kind).
pub const CLUSTER_LABEL: &str = "infra.update-order.cluster";
/// Label: the member's port the hook talks to (Patroni: its REST API).
pub const PORT_LABEL: &str = "infra.update-order.port";
/// Label: the largest replication lag, in bytes, that counts as caught up.
pub const MAX_LAG_LABEL: &str = "infra.update-order.max-lag-bytes";

/// A boxed future, so the trait stays object safe.
pub type HookFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One member of a cluster, as a rollout sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's own name in the cluster software: its service name
    /// (`pg-1`), which is also its hostname and Patroni's member name.
    pub name: String,
    /// Host it runs on.
    pub host: String,
    /// Replica index there.
    pub replica: u32,
    /// The host's private address (its `addr` label), where the member's
    /// published ports are.
    pub addr: String,
    /// The port the hook talks to on `addr`.
    pub port: u16,
}

impl From<&Member> for infra_proto::bus::v1::HookMember {
    fn from(m: &Member) -> Self {
        Self {
            name: m.name.clone(),
            host: m.host.clone(),
            replica: m.replica,
            addr: m.addr.clone(),
            port: u32::from(m.port),
        }
    }
}

impl From<&infra_proto::bus::v1::HookMember> for Member {
    fn from(m: &infra_proto::bus::v1::HookMember) -> Self {
        Self {
            name: m.name.clone(),
            host: m.host.clone(),
            replica: m.replica,
            addr: m.addr.clone(),
            port: u16::try_from(m.port).unwrap_or(0),
        }
    }
}

/// Why a hook stopped a rollout. The message names the member and what was
/// seen, so the rollout can report it as is.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct HookError(pub String);

/// What a rollout asks a stateful cluster, around each member's restart.
///
/// # Guarantees the rollout gives
///
/// - One member at a time: the rollout never restarts two members of one
///   cluster at once, whatever `parallelism` says.
/// - `before_restart` runs right before the member's desired state changes;
///   when it fails, the member is not touched and the rollout stops.
/// - `ready_for_next` runs after the member is healthy on the new spec;
///   when it fails the rollout stops and reports it (the cluster keeps
///   serving from the members that were not touched).
pub trait UpdateOrder: Send + Sync {
    /// The hook's name (the label value), for messages.
    fn kind(&self) -> &'static str;

    /// The member port the hook talks to when [`PORT_LABEL`] does not name
    /// one (Patroni's REST API 8008, Valkey 6379, the Kafka REST Proxy
    /// 8082, RabbitMQ's management API 15672).
    fn default_port(&self) -> u16;

    /// The order in which `members` restart, as indices into `members`.
    /// Members that cannot be asked go where they were.
    fn order<'a>(&'a self, members: &'a [Member]) -> HookFuture<'a, Vec<usize>>;

    /// Called before `member` restarts (Patroni: hand leadership away).
    fn before_restart<'a>(&'a self, member: &'a Member, members: &'a [Member])
    -> HookFuture<'a, Result<(), HookError>>;

    /// Waits, at most `deadline`, until the cluster may lose its next
    /// member after `member` restarted (Patroni: it streams again with lag
    /// under the threshold).
    fn ready_for_next<'a>(
        &'a self,
        member: &'a Member,
        members: &'a [Member],
        deadline: Duration,
    ) -> HookFuture<'a, Result<(), HookError>>;
}

/// Where hooks read the secrets they log in with (the coordinator: the
/// secrets as the catalog gave them, which a deploy stores on the bus).
pub trait SecretReader: Send + Sync {
    /// The content of secret `name`, `None` when there is none.
    fn read<'a>(&'a self, name: &'a str) -> HookFuture<'a, Result<Option<Vec<u8>>, String>>;
}

impl SecretReader for infra_bus::Bus {
    fn read<'a>(&'a self, name: &'a str) -> HookFuture<'a, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move {
            self.get_secret_source(name)
                .await
                .map(|o| o.map(|b| b.to_vec()))
                .map_err(|e| e.to_string())
        })
    }
}

/// One host's copies of the secrets on the bus: what an operator reads
/// (a host's credential reads no other secret; `infra_bus::auth`).
pub struct HostSecrets {
    /// The bus.
    pub bus: infra_bus::Bus,
    /// This host.
    pub host: String,
}

impl SecretReader for HostSecrets {
    fn read<'a>(&'a self, name: &'a str) -> HookFuture<'a, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move {
            self.bus
                .get_secret(&self.host, name)
                .await
                .map(|o| o.map(|b| b.to_vec()))
                .map_err(|e| e.to_string())
        })
    }
}

/// The secret store a hook is given ([`for_labels`]); `Secrets::default()`
/// has none (a hook that needs a secret then says so).
#[derive(Clone, Default)]
pub struct Secrets(Option<std::sync::Arc<dyn SecretReader>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Secrets(..)"
        } else {
            "Secrets(none)"
        })
    }
}

/// A secret's content (a password); its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secrets {
    /// Hooks read from `reader`.
    pub fn from(reader: std::sync::Arc<dyn SecretReader>) -> Self {
        Self(Some(reader))
    }

    /// Secret `name` now (so a rotated secret is picked up), without the
    /// trailing newline of a secret file, for hook `kind`, whose label
    /// `label` named it. Errors name the secret and the label, never what
    /// it holds; a read takes at most 3 s.
    pub async fn read(&self, kind: &str, name: &str, label: &str) -> Result<Secret, HookError> {
        let Some(reader) = &self.0 else {
            return Err(HookError(format!(
                "{kind}: secret {name:?} (named by {label}) cannot be read: this process has no secret store"
            )));
        };
        match tokio::time::timeout(Duration::from_secs(3), reader.read(name)).await {
            Ok(Ok(Some(b))) => {
                let s = String::from_utf8(b)
                    .map_err(|_| HookError(format!("{kind}: secret {name:?} is not UTF-8 text")))?;
                // A secret file's trailing newline is not part of the
                // password (the images' entrypoints strip it too).
                Ok(Secret(s.trim_end_matches(['\n', '\r']).to_owned()))
            }
            Ok(Ok(None)) => Err(HookError(format!(
                "{kind}: secret {name:?} is not in the secrets bucket (named by {label}; deploy the service that uses it \
                 first)"
            ))),
            Ok(Err(e)) => Err(HookError(format!("{kind}: secret {name:?} cannot be read: {e}"))),
            Err(_) => Err(HookError(format!("{kind}: reading secret {name:?} took over 3s"))),
        }
    }
}

/// Asks `check` every `every` until it answers `Ok`, at most `deadline`;
/// then the error is `"{what} within {N}s: {why}"`, `why` being the last
/// answer (what a hook's "ready for the next member" waits are made of).
pub async fn poll_until<F, Fut>(what: &str, deadline: Duration, every: Duration, mut check: F) -> Result<(), HookError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let start = tokio::time::Instant::now();
    loop {
        let why = match check().await {
            Ok(()) => return Ok(()),
            Err(w) => w,
        };
        if start.elapsed() >= deadline {
            return Err(HookError(format!("{what} within {}s: {why}", deadline.as_secs())));
        }
        tokio::time::sleep(every).await;
    }
}

/// The hook the labels choose, or `None` for a plain rollout. An unknown
/// kind is an error naming the known ones.
pub fn for_labels(
    labels: &BTreeMap<String, String>,
    secrets: &Secrets,
) -> Result<Option<Box<dyn UpdateOrder>>, HookError> {
    let Some(kind) = labels.get(ORDER_LABEL).filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    match kind.as_str() {
        "patroni" => {
            let max_lag = match labels.get(MAX_LAG_LABEL) {
                Some(v) => v
                    .parse()
                    .map_err(|_| HookError(format!("label {MAX_LAG_LABEL}: {v:?} is not a number of bytes")))?,
                None => patroni::DEFAULT_MAX_LAG,
            };
            Ok(Some(Box::new(patroni::Patroni { max_lag })))
        }
        "kafka" => Ok(Some(Box::new(kafka::Kafka::from_labels(labels)?))),
        "rabbitmq" => Ok(Some(Box::new(rabbitmq::RabbitMq::from_labels(labels, secrets)?))),
        "valkey" => Ok(Some(Box::new(valkey::Valkey::from_labels(labels, secrets)?))),
        one_at_a_time::KIND => Ok(Some(Box::new(one_at_a_time::OneAtATime))),
        other => Err(HookError(format!(
            "label {ORDER_LABEL}: unknown update order {other:?} (known: patroni, kafka, rabbitmq, valkey, \
             one-at-a-time)"
        ))),
    }
}

/// The port a hook talks to, from the labels (`default` without one).
pub fn port_from(labels: &BTreeMap<String, String>, default: u16) -> u16 {
    labels.get(PORT_LABEL).and_then(|p| p.parse().ok()).unwrap_or(default)
}

/// The cluster a member belongs to, from its labels.
pub fn cluster_from(labels: &BTreeMap<String, String>) -> Option<String> {
    let kind = labels.get(ORDER_LABEL).filter(|k| !k.is_empty())?;
    Some(
        labels
            .get(CLUSTER_LABEL)
            .filter(|c| !c.is_empty())
            .unwrap_or(kind)
            .clone(),
    )
}

/// A small HTTP/1.1 exchange (one request, `Connection: close`), enough for
/// the members' admin APIs (Patroni's is Python's `http.server`). Returns
/// the status and the body. Bounded by `timeout`.
pub async fn http(
    addr: &str,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), HookError> {
    http_with(addr, port, method, path, body, &[], timeout).await
}

/// [`http`] with extra request headers (`Authorization`: an error names the
/// method, address and path, never a header). Through the one HTTP client
/// ([`http::Http`]), which decodes chunked bodies (RabbitMQ's cowboy, the
/// Kafka REST Proxy's Jetty).
pub async fn http_with(
    addr: &str,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, String), HookError> {
    let url = format!("http://{addr}:{port}{path}");
    let method =
        http::Method::from_bytes(method.as_bytes()).map_err(|_| HookError(format!("{method} is no HTTP method")))?;
    let mut all: Vec<(&str, &str)> = vec![("accept", "application/json")];
    all.extend_from_slice(headers);
    let resp = http::Http::new(timeout)
        .exchange(method, &url, &all, body.map(|b| http::Body::Raw(b.to_owned())))
        .await
        .map_err(|e| HookError(e.to_string()))?;
    Ok((resp.status, String::from_utf8_lossy(&resp.body).into_owned()))
}

pub mod http;
pub mod kafka;
pub mod one_at_a_time;
pub mod patroni;
pub mod rabbitmq;
pub mod remote;
pub mod valkey;

#[cfg(test)]
mod tests {
    use super::*;

    struct One(&'static str, &'static [u8]);

    impl SecretReader for One {
        fn read<'a>(&'a self, name: &'a str) -> HookFuture<'a, Result<Option<Vec<u8>>, String>> {
            Box::pin(async move { Ok((name == self.0).then(|| self.1.to_vec())) })
        }
    }

    #[tokio::test]
    async fn a_secret_is_read_without_its_trailing_newline_and_never_shown() {
        let s = Secrets::from(std::sync::Arc::new(One("pw", b"s3cret\n")));
        let got = s.read("valkey", "pw", "some-label").await.unwrap();
        assert_eq!(got.0, "s3cret");
        assert_eq!(format!("{got:?}"), "Secret(..)");
        assert_eq!(format!("{s:?}"), "Secrets(..)");
        let e = s.read("valkey", "other", "some-label").await.unwrap_err().0;
        assert!(
            e.contains("valkey: secret \"other\" is not in the secrets bucket") && e.contains("some-label"),
            "{e}"
        );
        let e = Secrets::default().read("rabbitmq", "pw", "lbl").await.unwrap_err().0;
        assert!(
            e.contains("no secret store") && e.contains("\"pw\"") && e.contains("lbl"),
            "{e}"
        );
    }

    /// On a paused clock: a ten-minute wait asking every 10 s asks 61
    /// times (at 0, 10, …, 600 s), gives up at 600 s of the clock, not
    /// before and not a poll later, and takes no real time.
    #[tokio::test(start_paused = true)]
    async fn poll_until_keeps_its_deadline_and_pace_on_the_clock() {
        let t0 = tokio::time::Instant::now();
        let real = std::time::Instant::now();
        let mut asked = Vec::new();
        let e = poll_until("r1 not back", Duration::from_secs(600), Duration::from_secs(10), || {
            asked.push(t0.elapsed());
            async { Err::<(), _>("still syncing".to_owned()) }
        })
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(asked.len(), 61, "{asked:?}");
        assert!(
            asked.iter().enumerate().all(|(i, t)| t.as_secs() == 10 * i as u64),
            "{asked:?}"
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(600));
        assert_eq!(e, "r1 not back within 600s: still syncing");
        assert!(real.elapsed() < Duration::from_secs(5), "the clock was paused");
        // Ready at the fourth question: returns then, 30 s in.
        let t1 = tokio::time::Instant::now();
        let mut n = 0;
        poll_until("x", Duration::from_secs(600), Duration::from_secs(10), || {
            n += 1;
            let k = n;
            async move { if k < 4 { Err(format!("try {k}")) } else { Ok(()) } }
        })
        .await
        .unwrap();
        assert_eq!(t1.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn poll_until_returns_at_the_first_ok_or_names_the_last_reason_at_the_deadline() {
        let mut n = 0;
        poll_until("x", Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            let k = n;
            async move { if k < 3 { Err(format!("try {k}")) } else { Ok(()) } }
        })
        .await
        .unwrap();
        assert_eq!(n, 3);
        let mut n = 0;
        let e = poll_until(
            "pg-1 did not catch up",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || {
                n += 1;
                let k = n;
                async move { Err::<(), _>(format!("lag {k}")) }
            },
        )
        .await
        .unwrap_err()
        .0;
        assert!(e.starts_with("pg-1 did not catch up within 0s: lag "), "{e}");
        assert!(e.ends_with(&format!("lag {n}")), "the last reason: {e}");
    }
}
