//! Unit tests of the parent module.

use infra_products::{Member, UpdateOrder};

use super::member_rolls::ClusterLock;
use super::*;

fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(h, n)| ((*h).into(), *n)).collect()
}

#[test]
fn rollout_order_takes_one_replica_of_every_host_before_the_second_of_any() {
    let order = slots(&counts(&[("h1", 2), ("h2", 1), ("h3", 2)]));
    let pairs: Vec<(&str, u32)> = order.iter().map(|s| (s.host.as_str(), s.replica)).collect();
    assert_eq!(pairs, vec![("h1", 1), ("h2", 1), ("h3", 1), ("h1", 2), ("h3", 2)]);
}

#[test]
fn updated_counts_are_a_prefix_per_host_and_read_back_from_the_store() {
    let order = slots(&counts(&[("h1", 2), ("h2", 2)]));
    assert_eq!(updated_after(&order, 0), counts(&[("h1", 0), ("h2", 0)]));
    assert_eq!(updated_after(&order, 3), counts(&[("h1", 2), ("h2", 1)]));
    for k in 0..=order.len() {
        assert_eq!(done_from(&order, &updated_after(&order, k)), k, "resume at {k}");
    }
}

/// A hook with a fixed order and nothing to do around restarts.
struct Fixed(Vec<usize>);

impl UpdateOrder for Fixed {
    fn kind(&self) -> &'static str {
        "fixed"
    }
    fn default_port(&self) -> u16 {
        1
    }
    fn order<'a>(&'a self, _: &'a [Member]) -> infra_products::HookFuture<'a, Vec<usize>> {
        Box::pin(async move { self.0.clone() })
    }
    fn before_restart<'a>(
        &'a self,
        _: &'a Member,
        _: &'a [Member],
    ) -> infra_products::HookFuture<'a, Result<(), infra_products::HookError>> {
        Box::pin(async { Ok(()) })
    }
    fn ready_for_next<'a>(
        &'a self,
        _: &'a Member,
        _: &'a [Member],
        _: Duration,
    ) -> infra_products::HookFuture<'a, Result<(), infra_products::HookError>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_members_take_their_turns_in_the_hooks_order_whatever_order_they_queue_in() {
    use std::sync::{Arc, Mutex};
    let all: Vec<Member> = (0..5)
        .map(|i| Member {
            name: format!("m{i}"),
            host: "h".into(),
            replica: 1,
            addr: String::new(),
            port: 0,
        })
        .collect();
    // Valkey-like: the replicas m3, m1, m4 first, the primaries m0, m2 last.
    let hook = Arc::new(Fixed(vec![3, 1, 4, 0, 2]));
    let lock = Arc::new(ClusterLock {
        turn: tokio::sync::Mutex::new(()),
        waiting: std::sync::Mutex::new(Vec::new()),
    });
    let went: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    // They arrive primaries first, the first in the order last.
    for i in [2, 0, 4, 1, 3] {
        let (hook, lock, went, all) = (hook.clone(), lock.clone(), went.clone(), all.clone());
        tasks.push(tokio::spawn(async move {
            let _turn = lock.turn(hook.as_ref(), &all[i], &all).await;
            went.lock().unwrap().push(all[i].name.clone());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
    }
    assert_eq!(*went.lock().unwrap(), ["m3", "m1", "m4", "m0", "m2"]);
}

#[test]
fn the_failure_ratio_is_a_share_of_all_replicas() {
    assert!(too_many_failures(1, 3, 0.0));
    assert!(!too_many_failures(1, 3, 0.34));
    assert!(too_many_failures(2, 3, 0.34));
    assert!(!too_many_failures(0, 3, 0.0));
}
