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

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{HookError, HookFuture, MAX_LAG_LABEL, Member, Secret, Secrets, UpdateOrder};

/// Label naming the secret that holds the cluster password (an empty value:
/// the members have none).
pub const PASSWORD_SECRET_LABEL: &str = "infra.update-order.password-secret";
/// The secret when no label names one (the seed stack's).
pub const DEFAULT_PASSWORD_SECRET: &str = "valkey_cluster_password";
/// Replication offset distance, in bytes, under which a replica counts as
/// caught up (1 MiB).
pub const DEFAULT_MAX_LAG: u64 = 1 << 20;
/// How long one command may take.
const CALL: Duration = Duration::from_secs(3);
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

// ------------------------------------------------------------------ RESP ---

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Int(i64),
    /// `$n` and its bytes; `None` for `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n` and its elements; `None` for `*-1`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (a simple or bulk string), or why it is not.
    pub fn text(self) -> Result<String, String> {
        match self {
            Reply::Simple(s) => Ok(s),
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Reply::Error(e) => Err(e),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }
}

/// A command as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the front of `buf`: `Ok(None)` when more bytes are
/// needed, else the reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some(&kind) = buf.first() else { return Ok(None) };
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    let after = end + 2;
    let number = |l: &str| l.parse::<i64>().map_err(|_| format!("bad RESP length {l:?}"));
    match kind {
        b'+' => Ok(Some((Reply::Simple(line), after))),
        b'-' => Ok(Some((Reply::Error(line), after))),
        b':' => Ok(Some((Reply::Int(number(&line)?), after))),
        b'$' => {
            let n = number(&line)?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            Ok(Some((Reply::Bulk(Some(buf[after..after + n].to_vec())), after + n + 2)))
        }
        b'*' => {
            let n = number(&line)?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..n {
                match parse(&buf[at..])? {
                    Some((r, used)) => {
                        items.push(r);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(format!("not a RESP reply (starts with {:?})", other as char)),
    }
}

/// A connection to one member, authenticated when there is a password.
pub struct Conn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    target: String,
}

impl Conn {
    /// Connects to `addr:port` (and sends `AUTH`), bounded by [`CALL`].
    pub async fn open(addr: &str, port: u16, password: Option<&Secret>) -> Result<Self, HookError> {
        let target = format!("{addr}:{port}");
        let stream = match tokio::time::timeout(CALL, tokio::net::TcpStream::connect(&target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(HookError(format!("valkey {target}: connect: {e}"))),
            Err(_) => return Err(HookError(format!("valkey {target}: connect: no answer within 3s"))),
        };
        let mut c = Self {
            stream,
            buf: Vec::new(),
            target,
        };
        if let Some(p) = password {
            match c.call(&["AUTH", &p.0]).await? {
                Reply::Simple(_) => {}
                Reply::Error(e) => {
                    // The server's words only (WRONGPASS ...): never what was sent.
                    let word = e.split_whitespace().next().unwrap_or("error").to_owned();
                    return Err(HookError(format!("valkey {}: AUTH refused ({word})", c.target)));
                }
                other => return Err(HookError(format!("valkey {}: AUTH answered {other:?}", c.target))),
            }
        }
        Ok(c)
    }

    /// Sends one command and reads its reply, bounded by [`CALL`]. Errors
    /// name the command (its first two words, never its arguments).
    pub async fn call(&mut self, args: &[&str]) -> Result<Reply, HookError> {
        let what = args.iter().take(2).copied().collect::<Vec<_>>().join(" ");
        let what = if args.first().is_some_and(|a| a.eq_ignore_ascii_case("auth")) {
            "AUTH".to_owned()
        } else {
            what
        };
        let fut = async {
            self.stream
                .write_all(&encode(args))
                .await
                .map_err(|e| format!("write: {e}"))?;
            loop {
                if let Some((reply, used)) = parse(&self.buf)? {
                    self.buf.drain(..used);
                    return Ok::<_, String>(reply);
                }
                let mut chunk = [0u8; 8192];
                let n = self.stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("connection closed".into());
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        match tokio::time::timeout(CALL, fut).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(HookError(format!("valkey {} {what}: {e}", self.target))),
            Err(_) => Err(HookError(format!(
                "valkey {} {what}: no answer within {}s",
                self.target,
                CALL.as_secs()
            ))),
        }
    }

    /// A command whose reply is text (`INFO`, `CLUSTER NODES`); an error
    /// reply is an error naming the command.
    pub async fn text(&mut self, args: &[&str]) -> Result<String, HookError> {
        let r = self.call(args).await?;
        r.text().map_err(|e| {
            HookError(format!(
                "valkey {} {}: {e}",
                self.target,
                args.iter().take(2).copied().collect::<Vec<_>>().join(" ")
            ))
        })
    }
}

// --------------------------------------------------------------- parsing ---

/// `key:value` lines of `INFO` or `CLUSTER INFO` (sections and blank
/// lines skipped).
pub fn fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// What `INFO replication` says about a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replication {
    /// `master` or `slave`.
    pub role: String,
    /// A replica's primary (`master_host`, `master_port`).
    pub primary: Option<(String, u16)>,
    /// A replica's `master_link_status` is `up`.
    pub link_up: bool,
    /// A replica's `slave_repl_offset`, a primary's `master_repl_offset`.
    pub offset: u64,
    /// A primary's replicas: (ip, port, state, offset).
    pub replicas: Vec<(String, u16, String, u64)>,
}

impl Replication {
    /// Whether the node is a primary.
    pub fn is_primary(&self) -> bool {
        self.role == "master"
    }
}

/// Parses `INFO replication`. `None` without a `role` (an error reply).
pub fn parse_replication(text: &str) -> Option<Replication> {
    let f = fields(text);
    let role = f.get("role")?.clone();
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    let primary = match (f.get("master_host"), f.get("master_port").and_then(|p| p.parse().ok())) {
        (Some(h), Some(p)) => Some((h.clone(), p)),
        _ => None,
    };
    let offset = if role == "master" {
        num("master_repl_offset").unwrap_or(0)
    } else {
        num("slave_repl_offset")
            .or_else(|| num("master_repl_offset"))
            .unwrap_or(0)
    };
    let mut replicas = Vec::new();
    for (k, v) in &f {
        let Some(n) = k.strip_prefix("slave") else { continue };
        if n.parse::<u32>().is_err() {
            continue;
        }
        let kv: BTreeMap<&str, &str> = v.split(',').filter_map(|p| p.split_once('=')).collect();
        let (Some(ip), Some(port)) = (kv.get("ip"), kv.get("port").and_then(|p| p.parse().ok())) else {
            continue;
        };
        replicas.push((
            (*ip).to_owned(),
            port,
            kv.get("state").copied().unwrap_or("").to_owned(),
            kv.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0),
        ));
    }
    Some(Replication {
        link_up: f.get("master_link_status").is_some_and(|s| s == "up"),
        role,
        primary,
        offset,
        replicas,
    })
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Node id.
    pub id: String,
    /// Announced address.
    pub ip: String,
    /// Announced client port.
    pub port: u16,
    /// Flags (`myself`, `master`, `slave`, `fail`, `fail?`, ...).
    pub flags: Vec<String>,
    /// A replica's primary id (`-` for a primary).
    pub primary: Option<String>,
    /// `connected` or `disconnected`.
    pub link: String,
    /// Slot ranges (a primary's).
    pub slots: Vec<String>,
}

impl Node {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
    /// Flagged `myself`.
    pub fn is_myself(&self) -> bool {
        self.has("myself")
    }
    /// Flagged `master`.
    pub fn is_primary(&self) -> bool {
        self.has("master")
    }
    /// Flagged `slave` (or `replica`).
    pub fn is_replica(&self) -> bool {
        self.has("slave") || self.has("replica")
    }
    /// Flagged failing (`fail`, `fail?`) or without an address.
    pub fn failing(&self) -> bool {
        self.has("fail") || self.has("fail?") || self.has("noaddr")
    }
}

/// Parses `CLUSTER NODES` (lines it cannot read are skipped).
pub fn parse_nodes(text: &str) -> Vec<Node> {
    let mut out = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 8 {
            continue;
        }
        // ip:port@cport[,hostname]
        let addr = w[1].split(['@', ',']).next().unwrap_or("");
        let Some((ip, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse() else { continue };
        out.push(Node {
            id: w[0].to_owned(),
            ip: ip.to_owned(),
            port,
            flags: w[2].split(',').map(str::to_owned).collect(),
            primary: (w[3] != "-").then(|| w[3].to_owned()),
            link: w[7].to_owned(),
            slots: w[8..].iter().map(|s| (*s).to_owned()).collect(),
        });
    }
    out
}

/// Whether a primary's replica list (`INFO replication`) has the replica
/// announced at `ip:port` online. The primary sees a replica at the address
/// its connection comes from: across hosts that is the announced host
/// address, but a replica on the primary's own host connects from its
/// container's address; so when no entry has `ip`, the port decides.
pub fn lists_online(replicas: &[(String, u16, String, u64)], ip: &str, port: u16) -> bool {
    let by_ip = replicas.iter().any(|(i, ..)| i == ip);
    replicas
        .iter()
        .any(|(i, p, state, _)| *p == port && state == "online" && (!by_ip || i == ip))
}

/// The entry of a primary's replica list (`INFO replication`) for member
/// `m` outside cluster mode: online, announced by its name or its host's
/// address (`replica-announce-ip`) and its port. A replica listed by its
/// container's address is not found: it could not be told apart from
/// another on the same port, and a restart changes that address.
pub fn listed_as<'a>(replicas: &'a [(String, u16, String, u64)], m: &Member) -> Option<&'a (String, u16, String, u64)> {
    replicas
        .iter()
        .find(|(i, p, state, _)| (*i == m.name || *i == m.addr) && *p == m.port && state == "online")
}

/// The member a replica's `master_host:master_port` names (by its name or
/// its host's address, and its port).
pub fn member_at<'a>(members: &'a [Member], host: &str, port: u16) -> Option<&'a Member> {
    members
        .iter()
        .find(|m| (m.name == host || m.addr == host) && m.port == port)
}

