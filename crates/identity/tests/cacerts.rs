//! SPEC C6: one root, one intermediate per cluster in Istio's `cacerts`
//! layout; loading bad material fails with an error naming the file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use meshpeer_identity::{CaError, ClusterCa, LEAF_BACKDATE, RootCa, peer_identity};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use support::*;
use x509_parser::extensions::{GeneralName, ParsedExtension};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn certs_in(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A root and cluster1's cacerts written to a temporary directory.
fn written_cacerts() -> (RootCa, tempfile::TempDir) {
    let root = root("meshpeer root");
    let dir = tempfile::tempdir().unwrap();
    cluster(&root, "cluster1").write(dir.path()).unwrap();
    (root, dir)
}

#[test]
fn c6_cacerts_layout_is_written_and_read_back() {
    let root = root("meshpeer root");
    let ca = cluster(&root, "cluster1");
    let dir = tempfile::tempdir().unwrap();
    let cacerts = dir.path().join("cacerts");
    ca.write(&cacerts).unwrap();

    let mut names: Vec<String> = fs::read_dir(&cacerts)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem"
        ]
    );
    assert_eq!(mode(&cacerts.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&cacerts.join("ca-cert.pem")), 0o644);
    assert_eq!(
        certs_in(&cacerts.join("ca-cert.pem")),
        [ca.cert_der().clone()]
    );
    assert_eq!(
        certs_in(&cacerts.join("root-cert.pem")),
        [root.trust_root().cert_der().clone()]
    );
    assert_eq!(
        certs_in(&cacerts.join("cert-chain.pem")),
        [ca.cert_der().clone(), root.trust_root().cert_der().clone()]
    );

    let loaded = ClusterCa::load(&cacerts, SystemTime::now()).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.not_after(), ca.not_after());
    assert_eq!(
        loaded.trust_root().sha256_fingerprint(),
        root.sha256_fingerprint()
    );
    // The loaded key still issues: the chain is leaf, intermediate.
    let id = spiffe("cluster1");
    let leaf = loaded.issue_leaf(&id, HOUR, SystemTime::now()).unwrap();
    assert_eq!(leaf.chain.len(), 2);
    assert_eq!(&leaf.chain[1], ca.cert_der());
    assert_eq!(peer_identity(&leaf.chain).unwrap(), id);

    // Writing again never overwrites CA material.
    match loaded.write(&cacerts) {
        Err(CaError::AlreadyExists { path }) => assert!(path.ends_with("ca-cert.pem")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
}

#[test]
fn c6_root_is_written_with_a_private_key_file_and_read_back() {
    let root = root("meshpeer root");
    let dir = tempfile::tempdir().unwrap();
    root.write(dir.path()).unwrap();
    assert_eq!(mode(&dir.path().join("root-key.pem")), 0o600);
    assert_eq!(mode(&dir.path().join("root-cert.pem")), 0o644);

    let loaded = RootCa::load(dir.path(), SystemTime::now()).unwrap();
    assert_eq!(loaded.sha256_fingerprint(), root.sha256_fingerprint());
    // An intermediate from the reloaded root chains to the original one.
    let ca = loaded
        .issue_intermediate("cluster9", "cluster9", YEAR, SystemTime::now())
        .unwrap();
    let cacerts = dir.path().join("cacerts");
    ca.write(&cacerts).unwrap();
    ClusterCa::load(&cacerts, SystemTime::now()).unwrap();

    let fp = root.sha256_fingerprint();
    assert_eq!(fp.len(), 95, "{fp}");
    assert!(
        fp.split(':').all(|pair| pair.len() == 2
            && pair
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())),
        "{fp}"
    );
}

#[test]
fn c6_load_names_the_missing_file() {
    for name in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        let (_root, dir) = written_cacerts();
        fs::remove_file(dir.path().join(name)).unwrap();
        let err = ClusterCa::load(dir.path(), SystemTime::now()).unwrap_err();
        match &err {
            CaError::Missing { path, .. } => assert!(path.ends_with(name)),
            other => panic!("{name}: expected Missing, got {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(name) && text.contains("is missing"), "{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        RootCa::load(dir.path(), SystemTime::now()),
        Err(CaError::Missing { .. })
    ));
}

#[test]
fn c6_load_refuses_a_key_that_does_not_match_the_certificate() {
    let (root, dir) = written_cacerts();
    let other = tempfile::tempdir().unwrap();
    cluster(&root, "cluster1").write(other.path()).unwrap();
    fs::remove_file(dir.path().join("ca-key.pem")).unwrap();
    fs::copy(
        other.path().join("ca-key.pem"),
        dir.path().join("ca-key.pem"),
    )
    .unwrap();
    let err = ClusterCa::load(dir.path(), SystemTime::now()).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("ca-key.pem does not match") && text.contains("ca-cert.pem"),
        "{text}"
    );
}

