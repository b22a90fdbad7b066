//! Unit tests of the parent module.

use std::path::Path;

use infra_compose::{LoadOptions, load_catalog};

use super::*;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn a_service_becomes_a_spec_with_project_names_secrets_and_cross_tier_dependencies() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "secrets/pw", "s3cret\n");
    write(
        dir.path(),
        "04-data/db/docker-compose.yml",
        r#"services:
  mng-pg:
    image: postgres:17
    restart: unless-stopped
    volumes: [pgdata:/var/lib/postgresql/data, ./init:/docker-entrypoint-initdb.d:ro]
    networks: [infra_net]
    secrets: [pg_password]
    healthcheck:
      test: ["CMD-SHELL", "pg_isready"]
      interval: 2s
      retries: 5
    deploy:
      resources:
        limits: {cpus: "0.5", memory: 256M}
volumes:
  pgdata: {}
networks:
  infra_net: {}
secrets:
  pg_password:
    file: ../../secrets/pw
"#,
    );
    write(
        dir.path(),
        "02-auth/kc/docker-compose.yml",
        "services:\n  keycloak:\n    image: kc:1\n    depends_on:\n      mng-pg: {condition: service_healthy}\n    ulimits: {nofile: 1024}\n",
    );
    let cat = load_catalog(dir.path(), &LoadOptions::default()).unwrap();
    let (spec, secrets) = to_spec(&cat, "proj", &cat.services["mng-pg"], &BTreeMap::new()).unwrap();
    assert_eq!(spec.tier, "data");
    assert_eq!(spec.project, "proj");
    assert_eq!(spec.restart, "unless-stopped");
    assert_eq!(spec.networks[0].name, "proj_infra_net");
    assert_eq!(spec.mounts[0].source, "proj_pgdata");
    assert_eq!(spec.mounts[1].kind(), pb::MountKind::Bind);
    assert!(spec.mounts[1].source.starts_with('/') && spec.mounts[1].read_only);
    assert_eq!(spec.healthcheck.as_ref().unwrap().test, vec!["CMD-SHELL", "pg_isready"]);
    assert_eq!(spec.healthcheck.as_ref().unwrap().interval.unwrap().seconds, 2);
    let res = spec.resources.unwrap();
    assert_eq!(
        (res.nano_cpus_limit, res.memory_limit),
        (500_000_000, 256 * 1024 * 1024)
    );
    assert_eq!(spec.secrets[0].name, "pg_password");
    assert_eq!(secrets[0].content.as_ref(), b"s3cret\n");
    // The spec carries a digest of the secret, never the value.
    assert!(!format!("{spec:?}").contains("s3cret"));
    assert!(!format!("{:?}", secrets[0]).contains("s3cret"));

    let (kc, _) = to_spec(&cat, "proj", &cat.services["keycloak"], &BTreeMap::new()).unwrap();
    assert_eq!(kc.networks[0].name, "proj_default");
    assert_eq!(kc.depends_on[0].service, "mng-pg");
    assert_eq!(kc.depends_on[0].tier, "data");
    assert_eq!(kc.depends_on[0].condition(), pb::Condition::ServiceHealthy);
    assert_eq!(unsupported_keys(&cat.services["keycloak"]), vec!["ulimits"]);
}

#[test]
fn gpu_reservations_become_device_requests_and_ollama_models_a_label() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "08-ai/ollama/docker-compose.yml",
        r#"services:
  ollama:
    image: ollama/ollama:1
    x-ollama-models: [llama3.2:1b, " nomic-embed-text "]
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              count: all
              capabilities: [gpu]
  trainer:
    image: t:1
    gpus:
      - capabilities: [gpu]
        count: 2
"#,
    );
    let cat = load_catalog(dir.path(), &LoadOptions::default()).unwrap();
    let (spec, _) = to_spec(&cat, "p", &cat.services["ollama"], &BTreeMap::new()).unwrap();
    assert_eq!(
        spec.devices,
        vec![pb::DeviceRequestSpec {
            driver: "nvidia".into(),
            count: -1,
            capabilities: vec!["gpu".into()],
            ..Default::default()
        }]
    );
    assert_eq!(spec.labels[OLLAMA_MODELS_LABEL], "llama3.2:1b,nomic-embed-text");
    // Acted on now, so no longer listed as kept-but-ignored.
    assert!(unsupported_keys(&cat.services["ollama"]).is_empty());

    let (t, _) = to_spec(&cat, "p", &cat.services["trainer"], &BTreeMap::new()).unwrap();
    assert_eq!((t.devices[0].count, t.devices[0].driver.as_str()), (2, ""));
    assert!(!t.labels.contains_key(OLLAMA_MODELS_LABEL));
    assert!(unsupported_keys(&cat.services["trainer"]).is_empty());
}

#[test]
fn a_service_without_an_image_names_file_line_service_and_field() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "04-data/db/docker-compose.yml",
        "services:\n  x:\n    build: .\n",
    );
    let cat = load_catalog(dir.path(), &LoadOptions::default()).unwrap();
    let e = to_spec(&cat, "p", &cat.services["x"], &BTreeMap::new()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("04-data/db/docker-compose.yml:2") && msg.contains("\"x\"") && msg.contains("image"),
        "{msg}"
    );
}

#[test]
fn a_members_fact_reads_as_role_state_timeline_and_lag() {
    let r = member_status("host2", "patroni: replica streaming timeline 2 lag 0");
    assert_eq!(
        (r.host.as_str(), r.kind.as_str(), r.role.as_str(), r.state.as_str()),
        ("host2", "patroni", "replica", "streaming")
    );
    assert_eq!((r.timeline, r.lag_bytes), (2, Some(0)));
    assert_eq!(r.text, "replica streaming timeline 2 lag 0");
    let l = member_status("host1", "patroni: leader running timeline 3");
    assert_eq!(
        (l.role.as_str(), l.state.as_str(), l.timeline, l.lag_bytes),
        ("leader", "running", 3, None)
    );
    let s = member_status("host3", "patroni: replica stopped lag unknown");
    assert_eq!((s.role.as_str(), s.timeline, s.lag_bytes), ("replica", 0, None));
    let u = member_status("host3", "patroni: unreachable: connection refused");
    assert_eq!((u.role.as_str(), u.state.as_str()), ("", "unreachable"));
    assert_eq!(u.text, "unreachable: connection refused");
    let n = member_status("host3", "patroni: not a member of its cluster");
    assert_eq!((n.role.as_str(), n.state.as_str()), ("", "not a member of its cluster"));
    let v = member_status("host2", "valkey: replica streaming");
    assert_eq!(
        (v.kind.as_str(), v.role.as_str(), v.state.as_str(), v.lag_bytes),
        ("valkey", "replica", "streaming", None)
    );
}
