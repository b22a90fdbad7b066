//! `include:`: files written to a temporary catalog, loaded, and checked.

use std::collections::BTreeMap;
use std::path::PathBuf;

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
    /// The catalog folder, `<tmp>/compose`.
    fn root(&self) -> PathBuf {
        self.dir.path().join("compose")
    }
    /// Writes `rel` under the catalog folder.
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }
    fn load_with(&self, opts: &LoadOptions) -> Result<Catalog, LoadError> {
        load_catalog(&self.root(), opts)
    }
    fn load(&self) -> Result<Catalog, LoadError> {
        self.load_with(&LoadOptions::default())
    }
    fn ok(&self) -> Catalog {
        self.load().unwrap_or_else(|e| panic!("load failed: {e}"))
    }
    fn err(&self) -> LoadError {
        match self.load() {
            Ok(_) => panic!("load should fail"),
            Err(e) => e,
        }
    }
}

const STACK: &str = "04-data/app/docker-compose.yml";

fn bind_source(cat: &Catalog, service: &str) -> PathBuf {
    let m = cat.services[service]
        .volumes
        .iter()
        .find(|m| m.kind == MountKind::Bind)
        .expect("a bind mount");
    PathBuf::from(m.source.clone().expect("source"))
}

fn secret_file(cat: &Catalog, name: &str) -> PathBuf {
    match &cat.secrets[name].source {
        SecretSource::File(p) => p.clone(),
        other => panic!("not a file secret: {other:?}"),
    }
}

#[test]
fn short_syntax_follows_a_file_beside_the_stack() {
    let f = Fixture::new();
    let stack = f.write(
        STACK,
        "include:\n  - extra.yml\nservices:\n  web:\n    image: web:1\n    depends_on: [cache]\n",
    );
    let extra = f.write(
        "04-data/app/extra.yml",
        "services:\n  cache:\n    image: valkey:8\n    volumes: [./data:/data]\n",
    );
    let cat = f.ok();
    let cache = &cat.services["cache"];
    assert_eq!(cache.tier, Tier::Data);
    assert_eq!(cache.file, extra);
    assert_eq!(cache.line, 2);
    assert_eq!(bind_source(&cat, "cache"), f.root().join("04-data/app/data"));
    assert_eq!(cat.files, vec![stack.clone(), extra]);
    assert_eq!(cat.includes.len(), 1);
    assert_eq!(cat.includes[0].file, stack);
    assert_eq!(cat.includes[0].value, serde_json::json!(["extra.yml"]));
}

#[test]
fn relative_paths_of_an_included_file_resolve_against_its_own_directory() {
    let f = Fixture::new();
    f.write(
        STACK,
        "include: [../shared/db/db.yml]\nservices:\n  web: {image: web}\n",
    );
    f.write(
        "04-data/shared/db/db.yml",
        "services:\n  db:\n    image: postgres:16\n    volumes: [./init:/docker-entrypoint-initdb.d:ro]\n    env_file: db.env\n    secrets: [db-pw]\nsecrets:\n  db-pw:\n    file: ./pw.txt\n",
    );
    f.write("04-data/shared/db/db.env", "POSTGRES_DB=app\n");
    f.write("04-data/shared/db/pw.txt", "s3cret\n");
    let cat = f.ok();
    let dir = f.root().join("04-data/shared/db");
    assert_eq!(bind_source(&cat, "db"), dir.join("init"));
    assert_eq!(secret_file(&cat, "db-pw"), dir.join("pw.txt"));
    assert_eq!(cat.services["db"].environment["POSTGRES_DB"], "app");
    assert_eq!(cat.secrets["db-pw"].file, dir.join("db.yml"));
}

