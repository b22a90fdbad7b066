//! The coordinator's logic in process, against a real nats-server: no
//! operator binaries and no Docker. A fake operator on the bus answers
//! desired state with observed state (healthy once a service's own
//! dependencies let it start, as the real one would report it), so the
//! coordinator's own decisions are what is tested: the order of a deploy,
//! scaling and its bounds, ending deploy records, the leader hand-over.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use infra_bus::testing::NatsServer;
use infra_bus::{Bus, Change};
use infra_coordinator::{Coordinator, ObservedCache, Settings};
use infra_proto::bus::v1::{ContainerStatus, DesiredService, Health, Heartbeat, ObservedService};
use infra_proto::coordinator::v1 as api;
use tokio_util::sync::CancellationToken;

async fn bus(server: &NatsServer) -> Bus {
    server.bus().await
}

fn settings(catalog: &std::path::Path) -> Settings {
    Settings {
        id: "coordinator".into(),
        project: "logic".into(),
        compose_dir: Some(catalog.to_owned()),
        catalog_replicas: 1,
        overrides: Vec::new(),
        env_file: None,
        secret_dirs: Vec::new(),
        deploy_timeout: Duration::from_secs(20),
        max_replicas: 10,
        host_lost_after: Duration::from_secs(30),
        heartbeat_ttl: Duration::from_secs(30),
        join: None,
    }
}

fn write(root: &std::path::Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A desired write as the fake operator saw it, with when.
type Seen = Arc<Mutex<Vec<(Instant, DesiredService)>>>;

/// Plays the `data` operator of host `h1`: heartbeats (2 CPUs), and
/// answers each desired write with observed state: its containers on the
/// written spec, held ones created, the others healthy after `boot`.
async fn fake_operator(bus: Bus, boot: Duration, stop: CancellationToken) -> Seen {
    bus.heartbeat(&Heartbeat {
        host: "h1".into(),
        tier: "data".into(),
        labels: [("cpus".to_string(), "2".to_string())].into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let seen: Seen = Arc::default();
    let mut watch = bus.watch_desired("h1", "data").await.unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                () = stop.cancelled() => return,
                c = watch.next() => c,
            };
            let Some(Ok(Change::Put { value: d, .. })) = change else {
                continue;
            };
            log.lock().unwrap().push((Instant::now(), d.clone()));
            let bus = bus.clone();
            tokio::spawn(async move {
                let Some(spec) = d.spec.clone() else { return };
                if d.absent {
                    let _ = bus.delete_observed("h1", "data", &spec.name).await;
                    let _ = bus.delete_desired("h1", "data", &spec.name).await;
                    return;
                }
                let hash = infra_proto::spec::spec_hash(&spec);
                // During a rolling update, replicas past `updated` keep the
                // previous spec.
                let old = d.previous.as_ref().map(infra_proto::spec::spec_hash);
                let hash_of = |r: u32| match &old {
                    Some(o) if r > d.updated => o.clone(),
                    _ => hash.clone(),
                };
                if !d.hold {
                    tokio::time::sleep(boot).await;
                }
                let (health, state) = if d.hold {
                    (Health::Starting, "created")
                } else {
                    (Health::Healthy, "running")
                };
                let n = spec.replicas.max(1);
                let obs = ObservedService {
                    host: "h1".into(),
                    tier: "data".into(),
                    service: spec.name.clone(),
                    spec_hash: hash.clone(),
                    generation: d.generation,
                    desired_replicas: n,
                    running_replicas: if d.hold { 0 } else { n },
                    healthy_replicas: if d.hold { 0 } else { n },
                    health: health as i32,
                    containers: (1..=n)
                        .map(|r| ContainerStatus {
                            id: format!("{}-{r}", spec.name),
                            replica: r,
                            state: state.into(),
                            health: health as i32,
                            spec_hash: hash_of(r),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                };
                let _ = bus.put_observed(&obs).await;
            });
        }
    });
    seen
}

/// The coordinator over `catalog`, following observed state.
async fn coordinator(bus: &Bus, catalog: &std::path::Path, stop: &CancellationToken) -> Coordinator {
    let cache = ObservedCache::default();
    tokio::spawn(cache.clone().follow(bus.clone(), stop.clone()));
    Coordinator::new(settings(catalog), bus.clone(), cache)
}

/// Runs a long call and gathers its progress.
async fn progress<F, Fut>(call: F) -> (Result<(), String>, Vec<api::DeployProgress>)
where
    F: FnOnce(infra_coordinator::coordinator::ProgressTx) -> Fut,
    Fut: std::future::Future<Output = Result<(), infra_coordinator::error::Error>>,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let gather = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(Ok(p)) = rx.recv().await {
            out.push(p);
        }
        out
    });
    // On the heap, as the gRPC service runs a call (a task): a deploy's
    // future is too large for a test thread's stack in a debug build.
    let r = tokio::time::timeout(Duration::from_secs(60), Box::pin(call(tx)))
        .await
        .expect("the call ended")
        .map_err(|e| e.to_string());
    (r, gather.await.unwrap())
}

