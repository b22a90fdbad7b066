//! The data tier's Valkey clusters: the data operator creates them.
//!
//! A Valkey cluster is declared in Compose by labels on its members (the
//! nodes of `compose/04-data/valkey-cluster/`):
//!
//! - [`CLUSTER_LABEL`] (`infra.valkey-cluster`): the cluster's name; every
//!   service that carries it with the same value is a member;
//! - [`REPLICAS_LABEL`] (`infra.valkey-cluster.replicas`): replicas per
//!   primary (default 1).
//!
//! Nodes start empty (one node each, no slots); nobody else creates the
//! cluster (no init container). Every few seconds, and on every change of
//! the observed state, the extension:
//!
//! 1. collects each cluster's members from the desired state (which
//!    services, on which host) and their health from the observed state;
//! 2. acts only on the host of the **first member by name**, and there only
//!    under the bus lock `cluster`/`valkey-<name>`. Why this rule rather
//!    than a lock alone: the cluster can only be created once every member
//!    is healthy, so the first member's host is up and its operator runs;
//!    the choice needs no election and is the same on every host, and the
//!    command runs in that member's container, on the acting operator's own
//!    engine. The lock only guards the short overlap of two operators of
//!    one host (a restart);
//! 3. once every member is healthy, reads `CLUSTER INFO` in each member
//!    container on this host and decides ([`decide`]): all fresh (one known
//!    node, no slots) → create; formed (`cluster_state:ok`, every member
//!    known) → leave alone; anything else → report, never force;
//! 4. to create: resolves each member's address as the nodes see it
//!    (Redis 7.0's `CLUSTER MEET` takes IPs only): on one host, `getent
//!    hosts <member>` inside the member container (Docker DNS); when the
//!    members span hosts, each member's host's private address (its
//!    operators' `addr` label), where the member publishes its client and
//!    bus ports and which it announces (`cluster-announce-ip`); the port is
//!    the member's [`PORT_LABEL`]. Then it runs
//!    `valkey-cli --cluster create ip:port... --cluster-replicas N
//!    --cluster-yes` in that container, the password read there from the
//!    node's secret file into `REDISCLI_AUTH` (never in an argument, log,
//!    event or error of ours).
//!
//! # Guarantees
//!
//! Idempotent: a formed cluster is never created again (a restarted
//! operator or a second deploy reads `cluster_state:ok` and does nothing);
//! a partly formed one is reported once per distinct state as a
//! `reconcile_failed` event and left to a person. A creation is published
//! as a `healthy` event whose reason starts with `cluster <name> created:`.
//!
//! # Assumptions
//!
//! Members listen on [`PORT`] (or their [`PORT_LABEL`]) and read the
//! password from the secret mounted as [`DEFAULT_PASSWORD_FILE`] (or the
//! file named by [`PASSWORD_FILE_LABEL`]). Across hosts, each member
//! announces its host's private address and publishes its client port and
//! bus port (port + 10000) there. The rolling of a formed cluster (replicas
//! first, `CLUSTER FAILOVER` before a primary restarts) is the coordinator's,
//! with the `valkey` update-order hook (`infra_products::valkey`).

pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use infra_proto::bus::v1::{DesiredService, EventKind, Health, ObservedService};
use operator_core::{Extension, TierContext};

/// Label naming the cluster a service is a member of.
pub const CLUSTER_LABEL: &str = "infra.valkey-cluster";
/// Label with the replicas per primary (default 1).
pub const REPLICAS_LABEL: &str = "infra.valkey-cluster.replicas";
/// Label naming the password file inside a member container.
pub const PASSWORD_FILE_LABEL: &str = "infra.valkey-cluster.password-file";
/// The password file when no label names one (the stack's secret).
pub const DEFAULT_PASSWORD_FILE: &str = "/run/secrets/valkey_cluster_password";
/// The host label with a host's private address.
use infra_bus::facts::ADDR as ADDR_LABEL;
/// The port a member listens on when [`PORT_LABEL`] names none.
pub const PORT: u16 = 6379;
/// Label with a member's client port (the one the update-order hook talks
/// to; its cluster bus port is that plus 10000).
pub const PORT_LABEL: &str = infra_products::PORT_LABEL;

