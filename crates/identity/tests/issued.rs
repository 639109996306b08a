//! SPEC P7: a component without the CA key sends a CSR; the CA signs the
//! request's key for the identity it decided; the component checks the
//! answer before using it, and keeps it renewed through a remote issuer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use meshpeer_identity::{
    CaError, CertificateRequest, ClusterCa, Identity, IssueFuture, IssuedError, Leaf, LeafIssuer,
    Refusal, SpiffeId, peer_identity,
};
use support::*;
use tokio::time::Instant;

fn proxy_id(td: &str) -> SpiffeId {
    SpiffeId::new(td, "istio-system", "meshpeer-proxy").unwrap()
}

/// What a CA answers for `request`, as Istio's CA does: PEM, leaf first, root last.
fn answer(ca: &ClusterCa, request: &CertificateRequest, id: &SpiffeId) -> Vec<String> {
    ca.sign_request(request, id, HOUR, SystemTime::now())
        .unwrap()
        .to_pem_chain(ca.trust_root())
}

#[test]
fn p7_a_signed_request_becomes_a_leaf_checked_against_the_root() {
    let root = root("meshpeer root");
    let ca = cluster(&root, "cluster1");
    let id = proxy_id("cluster1");
    let (csr, key) = CertificateRequest::generate(&id).unwrap();
    let request = CertificateRequest::from_pem(&csr).unwrap();
    let pems = answer(&ca, &request, &id);
    assert_eq!(pems.len(), 3, "leaf, intermediate, root");
    assert!(
        pems.iter()
            .all(|p| p.starts_with("-----BEGIN CERTIFICATE-----"))
    );

    let leaf = Leaf::from_issued(&pems, key, root.trust_root(), &id, SystemTime::now()).unwrap();
    assert_eq!(leaf.chain.len(), 2, "the root is not sent to peers");
    assert_eq!(&leaf.chain[1], ca.cert_der());
    assert_eq!(peer_identity(&leaf.chain).unwrap(), id);
    assert!(leaf.not_after > SystemTime::now() + HOUR - Duration::from_secs(5));
}

#[test]
fn p7_an_answer_for_another_identity_key_or_root_is_refused() {
    let root = root("meshpeer root");
    let ca = cluster(&root, "cluster1");
    let id = proxy_id("cluster1");
    let (csr, key) = CertificateRequest::generate(&id).unwrap();
    let request = CertificateRequest::from_pem(&csr).unwrap();
    let now = SystemTime::now();

    // Another identity than the one asked for.
    let other = SpiffeId::new("cluster1", "default", "sleep").unwrap();
    let err = Leaf::from_issued(
        &answer(&ca, &request, &other),
        key.clone_key(),
        root.trust_root(),
        &id,
        now,
    )
    .unwrap_err();
    assert!(
        matches!(&err, IssuedError::Refused(Refusal::WrongIdentity { got, .. }) if got == &other.to_string()),
        "{err:?}"
    );

    // Our identity, but for someone else's key.
    let (other_csr, _) = CertificateRequest::generate(&id).unwrap();
    let other_request = CertificateRequest::from_pem(&other_csr).unwrap();
    let err = Leaf::from_issued(
        &answer(&ca, &other_request, &id),
        key.clone_key(),
        root.trust_root(),
        &id,
        now,
    )
    .unwrap_err();
    assert!(matches!(err, IssuedError::WrongKey), "{err:?}");

    // Signed under another root (sent with it, or without it).
    let stranger = support::root("meshpeer root");
    let their_ca = cluster(&stranger, "cluster1");
    let pems = answer(&their_ca, &request, &id);
    let err = Leaf::from_issued(&pems, key.clone_key(), root.trust_root(), &id, now).unwrap_err();
    assert!(matches!(err, IssuedError::OtherRoot { .. }), "{err:?}");
    let err =
        Leaf::from_issued(&pems[..2], key.clone_key(), root.trust_root(), &id, now).unwrap_err();
    assert!(
        matches!(err, IssuedError::Refused(Refusal::UnknownRoot { .. })),
        "{err:?}"
    );

    // Nothing, or not PEM.
    assert!(matches!(
        Leaf::from_issued(&[], key.clone_key(), root.trust_root(), &id, now),
        Err(IssuedError::Empty)
    ));
    assert!(matches!(
        Leaf::from_issued(
            &["-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".to_owned()],
            key,
            root.trust_root(),
            &id,
            now
        ),
        Err(IssuedError::Pem { .. })
    ));
}

