//! GPUs through the real coordinator, ai operator, NATS, Docker engine and
//! grpcurl, on one host. No machine here has a GPU or NVIDIA's library:
//!
//! - as it is, the ai operator reports `gpus=0` (NVML cannot load), so a
//!   service that reserves a GPU stays pending with a reason naming GPUs
//!   while a service beside it deploys;
//! - a host that stands in for a GPU host is an operator started with the
//!   configured label `gpus=1` (`INFRA_LABELS__GPUS=1`; labels win over
//!   facts). The service is placed there and its container is created with
//!   the device request; Docker then refuses to start it (no NVIDIA
//!   runtime: `could not select device driver ... with capabilities:
//!   [[gpu]]`), and status says so.
//!
//! Image: `infra-local/debian:bookworm` from `e2e/images/build.sh`.

use std::process::Command;
use std::time::{Duration, Instant};

use infra_e2e::{Options, Platform, write};

const AI: &str = r#"services:
  trainer:
    image: infra-local/debian:bookworm
    command: ["sleep", "infinity"]
    init: true
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              count: 1
              capabilities: [gpu]
  notebook:
    image: infra-local/debian:bookworm
    command: ["sleep", "infinity"]
    init: true
"#;

fn platform(name: &str, operator_env: Vec<(String, String)>) -> (tempfile::TempDir, Platform) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "08-ai/lab/docker-compose.yml", AI);
    let mut o = Options::over(name, dir.path(), &["ai"]);
    o.operator_env = operator_env;
    let p = Platform::start(o);
    (dir, p)
}

/// The ai operator's heartbeat labels of this platform's host, once it has
/// `key`.
fn host_label(p: &Platform, key: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let hosts = p.call("ListHosts", "{}");
        let label = hosts[0]["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["host"] == p.opts.host.as_str())
            .and_then(|h| h["labels"][key].as_str().map(str::to_owned));
        if let Some(v) = label {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no label {key}: {hosts:#?}\n{}",
            p.all_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn container_ids(p: &Platform, service: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.infra.project={}", p.opts.project),
            "--filter",
            &format!("label=io.infra.service={service}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn on_a_host_without_gpus_a_gpu_service_stays_pending_naming_gpus_and_the_rest_runs() {
    let (_dir, p) = platform("gpuless", Vec::new());
    assert_eq!(host_label(&p, "gpus"), "0", "the ai operator reports no GPUs");
    assert!(
        p.log("ai-operator").contains("no NVIDIA library: 0 GPUs"),
        "{}",
        p.log("ai-operator")
    );

    let progress = p.call(
        "Deploy",
        r#"{"selection":{"services":["trainer","notebook"]},"timeoutSeconds":60}"#,
    );
    let done = progress.last().unwrap();
    assert_eq!(
        (done["ready"].as_u64(), done["failed"].as_u64()),
        (Some(1), Some(1)),
        "{progress:#?}"
    );
    let failed = progress
        .iter()
        .find(|m| m["service"] == "trainer" && m["phase"] == "PHASE_FAILED")
        .unwrap_or_else(|| panic!("trainer failed: {progress:#?}"));
    let msg = failed["message"].as_str().unwrap();
    assert!(msg.contains("pending") && msg.contains("GPU"), "{msg}");

    assert!(
        container_ids(&p, "trainer").is_empty(),
        "nothing of the GPU service exists"
    );
    assert_eq!(container_ids(&p, "notebook").len(), 1);

    let status = p.call("GetStatus", "{}");
    let rows = status[0]["services"].as_array().unwrap();
    let trainer = rows.iter().find(|r| r["service"] == "trainer").unwrap();
    assert_eq!(trainer["pendingReplicas"], 1, "{trainer}");
    assert!(trainer["pendingReason"].as_str().unwrap().contains("GPU"), "{trainer}");
    let notebook = rows.iter().find(|r| r["service"] == "notebook").unwrap();
    assert_eq!(notebook["runningReplicas"], 1, "{notebook}");
}

#[test]
fn a_host_labelled_with_a_gpu_gets_the_service_created_with_its_device_request_and_the_failure_to_start_is_reported() {
    // A bare number, as a person writes it: labels take it as text.
    let (_dir, p) = platform("gpulabel", vec![("INFRA_LABELS__GPUS".into(), "1".into())]);
    assert_eq!(host_label(&p, "gpus"), "1", "the configured label wins over the fact");

    let progress = p.call(
        "Deploy",
        r#"{"selection":{"services":["trainer"]},"timeoutSeconds":30}"#,
    );
    let done = progress.last().unwrap();
    assert_eq!(done["failed"], 1, "no NVIDIA runtime here: {progress:#?}");
    assert!(
        !progress
            .iter()
            .any(|m| m["message"].as_str().unwrap_or("").contains("pending")),
        "placed, not pending: {progress:#?}"
    );

    let ids = container_ids(&p, "trainer");
    assert_eq!(ids.len(), 1, "created on the GPU host");
    let out = Command::new("docker")
        .args(["inspect", "--format", "{{json .HostConfig.DeviceRequests}}", &ids[0]])
        .output()
        .unwrap();
    let reqs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reqs[0]["Driver"], "nvidia", "{reqs}");
    assert_eq!(reqs[0]["Count"], 1, "{reqs}");
    assert_eq!(reqs[0]["Capabilities"], serde_json::json!([["gpu"]]), "{reqs}");

    // Status names Docker's refusal.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = p.call("GetStatus", r#"{"selection":{"services":["trainer"]}}"#);
        let row = status[0]["services"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["service"] == "trainer").cloned())
            .unwrap_or_default();
        let msg = row["message"].as_str().unwrap_or_default().to_owned();
        if msg.contains("could not select device driver") {
            // The operator keeps retrying (with backoff); nothing is healthy.
            assert_eq!(row["healthyReplicas"].as_u64().unwrap_or(0), 0, "{row}");
            assert_ne!(row["health"], "HEALTH_HEALTHY", "{row}");
            break;
        }
        assert!(Instant::now() < deadline, "status does not name the failure: {row}");
        std::thread::sleep(Duration::from_millis(300));
    }
}
