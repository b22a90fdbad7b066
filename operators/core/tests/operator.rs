//! An operator against the real Docker engine and a real nats-server.
//!
//! Each test runs the operator in-process (`operator_core::run`) under its
//! own host id, so tests never see each other's containers, and cleans up
//! every container, network and volume it made, even on failure.
//!
//! Needs the image `infra-local/debian:bookworm` (`e2e/images/build.sh debian`).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use futures::StreamExt;
use infra_bus::testing::NatsServer;
use infra_bus::{Bus, BusConfig};
use infra_proto::bus::v1::{
    Args, DesiredService, Event, EventKind, Health, HealthcheckSpec, MountKind, MountSpec, NetworkSpec,
    ObservedService, ServiceSpec,
};
use operator_core::docker::DockerClient;
use operator_core::{OperatorConfig, tiers};
use prost::Message;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "infra-local/debian:bookworm";

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    infra_test_support::eventually::eventually_some(what, limit, f).await
}

struct Env {
    nats: NatsServer,
    bus: Bus,
    docker: DockerClient,
    host: String,
    state: tempfile::TempDir,
    events: Arc<Mutex<Vec<Event>>>,
    volumes: Vec<String>,
    network: String,
}

impl Env {
    async fn new(name: &str) -> Self {
        let nats = NatsServer::start();
        let bus = Bus::connect(&BusConfig {
            url: nats.url(),
            name: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let docker = DockerClient::connect().await.expect("docker engine");
        docker
            .raw()
            .inspect_image(IMAGE)
            .await
            .unwrap_or_else(|_| panic!("image {IMAGE} missing: run e2e/images/build.sh debian"));
        let host = format!("t-{name}-{}", std::process::id());
        // A subscriber that is not the operator's code path: raw NATS.
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut sub = bus.client().subscribe(format!("infra.events.{host}.>")).await.unwrap();
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Ok(ev) = Event::decode(m.payload) {
                    sink.lock().unwrap().push(ev);
                }
            }
        });
        let network = format!("{host}-net");
        Self {
            nats,
            bus,
            docker,
            host,
            state: tempfile::tempdir().unwrap(),
            events,
            volumes: Vec::new(),
            network,
        }
    }

    fn start_operator(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        self.start_tier(tiers::DATA)
    }

    fn start_tier(&self, tier: operator_core::Tier) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let cfg = OperatorConfig {
            host: self.host.clone(),
            state_dir: PathBuf::from(self.state.path()),
            resync_secs: 30,
            heartbeat_secs: 1,
            heartbeat_ttl_secs: 5,
            ..Default::default()
        };
        let mut cfg = cfg;
        cfg.restart.backoff_initial_ms = 200;
        let token = CancellationToken::new();
        let (docker, bus, t) = (self.docker.clone(), self.bus.clone(), token.clone());
        let handle = tokio::spawn(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            operator_core::run(tier, cfg, docker, bus, listener, t).await.unwrap();
        });
        (token, handle)
    }

    fn spec(&self, name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            tier: "data".into(),
            image: IMAGE.into(),
            command: Some(Args {
                args: vec!["sleep".into(), "infinity".into()],
            }),
            environment: [("GREETING".to_string(), "hello".to_string())].into(),
            restart: "unless-stopped".into(),
            replicas: 1,
            init: true,
            networks: vec![NetworkSpec {
                name: self.network.clone(),
                aliases: vec![],
            }],
            // Healthy while /tmp/sick does not exist; /tmp is a tmpfs, so a
            // restart clears it.
            healthcheck: Some(HealthcheckSpec {
                test: vec!["CMD-SHELL".into(), "test ! -f /tmp/sick".into()],
                interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
                timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
                retries: 1,
                ..Default::default()
            }),
            tmpfs: vec!["/tmp".into()],
            ..Default::default()
        }
    }

    async fn desire(&self, spec: ServiceSpec, generation: u64) {
        let d = DesiredService {
            spec: Some(spec),
            host: self.host.clone(),
            generation,
            ..Default::default()
        };
        self.bus.put_desired(&d).await.unwrap();
    }

    async fn observed(&self, service: &str) -> Option<ObservedService> {
        self.bus
            .list_observed(Some((&self.host, "data")))
            .await
            .unwrap()
            .into_iter()
            .find(|o| o.service == service)
    }

    async fn wait_healthy(&self, service: &str) -> ObservedService {
        eventually(Duration::from_secs(60), &format!("{service} healthy"), || async {
            self.observed(service).await.filter(|o| o.health() == Health::Healthy)
        })
        .await
    }

    async fn containers(&self, service: &str) -> Vec<bollard::models::ContainerSummary> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("io.infra.host={}", self.host),
                format!("io.infra.service={service}"),
            ],
        )]);
        self.docker
            .raw()
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap()
    }

    async fn wait_event(&self, kind: EventKind, service: &str) -> Event {
        eventually(
            Duration::from_secs(60),
            &format!("{kind:?} event for {service}"),
            || async {
                self.events
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|e| e.kind() == kind && e.service == service)
                    .cloned()
            },
        )
        .await
    }

    fn count_events(&self, kind: EventKind, service: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.kind() == kind && e.service == service)
            .count()
    }

    async fn cleanup(&self) {
        let filters = HashMap::from([("label".to_string(), vec![format!("io.infra.host={}", self.host)])]);
        let list = self
            .docker
            .raw()
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap_or_default();
        for c in list {
            let opts = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            let _ = self
                .docker
                .raw()
                .remove_container(c.id.as_deref().unwrap_or_default(), Some(opts))
                .await;
        }
        for v in &self.volumes {
            let _ = self.docker.remove_volume(v).await;
        }
        let _ = self.docker.raw().remove_network(&self.network).await;
        let _ = &self.nats;
    }
}

