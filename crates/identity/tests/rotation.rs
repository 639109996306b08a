//! Leaves are short-lived: the rotation task re-issues them before expiry,
//! and configs built once present the new leaf.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime};

use meshpeer_identity::{
    ALPN_H2, Identity, PeerPolicy, client_config, peer_identity, server_config,
};
use support::*;
use tokio::time::Instant;

#[tokio::test]
async fn c6_rotate_if_due_reissues_once_two_thirds_of_the_lifetime_passed() {
    let t0 = SystemTime::now();
    let root = root("meshpeer root");
    let identity =
        Identity::new(cluster(&root, "cluster1"), spiffe("cluster1"), 3 * HOUR, t0).unwrap();
    let first = identity.current();
    assert!(!identity.rotate_if_due(t0 + HOUR).await.unwrap());
    assert!(
        !identity
            .rotate_if_due(first.renew_at() - Duration::from_secs(1))
            .await
            .unwrap()
    );
    assert_eq!(identity.current().chain, first.chain);

    let later = t0 + 2 * HOUR + Duration::from_secs(60);
    assert!(identity.rotate_if_due(later).await.unwrap());
    let second = identity.current();
    assert_ne!(second.chain[0], first.chain[0]);
    assert!(second.not_after > first.not_after);
    assert_eq!(peer_identity(&second.chain).unwrap(), *identity.spiffe_id());
    // An expired leaf is due as well.
    assert!(identity.rotate_if_due(t0 + 10 * HOUR).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn c6_rotation_task_reissues_before_expiry_and_configs_present_the_new_leaf() {
    let root = root("meshpeer root");
    let server = identity_at(&root, "cluster1", SystemTime::now(), 3 * HOUR);
    let client = identity_at(&root, "cluster2", SystemTime::now(), 3 * HOUR);
    // Built once, before any rotation.
    let server_cfg = server_config(
        server.clone(),
        root.trust_root(),
        PeerPolicy::AnyTrustDomain,
        &[ALPN_H2],
    )
    .unwrap();
    let client_cfg =
        client_config(client.clone(), root.trust_root(), "cluster1", &[ALPN_H2]).unwrap();
    let old_server_leaf = server.current();
    let old_client_leaf = client.current();
    let before = handshake(server_cfg.clone(), client_cfg.clone()).await;
    assert_eq!(before.client.unwrap().peer_certs, old_server_leaf.chain);
    assert_eq!(before.server.unwrap().peer_certs, old_client_leaf.chain);

    let start = Instant::now();
    let tasks = [
        tokio::spawn(server.clone().run_rotation()),
        tokio::spawn(client.clone().run_rotation()),
    ];
    // Wait (on the paused clock) until both leaves changed, at most their lifetime.
    let deadline = start + 3 * HOUR;
    while server.current().chain == old_server_leaf.chain
        || client.current().chain == old_client_leaf.chain
    {
        assert!(
            Instant::now() < deadline,
            "no rotation within the leaf lifetime"
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let elapsed = start.elapsed();
    for task in tasks {
        task.abort();
    }
    // Due when a third of the lifetime (3 h plus the backdating) remains:
    // about two hours in, well before expiry at three hours.
    assert!(
        elapsed >= Duration::from_secs(115 * 60) && elapsed <= Duration::from_secs(125 * 60),
        "rotated after {elapsed:?}"
    );

    let after = handshake(server_cfg, client_cfg).await;
    let seen_by_client = after.client.unwrap().peer_certs;
    let seen_by_server = after.server.unwrap().peer_certs;
    assert_eq!(seen_by_client, server.current().chain);
    assert_ne!(seen_by_client[0], old_server_leaf.chain[0]);
    assert_eq!(seen_by_server, client.current().chain);
    assert_ne!(seen_by_server[0], old_client_leaf.chain[0]);
}

#[tokio::test(start_paused = true)]
async fn c6_rotation_task_replaces_an_already_expired_leaf_at_once() {
    let root = root("meshpeer root");
    let identity = identity_at(&root, "cluster1", SystemTime::now() - 3 * HOUR, HOUR);
    let old = identity.current();
    let start = Instant::now();
    let task = tokio::spawn(identity.clone().run_rotation());
    while identity.current().chain == old.chain {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "expired leaf kept"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    task.abort();
    assert!(identity.current().not_after > SystemTime::now());
}