#[test]
fn p6_p7_a_bound_ca_signs_no_request_for_another_trust_domain() {
    let root = root("meshpeer root");
    let ca = cluster(&root, "cluster1");
    let id = proxy_id("cluster2");
    let (csr, _) = CertificateRequest::generate(&id).unwrap();
    let request = CertificateRequest::from_pem(&csr).unwrap();
    let err = ca
        .sign_request(&request, &id, HOUR, SystemTime::now())
        .unwrap_err();
    assert!(
        matches!(err, CaError::TrustDomainNotBound { .. }),
        "{err:?}"
    );
}

/// A remote CA stand-in: signs with `ca`, failing while `failures` > 0.
struct FlakyIssuer {
    ca: ClusterCa,
    failures: AtomicUsize,
    calls: AtomicUsize,
}

impl LeafIssuer for FlakyIssuer {
    fn issue<'a>(&'a self, id: &'a SpiffeId, validity: Duration) -> IssueFuture<'a> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err("controller unreachable".into());
            }
            let (csr, key) = CertificateRequest::generate(id)?;
            let request = CertificateRequest::from_pem(&csr)?;
            let pems = self
                .ca
                .sign_request(&request, id, validity, SystemTime::now())?
                .to_pem_chain(self.ca.trust_root());
            Ok(Leaf::from_issued(
                &pems,
                key,
                self.ca.trust_root(),
                id,
                SystemTime::now(),
            )?)
        })
    }

    fn describe(&self) -> String {
        "flaky test CA".to_owned()
    }
}

#[tokio::test(start_paused = true)]
async fn p7_remote_identity_retries_with_backoff_and_keeps_its_leaf_meanwhile() {
    let root = root("meshpeer root");
    let issuer = Arc::new(FlakyIssuer {
        ca: cluster(&root, "cluster1"),
        failures: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
    });
    let identity = Arc::new(
        Identity::from_issuer(
            issuer.clone(),
            root.trust_root().clone(),
            proxy_id("cluster1"),
            3 * HOUR,
        )
        .await
        .unwrap(),
    );
    assert!(identity.cluster_ca().is_none());
    assert_eq!(identity.issuer(), "flaky test CA");
    let first = identity.current();

    // The next three attempts fail.
    issuer.failures.store(3, Ordering::SeqCst);
    let start = Instant::now();
    let task = tokio::spawn(identity.clone().run_rotation());
    let deadline = start + 3 * HOUR;
    while issuer.calls.load(Ordering::SeqCst) < 4 {
        assert!(Instant::now() < deadline, "no retries");
        // Failures keep the leaf we have.
        assert_eq!(identity.current().chain, first.chain);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while identity.current().chain == first.chain {
        assert!(
            Instant::now() < deadline,
            "no rotation after the CA came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = start.elapsed();
    task.abort();
    // Due about two hours in; then 1 s, 2 s, 4 s (jittered down to half).
    let due = first
        .renew_at()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        elapsed >= due && elapsed <= due + Duration::from_secs(8),
        "rotated after {elapsed:?}, due after {due:?}"
    );
    assert_eq!(issuer.calls.load(Ordering::SeqCst), 5);
    assert_eq!(
        peer_identity(&identity.current().chain).unwrap(),
        proxy_id("cluster1")
    );
}