async fn exec(docker: &DockerClient, id: &str, cmd: &[&str]) {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let exec = docker
        .raw()
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    if let StartExecResults::Attached { mut output, .. } = docker.raw().start_exec(&exec.id, None).await.unwrap() {
        while output.next().await.is_some() {}
    }
}

/// Runs the body, then cleans up whatever happened.
async fn with_env<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let env = Arc::new(Env::new(name).await);
    let result = tokio::spawn(body(env.clone())).await;
    env.cleanup().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_creates_adopts_after_restart_recreates_on_change_and_removes() {
    with_env("lifecycle", |env| async move {
        let (stop, handle) = env.start_operator();
        env.desire(env.spec("lc"), 1).await;
        let obs = env.wait_healthy("lc").await;
        assert_eq!(obs.running_replicas, 1);
        assert_eq!(obs.generation, 1);
        let first = env.containers("lc").await;
        assert_eq!(first.len(), 1, "one container");
        let first_id = first[0].id.clone().unwrap();
        let started = env
            .docker
            .raw()
            .inspect_container(&first_id, None::<InspectContainerOptions>)
            .await
            .unwrap();
        // No `logging:`: json-file, kept to 3 files of 10 MB.
        let log = started.host_config.as_ref().and_then(|h| h.log_config.clone()).unwrap();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        let opts = log.config.unwrap_or_default();
        assert_eq!(
            (
                opts.get("max-size").map(String::as_str),
                opts.get("max-file").map(String::as_str)
            ),
            (Some("10m"), Some("3"))
        );
        let started_at = started.state.unwrap().started_at;
        env.wait_event(EventKind::Created, "lc").await;
        env.wait_event(EventKind::Started, "lc").await;
        env.wait_event(EventKind::Healthy, "lc").await;

        // Restart the operator: it adopts, no duplicate, no restart.
        stop.cancel();
        handle.await.unwrap();
        let (stop, handle) = env.start_operator();
        env.wait_event(EventKind::Adopted, "lc").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = env.containers("lc").await;
        assert_eq!(after.len(), 1, "no duplicate after operator restart");
        assert_eq!(
            after[0].id.as_deref(),
            Some(first_id.as_str()),
            "same container adopted"
        );
        let again = env
            .docker
            .raw()
            .inspect_container(&first_id, None::<InspectContainerOptions>)
            .await
            .unwrap();
        assert_eq!(
            again.state.unwrap().started_at,
            started_at,
            "container was not restarted"
        );
        assert_eq!(env.count_events(EventKind::Created, "lc"), 1);

        // Change the spec: the container is recreated with the new env.
        let mut changed = env.spec("lc");
        changed.environment.insert("GREETING".into(), "changed".into());
        changed.logging = Some(infra_proto::bus::v1::LoggingSpec {
            driver: "local".into(),
            options: [("max-size".to_owned(), "1m".to_owned())].into(),
        });
        env.desire(changed, 2).await;
        env.wait_event(EventKind::Recreated, "lc").await;
        let obs = eventually(Duration::from_secs(60), "recreated and healthy", || async {
            env.observed("lc").await.filter(|o| {
                o.health() == Health::Healthy
                    && o.generation == 2
                    && o.containers.len() == 1
                    && o.containers[0].spec_hash == o.spec_hash
            })
        })
        .await;
        let new_id = obs.containers[0].id.clone();
        assert_ne!(new_id, first_id);
        let inspect = env
            .docker
            .raw()
            .inspect_container(&new_id, None::<InspectContainerOptions>)
            .await
            .unwrap();
        // The service's `logging:`, as written.
        let log = inspect.host_config.as_ref().and_then(|h| h.log_config.clone()).unwrap();
        assert_eq!(log.typ.as_deref(), Some("local"));
        assert_eq!(
            log.config.unwrap_or_default().get("max-size").map(String::as_str),
            Some("1m")
        );
        let container_env = inspect.config.unwrap().env.unwrap();
        assert!(container_env.contains(&"GREETING=changed".to_string()));
        // The operator tells the container which host it runs on.
        assert!(
            container_env.contains(&format!("INFRA_HOST_NAME={}", env.host)),
            "{container_env:?}"
        );
        assert_eq!(env.containers("lc").await.len(), 1);

        // Remove: the container goes; the observed key goes too.
        env.bus.delete_desired(&env.host, "data", "lc").await.unwrap();
        env.wait_event(EventKind::Removed, "lc").await;
        eventually(Duration::from_secs(30), "container removed", || async {
            env.containers("lc").await.is_empty().then_some(())
        })
        .await;
        eventually(Duration::from_secs(30), "observed state deleted", || async {
            env.observed("lc").await.is_none().then_some(())
        })
        .await;
        stop.cancel();
        handle.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_comes_back_healthy_without_anyone_asking() {
    with_env("kill", |env| async move {
        let (stop, handle) = env.start_operator();
        let mut spec = env.spec("kl");
        // No Docker restart policy: the operator alone must bring it back.
        spec.restart = "on-failure".into();
        env.desire(spec, 1).await;
        let obs = env.wait_healthy("kl").await;
        let id = obs.containers[0].id.clone();
        env.docker
            .raw()
            .kill_container(
                &id,
                Some(KillContainerOptions {
                    signal: "SIGKILL".into(),
                }),
            )
            .await
            .unwrap();
        let died = env.wait_event(EventKind::Died, "kl").await;
        assert_eq!(died.container_id, id);
        let restarted = env.wait_event(EventKind::Restarted, "kl").await;
        assert!(
            restarted.reason.contains("exited with code 137"),
            "{}",
            restarted.reason
        );
        let obs = eventually(Duration::from_secs(60), "healthy again", || async {
            env.observed("kl")
                .await
                .filter(|o| o.health() == Health::Healthy && o.containers[0].restarts >= 1)
        })
        .await;
        assert_eq!(obs.containers[0].id, id, "the same container was started again");
        stop.cancel();
        handle.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_whose_health_check_fails_is_restarted() {
    with_env("unhealthy", |env| async move {
        let (stop, handle) = env.start_operator();
        env.desire(env.spec("uh"), 1).await;
        let obs = env.wait_healthy("uh").await;
        let id = obs.containers[0].id.clone();
        let before = env
            .docker
            .raw()
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .unwrap();
        exec(&env.docker, &id, &["touch", "/tmp/sick"]).await;
        env.wait_event(EventKind::Unhealthy, "uh").await;
        let restarted = env.wait_event(EventKind::Restarted, "uh").await;
        assert!(restarted.reason.contains("unhealthy"), "{}", restarted.reason);
        eventually(Duration::from_secs(60), "healthy after restart", || async {
            let c = env
                .docker
                .raw()
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
                .ok()?;
            let st = c.state?;
            (st.started_at != before.state.as_ref().unwrap().started_at
                && st.health.and_then(|h| h.status).map(|s| s.to_string()) == Some("healthy".into()))
            .then_some(())
        })
        .await;
        stop.cancel();
        handle.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_survive_removal_unless_removal_of_volumes_is_asked_for() {
    with_env("volumes", |mut_env| async move {
        let env = mut_env;
        let (stop, handle) = env.start_operator();
        let volume = format!("{}-data", env.host);
        let mut spec = env.spec("vl");
        spec.mounts.push(MountSpec {
            kind: MountKind::Volume as i32,
            source: volume.clone(),
            target: "/data".into(),
            read_only: false,
        });
        env.desire(spec.clone(), 1).await;
        let obs = env.wait_healthy("vl").await;
        exec(&env.docker, &obs.containers[0].id, &["sh", "-c", "echo kept > /data/f"]).await;

        // Plain removal keeps the volume and its data.
        env.bus.delete_desired(&env.host, "data", "vl").await.unwrap();
        eventually(Duration::from_secs(30), "removed", || async {
            env.containers("vl").await.is_empty().then_some(())
        })
        .await;
        assert!(env.docker.raw().inspect_volume(&volume).await.is_ok(), "volume kept");

        // Bring it back: the data is there.
        env.desire(spec.clone(), 2).await;
        let obs = env.wait_healthy("vl").await;
        let out = {
            use bollard::exec::{CreateExecOptions, StartExecResults};
            let ex = env
                .docker
                .raw()
                .create_exec(
                    &obs.containers[0].id,
                    CreateExecOptions {
                        cmd: Some(vec!["cat", "/data/f"]),
                        attach_stdout: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let mut s = String::new();
            if let StartExecResults::Attached { mut output, .. } =
                env.docker.raw().start_exec(&ex.id, None).await.unwrap()
            {
                while let Some(Ok(chunk)) = output.next().await {
                    s.push_str(&chunk.to_string());
                }
            }
            s
        };
        assert_eq!(out.trim(), "kept");

        // Removal with volumes, in so many words.
        let d = DesiredService {
            spec: Some(spec),
            host: env.host.clone(),
            generation: 3,
            absent: true,
            remove_volumes: true,
            ..Default::default()
        };
        env.bus.put_desired(&d).await.unwrap();
        eventually(Duration::from_secs(30), "volume removed", || async {
            env.docker.raw().inspect_volume(&volume).await.is_err().then_some(())
        })
        .await;
        eventually(Duration::from_secs(30), "desired key cleaned", || async {
            env.bus
                .get_desired(&env.host, "data", "vl")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
        stop.cancel();
        handle.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_container_is_probed_early_instead_of_waiting_for_dockers_first_check() {
    with_env("probe", |env| async move {
        let (stop, handle) = env.start_operator();
        let mut spec = env.spec("pr");
        // Docker 20.10 would run the first check only after a minute.
        spec.healthcheck.as_mut().unwrap().interval = Some(prost_types::Duration { seconds: 60, nanos: 0 });
        env.desire(spec, 1).await;
        let started = std::time::Instant::now();
        let obs = env.wait_healthy("pr").await;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "healthy after {:?}",
            started.elapsed()
        );
        // Docker itself has not checked yet: the verdict is the operator's probe.
        let inspect = env
            .docker
            .raw()
            .inspect_container(&obs.containers[0].id, None::<InspectContainerOptions>)
            .await
            .unwrap();
        let docker_says = inspect.state.unwrap().health.unwrap().status.map(|s| s.to_string());
        assert_eq!(docker_says.as_deref(), Some("starting"));
        env.wait_event(EventKind::Healthy, "pr").await;
        stop.cancel();
        handle.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_of_several_tiers_creating_one_network_at_once_make_exactly_one() {
    with_env("netrace", |env| async move {
        let all = [
            tiers::DATA,
            tiers::GATEWAY,
            tiers::MESSAGING,
            tiers::OBSERVABILITY,
            tiers::WORKFLOW,
            tiers::TOOLING,
        ];
        let ops: Vec<_> = all.iter().map(|t| env.start_tier(*t)).collect();
        // Every tier wants a service on the same, not yet existing network,
        // all at once.
        let writes = all.iter().enumerate().map(|(i, t)| {
            let mut spec = env.spec(&format!("nr{i}"));
            spec.tier = t.name.to_owned();
            let d = DesiredService {
                spec: Some(spec),
                host: env.host.clone(),
                generation: 1,
                ..Default::default()
            };
            let bus = env.bus.clone();
            async move { bus.put_desired(&d).await.unwrap() }
        });
        futures::future::join_all(writes).await;
        for (i, t) in all.iter().enumerate() {
            let name = format!("nr{i}");
            eventually(Duration::from_secs(60), &format!("{name} healthy"), || async {
                let list = env.bus.list_observed(Some((&env.host, t.name))).await.unwrap();
                list.into_iter()
                    .find(|o| o.service == name && o.health() == Health::Healthy)
            })
            .await;
        }
        let nets = env
            .docker
            .raw()
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await
            .unwrap();
        let same: Vec<_> = nets
            .iter()
            .filter(|n| n.name.as_deref() == Some(env.network.as_str()))
            .collect();
        assert_eq!(same.len(), 1, "one network named {}", env.network);
        for (stop, handle) in ops {
            stop.cancel();
            handle.await.unwrap();
        }
    })
    .await;
}

/// An extension that says the host has two GPUs and tries to say its zone.
fn fake_gpu_extension(ctx: operator_core::TierContext) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        ctx.facts.set("gpus", "2");
        ctx.facts.set("zone", "from-extension");
        ctx.shutdown.cancelled().await;
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tier_extension_runs_beside_the_loop_and_its_facts_reach_the_heartbeats_under_the_configured_labels() {
    let env = Env::new("ext").await;
    let tier = tiers::AI.with(&[fake_gpu_extension]);
    let cfg = OperatorConfig {
        host: env.host.clone(),
        state_dir: PathBuf::from(env.state.path()),
        heartbeat_secs: 1,
        heartbeat_ttl_secs: 5,
        labels: [("zone".to_string(), "configured".to_string())].into(),
        ..Default::default()
    };
    let token = CancellationToken::new();
    let (docker, bus, t) = (env.docker.clone(), env.bus.clone(), token.clone());
    let handle = tokio::spawn(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        operator_core::run(tier, cfg, docker, bus, listener, t).await.unwrap();
    });
    let hb = eventually(
        Duration::from_secs(10),
        "a heartbeat with the extension's facts",
        || {
            let bus = env.bus.clone();
            let host = env.host.clone();
            async move {
                bus.list_heartbeats()
                    .await
                    .ok()?
                    .into_iter()
                    .find(|h| h.host == host && h.labels.contains_key("gpus"))
            }
        },
    )
    .await;
    assert_eq!(hb.labels["gpus"], "2");
    assert_eq!(
        hb.labels["zone"], "configured",
        "a person's label wins over an extension's"
    );
    assert!(hb.labels.contains_key("cpus"), "detected facts stay");
    token.cancel();
    tokio::time::timeout(Duration::from_secs(15), handle)
        .await
        .expect("the operator and its extension stop on shutdown")
        .unwrap();
}
