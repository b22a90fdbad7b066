//! The Patroni hook against a fake Patroni REST API (one listener that
//! answers for every member, with roles and lags the test sets).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::*;

#[derive(Default)]
struct Fake {
    /// name -> (role, state, lag)
    members: Vec<(String, String, String, Option<u64>)>,
    /// Bodies of the POST /switchover calls.
    switchovers: Vec<String>,
    /// Whether a switchover flips roles (a refusing Patroni does not).
    obey: bool,
}

async fn serve(fake: Arc<Mutex<Fake>>) -> u16 {
    let server = infra_test_support::fake_http::start(move |r| {
        answer(&fake, &format!("{} {} HTTP/1.1", r.method, r.path), &r.body)
    })
    .await;
    let port = server.port;
    // The fake lives as long as the test's runtime.
    std::mem::forget(server);
    port
}

fn answer(fake: &Mutex<Fake>, first: &str, body: &str) -> (u16, String) {
    let mut f = fake.lock().unwrap();
    if first.starts_with("GET /cluster") {
        let ms: Vec<_> = f
            .members
            .iter()
            .map(|(n, r, s, lag)| {
                let mut m = serde_json::json!({"name": n, "role": r, "state": s, "timeline": 1});
                if r != "leader" {
                    m["lag"] = lag.map_or(serde_json::json!("unknown"), |l| serde_json::json!(l));
                }
                m
            })
            .collect();
        return (200, serde_json::json!({ "members": ms }).to_string());
    }
    if first.starts_with("GET /patroni") {
        let reps: Vec<_> = f
            .members
            .iter()
            .filter(|(_, r, s, lag)| r != "leader" && s == "running" && lag.is_some())
            .map(|(n, ..)| serde_json::json!({"application_name": n, "state": "streaming"}))
            .collect();
        return (
            200,
            serde_json::json!({ "role": "master", "replication": reps }).to_string(),
        );
    }
    if first.starts_with("POST /switchover") {
        f.switchovers.push(body.to_string());
        if !f.obey {
            return (412, "candidate name does not match".into());
        }
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        for m in &mut f.members {
            if m.0 == v["leader"] {
                m.1 = "replica".into();
            } else if m.0 == v["candidate"] {
                m.1 = "leader".into();
            }
        }
        return (200, format!("Successfully switched over to {}", v["candidate"]));
    }
    (404, String::new())
}

fn fake(rows: &[(&str, &str, &str, Option<u64>)]) -> Arc<Mutex<Fake>> {
    Arc::new(Mutex::new(Fake {
        members: rows
            .iter()
            .map(|(n, r, s, l)| ((*n).into(), (*r).into(), (*s).into(), *l))
            .collect(),
        switchovers: Vec::new(),
        obey: true,
    }))
}

fn members(port: u16) -> Vec<Member> {
    (0..3)
        .map(|i| Member {
            name: format!("pg-{i}"),
            host: format!("host{}", i + 1),
            replica: 1,
            addr: "127.0.0.1".into(),
            port,
        })
        .collect()
}

fn hook() -> Patroni {
    Patroni { max_lag: 1024 }
}

#[tokio::test]
async fn the_leader_restarts_last_and_replicas_keep_their_order() {
    let f = fake(&[
        ("pg-0", "leader", "running", None),
        ("pg-1", "replica", "running", Some(0)),
        ("pg-2", "replica", "running", Some(0)),
    ]);
    let ms = members(serve(f).await);
    assert_eq!(hook().order(&ms).await, vec![1, 2, 0]);
}

#[tokio::test]
async fn restarting_a_replica_needs_no_switchover() {
    let f = fake(&[
        ("pg-0", "leader", "running", None),
        ("pg-1", "replica", "running", Some(0)),
        ("pg-2", "replica", "running", Some(0)),
    ]);
    let ms = members(serve(f.clone()).await);
    hook().before_restart(&ms[1], &ms).await.unwrap();
    assert!(f.lock().unwrap().switchovers.is_empty());
}

#[tokio::test]
async fn before_the_leader_restarts_it_switches_over_to_the_replica_with_the_least_lag() {
    let f = fake(&[
        ("pg-0", "leader", "running", None),
        ("pg-1", "replica", "running", Some(900)),
        ("pg-2", "replica", "running", Some(10)),
    ]);
    let ms = members(serve(f.clone()).await);
    hook().before_restart(&ms[0], &ms).await.unwrap();
    let f = f.lock().unwrap();
    assert_eq!(f.switchovers.len(), 1, "exactly one switchover");
    let body: serde_json::Value = serde_json::from_str(&f.switchovers[0]).unwrap();
    assert_eq!(body, serde_json::json!({"leader": "pg-0", "candidate": "pg-2"}));
    assert_eq!(f.members[2].1, "leader");
}

