use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const NODES: &str = "\
e358 10.0.0.101:7000@17000 myself,master - 0 0 1 connected 0-5460
1a2b 10.0.0.102:7001@17001 master - 0 1700000000000 2 connected 5461-10922
3c4d 10.0.0.103:7002@17002,valkey-node-2 master - 0 1700000000000 3 connected 10923-16383
5e6f 10.0.0.101:7003@17003 slave 3c4d 0 1700000000000 3 connected
7a8b 10.0.0.102:7004@17004 slave,fail e358 0 1700000000000 1 disconnected
9c0d 10.0.0.103:7005@17005 slave e358 0 1700000000000 1 connected
";

const INFO_PRIMARY: &str = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
slave0:ip=10.0.0.103,port=7005,state=online,offset=5000,lag=0\r\n\
slave1:ip=10.0.0.102,port=7004,state=wait_bgsave,offset=0,lag=3\r\n\
master_failover_state:no-failover\r\nmaster_replid:abc\r\nmaster_repl_offset:5042\r\n";

const INFO_REPLICA: &str = "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.101\r\nmaster_port:7000\r\n\
master_link_status:up\r\nmaster_last_io_seconds_ago:1\r\nslave_repl_offset:5000\r\nslave_priority:100\r\n\
master_repl_offset:5000\r\n";

#[test]
fn commands_are_arrays_of_bulk_strings() {
    assert_eq!(
        encode(&["CLUSTER", "INFO"]),
        b"*2\r\n$7\r\nCLUSTER\r\n$4\r\nINFO\r\n".to_vec()
    );
    assert_eq!(
        encode(&["SET", "k", ""]),
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n".to_vec()
    );
}

#[test]
fn replies_of_every_kind_parse_and_a_partial_one_asks_for_more() {
    assert_eq!(parse(b"+OK\r\n").unwrap(), Some((Reply::Simple("OK".into()), 5)));
    assert_eq!(parse(b"-ERR no\r\n").unwrap(), Some((Reply::Error("ERR no".into()), 9)));
    assert_eq!(parse(b":12\r\nrest").unwrap(), Some((Reply::Int(12), 5)));
    assert_eq!(
        parse(b"$5\r\nhello\r\n").unwrap(),
        Some((Reply::Bulk(Some(b"hello".to_vec())), 11))
    );
    assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Bulk(None), 5)));
    let arr = b"*2\r\n:1\r\n$2\r\nok\r\n";
    assert_eq!(
        parse(arr).unwrap(),
        Some((
            Reply::Array(Some(vec![Reply::Int(1), Reply::Bulk(Some(b"ok".to_vec()))])),
            arr.len()
        ))
    );
    // Every strict prefix needs more bytes.
    for cut in 0..arr.len() {
        assert_eq!(parse(&arr[..cut]).unwrap(), None, "prefix of {cut} bytes");
    }
    assert_eq!(parse(b"$5\r\nhel").unwrap(), None);
    assert!(parse(b"?what\r\n").is_err());
    assert!(parse(b"$x\r\n").is_err());
}

#[test]
fn info_replication_of_a_primary_lists_its_replicas_and_offset() {
    let r = parse_replication(INFO_PRIMARY).unwrap();
    assert!(r.is_primary());
    assert_eq!(r.offset, 5042);
    assert_eq!(r.primary, None);
    assert_eq!(
        r.replicas,
        vec![
            ("10.0.0.103".into(), 7005, "online".into(), 5000),
            ("10.0.0.102".into(), 7004, "wait_bgsave".into(), 0)
        ]
    );
}

#[test]
fn info_replication_of_a_replica_has_its_primary_link_and_offset() {
    let r = parse_replication(INFO_REPLICA).unwrap();
    assert!(!r.is_primary());
    assert_eq!(r.primary, Some(("10.0.0.101".into(), 7000)));
    assert!(r.link_up);
    assert_eq!(r.offset, 5000);
    let down = INFO_REPLICA.replace("master_link_status:up", "master_link_status:down");
    assert!(!parse_replication(&down).unwrap().link_up);
    assert_eq!(parse_replication("-NOAUTH Authentication required."), None);
}