#[test]
fn long_syntax_with_project_directory_resolves_paths_and_reads_its_env() {
    let f = Fixture::new();
    f.write(
        STACK,
        "include:\n  - path: ../lib/svc.yml\n    project_directory: ./proj\nservices:\n  web: {image: web}\n",
    );
    f.write(
        "04-data/lib/svc.yml",
        "services:\n  svc:\n    image: svc:${SVC_TAG}\n    volumes: [./conf:/etc/svc]\n    build: ./src\n",
    );
    f.write("04-data/app/proj/.env", "SVC_TAG=7\n");
    let cat = f.ok();
    let proj = f.root().join("04-data/app/proj");
    assert_eq!(bind_source(&cat, "svc"), proj.join("conf"));
    let build = cat.services["svc"].build.clone().expect("build");
    assert_eq!(PathBuf::from(build.context), proj.join("src"));
    assert_eq!(cat.services["svc"].image.as_deref(), Some("svc:7"));
    // Its file stays the included one.
    assert_eq!(cat.services["svc"].file, f.root().join("04-data/lib/svc.yml"));
}

#[test]
fn env_file_gives_defaults_under_the_catalog_env_and_the_process_environment() {
    let f = Fixture::new();
    f.write(".env", "TAG=catalog\n");
    f.write(
        STACK,
        "include:\n  - path: inc/inc.yml\n    env_file: [inc/a.env, inc/b.env]\nservices:\n  web:\n    image: web:${ONLY_INC:-unset}\n",
    );
    f.write(
        "04-data/app/inc/inc.yml",
        "services:\n  inc:\n    image: inc:${TAG}-${ONLY_INC}-${FROM_PROC}-${LATER}\n    environment: [ONLY_INC]\n",
    );
    f.write(
        "04-data/app/inc/a.env",
        "TAG=inc\nONLY_INC=yes\nFROM_PROC=inc\nLATER=a\n",
    );
    f.write("04-data/app/inc/b.env", "LATER=b\n");
    // A `.env` beside the included file is not read when env_file is given.
    f.write("04-data/app/inc/.env", "ONLY_INC=dotenv\n");
    let opts = LoadOptions {
        env: BTreeMap::from([("FROM_PROC".to_string(), "proc".to_string())]),
        ..LoadOptions::default()
    };
    let cat = f.load_with(&opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cat.services["inc"].image.as_deref(), Some("inc:catalog-yes-proc-b"));
    assert_eq!(cat.services["inc"].environment["ONLY_INC"], "yes");
    // The including file does not see the included file's variables.
    assert_eq!(cat.services["web"].image.as_deref(), Some("web:unset"));
}

#[test]
fn a_missing_include_env_file_is_an_error_at_its_line() {
    let f = Fixture::new();
    let stack = f.write(
        STACK,
        "include:\n  - path: inc.yml\n    env_file: nope.env\nservices:\n  web: {image: web}\n",
    );
    f.write("04-data/app/inc.yml", "services:\n  inc: {image: inc}\n");
    let e = f.err();
    assert_eq!(e.kind(), LoadErrorKind::MissingFile);
    assert_eq!(e.file(), stack);
    assert_eq!(e.line(), Some(3));
    assert!(e.message().contains("nope.env"), "{e}");
}

#[test]
fn a_list_of_paths_is_merged_as_overrides_in_order() {
    let f = Fixture::new();
    f.write(
        STACK,
        "include:\n  - path: [base/base.yml, base/local.yml]\nservices:\n  web: {image: web}\n",
    );
    let base = f.write(
        "04-data/app/base/base.yml",
        "services:\n  api:\n    image: api:1\n    environment: {A: \"1\", B: \"1\"}\n    volumes: [./data:/data]\n",
    );
    let local = f.write(
        "04-data/app/base/local.yml",
        "services:\n  api:\n    image: api:2\n    environment: {B: \"2\"}\n  worker:\n    image: worker:1\n    volumes: [./cache:/cache]\n",
    );
    let cat = f.ok();
    let api = &cat.services["api"];
    assert_eq!(api.image.as_deref(), Some("api:2"));
    assert_eq!(api.environment["A"], "1");
    assert_eq!(api.environment["B"], "2");
    assert_eq!(api.file, base);
    // Both files resolve against the project directory (the first file's).
    let dir = f.root().join("04-data/app/base");
    assert_eq!(bind_source(&cat, "api"), dir.join("data"));
    assert_eq!(bind_source(&cat, "worker"), dir.join("cache"));
    assert_eq!(cat.services["worker"].file, local);
    assert!(cat.files.contains(&base) && cat.files.contains(&local));
}

