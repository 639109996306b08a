//! SPEC B7: the HBONE request head (method, `:authority`, tunnel headers:
//! the gateway's `connect_target` and `tunnel_meta`) and the gateway's
//! decisions on what it names (`GatewayHandler::open`), over arbitrary
//! bytes and arbitrary structured heads. No panic; a target accepted is
//! `host:port` with a port and no userinfo; refusals are 400, 403, 404,
//! 405 or 503 and never carry an endpoint's address; and no case
//! allocates beyond a bound proportional to its input.
//!
//! Cases: `PROPTEST_CASES` (default 256; `scripts/fuzz.sh` runs 100,000).

#![allow(clippy::unwrap_used)]

use std::alloc::System;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use meshpeer_dataplane::endpoint_policy::EndpointPolicy;
use meshpeer_dataplane::feed::{Caller, CatalogFeed};
use meshpeer_dataplane::gateway::{GatewayConfig, GatewayHandler};
use meshpeer_dataplane::hbone::{
    TunnelHandler, TunnelMeta, TunnelRequest, connect_target, tunnel_meta,
};
use meshpeer_dataplane::metrics::DataplaneMetrics;
use meshpeer_dataplane::state::{DataplaneState, StateOptions};
use meshpeer_identity::SpiffeId;
use meshpeer_model::testing::{ClusterBuilder, pod, svc};
use meshpeer_model::testing_b7::{self as b7, run};
use meshpeer_model::{CatalogConfig, Object, catalog, exports};
use proptest::prelude::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::sync::watch;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated while `f` runs.
fn allocated<T>(f: impl FnOnce() -> T) -> (T, usize) {
    b7::allocated(GLOBAL, f)
}

fn bound(input: usize) -> usize {
    256 * 1024 + 64 * input
}

/// The pods' address: it must never reach a caller.
const POD_IP: &str = "127.0.0.9";

fn authority() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        prop::sample::select(vec![
            "web.shop.mesh.internal",
            "WEB.Shop.mesh.internal",
            "idle.shop.mesh.internal",
            "cart.shop.mesh.internal",
            "web.shop.global",
            "web.shop.anything.else",
            "private.shop.svc.cluster.local",
            "nope.shop.mesh.internal",
            "127.0.0.9",
            "[::1]",
            "",
            "user@web.shop.mesh.internal",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9.@\\[\\]:_%-]{0,40}",
        any::<String>(),
    ];
    let port = prop_oneof![
        Just("8000".to_owned()),
        Just("0".to_owned()),
        Just(String::new()),
        any::<u32>().prop_map(|p| p.to_string()),
        "[0-9a-z]{0,6}",
    ];
    (host, prop::option::of(port)).prop_map(|(h, p)| match p {
        Some(p) => format!("{h}:{p}"),
        None => h,
    })
}

/// A request head as bytes: method, target, headers (name, value).
type Head = (Vec<u8>, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

fn head() -> impl Strategy<Value = Head> {
    let method = prop_oneof![
        Just(b"CONNECT".to_vec()),
        Just(b"GET".to_vec()),
        prop::collection::vec(any::<u8>(), 0..10),
    ];
    let target = prop_oneof![
        authority().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..80),
    ];
    let header = (
        prop_oneof![
            prop::sample::select(vec!["forwarded", "baggage", "traceparent", "host"])
                .prop_map(|n| n.as_bytes().to_vec()),
            prop::collection::vec(any::<u8>(), 0..12),
        ],
        prop::collection::vec(any::<u8>(), 0..64),
    );
    (method, target, prop::collection::vec(header, 0..6))
}

#[test]
fn b7_hbone_arbitrary_request_heads() {
    run(head(), |(method, target, headers)| {
        let input = method.len()
            + target.len()
            + headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>();
        let ((), used) = allocated(|| {
            let Ok(method) = Method::from_bytes(&method) else {
                return;
            };
            let Ok(uri) = Uri::try_from(target.as_slice()) else {
                return;
            };
            let mut map = HeaderMap::new();
            for (n, v) in &headers {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                    map.append(n, v);
                }
            }
            match connect_target(&method, &uri) {
                Ok(authority) => {
                    assert_eq!(method, Method::CONNECT);
                    assert!(!authority.contains('@'), "{authority}");
                    let (host, port) = authority.rsplit_once(':').unwrap();
                    assert!(!host.is_empty(), "{authority}");
                    assert!(port.parse::<u16>().is_ok_and(|p| p != 0), "{authority}");
                }
                Err(refuse) => {
                    assert!(
                        [StatusCode::METHOD_NOT_ALLOWED, StatusCode::BAD_REQUEST]
                            .contains(&refuse.status),
                        "{refuse:?}"
                    );
                    assert!(refuse.message.len() <= 320, "{refuse:?}");
                }
            }
            let meta = tunnel_meta(&map);
            for value in [&meta.forwarded, &meta.baggage, &meta.traceparent]
                .into_iter()
                .flatten()
            {
                assert!(HeaderValue::from_str(value).is_ok(), "{value:?}");
            }
        });
        prop_assert!(
            used <= bound(input),
            "a head of {input} bytes allocated {used}"
        );
        Ok(())
    });
}

