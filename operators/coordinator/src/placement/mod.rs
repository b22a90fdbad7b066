//! Placement: which hosts run how many replicas of a service, from the
//! Compose `deploy` keys with Swarm's meaning (`mode`, `replicas`,
//! `placement.constraints`, `placement.max_replicas_per_node`), the GPUs a
//! service reserves, and its CPU and memory reservations
//! (`deploy.resources.reservations`) against what each host reported.
//!
//! Pure logic over what the hosts reported in their heartbeats: no bus, no
//! Docker. The coordinator calls [`place`] on every deploy, scale and
//! re-placement.
//!
//! # Guarantees
//!
//! - Sticky: replicas stay on the hosts they are on while those hosts remain
//!   eligible; only the difference moves.
//! - Spread: a new replica goes to the eligible host with the fewest
//!   replicas of the service, then the fewest services of its tier, then by
//!   name, so the result is deterministic. A service with `spread`
//!   preferences (`node.labels.zone`) or a placement group (the members of
//!   one cluster, `infra.placement.group`) first goes where its replicas
//!   and its group's have the fewest, by each label's value in order, then
//!   by host: three etcd members on three hosts labelled `zone` a, b and c
//!   take one each, and on one host all three run there.
//! - A replica that cannot be placed is counted as pending, with a reason
//!   that names the constraint (and what each host has instead).
//! - A stateful service keeps its replicas on the hosts that hold its
//!   volumes, even while such a host is not heard from: it is reported, not
//!   moved.
//! - Reservations are never overbooked: a host takes a replica only while
//!   the reservations of everything placed there fit in the CPUs and
//!   memory it reported. A host that reported neither is not limited.

mod constraint;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use infra_proto::bus::v1::{DesiredService, Heartbeat, PlacementSpec, ServiceRecord, ServiceSpec};

/// Host label that holds the number of GPUs a host has (published by the
/// ai operator from NVML; absent means none).
pub const GPUS_LABEL: &str = infra_bus::facts::GPUS;
/// Host fact: CPUs the host has (every operator detects it).
pub const CPUS_LABEL: &str = infra_bus::facts::CPUS;
/// Host fact: memory the host has, in bytes.
pub const MEMORY_LABEL: &str = infra_bus::facts::MEMORY_BYTES;

/// CPU and memory one replica (or a sum of replicas) reserves: Compose
/// `deploy.resources.reservations`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    /// CPUs in billionths.
    pub nano_cpus: i64,
    /// Bytes.
    pub memory: i64,
}

impl Reservation {
    /// What one replica of `spec` reserves.
    pub fn of(spec: &ServiceSpec) -> Self {
        spec.resources.as_ref().map_or_else(Self::default, |r| Self {
            nano_cpus: r.nano_cpus_reservation.max(0),
            memory: r.memory_reservation.max(0),
        })
    }

    /// Nothing reserved.
    pub fn is_zero(&self) -> bool {
        self.nano_cpus == 0 && self.memory == 0
    }

    /// `n` replicas' worth.
    pub fn times(self, n: u32) -> Self {
        Self {
            nano_cpus: self.nano_cpus.saturating_mul(i64::from(n)),
            memory: self.memory.saturating_mul(i64::from(n)),
        }
    }

    /// The sum of two.
    pub fn plus(self, o: Self) -> Self {
        Self {
            nano_cpus: self.nano_cpus.saturating_add(o.nano_cpus),
            memory: self.memory.saturating_add(o.memory),
        }
    }
}

impl fmt::Display for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.nano_cpus > 0 {
            parts.push(format!("{} CPUs", cpus(self.nano_cpus)));
        }
        if self.memory > 0 {
            parts.push(mib(self.memory));
        }
        if parts.is_empty() {
            parts.push("nothing".into());
        }
        f.write_str(&parts.join(" and "))
    }
}