#[test]
fn includes_nest_and_pass_the_tier_down() {
    let f = Fixture::new();
    f.write(STACK, "include: [a/one.yml]\nservices:\n  web: {image: web}\n");
    f.write(
        "04-data/app/a/one.yml",
        "include: [../b/two.yml]\nservices:\n  one: {image: one, depends_on: [two]}\n",
    );
    let two = f.write(
        "04-data/app/b/two.yml",
        "services:\n  two:\n    image: two\n    volumes: [./x:/x]\n",
    );
    let cat = f.ok();
    assert_eq!(cat.services["one"].tier, Tier::Data);
    assert_eq!(cat.services["two"].tier, Tier::Data);
    assert_eq!(cat.services["two"].file, two);
    assert_eq!(bind_source(&cat, "two"), f.root().join("04-data/app/b/x"));
    assert_eq!(cat.includes.len(), 2);
    assert_eq!(cat.files.len(), 3);
}

#[test]
fn an_included_file_in_another_tier_folder_takes_that_tier() {
    let f = Fixture::new();
    f.write(
        STACK,
        "include:\n  - ../../06-observability/exporters/pg.yml\n  - ../../../vendor/tool.yml\n  - ../common.yml\nservices:\n  web: {image: web}\n",
    );
    f.write(
        "06-observability/exporters/pg.yml",
        "services:\n  pg-exporter: {image: e}\n",
    );
    f.write("04-data/common.yml", "services:\n  common: {image: c}\n");
    let vendor = f.dir.path().join("vendor/tool.yml");
    std::fs::create_dir_all(vendor.parent().unwrap()).unwrap();
    std::fs::write(&vendor, "services:\n  tool: {image: t}\n").unwrap();
    let cat = f.ok();
    assert_eq!(cat.services["pg-exporter"].tier, Tier::Observability);
    assert_eq!(cat.services["tool"].tier, Tier::Data);
    assert_eq!(cat.services["common"].tier, Tier::Data);
    assert_eq!(cat.services["web"].tier, Tier::Data);
}

#[test]
fn explicit_tiers_of_load_files_pass_to_files_beside_them() {
    let f = Fixture::new();
    let stack = f.write(STACK, "include: [extra.yml]\nservices:\n  web: {image: web}\n");
    f.write("04-data/app/extra.yml", "services:\n  extra: {image: x}\n");
    let cat = load_files(&[(stack, Tier::Tooling)], &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cat.services["extra"].tier, Tier::Tooling);
}

#[test]
fn an_include_cycle_is_an_error_naming_the_files() {
    let f = Fixture::new();
    let stack = f.write(STACK, "include: [one.yml]\nservices:\n  web: {image: web}\n");
    let one = f.write("04-data/app/one.yml", "include: [two.yml]\n");
    let two = f.write(
        "04-data/app/two.yml",
        "services:\n  two: {image: two}\ninclude:\n  - one.yml\n",
    );
    let e = f.err();
    assert_eq!(e.file(), two);
    assert_eq!(e.line(), Some(4));
    let msg = e.to_string();
    assert!(msg.contains("include cycle"), "{msg}");
    let chain = format!("{} -> {} -> {}", one.display(), two.display(), one.display());
    assert!(msg.contains(&chain), "{msg}");
    // The loop starts at one.yml: the stack is not part of it.
    assert!(!msg.contains(&format!("{} ->", stack.display())), "{msg}");
    // A file including itself.
    let f = Fixture::new();
    f.write(STACK, "include: [docker-compose.yml]\nservices:\n  web: {image: web}\n");
    let e = f.err();
    assert!(e.message().contains("include cycle"), "{e}");
    assert_eq!(e.line(), Some(1));
}