/// Deploys `services` (every service when empty) and gathers the progress.
async fn deploy(c: &Coordinator, services: &[&str]) -> (Result<(), String>, Vec<api::DeployProgress>) {
    let request = api::DeployRequest {
        selection: (!services.is_empty()).then(|| api::Selection {
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let c = c.clone();
    progress(|tx| async move { c.deploy(request, tx).await }).await
}

const STACK: &str = r#"services:
  db:
    image: x/db:1
    healthcheck:
      test: ["CMD", "true"]
  web:
    image: x/web:1
    depends_on:
      db:
        condition: service_healthy
  worker:
    image: x/worker:1
    deploy:
      resources:
        reservations:
          cpus: "0.5"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_is_released_only_after_its_dependency_reports_healthy() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "04-data/app/docker-compose.yml", STACK);
    let stop = CancellationToken::new();
    let seen = fake_operator(bus.clone(), Duration::from_millis(600), stop.clone()).await;
    let c = coordinator(&bus, dir.path(), &stop).await;
    let (r, p) = deploy(&c, &[]).await;
    r.unwrap();
    let done = p.iter().find(|m| m.phase == api::Phase::Done as i32).expect("done");
    assert_eq!((done.ready, done.failed, done.blocked), (3, 0, 0), "{p:#?}");
    let seen = seen.lock().unwrap().clone();
    let at = |name: &str, hold: bool| {
        seen.iter()
            .find(|(_, d)| d.spec.as_ref().is_some_and(|s| s.name == name) && d.hold == hold)
            .map(|(t, _)| *t)
    };
    // web was created held early, and released only once db had been
    // healthy (600 ms after its own release).
    let (db, web_held, web) = (
        at("db", false).unwrap(),
        at("web", true).unwrap(),
        at("web", false).unwrap(),
    );
    assert!(web_held < web, "held first");
    assert!(
        web.duration_since(db) >= Duration::from_millis(600),
        "web released {:?} after db",
        web.duration_since(db)
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_is_bounded_by_the_maximum_and_by_reservations_and_writes_the_new_count() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "04-data/app/docker-compose.yml", STACK);
    let stop = CancellationToken::new();
    let _seen = fake_operator(bus.clone(), Duration::from_millis(50), stop.clone()).await;
    let c = coordinator(&bus, dir.path(), &stop).await;
    let (r, _) = deploy(&c, &["worker"]).await;
    r.unwrap();
    let scale = |n: u32| {
        let c = c.clone();
        async move {
            progress(|tx| async move {
                c.scale(
                    api::ScaleRequest {
                        service: "worker".into(),
                        replicas: n,
                        ..Default::default()
                    },
                    tx,
                )
                .await
            })
            .await
        }
    };
    let (r, _) = scale(11).await;
    assert!(r.unwrap_err().contains("max_replicas = 10"));
    // Two CPUs, half a CPU each: four fit.
    let (r, _) = scale(5).await;
    let e = r.unwrap_err();
    assert!(
        e.contains("reserves 0.5 CPUs") && e.contains("nothing was changed"),
        "{e}"
    );
    let (r, p) = scale(4).await;
    r.unwrap();
    assert!(p.iter().any(|m| m.message.contains("scaled 1 -> 4")), "{p:#?}");
    let d = bus.get_desired("h1", "data", "worker").await.unwrap().unwrap();
    assert_eq!(d.spec.unwrap().replicas, 4);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_ends_deploy_records_newest_first_and_supersedes_the_older() {
    use infra_proto::bus::v1::DeploymentInProgress;
    use prost::Message;
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "04-data/app/docker-compose.yml", STACK);
    let stop = CancellationToken::new();
    let _seen = fake_operator(bus.clone(), Duration::from_millis(50), stop.clone()).await;
    let c = coordinator(&bus, dir.path(), &stop).await;
    let request = api::DeployRequest {
        selection: Some(api::Selection {
            services: vec!["db".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let now = infra_proto::now();
    for (id, age, req) in [
        ("old", 3600, request.clone()),
        ("new", 1, request.clone()),
        ("garbage", 10, vec![0xff, 0xff]),
    ] {
        bus.put_deployment(&DeploymentInProgress {
            id: id.into(),
            request: req,
            started_at: Some(prost_types::Timestamp {
                seconds: now.seconds - age,
                nanos: 0,
            }),
            holder: "gone".into(),
            catalog_revision: 1,
        })
        .await
        .unwrap();
    }
    let (_tx, leading) = tokio::sync::watch::channel(true);
    let ended: BTreeMap<String, Result<(), String>> = infra_coordinator::deploy::resume_deploys(&c, leading)
        .await
        .into_iter()
        .collect();
    assert_eq!(ended["new"], Ok(()));
    assert!(ended["old"].as_ref().unwrap_err().contains("superseded by deploy new"));
    assert!(ended["garbage"].as_ref().unwrap_err().contains("does not decode"));
    assert!(bus.list_deployments().await.unwrap().is_empty(), "every record ended");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_stops_cleanly_hands_over_at_once_and_one_that_dies_after_its_lease() {
    use infra_coordinator::leader::{Election, Leadership, LeaseSettings};
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let lease = |id: &str| LeaseSettings {
        id: id.into(),
        address: format!("{id}:50051"),
        lease: Duration::from_secs(2),
    };
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (a, a_task) = Election::start(bus.clone(), lease("a"), stop_a.clone()).await;
    let (b, b_task) = Election::start(bus.clone(), lease("b"), stop_b.clone()).await;
    assert!(matches!(a.leadership(), Leadership::Me { .. }), "{:?}", a.leadership());
    infra_test_support::eventually("b sees a lead", Duration::from_secs(5), || {
        let l = b.leadership();
        async move { matches!(l, Leadership::Other { ref holder, .. } if holder == "a") }
    })
    .await;
    // A clean stop releases the lease: b leads within a poll, long before
    // a lease time.
    let t = Instant::now();
    stop_a.cancel();
    a_task.await.unwrap();
    let mut leading = b.leading();
    tokio::time::timeout(Duration::from_secs(1), leading.wait_for(|l| *l))
        .await
        .expect("b leads within a second of a's release")
        .unwrap();
    let handed = t.elapsed();
    // b dies without releasing: a new run of a waits the lease out.
    b_task.abort();
    let (a2, _a2_task) = Election::start(bus.clone(), lease("a"), CancellationToken::new()).await;
    assert!(!*a2.leading().borrow(), "not while b's lease runs");
    let t = Instant::now();
    let mut leading = a2.leading();
    tokio::time::timeout(Duration::from_secs(10), leading.wait_for(|l| *l))
        .await
        .expect("a leads once b's lease ran out")
        .unwrap();
    let took = t.elapsed();
    println!("LEADER | clean hand-over {handed:?}; after a crash {took:?} (lease 2 s)");
    assert!(
        took >= Duration::from_millis(1500),
        "not before the lease ran out: {took:?}"
    );
    drop(stop_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_interrupted_after_its_first_batch_is_finished_by_the_next_leader() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/app/docker-compose.yml",
        "services:\n  web:\n    image: x/web:1\n    deploy:\n      replicas: 3\n      update_config:\n        parallelism: 1\n",
    );
    let stop = CancellationToken::new();
    let seen = fake_operator(bus.clone(), Duration::from_millis(300), stop.clone()).await;
    let c = coordinator(&bus, dir.path(), &stop).await;
    let (r, _) = deploy(&c, &[]).await;
    r.unwrap();
    // A rollout whose coordinator stops after its first batch.
    let roll = {
        let c = c.clone();
        tokio::spawn(async move {
            progress(|tx| async move {
                c.rollout_service(
                    api::RolloutRequest {
                        service: "web".into(),
                        image: "x/web:2".into(),
                        ..Default::default()
                    },
                    tx,
                )
                .await
            })
            .await
        })
    };
    infra_test_support::eventually("the first batch written", Duration::from_secs(20), || {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .iter()
                .any(|(_, d)| d.previous.is_some() && d.updated >= 1)
        }
    })
    .await;
    roll.abort();
    let _ = roll.await;
    let d = bus.get_desired("h1", "data", "web").await.unwrap().unwrap();
    assert!(
        d.previous.is_some() && d.updated < 3,
        "interrupted midway: {:?}",
        d.updated
    );
    // The next leader takes it up from the store and finishes it.
    let resumed = tokio::time::timeout(Duration::from_secs(60), c.resume_rollouts())
        .await
        .expect("the resumed rollout ended");
    assert_eq!(resumed, vec![("web".to_string(), Ok(()))]);
    let d = bus.get_desired("h1", "data", "web").await.unwrap().unwrap();
    assert!(d.previous.is_none(), "settled");
    assert_eq!(d.spec.unwrap().image, "x/web:2");
    let rec = bus.get_record("data", "web").await.unwrap().unwrap();
    assert_eq!(
        rec.spec.unwrap().image,
        "x/web:2",
        "the record's spec is the new revision"
    );
    stop.cancel();
}

/// An operator heartbeating another version than the coordinator's (an
/// upgrade left half done) is reported in `ListHosts`, not tolerated in
/// silence; one on the same version is not.
#[tokio::test]
async fn list_hosts_reports_an_operator_on_another_version() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let c = coordinator(&bus, dir.path(), &stop).await;
    for (tier, version) in [("data", infra_coordinator::VERSION), ("gateway", "0.0.1")] {
        bus.heartbeat(&Heartbeat {
            host: "h1".into(),
            tier: tier.into(),
            version: version.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let hosts = c.hosts().await.unwrap();
    assert_eq!(hosts.coordinator_version, infra_coordinator::VERSION);
    let ops = &hosts.hosts[0].operators;
    let skew = |tier: &str| ops.iter().find(|o| o.tier == tier).unwrap().version_skew.clone();
    assert_eq!(skew("data"), "");
    assert_eq!(
        skew("gateway"),
        format!("operator 0.0.1, coordinator {}", infra_coordinator::VERSION)
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_files_old_content_is_pruned_once_no_spec_and_no_rollback_needs_it() {
    use sha2::Digest;
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/app/docker-compose.yml",
        "services:\n  app:\n    image: x/app:1\n    volumes:\n      - ./app.conf:/etc/app.conf:ro\n",
    );
    let stop = CancellationToken::new();
    let _seen = fake_operator(bus.clone(), Duration::from_millis(50), stop.clone()).await;
    let c = coordinator(&bus, dir.path(), &stop).await;
    let key = |text: &str| infra_proto::spec::config_key(&hex::encode(sha2::Sha256::digest(text.as_bytes())));
    for version in ["v1", "v2", "v3"] {
        write(dir.path(), "04-data/app/app.conf", version);
        let (r, p) = deploy(&c, &["app"]).await;
        r.unwrap();
        let done = p.iter().find(|m| m.phase == api::Phase::Done as i32).expect("done");
        assert_eq!(done.ready, 1, "{version}: {p:#?}");
        assert!(
            bus.get_secret_source(&key(version)).await.unwrap().is_some(),
            "{version} stored"
        );
    }
    // v3 is applied, v2 is what a rollback goes back to: both stay; v1,
    // which nothing names any more, goes.
    let gone = c.prune_config_sources(Duration::ZERO).await.unwrap();
    assert_eq!(gone, vec![key("v1")]);
    for (v, there) in [("v1", false), ("v2", true), ("v3", true)] {
        assert_eq!(bus.get_secret_source(&key(v)).await.unwrap().is_some(), there, "{v}");
    }
    // The leader's own floor keeps anything written within the hour.
    assert!(
        c.prune_config_sources(infra_coordinator::remove::CONFIG_SOURCE_FLOOR)
            .await
            .unwrap()
            .is_empty()
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_gone_from_the_catalog_is_planned_as_a_removal_and_removed_only_by_a_pruning_deploy() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "04-data/app/docker-compose.yml", STACK);
    let stop = CancellationToken::new();
    let _seen = fake_operator(bus.clone(), Duration::from_millis(50), stop.clone()).await;
    let c = coordinator(&bus, dir.path(), &stop).await;
    let (r, _) = deploy(&c, &[]).await;
    r.unwrap();
    // The user drops `worker` from the stack and changes web's image.
    let stack = STACK.replace("x/web:1", "x/web:2");
    let stack = &stack[..stack.find("  worker:").unwrap()];
    write(dir.path(), "04-data/app/docker-compose.yml", stack);
    let plan = c.plan(None).await.unwrap();
    let step = |name: &str| plan.steps.iter().find(|s| s.service == name).cloned();
    let worker = step("worker").expect("worker in the plan");
    assert_eq!(worker.action, api::Action::Remove as i32, "{plan:#?}");
    assert_eq!(worker.host, "h1");
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("no longer in the catalog: worker") && w.contains("prune")),
        "{:?}",
        plan.warnings
    );
    assert_eq!(step("web").unwrap().changes, vec!["image: x/web:1 → x/web:2"]);
    let still = |name: &'static str| {
        let bus = bus.clone();
        async move {
            bus.list_desired(None)
                .await
                .unwrap()
                .iter()
                .any(|d| !d.absent && d.spec.as_ref().is_some_and(|s| s.name == name))
        }
    };
    // A plain deploy leaves it, and says so.
    let (r, p) = deploy(&c, &[]).await;
    r.unwrap();
    let done = p.iter().find(|m| m.phase == api::Phase::Done as i32).unwrap();
    assert!(
        done.message.contains("left running") && done.message.contains("worker"),
        "{}",
        done.message
    );
    assert!(still("worker").await, "a deploy without prune keeps worker");
    // A pruning one removes it (and only it).
    let request = api::DeployRequest {
        prune: true,
        ..Default::default()
    };
    let cc = c.clone();
    let (r, p) = progress(|tx| async move { cc.deploy(request, tx).await }).await;
    r.unwrap();
    let removed: Vec<&str> = p
        .iter()
        .filter(|m| m.phase == api::Phase::Removed as i32)
        .map(|m| m.service.as_str())
        .collect();
    assert_eq!(removed, ["worker"], "{p:#?}");
    assert!(!still("worker").await, "worker removed");
    assert!(still("web").await && still("db").await);
    let plan = c.plan(None).await.unwrap();
    assert!(
        plan.steps.iter().all(|s| s.action != api::Action::Remove as i32),
        "{plan:#?}"
    );
    stop.cancel();
}