#[test]
fn cluster_nodes_lines_give_address_flags_primary_and_slots() {
    let n = parse_nodes(NODES);
    assert_eq!(n.len(), 6);
    assert!(n[0].is_myself() && n[0].is_primary());
    assert_eq!((n[0].ip.as_str(), n[0].port), ("10.0.0.101", 7000));
    assert_eq!(n[0].slots, ["0-5460"]);
    assert_eq!(
        (n[2].ip.as_str(), n[2].port),
        ("10.0.0.103", 7002),
        "hostname suffix ignored"
    );
    assert!(n[3].is_replica() && n[3].primary.as_deref() == Some("3c4d"));
    assert!(n[4].failing() && n[4].link == "disconnected");
    assert!(!n[5].failing());
}

#[test]
fn a_primary_lists_a_replica_online_by_its_address_or_only_its_port_when_it_sees_another_address() {
    let r = parse_replication(INFO_PRIMARY).unwrap().replicas;
    assert!(lists_online(&r, "10.0.0.103", 7005));
    assert!(!lists_online(&r, "10.0.0.102", 7004), "wait_bgsave is not online");
    assert!(!lists_online(&r, "10.0.0.103", 7004));
    // Seen from its container's address (same host): the port decides.
    assert!(lists_online(&r, "10.0.0.101", 7005));
    assert!(!lists_online(&r, "10.0.0.101", 7009));
    assert!(!lists_online(&[], "10.0.0.101", 7005));
}

#[test]
fn replicas_restart_first_unknown_members_next_primaries_last_in_their_order() {
    let roles = [Some(true), Some(false), None, Some(true), Some(false)];
    assert_eq!(rank(&roles), vec![1, 4, 2, 0, 3]);
    assert_eq!(rank(&[]), Vec::<usize>::new());
}

fn replica(node: &Node, link_up: bool, offset: u64) -> Candidate {
    Candidate {
        at: format!("{}:{}", node.ip, node.port),
        ruled_out: node.failing().then_some("flagged failing"),
        repl: Some(Replication {
            role: "slave".into(),
            link_up,
            offset,
            ..Default::default()
        }),
    }
}

#[test]
fn the_failover_goes_to_the_most_caught_up_healthy_replica() {
    let n = parse_nodes(NODES);
    let healthy = n[5].clone();
    let mut other = n[3].clone();
    other.flags = vec!["slave".into()];
    // Highest offset wins; a failing or link-down replica never does.
    let reps = vec![
        replica(&other, true, 4000),
        replica(&healthy, true, 5000),
        replica(&n[4], true, 5042),
    ];
    assert_eq!(candidate("valkey-node-0", 5042, &reps, 1 << 20).unwrap(), 1);
    let reps = vec![replica(&other, false, 5042), replica(&healthy, true, 4900)];
    assert_eq!(candidate("p", 5042, &reps, 1 << 20).unwrap(), 1);
    // Ruled out (a primary that does not list it online): never chosen.
    let mut unlisted = replica(&healthy, true, 5042);
    unlisted.ruled_out = Some("not listed online by the primary");
    let reps = vec![unlisted, replica(&other, true, 5000)];
    assert_eq!(candidate("p", 5042, &reps, 1 << 20).unwrap(), 1);
}

#[test]
fn no_caught_up_replica_stops_the_roll_naming_the_primary_and_what_each_replica_is() {
    let n = parse_nodes(NODES);
    let mut silent = replica(&n[3], true, 0);
    silent.repl = None;
    let reps = vec![replica(&n[5], true, 100), silent, replica(&n[4], false, 5042)];
    let e = candidate("valkey-node-0", 5042, &reps, 1000).unwrap_err().0;
    assert!(e.contains("valkey-node-0"), "{e}");
    assert!(e.contains("10.0.0.103:7005 link up offset 100 of 5042"), "{e}");
    assert!(e.contains("10.0.0.101:7003 did not answer"), "{e}");
    assert!(e.contains("(flagged failing)"), "{e}");
    let e = candidate("p", 1, &[], 1000).unwrap_err().0;
    assert!(e.contains("it has no replica"), "{e}");
}

