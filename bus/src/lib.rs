//! Everything about NATS in one place.
//!
//! [`Bus::connect`] connects (reconnecting by itself afterwards) and creates,
//! idempotently, what the platform needs: the [`EVENTS_STREAM`] stream that
//! keeps event history, and the key-value buckets for desired state,
//! observed state, heartbeats and secrets. All payloads are the prost
//! messages of [`infra_proto::bus::v1`]; all subjects and keys come from
//! [`subject`].
//!
//! [`EVENTS_STREAM`]: subject::EVENTS_STREAM

pub mod auth;
mod backup;
pub mod catalog;
pub mod facts;
pub mod history;
pub mod join;
mod logs;
pub mod subject;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use infra_proto::bus::v1::{
    DeploymentInProgress, DesiredService, Event, EventKind, Heartbeat, HookCall, HookReply, HostState, ImageCheck,
    ImageCheckReply, JoinTicket, LeaderLease, ObservedService, OperatorsUpgrade, OperatorsUpgradeReply, ServiceRecord,
    ServiceSpec,
};
use prost::Message;

pub use async_nats::Subscriber;
pub use subject::Token;

/// What went wrong, for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusErrorKind {
    /// Could not reach or talk to the NATS server.
    Connect,
    /// A stream or bucket could not be created or opened.
    Setup,
    /// A publish, put, get or watch failed.
    Io,
    /// A payload did not decode as the expected message.
    Decode,
    /// A host, tier or service name cannot be used in a subject or key.
    InvalidName,
}

/// An error from the bus, with a kind to match and a message that says
/// which subject, key or bucket was involved. Never carries payloads.
#[derive(Debug)]
pub struct BusError {
    kind: BusErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BusError {
    fn new(kind: BusErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    fn with(
        kind: BusErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> BusErrorKind {
        self.kind
    }
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(s) => write!(f, "{}: {s}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for BusError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Result alias for bus calls.
pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// How to reach NATS and how to size what the bus creates there.
#[derive(Clone)]
pub struct BusConfig {
    /// Server URLs, comma-separated (`nats://127.0.0.1:4222,nats://...`).
    pub url: String,
    /// Connection name shown by the server (`operator-data@host1`).
    pub name: String,
    /// Token credential, if the server wants one.
    pub token: Option<String>,
    /// User and password credentials, if the server wants them.
    pub user: Option<(String, String)>,
    /// A NATS credential (the text of a `.creds` file: a user JWT and its
    /// nkey seed), for servers in operator mode ([`auth`]).
    pub creds: Option<String>,
    /// Inbox prefix of this connection's replies (`_INBOX_<host>` for a
    /// host's credential, which may subscribe to that prefix only).
    pub inbox_prefix: Option<String>,
    /// TLS towards the servers.
    pub tls: BusTls,
    /// How long a heartbeat stays in the hosts bucket: an operator silent
    /// for longer disappears from it.
    pub heartbeat_ttl: Duration,
    /// How long events are kept in the stream.
    pub events_max_age: Duration,
    /// JetStream replicas for streams and buckets (1 for a single server).
    pub replicas: usize,
}

impl fmt::Debug for BusConfig {
    // Credentials are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusConfig")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("creds", &self.creds.as_ref().map(|_| "<redacted>"))
            .field("inbox_prefix", &self.inbox_prefix)
            .field("tls", &self.tls)
            .field("heartbeat_ttl", &self.heartbeat_ttl)
            .field("events_max_age", &self.events_max_age)
            .field("replicas", &self.replicas)
            .finish()
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            name: "infra".into(),
            token: None,
            user: None,
            creds: None,
            inbox_prefix: None,
            tls: BusTls::default(),
            heartbeat_ttl: Duration::from_secs(30),
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            replicas: 1,
        }
    }
}

/// TLS towards the NATS servers. Files, not contents, so that keys are
/// never copied around in memory more than needed (and never printed).
#[derive(Clone, Debug, Default)]
pub struct BusTls {
    /// PEM file of the CA(s) that signed the servers' certificates; when
    /// unset, the system's roots are trusted.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM files of a client certificate and its key, for servers that
    /// verify clients (`--tlsverify`).
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Refuse to talk to a server without TLS.
    pub required: bool,
}

/// A change seen by a key-value watch.
#[derive(Clone, Debug)]
pub enum Change<T> {
    /// The key was written.
    Put {
        /// The key.
        key: String,
        /// The decoded value.
        value: T,
        /// The bucket revision of this write.
        revision: u64,
    },
    /// The key was deleted or purged.
    Delete {
        /// The key.
        key: String,
    },
}

impl<T> Change<T> {
    /// The key this change is about.
    pub fn key(&self) -> &str {
        match self {
            Change::Put { key, .. } | Change::Delete { key } => key,
        }
    }
}

/// The NATS message header that carries W3C trace context on events.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// How long an operator gives one registry to answer an image check
/// ([`Bus::check_images`]); the asker waits a little longer than this.
pub const IMAGE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// A cheap, cloneable handle to the bus. Clones share one connection.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    desired: kv::Store,
    directory: kv::Store,
    observed: kv::Store,
    hosts: kv::Store,
    secrets: kv::Store,
    secret_sources: kv::Store,
    locks: kv::Store,
    services: kv::Store,
    host_state: kv::Store,
    leader: kv::Store,
    deployments: kv::Store,
    join: kv::Store,
    /// The W3C `traceparent` of the caller's current span, when the process
    /// exports traces (see [`Bus::with_trace_context`]).
    trace: Option<TraceContext>,
    /// Counts the connections made to a server: a new value means the
    /// client reconnected, and every watch is made again from a fresh
    /// list (a JetStream consumer may not survive a server restart, and
    /// its own recovery waits for missed heartbeats).
    connections: tokio::sync::watch::Receiver<u64>,
}

/// Returns the `traceparent` of the caller's current span, if any. The bus
/// does not depend on a tracing backend; the process that has one gives
/// the bus this function.
pub type TraceContext = fn() -> Option<String>;

/// The leader lease as read from the store, with the revision that a
/// compare-and-set over it must name.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseEntry {
    /// The lease.
    pub lease: LeaderLease,
    /// The key's revision (the bucket sequence of this write).
    pub revision: u64,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus").finish_non_exhaustive()
    }
}

