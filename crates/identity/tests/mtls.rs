//! SPEC C6: peering and tunnels are mutual TLS 1.3 (ALPN h2) between SPIFFE
//! identities under one shared root; anything else is refused with a reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use meshpeer_identity::{
    ALPN_H2, Identity, PeerPolicy, Refusal, RootCa, client_config, peer_identity,
    refusal_reason_io, server_config,
};
use rustls::ProtocolVersion;
use support::*;

fn any() -> PeerPolicy {
    PeerPolicy::AnyTrustDomain
}

fn only(tds: &[&str]) -> PeerPolicy {
    PeerPolicy::TrustDomains(tds.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>())
}

/// `server` (with `policy`) against `client` expecting trust domain `expected`;
/// both trust `root`.
async fn connect(
    root: &RootCa,
    server: &Arc<Identity>,
    policy: PeerPolicy,
    client: &Arc<Identity>,
    expected: &str,
) -> Outcome {
    let server_cfg = server_config(server.clone(), root.trust_root(), policy, &[ALPN_H2]).unwrap();
    let client_cfg =
        client_config(client.clone(), root.trust_root(), expected, &[ALPN_H2]).unwrap();
    handshake(server_cfg, client_cfg).await
}

fn refusal(side: &std::io::Result<Side>) -> Refusal {
    match side {
        Ok(_) => panic!("expected a refusal, the side succeeded"),
        Err(err) => refusal_reason_io(err),
    }
}

#[tokio::test]
async fn c6_two_clusters_under_one_root_complete_mutual_tls_over_tcp() {
    let root = root("meshpeer root");
    let cluster1 = identity(&root, "cluster1");
    let cluster2 = identity(&root, "cluster2");
    let server_cfg = server_config(
        cluster1.clone(),
        root.trust_root(),
        only(&["cluster2"]),
        &[ALPN_H2],
    )
    .unwrap();
    // Each cluster knows only the root from its own cacerts.
    let client_cfg = client_config(
        cluster2.clone(),
        cluster2.trust_root(),
        "cluster1",
        &[ALPN_H2],
    )
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client_io, accepted) =
        tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    let outcome = handshake_over(
        server_cfg,
        client_cfg,
        accepted.unwrap().0,
        client_io.unwrap(),
    )
    .await;

    let server = outcome.server.unwrap();
    let client = outcome.client.unwrap();
    for side in [&server, &client] {
        assert_eq!(side.version, Some(ProtocolVersion::TLSv1_3));
        assert_eq!(side.alpn.as_deref(), Some(ALPN_H2));
    }
    assert_eq!(
        peer_identity(&server.peer_certs).unwrap(),
        *cluster2.spiffe_id()
    );
    assert_eq!(
        peer_identity(&client.peer_certs).unwrap(),
        *cluster1.spiffe_id()
    );
    assert_eq!(
        peer_identity(&client.peer_certs).unwrap().to_string(),
        "spiffe://cluster1/ns/meshpeer-system/sa/meshpeer"
    );
    // The whole chain travels: leaf then intermediate.
    assert_eq!(client.peer_certs, cluster1.current().chain);
}

#[tokio::test]
async fn c6_any_trust_domain_policy_accepts_every_cluster_under_the_root() {
    let root = root("meshpeer root");
    let server = identity(&root, "cluster1");
    for td in ["cluster2", "cluster3", "cluster1"] {
        let client = identity(&root, td);
        let outcome = connect(&root, &server, any(), &client, "cluster1").await;
        let seen = outcome.server.unwrap();
        assert_eq!(peer_identity(&seen.peer_certs).unwrap().trust_domain(), td);
        outcome.client.unwrap();
    }
}