const INFO_STANDALONE: &str = "# Server\r\nredis_version:7.0.15\r\nconfig_file:/data/valkey.conf\r\n\
# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
slave0:ip=valkey-rep-1,port=7101,state=online,offset=900,lag=0\r\n\
slave1:ip=10.0.0.103,port=7102,state=online,offset=880,lag=1\r\n\
master_failover_state:waiting-for-sync\r\nmaster_repl_offset:900\r\n\
# Cluster\r\ncluster_enabled:0\r\n";

fn member(name: &str, addr: &str, port: u16) -> Member {
    Member {
        name: name.into(),
        host: "h".into(),
        replica: 0,
        addr: addr.into(),
        port,
    }
}

#[test]
fn info_of_a_standalone_primary_gives_mode_config_file_and_failover_state() {
    let s = parse_status(INFO_STANDALONE).unwrap();
    assert!(!s.cluster && s.repl.is_primary());
    assert_eq!(s.config_file, "/data/valkey.conf");
    assert_eq!(s.failover, "waiting-for-sync");
    assert_eq!(s.repl.offset, 900);
    assert!(no_config("valkey-rep-0", &s).is_none());
    let bare = parse_status(
        &INFO_STANDALONE
            .replace("config_file:/data/valkey.conf", "config_file:")
            .replace("cluster_enabled:0", "cluster_enabled:1")
            .replace("master_failover_state:waiting-for-sync\r\n", ""),
    )
    .unwrap();
    assert!(bare.cluster);
    assert_eq!(bare.failover, "no-failover", "Redis before 6.2 has no failover state");
    let e = no_config("valkey-rep-0", &bare).unwrap().0;
    assert!(
        e.contains("valkey-rep-0") && e.contains("config_file") && e.contains("--replicaof"),
        "{e}"
    );
    assert_eq!(parse_status("-NOAUTH Authentication required."), None);
}

#[test]
fn a_member_line_says_role_and_state() {
    let p = parse_status(INFO_STANDALONE).unwrap();
    assert_eq!(describe(&p), "primary running");
    let r = parse_status(&format!("{INFO_REPLICA}master_sync_in_progress:0\r\n")).unwrap();
    assert_eq!(describe(&r), "replica streaming");
    let down = parse_status(&INFO_REPLICA.replace("master_link_status:up", "master_link_status:down")).unwrap();
    assert_eq!(describe(&down), "replica down");
    let syncing = parse_status(&format!(
        "{}master_sync_in_progress:1\r\n",
        INFO_REPLICA.replace("master_link_status:up", "master_link_status:down")
    ))
    .unwrap();
    assert_eq!(describe(&syncing), "replica syncing");
}

#[test]
fn a_replica_is_found_in_its_primarys_list_by_its_name_or_host_address_and_its_port() {
    let r = parse_status(INFO_STANDALONE).unwrap().repl.replicas;
    let by_name = member("valkey-rep-1", "10.0.0.102", 7101);
    assert_eq!(listed_as(&r, &by_name).unwrap().0, "valkey-rep-1");
    let by_addr = member("valkey-rep-2", "10.0.0.103", 7102);
    assert_eq!(listed_as(&r, &by_addr).unwrap().0, "10.0.0.103");
    // The port alone is not enough: another member on that port.
    assert!(listed_as(&r, &member("valkey-rep-3", "10.0.0.104", 7101)).is_none());
    assert!(listed_as(&r, &member("valkey-rep-1", "10.0.0.102", 7109)).is_none());
    let waiting = r
        .iter()
        .map(|(i, p, _, o)| (i.clone(), *p, "wait_bgsave".to_string(), *o))
        .collect::<Vec<_>>();
    assert!(listed_as(&waiting, &by_name).is_none(), "not online yet");
}