impl Bus {
    /// Connects and makes sure the stream and buckets exist. Safe to call
    /// from any number of processes at once.
    pub async fn connect(cfg: &BusConfig) -> Result<Self> {
        let servers: Vec<async_nats::ServerAddr> = cfg
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse().map_err(|e| {
                    BusError::with(
                        BusErrorKind::Connect,
                        format!("NATS server address {s:?} is not valid"),
                        e,
                    )
                })
            })
            .collect::<Result<_>>()?;
        if servers.is_empty() {
            return Err(BusError::new(BusErrorKind::Connect, "no NATS server address given"));
        }
        // Until the first connection, retry only what may pass by itself (a
        // server not up yet); refused credentials or a failed TLS handshake
        // fail at once, with the reason. Afterwards the client reconnects
        // by itself.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (connected, connections) = tokio::sync::watch::channel(0u64);
        let connected = std::sync::Arc::new(connected);
        let client = loop {
            let attempt = tokio::time::timeout_at(
                deadline,
                connect_options(cfg, connected.clone())?.connect(servers.clone()),
            )
            .await;
            match attempt {
                Err(_) => {
                    return Err(BusError::new(
                        BusErrorKind::Connect,
                        format!("could not reach NATS at {} within 30s", cfg.url),
                    ));
                }
                Ok(Ok(client)) => break client,
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        async_nats::ConnectErrorKind::Io | async_nats::ConnectErrorKind::TimedOut
                    ) && !is_tls_failure(&e)
                        && tokio::time::Instant::now() + Duration::from_millis(250) < deadline =>
                {
                    tracing::debug!(error = %e, "NATS not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(Err(e)) => {
                    let why = match e.kind() {
                        async_nats::ConnectErrorKind::AuthorizationViolation
                        | async_nats::ConnectErrorKind::Authentication => "the server refused the credentials",
                        async_nats::ConnectErrorKind::Tls => TLS_FAILED,
                        _ if is_tls_failure(&e) => TLS_FAILED,
                        _ => "could not connect",
                    };
                    return Err(BusError::with(
                        BusErrorKind::Connect,
                        format!("NATS at {}: {why}", cfg.url),
                        e,
                    ));
                }
            }
        };
        let js = jetstream::new(client.clone());

        let events = stream::Config {
            name: subject::EVENTS_STREAM.into(),
            subjects: vec![subject::events_all()],
            max_age: cfg.events_max_age,
            max_bytes: 256 * 1024 * 1024,
            num_replicas: cfg.replicas,
            ..Default::default()
        };
        js.get_or_create_stream(events)
            .await
            .map_err(|e| BusError::with(BusErrorKind::Setup, format!("stream {}", subject::EVENTS_STREAM), e))?;

        let bucket = |name: &str, history: i64, max_age: Duration| kv::Config {
            bucket: name.into(),
            history,
            max_age,
            num_replicas: cfg.replicas,
            ..Default::default()
        };
        let desired = ensure_bucket(&js, bucket(subject::DESIRED_BUCKET, 5, Duration::ZERO)).await?;
        let directory = ensure_bucket(&js, bucket(subject::DIRECTORY_BUCKET, 1, Duration::ZERO)).await?;
        let observed = ensure_bucket(&js, bucket(subject::OBSERVED_BUCKET, 1, Duration::ZERO)).await?;
        let hosts = ensure_bucket(&js, bucket(subject::HOSTS_BUCKET, 1, cfg.heartbeat_ttl)).await?;
        let secrets = ensure_bucket(&js, bucket(subject::SECRETS_BUCKET, 1, Duration::ZERO)).await?;
        let secret_sources = ensure_bucket(&js, bucket(subject::SECRET_SOURCES_BUCKET, 1, Duration::ZERO)).await?;
        // A lock whose holder died expires with the bucket's max age.
        let locks = ensure_bucket(&js, bucket(subject::LOCKS_BUCKET, 1, Duration::from_secs(30))).await?;
        let services = ensure_bucket(&js, bucket(subject::SERVICES_BUCKET, 5, Duration::ZERO)).await?;
        let host_state = ensure_bucket(&js, bucket(subject::HOST_STATE_BUCKET, 1, Duration::ZERO)).await?;
        // The most history a bucket may keep: every renewal of the lease
        // near a takeover stays auditable; term records keep the rest.
        let leader = ensure_bucket(&js, bucket(subject::LEADER_BUCKET, 64, Duration::ZERO)).await?;
        let deployments = ensure_bucket(&js, bucket(subject::DEPLOYMENTS_BUCKET, 1, Duration::ZERO)).await?;
        let join = ensure_bucket(&js, bucket(subject::JOIN_BUCKET, 1, Duration::ZERO)).await?;
        Ok(Self {
            client,
            js,
            desired,
            directory,
            observed,
            hosts,
            secrets,
            secret_sources,
            locks,
            services,
            host_state,
            leader,
            deployments,
            join,
            trace: None,
            connections,
        })
    }

    /// Carries trace context from now on: events get a `traceparent`
    /// header and desired-state writes get the field (empty outside a
    /// traced span), both from `current` at the time of the call.
    #[must_use]
    pub fn with_trace_context(mut self, current: TraceContext) -> Self {
        self.trace = Some(current);
        self
    }

    fn traceparent(&self) -> Option<String> {
        self.trace.and_then(|f| f())
    }

    /// The underlying NATS client, for callers that need raw access (tests).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publishes an event to the stream and waits for the server's ack.
    /// Fills in `id` and `time` when they are empty.
    pub async fn publish_event(&self, ev: &Event) -> Result<()> {
        let mut ev = ev.clone();
        if ev.id.is_empty() {
            ev.id = nuid::next().to_string();
        }
        if ev.time.is_none() {
            ev.time = Some(infra_proto::now());
        }
        let host = Token::new("host", &ev.host)?;
        let tier = Token::new("tier", &ev.tier)?;
        let service = if ev.service.is_empty() {
            None
        } else {
            Some(Token::new("service", &ev.service)?)
        };
        let subj = subject::event(&host, &tier, service.as_ref(), event_kind_token(ev.kind()));
        let payload = Bytes::from(ev.encode_to_vec());
        let sent = match self.traceparent() {
            Some(tp) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(TRACEPARENT_HEADER, tp.as_str());
                self.js.publish_with_headers(subj.clone(), headers, payload).await
            }
            None => self.js.publish(subj.clone(), payload).await,
        };
        let ack = sent.map_err(|e| BusError::with(BusErrorKind::Io, format!("publish to {subj}"), e))?;
        ack.await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("ack for {subj}"), e))?;
        Ok(())
    }

    /// Live events from now on, filtered by host, tier and service.
    pub async fn subscribe_events(
        &self,
        host: Option<&str>,
        tier: Option<&str>,
        service: Option<&str>,
    ) -> Result<BoxStream<'static, Event>> {
        let tok = |what: &str, v: Option<&str>| v.filter(|s| !s.is_empty()).map(|s| Token::new(what, s)).transpose();
        let filter = subject::events_filter(
            tok("host", host)?.as_ref(),
            tok("tier", tier)?.as_ref(),
            tok("service", service)?.as_ref(),
        );
        let sub = self
            .client
            .subscribe(filter.clone())
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("subscribe to {filter}"), e))?;
        Ok(sub
            .filter_map(|m| async move {
                match Event::decode(m.payload) {
                    Ok(ev) => Some(ev),
                    Err(e) => {
                        tracing::warn!(subject = %m.subject, error = %e, "dropping an event that does not decode");
                        None
                    }
                }
            })
            .boxed())
    }

    /// Writes the desired state of one service; returns the bucket revision.
    pub async fn put_desired(&self, d: &DesiredService) -> Result<u64> {
        let spec = d
            .spec
            .as_ref()
            .ok_or_else(|| BusError::new(BusErrorKind::InvalidName, "desired state without a spec"))?;
        let key = service_key(&d.host, &spec.tier, &spec.name)?;
        // The directory first: an entry there without desired state is
        // harmless (nothing runs it), desired state missing from the
        // directory would hide a service from the other hosts.
        put(&self.directory, &key, &directory_entry(d, spec)).await?;
        if !d.absent {
            // Boxed: a rare path that should not grow every caller's future.
            Box::pin(self.deliver_secrets(&d.host, spec)).await?;
        }
        // A write belongs to the trace of the caller's span, or to none: a
        // rewrite outside a traced operation (a host evacuated) must not
        // add its reconciles to the trace of an older deploy.
        if self.trace.is_some() {
            let tp = self.traceparent().unwrap_or_default();
            if tp != d.traceparent {
                let mut d = d.clone();
                d.traceparent = tp;
                return put(&self.desired, &key, &d).await;
            }
        }
        put(&self.desired, &key, d).await
    }

    /// Reads the desired state of one service.
    pub async fn get_desired(&self, host: &str, tier: &str, service: &str) -> Result<Option<DesiredService>> {
        get(&self.desired, &service_key(host, tier, service)?).await
    }

    /// Deletes the desired state of one service (and its directory entry),
    /// and the host's copies of the secrets nothing else there uses.
    pub async fn delete_desired(&self, host: &str, tier: &str, service: &str) -> Result<()> {
        let key = service_key(host, tier, service)?;
        delete(&self.desired, &key).await?;
        delete(&self.directory, &key).await?;
        Box::pin(self.prune_secrets(host)).await
    }

    /// Gives `host` its copy of every secret and catalog file `spec` uses, from the
    /// sources the coordinator stored ([`Bus::put_secret`]). Done with
    /// every desired-state write, so a service placed on a host (by a
    /// deploy, a scale, a move after host loss) finds its secrets there.
    async fn deliver_secrets(&self, host: &str, spec: &ServiceSpec) -> Result<()> {
        let keys: std::collections::BTreeSet<&str> = infra_proto::spec::content_keys(spec).collect();
        for key in keys {
            let name = Token::new("secret", key)?;
            // A catalog file's key names its content: a copy there is it.
            if key.starts_with("config_") && self.get_secret(host, key).await?.is_some() {
                continue;
            }
            let source = self
                .secret_sources
                .get(name.as_str())
                .await
                .map_err(|e| BusError::with(BusErrorKind::Io, format!("get secret {name}"), e))?;
            // No source: a secret the host wrote itself, or one the
            // operator will report missing.
            let Some(content) = source else { continue };
            if self.get_secret(host, key).await?.as_ref() != Some(&content) {
                let key = secret_key(host, key)?;
                idempotent_write(&format!("put secret {key}"), || {
                    self.secrets.put(key.as_str(), content.clone())
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Deletes `host`'s copies of catalog secrets that no desired service
    /// on it uses any more (what the host wrote itself stays).
    pub async fn prune_secrets(&self, host: &str) -> Result<()> {
        let h = Token::new("host", host)?;
        let used: std::collections::HashSet<String> =
            list::<DesiredService>(&self.client, &self.desired, &format!("{h}.>"))
                .await?
                .iter()
                .flat_map(|d| d.spec.iter().chain(d.previous.iter()))
                .flat_map(|s| {
                    infra_proto::spec::content_keys(s)
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
        let sources: std::collections::HashSet<String> = scan(&self.client, &self.secret_sources, ">", true)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for name in self.list_secret_names(host).await? {
            if sources.contains(&name) && !used.contains(&name) {
                self.delete_secret(host, &name).await?;
            }
        }
        Ok(())
    }

    /// Every desired service, or those of one tier on one host (a host's
    /// credential reads its own only).
    pub async fn list_desired(&self, scope: Option<(&str, &str)>) -> Result<Vec<DesiredService>> {
        list(&self.client, &self.desired, &scope_filter(scope)?).await
    }

    /// The directory: every desired service with only the public part of
    /// its spec ([`infra_proto::spec::public_part`]). What a host reads to
    /// reach services on other hosts.
    pub async fn list_directory(&self) -> Result<Vec<DesiredService>> {
        list(&self.client, &self.directory, ">").await
    }

    /// Writes the directory entry of every desired service that lacks one
    /// or holds an older generation (desired state written before the
    /// directory existed). Returns how many were written.
    pub async fn sync_directory(&self) -> Result<usize> {
        let have: std::collections::HashMap<(String, String, String), u64> = self
            .list_directory()
            .await?
            .into_iter()
            .filter_map(|d| {
                let s = d.spec?;
                Some(((d.host, s.tier, s.name), d.generation))
            })
            .collect();
        let mut written = 0;
        for d in self.list_desired(None).await? {
            let Some(spec) = &d.spec else { continue };
            let k = (d.host.clone(), spec.tier.clone(), spec.name.clone());
            if have.get(&k) != Some(&d.generation) {
                let key = service_key(&d.host, &spec.tier, &spec.name)?;
                put(&self.directory, &key, &directory_entry(&d, spec)).await?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// Changes to the desired state of one tier on one host, from now on.
    pub async fn watch_desired(
        &self,
        host: &str,
        tier: &str,
    ) -> Result<BoxStream<'static, Result<Change<DesiredService>>>> {
        let filter = subject::tier_keys(&Token::new("host", host)?, &Token::new("tier", tier)?);
        watch(&self.client, &self.desired, &filter, self.connections.clone()).await
    }

    /// Writes the observed state of one service.
    pub async fn put_observed(&self, o: &ObservedService) -> Result<u64> {
        put(&self.observed, &service_key(&o.host, &o.tier, &o.service)?, o).await
    }

    /// Deletes the observed state of one service.
    pub async fn delete_observed(&self, host: &str, tier: &str, service: &str) -> Result<()> {
        delete(&self.observed, &service_key(host, tier, service)?).await
    }

    /// Every observed service, or those of one tier on one host.
    pub async fn list_observed(&self, scope: Option<(&str, &str)>) -> Result<Vec<ObservedService>> {
        list(&self.client, &self.observed, &scope_filter(scope)?).await
    }

    /// Every change to observed state, from now on.
    pub async fn watch_observed(&self) -> Result<BoxStream<'static, Result<Change<ObservedService>>>> {
        watch(&self.client, &self.observed, ">", self.connections.clone()).await
    }

    /// Writes the coordinator's record of one service.
    pub async fn put_record(&self, r: &ServiceRecord) -> Result<u64> {
        put(&self.services, &record_key(&r.tier, &r.service)?, r).await
    }

    /// Reads the record of one service.
    pub async fn get_record(&self, tier: &str, service: &str) -> Result<Option<ServiceRecord>> {
        get(&self.services, &record_key(tier, service)?).await
    }

    /// Deletes the record of one service.
    pub async fn delete_record(&self, tier: &str, service: &str) -> Result<()> {
        delete(&self.services, &record_key(tier, service)?).await
    }

    /// Every service record.
    pub async fn list_records(&self) -> Result<Vec<ServiceRecord>> {
        list(&self.client, &self.services, ">").await
    }

    /// Writes what the coordinator holds about a host.
    pub async fn put_host_state(&self, h: &HostState) -> Result<u64> {
        put(&self.host_state, Token::new("host", &h.host)?.as_str(), h).await
    }

    /// Every host state record.
    pub async fn list_host_states(&self) -> Result<Vec<HostState>> {
        list(&self.client, &self.host_state, ">").await
    }

    /// Forgets a host's state (it is active again).
    pub async fn delete_host_state(&self, host: &str) -> Result<()> {
        delete(&self.host_state, Token::new("host", host)?.as_str()).await
    }

    /// Asks the `tier` operator on `host` which of `images` its host has
    /// and whether it could pull the others; `Err` when no answer came
    /// within `timeout`.
    pub async fn check_images(
        &self,
        host: &str,
        tier: &str,
        ask: ImageCheck,
        timeout: Duration,
    ) -> Result<ImageCheckReply> {
        let subject = subject::image_check(&Token::new("host", host)?, &Token::new("tier", tier)?);
        self.ask_operator(host, tier, subject, &ask, timeout).await
    }

    /// One request to the `tier` operator on `host` on `subject`, and its
    /// decoded answer; `Err` when none came within `timeout`.
    async fn ask_operator<Q: Message, A: Message + Default>(
        &self,
        host: &str,
        tier: &str,
        subject: String,
        ask: &Q,
        timeout: Duration,
    ) -> Result<A> {
        // The client's own request limit (10 s) would cut a longer call.
        let request = async_nats::Request::new()
            .payload(Bytes::from(ask.encode_to_vec()))
            .timeout(Some(timeout + Duration::from_secs(1)));
        let reply = tokio::time::timeout(timeout, self.client.send_request(subject.clone(), request))
            .await
            .map_err(|_| {
                BusError::new(
                    BusErrorKind::Io,
                    format!(
                        "no answer from the {tier} operator on {host} within {}s",
                        timeout.as_secs()
                    ),
                )
            })?
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("ask the {tier} operator on {host}"), e))?;
        A::decode(reply.payload).map_err(|e| BusError::with(BusErrorKind::Decode, format!("answer on {subject}"), e))
    }

    /// Subscribes to `subject` (requests asked of this operator).
    async fn requests(&self, subject: String) -> Result<async_nats::Subscriber> {
        self.client
            .subscribe(subject.clone())
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("subscribe {subject}"), e))
    }

    /// The image checks asked of the `tier` operator on `host`: each
    /// message's `reply` subject takes an [`ImageCheckReply`].
    pub async fn image_checks(&self, host: &str, tier: &str) -> Result<async_nats::Subscriber> {
        self.requests(subject::image_check(
            &Token::new("host", host)?,
            &Token::new("tier", tier)?,
        ))
        .await
    }

    /// Asks the `tier` operator on `host` to replace the host's install
    /// container with one of `image`; `Err` when no answer came within
    /// `timeout`.
    pub async fn upgrade_operators(
        &self,
        host: &str,
        tier: &str,
        ask: &OperatorsUpgrade,
        timeout: Duration,
    ) -> Result<OperatorsUpgradeReply> {
        let subject = subject::operators_upgrade(&Token::new("host", host)?, &Token::new("tier", tier)?);
        self.ask_operator(host, tier, subject, ask, timeout).await
    }

    /// Asks the `tier` operator on `host` to run one call of a member-aware
    /// update order; `Err` when no answer came within `timeout`.
    pub async fn ask_hook(&self, host: &str, tier: &str, call: &HookCall, timeout: Duration) -> Result<HookReply> {
        let subject = subject::member_hook(&Token::new("host", host)?, &Token::new("tier", tier)?);
        self.ask_operator(host, tier, subject, call, timeout).await
    }

    /// The update-order calls asked of the `tier` operator on `host`.
    pub async fn hook_requests(&self, host: &str, tier: &str) -> Result<async_nats::Subscriber> {
        self.requests(subject::member_hook(
            &Token::new("host", host)?,
            &Token::new("tier", tier)?,
        ))
        .await
    }

    /// The upgrade requests asked of the `tier` operator on `host`.
    pub async fn upgrade_requests(&self, host: &str, tier: &str) -> Result<async_nats::Subscriber> {
        self.requests(subject::operators_upgrade(
            &Token::new("host", host)?,
            &Token::new("tier", tier)?,
        ))
        .await
    }

    /// Answers a request with `msg`.
    pub async fn reply<M: Message>(&self, to: async_nats::Subject, msg: &M) -> Result<()> {
        self.client
            .publish(to.clone(), Bytes::from(msg.encode_to_vec()))
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("reply on {to}"), e))
    }

    /// Records a heartbeat in the hosts bucket and publishes it.
    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<()> {
        let host = Token::new("host", &hb.host)?;
        let tier = Token::new("tier", &hb.tier)?;
        put(&self.hosts, &subject::operator_key(&host, &tier), hb).await?;
        let subj = subject::heartbeat(&host, &tier);
        self.client
            .publish(subj.clone(), Bytes::from(hb.encode_to_vec()))
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("publish to {subj}"), e))
    }

    /// The latest heartbeat of every operator heard from within the TTL.
    pub async fn list_heartbeats(&self) -> Result<Vec<Heartbeat>> {
        list(&self.client, &self.hosts, ">").await
    }

    /// Stores a secret's content as the catalog gives it. Hosts get their
    /// copies with the desired state of the services that use it. Never
    /// logged.
    pub async fn put_secret(&self, name: &str, content: Bytes) -> Result<()> {
        let key = Token::new("secret", name)?;
        idempotent_write(&format!("put secret {key}"), || {
            self.secret_sources.put(key.as_str(), content.clone())
        })
        .await?;
        Ok(())
    }

    /// Deletes the stored contents of catalog files (`config_*` in the
    /// secret sources) that no key in `keep` names and that were written
    /// more than `older_than` ago: a deploy stores a file's content before
    /// the desired state that names it, so a young one may be about to be
    /// used. Host copies go with [`Bus::prune_secrets`]. Returns the keys
    /// deleted.
    pub async fn prune_config_sources(
        &self,
        keep: &std::collections::HashSet<String>,
        older_than: Duration,
    ) -> Result<Vec<String>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let cutoff = i128::try_from(now.saturating_sub(older_than.as_nanos())).unwrap_or(i128::MAX);
        let mut gone = Vec::new();
        for (key, _) in scan(&self.client, &self.secret_sources, ">", true).await? {
            if !key.starts_with("config_") || keep.contains(&key) {
                continue;
            }
            let entry = self
                .secret_sources
                .entry(key.as_str())
                .await
                .map_err(|e| BusError::with(BusErrorKind::Io, format!("get secret {key}"), e))?;
            if entry.is_some_and(|e| e.created.unix_timestamp_nanos() < cutoff) {
                delete(&self.secret_sources, &key).await?;
                gone.push(key);
            }
        }
        Ok(gone)
    }

    /// A secret as the catalog gave it (the coordinator's credential only).
    pub async fn get_secret_source(&self, name: &str) -> Result<Option<Bytes>> {
        let key = Token::new("secret", name)?;
        self.secret_sources
            .get(key.as_str())
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("get secret {key}"), e))
    }

    /// Stores `host`'s own copy of a secret (what a host's operator keeps
    /// for itself: Vault's unseal keys). Never logged.
    pub async fn put_host_secret(&self, host: &str, name: &str, content: Bytes) -> Result<()> {
        let key = secret_key(host, name)?;
        idempotent_write(&format!("put secret {key}"), || {
            self.secrets.put(key.as_str(), content.clone())
        })
        .await?;
        Ok(())
    }

    /// Deletes `host`'s copy of a secret.
    pub async fn delete_secret(&self, host: &str, name: &str) -> Result<()> {
        delete(&self.secrets, &secret_key(host, name)?).await
    }

    /// The names of the secrets held for `host`.
    pub async fn list_secret_names(&self, host: &str) -> Result<Vec<String>> {
        let prefix = format!("{}.", Token::new("host", host)?);
        let mut names: Vec<String> = scan(&self.client, &self.secrets, &format!("{prefix}>"), true)
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Takes the lock `what` on `host` if nobody holds it: `Ok(true)` when
    /// this caller got it. Locks expire after 30 s, so a holder that died
    /// does not block anyone for long. Used where the Docker engine has no
    /// atomic create (networks).
    pub async fn try_lock(&self, host: &str, what: &str, holder: &str) -> Result<bool> {
        let key = format!("{}.{}", Token::new("host", host)?, Token::new("lock", what)?);
        match self.locks.create(&key, Bytes::from(holder.to_owned())).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(BusError::with(BusErrorKind::Io, format!("lock {key}"), e)),
        }
    }

    /// Releases a lock taken with [`Bus::try_lock`].
    pub async fn unlock(&self, host: &str, what: &str) -> Result<()> {
        let key = format!("{}.{}", Token::new("host", host)?, Token::new("lock", what)?);
        delete(&self.locks, &key).await
    }

    /// Reads `host`'s copy of a secret.
    pub async fn get_secret(&self, host: &str, name: &str) -> Result<Option<Bytes>> {
        let key = secret_key(host, name)?;
        self.secrets
            .get(key.as_str())
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("get secret {key}"), e))
    }

    /// Reads the leader lease and its revision; `None` when no coordinator
    /// ever took it (or it was deleted by hand).
    pub async fn read_lease(&self) -> Result<Option<LeaseEntry>> {
        let key = subject::LEASE_KEY;
        let entry = self
            .leader
            .entry(key)
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("get {key}"), e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let lease = LeaderLease::decode(entry.value)
            .map_err(|e| BusError::with(BusErrorKind::Decode, format!("value of {key}"), e))?;
        Ok(Some(LeaseEntry {
            lease,
            revision: entry.revision,
        }))
    }

    /// Writes the leader lease by compare-and-set: only if the key is
    /// still at `expected` (`None`: only if it does not exist). Returns
    /// the new revision, or `None` when someone else wrote it first; of
    /// several candidates naming the same revision, exactly one wins.
    pub async fn write_lease(&self, lease: &LeaderLease, expected: Option<u64>) -> Result<Option<u64>> {
        let key = subject::LEASE_KEY;
        let value = Bytes::from(lease.encode_to_vec());
        match expected {
            None => match self.leader.create(key, value).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(BusError::with(BusErrorKind::Io, format!("create {key}"), e)),
            },
            Some(rev) => match self.leader.update(key, value, rev).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(BusError::with(BusErrorKind::Io, format!("update {key}"), e)),
            },
        }
    }

    /// Records the acquisition of a term under its own key, once: `false`
    /// when that term was already recorded (which the lease's
    /// compare-and-set should make impossible).
    pub async fn record_term(&self, lease: &LeaderLease) -> Result<bool> {
        let key = subject::term_key(lease.term);
        match self.leader.create(&key, Bytes::from(lease.encode_to_vec())).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(BusError::with(BusErrorKind::Io, format!("create {key}"), e)),
        }
    }

    /// Every write of the lease the bucket still keeps (the last 64), oldest
    /// first: acquisitions, renewals and releases, for audits and tests.
    pub async fn lease_history(&self) -> Result<Vec<LeaseEntry>> {
        let key = subject::LEASE_KEY;
        let history = self
            .leader
            .history(key)
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("history of {key}"), e))?;
        let entries: Vec<kv::Entry> = history
            .try_collect()
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("history of {key}"), e))?;
        entries
            .into_iter()
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| {
                let lease = LeaderLease::decode(e.value)
                    .map_err(|err| BusError::with(BusErrorKind::Decode, format!("value of {key}"), err))?;
                Ok(LeaseEntry {
                    lease,
                    revision: e.revision,
                })
            })
            .collect()
    }

    /// Every recorded term, by term number.
    pub async fn list_terms(&self) -> Result<Vec<LeaderLease>> {
        let mut out: Vec<LeaderLease> = list(&self.client, &self.leader, &subject::term_keys()).await?;
        out.sort_by_key(|t| t.term);
        Ok(out)
    }

    /// Records a deploy the leader has started.
    pub async fn put_deployment(&self, d: &DeploymentInProgress) -> Result<u64> {
        put(&self.deployments, Token::new("deployment", &d.id)?.as_str(), d).await
    }

    /// Forgets a deploy that ended.
    pub async fn delete_deployment(&self, id: &str) -> Result<()> {
        delete(&self.deployments, Token::new("deployment", id)?.as_str()).await
    }

    /// Keeps a join ticket (replacing one for the same host).
    pub async fn put_join_ticket(&self, t: &JoinTicket) -> Result<u64> {
        put(&self.join, Token::new("host", &t.host)?.as_str(), t).await
    }

    /// The join ticket of `host` and its revision.
    pub async fn get_join_ticket(&self, host: &str) -> Result<Option<(JoinTicket, u64)>> {
        let key = Token::new("host", host)?;
        let entry = self
            .join
            .entry(key.as_str())
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("get join ticket {key}"), e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let t = JoinTicket::decode(e.value)
                    .map_err(|e| BusError::with(BusErrorKind::Decode, format!("join ticket {key}"), e))?;
                Ok(Some((t, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Writes `t` only if its key is still at `revision`: `Ok(false)` when
    /// another write came first (a ticket is used once).
    pub async fn update_join_ticket(&self, t: &JoinTicket, revision: u64) -> Result<bool> {
        let key = Token::new("host", &t.host)?;
        match self
            .join
            .update(key.as_str(), Bytes::from(t.encode_to_vec()), revision)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(BusError::with(BusErrorKind::Io, format!("update join ticket {key}"), e)),
        }
    }

    /// Forgets `host`'s join ticket.
    pub async fn delete_join_ticket(&self, host: &str) -> Result<()> {
        delete(&self.join, Token::new("host", host)?.as_str()).await
    }

    /// The user keys revoked so far (what the platform account's JWT
    /// names), kept under `revoked.users` in the join bucket (a key no
    /// host name can take: names have no dots).
    pub async fn revoked_users(&self) -> Result<(Vec<String>, u64)> {
        let entry = self
            .join
            .entry(REVOKED_KEY)
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, "get the revoked users", e))?;
        Ok(match entry {
            Some(e) if e.operation == kv::Operation::Put => (
                String::from_utf8_lossy(&e.value).lines().map(str::to_owned).collect(),
                e.revision,
            ),
            Some(e) => (Vec::new(), e.revision),
            None => (Vec::new(), 0),
        })
    }

    /// Adds `users` to the revoked list (compare-and-set, retried) and
    /// returns the whole list.
    pub async fn add_revoked_users(&self, users: &[String]) -> Result<Vec<String>> {
        for _ in 0..10 {
            let (mut all, revision) = self.revoked_users().await?;
            for u in users {
                if !all.contains(u) {
                    all.push(u.clone());
                }
            }
            let value = Bytes::from(all.join("\n"));
            let written = if revision == 0 {
                self.join.create(REVOKED_KEY, value).await.is_ok()
            } else {
                self.join.update(REVOKED_KEY, value, revision).await.is_ok()
            };
            if written {
                return Ok(all);
            }
        }
        Err(BusError::new(
            BusErrorKind::Io,
            "the revoked users changed ten times in a row; try again",
        ))
    }

    /// Deletes every key of `host`: its desired state (and directory
    /// entries), observed state, heartbeats, secrets, host state and join
    /// ticket. For a host leaving the platform, once its credential is
    /// revoked.
    pub async fn forget_host(&self, host: &str) -> Result<usize> {
        let h = Token::new("host", host)?;
        let all = format!("{h}.>");
        let mut n = 0;
        for store in [
            &self.desired,
            &self.directory,
            &self.observed,
            &self.hosts,
            &self.secrets,
            &self.locks,
        ] {
            for (key, _) in scan(&self.client, store, &all, true).await? {
                delete(store, &key).await?;
                n += 1;
            }
        }
        self.delete_host_state(host).await?;
        self.delete_join_ticket(host).await?;
        Ok(n)
    }

    /// Join requests, shared among the coordinators (a queue group: each
    /// request reaches one of them).
    pub async fn join_requests(&self) -> Result<async_nats::Subscriber> {
        self.client
            .queue_subscribe(subject::joins_all(), "infra-coordinators".to_owned())
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, "subscribe to join requests", e))
    }

    /// Every deploy started and not finished.
    pub async fn list_deployments(&self) -> Result<Vec<DeploymentInProgress>> {
        list(&self.client, &self.deployments, ">").await
    }
}

