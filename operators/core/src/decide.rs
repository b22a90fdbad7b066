//! Reconcile decisions: from what is desired and what runs, what to do.
//!
//! Pure functions over plain values, so every decision is unit-tested
//! without Docker. The worker in [`crate::reconcile`] executes them.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use infra_proto::bus::v1::{ContainerStatus, DesiredService, Health, ServiceSpec};

use crate::spec;

/// A container's state, as Docker names it (`docker inspect`'s
/// `State.Status`). Compared as a type, never as a string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContainerState {
    /// Made, never started (or held).
    Created,
    /// Running.
    Running,
    /// Paused by someone.
    Paused,
    /// Docker is restarting it (its restart policy).
    Restarting,
    /// Being removed.
    Removing,
    /// Stopped, with an exit code.
    Exited,
    /// Could not be stopped or removed cleanly.
    Dead,
    /// A state this build does not know.
    #[default]
    Unknown,
}

impl ContainerState {
    /// From Docker's word.
    pub fn parse(s: &str) -> Self {
        match s {
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "restarting" => Self::Restarting,
            "removing" => Self::Removing,
            "exited" => Self::Exited,
            "dead" => Self::Dead,
            _ => Self::Unknown,
        }
    }

    /// Docker's word (what observed state carries).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Removing => "removing",
            Self::Exited => "exited",
            Self::Dead => "dead",
            Self::Unknown => "unknown",
        }
    }

    /// Every state, for metrics that list each.
    pub const ALL: [Self; 7] = [
        Self::Running,
        Self::Created,
        Self::Restarting,
        Self::Exited,
        Self::Paused,
        Self::Dead,
        Self::Removing,
    ];
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator knows of one of its containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Docker id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// Service from the label.
    pub service: String,
    /// Replica index from the label.
    pub replica: u32,
    /// Spec hash from the label.
    pub spec_hash: String,
    /// Docker's state.
    pub state: ContainerState,
    /// Docker health: starting, healthy, unhealthy, or `None` without a check.
    pub health: Option<String>,
    /// Exit code of the last run.
    pub exit_code: i64,
    /// When it last started (unix seconds and nanos), if ever.
    pub started_at: Option<prost_types::Timestamp>,
    /// Image as given at create time.
    pub image: String,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create a new replica, and start it unless the desired state holds it.
    Create {
        /// Replica index.
        replica: u32,
        /// Start it too (false while held).
        start: bool,
    },
    /// Start a container that exists with the right spec but is not running.
    Start {
        /// Container id.
        id: String,
        /// Replica index.
        replica: u32,
        /// Whether it ran before (then it is a restart and counts against
        /// the restart budget).
        restart: bool,
    },
    /// Update of a running replica: create its new container under another
    /// name beside the old one that still serves; start it at once
    /// (start-first), or leave it created so that only `start` is left
    /// once the old one stops (stop-first: the gap is a stop and a start,
    /// not a create).
    CreateNext {
        /// Replica index.
        replica: u32,
        /// Name of the old container, so the new one gets a different one.
        beside: String,
        /// Start it now (start-first).
        start: bool,
    },
    /// Replace a container whose spec changed.
    Recreate {
        /// Container id.
        id: String,
        /// Replica index.
        replica: u32,
    },
    /// Restart a running but unhealthy container.
    Restart {
        /// Container id.
        id: String,
        /// Replica index.
        replica: u32,
    },
    /// Remove a container that is no longer wanted.
    Remove {
        /// Container id.
        id: String,
        /// Replica index.
        replica: u32,
        /// Why: said in its `removed` event.
        why: Removal,
    },
}

