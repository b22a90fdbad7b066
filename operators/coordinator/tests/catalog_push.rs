//! The catalog on the bus, in process against a real nats-server: a
//! coordinator with no catalog folder plans only from what was pushed;
//! pushes are numbered, an unchanged one is not a new revision, a bad one
//! is refused with the pusher's file and line and the current revision
//! stays; every coordinator plans from the same revision; a coordinator
//! with a catalog folder publishes it when it changes.

use std::time::Duration;

use infra_bus::Bus;
use infra_bus::testing::NatsServer;
use infra_coordinator::catalog::revision;
use infra_coordinator::{Coordinator, ObservedCache, Settings};
use infra_proto::coordinator::v1 as api;

async fn bus(server: &NatsServer) -> Bus {
    server.bus().await
}

fn coordinator(bus: &Bus, id: &str, compose_dir: Option<&std::path::Path>) -> Coordinator {
    let settings = Settings {
        id: id.into(),
        project: "push".into(),
        compose_dir: compose_dir.map(std::path::Path::to_owned),
        catalog_replicas: 1,
        overrides: Vec::new(),
        env_file: None,
        secret_dirs: Vec::new(),
        deploy_timeout: Duration::from_secs(20),
        max_replicas: 10,
        host_lost_after: Duration::from_secs(30),
        heartbeat_ttl: Duration::from_secs(30),
        join: None,
    };
    Coordinator::new(settings, bus.clone(), ObservedCache::default())
}

fn write(root: &std::path::Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn stack(image: &str) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    volumes:\n      - ./site.conf:/etc/site.conf:ro\n  db:\n    image: x/db:1\n"
    )
}

fn request(dir: &std::path::Path, source: &str) -> api::PushCatalogRequest {
    let rev = revision::pack(dir, &[], None).unwrap();
    api::PushCatalogRequest {
        files: rev.files,
        overrides: rev.overrides,
        env_file: rev.env_file,
        source: source.into(),
        git_commit: String::new(),
    }
}

fn images(plan: &api::PlanResponse) -> Vec<(String, String)> {
    plan.steps
        .iter()
        .map(|s| (s.service.clone(), s.image.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_revisions_are_numbered_checked_and_shared_by_every_coordinator() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let a = coordinator(&bus, "a", None);
    let b = coordinator(&bus, "b", None);

    // Nothing pushed: nothing to plan, and the answer says what to do.
    let e = Box::pin(a.plan(None)).await.unwrap_err().to_string();
    assert!(e.contains("infractl catalog push"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "04-data/app/docker-compose.yml", &stack("x/web:1"));
    write(dir.path(), "04-data/app/site.conf", "listen 80;\n");
    let (head, new) = Box::pin(a.push_catalog(request(dir.path(), "my-catalog")))
        .await
        .unwrap();
    assert_eq!((head.number, new, head.files), (1, true, 2));
    assert_eq!(head.source, "my-catalog");
    assert_eq!(head.pushed_by, "infractl");

    // The same files again: no new revision.
    let (head, new) = Box::pin(a.push_catalog(request(dir.path(), "my-catalog")))
        .await
        .unwrap();
    assert_eq!((head.number, new), (1, false));

    // The other coordinator, with no copy of its own, plans from it.
    let plan = Box::pin(b.plan(None)).await.unwrap();
    assert_eq!(plan.catalog.as_ref().map(|c| c.number), Some(1));
    assert_eq!(
        images(&plan),
        [("db".to_owned(), "x/db:1".to_owned()), ("web".into(), "x/web:1".into())]
    );

    // A bad catalog is refused with the pusher's file and line; the
    // current revision stays.
    write(
        dir.path(),
        "04-data/app/docker-compose.yml",
        "services:\n  web:\n    image: [unclosed\n",
    );
    let e = Box::pin(a.push_catalog(request(dir.path(), "my-catalog")))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("my-catalog/04-data/app/docker-compose.yml:"), "{e}");
    assert!(!e.contains("infra-push-"), "no scratch path in the message: {e}");
    let (current, _) = b.catalog_history().await.unwrap();
    assert_eq!(current.map(|c| c.number), Some(1));

    // A good change is the next revision, for everyone.
    write(dir.path(), "04-data/app/docker-compose.yml", &stack("x/web:2"));
    let (head, new) = Box::pin(a.push_catalog(request(dir.path(), "my-catalog")))
        .await
        .unwrap();
    assert_eq!((head.number, new), (2, true));
    let plan = Box::pin(b.plan(None)).await.unwrap();
    assert_eq!(plan.catalog.as_ref().map(|c| c.number), Some(2));
    assert!(images(&plan).contains(&("web".into(), "x/web:2".into())));
    let (_, history) = b.catalog_history().await.unwrap();
    let numbers: Vec<u64> = history.iter().map(|h| h.number).collect();
    assert_eq!(numbers, [2, 1]);

    // A coordinator with a catalog folder publishes it when it differs,
    // once.
    let local = tempfile::tempdir().unwrap();
    write(local.path(), "04-data/app/docker-compose.yml", &stack("x/web:3"));
    write(local.path(), "04-data/app/site.conf", "listen 8080;\n");
    let c = coordinator(&bus, "c", Some(local.path()));
    let plan = Box::pin(c.plan(None)).await.unwrap();
    let head = plan.catalog.unwrap();
    assert_eq!((head.number, head.pushed_by.as_str()), (3, "c"));
    let plan = Box::pin(c.plan(None)).await.unwrap();
    assert_eq!(plan.catalog.map(|h| h.number), Some(3), "unchanged: no new revision");
    let plan = Box::pin(b.plan(None)).await.unwrap();
    assert!(images(&plan).contains(&("web".into(), "x/web:3".into())));

    // A push meanwhile stays current while c's folder does not change;
    // a change to the folder is published again.
    write(dir.path(), "04-data/app/docker-compose.yml", &stack("x/web:4"));
    let (head, _) = Box::pin(a.push_catalog(request(dir.path(), "my-catalog")))
        .await
        .unwrap();
    assert_eq!(head.number, 4);
    let plan = Box::pin(c.plan(None)).await.unwrap();
    assert_eq!(plan.catalog.map(|h| h.number), Some(4), "the push stays current");
    write(local.path(), "04-data/app/site.conf", "listen 8081;\n");
    let plan = Box::pin(c.plan(None)).await.unwrap();
    assert_eq!(plan.catalog.map(|h| (h.number, h.pushed_by)), Some((5, "c".to_owned())));
}

#[test]
fn a_link_out_of_the_pushed_folder_is_refused_and_git_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "shadow", "root:secret\n");
    write(dir.path(), "04-data/app/docker-compose.yml", &stack("x/web:1"));
    write(dir.path(), ".git/HEAD", "ref: refs/heads/main\n");
    let rev = revision::pack(dir.path(), &[], None).unwrap();
    assert!(rev.files.iter().all(|f| !f.path.starts_with(".git")));
    std::os::unix::fs::symlink(outside.path().join("shadow"), dir.path().join("04-data/app/leak")).unwrap();
    let e = revision::pack(dir.path(), &[], None).unwrap_err();
    assert!(e.contains("outside the catalog") && e.contains("leak"), "{e}");
}