fn cpus(nano: i64) -> String {
    let v = nano as f64 / 1e9;
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn mib(bytes: i64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

/// One host as placement sees it: its labels (configured and detected,
/// merged over all its operators) and the tiers it has a live operator for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostView {
    /// Host id (`node.hostname`).
    pub name: String,
    /// Labels (`node.labels.*`) and facts (`cpus`, `memory_bytes`, `gpus`).
    pub labels: BTreeMap<String, String>,
    /// Tiers with a live operator on this host.
    pub tiers: BTreeSet<String>,
}

impl HostView {
    /// GPUs the host reported.
    pub fn gpus(&self) -> u32 {
        self.labels
            .get(GPUS_LABEL)
            .and_then(|g| g.trim().parse().ok())
            .unwrap_or(0)
    }

    /// What the host has for reservations, from its facts; `None` for a
    /// resource it did not report (then it is not limited by it).
    fn capacity(&self) -> (Option<i64>, Option<i64>) {
        let num = |k: &str| self.labels.get(k).and_then(|v| v.trim().parse::<f64>().ok());
        (
            num(CPUS_LABEL).map(|c| (c * 1e9) as i64),
            num(MEMORY_LABEL).map(|m| m as i64),
        )
    }
}

/// The hosts heard from, by name, from the live operators' heartbeats.
pub fn hosts_from(heartbeats: &[Heartbeat]) -> Vec<HostView> {
    let mut by: BTreeMap<String, HostView> = BTreeMap::new();
    for hb in heartbeats {
        let h = by.entry(hb.host.clone()).or_insert_with(|| HostView {
            name: hb.host.clone(),
            ..Default::default()
        });
        for (k, v) in &hb.labels {
            h.labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        h.tiers.insert(hb.tier.clone());
    }
    by.into_values().collect()
}

/// A service's placement rules, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Tier whose operator must run on a host for it to be eligible.
    pub tier: String,
    /// One replica on every eligible host.
    pub global: bool,
    /// Replicas wanted (ignored when `global`).
    pub replicas: u32,
    /// Every constraint must hold.
    pub constraints: Vec<Constraint>,
    /// At most this many replicas on one host.
    pub max_per_host: Option<u32>,
    /// GPUs each replica needs.
    pub gpus: u32,
    /// Replicas stay where their volumes are.
    pub stateful: bool,
    /// CPU and memory each replica reserves.
    pub reserve: Reservation,
    /// Host labels spread over, in order (`zone`).
    pub spread: Vec<String>,
    /// The placement group (empty: none).
    pub group: String,
}

impl Rules {
    /// Rules from the stored form; the constraints were checked when the
    /// record was written, so one that no longer parses is an error here.
    pub fn from_spec(tier: &str, replicas: u32, spec: &PlacementSpec) -> Result<Self, ConstraintError> {
        Ok(Self {
            tier: tier.to_owned(),
            global: spec.global,
            replicas,
            constraints: spec
                .constraints
                .iter()
                .map(|c| Constraint::parse(c))
                .collect::<Result<_, _>>()?,
            max_per_host: (spec.max_replicas_per_node > 0).then_some(spec.max_replicas_per_node),
            gpus: spec.gpus,
            stateful: spec.stateful,
            reserve: Reservation::default(),
            spread: spec.spread.clone(),
            group: spec.group.clone(),
        })
    }

    /// The same rules, each replica reserving `r`.
    #[must_use]
    pub fn reserving(mut self, r: Reservation) -> Self {
        self.reserve = r;
        self
    }
}

/// Where the replicas go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Host -> replicas there; hosts with none are absent.
    pub hosts: BTreeMap<String, u32>,
    /// Replicas no host could take.
    pub pending: u32,
    /// Why (empty when nothing is pending). Names the constraint and what
    /// each host has instead.
    pub reason: String,
    /// Some replicas are pending only because the hosts have no room left
    /// for their CPU or memory reservations.
    pub short_of_room: bool,
}

impl Outcome {
    /// Replicas placed in all.
    pub fn placed(&self) -> u32 {
        self.hosts.values().sum()
    }
}

/// What else runs where, for spreading and GPU accounting.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// Host -> services of the rule's tier already there (other services).
    pub tier_load: HashMap<String, usize>,
    /// Host -> GPUs reserved by other services there.
    pub gpus_used: HashMap<String, u32>,
    /// Host -> CPU and memory reserved by other services there.
    pub reserved: HashMap<String, Reservation>,
    /// Host -> replicas of the other members of the service's placement
    /// group there.
    pub group_load: HashMap<String, u32>,
}

/// What every service takes on every host (its tier, GPUs, CPU and memory),
/// from which the [`Usage`] for placing one service is read. A deploy
/// keeps it current as it places its services one after the other.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Host -> service -> what it takes there.
    by_host: HashMap<String, BTreeMap<String, Taken>>,
}

#[derive(Clone, Debug, Default)]
struct Taken {
    tier: String,
    group: String,
    replicas: u32,
    gpus: u32,
    reserved: Reservation,
}