#[tokio::test]
async fn c6_peer_server_from_another_root_is_refused() {
    let ours = root("meshpeer root");
    // Same subject as our root (two installs with defaults) and a different one.
    for other in [root("meshpeer root"), root("someone else's root")] {
        let server = identity(&other, "cluster1");
        let client = identity(&ours, "cluster2");
        let outcome = connect(&ours, &server, any(), &client, "cluster1").await;
        let refused = refusal(&outcome.client);
        assert_eq!(
            refused,
            Refusal::UnknownRoot {
                our_root_sha256: Some(ours.sha256_fingerprint().to_owned())
            }
        );
        assert_eq!(refused.reason(), "unknown_root");
        assert_eq!(
            refused.to_string(),
            format!(
                "peer certificate chain does not lead to the shared root (our root SHA-256 {})",
                ours.sha256_fingerprint()
            )
        );
        // The refused server learns it was refused, from the alert.
        assert_eq!(refusal(&outcome.server).reason(), "refused_by_peer");
    }
}

#[tokio::test]
async fn c6_peer_client_from_another_root_is_refused() {
    let ours = root("meshpeer root");
    for other in [root("meshpeer root"), root("someone else's root")] {
        let server = identity(&ours, "cluster1");
        let client = identity(&other, "cluster2");
        let outcome = connect(&ours, &server, any(), &client, "cluster1").await;
        assert_eq!(
            refusal(&outcome.server),
            Refusal::UnknownRoot {
                our_root_sha256: Some(ours.sha256_fingerprint().to_owned())
            }
        );
        assert_eq!(refusal(&outcome.client).reason(), "refused_by_peer");
    }
}

#[tokio::test]
async fn c6_expired_server_leaf_is_refused_with_its_expiry() {
    let root = root("meshpeer root");
    // Issued three hours ago for one hour.
    let server = identity_at(&root, "cluster1", SystemTime::now() - 3 * HOUR, HOUR);
    let client = identity(&root, "cluster2");
    let outcome = connect(&root, &server, any(), &client, "cluster1").await;
    let refused = refusal(&outcome.client);
    let not_after = server.current().not_after;
    assert_eq!(
        refused,
        Refusal::Expired {
            not_after: Some(not_after)
        }
    );
    assert_eq!(refused.reason(), "expired");
    assert!(
        refused
            .to_string()
            .starts_with("peer certificate expired at 20"),
        "{refused}"
    );
    assert_eq!(
        refusal(&outcome.server),
        Refusal::RefusedByPeer {
            alert: "CertificateExpired".into()
        }
    );
}

#[tokio::test]
async fn c6_expired_client_leaf_is_refused_with_its_expiry() {
    let root = root("meshpeer root");
    let server = identity(&root, "cluster1");
    let client = identity_at(&root, "cluster2", SystemTime::now() - 3 * HOUR, HOUR);
    let outcome = connect(&root, &server, any(), &client, "cluster1").await;
    assert_eq!(
        refusal(&outcome.server),
        Refusal::Expired {
            not_after: Some(client.current().not_after)
        }
    );
    assert_eq!(
        refusal(&outcome.client),
        Refusal::RefusedByPeer {
            alert: "CertificateExpired".into()
        }
    );
}

#[tokio::test]
async fn c6_client_expecting_another_trust_domain_refuses_the_server() {
    let root = root("meshpeer root");
    let server = identity(&root, "cluster3");
    let client = identity(&root, "cluster1");
    let outcome = connect(&root, &server, any(), &client, "cluster2").await;
    let refused = refusal(&outcome.client);
    assert_eq!(
        refused,
        Refusal::WrongTrustDomain {
            expected: vec!["cluster2".into()],
            got: "cluster3".into()
        }
    );
    assert_eq!(
        refused.to_string(),
        "peer trust domain is cluster3, expected cluster2"
    );
    assert_eq!(refused.reason(), "wrong_trust_domain");
    assert_eq!(refusal(&outcome.server).reason(), "refused_by_peer");
}

