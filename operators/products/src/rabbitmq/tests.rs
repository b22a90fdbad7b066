//! The RabbitMQ hook against recorded management API answers (RabbitMQ
//! 3.10.8 from Debian, three nodes, a quorum queue `orders` and a classic
//! queue `plain`), one listener per node, each checking basic auth.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::*;
use crate::SecretReader;

const PW: &str = "s3cret";

/// `GET /api/nodes?columns=name,running,partitions`, all three running.
const NODES_UP: &str = r#"[{"partitions":[],"name":"rabbit@rabbit-0","running":true},{"partitions":[],"name":"rabbit@rabbit-1","running":true},{"partitions":[],"name":"rabbit@rabbit-2","running":true}]"#;
/// The same with rabbit-2 stopped.
const NODES_2_DOWN: &str = r#"[{"partitions":[],"name":"rabbit@rabbit-0","running":true},{"partitions":[],"name":"rabbit@rabbit-1","running":true},{"name":"rabbit@rabbit-2","running":false}]"#;
/// `GET /api/queues?columns=...`, every member online.
const QUEUES_UP: &str = r#"[{"leader":"rabbit@rabbit-0","members":["rabbit@rabbit-0","rabbit@rabbit-2","rabbit@rabbit-1"],"name":"orders","online":["rabbit@rabbit-0","rabbit@rabbit-2","rabbit@rabbit-1"],"type":"quorum","vhost":"/"},{"name":"plain","node":"rabbit@rabbit-0","type":"classic","vhost":"/"}]"#;
/// Seconds after rabbit-2 came back: its node runs, one copy of `online`
/// still misses it (3.10 lists `online` twice while they differ).
const QUEUES_2_CATCHING_UP: &str = r#"[{"members":["rabbit@rabbit-0","rabbit@rabbit-2","rabbit@rabbit-1"],"name":"orders","node":"rabbit@rabbit-0","online":["rabbit@rabbit-0","rabbit@rabbit-1"],"online":["rabbit@rabbit-0","rabbit@rabbit-2","rabbit@rabbit-1"],"type":"quorum","vhost":"/"},{"name":"plain","node":"rabbit@rabbit-0","type":"classic","vhost":"/"}]"#;
/// A mirrored classic queue whose mirror on rabbit-1 is not synchronised.
const QUEUES_MIRROR_LAGGING: &str = r#"[{"name":"legacy","node":"rabbit@rabbit-0","slave_nodes":["rabbit@rabbit-1","rabbit@rabbit-2"],"synchronised_slave_nodes":["rabbit@rabbit-2"],"type":"classic","vhost":"/"}]"#;
/// `GET /api/health/checks/node-is-quorum-critical` passing and failing.
const CHECK_OK: &str = r#"{"status":"ok"}"#;
const QUORUM_CRITICAL: &str = r#"{"status":"failed","reason":"There are quorum queues that would lose their quorum if the target node is shut down","queues":[{"name":"orders","readable_name":"queue 'orders' in vhost '/'","type":"quorum","virtual_host":"/"}]}"#;

#[derive(Default)]
struct Fake {
    nodes: &'static str,
    queues: &'static str,
    /// Node index whose quorum-critical check fails.
    critical: Option<usize>,
    /// Requests that came with the right credentials.
    authorised: usize,
}

async fn serve_node(fake: Arc<Mutex<Fake>>, me: usize) -> u16 {
    let server = infra_test_support::fake_http::start_with(move |r| {
        // The request as text: its first line, then its headers.
        let mut req = format!("{} {} HTTP/1.1\r\n", r.method, r.path);
        for (k, v) in &r.headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let (code, out) = answer(&fake, me, &req);
        infra_test_support::fake_http::Reply::new(code, out).header("server", "Cowboy")
    })
    .await;
    let port = server.port;
    // The fake lives as long as the test's runtime.
    std::mem::forget(server);
    port
}

