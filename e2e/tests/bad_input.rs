//! Bad input through the real coordinator and grpcurl: each gives a clear
//! error naming the file and service, and nothing is half-applied.
//!
//! Each test writes a small catalog of its own (real images built by
//! `e2e/images/build.sh`: `infra-local/debian:bookworm`, `infra-local/nginx:1`).

use std::path::Path;
use std::process::Command;

use infra_e2e::{Options, Platform, write};

/// A platform with only the data and gateway operators, over `catalog`.
fn platform(name: &str, catalog: &Path) -> Platform {
    let o = Options::over(name, catalog, &["data", "gateway"]);
    Platform::start(o)
}

const GOOD: &str = r#"services:
  db:
    image: infra-local/debian:bookworm
    command: ["sleep", "infinity"]
    init: true
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
"#;

/// Plan and Deploy both fail with INVALID_ARGUMENT; the message holds every
/// `needle`; nothing was written to the bus or to Docker.
fn assert_rejected(p: &Platform, needles: &[&str]) {
    for method in ["Plan", "Deploy"] {
        let out = p.grpcurl(
            &[&format!("infra.coordinator.v1.CoordinatorService/{method}")],
            Some("{}"),
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{method} should fail");
        assert!(err.contains("InvalidArgument"), "{method}: {err}");
        for n in needles {
            assert!(err.contains(n), "{method}: error lacks {n:?}: {err}");
        }
    }
    let status = p.call("GetStatus", "{}");
    assert!(status[0].get("services").is_none(), "nothing applied: {status:?}");
    let ps = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.infra.project={}", p.opts.project),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ps.stdout).trim().is_empty(),
        "no container created"
    );
}

#[test]
fn malformed_yaml_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "04-data/db/docker-compose.yml", GOOD);
    write(
        dir.path(),
        "01-gateway/web/docker-compose.yml",
        "services:\n  web:\n    image: infra-local/nginx:1\n  - stray\n",
    );
    let p = platform("yaml", dir.path());
    assert_rejected(&p, &["01-gateway/web/docker-compose.yml:4:"]);
}

#[test]
fn an_unknown_depends_on_target_names_the_service_and_the_target() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "04-data/db/docker-compose.yml", GOOD);
    write(
        dir.path(),
        "01-gateway/web/docker-compose.yml",
        "services:\n  web:\n    image: infra-local/nginx:1\n    depends_on:\n      dbb:\n        condition: service_healthy\n",
    );
    let p = platform("unknowndep", dir.path());
    assert_rejected(&p, &["01-gateway/web/docker-compose.yml", "\"web\"", "dbb"]);
}

#[test]
fn a_dependency_cycle_is_rejected_with_the_whole_path() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/db/docker-compose.yml",
        "services:\n  a:\n    image: infra-local/debian:bookworm\n    depends_on: [b]\n  b:\n    image: infra-local/debian:bookworm\n    depends_on: [c]\n",
    );
    write(
        dir.path(),
        "01-gateway/web/docker-compose.yml",
        "services:\n  c:\n    image: infra-local/nginx:1\n    depends_on: [a]\n",
    );
    let p = platform("cycle", dir.path());
    assert_rejected(&p, &["cycle", "a -> b -> c -> a"]);
}

#[test]
fn a_backup_group_whose_members_disagree_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let member = |name: &str, keep: u32| {
        format!(
            "  {name}:\n    image: infra-local/debian:bookworm\n    x-backup:\n      group: pair\n      dump: \"cat /etc/hostname\"\n      keep: {keep}\n"
        )
    };
    write(
        dir.path(),
        "04-data/db/docker-compose.yml",
        &format!(
            "x-backup-targets:\n  store:\n    endpoint: http://store:9000\n    bucket: b\n    access_key: k\n    secret_key_secret: s\nservices:\n{}",
            member("db-a", 7)
        ),
    );
    write(
        dir.path(),
        "01-gateway/web/docker-compose.yml",
        &format!("services:\n{}", member("db-b", 3)),
    );
    let p = platform("backupgroup", dir.path());
    assert_rejected(
        &p,
        &[
            "service \"db-b\" (",
            "01-gateway/web/docker-compose.yml:2)",
            "04-data/db/docker-compose.yml:8)",
            "group \"pair\"",
        ],
    );
}

#[test]
fn an_unset_variable_without_default_names_the_variable_file_and_service() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "04-data/db/docker-compose.yml", GOOD);
    write(
        dir.path(),
        "01-gateway/web/docker-compose.yml",
        "services:\n  web:\n    image: infra-local/nginx:1\n    environment:\n      UPSTREAM: ${E2E_SURELY_UNSET_VARIABLE}\n",
    );
    let p = platform("interp", dir.path());
    assert_rejected(
        &p,
        &[
            "E2E_SURELY_UNSET_VARIABLE",
            "01-gateway/web/docker-compose.yml:5",
            "\"web\"",
        ],
    );
}