#[tokio::test]
async fn c6_server_policy_refuses_a_client_trust_domain_it_does_not_allow() {
    let root = root("meshpeer root");
    let server = identity(&root, "cluster1");
    let client = identity(&root, "cluster3");
    let outcome = connect(
        &root,
        &server,
        only(&["cluster2", "cluster4"]),
        &client,
        "cluster1",
    )
    .await;
    let refused = refusal(&outcome.server);
    assert_eq!(
        refused,
        Refusal::WrongTrustDomain {
            expected: vec!["cluster2".into(), "cluster4".into()],
            got: "cluster3".into()
        }
    );
    assert_eq!(
        refused.to_string(),
        "peer trust domain is cluster3, expected one of cluster2, cluster4"
    );
    assert_eq!(refusal(&outcome.client).reason(), "refused_by_peer");
}

#[tokio::test]
async fn c6_server_leaf_without_spiffe_id_is_refused() {
    let root = root("meshpeer root");
    let ca = cluster(&root, "cluster1");
    let (chain, key) = custom_leaf(
        &ca,
        vec![rcgen::SanType::DnsName("peer.example".try_into().unwrap())],
    );
    let client = identity(&root, "cluster2");
    let client_cfg = client_config(client, root.trust_root(), "cluster1", &[ALPN_H2]).unwrap();
    let outcome = handshake(plain_server(chain, key), client_cfg).await;
    let refused = refusal(&outcome.client);
    assert_eq!(
        refused,
        Refusal::NoSpiffeId {
            detail: "it has no URI SAN".into()
        }
    );
    assert_eq!(refused.reason(), "no_spiffe_id");
}

#[tokio::test]
async fn c6_client_leaf_without_spiffe_id_is_refused() {
    let root = root("meshpeer root");
    let ca = cluster(&root, "cluster2");
    let server = identity(&root, "cluster1");
    let server_cfg = server_config(server, root.trust_root(), any(), &[ALPN_H2]).unwrap();
    let cases = [
        (
            vec![rcgen::SanType::DnsName("peer.example".try_into().unwrap())],
            "it has no URI SAN",
        ),
        (
            vec![rcgen::SanType::URI(
                "https://peer.example/".try_into().unwrap(),
            )],
            "its URI SAN is not a SPIFFE ID",
        ),
        (
            vec![
                rcgen::SanType::URI("spiffe://cluster2/ns/a/sa/b".try_into().unwrap()),
                rcgen::SanType::URI("spiffe://cluster2/ns/a/sa/c".try_into().unwrap()),
            ],
            "it has 2 URI SANs",
        ),
    ];
    for (sans, detail) in cases {
        let (chain, key) = custom_leaf(&ca, sans);
        let outcome = handshake(server_cfg.clone(), plain_client(Some((chain, key)))).await;
        let refused = refusal(&outcome.server);
        assert_eq!(refused.reason(), "no_spiffe_id", "{refused}");
        assert!(refused.to_string().contains(detail), "{refused}");
    }
}

#[tokio::test]
async fn c6_client_without_certificate_is_refused() {
    let root = root("meshpeer root");
    let server = identity(&root, "cluster1");
    let server_cfg = server_config(server, root.trust_root(), any(), &[ALPN_H2]).unwrap();
    let outcome = handshake(server_cfg, plain_client(None)).await;
    assert_eq!(
        refusal(&outcome.server),
        Refusal::NoSpiffeId {
            detail: "the peer presented no certificate".into()
        }
    );
    assert_eq!(refusal(&outcome.client).reason(), "refused_by_peer");
}

#[tokio::test]
async fn c6_peer_identity_requires_exactly_one_spiffe_uri() {
    let root = root("meshpeer root");
    let ca = cluster(&root, "cluster1");
    let id = spiffe("cluster1");
    let leaf = ca.issue_leaf(&id, HOUR, SystemTime::now()).unwrap();
    assert_eq!(peer_identity(&leaf.chain).unwrap(), id);
    assert_eq!(
        peer_identity(&[]).unwrap_err().to_string(),
        "peer certificate has no usable SPIFFE ID: the peer presented no certificate"
    );
    let (chain, _) = custom_leaf(&ca, vec![]);
    assert_eq!(peer_identity(&chain).unwrap_err().reason(), "no_spiffe_id");
}
