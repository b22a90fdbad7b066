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
    write(dir.path(), "04-data/db/init/01.sql", "CREATE TABLE t (id int);\n");
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
    // The catalog folder travels as a config mount, not a host path.
    assert_eq!(spec.mounts.len(), 1);
    assert_eq!(spec.configs[0].source, "04-data/db/init");
    assert!(spec.configs[0].directory && spec.configs[0].read_only);
    assert_eq!(spec.configs[0].files[0].path, "01.sql");
    assert_eq!(spec.healthcheck.as_ref().unwrap().test, vec!["CMD-SHELL", "pg_isready"]);
    assert_eq!(spec.healthcheck.as_ref().unwrap().interval.unwrap().seconds, 2);
    let res = spec.resources.unwrap();
    assert_eq!(
        (res.nano_cpus_limit, res.memory_limit),
        (500_000_000, 256 * 1024 * 1024)
    );
    assert_eq!(spec.secrets[0].name, "pg_password");
    let pw = secrets.iter().find(|s| s.key == "pg_password").unwrap();
    assert_eq!(pw.content.as_ref(), b"s3cret\n");
    // The spec carries a digest of the secret, never the value.
    assert!(!format!("{spec:?}").contains("s3cret"));
    assert!(!format!("{pw:?}").contains("s3cret"));

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

#[test]
fn catalog_files_travel_by_content_and_host_paths_stay_binds() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let stack = "04-data/lb/docker-compose.yml";
    let yml = r#"services:
  lb:
    image: haproxy:3
    volumes:
      - ./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro
      - ./scripts:/scripts
      - /var/run/docker.sock:/var/run/docker.sock:ro
    configs:
      - source: banner
        target: /etc/banner
        uid: "101"
        mode: 0440
      - motd
configs:
  banner:
    content: "hello ${WHO}"
  motd:
    file: ./motd.txt
"#;
    write(dir.path(), stack, yml);
    write(dir.path(), "04-data/lb/haproxy.cfg", "global\n  maxconn 100\n");
    write(dir.path(), "04-data/lb/motd.txt", "welcome\n");
    write(dir.path(), "04-data/lb/scripts/start.sh", "#!/bin/sh\nexec true\n");
    write(dir.path(), "04-data/lb/scripts/lib/common.sh", "X=1\n");
    let start = dir.path().join("04-data/lb/scripts/start.sh");
    std::fs::set_permissions(&start, std::fs::Permissions::from_mode(0o700)).unwrap();
    let env = BTreeMap::from([("WHO".to_owned(), "world".to_owned())]);
    let opts = LoadOptions {
        env: env.clone(),
        ..Default::default()
    };
    let load = || load_catalog(dir.path(), &opts).unwrap();
    let cat = load();
    let (spec, contents) = to_spec(&cat, "p", &cat.services["lb"], &env).unwrap();
    // Only the host path stays a bind mount.
    assert_eq!(spec.mounts.len(), 1);
    assert_eq!(spec.mounts[0].source, "/var/run/docker.sock");
    let by_target = |t: &str| spec.configs.iter().find(|c| c.target == t).unwrap();
    let cfg = by_target("/usr/local/etc/haproxy/haproxy.cfg");
    assert!(!cfg.directory && cfg.read_only && cfg.files.len() == 1);
    assert_eq!(cfg.source, "04-data/lb/haproxy.cfg");
    let scripts = by_target("/scripts");
    let paths: Vec<&str> = scripts.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["lib/common.sh", "start.sh"]);
    // Execute bits kept, readable by all.
    assert_eq!(scripts.files[1].mode, 0o744);
    let banner = by_target("/etc/banner");
    assert_eq!((banner.uid, banner.files[0].mode), (Some(101), 0o440));
    assert_eq!(by_target("/motd").files[0].mode, 0o444);
    // Every file's content is there once, under its content key.
    let banner_content = contents.iter().find(|c| c.key == banner.files[0].key).unwrap();
    assert_eq!(banner_content.content.as_ref(), b"hello world");
    assert_eq!(contents.len(), 5);
    assert!(contents.iter().all(|c| c.key.starts_with("config_")));

    // A changed file changes the spec hash; an unchanged catalog does not.
    let hash = infra_proto::spec::spec_hash(&spec);
    let again = to_spec(&load(), "p", &cat.services["lb"], &env).unwrap().0;
    assert_eq!(infra_proto::spec::spec_hash(&again), hash);
    write(dir.path(), "04-data/lb/scripts/lib/common.sh", "X=2\n");
    let cat = load();
    let changed = to_spec(&cat, "p", &cat.services["lb"], &env).unwrap().0;
    assert_ne!(infra_proto::spec::spec_hash(&changed), hash);

    // A catalog path that is not there is named, with its line.
    std::fs::remove_file(dir.path().join("04-data/lb/haproxy.cfg")).unwrap();
    let cat = load();
    let e = to_spec(&cat, "p", &cat.services["lb"], &env).unwrap_err().to_string();
    assert!(
        e.contains("docker-compose.yml:5:") && e.contains("volumes[0]") && e.contains("04-data/lb/haproxy.cfg"),
        "{e}"
    );
}