#[test]
fn a_service_defined_by_the_includer_and_the_included_file_is_a_conflict() {
    let f = Fixture::new();
    let stack = f.write(
        STACK,
        "include:\n  - extra.yml\nservices:\n  other: {image: o}\n  web:\n    image: web:1\n",
    );
    let extra = f.write("04-data/app/extra.yml", "services:\n  web:\n    image: web:2\n");
    let e = f.err();
    assert_eq!(e.kind(), LoadErrorKind::Duplicate);
    assert_eq!(e.file(), stack);
    assert_eq!(e.line(), Some(5));
    assert_eq!(e.service_name(), Some("web"));
    let msg = e.to_string();
    assert!(msg.contains(&format!("{}:5", stack.display())), "{msg}");
    assert!(
        msg.contains(&format!("{}:2 (included from {}:2)", extra.display(), stack.display())),
        "{msg}"
    );
}

#[test]
fn two_included_files_defining_one_name_conflict_unless_identical() {
    let f = Fixture::new();
    f.write(
        STACK,
        "include: [a.yml, b.yml]\nservices:\n  web: {image: web, networks: [infra_net]}\nnetworks:\n  infra_net: {}\n",
    );
    let a = f.write(
        "04-data/app/a.yml",
        "services:\n  x: {image: x, networks: [infra_net]}\nnetworks:\n  infra_net: {}\n",
    );
    let b = f.write(
        "04-data/app/b.yml",
        "networks:\n  infra_net: {}\nservices:\n  y: {image: y}\n  x:\n    image: other\n",
    );
    let e = f.err();
    assert_eq!(e.kind(), LoadErrorKind::Duplicate);
    assert_eq!(e.file(), b);
    assert_eq!(e.line(), Some(5));
    let msg = e.to_string();
    assert!(msg.contains(&format!("{}:2", a.display())), "{msg}");
    assert!(msg.contains(&format!("{}:5", b.display())), "{msg}");
    // Identical definitions (the shared network, a service defined the same
    // way) count once.
    f.write(
        "04-data/app/b.yml",
        "networks:\n  infra_net: {}\nservices:\n  y: {image: y}\n  x: {image: x, networks: [infra_net]}\n",
    );
    let cat = f.ok();
    assert!(cat.services.contains_key("x") && cat.services.contains_key("y"));
    assert_eq!(cat.services["x"].file, a);
    assert_eq!(cat.networks.len(), 1);
    assert_eq!(cat.files.len(), 3);
}

#[test]
fn a_network_defined_differently_by_an_included_file_is_a_conflict() {
    let f = Fixture::new();
    let stack = f.write(
        STACK,
        "include: [extra.yml]\nservices:\n  web: {image: web}\nnetworks:\n  back: {internal: true}\n",
    );
    f.write("04-data/app/extra.yml", "networks:\n  back: {}\n");
    let e = f.err();
    assert_eq!(e.kind(), LoadErrorKind::Duplicate);
    assert_eq!(e.file(), stack);
    assert_eq!(e.line(), Some(5));
    assert_eq!(e.key_path(), Some("networks.back"));
    assert!(e.message().starts_with("network \"back\" is defined both in"), "{e}");
}

#[test]
fn a_missing_included_file_is_an_error_at_the_include_line() {
    let f = Fixture::new();
    let stack = f.write(
        STACK,
        "services:\n  web: {image: web}\ninclude:\n  - ok.yml\n  - nope.yml\n",
    );
    f.write("04-data/app/ok.yml", "services:\n  ok: {image: ok}\n");
    let e = f.err();
    assert_eq!(e.kind(), LoadErrorKind::MissingFile);
    assert_eq!(e.file(), stack);
    assert_eq!(e.line(), Some(5));
    let nope = f.root().join("04-data/app/nope.yml");
    assert!(e.message().contains(&nope.display().to_string()), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("{}:5: include[1]: included file", stack.display())),
        "{e}"
    );
}