impl Ledger {
    /// From the hosts' desired state (each host's share of each service)
    /// and the services' records (GPUs per replica).
    pub fn from_state(desired: &[DesiredService], records: &[ServiceRecord]) -> Self {
        let gpus_per: HashMap<&str, u32> = records
            .iter()
            .map(|r| (r.service.as_str(), r.rules.as_ref().map_or(0, |x| x.gpus)))
            .collect();
        let mut l = Self::default();
        for d in desired.iter().filter(|d| !d.absent) {
            if let Some(s) = &d.spec {
                let n = s.replicas.max(1);
                let taken = Taken {
                    tier: s.tier.clone(),
                    group: s.labels.get(crate::convert::GROUP_LABEL).cloned().unwrap_or_default(),
                    replicas: n,
                    gpus: gpus_per.get(s.name.as_str()).copied().unwrap_or(0) * n,
                    reserved: Reservation::of(s).times(n),
                };
                l.by_host
                    .entry(d.host.clone())
                    .or_default()
                    .insert(s.name.clone(), taken);
            }
        }
        l
    }

    /// `service` (of `tier` and placement `group`) now takes `hosts` (host
    /// -> replicas), each replica `gpus` GPUs and `each`; what it took
    /// before is forgotten.
    pub fn set(
        &mut self,
        service: &str,
        (tier, group): (&str, &str),
        gpus: u32,
        each: Reservation,
        hosts: &BTreeMap<String, u32>,
    ) {
        for by in self.by_host.values_mut() {
            by.remove(service);
        }
        for (h, n) in hosts {
            let taken = Taken {
                tier: tier.to_owned(),
                group: group.to_owned(),
                replicas: *n,
                gpus: gpus * n,
                reserved: each.times(*n),
            };
            self.by_host
                .entry(h.clone())
                .or_default()
                .insert(service.to_owned(), taken);
        }
    }

    /// The same without what runs on `host` (a host being emptied).
    pub fn without_host(mut self, host: &str) -> Self {
        self.by_host.remove(host);
        self
    }

    /// What everything but `service` takes, for placing `service` (of
    /// `tier`: the spreading counts that tier's services only; and of
    /// placement `group`, empty for none).
    pub fn usage_for(&self, tier: &str, service: &str, group: &str) -> Usage {
        let mut u = Usage::default();
        for (h, by) in &self.by_host {
            let others = by.iter().filter(|(n, _)| n.as_str() != service);
            let mut load = 0;
            let (mut gpus, mut reserved) = (0, Reservation::default());
            for (_, t) in others {
                load += usize::from(t.tier == tier);
                if !group.is_empty() && t.group == group {
                    *u.group_load.entry(h.clone()).or_default() += t.replicas;
                }
                gpus += t.gpus;
                reserved = reserved.plus(t.reserved);
            }
            if load > 0 {
                u.tier_load.insert(h.clone(), load);
            }
            if gpus > 0 {
                u.gpus_used.insert(h.clone(), gpus);
            }
            if !reserved.is_zero() {
                u.reserved.insert(h.clone(), reserved);
            }
        }
        u
    }
}

/// Places `rules` on `hosts`, keeping `current` (host -> replicas now)
/// where it still fits. See the module docs for the guarantees.
pub fn place(rules: &Rules, hosts: &[HostView], current: &BTreeMap<String, u32>, usage: &Usage) -> Outcome {
    let mut why_not: BTreeMap<String, String> = BTreeMap::new();
    let mut eligible: Vec<&HostView> = Vec::new();
    for h in hosts {
        match eligibility(rules, h, usage) {
            Ok(()) => eligible.push(h),
            Err(e) => {
                why_not.insert(h.name.clone(), e);
            }
        }
    }
    if rules.global {
        return place_global(rules, hosts, current, &eligible, &why_not);
    }
    let mut out = kept(rules, hosts, current, &eligible, usage);
    trim_to(&mut out, rules.replicas);
    fill_to(&mut out, rules, &eligible, usage);
    let placed: u32 = out.values().sum();
    let pending = rules.replicas.saturating_sub(placed);
    let reason = if pending == 0 {
        String::new()
    } else if eligible.is_empty() {
        no_host_reason(rules, hosts, &why_not)
    } else {
        short_reason(rules, &eligible, &out, usage, &why_not)
    };
    let short_of_room = pending > 0 && !rules.reserve.is_zero() && {
        let unlimited = rules.clone().reserving(Reservation::default());
        place(&unlimited, hosts, current, usage).pending < pending
    };
    Outcome {
        hosts: out,
        pending,
        reason,
        short_of_room,
    }
}

