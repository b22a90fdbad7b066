//! Valkey's (and Redis 7's) update order, for a cluster (what the Valkey
//! operator for Kubernetes does) and for a primary with replicas outside
//! cluster mode: replicas first, one at a time, each back and synced with
//! its primary before the next; then each primary, after its role moved
//! to its most caught-up replica, so that a primary never restarts while
//! it serves writes.
//!
//! - **Cluster mode**: a graceful `CLUSTER FAILOVER` run on that replica
//!   (the primary pauses its clients until the replica has every write, so
//!   nothing acknowledged is lost). The slot map lives in `nodes.conf`.
//! - **Primary and replicas** (`cluster_enabled:0`): `FAILOVER TO` that
//!   replica on the primary (the same pause and catch-up, then the primary
//!   follows it), `REPLICAOF` the new primary on the other replicas, and
//!   `CONFIG REWRITE` on every member, so that each role survives the
//!   member's restart. So the members must run from a writable config file
//!   (in their volume) and carry no `--replicaof` on their command line;
//!   the hook checks the first (`INFO` `config_file`) before it moves
//!   anything. Clients find the primary through a proxy that checks
//!   `role:master` (compose/04-data/valkey-replication).
//!
//! Everything goes through the members' client port, with a tiny RESP
//! client ([`Conn`]): `INFO replication`, `CLUSTER INFO`, `CLUSTER NODES`,
//! `CLUSTER FAILOVER`. A member is found in the cluster by its own view
//! (`myself` in its `CLUSTER NODES`), and the other nodes at the addresses
//! they announce (`cluster-announce-ip`: across hosts, their host's
//! private address, where their ports are published).
//!
//! # The password
//!
//! The cluster's password is a Docker secret of the members
//! (`valkey_cluster_password`, or the one [`PASSWORD_SECRET_LABEL`] names).
//! The coordinator already holds it: a deploy puts every secret's content
//! in the `infra_secrets` bucket for the operators. The hook reads it from
//! there (the [`Secrets`] it is built with) when it needs it, keeps it
//! only for the call, and sends it only in `AUTH` to the members; it is in no message, log or
//! error (an `AUTH` error says the member refused, never what was sent).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod info;
mod resp;
#[cfg(test)]
mod tests;

pub use info::*;
pub use resp::*;

use super::{HookError, HookFuture, MAX_LAG_LABEL, Member, Secret, Secrets, UpdateOrder};

/// Label naming the secret that holds the cluster password (an empty value:
/// the members have none).
pub const PASSWORD_SECRET_LABEL: &str = "infra.update-order.password-secret";
/// The secret when no label names one (the seed stack's).
pub const DEFAULT_PASSWORD_SECRET: &str = "valkey_cluster_password";
/// Replication offset distance, in bytes, under which a replica counts as
/// caught up (1 MiB).
pub const DEFAULT_MAX_LAG: u64 = 1 << 20;
/// How often to ask again while waiting.
const POLL: Duration = Duration::from_millis(250);
/// How long a failover may take to show the roles moved.
const FAILOVER: Duration = Duration::from_secs(60);

/// The Valkey hook; see the module docs.
#[derive(Clone, Debug)]
pub struct Valkey {
    /// Largest offset distance (bytes) that counts as caught up.
    pub max_lag: u64,
    /// The secret holding the password; `None`: no password.
    pub password_secret: Option<String>,
    /// Where the password is read.
    pub secrets: Secrets,
}

impl Valkey {
    /// The hook as the labels configure it.
    pub fn from_labels(labels: &BTreeMap<String, String>, secrets: &Secrets) -> Result<Self, HookError> {
        let max_lag = match labels.get(MAX_LAG_LABEL) {
            Some(v) => v
                .parse()
                .map_err(|_| HookError(format!("label {MAX_LAG_LABEL}: {v:?} is not a number of bytes")))?,
            None => DEFAULT_MAX_LAG,
        };
        let password_secret = match labels.get(PASSWORD_SECRET_LABEL) {
            Some(s) if s.trim().is_empty() => None,
            Some(s) => Some(s.trim().to_owned()),
            None => Some(DEFAULT_PASSWORD_SECRET.to_owned()),
        };
        Ok(Self {
            max_lag,
            password_secret,
            secrets: secrets.clone(),
        })
    }

    /// The password, read now from the secrets bucket.
    async fn password(&self) -> Result<Option<Secret>, HookError> {
        let Some(name) = &self.password_secret else {
            return Ok(None);
        };
        self.secrets.read("valkey", name, PASSWORD_SECRET_LABEL).await.map(Some)
    }
}