/// The subject token of an event kind (`started`, `reconcile_failed`, ...).
pub fn event_kind_token(kind: EventKind) -> &'static str {
    kind.as_str_name()
        .strip_prefix("EVENT_KIND_")
        .map_or("unspecified", |s| {
            // as_str_name is upper snake case; subjects use lower case.
            match s {
                "CREATED" => "created",
                "STARTED" => "started",
                "HEALTHY" => "healthy",
                "UNHEALTHY" => "unhealthy",
                "DIED" => "died",
                "RESTARTED" => "restarted",
                "REMOVED" => "removed",
                "RECONCILE_FAILED" => "reconcile_failed",
                "ADOPTED" => "adopted",
                "RECREATED" => "recreated",
                "RESTART_BUDGET_EXHAUSTED" => "restart_budget_exhausted",
                "DEPLOY_STARTED" => "deploy_started",
                "SERVICE_DISPATCHED" => "service_dispatched",
                "SERVICE_READY" => "service_ready",
                "SERVICE_FAILED" => "service_failed",
                "SERVICE_BLOCKED" => "service_blocked",
                "DEPLOY_FINISHED" => "deploy_finished",
                "SERVICE_REMOVE_REQUESTED" => "service_remove_requested",
                "SERVICE_PENDING" => "service_pending",
                "SERVICE_SCALED" => "service_scaled",
                "ROLLOUT_STARTED" => "rollout_started",
                "ROLLOUT_BATCH_DONE" => "rollout_batch_done",
                "ROLLOUT_FINISHED" => "rollout_finished",
                "ROLLOUT_FAILED" => "rollout_failed",
                "ROLLOUT_PAUSED" => "rollout_paused",
                "ROLLBACK_STARTED" => "rollback_started",
                "ROLLBACK_FINISHED" => "rollback_finished",
                "HOST_DRAINED" => "host_drained",
                "HOST_LOST" => "host_lost",
                "HOST_RETURNED" => "host_returned",
                "SERVICE_STRANDED" => "service_stranded",
                "SERVICE_MOVED" => "service_moved",
                "LEADER_ELECTED" => "leader_elected",
                "MEMBER_LEADER_CHANGED" => "member_leader_changed",
                "STRAY_CONTAINER" => "stray_container",
                "HOST_JOIN_TOKEN" => "host_join_token",
                "HOST_JOINED" => "host_joined",
                "HOST_JOIN_REFUSED" => "host_join_refused",
                "HOST_REMOVED" => "host_removed",
                "OPERATORS_UPGRADED" => "operators_upgraded",
                "CATALOG_PUBLISHED" => "catalog_published",
                "BACKUP_TAKEN" => "backup_taken",
                "BACKUP_FAILED" => "backup_failed",
                "BACKUP_RESTORED" => "backup_restored",
                "RESTORE_FAILED" => "restore_failed",
                _ => "unspecified",
            }
        })
}