/// One replica on every eligible host; a stateful global service keeps
/// its replica on a silent host.
fn place_global(
    rules: &Rules,
    hosts: &[HostView],
    current: &BTreeMap<String, u32>,
    eligible: &[&HostView],
    why_not: &BTreeMap<String, String>,
) -> Outcome {
    let mut out: BTreeMap<String, u32> = eligible.iter().map(|h| (h.name.clone(), 1)).collect();
    if rules.stateful {
        for (h, n) in current {
            if *n > 0 && !hosts.iter().any(|x| &x.name == h) {
                out.insert(h.clone(), 1);
            }
        }
    }
    let reason = if out.is_empty() {
        no_host_reason(rules, hosts, why_not)
    } else {
        String::new()
    };
    Outcome {
        pending: u32::from(out.is_empty()),
        hosts: out,
        reason,
        short_of_room: false,
    }
}

/// What runs now and may stay: as many as still fit on an eligible host,
/// all of it for a stateful service on a host not heard from.
fn kept(
    rules: &Rules,
    hosts: &[HostView],
    current: &BTreeMap<String, u32>,
    eligible: &[&HostView],
    usage: &Usage,
) -> BTreeMap<String, u32> {
    let cap = rules.max_per_host.unwrap_or(u32::MAX);
    let mut out = BTreeMap::new();
    for (h, n) in current {
        let keep = if let Some(e) = eligible.iter().find(|e| &e.name == h) {
            let mut k = (*n).min(cap);
            while k > 0 && room_for(rules, e, usage, k).is_err() {
                k -= 1;
            }
            k
        } else if rules.stateful && !hosts.iter().any(|x| &x.name == h) {
            *n
        } else {
            0
        };
        if keep > 0 {
            out.insert(h.clone(), keep);
        }
    }
    out
}

/// Too many: takes from the hosts with the most first.
fn trim_to(out: &mut BTreeMap<String, u32>, want: u32) {
    while out.values().sum::<u32>() > want {
        let h = out
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(h, _)| h.clone())
            .expect("non-empty while over");
        let n = out.get_mut(&h).expect("present");
        *n -= 1;
        if *n == 0 {
            out.remove(&h);
        }
    }
}

/// Too few: adds to the emptiest eligible host that has room, until the
/// rule's replicas are placed or no host can take one more.
fn fill_to(out: &mut BTreeMap<String, u32>, rules: &Rules, eligible: &[&HostView], usage: &Usage) {
    let cap = rules.max_per_host.unwrap_or(u32::MAX);
    while out.values().sum::<u32>() < rules.replicas {
        let there = |h: &HostView| out.get(&h.name).copied().unwrap_or(0);
        let next = eligible
            .iter()
            .filter(|h| there(h) < cap)
            .filter(|h| gpus_fit(rules, h, usage, there(h) + 1))
            .filter(|h| room_for(rules, h, usage, there(h) + 1).is_ok())
            .min_by_key(|h| {
                let members = |g: &HostView| there(g) + usage.group_load.get(&g.name).copied().unwrap_or(0);
                // Spread first over each label's values, then over hosts,
                // counting the group's other members with the service.
                let by_value: Vec<u32> = rules
                    .spread
                    .iter()
                    .map(|label| {
                        let value = h.labels.get(label);
                        eligible
                            .iter()
                            .filter(|g| g.labels.get(label) == value)
                            .map(|g| members(g))
                            .sum()
                    })
                    .collect();
                let grouped = !rules.spread.is_empty() || !rules.group.is_empty();
                (
                    by_value,
                    if grouped { members(h) } else { there(h) },
                    there(h),
                    usage.tier_load.get(&h.name).copied().unwrap_or(0),
                    h.name.clone(),
                )
            });
        match next {
            Some(h) => *out.entry(h.name.clone()).or_default() += 1,
            None => break,
        }
    }
}