#[test]
fn c6_load_refuses_an_intermediate_from_another_root() {
    for other_name in ["meshpeer root", "another root"] {
        let (_root, dir) = written_cacerts();
        let other = root(other_name);
        let other_dir = tempfile::tempdir().unwrap();
        other.write(other_dir.path()).unwrap();
        fs::remove_file(dir.path().join("root-cert.pem")).unwrap();
        fs::copy(
            other_dir.path().join("root-cert.pem"),
            dir.path().join("root-cert.pem"),
        )
        .unwrap();
        let err = ClusterCa::load(dir.path(), SystemTime::now()).unwrap_err();
        match &err {
            CaError::NotSignedByRoot { root_sha256, .. } => {
                assert_eq!(root_sha256, other.sha256_fingerprint())
            }
            other => panic!("{other_name}: expected NotSignedByRoot, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("ca-cert.pem does not chain to") && text.contains("root-cert.pem"),
            "{text}"
        );
    }
}

#[test]
fn c6_load_refuses_an_expired_intermediate() {
    let t0 = SystemTime::now() - 30 * DAY;
    let root = RootCa::generate("meshpeer root", 10 * YEAR, t0).unwrap();
    let ca = root
        .issue_intermediate("cluster1", "cluster1", DAY, t0)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ca.write(dir.path()).unwrap();

    // Still fine while valid...
    ClusterCa::load(dir.path(), t0 + HOUR).unwrap();
    // ...refused after.
    let err = ClusterCa::load(dir.path(), t0 + 2 * DAY).unwrap_err();
    match &err {
        CaError::Expired {
            path, not_after, ..
        } => {
            assert!(path.ends_with("ca-cert.pem"));
            assert_eq!(*not_after, ca.not_after());
        }
        other => panic!("expected Expired, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("ca-cert.pem expired at") && text.contains("issue a new intermediate"),
        "{text}"
    );
    // And it can no longer issue.
    assert!(matches!(
        ca.issue_leaf(&spiffe("cluster1"), HOUR, t0 + 2 * DAY),
        Err(CaError::IssuerExpired { .. })
    ));
}

#[test]
fn c6_load_refuses_a_chain_file_that_does_not_start_with_the_intermediate() {
    let (root, dir) = written_cacerts();
    fs::remove_file(dir.path().join("cert-chain.pem")).unwrap();
    fs::copy(
        dir.path().join("root-cert.pem"),
        dir.path().join("cert-chain.pem"),
    )
    .unwrap();
    let err = ClusterCa::load(dir.path(), SystemTime::now()).unwrap_err();
    assert!(matches!(err, CaError::ChainMismatch { .. }), "{err:?}");
    drop(root);
}

#[test]
fn c6_load_refuses_garbage_with_the_file_name() {
    let (_root, dir) = written_cacerts();
    fs::write(dir.path().join("ca-cert.pem"), "not a certificate\n").unwrap();
    let err = ClusterCa::load(dir.path(), SystemTime::now()).unwrap_err();
    assert!(matches!(err, CaError::Pem { .. }), "{err:?}");
    assert!(err.to_string().contains("ca-cert.pem"), "{err}");
}

#[test]
fn c6_leaf_carries_the_spiffe_id_and_mutual_tls_usages() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_316_400);
    let root = RootCa::generate("meshpeer root", YEAR, now - DAY).unwrap();
    let ca = root
        .issue_intermediate("cluster1", "cluster1", YEAR, now - DAY)
        .unwrap();
    let leaf = ca.issue_leaf(&spiffe("cluster1"), HOUR, now).unwrap();
    assert_eq!(leaf.not_before, now - LEAF_BACKDATE);
    assert_eq!(leaf.not_after, now + HOUR);
    assert_eq!(
        leaf.renew_at(),
        now - LEAF_BACKDATE + (HOUR + LEAF_BACKDATE) * 2 / 3
    );
    assert!(!leaf.is_due(leaf.renew_at() - Duration::from_secs(1)));
    assert!(leaf.is_due(leaf.renew_at()));

    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.chain[0]).unwrap();
    assert!(!cert.is_ca());
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        [GeneralName::URI(
            "spiffe://cluster1/ns/meshpeer-system/sa/meshpeer"
        )]
    );

    let (_, inter) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    let bc = inter.basic_constraints().unwrap().unwrap();
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = inter.key_usage().unwrap().unwrap();
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(
        inter
            .extensions()
            .iter()
            .all(|e| !matches!(e.parsed_extension(), ParsedExtension::NameConstraints(_)))
    );
}

#[test]
fn c6_leaf_never_outlives_its_intermediate() {
    let now = SystemTime::now();
    let root = RootCa::generate("meshpeer root", YEAR, now - DAY).unwrap();
    let ca = root
        .issue_intermediate("cluster1", "cluster1", 2 * DAY, now - DAY)
        .unwrap();
    let leaf = ca.issue_leaf(&spiffe("cluster1"), 30 * DAY, now).unwrap();
    assert_eq!(leaf.not_after, ca.not_after());
}

#[test]
fn c6_names_are_checked_before_issuing() {
    let now = SystemTime::now();
    assert!(matches!(
        RootCa::generate("", YEAR, now),
        Err(CaError::InvalidName { .. })
    ));
    let root = root("meshpeer root");
    assert!(matches!(
        root.issue_intermediate(&"x".repeat(65), "cluster1", YEAR, now),
        Err(CaError::InvalidName { .. })
    ));
    assert!(matches!(
        root.issue_intermediate("cluster1", "cluster1", Duration::from_secs(u64::MAX), now),
        Err(CaError::Validity { .. })
    ));
}

#[test]
fn c6_load_refuses_an_expired_root() {
    let t0 = SystemTime::now() - 30 * DAY;
    let root = RootCa::generate("meshpeer root", 2 * DAY, t0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    root.issue_intermediate("cluster1", "cluster1", DAY, t0)
        .unwrap()
        .write(&dir.path().join("cacerts"))
        .unwrap();
    root.write(dir.path()).unwrap();
    for err in [
        ClusterCa::load(&dir.path().join("cacerts"), t0 + 3 * DAY).unwrap_err(),
        RootCa::load(dir.path(), t0 + 3 * DAY)
            .map(drop)
            .unwrap_err(),
    ] {
        match &err {
            CaError::Expired { path, .. } => assert!(path.ends_with("root-cert.pem")),
            other => panic!("expected Expired, got {other:?}"),
        }
        assert!(
            err.to_string().contains("the shared root has expired"),
            "{err}"
        );
    }
}