/// A full pass even without a change.
const RESYNC: Duration = Duration::from_secs(5);
/// Changes arriving within this long of the first are handled together.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How long a complete cluster may say `cluster_state:fail` before it is
/// reported (a restarted node rejoins within seconds).
const SETTLE: Duration = Duration::from_secs(30);
/// Bound on each bus call.
const BUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a short command in a member (`CLUSTER INFO`, `getent`).
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for a new cluster's roles to reach the node that
/// created it (for the event's counts).
const ROLES_WAIT: Duration = Duration::from_secs(15);
/// Bound on `valkey-cli --cluster create` (it waits for the nodes to agree).
const CREATE_TIMEOUT: Duration = Duration::from_secs(90);

/// This tier's Valkey extension: the cluster creator.
pub const FORM_CLUSTERS: Extension = clusters;

/// The cluster creator (see the module documentation).
fn clusters(ctx: TierContext) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(run(ctx))
}

/// One member of a cluster, from the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Service name (also its DNS name on the stack's network).
    pub service: String,
    /// Host it is placed on.
    pub host: String,
    /// Tier of the service.
    pub tier: String,
    /// Its client port: the label [`PORT_LABEL`] (the update-order hook's
    /// port), else [`PORT`]. Members that share a host across hosts need
    /// ports of their own: each publishes its ports on its host's private
    /// address.
    pub port: u16,
}

/// A cluster as declared by its members' labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// The label's value.
    pub name: String,
    /// Replicas per primary.
    pub replicas: u32,
    /// Password file inside the members.
    pub password_file: String,
    /// Members, sorted by service name.
    pub members: Vec<Member>,
}

impl Cluster {
    /// The client port of member `service` ([`PORT`] for one not listed).
    pub fn port_of(&self, service: &str) -> u16 {
        self.members
            .iter()
            .find(|m| m.service == service)
            .map_or(PORT, |m| m.port)
    }

    /// Primaries and replicas the cluster will have, or why it cannot be
    /// created (`valkey-cli` wants at least three primaries, and the members
    /// must split evenly into primaries with `replicas` each).
    pub fn layout(&self) -> Result<(usize, usize), String> {
        let n = self.members.len();
        let per = self.replicas as usize + 1;
        if !n.is_multiple_of(per) || n / per < 3 {
            return Err(format!(
                "cluster {}: {n} members cannot form primaries with {} replicas each (at least 3 primaries, \
                 members a multiple of {per})",
                self.name, self.replicas
            ));
        }
        Ok((n / per, n - n / per))
    }
}

/// Groups the desired services carrying [`CLUSTER_LABEL`] into clusters.
/// A member whose replicas label cannot be read, or that disagrees with the
/// others, makes the cluster's entry an error naming it.
pub fn clusters_from(desired: &[DesiredService]) -> BTreeMap<String, Result<Cluster, String>> {
    let mut out: BTreeMap<String, Result<Cluster, String>> = BTreeMap::new();
    let mut specs: Vec<_> = desired
        .iter()
        .filter(|d| !d.absent)
        .filter_map(|d| d.spec.as_ref().map(|s| (d, s)))
        .filter(|(_, s)| s.labels.contains_key(CLUSTER_LABEL))
        .collect();
    specs.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    for (d, s) in specs {
        let name = s.labels[CLUSTER_LABEL].clone();
        let replicas = match s.labels.get(REPLICAS_LABEL).map(|v| v.trim().parse::<u32>()) {
            None => Ok(1),
            Some(Ok(r)) => Ok(r),
            Some(Err(_)) => Err(format!(
                "cluster {name}: member {}: label {REPLICAS_LABEL}={:?} is not a number",
                s.name, s.labels[REPLICAS_LABEL]
            )),
        };
        let password_file = s
            .labels
            .get(PASSWORD_FILE_LABEL)
            .cloned()
            .unwrap_or_else(|| DEFAULT_PASSWORD_FILE.to_owned());
        let port = match s.labels.get(PORT_LABEL).map(|v| v.trim().parse::<u16>()) {
            None => PORT,
            Some(Ok(p)) if p != 0 => p,
            Some(_) => {
                out.insert(
                    name.clone(),
                    Err(format!(
                        "cluster {name}: member {}: label {PORT_LABEL}={:?} is not a port",
                        s.name, s.labels[PORT_LABEL]
                    )),
                );
                continue;
            }
        };
        let member = Member {
            service: s.name.clone(),
            host: d.host.clone(),
            tier: s.tier.clone(),
            port,
        };
        let entry = out.entry(name.clone()).or_insert_with(|| {
            replicas.clone().map(|replicas| Cluster {
                name: name.clone(),
                replicas,
                password_file: password_file.clone(),
                members: Vec::new(),
            })
        });
        let Ok(c) = entry else { continue };
        match replicas {
            Err(e) => *entry = Err(e),
            Ok(r) if r != c.replicas => {
                *entry = Err(format!(
                    "cluster {name}: member {} says {REPLICAS_LABEL}={r}, {} says {}",
                    s.name, c.members[0].service, c.replicas
                ));
            }
            Ok(_) => {
                if !c.members.iter().any(|m| m.service == member.service) {
                    c.members.push(member);
                }
            }
        }
    }
    out
}

