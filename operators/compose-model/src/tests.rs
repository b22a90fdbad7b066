//! Catalog-level tests: small YAML fixtures in temporary directories.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::*;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("compose")
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }
    fn load(&self) -> Result<Catalog, LoadError> {
        load_catalog(&self.root(), &LoadOptions::default())
    }
    fn load_with(&self, opts: &LoadOptions) -> Result<Catalog, LoadError> {
        load_catalog(&self.root(), opts)
    }
}

/// One file in `04-data/stack`, loaded.
fn one(text: &str) -> Result<Catalog, LoadError> {
    let f = Fixture::new();
    f.write("04-data/stack/docker-compose.yml", text);
    f.load()
}

fn ok(text: &str) -> Catalog {
    match one(text) {
        Ok(c) => c,
        Err(e) => panic!("load failed: {e}"),
    }
}

fn names(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const DB: &str = "\
services:
  mng-pg:
    image: postgres:15
    healthcheck:
      test: [\"CMD-SHELL\", \"pg_isready\"]
  mng-valkey:
    image: valkey/valkey:8
";

const AUTH: &str = "\
services:
  keycloak:
    image: quay.io/keycloak/keycloak:26
    depends_on:
      mng-pg: { condition: service_healthy }
    healthcheck:
      test: curl -f http://localhost:8080/health
  oauth2-proxy:
    image: oauth2-proxy
    depends_on: [keycloak, mng-valkey]
";

// ---------------------------------------------------------------- layout

#[test]
fn catalog_is_discovered_from_tier_folders() {
    let f = Fixture::new();
    f.write("04-data/mng-db/docker-compose.yml", DB);
    f.write("02-auth/keycloak/compose.yaml", AUTH);
    f.write(
        "03-security/vault/docker-compose.yaml",
        "services:\n  vault:\n    image: hashicorp/vault\n",
    );
    f.write("04-data/mng-db/init/readme.txt", "not a stack");
    f.write("04-data/no-compose/notes.md", "helper folder");
    f.write("README.md", "ignored");
    let cat = f.load().unwrap();
    assert_eq!(cat.services.len(), 5);
    assert_eq!(cat.services["vault"].tier, Tier::Auth);
    assert_eq!(cat.services["keycloak"].tier, Tier::Auth);
    assert_eq!(cat.services["mng-pg"].tier, Tier::Data);
    assert_eq!(cat.services["mng-pg"].line, 2);
    assert!(cat.services["keycloak"].file.ends_with("02-auth/keycloak/compose.yaml"));
    assert_eq!(cat.files.len(), 3);
    assert_eq!(cat.root, f.root());
}

#[test]
fn unknown_tier_folder_is_an_error_naming_the_folder() {
    let f = Fixture::new();
    f.write("11-misc/x/docker-compose.yml", "services: {}\n");
    let e = f.load().unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::UnknownTier);
    assert!(e.to_string().contains("\"11-misc\""), "{e}");
}

#[test]
fn folders_without_a_tier_number_such_as_secrets_are_not_tiers() {
    let f = Fixture::new();
    f.write("04-data/a/docker-compose.yml", "services:\n  mng-pg:\n    image: a\n");
    f.write("secrets/README.md", "not a stack\n");
    let cat = f.load().unwrap();
    assert_eq!(cat.services.len(), 1);
}

#[test]
fn duplicate_service_names_name_both_files() {
    let f = Fixture::new();
    f.write("04-data/a/docker-compose.yml", "services:\n  mng-pg:\n    image: a\n");
    f.write(
        "07-workflow/b/docker-compose.yml",
        "services:\n  x:\n    image: x\n  mng-pg:\n    image: b\n",
    );
    let e = f.load().unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::Duplicate);
    let msg = e.to_string();
    assert!(msg.contains("04-data/a/docker-compose.yml"), "{msg}");
    assert!(msg.contains("07-workflow/b/docker-compose.yml"), "{msg}");
    assert_eq!(e.line(), Some(4));
}

#[test]
fn depends_on_crosses_tiers_by_plain_service_name() {
    let f = Fixture::new();
    f.write("04-data/mng-db/docker-compose.yml", DB);
    f.write("02-auth/keycloak/docker-compose.yml", AUTH);
    let cat = f.load().unwrap();
    let kc = &cat.services["keycloak"];
    assert_eq!(
        kc.depends_on,
        vec![Dependency {
            service: "mng-pg".into(),
            condition: DependencyCondition::ServiceHealthy,
            required: true,
            restart: false,
        }]
    );
    let o2 = &cat.services["oauth2-proxy"];
    assert_eq!(o2.depends_on.len(), 2);
    assert_eq!(o2.depends_on[1].condition, DependencyCondition::ServiceStarted);
}

#[test]
fn unknown_dependency_is_rejected_at_load_with_its_line() {
    let e = one("services:\n  a:\n    image: x\n    depends_on:\n      mng-pgg:\n        condition: service_started\n  mng-pg:\n    image: p\n")
        .unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::UnknownDependency);
    assert_eq!(e.line(), Some(5));
    assert_eq!(e.service_name(), Some("a"));
    let msg = e.to_string();
    assert!(msg.contains("\"mng-pgg\""), "{msg}");
    assert!(msg.contains("did you mean \"mng-pg\""), "{msg}");
    assert!(msg.contains("docker-compose.yml:5:"), "{msg}");
}

#[test]
fn unknown_dependency_in_list_form_points_at_the_item() {
    let e =
        one("services:\n  a:\n    image: x\n    depends_on:\n      - b\n      - zz\n  b:\n    image: y\n").unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::UnknownDependency);
    assert_eq!(e.line(), Some(6));
}

// ---------------------------------------------------------------- errors

#[test]
fn yaml_syntax_error_reports_line_and_column() {
    let e = one("services:\n  a:\n    image: x\n   bad: [\n").unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::Yaml);
    assert!(e.line().is_some_and(|l| l >= 3), "{e}");
    assert!(e.column().is_some(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(":{}:{}: ", e.line().unwrap(), e.column().unwrap())),
        "{msg}"
    );
}

#[test]
fn type_error_reports_the_line_of_the_key() {
    let e = one("services:\n  mng-pg:\n    image: x\n    deploy:\n      replicas: x\n").unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::InvalidValue);
    assert_eq!(e.line(), Some(5));
    let msg = e.to_string();
    assert!(
        msg.ends_with(
            "docker-compose.yml:5: service \"mng-pg\": deploy.replicas: invalid type: string \"x\", expected an integer"
        ),
        "{msg}"
    );
}

#[test]
fn type_error_after_interpolation_is_located() {
    let f = Fixture::new();
    f.write(".env", "REPLICAS=many\n");
    f.write(
        "04-data/s/docker-compose.yml",
        "services:\n  a:\n    image: x\n    deploy:\n      replicas: ${REPLICAS}\n",
    );
    let e = f.load().unwrap_err();
    assert_eq!(e.line(), Some(5));
    assert!(e.to_string().contains("string \"many\""), "{e}");
}

#[test]
fn unset_variable_is_an_error_naming_variable_file_line_service_and_key() {
    let e = one("services:\n  mng-pg:\n    image: postgres\n    environment:\n      POSTGRES_DB: ${DB_NAME}\n")
        .unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::Interpolation);
    assert_eq!(e.line(), Some(5));
    assert_eq!(e.service_name(), Some("mng-pg"));
    assert_eq!(e.key_path(), Some("services.mng-pg.environment.POSTGRES_DB"));
    let msg = e.to_string();
    assert!(msg.contains("\"DB_NAME\""), "{msg}");
    assert!(msg.contains("docker-compose.yml:5:"), "{msg}");
}

#[test]
fn misspelled_keys_are_errors_with_a_suggestion() {
    for (bad, good) in [
        ("depend_on", "depends_on"),
        ("healthchek", "healthcheck"),
        ("enviroment", "environment"),
    ] {
        let e = one(&format!("services:\n  a:\n    image: x\n    {bad}: {{}}\n")).unwrap_err();
        assert_eq!(e.kind(), LoadErrorKind::UnknownKey, "{e}");
        assert_eq!(e.line(), Some(4));
        assert!(e.to_string().contains(&format!("did you mean \"{good}\"")), "{e}");
    }
    let e = one("services:\n  a:\n    image: x\n    deploy:\n      replicaz: 2\n").unwrap_err();
    assert!(e.to_string().contains("did you mean \"replicas\""), "{e}");
    let e = one("servics:\n  a: {}\n").unwrap_err();
    assert!(e.to_string().contains("did you mean \"services\""), "{e}");
}