#[test]
fn a_missing_image_fails_that_service_and_what_needs_it_while_the_rest_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "04-data/db/docker-compose.yml", GOOD);
    write(
        dir.path(),
        "01-gateway/web/docker-compose.yml",
        r#"services:
  web:
    image: infra-local/nginx:1
    depends_on:
      db: {condition: service_healthy}
  broken:
    image: infra-local/does-not-exist:1
  needs-broken:
    image: infra-local/nginx:1
    depends_on:
      broken: {condition: service_started}
"#,
    );
    let p = platform("noimage", dir.path());
    // Watch events through grpcurl while deploying (a server stream).
    let watcher = Command::new("grpcurl")
        .args([
            "-plaintext",
            "-max-time",
            "40",
            "-d",
            "{}",
            &p.grpc,
            "infra.coordinator.v1.CoordinatorService/WatchEvents",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("grpcurl");
    let mut watcher = watcher;
    let printed = follow_stdout(&mut watcher);
    watching(&p, &printed);
    let progress = p.call("Deploy", r#"{"timeoutSeconds":60}"#);
    let phase = |svc: &str| -> Vec<String> {
        progress
            .iter()
            .filter(|m| m["service"] == svc)
            .filter_map(|m| m["phase"].as_str().map(String::from))
            .collect()
    };
    let failed = progress
        .iter()
        .find(|m| m["service"] == "broken" && m["phase"] == "PHASE_FAILED")
        .expect("broken failed");
    let msg = failed["message"].as_str().unwrap();
    assert!(
        msg.contains("infra-local/does-not-exist:1") && msg.contains("not on this host and the pull failed"),
        "{msg}"
    );
    assert_eq!(failed["blocks"][0], "broken -> needs-broken");
    assert!(phase("needs-broken").contains(&"PHASE_BLOCKED".to_string()));
    assert!(phase("web").contains(&"PHASE_READY".to_string()), "{progress:#?}");
    assert!(phase("db").contains(&"PHASE_READY".to_string()));
    let done = progress.iter().find(|m| m["phase"] == "PHASE_DONE").unwrap();
    assert_eq!(
        (
            done["ready"].as_u64(),
            done["failed"].as_u64(),
            done["blocked"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    // Status says the same, with the reason.
    let status = p.call("GetStatus", "{}");
    let broken = status[0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "broken")
        .unwrap()
        .clone();
    assert_eq!(broken["health"], "HEALTH_FAILED");
    assert!(broken["message"].as_str().unwrap().contains("does-not-exist"));

    // The watch saw the operator's and the coordinator's events as they happened.
    let _ = Command::new("kill").arg("-INT").arg(watcher.id().to_string()).status();
    let _ = watcher.wait();
    let events = infra_e2e::parse_json_stream(&printed.lock().unwrap());
    let seen = |kind: &str, svc: &str| events.iter().any(|e| e["kind"] == kind && e["service"] == svc);
    assert!(seen("EVENT_KIND_RECONCILE_FAILED", "broken"), "{events:#?}");
    assert!(seen("EVENT_KIND_SERVICE_FAILED", "broken"));
    assert!(seen("EVENT_KIND_SERVICE_BLOCKED", "needs-broken"));
    assert!(seen("EVENT_KIND_HEALTHY", "db"));
}

/// What a child prints on stdout, gathered as it comes.
fn follow_stdout(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::Read;
    let printed: std::sync::Arc<std::sync::Mutex<String>> = std::sync::Arc::default();
    let (sink, mut out) = (printed.clone(), child.stdout.take().expect("piped stdout"));
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    printed
}

/// Returns once a `WatchEvents` stream printing into `printed` is live: a
/// marker event published on the bus (again, until seen) comes out of it.
fn watching(p: &Platform, printed: &std::sync::Mutex<String>) {
    use prost::Message;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let nats = rt.block_on(async_nats::connect(p.nats.url())).expect("NATS");
    let marker = infra_proto::bus::v1::Event {
        id: "watch-marker".into(),
        kind: infra_proto::bus::v1::EventKind::LeaderElected as i32,
        host: "marker".into(),
        tier: "marker".into(),
        reason: "the watch is live".into(),
        ..Default::default()
    };
    infra_test_support::eventually::poll(
        "the WatchEvents stream live",
        std::time::Duration::from_secs(15),
        std::time::Duration::from_millis(200),
        || {
            rt.block_on(nats.publish(
                "infra.events.marker.marker._.leader_elected",
                marker.encode_to_vec().into(),
            ))
            .ok();
            rt.block_on(nats.flush()).ok();
            printed.lock().unwrap().contains("watch-marker").then_some(())
        },
    );
}
