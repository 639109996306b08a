//! SPEC P7: the controller's signing endpoint over real TLS and gRPC (port
//! 0): a proxy with a token gets its own identity and nothing else; renewal
//! with a client certificate of the same trust domain; lifetimes capped;
//! refusals say why, and are counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshpeer_ca::proto::IstioCertificateRequest;
use meshpeer_ca::{
    CaClient, CaClientConfig, CaClientError, CaMetrics, CaService, CaSettings, CallInfo,
    ListenerLimits, StaticTokens, TokenSource,
};
use meshpeer_identity::{
    ALPN_H2, CertificateRequest, ClusterCa, Identity, Leaf, Refusal, RootCa, SpiffeId,
    peer_identity, server_config_optional_client,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const PROXY_TOKEN: &str = "proxy-token-0123456789";

fn id(td: &str, ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(td, ns, sa).unwrap()
}

fn proxy(td: &str) -> SpiffeId {
    id(td, "istio-system", "meshpeer-proxy")
}

fn controller_id(td: &str) -> SpiffeId {
    id(td, "istio-system", "meshpeer")
}

/// A cluster: its CA and a running signing endpoint.
struct Cluster {
    root: RootCa,
    addr: SocketAddr,
    registry: Arc<std::sync::Mutex<Registry>>,
    service: CaService,
    _stop: oneshot::Sender<()>,
}

fn ca(root: &RootCa, td: &str) -> Arc<ClusterCa> {
    Arc::new(
        root.issue_intermediate(td, td, 365 * DAY, SystemTime::now() - DAY)
            .unwrap(),
    )
}

/// cluster1's endpoint, serving as `server` (normally the controller),
/// with `tweak` applied to its settings.
async fn start(server: SpiffeId, tweak: impl FnOnce(&mut CaSettings)) -> Cluster {
    meshpeer_identity::install_default_provider();
    let root = RootCa::generate("meshpeer root", 3650 * DAY, SystemTime::now() - DAY).unwrap();
    let ca = ca(&root, "cluster1");
    let identity =
        Arc::new(Identity::new(Arc::clone(&ca), server, DAY, SystemTime::now()).unwrap());
    let mut settings = CaSettings::new("cluster1");
    settings.authenticators = vec![Arc::new(
        StaticTokens::from_entries([(PROXY_TOKEN, "istio-system", "meshpeer-proxy")]).unwrap(),
    )];
    tweak(&mut settings);
    let mut registry = Registry::default();
    let metrics = CaMetrics::register(&mut registry);
    let service = CaService::new(ca, settings, Arc::clone(&metrics));
    let tls = server_config_optional_client(identity, root.trust_root(), &[ALPN_H2, b"http/1.1"])
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(meshpeer_ca::serve(
        listener,
        tls,
        service.routes(),
        ListenerLimits::default(),
        metrics,
        async move {
            let _ = stopped.await;
        },
    ));
    Cluster {
        root,
        addr,
        registry: Arc::new(std::sync::Mutex::new(registry)),
        service,
        _stop: stop,
    }
}

impl Cluster {
    fn client(&self, token: TokenSource) -> CaClient {
        CaClient::new(CaClientConfig {
            address: self.addr.to_string(),
            root: self.root.trust_root().clone(),
            server: controller_id("cluster1"),
            token,
            timeout: Duration::from_secs(10),
        })
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap())
            .unwrap();
        out
    }
}

fn token(t: &str) -> TokenSource {
    TokenSource::Value(t.to_owned())
}

fn refused(err: CaClientError) -> (tonic::Code, String) {
    match err {
        CaClientError::Refused { code, message, .. } => (code, message),
        other => panic!("expected a refusal by the controller, got {other}"),
    }
}