/// What `CLUSTER INFO` says, the fields we decide on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    /// `cluster_state` (`ok`, `fail`).
    pub state: String,
    /// `cluster_slots_assigned`.
    pub slots_assigned: u32,
    /// `cluster_known_nodes`.
    pub known_nodes: u32,
    /// `cluster_size` (primaries serving slots).
    pub size: u32,
}

/// Parses `CLUSTER INFO` output (`key:value` lines, CRLF or LF). `None`
/// when a field we need is missing (not a cluster node, an error reply).
pub fn parse_cluster_info(text: &str) -> Option<ClusterInfo> {
    let fields: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    Some(ClusterInfo {
        state: (*fields.get("cluster_state")?).to_owned(),
        slots_assigned: fields.get("cluster_slots_assigned")?.parse().ok()?,
        known_nodes: fields.get("cluster_known_nodes")?.parse().ok()?,
        size: fields.get("cluster_size")?.parse().ok()?,
    })
}

/// Primaries and replicas in `CLUSTER NODES` output (the flags field: `master`
/// / `slave`, besides `myself`, `fail`, ...). Nodes flagged `fail` or
/// `noaddr` are not counted.
pub fn count_roles(nodes: &str) -> (usize, usize) {
    let mut primaries = 0;
    let mut replicas = 0;
    for line in nodes.lines() {
        let Some(flags) = line.split_whitespace().nth(2) else {
            continue;
        };
        let flags: BTreeSet<&str> = flags.split(',').collect();
        if flags.contains("fail") || flags.contains("noaddr") {
            continue;
        }
        if flags.contains("master") {
            primaries += 1;
        } else if flags.contains("slave") || flags.contains("replica") {
            replicas += 1;
        }
    }
    (primaries, replicas)
}

/// What to do with a cluster whose members are all healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Every member is a fresh single node without slots: create.
    Create,
    /// Formed: `cluster_state:ok` and every member known. Leave it alone.
    Formed,
    /// Every member knows every node and every slot is assigned, but some
    /// member's `cluster_state` is not `ok` yet: a node that just
    /// restarted (a rolling update) catching up by gossip. Reported only
    /// when it lasts.
    Settling(String),
    /// Neither: report why, do not touch it.
    Report(String),
}

/// Decides from the `CLUSTER INFO` of the members that could be read
/// (`(member, info)`), for a cluster of `members` nodes.
pub fn decide(cluster: &str, members: usize, infos: &[(String, ClusterInfo)]) -> Decision {
    if infos.is_empty() {
        return Decision::Report(format!("cluster {cluster}: no member's CLUSTER INFO could be read"));
    }
    let fresh = |i: &ClusterInfo| i.known_nodes <= 1 && i.slots_assigned == 0;
    if infos.iter().all(|(_, i)| fresh(i)) {
        return Decision::Create;
    }
    let formed = |i: &ClusterInfo| i.state == "ok" && i.known_nodes as usize == members && i.slots_assigned == 16384;
    if infos.iter().all(|(_, i)| formed(i)) {
        return Decision::Formed;
    }
    let complete = |i: &ClusterInfo| i.known_nodes as usize == members && i.slots_assigned == 16384;
    if infos.iter().all(|(_, i)| complete(i))
        && let Some((who, info)) = infos.iter().find(|(_, i)| !formed(i))
    {
        return Decision::Settling(format!(
            "cluster {cluster}: member {who} reports cluster_state:{} with every node known and every slot \
             assigned",
            info.state
        ));
    }
    // Name a member that is in some cluster (the odd one out when the
    // others are fresh), else one that is not formed.
    let (who, info) = infos
        .iter()
        .find(|(_, i)| !fresh(i) && !formed(i))
        .or_else(|| infos.iter().find(|(_, i)| !formed(i)))
        .unwrap_or(&infos[0]);
    Decision::Report(format!(
        "cluster {cluster} is partly formed, not forced: member {who} reports cluster_state:{} with {} of {members} \
         nodes known and {} of 16384 slots assigned; fix it by hand (valkey-cli --cluster fix / reset the nodes)",
        info.state, info.known_nodes, info.slots_assigned
    ))
}