#[tokio::test]
async fn no_switchover_happens_when_no_replica_is_caught_up_and_the_reason_names_them() {
    let f = fake(&[
        ("pg-0", "leader", "running", None),
        ("pg-1", "replica", "stopped", None),
        ("pg-2", "replica", "running", Some(1 << 30)),
    ]);
    let ms = members(serve(f.clone()).await);
    let err = hook().before_restart(&ms[0], &ms).await.unwrap_err().0;
    assert!(err.contains("no healthy replica to switch pg-0 over to"), "{err}");
    assert!(err.contains("pg-1 is replica stopped with lag unknown"), "{err}");
    assert!(err.contains("pg-2"), "{err}");
    assert!(f.lock().unwrap().switchovers.is_empty());
}

#[tokio::test]
async fn a_refused_switchover_stops_with_patronis_answer() {
    let f = fake(&[
        ("pg-0", "leader", "running", None),
        ("pg-1", "replica", "running", Some(0)),
    ]);
    f.lock().unwrap().obey = false;
    let ms = members(serve(f).await);
    let err = hook().before_restart(&ms[0], &ms[..2]).await.unwrap_err().0;
    assert!(err.contains("refused: 412 candidate name does not match"), "{err}");
}

#[tokio::test]
async fn a_replica_streaming_under_the_threshold_is_ready_for_the_next() {
    let f = fake(&[
        ("pg-0", "leader", "running", None),
        ("pg-1", "replica", "running", Some(100)),
    ]);
    let ms = members(serve(f).await);
    hook()
        .ready_for_next(&ms[1], &ms[..2], Duration::from_secs(2))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_replica_that_does_not_come_back_fails_within_the_deadline_naming_it() {
    let f = fake(&[
        ("pg-0", "leader", "running", None),
        ("pg-1", "replica", "starting", None),
    ]);
    let ms = members(serve(f).await);
    let start = Instant::now();
    let err = hook()
        .ready_for_next(&ms[1], &ms[..2], Duration::from_secs(1))
        .await
        .unwrap_err()
        .0;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        err,
        "pg-1 did not catch up within 1s: pg-1 is replica starting with lag unknown"
    );
}

#[tokio::test]
async fn an_unreachable_cluster_is_reported_with_every_member_tried() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ms = members(port);
    let err = cluster(&ms).await.unwrap_err().0;
    assert!(
        err.starts_with("no Patroni member answered GET /cluster: pg-0: GET http://127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("pg-2: "), "{err}");
}

#[test]
fn labels_choose_the_hook_and_an_unknown_kind_names_the_known_ones() {
    let labels = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    };
    assert!(
        super::super::for_labels(&labels(&[]), &Default::default())
            .unwrap()
            .is_none()
    );
    let h = super::super::for_labels(&labels(&[("infra.update-order", "patroni")]), &Default::default())
        .unwrap()
        .unwrap();
    assert_eq!(h.kind(), "patroni");
    let err = super::super::for_labels(&labels(&[("infra.update-order", "zookeeper")]), &Default::default())
        .err()
        .unwrap()
        .0;
    assert_eq!(
        err,
        "label infra.update-order: unknown update order \"zookeeper\" (known: patroni, kafka, rabbitmq, valkey, one-at-a-time)"
    );
    assert_eq!(
        super::super::cluster_from(&labels(&[("infra.update-order", "patroni")])),
        Some("patroni".into())
    );
}

#[test]
fn in_synchronous_mode_the_switchover_goes_to_the_synchronous_standby_even_with_more_lag() {
    let m = |name: &str, role: &str, lag: u64| ClusterMember {
        name: name.into(),
        role: role.into(),
        state: "streaming".into(),
        lag: Some(serde_json::json!(lag)),
        timeline: Some(1),
    };
    let view = vec![
        ClusterMember {
            state: "running".into(),
            lag: None,
            ..m("pg-0", "leader", 0)
        },
        m("pg-1", "replica", 0),
        m("pg-2", "sync_standby", 4096),
    ];
    let p = Patroni {
        max_lag: DEFAULT_MAX_LAG,
    };
    assert_eq!(p.candidate(&view, "pg-0").unwrap().name, "pg-2");
    // Asynchronous: the least lag.
    let view: Vec<ClusterMember> = view
        .into_iter()
        .map(|mut x| {
            if x.role == "sync_standby" {
                x.role = "replica".into();
            }
            x
        })
        .collect();
    assert_eq!(p.candidate(&view, "pg-0").unwrap().name, "pg-1");
}
