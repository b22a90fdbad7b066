//! Placement and scaling through the real coordinator, operators, NATS,
//! Docker engine and grpcurl, on one host: a service no host can take stays
//! pending with a reason (in status and on the bus) without disturbing the
//! rest; scaling adds replicas gated on health and removes the surplus; a
//! stateful or global service is refused with a reason.
//!
//! Placement across several hosts is tested on simulated hosts
//! (`tests/hosts.rs`). Images: `infra-local/nginx:1` and
//! `infra-local/debian:bookworm` from `e2e/images/build.sh`.

use std::path::Path;
use std::process::Command;

use infra_e2e::{Options, Platform, write};
use infra_proto::bus::v1::EventKind;

fn platform(name: &str, catalog: &Path) -> Platform {
    let o = Options::over(name, catalog, &["data", "gateway"]);
    Platform::start(o)
}

/// `docker ps` of this platform's containers of `service`: (name, health).
fn containers(p: &Platform, service: &str) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=io.infra.project={}", p.opts.project),
            "--filter",
            &format!("label=io.infra.service={service}"),
            "--format",
            "{{.Names}} {{.Status}}",
        ])
        .output()
        .unwrap();
    let mut v: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (n, s) = l.split_once(' ').unwrap_or((l, ""));
            (n.to_owned(), s.to_owned())
        })
        .collect();
    v.sort();
    v
}

const WEB: &str = r#"services:
  web:
    image: infra-local/nginx:1
    deploy:
      replicas: 1
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
      interval: 1s
      retries: 30
  lonely:
    image: infra-local/nginx:1
    deploy:
      placement:
        constraints: ["node.labels.zone == mars"]
  everywhere:
    image: infra-local/debian:bookworm
    command: ["sleep", "infinity"]
    init: true
    deploy:
      mode: global
"#;

const DB: &str = r#"services:
  db:
    image: infra-local/debian:bookworm
    command: ["sleep", "infinity"]
    init: true
    volumes:
      - db-data:/data
volumes:
  db-data:
"#;