impl Valkey {
    /// One line for the member at `addr:port` (its operator's heartbeat
    /// fact, [`infra_bus::facts::MEMBER_PREFIX`]): `primary running`, `replica
    /// streaming` (link up), `replica syncing` (a full sync in progress)
    /// or `replica down` (link down).
    pub async fn member_line(&self, addr: &str, port: u16) -> Result<String, HookError> {
        let pw = self.password().await?;
        let s = status(addr, port, pw.as_ref()).await?;
        Ok(describe(&s))
    }
}

/// The member line of a node's `INFO` ([`Valkey::member_line`]).
pub fn describe(s: &Status) -> String {
    if s.repl.is_primary() {
        return "primary running".into();
    }
    let state = if s.syncing {
        "syncing"
    } else if s.repl.link_up {
        "streaming"
    } else {
        "down"
    };
    format!("replica {state}")
}

// ------------------------------------------------------------ the hook ---

/// What one member says about itself.
struct View {
    repl: Replication,
    cluster_ok: bool,
    nodes: Vec<Node>,
}

impl View {
    fn myself(&self) -> Option<&Node> {
        self.nodes.iter().find(|n| n.is_myself())
    }
}

async fn view(addr: &str, port: u16, pw: Option<&Secret>) -> Result<View, HookError> {
    let mut c = Conn::open(addr, port, pw).await?;
    let info = c.text(&["INFO", "replication"]).await?;
    let repl = parse_replication(&info)
        .ok_or_else(|| HookError(format!("valkey {addr}:{port}: INFO replication has no role")))?;
    let ci = fields(&c.text(&["CLUSTER", "INFO"]).await?);
    let nodes = parse_nodes(&c.text(&["CLUSTER", "NODES"]).await?);
    Ok(View {
        repl,
        cluster_ok: ci.get("cluster_state").is_some_and(|s| s == "ok"),
        nodes,
    })
}

async fn replication(addr: &str, port: u16, pw: Option<&Secret>) -> Result<Replication, HookError> {
    let mut c = Conn::open(addr, port, pw).await?;
    let info = c.text(&["INFO", "replication"]).await?;
    parse_replication(&info).ok_or_else(|| HookError(format!("valkey {addr}:{port}: INFO replication has no role")))
}

impl Valkey {
    async fn fail_over(&self, member: &Member, me: &View, pw: Option<&Secret>) -> Result<(), HookError> {
        let Some(myself) = me.myself() else {
            return Err(HookError(format!("{}: CLUSTER NODES has no myself line", member.name)));
        };
        let mut nodes = Vec::new();
        let mut reps = Vec::new();
        for n in me
            .nodes
            .iter()
            .filter(|n| n.primary.as_deref() == Some(myself.id.as_str()))
        {
            reps.push(Candidate {
                at: format!("{}:{}", n.ip, n.port),
                ruled_out: n.failing().then_some("flagged failing"),
                repl: replication(&n.ip, n.port, pw).await.ok(),
            });
            nodes.push(n.clone());
        }
        let cand = nodes[candidate(&member.name, me.repl.offset, &reps, self.max_lag)?].clone();
        let at = format!("{}:{}", cand.ip, cand.port);
        tracing::info!(member = %member.name, to = %at, "valkey: failing the primary over before it restarts");
        let mut c = Conn::open(&cand.ip, cand.port, pw).await?;
        match c.call(&["CLUSTER", "FAILOVER"]).await? {
            Reply::Simple(_) => {}
            Reply::Error(e) => {
                return Err(HookError(format!(
                    "CLUSTER FAILOVER on {at} (replica of {}): {e}",
                    member.name
                )));
            }
            other => return Err(HookError(format!("CLUSTER FAILOVER on {at}: answered {other:?}"))),
        }
        // The role really moved: the replica says it is a primary with the
        // slots, and the old primary says it follows it.
        let start = Instant::now();
        let what = format!("failover of {} to {at}: roles did not move", member.name);
        let (cand, at) = (&cand, at.as_str());
        super::poll_until(&what, FAILOVER, POLL, || async move {
            let n = view(&cand.ip, cand.port, pw).await.map_err(|e| e.0)?;
            let o = view(&member.addr, member.port, pw).await.map_err(|e| e.0)?;
            let n_leads = n.repl.is_primary() && n.myself().is_some_and(|m| !m.slots.is_empty());
            let o_follows =
                !o.repl.is_primary() && o.myself().and_then(|m| m.primary.as_deref()) == Some(cand.id.as_str());
            if n_leads && o_follows && n.cluster_ok {
                return Ok(());
            }
            Err(format!(
                "{at} is {} ({} slot ranges), {} is {}",
                n.repl.role,
                n.myself().map_or(0, |m| m.slots.len()),
                member.name,
                o.repl.role
            ))
        })
        .await?;
        tracing::info!(
            member = %member.name,
            to = %at,
            took_ms = start.elapsed().as_millis() as u64,
            "valkey: failover done"
        );
        Ok(())
    }

