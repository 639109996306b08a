//! SPEC P6 with a trust domain shared by several clusters: each cluster's
//! intermediate is also bound to its cluster, by the root's holder
//! (`spiffe://<td>/meshpeer/cluster/<name>`), and a verified peer speaks for
//! the cluster of the intermediate the root signed, never for a cluster its
//! leaf, or a CA below the root's intermediate, claims.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::SystemTime;

use meshpeer_identity::{
    ALPN_H2, ClusterCa, Identity, PeerPolicy, Refusal, RootCa, SpiffeId, VerifiedPeer,
    client_config_for_cluster, refusal_reason_io, server_config, verified_client, verified_server,
};
use support::*;

const TD: &str = "cluster.local";

fn controller() -> SpiffeId {
    SpiffeId::new(TD, "istio-system", "meshpeer").unwrap()
}

fn shared(root: &RootCa, cluster: &str) -> ClusterCa {
    root.issue_intermediate(cluster, TD, YEAR, SystemTime::now() - DAY)
        .unwrap()
}

fn controller_of(ca: ClusterCa) -> Arc<Identity> {
    Arc::new(Identity::new(ca, controller(), HOUR, SystemTime::now()).unwrap())
}

fn san(uri: &str) -> rcgen::SanType {
    rcgen::SanType::URI(uri.try_into().unwrap())
}

/// The PEM key of a cluster CA, as its cacerts hold it.
fn ca_key(ca: &ClusterCa) -> rcgen::KeyPair {
    let dir = tempfile::tempdir().unwrap();
    ca.write(dir.path()).unwrap();
    rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("ca-key.pem")).unwrap())
        .unwrap()
}

fn leaf_params(sans: Vec<rcgen::SanType>) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans;
    params.not_before = (SystemTime::now() - HOUR).into();
    params.not_after = (SystemTime::now() + HOUR).into();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
}

#[test]
fn p6_an_intermediate_is_bound_to_its_cluster_and_keeps_it_through_cacerts() {
    let root = root("meshpeer root");
    let ca = shared(&root, "cluster2");
    assert_eq!(ca.binding(), Some(TD));
    assert_eq!(ca.cluster_binding(), Some("cluster2"));
    let dir = tempfile::tempdir().unwrap();
    ca.write(dir.path()).unwrap();
    let loaded = ClusterCa::load(dir.path(), SystemTime::now()).unwrap();
    assert_eq!(loaded.cluster_binding(), Some("cluster2"));
    // Its leaves carry the cluster of their intermediate.
    let leaf = loaded
        .issue_leaf(&controller(), HOUR, SystemTime::now())
        .unwrap();
    assert_eq!(
        verified_client(root.trust_root(), &leaf.chain).unwrap(),
        VerifiedPeer {
            id: controller(),
            cluster: Some("cluster2".into())
        }
    );
    // The CA still issues only its own trust domain's identities.
    let other = SpiffeId::new("cluster2", "istio-system", "meshpeer").unwrap();
    assert!(loaded.issue_leaf(&other, HOUR, SystemTime::now()).is_err());
    // A cluster name must be one SPIFFE path segment.
    assert!(
        root.issue_intermediate("a/b", TD, YEAR, SystemTime::now())
            .is_err()
    );
}

#[test]
fn p6_intermediates_made_before_cluster_bindings_load_and_speak_for_no_cluster() {
    let root = root("meshpeer root");
    let old = root
        .issue_trust_domain_intermediate("cluster1", "cluster1", YEAR, SystemTime::now() - DAY)
        .unwrap();
    assert_eq!(old.binding(), Some("cluster1"));
    assert_eq!(old.cluster_binding(), None);
    let dir = tempfile::tempdir().unwrap();
    old.write(dir.path()).unwrap();
    let loaded = ClusterCa::load(dir.path(), SystemTime::now()).unwrap();
    let id = SpiffeId::new("cluster1", "istio-system", "meshpeer").unwrap();
    let leaf = loaded.issue_leaf(&id, HOUR, SystemTime::now()).unwrap();
    let peer = verified_client(root.trust_root(), &leaf.chain).unwrap();
    assert_eq!(peer.cluster, None);
    // Matched on the trust domain alone (per-cluster trust domains).
    assert!(peer.is("cluster1", "cluster1"));
    assert!(!peer.is("cluster2", "cluster1"));
}

#[test]
fn p6_a_leaf_cannot_claim_a_cluster_by_its_own_sans() {
    let root = root("meshpeer root");
    let ca3 = shared(&root, "cluster3");
    let forged_uri = format!("spiffe://{TD}/meshpeer/cluster/cluster2");
    // The cluster binding URI next to the leaf's SPIFFE ID, or alone: the
    // leaf has no usable identity, and never a cluster.
    for sans in [
        vec![san(&controller().to_string()), san(&forged_uri)],
        vec![san(&forged_uri)],
    ] {
        let (chain, _) = custom_leaf(&ca3, sans);
        let refused = verified_client(root.trust_root(), &chain).unwrap_err();
        assert_eq!(refused.reason(), "no_spiffe_id", "{refused}");
    }
    // A DNS SAN that looks like a cluster does not count either.
    let (chain, _) = custom_leaf(
        &ca3,
        vec![
            san(&controller().to_string()),
            rcgen::SanType::DnsName("cluster2".try_into().unwrap()),
        ],
    );
    let peer = verified_client(root.trust_root(), &chain).unwrap();
    assert_eq!(peer.cluster.as_deref(), Some("cluster3"));
    assert!(!peer.is(TD, "cluster2"));
    assert!(peer.is(TD, "cluster3"));
}