#[test]
fn unknown_keys_are_kept_as_unsupported_not_dropped() {
    let cat = ok(
        "services:\n  a:\n    image: x\n    mem_limit: 1g\n    stop_after: 1\n    x-team: data\n    ports:\n      - target: 80\n        mode: host\nx-common: {a: 1}\nmystery: 3\n",
    );
    let a = &cat.services["a"];
    assert_eq!(a.unsupported["mem_limit"], serde_json::json!("1g"));
    assert_eq!(a.unsupported["stop_after"], serde_json::json!(1));
    assert_eq!(a.unsupported["ports[0].mode"], serde_json::json!("host"));
    assert_eq!(a.extensions["x-team"], serde_json::json!("data"));
    assert!(!a.unsupported.contains_key("x-team"));
    assert_eq!(cat.extensions["x-common"], serde_json::json!({"a": 1}));
    assert_eq!(cat.unsupported["mystery"], serde_json::json!(3));
}

// ------------------------------------------------------ variables and env

#[test]
fn dotenv_supplies_variables_and_process_env_wins() {
    let f = Fixture::new();
    f.write(".env", "# vars\nexport TAG=15\nUSER_NAME='app'\n");
    f.write("04-data/s/docker-compose.yml", "services:\n  a:\n    image: postgres:${TAG}\n    user: ${USER_NAME}\n    environment:\n      - LITERAL=$$HOME\n");
    let cat = f.load().unwrap();
    assert_eq!(cat.services["a"].image.as_deref(), Some("postgres:15"));
    assert_eq!(cat.services["a"].environment["LITERAL"], "$HOME");
    let opts = LoadOptions {
        env: BTreeMap::from([("TAG".into(), "16".into())]),
        ..LoadOptions::default()
    };
    let cat = f.load_with(&opts).unwrap();
    assert_eq!(cat.services["a"].image.as_deref(), Some("postgres:16"));
    assert_eq!(cat.services["a"].user.as_deref(), Some("app"));
}

#[test]
fn explicit_env_file_must_exist() {
    let f = Fixture::new();
    f.write("04-data/s/docker-compose.yml", "services: {}\n");
    let opts = LoadOptions {
        env_file: Some(f.root().join("prod.env")),
        ..LoadOptions::default()
    };
    assert_eq!(f.load_with(&opts).unwrap_err().kind(), LoadErrorKind::MissingFile);
}

#[test]
fn malformed_dotenv_reports_its_line() {
    let f = Fixture::new();
    f.write(".env", "A=1\nthis is wrong\n");
    f.write("04-data/s/docker-compose.yml", "services: {}\n");
    let e = f.load().unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::EnvFile);
    assert_eq!(e.line(), Some(2));
}

#[test]
fn env_file_entries_come_first_and_environment_overrides() {
    let f = Fixture::new();
    f.write("04-data/s/base.env", "A=from-file\nB=from-file\n");
    f.write("04-data/s/more.env", "B=more\nC=more\n");
    f.write(
        "04-data/s/docker-compose.yml",
        "services:\n  a:\n    image: x\n    env_file: [./base.env, {path: more.env}, {path: ./absent.env, required: false}]\n    environment:\n      C: inline\n      D: 4\n",
    );
    let env = &f.load().unwrap().services["a"].environment;
    let want: BTreeMap<String, String> = [("A", "from-file"), ("B", "more"), ("C", "inline"), ("D", "4")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(env, &want);
}

#[test]
fn missing_required_env_file_is_an_error() {
    let e = one("services:\n  a:\n    image: x\n    env_file: ./nope.env\n").unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::MissingFile);
    assert_eq!(e.line(), Some(4));
    assert!(e.to_string().contains("nope.env"), "{e}");
}

#[test]
fn bare_environment_keys_take_the_interpolation_value_or_are_dropped() {
    let f = Fixture::new();
    f.write(".env", "TZ=UTC\n");
    f.write("04-data/s/docker-compose.yml", "services:\n  a:\n    image: x\n    environment: [TZ, NOT_SET, X=1]\n  b:\n    image: x\n    environment:\n      TZ:\n      NOT_SET:\n");
    let cat = f.load().unwrap();
    for s in ["a", "b"] {
        let env = &cat.services[s].environment;
        assert_eq!(env.get("TZ").map(String::as_str), Some("UTC"));
        assert!(!env.contains_key("NOT_SET"));
    }
}

// ------------------------------------------------------------- YAML tricks

#[test]
fn anchors_aliases_and_merge_keys_work() {
    let cat = ok("\
x-common: &common
  restart: unless-stopped
  labels:
    team: data
  security_opt: [\"no-new-privileges:true\"]
services:
  a:
    <<: *common
    image: x
  b:
    <<: *common
    image: y
    restart: always
");
    assert_eq!(cat.services["a"].restart, Some(RestartPolicy::UnlessStopped));
    assert_eq!(cat.services["a"].labels["team"], "data");
    assert_eq!(cat.services["a"].security_opt, vec!["no-new-privileges:true"]);
    assert_eq!(cat.services["b"].restart, Some(RestartPolicy::Always));
}

// ------------------------------------------------------------ field forms

#[test]
fn ports_accept_short_and_long_syntax() {
    let cat = ok(
        "services:\n  a:\n    image: x\n    ports:\n      - \"8080:80\"\n      - \"127.0.0.1:5353:53/udp\"\n      - \"9090\"\n      - 7000\n      - \"9000-9001:9100-9101\"\n      - \"127.0.0.1::81\"\n      - \"[::1]:8443:443\"\n      - target: 5432\n        published: \"15432\"\n        host_ip: 10.0.0.1\n        protocol: tcp\n",
    );
    let p = &cat.services["a"].ports;
    let port = |ip: Option<&str>, published: Option<u16>, target: u16, protocol: Protocol| Port {
        host_ip: ip.map(str::to_string),
        published,
        target,
        protocol,
    };
    assert_eq!(
        p,
        &vec![
            port(None, Some(8080), 80, Protocol::Tcp),
            port(Some("127.0.0.1"), Some(5353), 53, Protocol::Udp),
            port(None, None, 9090, Protocol::Tcp),
            port(None, None, 7000, Protocol::Tcp),
            port(None, Some(9000), 9100, Protocol::Tcp),
            port(None, Some(9001), 9101, Protocol::Tcp),
            port(Some("127.0.0.1"), None, 81, Protocol::Tcp),
            port(Some("::1"), Some(8443), 443, Protocol::Tcp),
            port(Some("10.0.0.1"), Some(15432), 5432, Protocol::Tcp),
        ]
    );
}

#[test]
fn invalid_ports_are_rejected_with_their_item_line() {
    let e = one("services:\n  a:\n    image: x\n    ports:\n      - \"80:80\"\n      - \"99999:80\"\n").unwrap_err();
    assert_eq!(e.line(), Some(6));
    let e = one("services:\n  a:\n    image: x\n    ports: [\"9000-9002:9000-9001\"]\n").unwrap_err();
    assert!(e.to_string().contains("differ in size"), "{e}");
}

#[test]
fn volumes_accept_short_and_long_syntax_and_resolve_binds() {
    let f = Fixture::new();
    let file = f.write(
        "04-data/db/docker-compose.yml",
        "services:\n  a:\n    image: x\n    volumes:\n      - pgdata:/var/lib/postgresql/data\n      - ./init:/docker-entrypoint-initdb.d:ro\n      - /etc/localtime:/etc/localtime:ro\n      - /anon\n      - ../shared/conf:/conf\n      - type: bind\n        source: ./certs\n        target: /certs\n        read_only: true\n      - type: tmpfs\n        target: /tmp\n        tmpfs:\n          size: 64m\n      - type: volume\n        source: pgdata\n        target: /backup\nvolumes:\n  pgdata:\n",
    );
    let dir = std::path::absolute(file.parent().unwrap()).unwrap();
    let cat = f.load().unwrap();
    let v = &cat.services["a"].volumes;
    let m = |kind, source: Option<String>, target: &str, read_only, tmpfs_size| Mount {
        kind,
        source,
        target: target.into(),
        read_only,
        tmpfs_size,
    };
    let abs = |p: &Path| Some(p.display().to_string());
    assert_eq!(
        v,
        &vec![
            m(
                MountKind::Volume,
                Some("pgdata".into()),
                "/var/lib/postgresql/data",
                false,
                None
            ),
            m(
                MountKind::Bind,
                abs(&dir.join("init")),
                "/docker-entrypoint-initdb.d",
                true,
                None
            ),
            m(
                MountKind::Bind,
                Some("/etc/localtime".into()),
                "/etc/localtime",
                true,
                None
            ),
            m(MountKind::Volume, None, "/anon", false, None),
            m(
                MountKind::Bind,
                abs(&dir.parent().unwrap().join("shared/conf")),
                "/conf",
                false,
                None
            ),
            m(MountKind::Bind, abs(&dir.join("certs")), "/certs", true, None),
            m(MountKind::Tmpfs, None, "/tmp", false, Some(64 << 20)),
            m(MountKind::Volume, Some("pgdata".into()), "/backup", false, None),
        ]
    );
}

#[test]
fn undeclared_named_volume_is_an_error() {
    let e = one("services:\n  a:\n    image: x\n    volumes:\n      - /ok\n      - data:/data\n").unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::UndeclaredReference);
    assert_eq!(e.line(), Some(6));
    assert!(e.to_string().contains("\"data\""), "{e}");
}

#[test]
fn networks_accept_list_and_map_forms_and_must_be_declared() {
    let cat = ok(
        "services:\n  a:\n    image: x\n    networks: [dbnet]\n  b:\n    image: x\n    networks:\n      dbnet:\n        aliases: [db, pg]\n      proxy:\nnetworks:\n  dbnet:\n    internal: true\n    driver: bridge\n    labels: [tier=data]\n  proxy:\n    external: true\n    name: proxy\n",
    );
    assert_eq!(
        cat.services["a"].networks,
        vec![NetworkAttachment {
            name: "dbnet".into(),
            aliases: vec![],
            ipv4_address: None,
            ipv6_address: None,
        }]
    );
    assert_eq!(cat.services["b"].networks[0].aliases, vec!["db", "pg"]);
    assert_eq!(cat.services["b"].networks[1].name, "proxy");
    assert!(cat.networks["dbnet"].internal);
    assert_eq!(cat.networks["dbnet"].labels["tier"], "data");
    assert!(cat.networks["proxy"].external);
    let e = one("services:\n  a:\n    image: x\n    networks: [nowhere]\n").unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::UndeclaredReference);
}