    /// Whether `member` is back and synced, and if not, why.
    async fn synced(&self, member: &Member, pw: Option<&Secret>) -> Result<(), String> {
        let me = view(&member.addr, member.port, pw).await.map_err(|e| e.0)?;
        if !me.cluster_ok {
            return Err(format!("{} does not see cluster_state:ok", member.name));
        }
        let Some(myself) = me.myself().cloned() else {
            return Err(format!("{}: CLUSTER NODES has no myself line", member.name));
        };
        if me.repl.is_primary() {
            // A primary that was not failed over (no replica): serving is enough.
            return Ok(());
        }
        if !me.repl.link_up {
            return Err(format!("{} has master_link_status down", member.name));
        }
        let Some(pid) = myself.primary.as_deref() else {
            return Err(format!("{} is a replica of no node", member.name));
        };
        let Some(p) = me.nodes.iter().find(|n| n.id == pid) else {
            return Err(format!(
                "{}: its primary {pid} is not in its CLUSTER NODES",
                member.name
            ));
        };
        let pv = view(&p.ip, p.port, pw).await.map_err(|e| e.0)?;
        let behind = pv.repl.offset.saturating_sub(me.repl.offset);
        if behind > self.max_lag {
            return Err(format!(
                "{} is {behind} bytes behind its primary {}:{}",
                member.name, p.ip, p.port
            ));
        }
        // The primary sees it online, and not as failing.
        if !lists_online(&pv.repl.replicas, &myself.ip, myself.port) {
            return Err(format!(
                "primary {}:{} does not list {} online",
                p.ip, p.port, member.name
            ));
        }
        if pv.nodes.iter().any(|n| n.id == myself.id && n.failing()) {
            return Err(format!("primary {}:{} flags {} failing", p.ip, p.port, member.name));
        }
        Ok(())
    }
}

// ------------------------------------------ primary and replicas (no cluster) ---

/// What `INFO` (its default sections) says of a member: its replication,
/// whether cluster mode is on, the config file it runs from (empty: none)
/// and the state of a `FAILOVER` it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// `INFO replication`.
    pub repl: Replication,
    /// `cluster_enabled:1`.
    pub cluster: bool,
    /// `config_file` (empty: started without one).
    pub config_file: String,
    /// `master_failover_state` (`no-failover`, `waiting-for-sync`,
    /// `failover-in-progress`).
    pub failover: String,
    /// A replica's `master_sync_in_progress:1` (a full sync).
    pub syncing: bool,
}

/// Parses `INFO`. `None` without a `role` (an error reply).
pub fn parse_status(text: &str) -> Option<Status> {
    let repl = parse_replication(text)?;
    let f = fields(text);
    Some(Status {
        repl,
        cluster: f.get("cluster_enabled").is_some_and(|v| v == "1"),
        config_file: f.get("config_file").cloned().unwrap_or_default(),
        failover: f
            .get("master_failover_state")
            .cloned()
            .unwrap_or_else(|| "no-failover".into()),
        syncing: f.get("master_sync_in_progress").is_some_and(|v| v == "1"),
    })
}

async fn status(addr: &str, port: u16, pw: Option<&Secret>) -> Result<Status, HookError> {
    let mut c = Conn::open(addr, port, pw).await?;
    let info = c.text(&["INFO"]).await?;
    parse_status(&info).ok_or_else(|| HookError(format!("valkey {addr}:{port}: INFO has no role")))
}

/// A command that must answer `+OK`; otherwise an error naming the member
/// and what it answered.
async fn ok(m: &Member, pw: Option<&Secret>, args: &[&str]) -> Result<(), HookError> {
    let mut c = Conn::open(&m.addr, m.port, pw).await?;
    match c.call(args).await? {
        Reply::Simple(_) => Ok(()),
        Reply::Error(e) => Err(HookError(format!("{} on {}: {e}", args.join(" "), m.name))),
        other => Err(HookError(format!(
            "{} on {}: answered {other:?}",
            args.join(" "),
            m.name
        ))),
    }
}