#[test]
fn p6_a_cluster_ca_cannot_mint_a_sub_ca_bound_to_another_cluster() {
    let root = root("meshpeer root");
    let ca3 = shared(&root, "cluster3");
    let issuer = rcgen::Issuer::from_ca_cert_der(ca3.cert_der(), ca_key(&ca3)).unwrap();
    // cluster3's key signs a CA that says it is cluster2's.
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cluster2");
    params.subject_alt_names = vec![
        san(&format!("spiffe://{TD}")),
        san(&format!("spiffe://{TD}/meshpeer/cluster/cluster2")),
    ];
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.not_before = (SystemTime::now() - DAY).into();
    params.not_after = (SystemTime::now() + DAY).into();
    let sub_key = rcgen::KeyPair::generate().unwrap();
    let sub = params.signed_by(&sub_key, &issuer).unwrap();
    let sub_issuer = rcgen::Issuer::new(params, sub_key);
    let leaf = leaf_params(vec![san(&controller().to_string())])
        .signed_by(&rcgen::KeyPair::generate().unwrap(), &sub_issuer)
        .unwrap();
    let chain = vec![
        leaf.der().clone(),
        sub.der().clone(),
        ca3.cert_der().clone(),
    ];
    // The root gave cluster3's CA path length 0: the chain does not verify.
    let refused = verified_client(root.trust_root(), &chain).unwrap_err();
    assert!(refused.to_string().contains("not acceptable"), "{refused}");
}

#[test]
fn p6_a_chain_padded_with_a_self_made_ca_still_speaks_for_its_real_cluster() {
    let root = root("meshpeer root");
    let ca3 = shared(&root, "cluster3");
    let key3 = ca_key(&ca3);
    // cluster3's key self-signs a copy of its CA that claims cluster2, sent
    // before the real one: the cluster is read from the path to the root.
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "meshpeer");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cluster3");
    params.subject_alt_names = vec![san(&format!("spiffe://{TD}/meshpeer/cluster/cluster2"))];
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.not_before = (SystemTime::now() - DAY).into();
    params.not_after = (SystemTime::now() + DAY).into();
    let fake = params.self_signed(&key3).unwrap();
    let leaf = ca3
        .issue_leaf(&controller(), HOUR, SystemTime::now())
        .unwrap();
    let chain = vec![
        leaf.chain[0].clone(),
        fake.der().clone(),
        ca3.cert_der().clone(),
    ];
    let peer = verified_client(root.trust_root(), &chain).unwrap();
    assert_eq!(peer.cluster.as_deref(), Some("cluster3"));
}

#[tokio::test]
async fn p6_a_client_expecting_cluster2_refuses_cluster3_with_the_same_spiffe_id() {
    let root = root("meshpeer root");
    let client = controller_of(shared(&root, "cluster1"));
    let impostor = controller_of(shared(&root, "cluster3"));
    let outcome = handshake(
        server_config(
            impostor,
            root.trust_root(),
            PeerPolicy::AnyTrustDomain,
            &[ALPN_H2],
        )
        .unwrap(),
        client_config_for_cluster(client, root.trust_root(), TD, "cluster2", true, &[ALPN_H2])
            .unwrap(),
    )
    .await;
    let refused = refusal_reason_io(outcome.client.as_ref().unwrap_err());
    assert_eq!(
        refused,
        Refusal::WrongCluster {
            expected: "cluster2".into(),
            got: "cluster3".into()
        }
    );
    assert_eq!(refused.reason(), "wrong_cluster");

    // The real cluster2 passes, and each side sees the other's cluster.
    let client = controller_of(shared(&root, "cluster1"));
    let real = controller_of(shared(&root, "cluster2"));
    let outcome = handshake(
        server_config(
            real,
            root.trust_root(),
            PeerPolicy::AnyTrustDomain,
            &[ALPN_H2],
        )
        .unwrap(),
        client_config_for_cluster(client, root.trust_root(), TD, "cluster2", true, &[ALPN_H2])
            .unwrap(),
    )
    .await;
    let server_saw = outcome.server.unwrap();
    let client_saw = outcome.client.unwrap();
    assert_eq!(
        verified_client(root.trust_root(), &server_saw.peer_certs)
            .unwrap()
            .cluster
            .as_deref(),
        Some("cluster1")
    );
    assert_eq!(
        verified_server(root.trust_root(), &client_saw.peer_certs)
            .unwrap()
            .cluster
            .as_deref(),
        Some("cluster2")
    );
}

#[tokio::test]
async fn p6_where_the_trust_domain_is_shared_a_chain_without_cluster_binding_is_refused() {
    let root = root("meshpeer root");
    let client = controller_of(shared(&root, "cluster1"));
    let unbound = root
        .issue_trust_domain_intermediate("cluster2", TD, YEAR, SystemTime::now() - DAY)
        .unwrap();
    let outcome = handshake(
        server_config(
            controller_of(unbound),
            root.trust_root(),
            PeerPolicy::AnyTrustDomain,
            &[ALPN_H2],
        )
        .unwrap(),
        client_config_for_cluster(client, root.trust_root(), TD, "cluster2", true, &[ALPN_H2])
            .unwrap(),
    )
    .await;
    let refused = refusal_reason_io(outcome.client.as_ref().unwrap_err());
    assert_eq!(refused.reason(), "no_cluster_binding", "{refused}");
    assert!(refused.to_string().contains("cannot say which cluster"));
}