#[test]
fn a_replicas_primary_is_the_member_its_master_host_names() {
    let ms = [
        member("valkey-rep-0", "10.0.0.101", 7100),
        member("valkey-rep-1", "10.0.0.102", 7101),
    ];
    assert_eq!(member_at(&ms, "valkey-rep-1", 7101).unwrap().name, "valkey-rep-1");
    assert_eq!(member_at(&ms, "10.0.0.101", 7100).unwrap().name, "valkey-rep-0");
    assert!(member_at(&ms, "valkey-rep-1", 6379).is_none());
    assert!(member_at(&ms, "172.18.0.5", 7101).is_none());
}

#[test]
fn labels_choose_the_lag_and_the_password_secret() {
    let labels = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    let v = Valkey::from_labels(&labels(&[]), &Secrets::default()).unwrap();
    assert_eq!(v.max_lag, DEFAULT_MAX_LAG);
    assert_eq!(v.password_secret.as_deref(), Some(DEFAULT_PASSWORD_SECRET));
    let v = Valkey::from_labels(
        &labels(&[(PASSWORD_SECRET_LABEL, ""), (MAX_LAG_LABEL, "10")]),
        &Secrets::default(),
    )
    .unwrap();
    assert_eq!((v.max_lag, v.password_secret), (10, None));
    let e = Valkey::from_labels(&labels(&[(MAX_LAG_LABEL, "lots")]), &Secrets::default())
        .unwrap_err()
        .0;
    assert!(e.contains(MAX_LAG_LABEL) && e.contains("lots"), "{e}");
    assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(..)");
}