/// Why a container is removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The service is not (or no longer) desired on this host.
    NotDesired,
    /// Its replica number is past the count wanted (scaled down), or is no
    /// replica number at all.
    Surplus {
        /// Replicas wanted here.
        want: u32,
    },
    /// Its replica has a newer container that takes its place.
    Replaced {
        /// The name of the container that stays.
        by: String,
    },
    /// A second container for a replica that has one already: left by a
    /// crash, or made outside the platform.
    Duplicate {
        /// The name of the container that stays.
        keep: String,
    },
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Removal::NotDesired => f.write_str("no longer desired on this host"),
            Removal::Surplus { want } => write!(f, "scaled down: {want} replica(s) wanted here"),
            Removal::Replaced { by } => write!(f, "spec changed: replaced by {by}"),
            Removal::Duplicate { keep } => write!(f, "a second container of its replica: {keep} stays"),
        }
    }
}

/// Whether a container has a name this platform gives: `<project>-<service>-<replica>`,
/// or that with the first six characters of its spec hash (a replica's
/// new container beside the old one during an update). One that carries
/// the platform's labels under any other name was made elsewhere.
pub fn made_here(c: &Container) -> bool {
    let plain = format!("-{}-{}", c.service, c.replica);
    let beside = format!("{plain}-{}", c.spec_hash.get(..6).unwrap_or("\u{0}"));
    c.name.ends_with(&plain) || c.name.ends_with(&beside)
}

/// Restart budget: at most `budget` restarts of one replica within
/// `window`, with exponential backoff between them.
#[derive(Clone, Copy, Debug)]
pub struct RestartPolicy {
    /// Restarts allowed within the window.
    pub budget: u32,
    /// Sliding window for the budget.
    pub window: Duration,
    /// First backoff.
    pub backoff_initial: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            budget: 5,
            window: Duration::from_secs(600),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Restart history of one replica.
#[derive(Clone, Debug, Default)]
pub struct RestartHistory {
    attempts: VecDeque<Instant>,
}

/// Whether a restart may happen now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartVerdict {
    /// Go ahead.
    Now,
    /// Not before this instant (backoff).
    NotBefore(Instant),
    /// The budget for the window is spent.
    Exhausted,
}

impl RestartHistory {
    fn prune(&mut self, policy: &RestartPolicy, now: Instant) {
        while self
            .attempts
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            self.attempts.pop_front();
        }
    }

    /// Whether a restart is allowed at `now`.
    pub fn verdict(&mut self, policy: &RestartPolicy, now: Instant) -> RestartVerdict {
        self.prune(policy, now);
        let n = self.attempts.len() as u32;
        if n >= policy.budget {
            return RestartVerdict::Exhausted;
        }
        match self.attempts.back() {
            None => RestartVerdict::Now,
            Some(last) => {
                let shift = n.saturating_sub(1).min(16);
                let backoff = policy
                    .backoff_initial
                    .saturating_mul(1 << shift)
                    .min(policy.backoff_max);
                let at = *last + backoff;
                if now >= at {
                    RestartVerdict::Now
                } else {
                    RestartVerdict::NotBefore(at)
                }
            }
        }
    }

    /// Records a restart at `now`.
    pub fn record(&mut self, now: Instant) {
        self.attempts.push_back(now);
    }

    /// Restarts within the window.
    pub fn count(&self) -> u32 {
        self.attempts.len() as u32
    }
}

/// The spec replica `replica` must run: during a rolling update the
/// replicas past `updated` keep the previous spec.
pub fn target_spec(d: &DesiredService, replica: u32) -> Option<&ServiceSpec> {
    match &d.previous {
        Some(prev) if replica > d.updated => Some(prev),
        _ => d.spec.as_ref(),
    }
}

/// Whether a container counts as up for a start-first handover: running
/// and healthy, or running without a health check.
fn ready(spec: &ServiceSpec, c: &Container) -> bool {
    matches!(container_health(Some(spec), c), Health::Healthy | Health::Running)
}