fn catalog() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "01-gateway/web/docker-compose.yml", WEB);
    write(dir.path(), "04-data/db/docker-compose.yml", DB);
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_no_host_can_take_stays_pending_with_a_reason_and_the_rest_deploys() {
    let dir = catalog();
    let p = platform("pending", dir.path());
    let host = p.opts.host.clone();

    let nats = async_nats::connect(p.nats.url()).await.unwrap();
    let events = infra_test_support::events::collect(&nats, "infra.events.>".into()).await;

    // Plan says so before anything happens.
    let plan = p.call("Plan", r#"{"selection":{"services":["web","lonely"]}}"#);
    let warnings = plan[0]["warnings"].to_string();
    assert!(
        warnings.contains("lonely: 1 replica would stay pending") && warnings.contains("node.labels.zone == mars"),
        "{warnings}"
    );

    let progress = p.call(
        "Deploy",
        r#"{"selection":{"services":["web","lonely"]},"timeoutSeconds":60}"#,
    );
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 1, "{progress:#?}");
    assert_eq!(done["failed"], 1, "{progress:#?}");
    let failed = progress
        .iter()
        .find(|m| m["service"] == "lonely" && m["phase"] == "PHASE_FAILED")
        .unwrap_or_else(|| panic!("lonely failed: {progress:#?}"));
    let msg = failed["message"].as_str().unwrap();
    assert!(
        msg.contains("pending: no host satisfies the placement")
            && msg.contains(&format!("{host} has no label zone (node.labels.zone == mars)")),
        "{msg}"
    );

    // Nothing of it exists; the other service runs.
    assert!(containers(&p, "lonely").is_empty());
    assert_eq!(containers(&p, "web").len(), 1);

    // Status shows it pending, with the reason.
    let status = p.call("GetStatus", "{}");
    let rows = status[0]["services"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["service"] == "lonely")
        .unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(row["pendingReplicas"], 1, "{row}");
    assert!(
        row["pendingReason"]
            .as_str()
            .unwrap()
            .contains("node.labels.zone == mars"),
        "{row}"
    );
    assert!(row.get("host").is_none(), "a pending row has no host: {row}");

    // And the bus carried it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let seen = events.lock().unwrap().iter().any(|e| {
            e.kind() == EventKind::ServicePending && e.service == "lonely" && e.reason.contains("zone == mars")
        });
        if seen {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no service_pending event");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Removing it clears the pending record.
    p.call("Remove", r#"{"selection":{"services":["lonely"]}}"#);
    let status = p.call("GetStatus", "{}");
    assert!(!status[0].to_string().contains("lonely"), "{status:?}");
}

#[test]
fn scaling_adds_replicas_gated_on_health_removes_the_surplus_and_a_deploy_resets_it() {
    let dir = catalog();
    let p = platform("scale", dir.path());
    let progress = p.call("Deploy", r#"{"selection":{"services":["web"]},"timeoutSeconds":60}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    assert_eq!(containers(&p, "web").len(), 1);

    // Up to three: the call returns once all three are healthy.
    let progress = p.call("Scale", r#"{"service":"web","replicas":3,"timeoutSeconds":60}"#);
    let done = progress.last().unwrap();
    assert_eq!(done["phase"], "PHASE_DONE", "{progress:#?}");
    assert_eq!(done["ready"], 1, "{progress:#?}");
    assert_eq!(done["message"], "scaled 1 -> 3");
    let web = containers(&p, "web");
    assert_eq!(web.len(), 3, "{web:?}");
    // Every replica serves by the time the call returns (the operator ran
    // the health test itself; Docker's own status may lag an interval).
    for (name, _) in &web {
        let ok = Command::new("docker")
            .args(["exec", name, "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"])
            .status()
            .unwrap();
        assert!(ok.success(), "{name} does not serve");
    }
    let status = p.call("GetStatus", r#"{}"#);
    let row = &status[0]["services"][0];
    assert_eq!(
        (row["healthyReplicas"].as_u64(), row["desiredReplicas"].as_u64()),
        (Some(3), Some(3)),
        "{row}"
    );

    // Down to one: the first replica is the one that stays.
    let first = web[0].0.clone();
    p.call("Scale", r#"{"service":"web","replicas":1}"#);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while containers(&p, "web").len() != 1 {
        assert!(std::time::Instant::now() < deadline, "{:?}", containers(&p, "web"));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(containers(&p, "web")[0].0, first);

    // A deploy puts the Compose count back, as `docker stack deploy` does;
    // the plan says so first.
    p.call("Scale", r#"{"service":"web","replicas":2,"timeoutSeconds":60}"#);
    let plan = p.call("Plan", r#"{"selection":{"services":["web"]}}"#);
    assert!(
        plan[0]["steps"][0]["changes"].to_string().contains("deploy.replicas"),
        "{plan:?}"
    );
    p.call("Deploy", r#"{"selection":{"services":["web"]},"timeoutSeconds":60}"#);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while containers(&p, "web").len() != 1 {
        assert!(std::time::Instant::now() < deadline, "{:?}", containers(&p, "web"));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn scaling_is_refused_with_a_reason_for_stateful_global_and_undeployed_services() {
    let dir = catalog();
    let p = platform("scalerefused", dir.path());
    let scale = |body: &str| {
        let out = p.grpcurl(&["infra.coordinator.v1.CoordinatorService/Scale"], Some(body));
        assert!(!out.status.success(), "{body} should be refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = scale(r#"{"service":"web","replicas":2}"#);
    assert!(e.contains("FailedPrecondition") && e.contains("not deployed"), "{e}");

    let progress = p.call(
        "Deploy",
        r#"{"selection":{"services":["db","everywhere"]},"timeoutSeconds":60}"#,
    );
    assert_eq!(progress.last().unwrap()["ready"], 2, "{progress:#?}");
    let e = scale(r#"{"service":"db","replicas":2}"#);
    assert!(
        e.contains("FailedPrecondition")
            && e.contains("named volumes")
            && e.contains(&format!("{}_db-data", p.opts.project))
            && e.contains("data operator does not know how to scale it"),
        "{e}"
    );
    let e = scale(r#"{"service":"everywhere","replicas":2}"#);
    assert!(e.contains("global"), "{e}");
    // Nothing changed.
    assert_eq!(containers(&p, "db").len(), 1);
    assert_eq!(containers(&p, "everywhere").len(), 1);
}