/// Why a member command failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Docker refused or failed the exec.
    #[error("docker exec in {container} ({what}): {source}")]
    Docker {
        /// The container.
        container: String,
        /// What was being run (no secrets).
        what: String,
        /// Docker's error.
        #[source]
        source: operator_core::docker::DockerError,
    },
    /// The command did not finish in time.
    #[error("docker exec in {container} ({what}): no answer within {timeout:?}")]
    Timeout {
        /// The container.
        container: String,
        /// What was being run.
        what: String,
        /// The bound.
        timeout: Duration,
    },
    /// The command exited non-zero.
    #[error("docker exec in {container} ({what}): exit code {code}: {output}")]
    Failed {
        /// The container.
        container: String,
        /// What was being run.
        what: String,
        /// Its exit code.
        code: i64,
        /// Its output, trimmed to the end.
        output: String,
    },
}

/// Runs `cmd` in `container` and returns its stdout and stderr together.
/// `what` describes it in errors; `cmd` must not hold a secret (it is not
/// logged, but Docker keeps it in the exec's inspect data).
async fn exec_output(
    ctx: &TierContext,
    container: &str,
    what: &str,
    cmd: Vec<String>,
    timeout: Duration,
) -> Result<String, ExecError> {
    let out = ctx
        .docker
        .exec_output(container, cmd, timeout)
        .await
        .map_err(|source| ExecError::Docker {
            container: short(container).to_owned(),
            what: what.to_owned(),
            source,
        })?;
    match out.exit_code {
        Some(0) => Ok(out.output),
        None => Err(ExecError::Timeout {
            container: short(container).to_owned(),
            what: what.to_owned(),
            timeout,
        }),
        Some(code) => Err(ExecError::Failed {
            container: short(container).to_owned(),
            what: what.to_owned(),
            code,
            output: tail(&out.output, 400),
        }),
    }
}

/// `valkey-cli <args>` in a member, authenticated by `REDISCLI_AUTH` read
/// from the password file inside the container: the password is in no
/// argument Docker or we record.
fn cli(password_file: &str, args: &[String]) -> Vec<String> {
    let mut cmd = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "REDISCLI_AUTH=\"$(cat \"$0\")\" exec valkey-cli --no-auth-warning \"$@\"".to_owned(),
        password_file.to_owned(),
    ];
    cmd.extend(args.iter().cloned());
    cmd
}

/// What the extension remembers between passes.
#[derive(Default)]
struct State {
    /// Clusters seen formed, with the member containers they were seen on:
    /// not read again until a container changes.
    formed: BTreeMap<String, Vec<String>>,
    /// The last reported problem per cluster (reported once).
    reported: BTreeMap<String, String>,
    /// Since when a cluster has been settling (see [`Decision::Settling`]).
    settling: BTreeMap<String, std::time::Instant>,
}

/// Runs until shutdown. Errors are reported, never fatal.
pub async fn run(ctx: TierContext) {
    tracing::info!(label = CLUSTER_LABEL, "valkey clusters: watching");
    let mut st = State::default();
    let mut changes = operator_core::changes::ObservedChanges::new("valkey clusters", RESYNC, DEBOUNCE);
    while changes.next(&ctx).await {
        pass(&ctx, &mut st).await;
    }
}