/// The longest one list of a bucket may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Key of the revoked user list in the join bucket.
const REVOKED_KEY: &str = "revoked.users";

const TLS_FAILED: &str = "TLS failed (is nats.ca_file the CA of the server's certificate?)";

/// Whether a connect error is a failed TLS handshake, which retrying does
/// not mend. async-nats reports a certificate the client does not trust
/// as an I/O error; rustls' message names the certificate.
fn is_tls_failure(e: &async_nats::ConnectError) -> bool {
    let text = e.to_string();
    e.kind() == async_nats::ConnectErrorKind::Tls || text.contains("certificate") || text.contains("TLS")
}

/// The client options of `cfg`: name, credentials, TLS; every connection
/// made is counted on `connected`.
fn connect_options(
    cfg: &BusConfig,
    connected: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
) -> Result<async_nats::ConnectOptions> {
    let opts = match &cfg.creds {
        // The error names the problem, never the credential's text.
        Some(c) => async_nats::ConnectOptions::with_credentials(c).map_err(|e| {
            BusError::new(
                BusErrorKind::Connect,
                format!("the NATS credential cannot be read: {}", e.kind()),
            )
        })?,
        None => async_nats::ConnectOptions::new(),
    };
    let mut opts = opts
        .name(&cfg.name)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |ev| {
            let connected = connected.clone();
            async move {
                match ev {
                    async_nats::Event::Connected => {
                        tracing::info!("connected to NATS");
                        connected.send_modify(|n| *n += 1);
                    }
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                    other => tracing::debug!(event = %other, "NATS connection event"),
                }
            }
        });
    if let Some(token) = &cfg.token {
        opts = opts.token(token.clone());
    }
    if let Some((u, p)) = &cfg.user {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(ca) = &cfg.tls.ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &cfg.tls.client {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if cfg.tls.required {
        opts = opts.require_tls(true);
    }
    if let Some(prefix) = &cfg.inbox_prefix {
        opts = opts.custom_inbox_prefix(prefix.clone());
    }
    Ok(opts)
}

fn record_key(tier: &str, service: &str) -> Result<String> {
    Ok(subject::record_key(
        &Token::new("tier", tier)?,
        &Token::new("service", service)?,
    ))
}

fn service_key(host: &str, tier: &str, service: &str) -> Result<String> {
    Ok(subject::service_key(
        &Token::new("host", host)?,
        &Token::new("tier", tier)?,
        &Token::new("service", service)?,
    ))
}

pub(crate) async fn ensure_bucket(js: &jetstream::Context, cfg: kv::Config) -> Result<kv::Store> {
    let name = cfg.bucket.clone();
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    match js.create_key_value(cfg).await {
        Ok(store) => Ok(store),
        // Another process may have created it in between.
        Err(create_err) => js
            .get_key_value(&name)
            .await
            .map_err(|_| BusError::with(BusErrorKind::Setup, format!("key-value bucket {name}"), create_err)),
    }
}

/// How long a plain write keeps trying through a stream's leader election
/// (a NATS server of the cluster stopped or restarted): elections end in
/// a few seconds; past this the caller sees the error.
const WRITE_RETRY_FOR: Duration = Duration::from_secs(15);

/// Whether a KV write failed only because its stream had no leader at
/// that moment (no responders, or no ack in time): the same write, sent
/// again, succeeds once one is elected. A plain put or delete is
/// idempotent (the last value wins), so repeating it is safe.
fn leaderless(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(p) = err.downcast_ref::<PublishError>() {
            return matches!(p.kind(), PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut);
        }
        cur = err.source();
    }
    false
}