/// The order for members whose roles are known (`Some(true)`: a primary):
/// replicas first, then members that could not be asked, primaries last;
/// stable otherwise.
pub fn rank(primary: &[Option<bool>]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..primary.len()).collect();
    idx.sort_by_key(|&i| match primary[i] {
        Some(false) => 0,
        None => 1,
        Some(true) => 2,
    });
    idx
}

/// A replica a primary could hand its role to: where it is (`ip:port`),
/// whether it is ruled out whatever its offset (flagged failing in the
/// cluster, or not listed online by the primary), and what it said of its
/// replication (`None`: it did not answer).
#[derive(Clone, Debug)]
pub struct Candidate {
    /// `ip:port`, for messages.
    pub at: String,
    /// Why it is ruled out whatever its offset (`flagged failing`, `not
    /// listed online by the primary`).
    pub ruled_out: Option<&'static str>,
    /// Its `INFO replication`.
    pub repl: Option<Replication>,
}

/// The replica to hand `primary`'s role to, as an index into `replicas`:
/// link up, not ruled out, within `max_lag` of `primary_offset`, the
/// highest offset (ties: the first). The error names the primary and what
/// each replica is.
pub fn candidate(primary: &str, primary_offset: u64, replicas: &[Candidate], max_lag: u64) -> Result<usize, HookError> {
    let mut best: Option<(usize, u64)> = None;
    let mut why = Vec::new();
    for (i, c) in replicas.iter().enumerate() {
        match &c.repl {
            Some(r) if c.ruled_out.is_none() && r.link_up && primary_offset.saturating_sub(r.offset) <= max_lag => {
                if best.is_none_or(|(_, b)| r.offset > b) {
                    best = Some((i, r.offset));
                }
            }
            Some(r) => why.push(format!(
                "{} link {} offset {} of {primary_offset}{}",
                c.at,
                if r.link_up { "up" } else { "down" },
                r.offset,
                c.ruled_out.map(|w| format!(" ({w})")).unwrap_or_default()
            )),
            None => why.push(format!("{} did not answer", c.at)),
        }
    }
    best.map(|(i, _)| i).ok_or_else(|| {
        HookError(format!(
            "no caught-up replica to fail primary {primary} over to (at most {max_lag} bytes behind): {}",
            if why.is_empty() {
                "it has no replica".to_string()
            } else {
                why.join("; ")
            }
        ))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
e358 10.0.0.101:7000@17000 myself,master - 0 0 1 connected 0-5460
1a2b 10.0.0.102:7001@17001 master - 0 1700000000000 2 connected 5461-10922
3c4d 10.0.0.103:7002@17002,valkey-node-2 master - 0 1700000000000 3 connected 10923-16383
5e6f 10.0.0.101:7003@17003 slave 3c4d 0 1700000000000 3 connected
7a8b 10.0.0.102:7004@17004 slave,fail e358 0 1700000000000 1 disconnected
9c0d 10.0.0.103:7005@17005 slave e358 0 1700000000000 1 connected
";

    const INFO_PRIMARY: &str = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
slave0:ip=10.0.0.103,port=7005,state=online,offset=5000,lag=0\r\n\
slave1:ip=10.0.0.102,port=7004,state=wait_bgsave,offset=0,lag=3\r\n\
master_failover_state:no-failover\r\nmaster_replid:abc\r\nmaster_repl_offset:5042\r\n";

    const INFO_REPLICA: &str = "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.101\r\nmaster_port:7000\r\n\
master_link_status:up\r\nmaster_last_io_seconds_ago:1\r\nslave_repl_offset:5000\r\nslave_priority:100\r\n\
master_repl_offset:5000\r\n";

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&["CLUSTER", "INFO"]),
            b"*2\r\n$7\r\nCLUSTER\r\n$4\r\nINFO\r\n".to_vec()
        );
        assert_eq!(
            encode(&["SET", "k", ""]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn replies_of_every_kind_parse_and_a_partial_one_asks_for_more() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Some((Reply::Simple("OK".into()), 5)));
        assert_eq!(parse(b"-ERR no\r\n").unwrap(), Some((Reply::Error("ERR no".into()), 9)));
        assert_eq!(parse(b":12\r\nrest").unwrap(), Some((Reply::Int(12), 5)));
        assert_eq!(
            parse(b"$5\r\nhello\r\n").unwrap(),
            Some((Reply::Bulk(Some(b"hello".to_vec())), 11))
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Bulk(None), 5)));
        let arr = b"*2\r\n:1\r\n$2\r\nok\r\n";
        assert_eq!(
            parse(arr).unwrap(),
            Some((
                Reply::Array(Some(vec![Reply::Int(1), Reply::Bulk(Some(b"ok".to_vec()))])),
                arr.len()
            ))
        );
        // Every strict prefix needs more bytes.
        for cut in 0..arr.len() {
            assert_eq!(parse(&arr[..cut]).unwrap(), None, "prefix of {cut} bytes");
        }
        assert_eq!(parse(b"$5\r\nhel").unwrap(), None);
        assert!(parse(b"?what\r\n").is_err());
        assert!(parse(b"$x\r\n").is_err());
    }

    #[test]
    fn info_replication_of_a_primary_lists_its_replicas_and_offset() {
        let r = parse_replication(INFO_PRIMARY).unwrap();
        assert!(r.is_primary());
        assert_eq!(r.offset, 5042);
        assert_eq!(r.primary, None);
        assert_eq!(
            r.replicas,
            vec![
                ("10.0.0.103".into(), 7005, "online".into(), 5000),
                ("10.0.0.102".into(), 7004, "wait_bgsave".into(), 0)
            ]
        );
    }

    #[test]
    fn info_replication_of_a_replica_has_its_primary_link_and_offset() {
        let r = parse_replication(INFO_REPLICA).unwrap();
        assert!(!r.is_primary());
        assert_eq!(r.primary, Some(("10.0.0.101".into(), 7000)));
        assert!(r.link_up);
        assert_eq!(r.offset, 5000);
        let down = INFO_REPLICA.replace("master_link_status:up", "master_link_status:down");
        assert!(!parse_replication(&down).unwrap().link_up);
        assert_eq!(parse_replication("-NOAUTH Authentication required."), None);
    }

    #[test]
    fn cluster_nodes_lines_give_address_flags_primary_and_slots() {
        let n = parse_nodes(NODES);
        assert_eq!(n.len(), 6);
        assert!(n[0].is_myself() && n[0].is_primary());
        assert_eq!((n[0].ip.as_str(), n[0].port), ("10.0.0.101", 7000));
        assert_eq!(n[0].slots, ["0-5460"]);
        assert_eq!(
            (n[2].ip.as_str(), n[2].port),
            ("10.0.0.103", 7002),
            "hostname suffix ignored"
        );
        assert!(n[3].is_replica() && n[3].primary.as_deref() == Some("3c4d"));
        assert!(n[4].failing() && n[4].link == "disconnected");
        assert!(!n[5].failing());
    }

    #[test]
    fn a_primary_lists_a_replica_online_by_its_address_or_only_its_port_when_it_sees_another_address() {
        let r = parse_replication(INFO_PRIMARY).unwrap().replicas;
        assert!(lists_online(&r, "10.0.0.103", 7005));
        assert!(!lists_online(&r, "10.0.0.102", 7004), "wait_bgsave is not online");
        assert!(!lists_online(&r, "10.0.0.103", 7004));
        // Seen from its container's address (same host): the port decides.
        assert!(lists_online(&r, "10.0.0.101", 7005));
        assert!(!lists_online(&r, "10.0.0.101", 7009));
        assert!(!lists_online(&[], "10.0.0.101", 7005));
    }

    #[test]
    fn replicas_restart_first_unknown_members_next_primaries_last_in_their_order() {
        let roles = [Some(true), Some(false), None, Some(true), Some(false)];
        assert_eq!(rank(&roles), vec![1, 4, 2, 0, 3]);
        assert_eq!(rank(&[]), Vec::<usize>::new());
    }

    fn replica(node: &Node, link_up: bool, offset: u64) -> Candidate {
        Candidate {
            at: format!("{}:{}", node.ip, node.port),
            ruled_out: node.failing().then_some("flagged failing"),
            repl: Some(Replication {
                role: "slave".into(),
                link_up,
                offset,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_failover_goes_to_the_most_caught_up_healthy_replica() {
        let n = parse_nodes(NODES);
        let healthy = n[5].clone();
        let mut other = n[3].clone();
        other.flags = vec!["slave".into()];
        // Highest offset wins; a failing or link-down replica never does.
        let reps = vec![
            replica(&other, true, 4000),
            replica(&healthy, true, 5000),
            replica(&n[4], true, 5042),
        ];
        assert_eq!(candidate("valkey-node-0", 5042, &reps, 1 << 20).unwrap(), 1);
        let reps = vec![replica(&other, false, 5042), replica(&healthy, true, 4900)];
        assert_eq!(candidate("p", 5042, &reps, 1 << 20).unwrap(), 1);
        // Ruled out (a primary that does not list it online): never chosen.
        let mut unlisted = replica(&healthy, true, 5042);
        unlisted.ruled_out = Some("not listed online by the primary");
        let reps = vec![unlisted, replica(&other, true, 5000)];
        assert_eq!(candidate("p", 5042, &reps, 1 << 20).unwrap(), 1);
    }

    #[test]
    fn no_caught_up_replica_stops_the_roll_naming_the_primary_and_what_each_replica_is() {
        let n = parse_nodes(NODES);
        let mut silent = replica(&n[3], true, 0);
        silent.repl = None;
        let reps = vec![replica(&n[5], true, 100), silent, replica(&n[4], false, 5042)];
        let e = candidate("valkey-node-0", 5042, &reps, 1000).unwrap_err().0;
        assert!(e.contains("valkey-node-0"), "{e}");
        assert!(e.contains("10.0.0.103:7005 link up offset 100 of 5042"), "{e}");
        assert!(e.contains("10.0.0.101:7003 did not answer"), "{e}");
        assert!(e.contains("(flagged failing)"), "{e}");
        let e = candidate("p", 1, &[], 1000).unwrap_err().0;
        assert!(e.contains("it has no replica"), "{e}");
    }

    const INFO_STANDALONE: &str = "# Server\r\nredis_version:7.0.15\r\nconfig_file:/data/valkey.conf\r\n\
# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
slave0:ip=valkey-rep-1,port=7101,state=online,offset=900,lag=0\r\n\
slave1:ip=10.0.0.103,port=7102,state=online,offset=880,lag=1\r\n\
master_failover_state:waiting-for-sync\r\nmaster_repl_offset:900\r\n\
# Cluster\r\ncluster_enabled:0\r\n";

    fn member(name: &str, addr: &str, port: u16) -> Member {
        Member {
            name: name.into(),
            host: "h".into(),
            replica: 0,
            addr: addr.into(),
            port,
        }
    }

    #[test]
    fn info_of_a_standalone_primary_gives_mode_config_file_and_failover_state() {
        let s = parse_status(INFO_STANDALONE).unwrap();
        assert!(!s.cluster && s.repl.is_primary());
        assert_eq!(s.config_file, "/data/valkey.conf");
        assert_eq!(s.failover, "waiting-for-sync");
        assert_eq!(s.repl.offset, 900);
        assert!(no_config("valkey-rep-0", &s).is_none());
        let bare = parse_status(
            &INFO_STANDALONE
                .replace("config_file:/data/valkey.conf", "config_file:")
                .replace("cluster_enabled:0", "cluster_enabled:1")
                .replace("master_failover_state:waiting-for-sync\r\n", ""),
        )
        .unwrap();
        assert!(bare.cluster);
        assert_eq!(bare.failover, "no-failover", "Redis before 6.2 has no failover state");
        let e = no_config("valkey-rep-0", &bare).unwrap().0;
        assert!(
            e.contains("valkey-rep-0") && e.contains("config_file") && e.contains("--replicaof"),
            "{e}"
        );
        assert_eq!(parse_status("-NOAUTH Authentication required."), None);
    }

    #[test]
    fn a_member_line_says_role_and_state() {
        let p = parse_status(INFO_STANDALONE).unwrap();
        assert_eq!(describe(&p), "primary running");
        let r = parse_status(&format!("{INFO_REPLICA}master_sync_in_progress:0\r\n")).unwrap();
        assert_eq!(describe(&r), "replica streaming");
        let down = parse_status(&INFO_REPLICA.replace("master_link_status:up", "master_link_status:down")).unwrap();
        assert_eq!(describe(&down), "replica down");
        let syncing = parse_status(&format!(
            "{}master_sync_in_progress:1\r\n",
            INFO_REPLICA.replace("master_link_status:up", "master_link_status:down")
        ))
        .unwrap();
        assert_eq!(describe(&syncing), "replica syncing");
    }

    #[test]
    fn a_replica_is_found_in_its_primarys_list_by_its_name_or_host_address_and_its_port() {
        let r = parse_status(INFO_STANDALONE).unwrap().repl.replicas;
        let by_name = member("valkey-rep-1", "10.0.0.102", 7101);
        assert_eq!(listed_as(&r, &by_name).unwrap().0, "valkey-rep-1");
        let by_addr = member("valkey-rep-2", "10.0.0.103", 7102);
        assert_eq!(listed_as(&r, &by_addr).unwrap().0, "10.0.0.103");
        // The port alone is not enough: another member on that port.
        assert!(listed_as(&r, &member("valkey-rep-3", "10.0.0.104", 7101)).is_none());
        assert!(listed_as(&r, &member("valkey-rep-1", "10.0.0.102", 7109)).is_none());
        let waiting = r
            .iter()
            .map(|(i, p, _, o)| (i.clone(), *p, "wait_bgsave".to_string(), *o))
            .collect::<Vec<_>>();
        assert!(listed_as(&waiting, &by_name).is_none(), "not online yet");
    }

    #[test]
    fn a_replicas_primary_is_the_member_its_master_host_names() {
        let ms = [
            member("valkey-rep-0", "10.0.0.101", 7100),
            member("valkey-rep-1", "10.0.0.102", 7101),
        ];
        assert_eq!(member_at(&ms, "valkey-rep-1", 7101).unwrap().name, "valkey-rep-1");
        assert_eq!(member_at(&ms, "10.0.0.101", 7100).unwrap().name, "valkey-rep-0");
        assert!(member_at(&ms, "valkey-rep-1", 6379).is_none());
        assert!(member_at(&ms, "172.18.0.5", 7101).is_none());
    }

    #[test]
    fn labels_choose_the_lag_and_the_password_secret() {
        let labels = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        let v = Valkey::from_labels(&labels(&[]), &Secrets::default()).unwrap();
        assert_eq!(v.max_lag, DEFAULT_MAX_LAG);
        assert_eq!(v.password_secret.as_deref(), Some(DEFAULT_PASSWORD_SECRET));
        let v = Valkey::from_labels(
            &labels(&[(PASSWORD_SECRET_LABEL, ""), (MAX_LAG_LABEL, "10")]),
            &Secrets::default(),
        )
        .unwrap();
        assert_eq!((v.max_lag, v.password_secret), (10, None));
        let e = Valkey::from_labels(&labels(&[(MAX_LAG_LABEL, "lots")]), &Secrets::default())
            .unwrap_err()
            .0;
        assert!(e.contains(MAX_LAG_LABEL) && e.contains("lots"), "{e}");
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(..)");
    }

    /// A fake node outside cluster mode on `l`: answers `INFO` with `info`
    /// and `+OK` to anything else; what it got is in the returned log.
    fn fake_node(l: tokio::net::TcpListener, info: String) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (log, info) = (log.clone(), info.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Ok(Some((Reply::Array(Some(items)), used))) = parse(&buf) {
                            buf.drain(..used);
                            let words: Vec<String> = items.into_iter().filter_map(|r| r.text().ok()).collect();
                            let reply = if words.first().is_some_and(|w| w.eq_ignore_ascii_case("INFO")) {
                                format!("${}\r\n{info}\r\n", info.len())
                            } else {
                                "+OK\r\n".to_string()
                            };
                            log.lock().unwrap().push(words.join(" "));
                            if s.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        seen
    }

    /// `valkey-rep-0..2` as fakes, not in cluster mode: `roles[i]` is
    /// node i's role (`master`: node 0 lists 1 and 2 online as its
    /// replicas, another node none), `config[i]` its `config_file`.
    /// Returns each node's command log and the members.
    async fn replication_set(
        config: [&str; 3],
        roles: [&str; 3],
    ) -> (Vec<std::sync::Arc<std::sync::Mutex<Vec<String>>>>, Vec<Member>) {
        let mut ls = Vec::new();
        for _ in 0..3 {
            ls.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let ports: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
        let mut logs = Vec::new();
        let mut members = Vec::new();
        for (i, l) in ls.into_iter().enumerate() {
            let head = format!("# Server\r\nconfig_file:{}\r\n# Replication\r\n", config[i]);
            let repl = match (roles[i], i) {
                ("master", 0) => format!(
                    "role:master\r\nconnected_slaves:2\r\n\
                     slave0:ip=valkey-rep-1,port={},state=online,offset=900,lag=0\r\n\
                     slave1:ip=valkey-rep-2,port={},state=online,offset=880,lag=0\r\n\
                     master_failover_state:no-failover\r\nmaster_repl_offset:900\r\n",
                    ports[1], ports[2]
                ),
                ("master", _) => {
                    "role:master\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\nmaster_repl_offset:10\r\n"
                        .to_string()
                }
                _ => format!(
                    "role:slave\r\nmaster_host:valkey-rep-0\r\nmaster_port:{}\r\nmaster_link_status:up\r\n\
                     slave_repl_offset:900\r\nmaster_repl_offset:900\r\n",
                    ports[0]
                ),
            };
            logs.push(fake_node(l, format!("{head}{repl}# Cluster\r\ncluster_enabled:0")));
            members.push(Member {
                name: format!("valkey-rep-{i}"),
                host: format!("h{i}"),
                replica: 1,
                addr: "127.0.0.1".into(),
                port: ports[i],
            });
        }
        (logs, members)
    }

    fn no_password() -> Valkey {
        Valkey {
            max_lag: DEFAULT_MAX_LAG,
            password_secret: None,
            secrets: Secrets::default(),
        }
    }

    /// Commands other than `INFO` any node got: what would change a role.
    fn changes(logs: &[std::sync::Arc<std::sync::Mutex<Vec<String>>>]) -> Vec<String> {
        logs.iter()
            .flat_map(|l| l.lock().unwrap().clone())
            .filter(|c| !c.starts_with("INFO"))
            .collect()
    }

    #[tokio::test]
    async fn a_primary_is_not_handed_over_when_a_member_has_no_config_file_or_there_are_two_primaries() {
        let cfg = "/data/valkey.conf";
        let roles = ["master", "slave", "slave"];
        // The primary itself runs without a config file.
        let (logs, ms) = replication_set(["", cfg, cfg], roles).await;
        let e = no_password().before_restart(&ms[0], &ms).await.unwrap_err().0;
        assert!(e.contains("valkey-rep-0 runs without a config file"), "{e}");
        assert_eq!(changes(&logs), Vec::<String>::new(), "nothing sent but INFO");
        // A replica does.
        let (logs, ms) = replication_set([cfg, cfg, ""], roles).await;
        let e = no_password().before_restart(&ms[0], &ms).await.unwrap_err().0;
        assert!(e.contains("valkey-rep-2 runs without a config file"), "{e}");
        assert_eq!(changes(&logs), Vec::<String>::new());
        // A second primary: the roles are in doubt.
        let (logs, ms) = replication_set([cfg, cfg, cfg], ["master", "slave", "master"]).await;
        let e = no_password().before_restart(&ms[0], &ms).await.unwrap_err().0;
        assert!(e.contains("valkey-rep-0 and valkey-rep-2 are both primaries"), "{e}");
        assert_eq!(changes(&logs), Vec::<String>::new());
        // A replica is never handed anything.
        no_password().before_restart(&ms[1], &ms).await.unwrap();
        assert_eq!(changes(&logs), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_failover_the_primary_gives_up_stops_the_roll_before_anything_else_changes() {
        let cfg = "/data/valkey.conf";
        // The fake primary stays a primary with no failover running: what
        // a primary shows after FAILOVER TIMEOUT gave up.
        let (logs, ms) = replication_set([cfg, cfg, cfg], ["master", "slave", "slave"]).await;
        let e = no_password().before_restart(&ms[0], &ms).await.unwrap_err().0;
        assert!(
            e.contains("the failover of primary valkey-rep-0 to valkey-rep-1 was aborted")
                && e.contains("still the primary and was not restarted"),
            "{e}"
        );
        // The most caught-up replica (offset 900 over 880) was the target,
        // named as the primary lists it; no REPLICAOF, no CONFIG REWRITE.
        assert_eq!(
            changes(&logs),
            vec![format!("FAILOVER TO valkey-rep-1 {} TIMEOUT 10000", ms[1].port)]
        );
    }

    /// A real TCP exchange with a server that answers in small pieces, and
    /// refuses the password: the error never holds it.
    #[tokio::test]
    async fn a_refused_auth_names_the_member_not_the_password() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            for part in [&b"-WRONGPASS inv"[..], b"alid username-password pair\r\n"] {
                s.write_all(part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let e = Conn::open("127.0.0.1", port, Some(&Secret("s3cret-pw".into())))
            .await
            .err()
            .unwrap()
            .0;
        assert!(e.contains("AUTH refused (WRONGPASS)"), "{e}");
        assert!(!e.contains("s3cret-pw"), "{e}");
    }
}
