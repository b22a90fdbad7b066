//! The leader lease and the deploy records against a real nats-server.

use infra_bus::Bus;
use infra_bus::testing::NatsServer;
use infra_proto::bus::v1::{DeploymentInProgress, LeaderLease};

async fn bus(server: &NatsServer) -> Bus {
    server.bus().await
}

fn lease(holder: &str, term: u64) -> LeaderLease {
    LeaderLease {
        holder: holder.into(),
        grpc_address: "127.0.0.1:1".into(),
        term,
        instance: holder.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn of_two_candidates_naming_the_same_revision_exactly_one_wins_the_lease() {
    let server = NatsServer::start();
    let (a, b) = (bus(&server).await, bus(&server).await);
    assert!(a.read_lease().await.unwrap().is_none());

    // Create-if-absent: one of two wins.
    let (la, lb) = (lease("a", 1), lease("b", 1));
    let (ra, rb) = tokio::join!(a.write_lease(&la, None), b.write_lease(&lb, None));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.is_some() != rb.is_some(), "{ra:?} {rb:?}");
    let held = a.read_lease().await.unwrap().unwrap();
    assert_eq!(Some(held.revision), ra.or(rb));

    // Compare-and-set on one revision: one of two wins, the loser's write
    // is not in the store.
    let (la, lb) = (lease("a", 2), lease("b", 2));
    let (ra, rb) = tokio::join!(
        a.write_lease(&la, Some(held.revision)),
        b.write_lease(&lb, Some(held.revision))
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.is_some() != rb.is_some(), "{ra:?} {rb:?}");
    let now = b.read_lease().await.unwrap().unwrap();
    assert_eq!(Some(now.revision), ra.or(rb));
    assert_eq!(now.lease.holder, if ra.is_some() { "a" } else { "b" });

    // A stale revision loses.
    assert_eq!(a.write_lease(&lease("a", 3), Some(held.revision)).await.unwrap(), None);

    // History keeps every write, oldest first; terms are recorded once.
    let history = a.lease_history().await.unwrap();
    assert_eq!(history.iter().map(|e| e.lease.term).collect::<Vec<_>>(), vec![1, 2]);
    assert!(a.record_term(&lease("a", 1)).await.unwrap());
    assert!(!b.record_term(&lease("b", 1)).await.unwrap());
    assert_eq!(a.list_terms().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_deploy_record_stays_until_it_is_deleted() {
    let server = NatsServer::start();
    let a = bus(&server).await;
    assert!(a.list_deployments().await.unwrap().is_empty());
    let d = DeploymentInProgress {
        id: "d1".into(),
        request: vec![1, 2, 3],
        holder: "c1".into(),
        ..Default::default()
    };
    a.put_deployment(&d).await.unwrap();
    assert_eq!(a.list_deployments().await.unwrap(), vec![d]);
    a.delete_deployment("d1").await.unwrap();
    assert!(a.list_deployments().await.unwrap().is_empty());
    assert!(
        a.put_deployment(&DeploymentInProgress {
            id: "a.b".into(),
            ..Default::default()
        })
        .await
        .is_err()
    );
}
