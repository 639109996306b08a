//! SPEC P6: each cluster's intermediate is bound to its trust domain (a
//! `spiffe://<td>` URI SAN); a leaf of another trust domain under it is
//! refused by both verifiers, and never issued. Intermediates made before
//! bindings existed keep working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::SystemTime;

use meshpeer_identity::{
    ALPN_H2, CaError, ClusterCa, Identity, PeerPolicy, Refusal, SpiffeId, client_config,
    peer_identity, refusal_reason_io, server_config,
};
use support::*;
use x509_parser::extensions::GeneralName;

fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn san(uri: &str) -> rcgen::SanType {
    rcgen::SanType::URI(uri.try_into().unwrap())
}

#[test]
fn p6_intermediate_carries_its_trust_domain_and_keeps_it_through_cacerts() {
    let root = root("meshpeer root");
    let ca = root
        .issue_intermediate("cluster1", "td1.example", YEAR, SystemTime::now() - DAY)
        .unwrap();
    assert_eq!(ca.binding(), Some("td1.example"));
    assert_eq!(
        uri_sans(ca.cert_der()),
        [
            "spiffe://td1.example",
            "spiffe://td1.example/meshpeer/cluster/cluster1"
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    ca.write(dir.path()).unwrap();
    let loaded = ClusterCa::load(dir.path(), SystemTime::now()).unwrap();
    assert_eq!(loaded.binding(), Some("td1.example"));

    assert!(matches!(
        root.issue_intermediate("cluster1", "Not A Domain", YEAR, SystemTime::now()),
        Err(CaError::InvalidTrustDomain { .. })
    ));
}

#[test]
fn p6_cluster_ca_refuses_to_issue_a_leaf_of_another_trust_domain() {
    let root = root("meshpeer root");
    let ca = cluster(&root, "cluster1");
    let err = ca
        .issue_leaf(&spiffe("cluster2"), HOUR, SystemTime::now())
        .unwrap_err();
    assert!(
        matches!(err, CaError::TrustDomainNotBound { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("spiffe://cluster2/ns/meshpeer-system/sa/meshpeer")
            && text.contains("bound to trust domain cluster1"),
        "{text}"
    );
    // Its own trust domain is fine.
    ca.issue_leaf(&spiffe("cluster1"), HOUR, SystemTime::now())
        .unwrap();
}

#[tokio::test]
async fn p6_old_unbound_intermediate_still_loads_issues_and_verifies() {
    let root = root("meshpeer root");
    let old = root
        .issue_unbound_intermediate("cluster1", YEAR, SystemTime::now() - DAY)
        .unwrap();
    assert_eq!(old.binding(), None);
    assert!(uri_sans(old.cert_der()).is_empty());
    let dir = tempfile::tempdir().unwrap();
    old.write(dir.path()).unwrap();
    let loaded = ClusterCa::load(dir.path(), SystemTime::now()).unwrap();
    assert_eq!(loaded.binding(), None);

    // No flag day: it still issues for its cluster, and peers accept it.
    let client =
        Arc::new(Identity::new(loaded, spiffe("cluster1"), HOUR, SystemTime::now()).unwrap());
    let server = identity(&root, "cluster2");
    let outcome = handshake(
        server_config(
            server,
            root.trust_root(),
            PeerPolicy::AnyTrustDomain,
            &[ALPN_H2],
        )
        .unwrap(),
        client_config(client, root.trust_root(), "cluster2", &[ALPN_H2]).unwrap(),
    )
    .await;
    let seen = outcome.server.unwrap();
    assert_eq!(peer_identity(&seen.peer_certs).unwrap(), spiffe("cluster1"));
    outcome.client.unwrap();
}

/// A leaf for trust domain `cluster2` signed by cluster1's bound
/// intermediate: what a leaked cluster1 key could mint.
fn forged(root: &meshpeer_identity::RootCa) -> (ClusterCa, support::Chain) {
    let ca1 = cluster(root, "cluster1");
    let leaf = custom_leaf(
        &ca1,
        vec![san("spiffe://cluster2/ns/istio-system/sa/meshpeer")],
    );
    (ca1, leaf)
}

fn expected_refusal() -> Refusal {
    Refusal::TrustDomainNotBound {
        got: "cluster2".into(),
        bound: "cluster1".into(),
        issuer: "O=meshpeer, CN=cluster1".into(),
    }
}

#[tokio::test]
async fn p6_server_refuses_a_client_leaf_of_another_trust_domain_than_its_issuer() {
    let root = root("meshpeer root");
    let (_, (chain, key)) = forged(&root);
    let server = identity(&root, "cluster3");
    // Any trust domain is welcome, yet the binding is checked; over TCP.
    let server_cfg = server_config(
        server,
        root.trust_root(),
        PeerPolicy::AnyTrustDomain,
        &[ALPN_H2],
    )
    .unwrap();
    let (client_io, accepted) = tcp_pair().await;
    let outcome = handshake_over(
        server_cfg,
        plain_client(Some((chain, key))),
        accepted,
        client_io,
    )
    .await;
    let refused = refusal_reason_io(outcome.server.as_ref().unwrap_err());
    assert_eq!(refused, expected_refusal());
    assert_eq!(refused.reason(), "trust_domain_not_bound");
    let text = refused.to_string();
    assert!(
        text.contains("trust domain cluster2") && text.contains("bound to trust domain cluster1"),
        "{text}"
    );
    assert!(outcome.client.is_err(), "the client is told it was refused");
}

#[tokio::test]
async fn p6_client_refuses_a_server_leaf_of_another_trust_domain_than_its_issuer() {
    let root = root("meshpeer root");
    let (_, (chain, key)) = forged(&root);
    let client = identity(&root, "cluster3");
    // The client expects cluster2, which the forged leaf claims to be.
    let client_cfg = client_config(client, root.trust_root(), "cluster2", &[ALPN_H2]).unwrap();
    let (client_io, accepted) = tcp_pair().await;
    let outcome = handshake_over(plain_server(chain, key), client_cfg, accepted, client_io).await;
    let refused = refusal_reason_io(outcome.client.as_ref().unwrap_err());
    assert_eq!(refused, expected_refusal());
}

#[test]
fn p6_an_intermediate_whose_binding_is_a_workload_identity_is_not_loaded() {
    let root = root("meshpeer root");
    // An unbound intermediate signs a sub-CA carrying a workload URI: such
    // material is refused when loaded, with the file named.
    let ca = root
        .issue_intermediate("cluster1", "cluster1", YEAR, SystemTime::now() - DAY)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ca.write(dir.path()).unwrap();
    let bad = bad_bound_ca(&root, "spiffe://cluster1/ns/a/sa/b");
    std::fs::write(dir.path().join("ca-cert.pem"), &bad.0).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), &bad.1).unwrap();
    std::fs::write(
        dir.path().join("cert-chain.pem"),
        format!(
            "{}{}",
            bad.0,
            std::fs::read_to_string(dir.path().join("root-cert.pem")).unwrap()
        ),
    )
    .unwrap();
    let err = ClusterCa::load(dir.path(), SystemTime::now()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("ca-cert.pem") && text.contains("workload identity"),
        "{text}"
    );
}

/// An intermediate (PEM cert, PEM key) signed by `root` with `uri` as URI SAN.
fn bad_bound_ca(root: &meshpeer_identity::RootCa, uri: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    root.write(dir.path()).unwrap();
    let root_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(dir.path().join("root-key.pem")).unwrap(),
    )
    .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(root.trust_root().cert_der(), root_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bad");
    params.subject_alt_names = vec![san(uri)];
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.not_before = (SystemTime::now() - DAY).into();
    params.not_after = (SystemTime::now() + DAY).into();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn p6_spiffe_trust_domains_are_checked_like_spiffe_ids() {
    SpiffeId::check_trust_domain("cluster1.example").unwrap();
    let err = SpiffeId::check_trust_domain("Cluster1").unwrap_err();
    assert!(err.to_string().contains("has a character"), "{err}");
}