async fn pass(ctx: &TierContext, st: &mut State) {
    let listed = tokio::time::timeout(BUS_TIMEOUT, async {
        Ok::<_, infra_bus::BusError>((ctx.bus.list_directory().await?, ctx.bus.list_observed(None).await?))
    })
    .await;
    let (desired, observed) = match listed {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return tracing::warn!(error = %e, "valkey clusters: cannot read the bus"),
        Err(_) => return tracing::warn!("valkey clusters: reading the bus timed out"),
    };
    for (name, cluster) in clusters_from(&desired) {
        let cluster = match cluster {
            Ok(c) => c,
            Err(reason) => {
                report(ctx, st, &name, "", "", reason).await;
                continue;
            }
        };
        let Some(first) = cluster.members.first() else { continue };
        if first.host != ctx.host || first.tier != ctx.tier {
            continue;
        }
        if let Err(reason) = cluster.layout() {
            report(ctx, st, &name, &first.service, "", reason).await;
            continue;
        }
        // Every member healthy, and the containers of those on this host.
        let mut local = Vec::new();
        let mut waiting = Vec::new();
        for m in &cluster.members {
            let o = observed
                .iter()
                .find(|o| o.host == m.host && o.tier == m.tier && o.service == m.service);
            match o.filter(|o| o.health() == Health::Healthy) {
                None => waiting.push(m.service.as_str()),
                Some(o) if m.host == ctx.host => match running_container(o) {
                    Some(id) => local.push((m.service.clone(), id)),
                    None => waiting.push(m.service.as_str()),
                },
                Some(_) => {}
            }
        }
        if !waiting.is_empty() {
            tracing::debug!(cluster = %name, waiting = ?waiting, "valkey cluster: members not healthy yet");
            continue;
        }
        let containers: Vec<String> = local.iter().map(|(_, id)| id.clone()).collect();
        if st.formed.get(&name) == Some(&containers) {
            continue;
        }
        let lock = format!("valkey-{name}");
        let holder = format!("operator-{}@{}", ctx.tier, ctx.host);
        match tokio::time::timeout(BUS_TIMEOUT, ctx.bus.try_lock("cluster", &lock, &holder)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::info!(cluster = %name, "valkey cluster: another operator holds the lock; skipping");
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(cluster = %name, error = %e, "valkey cluster: cannot take the lock");
                continue;
            }
            Err(_) => {
                tracing::warn!(cluster = %name, "valkey cluster: taking the lock timed out");
                continue;
            }
        }
        let formed = converge(ctx, st, &cluster, &local).await;
        if let Err(e) = ctx.bus.unlock("cluster", &lock).await {
            tracing::warn!(cluster = %name, error = %e, "valkey cluster: cannot release the lock (it expires)");
        }
        if formed {
            st.formed.insert(name.clone(), containers);
            st.reported.remove(&name);
        }
    }
}

/// Reads, decides and creates if needed. True when the cluster is formed.
async fn converge(ctx: &TierContext, st: &mut State, cluster: &Cluster, local: &[(String, String)]) -> bool {
    let name = &cluster.name;
    let mut infos = Vec::new();
    for (service, id) in local {
        let info_cmd = cli(
            &cluster.password_file,
            &[
                "-p".into(),
                cluster.port_of(service).to_string(),
                "cluster".into(),
                "info".into(),
            ],
        );
        match exec_output(ctx, id, "valkey-cli cluster info", info_cmd, EXEC_TIMEOUT).await {
            Ok(out) => match parse_cluster_info(&out) {
                Some(i) => infos.push((service.clone(), i)),
                None => {
                    let reason = format!(
                        "cluster {name}: member {service}: CLUSTER INFO cannot be read (is cluster mode on?): {}",
                        tail(&out, 200)
                    );
                    report(ctx, st, name, service, id, reason).await;
                    return false;
                }
            },
            Err(e) => {
                report(
                    ctx,
                    st,
                    name,
                    service,
                    id,
                    format!("cluster {name}: member {service}: {e}"),
                )
                .await;
                return false;
            }
        }
    }
    match decide(name, cluster.members.len(), &infos) {
        Decision::Settling(reason) => {
            let since = *st.settling.entry(name.clone()).or_insert_with(std::time::Instant::now);
            if since.elapsed() >= SETTLE {
                let (service, id) = &local[0];
                let reason = format!("{reason} for over {}s", SETTLE.as_secs());
                report(ctx, st, name, service, id, reason).await;
            } else {
                tracing::debug!(cluster = %name, "{reason}; waiting");
            }
            false
        }
        Decision::Formed => {
            st.settling.remove(name);
            tracing::info!(cluster = %name, members = cluster.members.len(), "valkey cluster formed; left alone");
            true
        }
        Decision::Report(reason) => {
            let (service, id) = &local[0];
            report(ctx, st, name, service, id, reason).await;
            false
        }
        Decision::Create => create(ctx, st, cluster, &local[0]).await,
    }
}