/// A gateway of cluster1 exporting `shop/web` (pods at [`POD_IP`]) and
/// `shop/idle`, seeing `shop/cart` of cluster2; callers cluster2 and
/// cluster3. `dial`: the endpoint policy allows the pods (nothing listens
/// there: the dial fails) or refuses them (never dialled).
fn gateway(dial: bool) -> GatewayHandler {
    let c1 = ClusterBuilder::new("cluster1")
        .trust_domain("cluster1.td")
        .link_with("cluster2", "cluster2", "cluster2.td")
        .service(svc("shop", "web").global().port("http", 8000, 1))
        .service(svc("shop", "idle").global().not_ready(1))
        .object(Object::Pod(pod(
            "shop",
            "web-0",
            &[("app", "web")],
            POD_IP,
            true,
            None,
        )));
    let c2 = ClusterBuilder::new("cluster2")
        .trust_domain("cluster2.td")
        .service(svc("shop", "cart").global().ready(1))
        .build();
    let cat = catalog(&c1.build(), &[exports(&c2)], &CatalogConfig::default());
    let callers = ["cluster2", "cluster3"]
        .map(|c| Caller {
            cluster: c.into(),
            trust_domain: format!("{c}.td"),
            segment: None,
            connected: true,
        })
        .to_vec();
    #[allow(clippy::needless_update)]
    let feed = Arc::new(CatalogFeed {
        version: 1,
        catalog: Arc::new(cat),
        callers,
        // Fields the feed may gain keep their defaults.
        ..CatalogFeed::default()
    });
    let state = Arc::new(DataplaneState::build(feed, &StateOptions::default()));
    let (_tx, rx) = watch::channel(state);
    let allow = if dial {
        vec!["127.0.0.0/8".parse().unwrap()]
    } else {
        Vec::new()
    };
    GatewayHandler::new(
        rx,
        GatewayConfig {
            endpoints: Arc::new(EndpointPolicy::new(allow, Vec::new())),
            max_attempts: 2,
            ..GatewayConfig::default()
        },
        Arc::new(DataplaneMetrics::default()),
    )
}

#[test]
fn b7_hbone_gateway_decisions_on_arbitrary_heads() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (refusing, dialling) = rt.block_on(async { (gateway(false), gateway(true)) });
    let trust_domain = prop_oneof![
        prop::sample::select(vec!["cluster2.td", "cluster3.td", "cluster1.td", "evil.td"])
            .prop_map(str::to_owned),
        "[a-z0-9.-]{1,20}",
    ];
    let seen: Mutex<std::collections::BTreeSet<u16>> = Mutex::default();
    let check = |(authority, td, pick): (String, String, u8)| {
        let Some(peer) = SpiffeId::new(&td, "ns", "sa").ok() else {
            return Ok(());
        };
        // One case in 16 dials (and fails): the rest are decided alone.
        let handler = if pick % 16 == 0 { &dialling } else { &refusing };
        let req = TunnelRequest {
            peer,
            peer_cluster: None,
            remote: "198.51.100.7:40000".parse().unwrap(),
            authority: authority.clone(),
            meta: TunnelMeta::default(),
        };
        let (result, used) = allocated(|| rt.block_on(handler.open(req)));
        prop_assert!(
            used <= bound(authority.len()),
            "{used} bytes for {authority:?}"
        );
        if let Err(refuse) = &result {
            seen.lock().unwrap().insert(refuse.status.as_u16());
            prop_assert!(
                [400u16, 403, 404, 503].contains(&refuse.status.as_u16()),
                "{refuse:?}"
            );
            prop_assert!(
                !refuse.message.contains(POD_IP) || authority.contains(POD_IP),
                "a refusal names the endpoint: {refuse:?}"
            );
        }
        Ok(())
    };
    // Cases that reach each decision for sure (the random ones may not,
    // in 256 cases), then the random ones.
    for (authority, td, pick) in [
        ("web.shop.mesh.internal", "cluster2.td", 1),
        ("nope.shop.mesh.internal:8000", "cluster2.td", 1),
        ("web.shop.mesh.internal:8000", "evil.td", 1),
        ("idle.shop.mesh.internal:8000", "cluster2.td", 1),
        ("web.shop.mesh.internal:8000", "cluster2.td", 0),
    ] {
        check((authority.to_owned(), td.to_owned(), pick)).unwrap();
    }
    run((authority(), trust_domain, any::<u8>()), check);
    // The cases reach every decision, not only the first check.
    let seen = seen.into_inner().unwrap();
    for status in [400, 403, 404, 503] {
        assert!(
            seen.contains(&status),
            "no case was answered {status}: {seen:?}"
        );
    }
}