#[test]
fn an_included_file_over_the_size_limit_is_refused() {
    let f = Fixture::new();
    let stack = f.write(STACK, "include: [big.yml]\nservices:\n  web: {image: web}\n");
    let mut big = String::from("x-pad: |\n");
    while big.len() as u64 <= MAX_FILE_BYTES {
        big.push_str("  0123456789012345678901234567890123456789012345678901234567890123456789\n");
    }
    f.write("04-data/app/big.yml", &big);
    let e = f.err();
    assert_eq!(e.kind(), LoadErrorKind::TooLarge);
    assert_eq!(e.file(), stack);
    assert_eq!(e.line(), Some(1));
    assert!(e.message().contains("big.yml"), "{e}");
}

#[test]
fn malformed_include_entries_are_errors() {
    let f = Fixture::new();
    let stack = f.write(STACK, "services:\n  web: {image: web}\ninclude:\n  - pth: a.yml\n");
    let e = f.err();
    assert_eq!(e.kind(), LoadErrorKind::UnknownKey);
    assert_eq!(e.file(), stack);
    assert_eq!(e.line(), Some(4));
    assert!(e.message().contains("did you mean \"path\""), "{e}");

    f.write(STACK, "include:\n  - project_directory: .\n");
    let e = f.err();
    assert_eq!(e.kind(), LoadErrorKind::InvalidValue);
    assert!(e.message().contains("needs a `path`"), "{e}");

    f.write(STACK, "include: a.yml\n");
    let e = f.err();
    assert!(e.message().contains("expected a list"), "{e}");
}

#[test]
fn an_include_in_an_override_file_is_refused() {
    let f = Fixture::new();
    f.write(STACK, "services:\n  web: {image: web}\n");
    let over = f.dir.path().join("local.override.yml");
    std::fs::write(&over, "include: [x.yml]\nservices:\n  web: {image: web:2}\n").unwrap();
    let opts = LoadOptions {
        overrides: vec![over.clone()],
        ..LoadOptions::default()
    };
    let e = f.load_with(&opts).expect_err("refused");
    assert_eq!(e.kind(), LoadErrorKind::Override);
    assert_eq!(e.file(), over);
    assert_eq!(e.line(), Some(1));
}

#[test]
fn one_file_included_by_two_stacks_duplicates_its_services() {
    let f = Fixture::new();
    f.write(STACK, "include: [../common.yml]\nservices:\n  web: {image: web}\n");
    let other = f.write(
        "04-data/other/docker-compose.yml",
        "include: [../common.yml]\nservices:\n  api: {image: api}\n",
    );
    f.write("04-data/common.yml", "services:\n  shared: {image: s}\n");
    let e = f.err();
    assert_eq!(e.kind(), LoadErrorKind::Duplicate);
    assert!(
        e.message().contains(&format!("(included from {}:1)", other.display())),
        "{e}"
    );
    // A file with only the shared network may be included by every stack.
    f.write("04-data/common.yml", "networks:\n  infra_net: {}\n");
    let cat = f.ok();
    assert_eq!(
        cat.files.iter().filter(|p| p.ends_with("common.yml")).count(),
        1,
        "{:?}",
        cat.files
    );
    assert!(cat.networks.contains_key("infra_net"));
}

#[test]
fn secrets_of_included_files_outside_the_catalog_are_refused() {
    let f = Fixture::new();
    f.write(
        STACK,
        "include: [../../../vendor/v.yml]\nservices:\n  web: {image: web}\n",
    );
    let vendor = f.dir.path().join("vendor");
    std::fs::create_dir_all(&vendor).unwrap();
    std::fs::write(vendor.join("pw.txt"), "x").unwrap();
    std::fs::write(
        vendor.join("v.yml"),
        "services:\n  v: {image: v, secrets: [pw]}\nsecrets:\n  pw: {file: ./pw.txt}\n",
    )
    .unwrap();
    let e = f.err();
    assert_eq!(e.kind(), LoadErrorKind::OutsideCatalog);
    assert_eq!(e.file(), vendor.join("v.yml"));
    // ... unless the coordinator allows that directory.
    let opts = LoadOptions {
        secret_dirs: vec![vendor.clone()],
        ..LoadOptions::default()
    };
    let cat = f.load_with(&opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(secret_file(&cat, "pw"), vendor.join("pw.txt"));
}