async fn create(ctx: &TierContext, st: &mut State, cluster: &Cluster, at: &(String, String)) -> bool {
    let name = &cluster.name;
    let (service, id) = at;
    let started = std::time::Instant::now();
    let spans = cluster.members.iter().any(|m| m.host != ctx.host);
    let mut addrs = Vec::new();
    if spans {
        // Across hosts every node announces its host's private address
        // (`cluster-announce-ip`) and publishes its ports there: meet them
        // there, as the other nodes will.
        let beats = match tokio::time::timeout(BUS_TIMEOUT, ctx.bus.list_heartbeats()).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::warn!(cluster = %name, error = %e, "valkey cluster: cannot read the hosts' addresses");
                return false;
            }
            Err(_) => {
                tracing::warn!(cluster = %name, "valkey cluster: reading the hosts' addresses timed out");
                return false;
            }
        };
        for m in &cluster.members {
            let addr = beats
                .iter()
                .filter(|b| b.host == m.host)
                .find_map(|b| b.labels.get(ADDR_LABEL).filter(|a| !a.is_empty()).cloned());
            match addr {
                Some(a) => addrs.push(format!("{a}:{}", m.port)),
                None => {
                    let reason = format!(
                        "cluster {name}: member {} is on host {}, which publishes no private address (label \
                         {ADDR_LABEL} of its operators)",
                        m.service, m.host
                    );
                    report(ctx, st, name, service, id, reason).await;
                    return false;
                }
            }
        }
    }
    for m in cluster.members.iter().filter(|_| !spans) {
        let what = format!("getent hosts {}", m.service);
        let cmd = vec!["getent".into(), "hosts".into(), m.service.clone()];
        let ip = match exec_output(ctx, id, &what, cmd, EXEC_TIMEOUT).await {
            Ok(out) => out.split_whitespace().next().map(str::to_owned),
            Err(e) => {
                let reason = format!(
                    "cluster {name}: the address of member {} is unknown in {service}: {e}",
                    m.service
                );
                report(ctx, st, name, service, id, reason).await;
                return false;
            }
        };
        match ip.filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()) {
            Some(ip) => addrs.push(format!("{ip}:{}", m.port)),
            None => {
                let reason = format!("cluster {name}: member {service} cannot resolve member {}", m.service);
                report(ctx, st, name, service, id, reason).await;
                return false;
            }
        }
    }
    let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
    args.extend(addrs.iter().cloned());
    args.extend([
        "--cluster-replicas".to_owned(),
        cluster.replicas.to_string(),
        "--cluster-yes".to_owned(),
    ]);
    tracing::info!(cluster = %name, at = %service, nodes = ?addrs, replicas = cluster.replicas, "valkey cluster: creating");
    let what = "valkey-cli --cluster create";
    if let Err(e) = exec_output(ctx, id, what, cli(&cluster.password_file, &args), CREATE_TIMEOUT).await {
        let reason = format!("cluster {name}: creation through member {service} failed: {e}");
        report(ctx, st, name, service, id, reason).await;
        return false;
    }
    // The roles reach every node by gossip: right after the creation a
    // node may still list a new replica as a primary. Read until the counts
    // match the layout (bounded), then publish what the node says.
    let expected = cluster.layout().unwrap_or_default();
    let nodes_cmd = cli(
        &cluster.password_file,
        &[
            "-p".into(),
            cluster.port_of(service).to_string(),
            "cluster".into(),
            "nodes".into(),
        ],
    );
    let deadline = tokio::time::Instant::now() + ROLES_WAIT;
    let (primaries, replicas) = loop {
        let seen = match exec_output(ctx, id, "valkey-cli cluster nodes", nodes_cmd.clone(), EXEC_TIMEOUT).await {
            Ok(out) => Some(count_roles(&out)),
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e, "valkey cluster: created, but its nodes cannot be listed");
                None
            }
        };
        match seen {
            Some(c) if c == expected || tokio::time::Instant::now() >= deadline => break c,
            None if tokio::time::Instant::now() >= deadline => break expected,
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let reason = format!("cluster {name} created: {primaries} primaries, {replicas} replicas");
    tracing::info!(
        cluster = %name,
        took_ms = started.elapsed().as_millis() as u64,
        "{reason}"
    );
    ctx.reconcile
        .events
        .emit(EventKind::Healthy, service, id, 0, reason)
        .await;
    true
}

/// Publishes a problem once per distinct reason and cluster.
async fn report(ctx: &TierContext, st: &mut State, cluster: &str, service: &str, container: &str, reason: String) {
    if st.reported.get(cluster) == Some(&reason) {
        return;
    }
    tracing::warn!(cluster = %cluster, member = %service, "{reason}");
    let service = if service.is_empty() { cluster } else { service };
    ctx.reconcile
        .events
        .emit(EventKind::ReconcileFailed, service, container, 0, reason.clone())
        .await;
    st.reported.insert(cluster.to_owned(), reason);
}