/// Runs a plain (idempotent) KV write, again while it fails only for
/// want of a stream leader, for up to [`WRITE_RETRY_FOR`].
async fn idempotent_write<T, E, F, Fut>(what: &str, mut write: F) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + WRITE_RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(v) => return Ok(v),
            Err(e) if leaderless(&e) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(error = %e, what, "stream has no leader yet; writing again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(BusError::with(BusErrorKind::Io, what.to_owned(), e)),
        }
    }
}

async fn put<M: Message>(store: &kv::Store, key: &str, msg: &M) -> Result<u64> {
    let value = Bytes::from(msg.encode_to_vec());
    idempotent_write(&format!("put {key}"), || store.put(key, value.clone())).await
}

async fn get<M: Message + Default>(store: &kv::Store, key: &str) -> Result<Option<M>> {
    let raw = store
        .get(key)
        .await
        .map_err(|e| BusError::with(BusErrorKind::Io, format!("get {key}"), e))?;
    raw.map(|b| M::decode(b).map_err(|e| BusError::with(BusErrorKind::Decode, format!("value of {key}"), e)))
        .transpose()
}

async fn delete(store: &kv::Store, key: &str) -> Result<()> {
    idempotent_write(&format!("delete {key}"), || store.delete(key)).await
}

/// The directory's entry of desired state `d` with spec `spec`: its
/// public part only.
fn directory_entry(d: &DesiredService, spec: &ServiceSpec) -> DesiredService {
    DesiredService {
        spec: Some(infra_proto::spec::public_part(spec)),
        host: d.host.clone(),
        generation: d.generation,
        absent: d.absent,
        ..Default::default()
    }
}

