//! Several coordinators on one bus, one leader by a lease, with the real
//! binaries, a real NATS server, the real Docker engine and the real
//! grpcurl: followers answer reads and refuse writes naming the leader; a
//! leader killed with SIGKILL is replaced within the lease time; a clean
//! stop hands over at once; the lease bucket's history shows terms that
//! grow and never overlap; a rollout whose leader is killed half way is
//! finished by the next leader without updating a replica twice.
//!
//! Images: `infra-local/nginx:1`. Binaries: `cargo build --workspace --bins`.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use infra_bus::{Bus, BusConfig, LeaseEntry};
use infra_e2e::{Options, Platform, call_at, grpcurl_at, write};
use infra_proto::bus::v1::{Event, EventKind, LeaderLease};

/// The lease the coordinators are given in these tests, seconds.
const LEASE_SECS: u64 = 3;

/// Three replicas of nginx rolled one at a time, each watched for 2 s.
const WEB: &str = r#"services:
  web:
    image: infra-local/nginx:1
    environment:
      VERSION: "1"
    deploy:
      replicas: 3
      update_config:
        parallelism: 1
        order: stop-first
        monitor: 2s
        failure_action: pause
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1/"]
      interval: 1s
      timeout: 2s
      retries: 2
"#;

fn platform(name: &str, catalog: &Path, coordinators: usize) -> Platform {
    let mut o = Options::over(name, catalog, &["gateway"]);
    o.coordinators = coordinators;
    o.env.push(("INFRA_LEASE_SECS".into(), LEASE_SECS.to_string()));
    Platform::start(o)
}

/// A bus client of the test's own, on a runtime of its own.
struct Probe {
    rt: tokio::runtime::Runtime,
    bus: Bus,
}

impl Probe {
    fn new(p: &Platform) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cfg = BusConfig {
            url: p.nats.url(),
            name: "e2e-leader-probe".into(),
            ..Default::default()
        };
        let bus = rt.block_on(Bus::connect(&cfg)).expect("the test connects to NATS");
        Self { rt, bus }
    }

    fn lease(&self) -> Option<LeaseEntry> {
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), self.bus.read_lease()).await })
            .expect("read the lease within 5s")
            .expect("read the lease")
    }

    /// Waits (bounded) for a live lease that `pred` accepts.
    fn wait_lease(&self, limit: Duration, pred: impl Fn(&LeaderLease) -> bool) -> LeaseEntry {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.lease().filter(|e| !e.lease.released && pred(&e.lease)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no such lease within {limit:?}: {:?}",
                self.lease()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Collects every event from now on.
    fn events(&self) -> Arc<Mutex<Vec<Event>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut stream = self
            .rt
            .block_on(self.bus.subscribe_events(None, None, None))
            .expect("subscribe to events");
        let out = seen.clone();
        self.rt.spawn(async move {
            use futures::StreamExt;
            while let Some(ev) = stream.next().await {
                out.lock().unwrap().push(ev);
            }
        });
        seen
    }
}

fn coordinator_index(p: &Platform, holder: &str) -> usize {
    (0..p.grpcs.len())
        .find(|i| Platform::coordinator_name(*i) == holder)
        .unwrap_or_else(|| panic!("{holder} is none of this platform's coordinators"))
}