/// Why fewer replicas than asked were placed although some host is
/// eligible: the per-host cap, the GPUs or the reservations, and which
/// hosts were not eligible and why.
fn short_reason(
    rules: &Rules,
    eligible: &[&HostView],
    out: &BTreeMap<String, u32>,
    usage: &Usage,
    why_not: &BTreeMap<String, String>,
) -> String {
    let placed: u32 = out.values().sum();
    let names: Vec<&str> = eligible.iter().map(|h| h.name.as_str()).collect();
    let mut r = format!("{placed} of {} replicas placed", rules.replicas);
    if let Some(c) = rules.max_per_host {
        r.push_str(&format!(
            ": deploy.placement.max_replicas_per_node is {c} and {} host{} eligible ({})",
            names.len(),
            if names.len() == 1 { " is" } else { "s are" },
            names.join(", ")
        ));
    } else if rules.gpus > 0 {
        r.push_str(&format!(
            ": each replica needs {} GPU{} and the eligible hosts ({}) have no more free",
            rules.gpus,
            if rules.gpus == 1 { "" } else { "s" },
            names.join(", ")
        ));
    } else if !rules.reserve.is_zero() {
        let free: Vec<String> = eligible
            .iter()
            .map(|h| {
                let n = out.get(&h.name).copied().unwrap_or(0);
                format!("{} {}", h.name, free_room(h, usage, rules.reserve.times(n)))
            })
            .collect();
        r.push_str(&format!(
            ": each replica reserves {} (deploy.resources.reservations) and the eligible hosts have no room for \
             more ({})",
            rules.reserve,
            free.join("; ")
        ));
    }
    if !why_not.is_empty() {
        r.push_str(&format!("; not eligible: {}", explain(why_not)));
    }
    r
}

/// Whether `replicas_there` replicas of the rule fit in what `h` reported,
/// beside what others reserve there; on `Err`, what is free.
fn room_for(rules: &Rules, h: &HostView, usage: &Usage, replicas_there: u32) -> Result<(), String> {
    if rules.reserve.is_zero() {
        return Ok(());
    }
    let want = usage
        .reserved
        .get(&h.name)
        .copied()
        .unwrap_or_default()
        .plus(rules.reserve.times(replicas_there));
    let (cpus_have, mem_have) = h.capacity();
    let cpu_ok = rules.reserve.nano_cpus == 0 || cpus_have.is_none_or(|c| want.nano_cpus <= c);
    let mem_ok = rules.reserve.memory == 0 || mem_have.is_none_or(|m| want.memory <= m);
    if cpu_ok && mem_ok {
        Ok(())
    } else {
        Err(free_room(h, usage, Reservation::default()))
    }
}

/// `has 1.5 of 2 CPUs and 512 MiB of 3900 MiB free` for messages, counting
/// `ours` as taken too.
fn free_room(h: &HostView, usage: &Usage, ours: Reservation) -> String {
    let taken = usage.reserved.get(&h.name).copied().unwrap_or_default().plus(ours);
    let (c, m) = h.capacity();
    let mut parts = Vec::new();
    if let Some(c) = c {
        parts.push(format!("{} of {} CPUs", cpus((c - taken.nano_cpus).max(0)), cpus(c)));
    }
    if let Some(m) = m {
        parts.push(format!("{} of {}", mib((m - taken.memory).max(0)), mib(m)));
    }
    if parts.is_empty() {
        "reports no CPUs or memory".into()
    } else {
        format!("has {} free", parts.join(" and "))
    }
}

fn eligibility(rules: &Rules, h: &HostView, usage: &Usage) -> Result<(), String> {
    if !h.tiers.contains(&rules.tier) {
        return Err(format!("no live {} operator", rules.tier));
    }
    for c in &rules.constraints {
        c.check(h)?;
    }
    if let Err(free) = room_for(rules, h, usage, 1) {
        return Err(format!("{free} (each replica reserves {})", rules.reserve));
    }
    if !gpus_fit(rules, h, usage, 1) {
        let have = h.gpus();
        let used = usage.gpus_used.get(&h.name).copied().unwrap_or(0);
        return Err(if have == 0 {
            format!("reports no GPUs (needs {})", rules.gpus)
        } else {
            format!(
                "{} of {have} GPUs free (needs {})",
                have.saturating_sub(used),
                rules.gpus
            )
        });
    }
    Ok(())
}

fn gpus_fit(rules: &Rules, h: &HostView, usage: &Usage, replicas_there: u32) -> bool {
    if rules.gpus == 0 {
        return true;
    }
    let used = usage.gpus_used.get(&h.name).copied().unwrap_or(0);
    used.saturating_add(rules.gpus.saturating_mul(replicas_there)) <= h.gpus()
}

fn explain(why_not: &BTreeMap<String, String>) -> String {
    why_not
        .iter()
        .map(|(h, w)| format!("{h} {w}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn no_host_reason(rules: &Rules, hosts: &[HostView], why_not: &BTreeMap<String, String>) -> String {
    if !hosts.iter().any(|h| h.tiers.contains(&rules.tier)) {
        return format!(
            "no live {} operator on any host: start one (it heartbeats on the bus)",
            rules.tier
        );
    }
    format!("no host satisfies the placement: {}", explain(why_not))
}

pub use constraint::{Attr, Constraint, ConstraintError, Op};

#[cfg(test)]
mod tests;