#[tokio::test]
async fn p7_a_proxy_with_a_token_gets_its_own_identity_chained_to_the_root() {
    let c = start(controller_id("cluster1"), |_| {}).await;
    let leaf = c
        .client(token(PROXY_TOKEN))
        .create(&proxy("cluster1"), HOUR)
        .await
        .unwrap();
    assert_eq!(peer_identity(&leaf.chain).unwrap(), proxy("cluster1"));
    assert_eq!(leaf.chain.len(), 2);
    assert!(
        c.metrics().contains("ca_certificates_issued_total 1"),
        "{}",
        c.metrics()
    );
}

#[tokio::test]
async fn p7_the_answer_is_istios_chain_leaf_first_root_last() {
    let c = start(controller_id("cluster1"), |_| {}).await;
    let (csr, key) = CertificateRequest::generate(&proxy("cluster1")).unwrap();
    let call = CallInfo {
        bearer: Some(PROXY_TOKEN.to_owned()),
        ..CallInfo::default()
    };
    let answer = c
        .service
        .create(
            &call,
            &IstioCertificateRequest {
                csr,
                validity_duration: 3600,
                metadata: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(answer.cert_chain.len(), 3);
    assert!(
        answer
            .cert_chain
            .iter()
            .all(|p| p.starts_with("-----BEGIN CERTIFICATE-----\n")
                && p.ends_with("-----END CERTIFICATE-----\n"))
    );
    assert_eq!(answer.cert_chain[2], c.root.trust_root().pem());
    Leaf::from_issued(
        &answer.cert_chain,
        key,
        c.root.trust_root(),
        &proxy("cluster1"),
        SystemTime::now(),
    )
    .unwrap();
}

#[tokio::test]
async fn p7_csr_for_another_identity_is_refused() {
    let c = start(controller_id("cluster1"), |_| {}).await;
    for wanted in [
        id("cluster1", "istio-eastwest", "istio-eastwest"),
        controller_id("cluster1"),
        proxy("cluster2"),
    ] {
        let (code, message) = refused(
            c.client(token(PROXY_TOKEN))
                .create(&wanted, HOUR)
                .await
                .unwrap_err(),
        );
        assert_eq!(code, tonic::Code::PermissionDenied);
        assert!(
            message.contains(&format!("the CSR asks for {wanted}"))
                && message
                    .contains("the caller is spiffe://cluster1/ns/istio-system/sa/meshpeer-proxy"),
            "{message}"
        );
    }
    assert!(
        c.metrics()
            .contains("ca_refusals_total{reason=\"identity_mismatch\"} 3"),
        "{}",
        c.metrics()
    );
}

#[tokio::test]
async fn p7_unknown_token_or_no_credential_is_unauthenticated_and_says_how() {
    let c = start(controller_id("cluster1"), |_| {}).await;
    let (code, message) = refused(
        c.client(token("not-a-token"))
            .create(&proxy("cluster1"), HOUR)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(
        message.contains("tokens-file: the token is not in"),
        "{message}"
    );

    let (code, message) = refused(
        c.client(TokenSource::None)
            .create(&proxy("cluster1"), HOUR)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(
        message.starts_with("no credential: send `authorization: Bearer <token>`")
            && message.contains("client certificate of trust domain cluster1"),
        "{message}"
    );
    let m = c.metrics();
    assert!(
        m.contains("ca_refusals_total{reason=\"unknown_token\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("ca_refusals_total{reason=\"no_credential\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn p7_renewal_with_a_client_certificate_of_the_same_trust_domain() {
    let c = start(controller_id("cluster1"), |_| {}).await;
    let first = c.client(token(PROXY_TOKEN));
    let identity = Arc::new(
        Identity::from_issuer(
            Arc::new(first),
            c.root.trust_root().clone(),
            proxy("cluster1"),
            HOUR,
        )
        .await
        .unwrap(),
    );
    // Without a token, the current certificate vouches for its own identity.
    let renewing = c.client(TokenSource::None);
    renewing.renew_with(&identity);
    let leaf = renewing.create(&proxy("cluster1"), HOUR).await.unwrap();
    assert_eq!(peer_identity(&leaf.chain).unwrap(), proxy("cluster1"));
    assert_ne!(leaf.chain[0], identity.current().chain[0]);
    // ...and for nothing else.
    let (code, message) = refused(
        renewing
            .create(&id("cluster1", "default", "sleep"), HOUR)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert!(
        message.contains("(authenticated by client-certificate)"),
        "{message}"
    );
}

#[tokio::test]
async fn p7_a_client_certificate_of_another_trust_domain_is_no_credential_here() {
    let c = start(controller_id("cluster1"), |_| {}).await;
    // cluster2's proxy, under the same root.
    let other = Arc::new(
        Identity::new(
            ca(&c.root, "cluster2"),
            proxy("cluster2"),
            HOUR,
            SystemTime::now(),
        )
        .unwrap(),
    );
    let client = c.client(TokenSource::None);
    client.renew_with(&other);
    let (code, message) = refused(client.create(&proxy("cluster2"), HOUR).await.unwrap_err());
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(
        message.contains(
            "client-certificate: the client certificate spiffe://cluster2/ns/istio-system/sa/meshpeer-proxy is not of this cluster's trust domain cluster1"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn p7_lifetime_is_capped() {
    let c = start(controller_id("cluster1"), |s| s.max_validity = HOUR).await;
    let leaf = c
        .client(token(PROXY_TOKEN))
        .create(&proxy("cluster1"), 30 * DAY)
        .await
        .unwrap();
    assert!(
        leaf.not_after <= SystemTime::now() + HOUR,
        "asked for 30 days, capped at an hour"
    );
    assert!(leaf.not_after > SystemTime::now() + HOUR - Duration::from_secs(60));
}

#[tokio::test]
async fn p7_node_impersonation_is_refused_until_supported() {
    let c = start(controller_id("cluster1"), |_| {}).await;
    let workload = id("cluster1", "default", "sleep");
    let (csr, _) = CertificateRequest::generate(&workload).unwrap();
    let call = CallInfo {
        bearer: Some(PROXY_TOKEN.to_owned()),
        ..CallInfo::default()
    };
    let metadata = prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(workload.to_string())),
            },
        )]
        .into(),
    };
    let refused = c
        .service
        .create(
            &call,
            &IstioCertificateRequest {
                csr,
                validity_duration: 0,
                metadata: Some(metadata),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code, tonic::Code::PermissionDenied);
    assert_eq!(refused.reason, "impersonation");
    assert!(
        refused
            .message
            .contains("may not obtain a certificate for spiffe://cluster1/ns/default/sa/sleep"),
        "{}",
        refused.message
    );
}

#[tokio::test]
async fn p7_a_malformed_csr_is_an_invalid_argument() {
    let c = start(controller_id("cluster1"), |_| {}).await;
    let call = CallInfo {
        bearer: Some(PROXY_TOKEN.to_owned()),
        ..CallInfo::default()
    };
    let refused = c
        .service
        .create(
            &call,
            &IstioCertificateRequest {
                csr: "not a CSR".to_owned(),
                validity_duration: 0,
                metadata: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code, tonic::Code::InvalidArgument);
    assert!(
        refused.message.starts_with("the CSR cannot be read"),
        "{}",
        refused.message
    );
}

#[tokio::test]
async fn p7_the_client_refuses_a_server_that_is_not_the_controller() {
    // The endpoint presents a workload's certificate, not the controller's.
    let c = start(id("cluster1", "default", "impostor"), |_| {}).await;
    let err = c
        .client(token(PROXY_TOKEN))
        .create(&proxy("cluster1"), HOUR)
        .await
        .unwrap_err();
    match err {
        CaClientError::Tls { refusal, .. } => {
            assert_eq!(refusal.reason(), "wrong_identity");
            assert!(matches!(refusal, Refusal::WrongIdentity { .. }));
            assert!(
                refusal
                    .to_string()
                    .contains("expected spiffe://cluster1/ns/istio-system/sa/meshpeer"),
                "{refusal}"
            );
        }
        other => panic!("expected a TLS refusal, got {other}"),
    }
}