fn secs(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

/// grpcurl's error output for a call that must fail: (code, message).
fn refused(addr: &str, method: &str, data: &str) -> (String, String) {
    let out = grpcurl_at(
        addr,
        &[&format!("infra.coordinator.v1.CoordinatorService/{method}")],
        Some(data),
    );
    assert!(!out.status.success(), "{method} on {addr} was not refused");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let field = |k: &str| {
        err.lines()
            .find_map(|l| l.trim().strip_prefix(k).map(str::trim))
            .unwrap_or("")
            .to_owned()
    };
    (field("Code:"), field("Message:"))
}

/// Waits (bounded) until a write on the follower at `addr` is refused
/// naming `leader`; returns the message.
fn refusal_naming(addr: &str, leader: &LeaderLease) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, message) = refused(addr, "Remove", r#"{"selection":{"services":["web"]}}"#);
        let want = format!(
            "not the leader: {} at {} leads (term {}); send writes there",
            leader.holder, leader.grpc_address, leader.term
        );
        if code == "FailedPrecondition" && message == want {
            return message;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} refused with {code} {message:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// From the lease's history: every term comes after the one before, and
/// begins only after the previous holder's last renewal plus the lease
/// time minus its margin, the moment it stopped counting itself leader.
/// Returns the terms seen and the smallest gap between two terms, seconds.
fn audit_terms(probe: &Probe) -> (Vec<u64>, f64) {
    let history = probe.rt.block_on(probe.bus.lease_history()).expect("lease history");
    let recorded = probe.rt.block_on(probe.bus.list_terms()).expect("term records");
    let numbers: Vec<u64> = recorded.iter().map(|t| t.term).collect();
    assert!(!numbers.is_empty(), "no term recorded");
    assert_eq!(
        numbers,
        (1..=numbers.len() as u64).collect::<Vec<_>>(),
        "terms are recorded once each, from 1 up"
    );
    let mut min_gap = f64::MAX;
    for pair in history.windows(2) {
        let (a, b) = (&pair[0].lease, &pair[1].lease);
        assert!(b.term >= a.term, "term went back from {} to {}", a.term, b.term);
        if b.term == a.term {
            assert_eq!(a.instance, b.instance, "term {} has two holders", a.term);
            continue;
        }
        assert_eq!(b.term, a.term + 1, "a term was skipped");
        let begun = secs(b.acquired_at.as_ref().unwrap());
        let last = secs(a.renewed_at.as_ref().unwrap());
        let ended = if a.released {
            last
        } else {
            // The holder's own deadline: lease minus its margin (a fifth).
            last + (a.lease_ms as f64 / 1000.0) * 0.8
        };
        let gap = begun - ended;
        assert!(
            gap >= 0.0,
            "term {} ({}) began {gap:.3}s before term {} ({}) ended",
            b.term,
            b.holder,
            a.term,
            a.holder
        );
        min_gap = min_gap.min(gap);
    }
    (numbers, min_gap)
}

#[test]
fn one_of_three_coordinators_leads_followers_refuse_writes_naming_it_and_a_killed_leader_is_replaced_within_the_lease()
{
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "01-gateway/web/docker-compose.yml", WEB);
    let mut p = platform("leader3", dir.path(), 3);
    let probe = Probe::new(&p);

    // Exactly one leads: the lease names it, and the two others refuse
    // writes naming it and its address.
    let first = probe.wait_lease(Duration::from_secs(10), |_| true).lease;
    let leader = coordinator_index(&p, &first.holder);
    assert_eq!(first.grpc_address, p.grpcs[leader]);
    for (i, addr) in p.grpcs.iter().enumerate() {
        // Reads work on every coordinator.
        let plan = call_at(addr, "Plan", "{}");
        assert_eq!(plan[0]["steps"][0]["service"], "web", "{plan:?}");
        let hosts = call_at(addr, "ListHosts", "{}");
        assert_eq!(hosts[0]["hosts"].as_array().map(Vec::len), Some(1), "{hosts:?}");
        if i != leader {
            refusal_naming(addr, &first);
        }
    }
    // The leader takes the write; the deploy record is gone once it ends.
    let progress = call_at(&p.grpcs[leader], "Deploy", r#"{"timeoutSeconds":60}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    let open = probe.rt.block_on(probe.bus.list_deployments()).unwrap();
    assert!(open.is_empty(), "a finished deploy is still recorded: {open:?}");

    // SIGKILL the leader: another takes over within the lease time.
    let events = probe.events();
    let killed_at = Instant::now();
    p.kill(&Platform::coordinator_name(leader));
    let next = probe
        .wait_lease(Duration::from_secs(LEASE_SECS + 5), |l| l.term > first.term)
        .lease;
    let takeover = killed_at.elapsed();
    let successor = coordinator_index(&p, &next.holder);
    assert_ne!(successor, leader);
    assert!(
        takeover <= Duration::from_millis(LEASE_SECS * 1000 + 1500),
        "takeover took {takeover:?} with a {LEASE_SECS}s lease"
    );
    // It says so on the bus, accepts writes, and the last follower names it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.kind() == EventKind::LeaderElected && e.host == next.holder)
    {
        assert!(
            Instant::now() < deadline,
            "no leader_elected event from {}",
            next.holder
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let progress = call_at(&p.grpcs[successor], "Deploy", r#"{"timeoutSeconds":60}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    let last = (0..3).find(|i| *i != leader && *i != successor).unwrap();
    refusal_naming(&p.grpcs[last], &next);

    // A clean stop releases the lease: the last one leads at once.
    let stopped_at = Instant::now();
    p.stop(&Platform::coordinator_name(successor));
    let third = probe
        .wait_lease(Duration::from_secs(LEASE_SECS + 5), |l| l.term > next.term)
        .lease;
    let handover = stopped_at.elapsed();
    assert_eq!(third.holder, Platform::coordinator_name(last));
    assert!(
        handover < Duration::from_secs(LEASE_SECS),
        "a released lease took {handover:?} to be taken"
    );
    // With nobody left to name... the last one leads; no write is refused.
    call_at(&p.grpcs[last], "Deploy", r#"{"timeoutSeconds":60}"#);

    let (terms, min_gap) = audit_terms(&probe);
    assert_eq!(terms, vec![first.term, next.term, third.term]);
    println!(
        "leader fault: SIGKILL of the leader {} (term {}); {} led after {:.2}s (lease {LEASE_SECS}s); \
         SIGTERM of {} handed over to {} in {:.2}s; terms {:?} never overlapped (closest {:.2}s apart); \
         followers refused writes naming the leader; test took {:.0}s",
        first.holder,
        first.term,
        next.holder,
        takeover.as_secs_f64(),
        next.holder,
        third.holder,
        handover.as_secs_f64(),
        terms,
        min_gap,
        started.elapsed().as_secs_f64()
    );
}

/// (name, container id, VERSION) of every web container, by name.
fn web_containers(project: &str) -> Vec<(String, String, String)> {
    let ids = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=io.infra.project={project}"),
            "--filter",
            "label=io.infra.service=web",
        ])
        .output()
        .unwrap();
    let mut out = Vec::new();
    for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
        let o = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.Name}}|{{.Id}}|{{range .Config.Env}}{{.}},{{end}}",
                id,
            ])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let mut parts = line.split('|');
        let name = parts.next().unwrap_or("").trim_start_matches('/').to_owned();
        let cid = parts.next().unwrap_or("").to_owned();
        let version = parts
            .next()
            .unwrap_or("")
            .split(',')
            .find_map(|kv| kv.strip_prefix("VERSION="))
            .unwrap_or("")
            .to_owned();
        out.push((name, cid, version));
    }
    out.sort();
    out
}