fn answer(fake: &Mutex<Fake>, me: usize, req: &str) -> (u16, String) {
    let mut f = fake.lock().unwrap();
    let want = format!("authorization: basic {}", base64(format!("admin:{PW}").as_bytes())).to_lowercase();
    if !req.lines().any(|l| l.to_lowercase() == want) {
        return (401, r#"{"error":"not_authorized","reason":"Not_Authorized"}"#.into());
    }
    f.authorised += 1;
    let first = req.lines().next().unwrap_or("");
    let path = first.split_whitespace().nth(1).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/api/nodes" => (200, f.nodes.into()),
        "/api/queues" => (200, f.queues.into()),
        "/api/health/checks/node-is-quorum-critical" if f.critical == Some(me) => (503, QUORUM_CRITICAL.into()),
        "/api/health/checks/node-is-quorum-critical" => (200, CHECK_OK.into()),
        // RabbitMQ 4 has no mirroring and no such check.
        "/api/health/checks/node-is-mirror-sync-critical" => {
            (404, r#"{"error":"Object Not Found","reason":"Not Found"}"#.into())
        }
        _ => (404, r#"{"error":"Object Not Found","reason":"Not Found"}"#.into()),
    }
}

async fn cluster(f: &Arc<Mutex<Fake>>) -> Vec<Member> {
    let mut ms = Vec::new();
    for i in 0..3 {
        ms.push(Member {
            name: format!("rabbit-{i}"),
            host: "local".into(),
            replica: 1,
            addr: "127.0.0.1".into(),
            port: serve_node(f.clone(), i).await,
        });
    }
    ms
}

fn fake(nodes: &'static str, queues: &'static str) -> Arc<Mutex<Fake>> {
    Arc::new(Mutex::new(Fake {
        nodes,
        queues,
        ..Fake::default()
    }))
}

fn hook() -> RabbitMq {
    RabbitMq {
        user: "admin".into(),
        password_secret: None,
        password: Some(Secret(PW.into())),
        secrets: Secrets::default(),
    }
}

#[tokio::test]
async fn a_node_may_restart_when_the_cluster_is_whole_and_it_is_not_quorum_critical() {
    let f = fake(NODES_UP, QUEUES_UP);
    let ms = cluster(&f).await;
    hook().before_restart(&ms[1], &ms).await.unwrap();
    assert!(f.lock().unwrap().authorised >= 3);
    assert_eq!(hook().order(&ms).await, vec![0, 1, 2]);
}

#[tokio::test]
async fn a_quorum_critical_node_is_refused_naming_the_queue() {
    let f = fake(NODES_UP, QUEUES_UP);
    f.lock().unwrap().critical = Some(0);
    let ms = cluster(&f).await;
    let e = hook().before_restart(&ms[0], &ms).await.unwrap_err().0;
    assert!(e.contains("rabbit-0 must not restart now"), "{e}");
    assert!(e.contains("node-is-quorum-critical"), "{e}");
    assert!(e.contains("orders (vhost /)"), "{e}");
    // The check is the node's own: the others may go.
    hook().before_restart(&ms[1], &ms).await.unwrap();
}

#[tokio::test]
async fn no_node_restarts_while_another_is_down() {
    let f = fake(NODES_2_DOWN, QUEUES_UP);
    let ms = cluster(&f).await;
    let e = hook().before_restart(&ms[0], &ms).await.unwrap_err().0;
    assert!(e.contains("rabbit@rabbit-2 is not running"), "{e}");
}

#[tokio::test]
async fn the_next_node_waits_until_the_restarted_one_runs_and_every_copy_of_online_lists_it() {
    let f = fake(NODES_2_DOWN, QUEUES_2_CATCHING_UP);
    let ms = cluster(&f).await;
    let f2 = f.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        f2.lock().unwrap().nodes = NODES_UP;
        tokio::time::sleep(Duration::from_millis(800)).await;
        f2.lock().unwrap().queues = QUEUES_UP;
    });
    let t = Instant::now();
    hook()
        .ready_for_next(&ms[2], &ms, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(1600), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_node_whose_queue_members_stay_offline_stops_the_roll_naming_them() {
    let f = fake(NODES_UP, QUEUES_2_CATCHING_UP);
    let ms = cluster(&f).await;
    let e = hook()
        .ready_for_next(&ms[2], &ms, Duration::from_secs(1))
        .await
        .unwrap_err()
        .0;
    assert!(
        e.contains("rabbit-2 was not back in the cluster with its queues online within 1s"),
        "{e}"
    );
    assert!(
        e.contains("quorum queue orders (vhost /) has 2 of 3 members online (rabbit@rabbit-2 not)"),
        "{e}"
    );
}

#[tokio::test]
async fn an_unsynchronised_mirror_is_not_ready() {
    let f = fake(NODES_UP, QUEUES_MIRROR_LAGGING);
    let ms = cluster(&f).await;
    let e = hook()
        .ready_for_next(&ms[1], &ms, Duration::from_secs(1))
        .await
        .unwrap_err()
        .0;
    assert!(
        e.contains("classic queue legacy (vhost /) has mirrors not synchronised on rabbit@rabbit-1"),
        "{e}"
    );
}

#[tokio::test]
async fn refused_credentials_are_named_without_the_password() {
    let f = fake(NODES_UP, QUEUES_UP);
    let ms = cluster(&f).await;
    let wrong = RabbitMq {
        password: Some(Secret("not-the-password".into())),
        ..hook()
    };
    let e = wrong.before_restart(&ms[0], &ms).await.unwrap_err().0;
    assert!(
        e.contains("401") && e.contains("\"admin\"") && e.contains(PASSWORD_SECRET_LABEL),
        "{e}"
    );
    assert!(!e.contains("not-the-password") && !e.contains(PW), "{e}");
    assert!(!format!("{wrong:?}").contains("not-the-password"));
}

struct Map(BTreeMap<String, Vec<u8>>);

impl SecretReader for Map {
    fn read<'a>(&'a self, name: &'a str) -> HookFuture<'a, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move { Ok(self.0.get(name).cloned()) })
    }
}