/// A fake node outside cluster mode on `l`: answers `INFO` with `info`
/// and `+OK` to anything else; what it got is in the returned log.
fn fake_node(l: tokio::net::TcpListener, info: String) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (log, info) = (log.clone(), info.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Ok(Some((Reply::Array(Some(items)), used))) = parse(&buf) {
                        buf.drain(..used);
                        let words: Vec<String> = items.into_iter().filter_map(|r| r.text().ok()).collect();
                        let reply = if words.first().is_some_and(|w| w.eq_ignore_ascii_case("INFO")) {
                            format!("${}\r\n{info}\r\n", info.len())
                        } else {
                            "+OK\r\n".to_string()
                        };
                        log.lock().unwrap().push(words.join(" "));
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    seen
}

/// `valkey-rep-0..2` as fakes, not in cluster mode: `roles[i]` is
/// node i's role (`master`: node 0 lists 1 and 2 online as its
/// replicas, another node none), `config[i]` its `config_file`.
/// Returns each node's command log and the members.
async fn replication_set(
    config: [&str; 3],
    roles: [&str; 3],
) -> (Vec<std::sync::Arc<std::sync::Mutex<Vec<String>>>>, Vec<Member>) {
    let mut ls = Vec::new();
    for _ in 0..3 {
        ls.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let ports: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
    let mut logs = Vec::new();
    let mut members = Vec::new();
    for (i, l) in ls.into_iter().enumerate() {
        let head = format!("# Server\r\nconfig_file:{}\r\n# Replication\r\n", config[i]);
        let repl = match (roles[i], i) {
            ("master", 0) => format!(
                "role:master\r\nconnected_slaves:2\r\n\
                 slave0:ip=valkey-rep-1,port={},state=online,offset=900,lag=0\r\n\
                 slave1:ip=valkey-rep-2,port={},state=online,offset=880,lag=0\r\n\
                 master_failover_state:no-failover\r\nmaster_repl_offset:900\r\n",
                ports[1], ports[2]
            ),
            ("master", _) => {
                "role:master\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\nmaster_repl_offset:10\r\n"
                    .to_string()
            }
            _ => format!(
                "role:slave\r\nmaster_host:valkey-rep-0\r\nmaster_port:{}\r\nmaster_link_status:up\r\n\
                 slave_repl_offset:900\r\nmaster_repl_offset:900\r\n",
                ports[0]
            ),
        };
        logs.push(fake_node(l, format!("{head}{repl}# Cluster\r\ncluster_enabled:0")));
        members.push(Member {
            name: format!("valkey-rep-{i}"),
            host: format!("h{i}"),
            replica: 1,
            addr: "127.0.0.1".into(),
            port: ports[i],
        });
    }
    (logs, members)
}

fn no_password() -> Valkey {
    Valkey {
        max_lag: DEFAULT_MAX_LAG,
        password_secret: None,
        secrets: Secrets::default(),
    }
}

/// Commands other than `INFO` any node got: what would change a role.
fn changes(logs: &[std::sync::Arc<std::sync::Mutex<Vec<String>>>]) -> Vec<String> {
    logs.iter()
        .flat_map(|l| l.lock().unwrap().clone())
        .filter(|c| !c.starts_with("INFO"))
        .collect()
}

#[tokio::test]
async fn a_primary_is_not_handed_over_when_a_member_has_no_config_file_or_there_are_two_primaries() {
    let cfg = "/data/valkey.conf";
    let roles = ["master", "slave", "slave"];
    // The primary itself runs without a config file.
    let (logs, ms) = replication_set(["", cfg, cfg], roles).await;
    let e = no_password().before_restart(&ms[0], &ms).await.unwrap_err().0;
    assert!(e.contains("valkey-rep-0 runs without a config file"), "{e}");
    assert_eq!(changes(&logs), Vec::<String>::new(), "nothing sent but INFO");
    // A replica does.
    let (logs, ms) = replication_set([cfg, cfg, ""], roles).await;
    let e = no_password().before_restart(&ms[0], &ms).await.unwrap_err().0;
    assert!(e.contains("valkey-rep-2 runs without a config file"), "{e}");
    assert_eq!(changes(&logs), Vec::<String>::new());
    // A second primary: the roles are in doubt.
    let (logs, ms) = replication_set([cfg, cfg, cfg], ["master", "slave", "master"]).await;
    let e = no_password().before_restart(&ms[0], &ms).await.unwrap_err().0;
    assert!(e.contains("valkey-rep-0 and valkey-rep-2 are both primaries"), "{e}");
    assert_eq!(changes(&logs), Vec::<String>::new());
    // A replica is never handed anything.
    no_password().before_restart(&ms[1], &ms).await.unwrap();
    assert_eq!(changes(&logs), Vec::<String>::new());
}

#[tokio::test]
async fn a_failover_the_primary_gives_up_stops_the_roll_before_anything_else_changes() {
    let cfg = "/data/valkey.conf";
    // The fake primary stays a primary with no failover running: what
    // a primary shows after FAILOVER TIMEOUT gave up.
    let (logs, ms) = replication_set([cfg, cfg, cfg], ["master", "slave", "slave"]).await;
    let e = no_password().before_restart(&ms[0], &ms).await.unwrap_err().0;
    assert!(
        e.contains("the failover of primary valkey-rep-0 to valkey-rep-1 was aborted")
            && e.contains("still the primary and was not restarted"),
        "{e}"
    );
    // The most caught-up replica (offset 900 over 880) was the target,
    // named as the primary lists it; no REPLICAOF, no CONFIG REWRITE.
    assert_eq!(
        changes(&logs),
        vec![format!("FAILOVER TO valkey-rep-1 {} TIMEOUT 10000", ms[1].port)]
    );
}

/// A real TCP exchange with a server that answers in small pieces, and
/// refuses the password: the error never holds it.
#[tokio::test]
async fn a_refused_auth_names_the_member_not_the_password() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).await;
        for part in [&b"-WRONGPASS inv"[..], b"alid username-password pair\r\n"] {
            s.write_all(part).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let e = Conn::open("127.0.0.1", port, Some(&Secret("s3cret-pw".into())))
        .await
        .err()
        .unwrap()
        .0;
    assert!(e.contains("AUTH refused (WRONGPASS)"), "{e}");
    assert!(!e.contains("s3cret-pw"), "{e}");
}