#[test]
fn a_rollout_whose_leader_is_killed_after_its_first_batch_is_finished_by_the_next_leader_without_updating_a_replica_twice()
 {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "01-gateway/web/docker-compose.yml", WEB);
    let mut p = platform("leaderroll", dir.path(), 2);
    let probe = Probe::new(&p);
    let first = probe.wait_lease(Duration::from_secs(10), |_| true).lease;
    let leader = coordinator_index(&p, &first.holder);
    let progress = call_at(&p.grpcs[leader], "Deploy", r#"{"timeoutSeconds":60}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    let before = web_containers(&p.opts.project);
    assert_eq!(before.len(), 3, "{before:?}");

    // Start the rollout through grpcurl, in the background: its stream
    // breaks when the leader dies.
    let events = probe.events();
    let mut rollout = Command::new(std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into()))
        .args([
            "-plaintext",
            "-d",
            r#"{"service":"web","environment":{"VERSION":"2"},"timeoutSeconds":60}"#,
            &p.grpcs[leader],
            "infra.coordinator.v1.CoordinatorService/Rollout",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("grpcurl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.kind() == EventKind::RolloutBatchDone && e.service == "web")
    {
        assert!(
            Instant::now() < deadline,
            "no rollout_batch_done within 60s:\n{}",
            p.all_logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p.kill(&Platform::coordinator_name(leader));
    let killed_at = SystemTime::now();
    let at_kill = web_containers(&p.opts.project);
    let _ = rollout.wait();
    let updated_before: Vec<_> = at_kill.iter().filter(|c| c.2 == "2").cloned().collect();
    assert!(
        !updated_before.is_empty(),
        "nothing was updated before the kill: {at_kill:?}"
    );
    assert!(
        updated_before.len() < 3,
        "the rollout had finished before the kill: {at_kill:?}"
    );

    // The other coordinator takes the lead and finishes the rollout.
    let next = probe
        .wait_lease(Duration::from_secs(LEASE_SECS + 5), |l| l.term > first.term)
        .lease;
    let deadline = Instant::now() + Duration::from_secs(90);
    let after = loop {
        let now = web_containers(&p.opts.project);
        let record = probe.rt.block_on(probe.bus.get_record("gateway", "web")).unwrap();
        let rolled = record.is_some_and(|r| r.rollout.as_ref().is_none_or(|st| st.phase == "done"));
        if rolled && now.len() == 3 && now.iter().all(|c| c.2 == "2") {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout was not finished within 90s of the takeover: {now:?}\n{}",
            p.all_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Replicas updated before the kill kept their container; every other
    // one was replaced once (a new id, on the new spec).
    for c in &updated_before {
        assert!(
            after.iter().any(|a| a.1 == c.1),
            "{} was updated again after the takeover: {at_kill:?} then {after:?}",
            c.0
        );
    }
    for a in &after {
        assert!(!before.iter().any(|b| b.1 == a.1), "{} was never updated", a.0);
    }
    let resumed = SystemTime::now().duration_since(killed_at).unwrap_or_default();
    println!(
        "rollout fault: SIGKILL of the leader {} after batch 1 of 3 ({} replica(s) on VERSION=2); {} took the lead \
         (term {}) and finished the rollout {:.1}s after the kill; {} replica(s) updated before the kill kept their \
         container, all 3 on VERSION=2; test took {:.0}s",
        first.holder,
        updated_before.len(),
        next.holder,
        next.term,
        resumed.as_secs_f64(),
        updated_before.len(),
        started.elapsed().as_secs_f64()
    );
}