/// The running container of a service (lowest replica).
fn running_container(o: &ObservedService) -> Option<String> {
    o.containers
        .iter()
        .filter(|c| {
            operator_core::decide::ContainerState::parse(&c.state) == operator_core::decide::ContainerState::Running
        })
        .min_by_key(|c| c.replica)
        .map(|c| c.id.clone())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The last `n` bytes of `s` (on a char boundary), trimmed.
fn tail(s: &str, n: usize) -> String {
    let s = s.trim();
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use infra_proto::bus::v1::ServiceSpec;

    const FRESH: &str = "cluster_state:fail\r\ncluster_slots_assigned:0\r\ncluster_slots_ok:0\r\n\
        cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:1\r\ncluster_size:0\r\n\
        cluster_current_epoch:0\r\n";
    const FORMED: &str = "cluster_state:ok\ncluster_slots_assigned:16384\ncluster_slots_ok:16384\n\
        cluster_known_nodes:6\ncluster_size:3\ncluster_current_epoch:6\n";
    const NODES: &str = "\
e358993d4742860d574b9060fc128388a904f2c8 172.18.0.2:6379@16379,valkey-node-0 myself,master - 0 0 1 connected 0-5460
1a2b 172.18.0.3:6379@16379,valkey-node-1 master - 0 1700000000000 2 connected 5461-10922
3c4d 172.18.0.4:6379@16379,valkey-node-2 master - 0 1700000000000 3 connected 10923-16383
5e6f 172.18.0.5:6379@16379,valkey-node-3 slave 3c4d 0 1700000000000 3 connected
7a8b 172.18.0.6:6379@16379,valkey-node-4 slave e358 0 1700000000000 1 connected
9c0d 172.18.0.7:6379@16379,valkey-node-5 slave 1a2b 0 1700000000000 2 connected
";

    fn desired(name: &str, host: &str, labels: &[(&str, &str)]) -> DesiredService {
        DesiredService {
            spec: Some(ServiceSpec {
                name: name.into(),
                tier: "data".into(),
                labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                ..Default::default()
            }),
            host: host.into(),
            ..Default::default()
        }
    }

    fn info(text: &str) -> ClusterInfo {
        parse_cluster_info(text).expect("parses")
    }

    #[test]
    fn a_fresh_node_reads_as_one_known_node_without_slots() {
        assert_eq!(
            info(FRESH),
            ClusterInfo {
                state: "fail".into(),
                slots_assigned: 0,
                known_nodes: 1,
                size: 0
            }
        );
        assert_eq!(info(FORMED).size, 3);
        assert_eq!(info(FORMED).known_nodes, 6);
    }

    #[test]
    fn an_error_reply_is_not_cluster_info() {
        assert_eq!(
            parse_cluster_info("ERR This instance has cluster support disabled"),
            None
        );
        assert_eq!(parse_cluster_info("NOAUTH Authentication required."), None);
    }

    #[test]
    fn cluster_nodes_counts_primaries_and_replicas_and_skips_failed_ones() {
        assert_eq!(count_roles(NODES), (3, 3));
        let failed = NODES.replace("valkey-node-5 slave", "valkey-node-5 slave,fail");
        assert_eq!(count_roles(&failed), (3, 2));
    }

    #[test]
    fn fresh_members_are_created_a_formed_cluster_is_left_alone() {
        let fresh: Vec<_> = (0..6).map(|i| (format!("valkey-node-{i}"), info(FRESH))).collect();
        assert_eq!(decide("c", 6, &fresh), Decision::Create);
        let formed: Vec<_> = (0..6).map(|i| (format!("valkey-node-{i}"), info(FORMED))).collect();
        assert_eq!(decide("c", 6, &formed), Decision::Formed);
    }

    #[test]
    fn a_partly_formed_cluster_is_reported_naming_the_member_not_created() {
        let mut mixed: Vec<_> = (0..6).map(|i| (format!("valkey-node-{i}"), info(FRESH))).collect();
        mixed[2].1 = ClusterInfo {
            state: "fail".into(),
            slots_assigned: 16384,
            known_nodes: 3,
            size: 3,
        };
        let Decision::Report(reason) = decide("valkey-cluster", 6, &mixed) else {
            panic!("must report");
        };
        assert!(
            reason.contains("valkey-cluster") && reason.contains("valkey-node-2"),
            "{reason}"
        );
        assert!(reason.contains("3 of 6 nodes known"), "{reason}");
        // A complete cluster whose node says fail (a node that just
        // restarted) is settling: reported only when it lasts.
        let mut degraded: Vec<_> = (0..6).map(|i| (format!("valkey-node-{i}"), info(FORMED))).collect();
        degraded[0].1.state = "fail".into();
        let Decision::Settling(reason) = decide("c", 6, &degraded) else {
            panic!("settling");
        };
        assert!(
            reason.contains("valkey-node-0") && reason.contains("cluster_state:fail"),
            "{reason}"
        );
        // One that lost a node is not formed either: reported.
        degraded[1].1.known_nodes = 5;
        assert!(matches!(decide("c", 6, &degraded), Decision::Report(_)));
        // A cluster with more nodes than members declared is not ours to touch.
        assert!(matches!(decide("c", 5, &degraded[1..]), Decision::Report(_)));
    }

    #[test]
    fn members_are_grouped_by_the_cluster_label_sorted_by_name() {
        let lbl = [(CLUSTER_LABEL, "vc"), (REPLICAS_LABEL, "1")];
        let d = vec![
            desired("valkey-node-1", "h2", &lbl),
            desired("valkey-node-0", "h1", &lbl),
            desired("mng-valkey", "h1", &[]),
            desired("other-0", "h1", &[(CLUSTER_LABEL, "other")]),
        ];
        let cs = clusters_from(&d);
        assert_eq!(cs.len(), 2);
        let vc = cs["vc"].as_ref().unwrap();
        assert_eq!(vc.replicas, 1);
        assert_eq!(vc.password_file, DEFAULT_PASSWORD_FILE);
        let names: Vec<_> = vc
            .members
            .iter()
            .map(|m| (m.service.as_str(), m.host.as_str()))
            .collect();
        assert_eq!(names, [("valkey-node-0", "h1"), ("valkey-node-1", "h2")]);
        assert_eq!(cs["other"].as_ref().unwrap().replicas, 1, "default: one replica");
    }

    #[test]
    fn a_member_port_comes_from_the_update_order_port_label_and_a_bad_one_names_the_member() {
        let d = vec![
            desired("n0", "h1", &[(CLUSTER_LABEL, "vc"), (PORT_LABEL, "7000")]),
            desired("n1", "h2", &[(CLUSTER_LABEL, "vc")]),
            desired("x0", "h1", &[(CLUSTER_LABEL, "bad"), (PORT_LABEL, "seven")]),
        ];
        let cs = clusters_from(&d);
        let ports: Vec<u16> = cs["vc"].as_ref().unwrap().members.iter().map(|m| m.port).collect();
        assert_eq!(ports, [7000, PORT]);
        let e = cs["bad"].as_ref().unwrap_err();
        assert!(
            e.contains("x0") && e.contains("\"seven\"") && e.contains(PORT_LABEL),
            "{e}"
        );
    }

    #[test]
    fn members_that_disagree_on_replicas_make_the_cluster_an_error_naming_them() {
        let d = vec![
            desired("n0", "h", &[(CLUSTER_LABEL, "vc"), (REPLICAS_LABEL, "1")]),
            desired("n1", "h", &[(CLUSTER_LABEL, "vc"), (REPLICAS_LABEL, "2")]),
            desired("x0", "h", &[(CLUSTER_LABEL, "bad"), (REPLICAS_LABEL, "one")]),
        ];
        let cs = clusters_from(&d);
        let e = cs["vc"].as_ref().unwrap_err();
        assert!(e.contains("n1") && e.contains("n0"), "{e}");
        let e = cs["bad"].as_ref().unwrap_err();
        assert!(e.contains("x0") && e.contains("\"one\""), "{e}");
    }

    #[test]
    fn six_members_with_one_replica_make_three_primaries_five_cannot() {
        let mut c = Cluster {
            name: "vc".into(),
            replicas: 1,
            password_file: DEFAULT_PASSWORD_FILE.into(),
            members: (0..6)
                .map(|i| Member {
                    service: format!("n{i}"),
                    host: "h".into(),
                    tier: "data".into(),
                    port: PORT,
                })
                .collect(),
        };
        assert_eq!(c.layout(), Ok((3, 3)));
        c.members.pop();
        assert!(c.layout().unwrap_err().contains("5 members"));
        c.replicas = 0;
        c.members.truncate(2);
        assert!(c.layout().is_err(), "two primaries are too few");
    }

    #[test]
    fn the_cli_command_carries_the_password_file_not_the_password() {
        let cmd = cli("/run/secrets/p", &["cluster".into(), "info".into()]);
        assert_eq!(cmd[0], "sh");
        assert!(cmd[2].contains("REDISCLI_AUTH") && cmd[2].contains("cat"), "{cmd:?}");
        assert_eq!(&cmd[3..], ["/run/secrets/p", "cluster", "info"]);
    }
}