/// How long a `FAILOVER` may wait for its target to catch up before the
/// primary gives up and keeps its role (its clients are paused meanwhile).
const FAILOVER_TIMEOUT_MS: u64 = 10_000;

/// Why a member's role would not survive its restart, or `None`.
fn no_config(name: &str, s: &Status) -> Option<HookError> {
    s.config_file.is_empty().then(|| {
        HookError(format!(
            "{name} runs without a config file (INFO config_file is empty): a role handed over by FAILOVER \
             or REPLICAOF would not survive its restart, so no primary is handed over; start the members \
             from a config file in their volume, with no --replicaof on the command line \
             (compose/04-data/valkey-replication)"
        ))
    })
}

impl Valkey {
    /// A primary outside cluster mode hands its role to its most caught-up
    /// replica before it restarts: `FAILOVER TO` that replica (the primary
    /// pauses writes until the replica has them all, then follows it: no
    /// acknowledged write is lost), the other replicas are pointed at the
    /// new primary (`REPLICAOF`), and every member's role is written to
    /// its config file (`CONFIG REWRITE`), so that the old primary comes
    /// back as a replica. Refused, before anything changes, when a member
    /// has no config file, does not answer, or is a second primary.
    async fn hand_over(
        &self,
        member: &Member,
        me: &Status,
        members: &[Member],
        pw: Option<&Secret>,
    ) -> Result<(), HookError> {
        if let Some(e) = no_config(&member.name, me) {
            return Err(e);
        }
        let others: Vec<&Member> = members.iter().filter(|m| m.name != member.name).collect();
        let mut seen = Vec::new();
        for m in &others {
            let s = status(&m.addr, m.port, pw).await.map_err(|e| {
                HookError(format!(
                    "{} did not answer before the failover of primary {}: {}",
                    m.name, member.name, e.0
                ))
            })?;
            if let Some(e) = no_config(&m.name, &s) {
                return Err(e);
            }
            if s.repl.is_primary() {
                return Err(HookError(format!(
                    "{} and {} are both primaries: no failover while the roles are in doubt",
                    member.name, m.name
                )));
            }
            seen.push(s);
        }
        let cands: Vec<Candidate> = others
            .iter()
            .zip(&seen)
            .map(|(m, s)| Candidate {
                at: format!("{} ({}:{})", m.name, m.addr, m.port),
                ruled_out: listed_as(&me.repl.replicas, m)
                    .is_none()
                    .then_some("not listed online by the primary as its name or host address and port"),
                repl: Some(s.repl.clone()),
            })
            .collect();
        let k = candidate(&member.name, me.repl.offset, &cands, self.max_lag)?;
        let target = others[k];
        let (ip, port, ..) = listed_as(&me.repl.replicas, target)
            .cloned()
            .expect("a candidate is listed online");
        let to = format!("{ip}:{port}");
        tracing::info!(member = %member.name, to = %target.name, at = %to, "valkey: handing the primary role over before it restarts");
        let start = Instant::now();
        ok(
            member,
            pw,
            &[
                "FAILOVER",
                "TO",
                &ip,
                &port.to_string(),
                "TIMEOUT",
                &FAILOVER_TIMEOUT_MS.to_string(),
            ],
        )
        .await?;
        // The roles really moved: the old primary follows the target, its
        // failover is over, and the target is a primary.
        loop {
            let old = status(&member.addr, member.port, pw).await;
            let new = status(&target.addr, target.port, pw).await;
            let why = match (&old, &new) {
                (Ok(o), Ok(n)) => {
                    let follows = !o.repl.is_primary() && o.repl.primary.as_ref() == Some(&(ip.clone(), port));
                    if follows && o.failover == "no-failover" && n.repl.is_primary() {
                        break;
                    }
                    if o.repl.is_primary() && o.failover == "no-failover" {
                        return Err(HookError(format!(
                            "the failover of primary {} to {} was aborted: the replica did not catch up within \
                             {}s (FAILOVER TIMEOUT); {} is still the primary and was not restarted",
                            member.name,
                            target.name,
                            FAILOVER_TIMEOUT_MS / 1000,
                            member.name
                        )));
                    }
                    format!(
                        "{} is {} ({}), {} is {}",
                        member.name, o.repl.role, o.failover, target.name, n.repl.role
                    )
                }
                (Err(e), _) | (_, Err(e)) => e.0.clone(),
            };
            if start.elapsed() >= FAILOVER {
                return Err(HookError(format!(
                    "failover of {} to {}: roles did not move within {}s: {why}",
                    member.name,
                    target.name,
                    FAILOVER.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        let took_ms = start.elapsed().as_millis() as u64;
        // The other replicas follow the new primary (they followed the old
        // one, which now replicates from it).
        for (m, s) in others.iter().zip(&seen) {
            if m.name == target.name || s.repl.primary.as_ref() == Some(&(ip.clone(), port)) {
                continue;
            }
            ok(m, pw, &["REPLICAOF", &ip, &port.to_string()]).await?;
        }
        // Every role into its config file, the old primary's first: it is
        // the one about to restart.
        for m in std::iter::once(member).chain(others.iter().copied()) {
            ok(m, pw, &["CONFIG", "REWRITE"]).await.map_err(|e| {
                HookError(format!(
                    "{}: its role would not survive a restart; {} is not restarted",
                    e.0, member.name
                ))
            })?;
        }
        tracing::info!(member = %member.name, to = %target.name, took_ms, "valkey: failover done");
        Ok(())
    }

    /// Whether `member` (no cluster) is back and synced: a replica with its
    /// link up, within `max_lag` of its primary, which lists it online; or
    /// the one primary. Two primaries are never ready.
    async fn synced_replica(&self, member: &Member, members: &[Member], pw: Option<&Secret>) -> Result<(), String> {
        let me = status(&member.addr, member.port, pw).await.map_err(|e| e.0)?;
        if me.repl.is_primary() {
            for m in members.iter().filter(|m| m.name != member.name) {
                if status(&m.addr, m.port, pw).await.is_ok_and(|s| s.repl.is_primary()) {
                    return Err(format!("{} and {} are both primaries", member.name, m.name));
                }
            }
            return Ok(());
        }
        if !me.repl.link_up {
            return Err(format!("{} has master_link_status down", member.name));
        }
        let Some((h, p)) = me.repl.primary.clone() else {
            return Err(format!("{} is a replica of no node", member.name));
        };
        let Some(pm) = member_at(members, &h, p) else {
            return Err(format!(
                "{} replicates from {h}:{p}, which is no member of the cluster",
                member.name
            ));
        };
        let pv = status(&pm.addr, pm.port, pw).await.map_err(|e| e.0)?;
        if !pv.repl.is_primary() {
            return Err(format!("{}'s primary {} is a {}", member.name, pm.name, pv.repl.role));
        }
        let behind = pv.repl.offset.saturating_sub(me.repl.offset);
        if behind > self.max_lag {
            return Err(format!(
                "{} is {behind} bytes behind its primary {}",
                member.name, pm.name
            ));
        }
        if listed_as(&pv.repl.replicas, member).is_none() {
            return Err(format!("primary {} does not list {} online", pm.name, member.name));
        }
        Ok(())
    }
}

impl UpdateOrder for Valkey {
    fn kind(&self) -> &'static str {
        "valkey"
    }

    fn default_port(&self) -> u16 {
        6379
    }

    fn order<'a>(&'a self, members: &'a [Member]) -> HookFuture<'a, Vec<usize>> {
        Box::pin(async move {
            let pw = self.password().await.ok().flatten();
            let mut roles = Vec::new();
            for m in members {
                roles.push(
                    replication(&m.addr, m.port, pw.as_ref())
                        .await
                        .ok()
                        .map(|r| r.is_primary()),
                );
            }
            rank(&roles)
        })
    }

    fn before_restart<'a>(
        &'a self,
        member: &'a Member,
        members: &'a [Member],
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let pw = self.password().await?;
            let st = status(&member.addr, member.port, pw.as_ref())
                .await
                .map_err(|e| HookError(format!("{}: {}", member.name, e.0)))?;
            if !st.repl.is_primary() {
                return Ok(());
            }
            if !st.cluster {
                return self.hand_over(member, &st, members, pw.as_ref()).await;
            }
            let me = view(&member.addr, member.port, pw.as_ref())
                .await
                .map_err(|e| HookError(format!("{}: {}", member.name, e.0)))?;
            self.fail_over(member, &me, pw.as_ref()).await
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
            let pw = pw.as_ref();
            let what = format!("{} did not rejoin the cluster synced", member.name);
            super::poll_until(&what, deadline, POLL, || async move {
                match status(&member.addr, member.port, pw).await {
                    Ok(s) if s.cluster => self.synced(member, pw).await,
                    Ok(_) => self.synced_replica(member, members, pw).await,
                    Err(e) => Err(e.0),
                }
            })
            .await
        })
    }
}
