//! What the members say, parsed (`INFO`, `CLUSTER INFO`, `CLUSTER NODES`),
//! and the choices made from it (which member goes first, which replica
//! takes a primary's role). Pure: tested without a server.

use std::collections::BTreeMap;

use crate::{HookError, Member};

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