/// Decides what to do for one service. `desired` is `None` (or marked
/// absent) when the service should not run here.
///
/// During a rolling update each replica is compared with its own target
/// ([`target_spec`]); with `start_first`, a replica's new container is
/// created beside the old one ([`Op::CreateNext`]) and the old one is
/// removed only once the new one is ready.
pub fn decide(desired: Option<&DesiredService>, containers: &[Container]) -> Vec<Op> {
    let Some(d) = desired.filter(|d| !d.absent && d.spec.is_some()) else {
        return containers
            .iter()
            .map(|c| Op::Remove {
                id: c.id.clone(),
                replica: c.replica,
                why: Removal::NotDesired,
            })
            .collect();
    };
    let spec = d.spec.as_ref().expect("checked");
    let want = spec.replicas.max(1);
    let hold = d.hold;
    let mut ops = Vec::new();

    let mut by_replica: BTreeMap<u32, Vec<&Container>> = BTreeMap::new();
    for c in containers {
        if c.replica == 0 || c.replica > want {
            ops.push(Op::Remove {
                id: c.id.clone(),
                replica: c.replica,
                why: Removal::Surplus { want },
            });
        } else {
            by_replica.entry(c.replica).or_default().push(c);
        }
    }

    for replica in 1..=want {
        let target = target_spec(d, replica).unwrap_or(spec);
        let hash = infra_proto::spec::spec_hash(target);
        let mut list = by_replica.remove(&replica).unwrap_or_default();
        // Keep the best candidate: right spec first, then running, then
        // one this platform made.
        list.sort_by_key(|c| {
            (
                c.spec_hash != hash,
                c.state != ContainerState::Running,
                !made_here(c),
                c.id.clone(),
            )
        });
        let Some((keep, extra)) = list.split_first() else {
            ops.push(Op::Create { replica, start: !hold });
            continue;
        };
        if keep.spec_hash != hash && keep.state == ContainerState::Running && !hold {
            // Create the new one beside it; the old one serves meanwhile.
            ops.push(Op::CreateNext {
                replica,
                beside: keep.name.clone(),
                start: d.start_first,
            });
            continue;
        }
        // Start-first: the old container goes only once the new one is up.
        let handover = d.start_first && keep.spec_hash == hash && !ready(target, keep);
        for c in extra {
            if handover && c.state == ContainerState::Running {
                continue;
            }
            let why = if c.spec_hash != keep.spec_hash && keep.spec_hash == hash {
                Removal::Replaced { by: keep.name.clone() }
            } else {
                Removal::Duplicate {
                    keep: keep.name.clone(),
                }
            };
            ops.push(Op::Remove {
                id: c.id.clone(),
                replica,
                why,
            });
        }
        if keep.spec_hash != hash {
            ops.push(Op::Recreate {
                id: keep.id.clone(),
                replica,
            });
            continue;
        }
        match keep.state {
            ContainerState::Running if keep.health.as_deref() == Some("unhealthy") => {
                ops.push(Op::Restart {
                    id: keep.id.clone(),
                    replica,
                });
            }
            ContainerState::Created if !hold => ops.push(Op::Start {
                id: keep.id.clone(),
                replica,
                restart: false,
            }),
            ContainerState::Exited | ContainerState::Dead if !spec::exited_for_good(target, keep.exit_code) => {
                ops.push(Op::Start {
                    id: keep.id.clone(),
                    replica,
                    restart: true,
                });
            }
            // running, restarting (Docker is on it), paused (someone
            // paused it on purpose), or finished for good.
            _ => {}
        }
    }
    ops
}

/// Health of one container as the platform reports it.
pub fn container_health(spec: Option<&ServiceSpec>, c: &Container) -> Health {
    match c.state {
        ContainerState::Running => match c.health.as_deref() {
            Some("healthy") => Health::Healthy,
            Some("unhealthy") => Health::Unhealthy,
            Some(_) => Health::Starting,
            None => Health::Running,
        },
        ContainerState::Created | ContainerState::Restarting => Health::Starting,
        ContainerState::Exited | ContainerState::Dead => {
            let done = spec.is_some_and(|s| spec::exited_for_good(s, c.exit_code));
            match (done, c.exit_code) {
                (true, 0) => Health::Completed,
                (true, _) => Health::Failed,
                _ => Health::Stopped,
            }
        }
        _ => Health::Stopped,
    }
}

