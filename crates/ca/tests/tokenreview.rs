//! SPEC P7 in Kubernetes mode: a bearer token is checked with a TokenReview,
//! exactly as istiod asks it (tower-test mock of the API server: method,
//! path, body), and only a ServiceAccount token for the audience `istio-ca`
//! names a caller.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use meshpeer_ca::{AuthError, Authenticator, CallInfo, TokenReviewAuthenticator};
use serde_json::{Value, json};
use tower_test::mock::Handle;

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn authenticator() -> (TokenReviewAuthenticator, ApiHandle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    (
        TokenReviewAuthenticator::new(client, vec![meshpeer_ca::DEFAULT_AUDIENCE.to_owned()]),
        handle,
    )
}

fn bearer(token: &str) -> CallInfo {
    CallInfo {
        bearer: Some(token.to_owned()),
        ..CallInfo::default()
    }
}

/// Serves one TokenReview: checks the request is the one istiod sends, and
/// answers `status` (with `code`).
async fn review(api: &mut ApiHandle, token: &str, code: StatusCode, status: Value) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(10), api.next_request())
        .await
        .expect("a TokenReview in time")
        .expect("client alive");
    let (parts, body) = req.into_parts();
    assert_eq!(parts.method, Method::POST);
    assert_eq!(
        parts.uri.path(),
        "/apis/authentication.k8s.io/v1/tokenreviews"
    );
    assert!(
        parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .all(str::is_empty),
        "no query parameters: {:?}",
        parts.uri.query()
    );
    assert_eq!(
        parts.headers.get("content-type").unwrap(),
        "application/json"
    );
    let body: Value = serde_json::from_slice(&body.collect_bytes().await.unwrap()).unwrap();
    assert_eq!(
        body,
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {},
            "spec": {"token": token, "audiences": ["istio-ca"]},
        })
    );
    let mut answer = body.clone();
    answer["status"] = status;
    send.send_response(
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap(),
    );
}

fn service_account(ns: &str, sa: &str) -> Value {
    json!({
        "authenticated": true,
        "audiences": ["istio-ca"],
        "user": {
            "username": format!("system:serviceaccount:{ns}:{sa}"),
            "uid": "0c1e0e5a-0000-4000-8000-000000000000",
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
            "extra": {"authentication.kubernetes.io/pod-name": ["meshpeer-proxy-x7k2p"]},
        },
    })
}

#[tokio::test]
async fn p7_token_review_is_istios_request_and_names_the_service_account() {
    let (auth, mut api) = authenticator();
    let call = bearer("eyJhbGciOi.proxy");
    let (caller, ()) = tokio::join!(
        auth.authenticate(&call),
        review(
            &mut api,
            "eyJhbGciOi.proxy",
            StatusCode::CREATED,
            service_account("istio-system", "meshpeer-proxy")
        )
    );
    let caller = caller.unwrap();
    assert_eq!(caller.namespace, "istio-system");
    assert_eq!(caller.service_account, "meshpeer-proxy");
    assert_eq!(caller.pod.as_deref(), Some("meshpeer-proxy-x7k2p"));
    assert_eq!(caller.by, "token-review");
    assert_eq!(
        caller.spiffe_id("cluster1").unwrap().to_string(),
        "spiffe://cluster1/ns/istio-system/sa/meshpeer-proxy"
    );

    // No token: nothing to review, and no request is made.
    assert_eq!(
        auth.authenticate(&CallInfo::default()).await,
        Err(AuthError::NoCredential)
    );
}

#[tokio::test]
async fn p7_token_review_refuses_what_is_not_a_service_account_token_for_istio_ca() {
    let cases: Vec<(StatusCode, Value, &str)> = vec![
        (
            StatusCode::CREATED,
            json!({"authenticated": false, "error": "token has expired"}),
            "the API server did not authenticate the token: token has expired",
        ),
        (
            StatusCode::CREATED,
            json!({"authenticated": false}),
            "the token is not authenticated",
        ),
        (
            StatusCode::CREATED,
            json!({
                "authenticated": true,
                "audiences": ["https://kubernetes.default.svc"],
                "user": {"username": "system:serviceaccount:default:default", "groups": ["system:serviceaccounts"]},
            }),
            "the token is not for audience istio-ca, it is for https://kubernetes.default.svc",
        ),
        (
            StatusCode::CREATED,
            json!({
                "authenticated": true,
                "audiences": ["istio-ca"],
                "user": {"username": "alice", "groups": ["system:authenticated"]},
            }),
            "the token is not a service account's (user \"alice\")",
        ),
        (
            StatusCode::CREATED,
            json!({
                "authenticated": true,
                "audiences": ["istio-ca"],
                "user": {"username": "system:serviceaccount:default:default", "groups": ["system:authenticated"]},
            }),
            "the token is not a service account's",
        ),
    ];
    for (code, status, want) in cases {
        let (auth, mut api) = authenticator();
        let call = bearer("t");
        let (result, ()) = tokio::join!(
            auth.authenticate(&call),
            review(&mut api, "t", code, status.clone())
        );
        let err = result.unwrap_err().to_string();
        assert!(err.contains(want), "{status}: {err}");
    }

    // The API server failing is not a verdict on the token.
    let (auth, mut api) = authenticator();
    let call = bearer("t");
    let serve = async {
        let (_, send) = api.next_request().await.unwrap();
        send.send_response(
            Response::builder()
                .status(StatusCode::FORBIDDEN)
                .header("content-type", "application/json")
                .body(Body::from(
                    serde_json::to_vec(&json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "tokenreviews.authentication.k8s.io is forbidden",
                        "reason": "Forbidden", "code": 403,
                    }))
                    .unwrap(),
                ))
                .unwrap(),
        );
    };
    let (result, ()) = tokio::join!(auth.authenticate(&call), serve);
    let err = result.unwrap_err();
    assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("forbidden"), "{err}");
}

#[test]
fn p7_token_review_needs_create_on_tokenreviews() {
    assert_eq!(
        meshpeer_ca::tokenreview::required_permission(),
        ("authentication.k8s.io", "tokenreviews", "create")
    );
}