#[test]
fn a_link_out_of_the_catalog_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "passwd", "root:x:0:0\n");
    write(
        dir.path(),
        "04-data/x/docker-compose.yml",
        "services:\n  x:\n    image: x:1\n    volumes: [./leak:/leak:ro]\n",
    );
    std::os::unix::fs::symlink(outside.path().join("passwd"), dir.path().join("04-data/x/leak")).unwrap();
    let cat = load_catalog(dir.path(), &LoadOptions::default()).unwrap();
    let e = to_spec(&cat, "p", &cat.services["x"], &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the catalog"), "{e}");
}

#[test]
fn pull_policies_and_registry_credentials_from_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "secrets/reg", "hunter2\n");
    write(
        dir.path(),
        "09-tooling/app/docker-compose.yml",
        r#"x-registries:
  reg.internal:5000:
    username: deploy
    password_secret: reg_password
secrets:
  reg_password:
    file: ../../secrets/reg
services:
  app:
    image: reg.internal:5000/team/app:1
    pull_policy: always
  nightly:
    image: reg.internal:5000/team/app:nightly
    pull_policy: every_12h
  daily:
    image: hub/app:1
    pull_policy: daily
  plain:
    image: hub/app:1
  bad:
    image: hub/app:1
    pull_policy: sometimes
  build:
    image: hub/app:1
    pull_policy: build
"#,
    );
    let cat = load_catalog(dir.path(), &LoadOptions::default()).unwrap();
    let env = BTreeMap::new();
    let (app, contents) = to_spec(&cat, "p", &cat.services["app"], &env).unwrap();
    assert_eq!(app.pull_policy, "always");
    assert_eq!(app.registry_auth_key, infra_proto::image::auth_key("reg.internal:5000"));
    let login = contents
        .iter()
        .find(|c| c.key == app.registry_auth_key)
        .expect("credentials");
    let login = <infra_proto::bus::v1::RegistryLogin as prost::Message>::decode(login.content.clone()).unwrap();
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("deploy", "hunter2")
    );
    // The credentials are not in the spec, nor in what other hosts read.
    let encoded = prost::Message::encode_to_vec(&app);
    assert!(!encoded.windows(7).any(|w| w == b"hunter2"));
    assert!(!format!("{contents:?}").contains("hunter2"));
    let nightly = to_spec(&cat, "p", &cat.services["nightly"], &env).unwrap().0;
    assert_eq!(nightly.pull_policy, "every 43200");
    let daily = to_spec(&cat, "p", &cat.services["daily"], &env).unwrap().0;
    assert_eq!(
        (daily.pull_policy.as_str(), daily.registry_auth_key.as_str()),
        ("every 86400", "")
    );
    assert_eq!(
        to_spec(&cat, "p", &cat.services["plain"], &env).unwrap().0.pull_policy,
        ""
    );
    assert!(unsupported_keys(&cat.services["app"]).is_empty());
    let e = to_spec(&cat, "p", &cat.services["bad"], &env).unwrap_err().to_string();
    assert!(
        e.contains("service \"bad\": pull_policy: \"sometimes\" is not a pull policy"),
        "{e}"
    );
    let e = to_spec(&cat, "p", &cat.services["build"], &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pull_policy: build"), "{e}");
    // Changing the policy or adding credentials recreates nothing.
    let mut other = app.clone();
    other.pull_policy = "never".into();
    other.registry_auth_key.clear();
    assert_eq!(infra_proto::spec::spec_hash(&app), infra_proto::spec::spec_hash(&other));
    assert!(!infra_proto::spec::same_desired(&app, &other));
    other.image_digest = "sha256:00".into();
    assert_ne!(infra_proto::spec::spec_hash(&app), infra_proto::spec::spec_hash(&other));
}

#[test]
fn a_registry_block_that_names_no_declared_secret_is_refused_with_where() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "09-tooling/app/docker-compose.yml",
        "x-registries:\n  reg:5000:\n    username: u\n    password_secret: nope\nservices:\n  app:\n    image: reg:5000/app:1\n",
    );
    let cat = load_catalog(dir.path(), &LoadOptions::default()).unwrap();
    let e = to_spec(&cat, "p", &cat.services["app"], &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "service \"app\": image: x-registries.\"reg:5000\".password_secret: secret \"nope\" is not declared"
        ) && e.contains("secrets/nope"),
        "{e}"
    );
    // The catalog's secrets folder holds it: taken from there.
    write(dir.path(), "secrets/nope", "pw\n");
    let (spec, contents) = to_spec(&cat, "p", &cat.services["app"], &BTreeMap::new()).unwrap();
    assert!(contents.iter().any(|c| c.key == spec.registry_auth_key));
}