#[tokio::test]
async fn the_password_comes_from_the_secret_the_label_names() {
    let secrets = Secrets::from(Arc::new(Map([(
        "rabbitmq_password".to_owned(),
        format!("{PW}\n").into_bytes(),
    )]
    .into_iter()
    .collect())));
    let f = fake(NODES_UP, QUEUES_UP);
    let ms = cluster(&f).await;
    let labels = |secret: &str| -> BTreeMap<String, String> {
        [
            (USER_LABEL.to_owned(), "admin".to_owned()),
            (PASSWORD_SECRET_LABEL.to_owned(), secret.to_owned()),
        ]
        .into_iter()
        .collect()
    };
    let h = RabbitMq::from_labels(&labels("rabbitmq_password"), &secrets).unwrap();
    h.before_restart(&ms[0], &ms).await.unwrap();
    let e = RabbitMq::from_labels(&labels("missing"), &secrets)
        .unwrap()
        .before_restart(&ms[0], &ms)
        .await
        .unwrap_err()
        .0;
    assert!(e.contains("secret \"missing\" is not in the secrets bucket"), "{e}");
}

#[test]
fn labels_choose_the_user_and_default_to_guest() {
    let h = RabbitMq::from_labels(&BTreeMap::new(), &Secrets::default()).unwrap();
    assert_eq!(h.user, "guest");
    assert!(h.password_secret.is_none());
    let bad: BTreeMap<String, String> = [(USER_LABEL.to_owned(), "a:b".to_owned())].into_iter().collect();
    assert!(
        RabbitMq::from_labels(&bad, &Secrets::default())
            .unwrap_err()
            .0
            .contains(USER_LABEL)
    );
}

#[test]
fn base64_is_rfc_4648() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"admin:s3cret"), "YWRtaW46czNjcmV0");
}

#[test]
fn nodes_match_their_service_by_host_part() {
    assert!(is_node_of("rabbit@rabbit-0", "rabbit-0"));
    assert!(is_node_of("rabbit@rabbit-0.example.internal", "rabbit-0"));
    assert!(!is_node_of("rabbit@rabbit-00", "rabbit-0"));
}