/// The key pattern of `scope` (one tier on one host), or every key.
fn scope_filter(scope: Option<(&str, &str)>) -> Result<String> {
    Ok(match scope {
        Some((h, t)) => subject::tier_keys(&Token::new("host", h)?, &Token::new("tier", t)?),
        None => ">".to_owned(),
    })
}

fn secret_key(host: &str, name: &str) -> Result<String> {
    Ok(format!("{}.{}", Token::new("host", host)?, Token::new("secret", name)?))
}

/// The latest value of every key matching `keys` (a key pattern).
async fn list<M: Message + Default>(client: &async_nats::Client, store: &kv::Store, keys: &str) -> Result<Vec<M>> {
    // Boxed: the consumer's setup is a large future, and every list of
    // the bus would carry it inline.
    Box::pin(scan(client, store, keys, false))
        .await?
        .into_iter()
        .map(|(key, value)| {
            M::decode(value).map_err(|e| BusError::with(BusErrorKind::Decode, format!("value of {key}"), e))
        })
        .collect()
}

/// The key and latest value of every live key matching `keys`, read by a
/// consumer on the bucket's stream (from the stream's leader, in one
/// pass) rather than the client's key listing: the consumer is named and
/// its filter is in the request's subject
/// (`CONSUMER.CREATE.<stream>.<name>.<filter>`), so a credential whose
/// permissions name the keys it may read can list them (see
/// [`auth::host_permissions`]).
async fn scan(
    client: &async_nats::Client,
    store: &kv::Store,
    keys: &str,
    headers_only: bool,
) -> Result<Vec<(String, Bytes)>> {
    let what = || format!("list {} {keys}", store.name);
    let consumer = ordered_consumer(
        client,
        store,
        keys,
        jetstream::consumer::DeliverPolicy::LastPerSubject,
        headers_only,
    )
    .await
    .map_err(|e| BusError::with(BusErrorKind::Io, what(), e))?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| BusError::with(BusErrorKind::Io, what(), e))?;
    // Bounded: a list that stops arriving is an error, never a hang.
    let read = async {
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| BusError::with(BusErrorKind::Io, what(), e))?;
            let info = m
                .info()
                .map_err(|e| BusError::new(BusErrorKind::Io, format!("{}: {e}", what())))?;
            let pending = info.pending;
            if let Some(key) = m.subject.strip_prefix(store.prefix.as_str())
                && kv_operation(&m.message) == kv::Operation::Put
            {
                out.push((key.to_owned(), m.payload.clone()));
            }
            if pending == 0 {
                break;
            }
        }
        Ok::<_, BusError>(())
    };
    match tokio::time::timeout(LIST_TIMEOUT, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(BusError::new(
                BusErrorKind::Io,
                format!("{}: not complete within {}s", what(), LIST_TIMEOUT.as_secs()),
            ));
        }
    }
    Ok(out)
}

