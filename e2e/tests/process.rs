//! The binaries as processes: bad configuration exits with code 64 and a
//! message naming the key; SIGTERM drains and exits cleanly, leaving the
//! containers running; each operator serves its own gRPC API with
//! reflection.

use std::process::Command;

use infra_e2e::{Options, Platform, bin_dir};

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(bin_dir("debug").join(bin))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e} (cargo build --workspace --bins)"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_64_naming_the_key() {
    let compose = infra_e2e::repo_root().join("compose");
    let compose = compose.to_str().unwrap();
    let (code, err) = run(
        "coordinator",
        &["--compose-dir", compose, "--grpc-listen", "not-an-address"],
        &[],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("grpc_listen") && err.contains("not-an-address"), "{err}");

    let (code, err) = run("data-operator", &["--host", "bad.host"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("host") && err.contains("bad.host"), "{err}");

    let (code, err) = run("gateway-operator", &[], &[("INFRA_RESYNC_SECS", "soon")]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("RESYNC_SECS") && err.contains("soon"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("op.toml");
    std::fs::write(&cfg, "host = \"h1\"\nresync_sec = 5\n").unwrap();
    let (code, err) = run("auth-operator", &["--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("resync_sec") && err.contains("op.toml"), "{err}");

    // A public `addr` would publish data ports to the internet: refused
    // unless allowed in so many words; allowed, the operator goes on (to
    // --print-config here).
    let (code, err) = run("data-operator", &[], &[("INFRA_LABELS__ADDR", "203.0.113.7")]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("labels.addr: 203.0.113.7 is not a private address"),
        "{err}"
    );
    let out = Command::new(bin_dir("debug").join("data-operator"))
        .args(["--print-config"])
        .env("INFRA_LABELS__ADDR", "203.0.113.7")
        .env("INFRA_ALLOW_PUBLIC_ADDR", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("203.0.113.7"));

    let (code, err) = run("coordinator", &["--config", "/nonexistent/coordinator.toml"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("/nonexistent/coordinator.toml"), "{err}");
}

#[test]
fn the_effective_configuration_is_printed_with_credentials_redacted() {
    let out = Command::new(bin_dir("debug").join("data-operator"))
        .args(["--print-config", "--host", "h1"])
        .env("INFRA_NATS__TOKEN", "very-secret-token")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("\"host\":\"h1\"") && text.contains("<redacted>"),
        "{text}"
    );
    assert!(!text.contains("very-secret-token"), "{text}");
}

#[test]
fn operators_serve_grpc_with_reflection_and_sigterm_drains_leaving_containers_running() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("04-data/db/docker-compose.yml");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(
        &f,
        "services:\n  keep:\n    image: infra-local/debian:bookworm\n    command: [sleep, infinity]\n    init: true\n    restart: unless-stopped\n",
    )
    .unwrap();
    let o = Options::over("proc", dir.path(), &["data"]);
    let mut p = Platform::start(o);
    let done = p.call("Deploy", r#"{"timeoutSeconds":60}"#);
    assert!(
        done.iter().any(|m| m["phase"] == "PHASE_DONE" && m["ready"] == 1),
        "{done:?}"
    );

    // The operator's own API, found through the coordinator's host list.
    let hosts = p.call("ListHosts", "{}");
    let addr = hosts[0]["hosts"][0]["operators"][0]["grpcAddr"]
        .as_str()
        .unwrap()
        .to_owned();
    let grpcurl = |args: &[&str]| {
        let out = Command::new("grpcurl").arg("-plaintext").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(grpcurl(&[&addr, "list"]).contains("infra.operator.v1.OperatorService"));
    let status = grpcurl(&[&addr, "infra.operator.v1.OperatorService/GetStatus"]);
    assert!(
        status.contains("\"tier\": \"data\"") && status.contains("\"service\": \"keep\""),
        "{status}"
    );
    assert!(grpcurl(&[&addr, "grpc.health.v1.Health/Check"]).contains("SERVING"));

    // SIGTERM: a clean exit within the grace; the container runs on.
    let container = format!("{}-keep-1", p.opts.project);
    let st = p.stop("data-operator").expect("data-operator was running");
    assert!(st.success(), "exit status {st:?}\n{}", p.log("data-operator"));
    assert!(p.log("data-operator").contains("operator stopped"));
    let running = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", &container])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&running.stdout).trim(), "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_releases_containers_an_interrupted_deploy_left_created_and_held() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("04-data/db/docker-compose.yml");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(
        &f,
        "services:\n  held:\n    image: infra-local/debian:bookworm\n    command: [sleep, infinity]\n    init: true\n    restart: unless-stopped\n",
    )
    .unwrap();
    let o = Options::over("held", dir.path(), &["data"]);
    let host = o.host.clone();
    let p = tokio::task::spawn_blocking(move || Platform::start(o)).await.unwrap();
    let p = std::sync::Arc::new(p);
    let call = |method: &'static str, body: &'static str| {
        let p = p.clone();
        tokio::task::spawn_blocking(move || p.call(method, body))
    };
    call("Deploy", r#"{"timeoutSeconds":60}"#).await.unwrap();
    let container = format!("{}-held-1", p.opts.project);

    // What a coordinator that died mid-deploy leaves: desired state held,
    // and a container created but never started.
    let bus = infra_bus::Bus::connect(&infra_bus::BusConfig {
        url: p.nats.url(),
        name: "t".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut d = bus
        .get_desired(&host, "data", "held")
        .await
        .unwrap()
        .expect("desired state");
    d.hold = true;
    bus.put_desired(&d).await.unwrap();
    Command::new("docker").args(["rm", "-f", &container]).output().unwrap();
    let state = || {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Status}}", &container])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while state() != "created" {
        assert!(
            std::time::Instant::now() < deadline,
            "the operator did not re-create the held container"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Plan says it will be started; a deploy starts it.
    let plan = call("Plan", "{}").await.unwrap();
    assert_eq!(plan[0]["steps"][0]["action"], "ACTION_UPDATE", "{plan:?}");
    let done = call("Deploy", r#"{"timeoutSeconds":60}"#).await.unwrap();
    assert!(
        done.iter().any(|m| m["phase"] == "PHASE_DONE" && m["ready"] == 1),
        "{done:?}"
    );
    assert_eq!(state(), "running");
}