/// Health of a service from its containers: healthy only when every wanted
/// replica is.
pub fn service_health(spec: Option<&ServiceSpec>, want: u32, containers: &[ContainerStatus]) -> Health {
    let current: Vec<Health> = containers.iter().map(ContainerStatus::health).collect();
    if current.is_empty() {
        return if want == 0 { Health::Stopped } else { Health::Starting };
    }
    let count = |h: Health| current.iter().filter(|x| **x == h).count() as u32;
    let has_check = spec.is_some_and(|s| {
        s.healthcheck
            .as_ref()
            .is_some_and(|h| h.test.first().is_some_and(|t| t != "NONE"))
    });
    if count(Health::Failed) > 0 {
        Health::Failed
    } else if count(Health::Unhealthy) > 0 {
        Health::Unhealthy
    } else if count(Health::Completed) >= want {
        Health::Completed
    } else if has_check && count(Health::Healthy) >= want {
        Health::Healthy
    } else if !has_check && count(Health::Running) >= want {
        Health::Running
    } else if count(Health::Stopped) > 0 && count(Health::Starting) == 0 {
        Health::Stopped
    } else {
        Health::Starting
    }
}

#[cfg(test)]
mod tests {
    use infra_proto::bus::v1::HealthcheckSpec;

    use super::*;

    fn desired(replicas: u32) -> DesiredService {
        DesiredService {
            spec: Some(ServiceSpec {
                name: "web".into(),
                tier: "gateway".into(),
                image: "nginx:1".into(),
                replicas,
                restart: "unless-stopped".into(),
                ..Default::default()
            }),
            host: "h1".into(),
            ..Default::default()
        }
    }

    fn running(d: &DesiredService, id: &str, replica: u32) -> Container {
        Container {
            id: id.into(),
            name: format!("infra-web-{replica}"),
            service: "web".into(),
            replica,
            spec_hash: infra_proto::spec::spec_hash(d.spec.as_ref().unwrap()),
            state: ContainerState::Running,
            health: None,
            exit_code: 0,
            started_at: None,
            image: "nginx:1".into(),
        }
    }

    #[test]
    fn nothing_running_creates_every_replica() {
        assert_eq!(
            decide(Some(&desired(2)), &[]),
            vec![
                Op::Create {
                    replica: 1,
                    start: true
                },
                Op::Create {
                    replica: 2,
                    start: true
                }
            ]
        );
    }

    #[test]
    fn a_held_service_is_created_but_started_only_once_released() {
        let mut d = desired(1);
        d.hold = true;
        assert_eq!(
            decide(Some(&d), &[]),
            vec![Op::Create {
                replica: 1,
                start: false
            }]
        );
        let mut created = running(&d, "a", 1);
        created.state = ContainerState::Created;
        assert!(
            decide(Some(&d), std::slice::from_ref(&created)).is_empty(),
            "held: not started"
        );
        d.hold = false;
        assert_eq!(
            decide(Some(&d), &[created]),
            vec![Op::Start {
                id: "a".into(),
                replica: 1,
                restart: false
            }]
        );
    }

    #[test]
    fn matching_running_containers_are_adopted_without_any_action() {
        let d = desired(2);
        let cs = [running(&d, "a", 1), running(&d, "b", 2)];
        assert!(decide(Some(&d), &cs).is_empty());
    }

    #[test]
    fn a_changed_spec_recreates_and_a_surplus_replica_is_removed() {
        let d = desired(1);
        let mut old = running(&d, "a", 1);
        old.spec_hash = "old".into();
        let extra = running(&d, "b", 2);
        assert_eq!(
            decide(Some(&d), &[old.clone(), extra]),
            vec![
                Op::Remove {
                    id: "b".into(),
                    replica: 2,
                    why: Removal::Surplus { want: 1 },
                },
                Op::CreateNext {
                    replica: 1,
                    beside: "infra-web-1".into(),
                    start: false,
                }
            ]
        );
        // The new one created beside it: the old one stops, then only a
        // start is left.
        let mut next = running(&d, "n", 1);
        next.state = ContainerState::Created;
        assert_eq!(
            decide(Some(&d), &[old.clone(), next]),
            vec![
                Op::Remove {
                    id: "a".into(),
                    replica: 1,
                    why: Removal::Replaced {
                        by: "infra-web-1".into()
                    },
                },
                Op::Start {
                    id: "n".into(),
                    replica: 1,
                    restart: false
                }
            ]
        );
        // An old container that is not running is simply recreated.
        let mut dead = old;
        dead.state = ContainerState::Exited;
        assert_eq!(
            decide(Some(&d), &[dead]),
            vec![Op::Recreate {
                id: "a".into(),
                replica: 1
            }]
        );
    }