#[test]
fn healthcheck_forms_are_normalised() {
    let cat = ok("\
services:
  cmd:
    image: x
    healthcheck:
      test: [\"CMD\", \"pg_isready\", \"-U\", \"app\"]
      interval: 10s
      timeout: 5s
      retries: 5
      start_period: 1m30s
      start_interval: 500ms
  shell:
    image: x
    healthcheck:
      test: curl -f http://localhost || exit 1
  cmdshell:
    image: x
    healthcheck:
      test: [\"CMD-SHELL\", \"redis-cli ping\"]
  off:
    image: x
    healthcheck:
      disable: true
  none:
    image: x
    healthcheck:
      test: [\"NONE\"]
  tuned:
    image: x
    healthcheck:
      interval: 2s
");
    let h = |n: &str| cat.services[n].healthcheck.clone().unwrap();
    assert_eq!(
        h("cmd").test,
        HealthTest::Cmd(vec!["pg_isready".into(), "-U".into(), "app".into()])
    );
    assert_eq!(h("cmd").interval, Some(Duration::from_secs(10)));
    assert_eq!(h("cmd").start_period, Some(Duration::from_secs(90)));
    assert_eq!(h("cmd").start_interval, Some(Duration::from_millis(500)));
    assert_eq!(h("cmd").retries, Some(5));
    assert_eq!(
        h("shell").test,
        HealthTest::Shell("curl -f http://localhost || exit 1".into())
    );
    assert_eq!(h("cmdshell").test, HealthTest::Shell("redis-cli ping".into()));
    assert_eq!(h("off").test, HealthTest::None);
    assert_eq!(h("none").test, HealthTest::None);
    assert_eq!(h("tuned").test, HealthTest::Inherit);
    assert!(!cat.services["off"].has_healthcheck());
    assert!(cat.services["tuned"].has_healthcheck());
}

#[test]
fn depends_on_long_form_reads_condition_required_and_restart() {
    let cat = ok(
        "services:\n  a:\n    image: x\n    depends_on:\n      b:\n        condition: service_completed_successfully\n        required: \"false\"\n        restart: true\n      c:\n  b:\n    image: x\n  c:\n    image: x\n",
    );
    let d = &cat.services["a"].depends_on;
    assert_eq!(d[0].condition, DependencyCondition::ServiceCompletedSuccessfully);
    assert!(!d[0].required);
    assert!(d[0].restart);
    assert_eq!(d[1].condition, DependencyCondition::ServiceStarted);
    assert!(d[1].required);
    let e = one(
        "services:\n  a:\n    image: x\n    depends_on:\n      b: {condition: service_ready}\n  b:\n    image: x\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("service_ready"), "{e}");
}

#[test]
fn restart_policies_parse() {
    let cat = ok(
        "services:\n  a: {image: x, restart: \"no\"}\n  b: {image: x, restart: on-failure:3}\n  c: {image: x, restart: on-failure}\n  d: {image: x, restart: unless-stopped}\n",
    );
    assert_eq!(cat.services["a"].restart, Some(RestartPolicy::No));
    assert_eq!(cat.services["b"].restart, Some(RestartPolicy::OnFailure(Some(3))));
    assert_eq!(cat.services["c"].restart, Some(RestartPolicy::OnFailure(None)));
    assert_eq!(cat.services["d"].restart, Some(RestartPolicy::UnlessStopped));
    assert!(one("services:\n  a: {image: x, restart: sometimes}\n").is_err());
}

#[test]
fn scalar_fields_accept_compose_shorthands() {
    let cat = ok("\
services:
  a:
    image: x
    command: bash -c 'echo \"hi there\"'
    entrypoint: [\"/init\", \"--\"]
    labels: [\"traefik.enable=true\", \"a.b=c=d\"]
    read_only: \"true\"
    init: true
    privileged: false
    user: 1000
    stop_grace_period: 1m
    stop_signal: SIGINT
    shm_size: 256m
    tmpfs: /run
    cap_drop: [ALL]
    cap_add: [NET_BIND_SERVICE]
    sysctls:
      net.core.somaxconn: 1024
    ulimits:
      nofile: {soft: 1024, hard: 2048}
      nproc: 512
    extra_hosts: [\"host.docker.internal=host-gateway\", \"db:10.0.0.5\"]
    logging:
      driver: json-file
      options: {max-size: 10m}
    container_name: kept
    hostname: a.local
    working_dir: /app
    profiles: [debug]
");
    let a = &cat.services["a"];
    assert_eq!(
        a.command.as_deref(),
        Some(&["bash".to_string(), "-c".into(), "echo \"hi there\"".into()][..])
    );
    assert_eq!(a.entrypoint.as_deref(), Some(&["/init".to_string(), "--".into()][..]));
    assert_eq!(a.labels["traefik.enable"], "true");
    assert_eq!(a.labels["a.b"], "c=d");
    assert!(a.read_only);
    assert_eq!(a.init, Some(true));
    assert_eq!(a.user.as_deref(), Some("1000"));
    assert_eq!(a.stop_grace_period, Some(Duration::from_secs(60)));
    assert_eq!(a.shm_size, Some(256 << 20));
    assert_eq!(a.tmpfs, vec!["/run"]);
    assert_eq!(a.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(a.ulimits["nofile"], Ulimit { soft: 1024, hard: 2048 });
    assert_eq!(a.ulimits["nproc"], Ulimit { soft: 512, hard: 512 });
    assert_eq!(a.extra_hosts, vec!["host.docker.internal:host-gateway", "db:10.0.0.5"]);
    assert_eq!(a.logging.as_ref().unwrap().options["max-size"], "10m");
    assert_eq!(a.container_name.as_deref(), Some("kept"));
    assert_eq!(a.profiles, vec!["debug"]);
}

#[test]
fn deploy_is_read_with_swarm_defaults() {
    let cat = ok("\
services:
  pg:
    image: x
    deploy:
      replicas: \"3\"
      resources:
        limits: {cpus: \"0.5\", memory: 512m, pids: 200}
        reservations:
          cpus: 0.25
          memory: 256m
          devices:
            - driver: nvidia
              count: all
              capabilities: [gpu]
      update_config:
        parallelism: 1
        delay: 10s
        failure_action: rollback
        monitor: 30s
        max_failure_ratio: 0.2
        order: start-first
      rollback_config:
        parallelism: 0
      placement:
        constraints: [node.labels.db == true]
        max_replicas_per_node: 1
        preferences:
          - spread: node.labels.zone
      restart_policy:
        condition: on-failure
        delay: 5s
        max_attempts: 3
        window: 2m
      labels: {role: primary}
  gpu:
    image: ollama
    gpus: all
  global:
    image: node-exporter
    deploy: {mode: global}
");
    let d = cat.services["pg"].deploy.clone().unwrap();
    assert_eq!(d.mode, DeployMode::Replicated);
    assert_eq!(d.replicas, 3);
    assert_eq!(d.resources.limits.cpus, Some(0.5));
    assert_eq!(d.resources.limits.memory, Some(512 << 20));
    assert_eq!(d.resources.limits.pids, Some(200));
    assert_eq!(d.resources.reservations.cpus, Some(0.25));
    let dev = &d.resources.reservations.devices[0];
    assert_eq!(dev.driver.as_deref(), Some("nvidia"));
    assert_eq!(dev.count, Some(DeviceCount::All));
    assert_eq!(dev.capabilities, vec!["gpu"]);
    let u = d.update_config.unwrap();
    assert_eq!(u.delay, Duration::from_secs(10));
    assert_eq!(u.failure_action, FailureAction::Rollback);
    assert_eq!(u.monitor, Duration::from_secs(30));
    assert_eq!(u.max_failure_ratio, 0.2);
    assert_eq!(u.order, UpdateOrder::StartFirst);
    let r = d.rollback_config.unwrap();
    assert_eq!(r.parallelism, 0);
    assert_eq!(r.failure_action, FailureAction::Pause);
    assert_eq!(r.order, UpdateOrder::StopFirst);
    assert_eq!(r.monitor, Duration::from_secs(5));
    assert_eq!(d.placement.constraints, vec!["node.labels.db == true"]);
    assert_eq!(d.placement.max_replicas_per_node, Some(1));
    assert_eq!(d.placement.preferences, vec!["node.labels.zone"]);
    let rp = d.restart_policy.unwrap();
    assert_eq!(rp.condition, RestartCondition::OnFailure);
    assert_eq!(rp.max_attempts, Some(3));
    assert_eq!(rp.window, Some(Duration::from_secs(120)));
    assert_eq!(d.labels["role"], "primary");
    assert_eq!(cat.services["gpu"].gpus[0].count, Some(DeviceCount::All));
    assert_eq!(cat.services["gpu"].replicas(), 1);
    assert_eq!(cat.services["global"].deploy.as_ref().unwrap().mode, DeployMode::Global);
}

#[test]
fn bad_update_config_values_are_rejected() {
    let e =
        one("services:\n  a:\n    image: x\n    deploy:\n      update_config:\n        order: sideways\n").unwrap_err();
    assert_eq!(e.line(), Some(6));
    let e = one("services:\n  a:\n    image: x\n    deploy:\n      update_config:\n        max_failure_ratio: 2\n")
        .unwrap_err();
    assert!(e.to_string().contains("between 0 and 1"), "{e}");
}

#[test]
fn secrets_resolve_files_and_are_checked() {
    let f = Fixture::new();
    f.write("04-data/db/secrets/pg_password.txt", "s3cret");
    f.write(
        "04-data/db/docker-compose.yml",
        "services:\n  a:\n    image: x\n    secrets:\n      - pg_password\n      - source: api_key\n        target: /run/keys/api\n        uid: \"1000\"\n        mode: 0440\n    configs: [app_conf]\nsecrets:\n  pg_password:\n    file: ./secrets/pg_password.txt\n  api_key:\n    environment: API_KEY\nconfigs:\n  app_conf:\n    content: \"hello\"\n",
    );
    let cat = f.load().unwrap();
    let s = &cat.services["a"].secrets;
    assert_eq!(s[0].source, "pg_password");
    assert_eq!(s[1].target.as_deref(), Some("/run/keys/api"));
    assert_eq!(s[1].mode, Some(0o440));
    match &cat.secrets["pg_password"].source {
        SecretSource::File(p) => {
            assert!(p.is_absolute());
            assert!(p.ends_with("04-data/db/secrets/pg_password.txt"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        cat.secrets["api_key"].source,
        SecretSource::Environment("API_KEY".into())
    );
    assert_eq!(cat.configs["app_conf"].source, SecretSource::Content("hello".into()));
    assert_eq!(cat.services["a"].configs[0].source, "app_conf");
}

#[test]
fn missing_secret_file_names_the_file_line_and_secret() {
    let e = one("services:\n  a:\n    image: x\nsecrets:\n  pg_password:\n    file: ./nope.txt\n").unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::MissingFile);
    assert_eq!(e.line(), Some(6));
    let msg = e.to_string();
    assert!(msg.contains("nope.txt") && msg.contains("\"pg_password\""), "{msg}");
}

#[test]
fn undeclared_secret_is_an_error() {
    let e = one("services:\n  a:\n    image: x\n    secrets: [ghost]\n").unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::UndeclaredReference);
}

#[test]
fn build_context_is_kept_and_made_absolute() {
    let cat = ok(
        "services:\n  a:\n    build:\n      context: ./app\n      dockerfile: Dockerfile.dev\n      args: [V=1]\n      cache_from: [x]\n  b:\n    build: .\n",
    );
    let b = cat.services["a"].build.clone().unwrap();
    assert!(
        Path::new(&b.context).is_absolute() && b.context.ends_with("04-data/stack/app"),
        "{}",
        b.context
    );
    assert_eq!(b.args["V"], "1");
    assert!(b.other.contains_key("cache_from"));
    assert!(
        cat.services["b"]
            .build
            .as_ref()
            .unwrap()
            .context
            .ends_with("04-data/stack")
    );
}

#[test]
fn include_name_and_version_are_accepted() {
    let f = Fixture::new();
    f.write(
        "04-data/stack/docker-compose.yml",
        "version: \"3.9\"\nname: infra\ninclude: [../other.yml]\nservices:\n  a: {image: x}\n",
    );
    f.write("04-data/other.yml", "services:\n  b: {image: y}\n");
    let cat = f.load().expect("load");
    assert_eq!(cat.includes.len(), 1);
    assert!(cat.unsupported.is_empty());
    assert!(cat.services.contains_key("b"));
}

// ---------------------------------------------------------------- overrides

#[test]
fn overrides_merge_maps_and_replace_scalars_and_sequences() {
    let f = Fixture::new();
    f.write("04-data/db/docker-compose.yml", "services:\n  mng-pg:\n    image: postgres:15\n    environment: {A: \"1\", B: \"2\"}\n    ports: [\"5432:5432\"]\n    deploy:\n      replicas: 1\n      resources: {limits: {memory: 1g}}\n");
    let over = f.dir.path().join("local/override.yml");
    std::fs::create_dir_all(over.parent().unwrap()).unwrap();
    std::fs::write(&over, "services:\n  mng-pg:\n    image: infra-local/postgres:15\n    environment: {B: \"3\"}\n    ports: [\"15432:5432\"]\n    volumes: [./data:/data]\n    deploy: {replicas: 2}\n").unwrap();
    let opts = LoadOptions {
        overrides: vec![over.clone()],
        ..LoadOptions::default()
    };
    let cat = f.load_with(&opts).unwrap();
    let s = &cat.services["mng-pg"];
    assert_eq!(s.image.as_deref(), Some("infra-local/postgres:15"));
    assert_eq!(s.environment["A"], "1");
    assert_eq!(s.environment["B"], "3");
    assert_eq!(s.ports.len(), 1);
    assert_eq!(s.ports[0].published, Some(15432));
    let d = s.deploy.as_ref().unwrap();
    assert_eq!(d.replicas, 2);
    assert_eq!(d.resources.limits.memory, Some(1 << 30));
    let want = std::path::absolute(f.dir.path().join("local/data")).unwrap();
    assert_eq!(
        s.volumes[0].source.as_deref(),
        Some(want.display().to_string().as_str())
    );
    assert_eq!(cat.files.last(), Some(&over));
}

#[test]
fn top_level_extensions_of_several_files_and_overrides_merge_key_by_key() {
    let f = Fixture::new();
    f.write(
        "04-data/minio/docker-compose.yml",
        "services:\n  minio:\n    image: m\nx-backup-targets:\n  minio: {endpoint: \"http://minio:9000\", bucket: b}\nx-note: one\n",
    );
    f.write(
        "04-data/other/docker-compose.yml",
        "services:\n  db:\n    image: d\nx-backup-targets:\n  near: {endpoint: \"http://near:9000\", bucket: n}\nx-note: two\n",
    );
    let over = f.dir.path().join("user.override.yml");
    std::fs::write(
        &over,
        "x-backup-targets:\n  offsite: {endpoint: \"https://s3.example.com\", bucket: o}\n  minio: {bucket: renamed}\n",
    )
    .unwrap();
    let opts = LoadOptions {
        overrides: vec![over],
        ..LoadOptions::default()
    };
    let cat = f.load_with(&opts).unwrap();
    let t = &cat.extensions["x-backup-targets"];
    assert_eq!(
        t["minio"],
        serde_json::json!({"endpoint": "http://minio:9000", "bucket": "renamed"})
    );
    assert_eq!(t["near"]["bucket"], "n");
    assert_eq!(t["offsite"]["bucket"], "o");
    // A scalar replaces (the later file wins).
    assert!(cat.extensions["x-note"] == "one" || cat.extensions["x-note"] == "two");
}

#[test]
fn override_naming_an_unknown_service_is_an_error() {
    let f = Fixture::new();
    f.write("04-data/db/docker-compose.yml", DB);
    let over = f.write("override.yml", "services:\n  mng-pgg:\n    image: x\n");
    let opts = LoadOptions {
        overrides: vec![over],
        ..LoadOptions::default()
    };
    let e = f.load_with(&opts).unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::Override);
    assert_eq!(e.line(), Some(2));
    let msg = e.to_string();
    assert!(
        msg.contains("override.yml") && msg.contains("\"mng-pgg\"") && msg.contains("did you mean \"mng-pg\""),
        "{msg}"
    );
}

#[test]
fn load_files_takes_explicit_tiers() {
    let f = Fixture::new();
    let a = f.write("x/a.yml", DB);
    let b = f.write("y/b.yml", AUTH);
    let cat = load_files(&[(a, Tier::Data), (b, Tier::Auth)], &LoadOptions::default()).unwrap();
    assert_eq!(cat.services["keycloak"].tier, Tier::Auth);
    assert_eq!(cat.root, f.root());
}

// --------------------------------------------------------------- selection

const PROFILED: &str = "\
services:
  pg: {image: x, healthcheck: {test: pg_isready}}
  valkey: {image: x}
  insight: {image: x, profiles: [debug], depends_on: [valkey]}
  app:
    image: x
    depends_on:
      pg: {condition: service_healthy}
      cache: {required: false}
  cache: {image: x, profiles: [cache]}
  couch: {image: x, profiles: [couch]}
";

fn profiled() -> Catalog {
    let f = Fixture::new();
    f.write("04-data/s/docker-compose.yml", PROFILED);
    f.write(
        "01-gateway/t/docker-compose.yml",
        "services:\n  traefik: {image: traefik}\n  nginx: {image: nginx, profiles: [nginx]}\n",
    );
    f.load().unwrap()
}

#[test]
fn all_selects_every_service_without_profiles() {
    let cat = profiled();
    assert_eq!(
        cat.select(&Selection::all()).unwrap(),
        names(&["app", "pg", "traefik", "valkey"])
    );
    assert_eq!(
        cat.select(&Selection::default()).unwrap(),
        names(&["app", "pg", "traefik", "valkey"])
    );
    assert_eq!(cat.profiles(), names(&["cache", "couch", "debug", "nginx"]));
}

#[test]
fn profiles_alone_add_to_the_default_services() {
    let cat = profiled();
    let sel = Selection {
        profiles: vec!["debug".into(), "cache".into()],
        ..Selection::default()
    };
    assert_eq!(
        cat.select(&sel).unwrap(),
        names(&["app", "cache", "insight", "pg", "traefik", "valkey"])
    );
}

#[test]
fn tiers_select_their_active_services_and_dependencies() {
    let cat = profiled();
    assert_eq!(
        cat.select(&Selection::tiers([Tier::Gateway])).unwrap(),
        names(&["traefik"])
    );
    let sel = Selection {
        tiers: vec![Tier::Gateway],
        profiles: vec!["nginx".into()],
        ..Selection::default()
    };
    assert_eq!(cat.select(&sel).unwrap(), names(&["nginx", "traefik"]));
}

#[test]
fn named_services_bring_their_dependencies_but_not_optional_ones() {
    let cat = profiled();
    assert_eq!(
        cat.select(&Selection::services(["app"])).unwrap(),
        names(&["app", "pg"])
    );
    // Named explicitly: active despite its profile; its dependency comes along.
    assert_eq!(
        cat.select(&Selection::services(["insight"])).unwrap(),
        names(&["insight", "valkey"])
    );
    // The optional dependency stays when selected for another reason.
    assert_eq!(
        cat.select(&Selection::services(["app", "cache"])).unwrap(),
        names(&["app", "cache", "pg"])
    );
}

#[test]
fn unknown_service_selection_suggests_the_closest_name() {
    let cat = profiled();
    let e = cat.select(&Selection::services(["valky"])).unwrap_err();
    assert_eq!(
        e,
        SelectError::UnknownService {
            name: "valky".into(),
            suggestion: Some("valkey".into())
        }
    );
    assert!(e.to_string().contains("did you mean \"valkey\""), "{e}");
}

#[test]
fn unknown_profile_is_an_error_naming_it() {
    let cat = profiled();
    let sel = Selection {
        profiles: vec!["vault".into()],
        ..Selection::default()
    };
    let e = cat.select(&sel).unwrap_err();
    assert!(matches!(&e, SelectError::UnknownProfile { name, .. } if name == "vault"));
    assert!(e.to_string().contains("\"vault\""), "{e}");
}

// ------------------------------------------------------------------- graph

const CHAIN: &str = "\
services:
  pg: {image: x, healthcheck: {test: pg_isready}}
  valkey: {image: x, healthcheck: {test: [CMD, valkey-cli, ping]}}
  minio: {image: x}
  minio-init:
    image: x
    depends_on: [minio]
  keycloak:
    image: x
    healthcheck: {test: curl localhost}
    depends_on: {pg: {condition: service_healthy}}
  oauth2:
    image: x
    depends_on: [keycloak, valkey]
  loki:
    image: x
    depends_on:
      minio-init: {condition: service_completed_successfully}
  grafana:
    image: x
    depends_on:
      loki: {}
      keycloak: {required: false}
";

fn chain() -> Catalog {
    ok(CHAIN)
}

fn all_names(cat: &Catalog) -> BTreeSet<String> {
    cat.services.keys().cloned().collect()
}

#[test]
fn order_puts_dependencies_first_and_breaks_ties_by_name() {
    let cat = chain();
    let g = cat.graph(&all_names(&cat)).unwrap();
    assert_eq!(
        g.order(),
        [
            "minio",
            "minio-init",
            "loki",
            "pg",
            "keycloak",
            "grafana",
            "valkey",
            "oauth2"
        ]
        .map(String::from)
        .as_slice()
    );
    let pos = |n: &str| g.order().iter().position(|x| x == n).unwrap();
    for (a, b) in [
        ("pg", "keycloak"),
        ("keycloak", "oauth2"),
        ("valkey", "oauth2"),
        ("minio", "minio-init"),
        ("minio-init", "loki"),
        ("loki", "grafana"),
        ("keycloak", "grafana"),
    ] {
        assert!(pos(a) < pos(b), "{a} before {b}: {:?}", g.order());
    }
    assert_eq!(g.order()[0], "minio");
    // Deterministic across builds.
    assert_eq!(cat.graph(&all_names(&cat)).unwrap().order(), g.order());
}

#[test]
fn levels_group_services_that_can_start_in_parallel() {
    let cat = chain();
    let g = cat.graph(&all_names(&cat)).unwrap();
    let want: Vec<Vec<String>> = vec![
        vec!["minio".into(), "pg".into(), "valkey".into()],
        vec!["keycloak".into(), "minio-init".into()],
        vec!["loki".into(), "oauth2".into()],
        vec!["grafana".into()],
    ];
    assert_eq!(g.levels(), want.as_slice());
}

#[test]
fn dependents_and_blocked_by_follow_edges() {
    let cat = chain();
    let g = cat.graph(&all_names(&cat)).unwrap();
    assert_eq!(g.dependents("keycloak"), vec!["grafana", "oauth2"]);
    assert_eq!(
        g.dependencies("oauth2")
            .iter()
            .map(|d| d.service.as_str())
            .collect::<Vec<_>>(),
        vec!["keycloak", "valkey"]
    );
    assert_eq!(g.blocked_by("pg"), names(&["keycloak", "oauth2"]));
    assert_eq!(g.blocked_by("minio"), names(&["grafana", "loki", "minio-init"]));
    assert_eq!(
        g.blocking_chain("minio", "grafana").unwrap(),
        vec!["minio", "minio-init", "loki", "grafana"]
    );
    assert_eq!(g.blocking_chain("pg", "grafana"), None);
    assert!(g.blocked_by("grafana").is_empty());
}

#[test]
fn graph_over_a_subset_ignores_unselected_optional_dependencies() {
    let cat = chain();
    let sel = cat.select(&Selection::services(["grafana"])).unwrap();
    assert_eq!(sel, names(&["grafana", "loki", "minio", "minio-init"]));
    let g = cat.graph(&sel).unwrap();
    assert_eq!(
        g.order(),
        ["minio", "minio-init", "loki", "grafana"].map(String::from).as_slice()
    );
    assert!(!g.contains("keycloak"));
}

#[test]
fn cycle_error_names_the_whole_path() {
    let f = Fixture::new();
    f.write("04-data/s/docker-compose.yml", "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [c]}\n  d: {image: x, depends_on: [a]}\n");
    f.write(
        "07-workflow/w/docker-compose.yml",
        "services:\n  c: {image: x, depends_on: [a]}\n",
    );
    let cat = f.load().unwrap();
    let e = cat.graph(&all_names(&cat)).unwrap_err();
    let GraphError::Cycle { path, files } = &e else {
        panic!("{e}")
    };
    assert_eq!(path, &vec!["a", "b", "c", "a"]);
    assert!(files[2].ends_with("07-workflow/w/docker-compose.yml"));
    let msg = e.to_string();
    assert!(msg.contains("a -> b -> c -> a"), "{msg}");
    assert!(
        msg.contains("c in ") && msg.contains("07-workflow/w/docker-compose.yml"),
        "{msg}"
    );
}

#[test]
fn self_dependency_is_a_cycle() {
    let cat = ok("services:\n  a: {image: x, depends_on: [a]}\n");
    let e = cat.graph(&all_names(&cat)).unwrap_err();
    assert!(e.to_string().contains("a -> a"), "{e}");
}

#[test]
fn healthy_dependency_on_a_service_without_healthcheck_is_an_error() {
    let cat =
        ok("services:\n  app:\n    image: x\n    depends_on: {db: {condition: service_healthy}}\n  db: {image: x}\n");
    let e = cat.graph(&all_names(&cat)).unwrap_err();
    assert!(
        matches!(&e, GraphError::NoHealthcheck { service, dependency, .. } if service == "app" && dependency == "db")
    );
    let msg = e.to_string();
    assert!(
        msg.contains("\"app\"") && msg.contains("\"db\"") && msg.contains("docker-compose.yml"),
        "{msg}"
    );
    let cat = ok(
        "services:\n  app:\n    image: x\n    depends_on: {db: {condition: service_healthy}}\n  db: {image: x, healthcheck: {disable: true}}\n",
    );
    assert!(cat.graph(&all_names(&cat)).is_err());
}

#[test]
fn unknown_dependency_is_reported_by_graph_for_hand_built_catalogs() {
    let mut cat = chain();
    cat.services.get_mut("loki").unwrap().depends_on.push(Dependency {
        service: "ghost".into(),
        condition: DependencyCondition::ServiceStarted,
        required: true,
        restart: false,
    });
    let e = cat.graph(&all_names(&cat)).unwrap_err();
    assert!(
        matches!(&e, GraphError::UnknownDependency { service, dependency, line, .. } if service == "loki" && dependency == "ghost" && *line > 1),
        "{e}"
    );
    assert!(e.to_string().contains("docker-compose.yml:"), "{e}");
    let e = cat.graph(&names(&["nobody"])).unwrap_err();
    assert_eq!(e, GraphError::UnknownService { name: "nobody".into() });
    let e = cat.select(&Selection::services(["loki"])).unwrap_err();
    assert!(matches!(e, SelectError::UnknownDependency { .. }));
}

// ------------------------------------------------- bad input, located

#[test]
fn a_value_of_the_wrong_type_names_file_line_service_and_key() {
    let e = one("services:\n  a:\n    image: x\n    read_only: [yes]\n").unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::InvalidValue);
    assert_eq!(e.line(), Some(4));
    assert_eq!(e.service_name(), Some("a"));
    assert_eq!(e.key_path(), Some("services.a.read_only"));
    assert!(
        e.to_string()
            .contains("docker-compose.yml:4: service \"a\": read_only: "),
        "{e}"
    );
}

#[test]
fn a_duration_that_does_not_parse_names_file_line_and_key() {
    let e = one(
        "services:\n  a:\n    image: x\n    healthcheck:\n      test: [CMD, pg_isready]\n      interval: 10 parsecs\n",
    )
    .unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::InvalidValue);
    assert_eq!(e.line(), Some(6));
    assert_eq!(e.key_path(), Some("services.a.healthcheck.interval"));
    let msg = e.to_string();
    assert!(
        msg.contains("docker-compose.yml:6:") && msg.contains("healthcheck.interval"),
        "{msg}"
    );
    assert!(msg.contains("parsecs"), "{msg}");
    let e = one("services:\n  a:\n    image: x\n    stop_grace_period: soon\n").unwrap_err();
    assert_eq!(e.line(), Some(4));
    assert_eq!(e.key_path(), Some("services.a.stop_grace_period"));
}

#[test]
fn a_size_that_does_not_parse_names_file_line_and_key() {
    let e = one("services:\n  a:\n    image: x\n    shm_size: lots\n").unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::InvalidValue);
    assert_eq!(e.line(), Some(4));
    assert_eq!(e.key_path(), Some("services.a.shm_size"));
    let msg = e.to_string();
    assert!(msg.contains("docker-compose.yml:4: service \"a\": shm_size: "), "{msg}");
    assert!(msg.contains("lots"), "{msg}");
    let e = one(
        "services:\n  a:\n    image: x\n    deploy:\n      resources:\n        limits:\n          memory: 1 gigabyte\n",
    )
    .unwrap_err();
    assert_eq!(e.line(), Some(7));
    assert_eq!(e.key_path(), Some("services.a.deploy.resources.limits.memory"));
}

#[test]
fn a_secret_file_that_does_not_exist_names_file_line_and_key() {
    let e = one(
        "services:\n  a:\n    image: x\n    secrets: [pg_password]\nsecrets:\n  pg_password:\n    file: ./nope.txt\n",
    )
    .unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::MissingFile);
    assert_eq!(e.line(), Some(7));
    assert!(
        e.file().ends_with("04-data/stack/docker-compose.yml"),
        "{}",
        e.file().display()
    );
    assert_eq!(e.key_path(), Some("secrets.pg_password"));
    let msg = e.to_string();
    assert!(msg.contains("docker-compose.yml:7: secrets.pg_password: "), "{msg}");
    assert!(msg.contains("nope.txt"), "{msg}");
}

#[test]
fn a_profile_that_no_service_has_is_named_with_the_closest_and_the_known_profiles() {
    let cat = profiled();
    let known = cat.profiles();
    let first = known.iter().next().expect("the fixture has profiles").clone();
    let typo = format!("{first}x");
    let e = cat
        .select(&Selection {
            profiles: vec![typo.clone()],
            ..Selection::default()
        })
        .unwrap_err();
    match &e {
        SelectError::UnknownProfile {
            name,
            suggestion,
            known: k,
        } => {
            assert_eq!(name, &typo);
            assert_eq!(suggestion.as_deref(), Some(first.as_str()));
            assert_eq!(k.iter().cloned().collect::<BTreeSet<_>>(), known);
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{typo:?}")) && msg.contains("did you mean"),
        "{msg}"
    );
}

// -------------------------------------------------------------------- lint

/// Limits, so that fixtures only break the rule they are about.
const LIMITS: &str =
    "    deploy:\n      resources:\n        limits:\n          cpus: \"0.5\"\n          memory: 128M\n";

fn lint_of(text: &str) -> Vec<Finding> {
    lint(&ok(text))
}

fn brief(findings: &[Finding]) -> Vec<(&'static str, usize, String)> {
    findings
        .iter()
        .map(|f| (f.rule.id(), f.line, f.service.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn a_static_ipv4_address_is_an_error_at_its_line_and_still_reported_as_unsupported() {
    let cat = ok(&format!(
        "services:\n  app:\n    image: nginx:1.27\n{LIMITS}    networks:\n      infra_net:\n        aliases: [web]\n        ipv4_address: 172.19.0.13\nnetworks:\n  infra_net: {{}}\n"
    ));
    let app = &cat.services["app"];
    assert_eq!(app.networks[0].ipv4_address.as_deref(), Some("172.19.0.13"));
    assert!(app.unsupported.contains_key("networks.infra_net.ipv4_address"));
    let f = lint(&cat);
    assert_eq!(brief(&f), vec![("static-ip", 12, "app".to_string())]);
    assert_eq!(f[0].severity, Severity::Error);
    assert!(f[0].message.contains("172.19.0.13"), "{}", f[0].message);
}

#[test]
fn a_host_port_outside_the_edge_is_an_error_but_the_gateway_and_marked_edges_may_publish() {
    let f = Fixture::new();
    f.write(
        "04-data/db/docker-compose.yml",
        &format!(
            "services:\n  app:\n    image: nginx:1.27\n{LIMITS}    ports:\n      - \"8080:80\"\n  labelled:\n    image: nginx:1.27\n{LIMITS}    labels: [x-infra-edge=true]\n    ports: [\"8081:80\"]\n  extended:\n    image: nginx:1.27\n{LIMITS}    x-infra-edge: true\n    ports: [\"8082:80\"]\n"
        ),
    );
    f.write(
        "01-gateway/edge/docker-compose.yml",
        &format!("services:\n  proxy:\n    image: nginx:1.27\n{LIMITS}    ports: [\"443:443\"]\n"),
    );
    let findings = lint(&f.load().unwrap());
    assert_eq!(brief(&findings), vec![("host-port", 9, "app".to_string())]);
    assert!(findings[0].message.contains("8080->80/tcp"), "{}", findings[0].message);
}

#[test]
fn a_literal_password_or_secret_in_the_environment_is_an_error_in_both_syntaxes() {
    let f = lint_of(&format!(
        "services:\n  app:\n    image: nginx:1.27\n{LIMITS}    environment:\n      DB_PASSWORD: hunter2\n      DB_PASSWORD_FILE: /run/secrets/db_password\n      API_TOKEN: \"\"\n      TZ: UTC\n  other:\n    image: nginx:1.27\n{LIMITS}    environment:\n      - TZ=UTC\n      - CLIENT_SECRET=abc\n"
    ));
    assert_eq!(
        brief(&f),
        vec![
            ("plaintext-secret", 10, "app".to_string()),
            ("plaintext-secret", 23, "other".to_string())
        ]
    );
    assert!(!f[0].message.contains("hunter2"), "the value must not be printed");
}

#[test]
fn waiting_for_a_healthy_service_without_healthcheck_is_reported_where_the_graph_stops() {
    let cat = ok(&format!(
        "services:\n  app:\n    image: nginx:1.27\n{LIMITS}    depends_on:\n      db:\n        condition: service_healthy\n  db:\n    image: nginx:1.27\n{LIMITS}"
    ));
    assert!(matches!(
        cat.graph(&names(&["app", "db"])),
        Err(GraphError::NoHealthcheck { .. })
    ));
    let f = lint(&cat);
    assert_eq!(brief(&f), vec![("healthy-without-healthcheck", 11, "app".to_string())]);
    assert!(f[0].message.contains("\"db\""), "{}", f[0].message);
}

#[test]
fn a_service_without_resource_limits_is_a_warning() {
    let f = lint_of(
        "services:\n  bare:\n    image: nginx:1.27\n  reserved:\n    image: nginx:1.27\n    deploy:\n      resources:\n        reservations:\n          memory: 64M\n",
    );
    assert_eq!(
        brief(&f),
        vec![
            ("no-resource-limits", 2, "bare".to_string()),
            ("no-resource-limits", 7, "reserved".to_string())
        ]
    );
    assert!(f.iter().all(|x| x.severity == Severity::Warning));
}

#[test]
fn an_image_with_latest_or_no_tag_is_an_error_and_a_digest_or_version_is_not() {
    let f = lint_of(&format!(
        "services:\n  a:\n    image: nginx\n{LIMITS}  b:\n    image: nginx:latest\n{LIMITS}  c:\n    image: localhost:5000/nginx\n{LIMITS}  d:\n    image: nginx@sha256:0123456789abcdef\n{LIMITS}  e:\n    image: localhost:5000/nginx:1.27\n{LIMITS}"
    ));
    assert_eq!(
        brief(&f),
        vec![
            ("unpinned-image", 3, "a".to_string()),
            ("unpinned-image", 10, "b".to_string()),
            ("unpinned-image", 17, "c".to_string())
        ]
    );
}

#[test]
fn a_one_shot_psql_container_running_sql_files_is_a_redundant_init_container() {
    let f = lint_of(&format!(
        "services:\n  mng-pg:\n    image: postgres:17.7\n{LIMITS}    volumes:\n      - pgdata:/var/lib/postgresql/data\n      - ./init-scripts/init.sql:/docker-entrypoint-initdb.d/init.sql:ro\n    healthcheck:\n      test: pg_isready\n  mng-pg-init:\n    image: postgres:17.7\n{LIMITS}    depends_on:\n      mng-pg: {{condition: service_healthy}}\n    volumes:\n      - ./init-scripts/init.sql:/init.sql:ro\n    command: [\"sh\", \"-c\", \"psql -h mng-pg -U postgres -f /init.sql\"]\nvolumes:\n  pgdata:\n"
    ));
    assert_eq!(
        brief(&f),
        vec![("redundant-init-container", 25, "mng-pg-init".to_string())]
    );
    assert_eq!(f[0].severity, Severity::Warning);
    assert!(
        f[0].message.contains("already mounts /docker-entrypoint-initdb.d"),
        "{}",
        f[0].message
    );
}

#[test]
fn a_stateful_store_without_a_named_volume_or_writable_bind_is_an_error() {
    let f = lint_of(&format!(
        "services:\n  cache:\n    image: valkey/valkey:8.1.7\n{LIMITS}  metrics:\n    image: prom/prometheus:v3.9.0\n{LIMITS}    volumes:\n      - ./prometheus.yml:/etc/prometheus/prometheus.yml:ro\n    tmpfs: [/prometheus]\n  kept:\n    image: postgres:17.7\n{LIMITS}    volumes: [pgdata:/var/lib/postgresql/data]\nvolumes:\n  pgdata:\n"
    ));
    assert_eq!(
        brief(&f),
        vec![
            ("stateful-without-volume", 3, "cache".to_string()),
            ("stateful-without-volume", 16, "metrics".to_string())
        ]
    );
}

#[test]
fn a_catalog_that_follows_the_practices_has_no_findings() {
    let f = Fixture::new();
    f.write("04-data/db/secrets/db_password", "s3cret");
    f.write(
        "04-data/db/docker-compose.yml",
        &format!(
            "services:\n  db:\n    image: postgres:17.7\n    restart: unless-stopped\n{LIMITS}    environment:\n      POSTGRES_PASSWORD_FILE: /run/secrets/db_password\n      POSTGRES_USER: app\n    secrets: [db_password]\n    volumes:\n      - pgdata:/var/lib/postgresql/data\n      - ./init:/docker-entrypoint-initdb.d:ro\n    healthcheck:\n      test: [\"CMD-SHELL\", \"pg_isready\"]\n    networks:\n      infra_net:\n        aliases: [postgres]\n  migrate:\n    image: app/migrate:2.1.0\n{LIMITS}    depends_on:\n      db: {{condition: service_healthy}}\n    command: [\"migrate\", \"up\"]\n    networks: [infra_net]\nvolumes:\n  pgdata:\nsecrets:\n  db_password:\n    file: ./secrets/db_password\nnetworks:\n  infra_net: {{}}\n"
        ),
    );
    f.write(
        "01-gateway/edge/docker-compose.yml",
        &format!(
            "services:\n  proxy:\n    image: nginx:1.27.3\n    restart: unless-stopped\n{LIMITS}    ports: [\"443:443\"]\n    depends_on:\n      db: {{condition: service_started}}\n"
        ),
    );
    let cat = f.load().unwrap();
    let found = lint(&cat);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn findings_are_ordered_by_file_then_line_and_render_on_one_line() {
    let f = Fixture::new();
    f.write("04-data/b/docker-compose.yml", "services:\n  z:\n    image: nginx\n");
    f.write(
        "02-auth/a/docker-compose.yml",
        "services:\n  y:\n    image: nginx:1.27\n",
    );
    let found = lint(&f.load().unwrap());
    let order: Vec<(String, usize, &str)> = found
        .iter()
        .map(|x| {
            (
                x.file
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                x.line,
                x.rule.id(),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ("a".to_string(), 2, "no-resource-limits"),
            ("b".to_string(), 2, "no-resource-limits"),
            ("b".to_string(), 3, "unpinned-image"),
        ]
    );
    let text = found[2].to_string();
    assert!(
        text.ends_with(&format!(
            "04-data/b/docker-compose.yml:3: error[unpinned-image] z: image \"nginx\" has no tag (so `latest`); pin a version such as nginx:<version> ({})",
            Rule::UnpinnedImage.why()
        )),
        "{text}"
    );
}

#[test]
fn an_optional_dependency_on_a_service_the_catalog_lacks_is_not_an_error_and_not_waited_for() {
    let f = Fixture::new();
    f.write(
        "08-ai/webui/docker-compose.yml",
        "services:\n  webui:\n    image: w:1\n    depends_on:\n      qdrant: {condition: service_healthy, required: false}\n",
    );
    let cat = f.load().unwrap();
    let names = cat.select(&Selection::all()).unwrap();
    let graph = cat.graph(&names).unwrap();
    assert_eq!(graph.order(), ["webui"]);
    assert!(graph.dependencies("webui").is_empty());
}

#[test]
fn a_secret_file_outside_the_catalog_is_refused_naming_the_file_line_and_service() {
    let outside = tempfile::tempdir().unwrap();
    let abs = outside.path().join("shadow");
    std::fs::write(&abs, "root:x:0:0").unwrap();
    let climb = "../".repeat(16) + abs.strip_prefix("/").unwrap().to_str().unwrap();
    for (source, why) in [(abs.display().to_string(), "absolute"), (climb, "climbs out")] {
        let f = Fixture::new();
        f.write(
            "04-data/stack/docker-compose.yml",
            &format!("services:\n  db:\n    image: x\n    secrets: [x]\nsecrets:\n  x:\n    file: \"{source}\"\n"),
        );
        let e = f.load().unwrap_err();
        assert_eq!(e.kind(), LoadErrorKind::OutsideCatalog, "{why}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("04-data/stack/docker-compose.yml:7"), "{why}: {msg}");
        assert!(msg.contains("outside the catalog"), "{why}: {msg}");
        assert!(msg.contains("service db"), "{why}: {msg}");
        assert!(!msg.contains("root:x"), "never the content: {msg}");
        // Allowed once the coordinator names the directory.
        let opts = LoadOptions {
            secret_dirs: vec![outside.path().to_owned()],
            ..Default::default()
        };
        f.load_with(&opts).unwrap_or_else(|e| panic!("{why}: {e}"));
    }
}

#[test]
fn a_symlink_inside_the_catalog_that_points_outside_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("key"), "k").unwrap();
    let f = Fixture::new();
    f.write(
        "04-data/stack/docker-compose.yml",
        "services:\n  db:\n    image: x\n    secrets: [x]\nsecrets:\n  x:\n    file: ./key\n",
    );
    std::os::unix::fs::symlink(outside.path().join("key"), f.root().join("04-data/stack/key")).unwrap();
    let e = f.load().unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::OutsideCatalog, "{e}");
    assert!(e.to_string().contains("it resolves to"), "{e}");
    // A symlink that stays inside is fine.
    std::fs::remove_file(f.root().join("04-data/stack/key")).unwrap();
    f.write("secrets/key.txt", "k");
    std::os::unix::fs::symlink(f.root().join("secrets/key.txt"), f.root().join("04-data/stack/key")).unwrap();
    f.load().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn oversized_files_are_refused_before_they_are_parsed() {
    let f = Fixture::new();
    let mut big = String::from("services:\n  a:\n    image: x\n    environment:\n");
    let mut i = 0;
    while big.len() as u64 <= MAX_FILE_BYTES {
        big.push_str(&format!("      K{i}: vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\n"));
        i += 1;
    }
    f.write("04-data/stack/docker-compose.yml", &big);
    let e = f.load().unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::TooLarge, "{e}");
    assert!(e.to_string().contains("04-data/stack/docker-compose.yml"), "{e}");
    assert!(
        e.to_string().contains(&format!("at most {MAX_FILE_BYTES} bytes")),
        "{e}"
    );

    let f = Fixture::new();
    f.write(
        "04-data/stack/docker-compose.yml",
        "services:\n  a:\n    image: x\n    secrets: [big]\nsecrets:\n  big:\n    file: ./big\n",
    );
    f.write("04-data/stack/big", &"x".repeat(MAX_SECRET_BYTES as usize + 1));
    let e = f.load().unwrap_err();
    assert_eq!(e.kind(), LoadErrorKind::TooLarge, "{e}");
    assert!(e.to_string().contains(":7"), "{e}");
}

#[test]
fn a_yaml_alias_bomb_is_an_error_naming_the_file() {
    let mut text = String::from("x-a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let mut prev = 'a';
    for c in 'b'..='i' {
        text.push_str(&format!(
            "x-{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
        prev = c;
    }
    text.push_str("services:\n  a:\n    image: x\n");
    let e = one(&text).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("04-data/stack/docker-compose.yml:2"), "{msg}");
    assert!(msg.contains("aliases"), "{msg}");
}

#[test]
fn an_expose_port_out_of_range_is_an_error_at_its_line() {
    for bad in ["70000", "0", "80-x", "53/icmp"] {
        let e = one(&format!(
            "services:\n  a:\n    image: x\n    expose: [\"8080\", \"{bad}\"]\n"
        ))
        .unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.kind(), LoadErrorKind::InvalidValue, "{bad}: {msg}");
        assert!(msg.contains(":4") && msg.contains("expose[1]"), "{bad}: {msg}");
    }
    ok("services:\n  a:\n    image: x\n    expose: [\"8080\", \"9000-9010\", \"53/udp\", 6379]\n");
}

#[test]
fn a_bind_mount_of_a_host_path_is_named_for_information_and_a_catalog_file_is_not() {
    let f = Fixture::new();
    f.write("04-data/db/app.conf", "x=1\n");
    f.write(
        "04-data/db/docker-compose.yml",
        &format!(
            "services:\n  app:\n    image: nginx:1.27\n{LIMITS}    volumes:\n      - ./app.conf:/etc/app.conf:ro\n      - /var/run/docker.sock:/var/run/docker.sock:ro\n"
        ),
    );
    let findings = lint(&f.load().unwrap());
    assert_eq!(brief(&findings), vec![("host-path", 11, "app".to_string())]);
    assert_eq!(findings[0].severity, Severity::Info);
    assert!(
        findings[0].message.contains("/var/run/docker.sock"),
        "{}",
        findings[0].message
    );
}