/// An ordered push consumer on `store`'s stream for the keys matching
/// `keys`, named, so that its filter travels in the request's subject.
async fn ordered_consumer(
    client: &async_nats::Client,
    store: &kv::Store,
    keys: &str,
    deliver_policy: jetstream::consumer::DeliverPolicy,
    headers_only: bool,
) -> std::result::Result<
    jetstream::consumer::Consumer<jetstream::consumer::push::OrderedConfig>,
    jetstream::stream::ConsumerError,
> {
    store
        .stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            name: Some(nuid::next().to_string()),
            deliver_subject: client.new_inbox(),
            description: Some("infra key-value read".to_owned()),
            filter_subject: format!("{}{keys}", store.prefix),
            replay_policy: jetstream::consumer::ReplayPolicy::Instant,
            deliver_policy,
            headers_only,
            ..Default::default()
        })
        .await
}

/// What a key-value message records: a put, a delete or a purge (the
/// `KV-Operation` header; none means a put).
fn kv_operation(m: &async_nats::Message) -> kv::Operation {
    match m
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .map(|v| v.as_str())
    {
        Some("DEL") => kv::Operation::Delete,
        Some("PURGE") => kv::Operation::Purge,
        _ => kv::Operation::Put,
    }
}

/// A watch that ends with an error as soon as the client reconnects, so
/// that its caller lists and watches again at once instead of waiting for
/// the consumer to notice it was lost.
async fn watch<M: Message + Default + 'static>(
    client: &async_nats::Client,
    store: &kv::Store,
    filter: &str,
    mut connections: tokio::sync::watch::Receiver<u64>,
) -> Result<BoxStream<'static, Result<Change<M>>>> {
    connections.borrow_and_update();
    let what = format!("watch {} {filter}", store.name);
    let w = Box::pin(ordered_consumer(
        client,
        store,
        filter,
        jetstream::consumer::DeliverPolicy::New,
        false,
    ))
    .await
    .map_err(|e| BusError::with(BusErrorKind::Io, what.clone(), e))?
    .messages()
    .await
    .map_err(|e| BusError::with(BusErrorKind::Io, what, e))?;
    let reconnected = async move {
        // A closed sender (the bus is gone) ends the watch too.
        let _ = connections.changed().await;
    };
    let ended = futures::stream::once(async {
        Err(BusError::new(
            BusErrorKind::Io,
            "watch ended: the connection to NATS was made again (or the watch closed); watch again",
        ))
    });
    let prefix = store.prefix.clone();
    Ok(w.take_until(reconnected)
        .map(move |m| {
            let m = m.map_err(|e| BusError::with(BusErrorKind::Io, "watch", e))?;
            let revision = m
                .info()
                .map_err(|e| BusError::new(BusErrorKind::Io, format!("watch: {e}")))?
                .stream_sequence;
            let key = m.subject.strip_prefix(prefix.as_str()).unwrap_or(&m.subject).to_owned();
            match kv_operation(&m.message) {
                kv::Operation::Put => {
                    let value = M::decode(m.payload.clone())
                        .map_err(|e| BusError::with(BusErrorKind::Decode, format!("value of {key}"), e))?;
                    Ok(Change::Put { key, value, revision })
                }
                kv::Operation::Delete | kv::Operation::Purge => Ok(Change::Delete { key }),
            }
        })
        .chain(ended)
        .boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_kind_has_a_subject_token_of_its_own() {
        let mut seen = std::collections::BTreeSet::new();
        for n in 1..200 {
            let Ok(kind) = EventKind::try_from(n) else { continue };
            let token = event_kind_token(kind);
            assert_ne!(token, "unspecified", "{kind:?} has no token");
            assert!(seen.insert(token), "{token} is used twice");
        }
    }
}