    #[test]
    fn a_rolling_update_changes_only_the_replicas_up_to_updated() {
        let old = desired(3);
        let mut d = desired(3);
        d.spec.as_mut().unwrap().image = "nginx:2".into();
        d.previous = old.spec.clone();
        d.updated = 1;
        let cs: Vec<Container> = (1..=3).map(|r| running(&old, &format!("c{r}"), r)).collect();
        assert_eq!(
            decide(Some(&d), &cs),
            vec![Op::CreateNext {
                replica: 1,
                beside: "infra-web-1".into(),
                start: false,
            }]
        );
        // Replica 1 done: nothing more until `updated` moves on.
        let mut done = cs.clone();
        done[0] = running(&d, "n1", 1);
        assert!(decide(Some(&d), &done).is_empty());
        // Rolling back is the same with the specs swapped.
        let mut back = desired(3);
        back.previous = d.spec.clone();
        back.updated = 3;
        assert_eq!(
            decide(Some(&back), &done),
            vec![Op::CreateNext {
                replica: 1,
                beside: "infra-web-1".into(),
                start: false,
            }]
        );
    }

    #[test]
    fn start_first_starts_the_new_container_beside_the_old_and_removes_the_old_once_ready() {
        let old = desired(1);
        let mut d = desired(1);
        d.spec.as_mut().unwrap().image = "nginx:2".into();
        d.spec.as_mut().unwrap().healthcheck = Some(HealthcheckSpec {
            test: vec!["CMD".into(), "true".into()],
            ..Default::default()
        });
        d.start_first = true;
        let serving = running(&old, "old", 1);
        assert_eq!(
            decide(Some(&d), std::slice::from_ref(&serving)),
            vec![Op::CreateNext {
                replica: 1,
                beside: "infra-web-1".into(),
                start: true,
            }]
        );
        // The new one is starting: the old one keeps serving.
        let mut next = running(&d, "new", 1);
        next.name = "infra-web-1-x".into();
        next.health = Some("starting".into());
        assert!(decide(Some(&d), &[serving.clone(), next.clone()]).is_empty());
        // Healthy: now the old one goes.
        next.health = Some("healthy".into());
        assert_eq!(
            decide(Some(&d), &[serving, next]),
            vec![Op::Remove {
                id: "old".into(),
                replica: 1,
                why: Removal::Replaced {
                    by: "infra-web-1-x".into()
                },
            }]
        );
    }

    #[test]
    fn duplicates_of_one_replica_keep_the_matching_running_one() {
        let d = desired(1);
        let good = running(&d, "good", 1);
        let mut stale = running(&d, "stale", 1);
        stale.state = ContainerState::Exited;
        assert_eq!(
            decide(Some(&d), &[stale, good]),
            vec![Op::Remove {
                id: "stale".into(),
                replica: 1,
                why: Removal::Duplicate {
                    keep: "infra-web-1".into()
                },
            }]
        );
    }

    #[test]
    fn a_container_with_our_labels_under_a_name_we_never_give_was_made_elsewhere() {
        let d = desired(1);
        let ours = running(&d, "a", 1);
        assert!(made_here(&ours));
        let mut beside = ours.clone();
        beside.name = format!("infra-web-1-{}", &ours.spec_hash[..6]);
        assert!(made_here(&beside));
        let mut copy = ours.clone();
        copy.id = "0".into();
        copy.name = "sneaky".into();
        assert!(!made_here(&copy));
        copy.name = "infra-web-1-abcdef".into();
        assert!(!made_here(&copy), "a hash suffix that is not its own hash's");
        // A copy beside the real one goes, whatever its id, and ours stays.
        assert_eq!(
            decide(Some(&d), &[ours, copy]),
            vec![Op::Remove {
                id: "0".into(),
                replica: 1,
                why: Removal::Duplicate {
                    keep: "infra-web-1".into()
                },
            }]
        );
    }

