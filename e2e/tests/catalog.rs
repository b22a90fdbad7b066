//! The catalog on the bus, through the real coordinators, operators, NATS,
//! Docker engine, `infractl` and `grpcurl`: two coordinators with no
//! catalog folder of their own; `infractl catalog push` publishes a folder
//! as numbered revisions; a deploy names the revision it came from and the
//! files the stack mounts reach the containers through the bus; a bad push
//! is refused with the file and line and changes nothing; after the
//! leader dies, the other coordinator deploys the newest revision, which
//! it never had on its disk.
//!
//! Images: `infra-local/nginx:1`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use infra_e2e::{Options, Platform, bin_dir, call_at, write};

fn infractl(addr: &str, args: &[&str]) -> Output {
    Command::new(bin_dir("debug").join("infractl"))
        .args(["--addr", &format!("http://{addr}")])
        .args(args)
        .output()
        .expect("infractl built")
}

fn stack() -> &'static str {
    r#"services:
  site:
    image: infra-local/nginx:1
    volumes:
      - ./html:/usr/share/nginx/html:ro
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1/"]
      interval: 1s
      timeout: 2s
      retries: 3
"#
}

/// The page every running `site` container serves.
fn page(p: &Platform) -> String {
    let ids = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=io.infra.project={}", p.opts.project),
            "--filter",
            "label=io.infra.service=site",
        ])
        .output()
        .unwrap();
    let pages: Vec<String> = String::from_utf8_lossy(&ids.stdout)
        .split_whitespace()
        .map(|id| infra_e2e::docker_exec(id, &["cat", "/usr/share/nginx/html/index.html"]))
        .collect();
    assert_eq!(pages.len(), 1, "one site container: {pages:?}");
    pages[0].clone()
}

fn pushed(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "infractl catalog push: {text}");
    text
}

#[test]
fn coordinators_with_no_catalog_of_their_own_deploy_the_pushed_revision_and_a_bad_push_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog");
    write(&catalog, "01-gateway/site/docker-compose.yml", stack());
    write(&catalog, "01-gateway/site/html/index.html", "revision one\n");
    let mut o = Options::over("catalogbus", Path::new("/nonexistent"), &["gateway"]);
    o.push_only = true;
    o.coordinators = 2;
    let mut p = Platform::start(o);

    // Nothing pushed yet: a deploy says what to do.
    let out = infra_e2e::grpcurl_at(
        &p.grpcs[p.leader()],
        &["infra.coordinator.v1.CoordinatorService/Deploy"],
        Some("{}"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("infractl catalog push"), "{err}");

    let text = pushed(&infractl(&p.grpc, &["catalog", "push", &catalog.display().to_string()]));
    assert!(text.contains("published revision 1"), "{text}");
    let progress = call_at(&p.grpcs[p.leader()], "Deploy", r#"{"timeoutSeconds":60}"#);
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 1, "{progress:#?}\n{}", p.all_logs());
    assert_eq!(done["catalogRevision"], "1", "the deploy names its revision: {done}");
    assert_eq!(page(&p), "revision one");

    // A bad catalog: refused with the file and line, the current revision
    // stays, nothing runs differently.
    write(
        &catalog,
        "01-gateway/site/docker-compose.yml",
        "services:\n  site:\n    image: [unclosed\n",
    );
    let out = infractl(&p.grpc, &["catalog", "push", &catalog.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a bad catalog is refused");
    assert!(
        err.contains(&format!("{}/01-gateway/site/docker-compose.yml:", catalog.display())),
        "names the pushed file: {err}"
    );
    let show = pushed(&infractl(&p.grpc, &["catalog", "show"]));
    assert!(show.contains("current: revision 1 "), "{show}");

    // A changed page is the next revision; unchanged files are not.
    write(&catalog, "01-gateway/site/docker-compose.yml", stack());
    write(&catalog, "01-gateway/site/html/index.html", "revision two\n");
    let text = pushed(&infractl(&p.grpc, &["catalog", "push", &catalog.display().to_string()]));
    assert!(text.contains("published revision 2"), "{text}");
    let text = pushed(&infractl(&p.grpc, &["catalog", "push", &catalog.display().to_string()]));
    assert!(text.contains("unchanged: revision 2"), "{text}");
    // Not deployed yet: the running page is still the first.
    assert_eq!(page(&p), "revision one");

    // The leader dies; the other coordinator, which never had the catalog
    // on its disk, deploys the newest revision.
    let lead = p.leader();
    let (dead, other) = (lead, 1 - lead);
    p.kill(&Platform::coordinator_name(dead));
    let addr = p.grpcs[other].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let progress = loop {
        let out = infra_e2e::grpcurl_at(
            &addr,
            &["infra.coordinator.v1.CoordinatorService/Deploy"],
            Some(r#"{"timeoutSeconds":60}"#),
        );
        if out.status.success() {
            break infra_e2e::parse_json_stream(&String::from_utf8_lossy(&out.stdout));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the other coordinator leads within a minute: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 1, "{progress:#?}\n{}", p.all_logs());
    assert_eq!(done["catalogRevision"], "2", "{done}");
    assert_eq!(page(&p), "revision two");
    let plan = call_at(&addr, "Plan", "{}");
    assert_eq!(plan[0]["catalog"]["number"], "2", "{plan:#?}");
}