    #[test]
    fn unhealthy_is_restarted_and_exited_is_started_again() {
        let d = desired(2);
        let mut sick = running(&d, "a", 1);
        sick.health = Some("unhealthy".into());
        let mut dead = running(&d, "b", 2);
        dead.state = ContainerState::Exited;
        dead.exit_code = 137;
        assert_eq!(
            decide(Some(&d), &[sick, dead]),
            vec![
                Op::Restart {
                    id: "a".into(),
                    replica: 1
                },
                Op::Start {
                    id: "b".into(),
                    replica: 2,
                    restart: true
                }
            ]
        );
    }

    #[test]
    fn a_one_shot_service_that_finished_is_left_alone() {
        let mut d = desired(1);
        d.spec.as_mut().unwrap().restart = "no".into();
        let mut done = running(&d, "a", 1);
        done.state = ContainerState::Exited;
        assert!(decide(Some(&d), std::slice::from_ref(&done)).is_empty());
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(container_health(Some(spec), &done), Health::Completed);
    }

    #[test]
    fn no_desired_state_or_absent_removes_everything_owned() {
        let d = desired(1);
        let c = running(&d, "a", 1);
        assert_eq!(
            decide(None, std::slice::from_ref(&c)),
            vec![Op::Remove {
                id: "a".into(),
                replica: 1,
                why: Removal::NotDesired,
            }]
        );
        let mut gone = d.clone();
        gone.absent = true;
        assert_eq!(
            decide(Some(&gone), &[c]),
            vec![Op::Remove {
                id: "a".into(),
                replica: 1,
                why: Removal::NotDesired,
            }]
        );
    }

    #[test]
    fn restart_backoff_doubles_and_the_budget_runs_out() {
        let policy = RestartPolicy {
            budget: 3,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let mut h = RestartHistory::default();
        assert_eq!(h.verdict(&policy, t0), RestartVerdict::Now);
        h.record(t0);
        assert_eq!(
            h.verdict(&policy, t0),
            RestartVerdict::NotBefore(t0 + Duration::from_secs(1))
        );
        let t1 = t0 + Duration::from_secs(1);
        h.record(t1);
        assert_eq!(
            h.verdict(&policy, t1),
            RestartVerdict::NotBefore(t1 + Duration::from_secs(2))
        );
        let t2 = t1 + Duration::from_secs(2);
        h.record(t2);
        assert_eq!(
            h.verdict(&policy, t2 + Duration::from_secs(30)),
            RestartVerdict::Exhausted
        );
        // The window slides: old attempts stop counting.
        assert_ne!(
            h.verdict(&policy, t0 + Duration::from_secs(62)),
            RestartVerdict::Exhausted
        );
    }

    #[test]
    fn service_health_needs_every_replica_healthy() {
        let mut d = desired(2);
        d.spec.as_mut().unwrap().healthcheck = Some(HealthcheckSpec {
            test: vec!["CMD".into(), "true".into()],
            ..Default::default()
        });
        let spec = d.spec.as_ref();
        let st = |h: Health| ContainerStatus {
            health: h as i32,
            ..Default::default()
        };
        assert_eq!(
            service_health(spec, 2, &[st(Health::Healthy), st(Health::Starting)]),
            Health::Starting
        );
        assert_eq!(
            service_health(spec, 2, &[st(Health::Healthy), st(Health::Healthy)]),
            Health::Healthy
        );
        assert_eq!(
            service_health(spec, 2, &[st(Health::Healthy), st(Health::Unhealthy)]),
            Health::Unhealthy
        );
        assert_eq!(service_health(spec, 2, &[]), Health::Starting);
    }
}
