//! SPEC B7: the feed client, what a proxy or gateway reads from its
//! controller's catalog stream, through the same steps the client takes
//! (`feed_line::LineReader` splits the chunks into lines, `feed_line::decode`
//! applies each line to the feed held, `DataplaneState::advance` turns the
//! feed into listeners and DNS names): arbitrary bytes in arbitrary chunks,
//! and arbitrary structured lines (real whole and delta lines with values
//! replaced anywhere in them, malformed names included). No panic; lines
//! come out the same however the bytes are chunked, and none beyond the
//! limit is held; a line applied gives the feed it says (a whole one reads
//! back equal, a delta only onto the version it names); the state advanced
//! equals the state built afresh; and no case allocates beyond a bound
//! proportional to its input. And the client itself (`feed::follow`) on a
//! real socket, through garbage streams to a good one.
//!
//! Cases: `PROPTEST_CASES` (default 256; `scripts/fuzz.sh` runs 100,000).

#![allow(clippy::unwrap_used)]

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use meshpeer_dataplane::feed::{Caller, CatalogFeed};
use meshpeer_dataplane::feed_line::{self, LineError, LineReader};
use meshpeer_dataplane::state::{DataplaneState, StateOptions};
use meshpeer_model::testing::{ClusterBuilder, svc};
use meshpeer_model::testing_b7::{self as b7, run};
use meshpeer_model::{CatalogConfig, catalog, exports};
use proptest::prelude::*;
use serde_json::Value;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated while `f` runs.
fn allocated<T>(f: impl FnOnce() -> T) -> (T, usize) {
    b7::allocated(GLOBAL, f)
}

/// What one case may allocate: a fixed amount and a multiple of what the
/// controller sent (the decoded catalog, the indexes built from it).
fn bound(input: usize) -> usize {
    256 * 1024 + 64 * input
}

// ---- The line reader ----------------------------------------------------

fn stream_bytes() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let byte = prop_oneof![
        3 => Just(b'\n'),
        3 => Just(b'{'),
        10 => any::<u8>(),
    ];
    prop::collection::vec(prop::collection::vec(byte, 0..96), 0..12)
}

#[test]
fn b7_feed_lines_do_not_depend_on_chunking_and_stay_within_the_limit() {
    run(
        (
            stream_bytes(),
            prop_oneof![1..64usize, Just(feed_line::MAX_LINE)],
        ),
        |(chunks, max)| {
            let all: Vec<u8> = chunks.concat();
            let (result, used) = allocated(|| {
                let mut reader = LineReader::new(max);
                let mut lines = Vec::new();
                for chunk in &chunks {
                    reader.push(chunk)?;
                    while let Some(line) = reader.next_line() {
                        lines.push(line?);
                    }
                    assert!(reader.pending() <= max, "{} held", reader.pending());
                }
                Ok::<_, LineError>((lines, reader.pending()))
            });
            prop_assert!(
                used <= bound(all.len()),
                "{} bytes allocated {used}",
                all.len()
            );
            let mut expected: Vec<&[u8]> = all.split(|b| *b == b'\n').collect();
            let tail = expected.pop().unwrap_or_default();
            match result {
                Ok((lines, pending)) => {
                    prop_assert_eq!(&lines, &expected);
                    prop_assert_eq!(pending, tail.len());
                    prop_assert!(lines.iter().all(|l| l.len() <= max));
                }
                Err(LineError::TooLong { max: m }) => {
                    prop_assert_eq!(m, max);
                    // Some line, finished or not, is longer than the limit.
                    prop_assert!(
                        expected.iter().chain([&tail]).any(|l| l.len() > max),
                        "refused a stream whose lines all fit"
                    );
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
            // One chunk or one byte at a time: the same lines.
            if max == feed_line::MAX_LINE {
                let mut bytewise = LineReader::new(max);
                let mut lines = Vec::new();
                for b in &all {
                    bytewise.push(std::slice::from_ref(b)).unwrap();
                    while let Some(line) = bytewise.next_line() {
                        lines.push(line.unwrap());
                    }
                }
                prop_assert_eq!(&lines, &expected);
            }
            Ok(())
        },
    );
}

// ---- Structured lines ----------------------------------------------------

/// Names, malformed ones as often as not.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            [
                "web",
                "shop",
                "cart",
                "c1",
                "cluster2",
                "",
                "-",
                "a/b",
                "..",
                "Web",
                "ünï",
                "a.b",
                "x y",
                "web.shop.mesh.internal",
            ]
            .map(str::to_owned)
            .into_iter()
            .chain(["x".repeat(80)])
            .collect::<Vec<_>>()
        ),
        "[a-z0-9-]{1,12}",
        any::<String>(),
    ]
}

/// A catalog as a controller builds it: a cluster (named anyhow) linked to
/// a peer, both with global services named anyhow.
#[allow(clippy::needless_update)]
fn feed(version: u64, names: &[(String, String)], callers: &[String]) -> CatalogFeed {
    // Mostly linked to the cluster exporting; sometimes to a name anyhow.
    let peer = match names.get(1) {
        Some((n, _)) if names.len() % 3 == 2 => n.as_str(),
        _ => "cluster2",
    };
    let mut c1 = ClusterBuilder::new("cluster1").link(peer).service(
        svc("shop", "web")
            .global()
            .port("http", 8000, 8080)
            .ready(2),
    );
    let mut c2 = ClusterBuilder::new("cluster2");
    for (i, (ns, n)) in names.iter().enumerate() {
        let b = svc(ns, n).global().ready(1 + i % 3);
        if i % 2 == 0 {
            c1 = c1.service(b);
        } else {
            c2 = c2.service(b);
        }
    }
    let cat = catalog(
        &c1.build(),
        [&exports(&c2.build())],
        &CatalogConfig::default(),
    );
    CatalogFeed {
        version,
        catalog: Arc::new(cat),
        callers: callers
            .iter()
            .map(|c| Caller {
                cluster: c.clone(),
                trust_domain: format!("{c}.td"),
                segment: None,
                connected: true,
            })
            .collect(),
        // Fields the feed may gain keep their defaults.
        ..CatalogFeed::default()
    }
}

/// Any JSON value, small.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(65_536)),
        Just(Value::from(-1)),
        name().prop_map(Value::String),
        prop::sample::select(vec![
            "10.0.0.1",
            "::1",
            "0.0.0.0/0",
            "240.0.0.0/4",
            "::/0",
            "256.1.1.1",
            "mesh.internal",
            "svc.cluster.local",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(name(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every place in `v`, as a JSON pointer.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointers(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(item, format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// An edit of a line: a value replaced, removed, or copied elsewhere.
#[derive(Clone, Debug)]
enum Edit {
    Replace(prop::sample::Index, Value),
    Remove(prop::sample::Index),
    Copy(prop::sample::Index, prop::sample::Index),
    /// A leaf replaced by one of its kind (a name by a name, a number by a
    /// number): what gets past the parser to the state.
    InKind(prop::sample::Index, String, u64, i64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), json()).prop_map(|(i, v)| Edit::Replace(i, v)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Remove),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Edit::Copy(a, b)),
        6 => (any::<prop::sample::Index>(), name(), any::<u64>(), any::<i64>())
            .prop_map(|(i, s, u, n)| Edit::InKind(i, s, u, n)),
    ]
}

/// `line` (without its newline) with `edits` made to its JSON.
fn edited(line: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(line).unwrap();
    for e in edits {
        let mut at = Vec::new();
        pointers(&v, String::new(), &mut at);
        match e {
            Edit::InKind(i, text, u, n) => {
                let leaves: Vec<&String> = at
                    .iter()
                    .filter(|p| {
                        v.pointer(p)
                            .is_some_and(|l| !l.is_array() && !l.is_object())
                    })
                    .collect();
                if leaves.is_empty() {
                    continue;
                }
                let p = leaves[i.index(leaves.len())].clone();
                if let Some(slot) = v.pointer_mut(&p) {
                    *slot = match &*slot {
                        Value::String(_) => Value::String(text.clone()),
                        Value::Number(old) if old.is_u64() => Value::from(*u),
                        Value::Number(_) => Value::from(*n),
                        Value::Bool(b) => Value::Bool(!*b),
                        other => other.clone(),
                    };
                }
            }
            Edit::Replace(i, new) => {
                if let Some(slot) = v.pointer_mut(&at[i.index(at.len())]) {
                    *slot = new.clone();
                }
            }
            Edit::Remove(i) => {
                let p = &at[i.index(at.len())];
                if let Some((parent, key)) = p.rsplit_once('/')
                    && let Some(parent) = v.pointer_mut(parent)
                {
                    match parent {
                        Value::Object(map) => {
                            map.remove(&key.replace("~1", "/").replace("~0", "~"));
                        }
                        Value::Array(items) => {
                            if let Ok(k) = key.parse::<usize>()
                                && k < items.len()
                            {
                                items.remove(k);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Edit::Copy(from, to) => {
                let copy = v.pointer(&at[from.index(at.len())]).cloned();
                let to = &at[to.index(at.len())];
                // Not into itself: a value that holds its target grows.
                if let (Some(copy), Some(slot)) = (copy, v.pointer_mut(to))
                    && serde_json::to_vec(&copy).map_or(0, |b| b.len()) < 64 * 1024
                {
                    *slot = copy;
                }
            }
        }
    }
    serde_json::to_vec(&v).unwrap()
}

fn strip(mut line: Vec<u8>) -> Vec<u8> {
    line.pop();
    line
}

/// What a follower holds: the feed and the state made from it.
type Held = (Arc<CatalogFeed>, Arc<DataplaneState>);

/// Lines applied so far: the cases reach past the parser.
static APPLIED: AtomicUsize = AtomicUsize::new(0);

/// Applies `line` to `held` as the client does, checking the invariants;
/// returns the feed and state held afterwards.
fn apply_checked(held: Option<Held>, line: &[u8]) -> Result<Option<Held>, TestCaseError> {
    let opts = StateOptions::default();
    let held_feed = held.as_ref().map(|(f, _)| Arc::clone(f));
    // What the client holds is already there; the line costs its own size.
    let held_size = held_feed
        .as_ref()
        .map_or(0, |f| serde_json::to_vec(&**f).unwrap().len());
    let (decoded, used) = allocated(|| feed_line::decode(held_feed.as_deref(), line));
    prop_assert!(
        used <= bound(line.len()) + 4 * held_size,
        "decoding a line of {} bytes allocated {used}",
        line.len()
    );
    let feed = match decoded {
        Err(LineError::OutOfStep { since, held: h }) => {
            prop_assert_eq!(h, held_feed.as_ref().map(|f| f.version));
            prop_assert!(h != Some(since));
            return Ok(held);
        }
        Err(_) => return Ok(held),
        Ok(feed) => Arc::new(feed),
    };
    APPLIED.fetch_add(1, Ordering::Relaxed);
    // A line applied reads back: its whole form decodes to the same feed.
    let whole = strip(feed_line::encode(None, &feed));
    prop_assert_eq!(&feed_line::decode(None, &whole).unwrap(), &*feed);
    let input = line.len() + held_size;
    let (built, used) = allocated(|| DataplaneState::build(Arc::clone(&feed), &opts));
    prop_assert!(
        used <= bound(input),
        "building the state of {input} bytes of feed allocated {used}"
    );
    if let Some((_, state)) = &held {
        let ((advanced, _), used) = allocated(|| state.advance(Arc::clone(&feed), &opts));
        prop_assert!(
            used <= bound(input),
            "advancing the state by {input} bytes of feed allocated {used}"
        );
        prop_assert_eq!(&advanced.listeners, &built.listeners);
        prop_assert_eq!(&advanced.dns, &built.dns);
        prop_assert_eq!(&advanced.outside_zones, &built.outside_zones);
    }
    Ok(Some((feed, Arc::new(built))))
}

fn names() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((name(), name()), 0..6)
}

/// Cases whose edited lines were both applied.
static EDITED_APPLIED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn b7_feed_arbitrary_structured_lines_apply_consistently() {
    run(
        (
            (names(), names(), prop::collection::vec(name(), 0..3)),
            prop::collection::vec(edit(), 0..4),
            prop::collection::vec(edit(), 0..4),
            any::<u64>(),
        ),
        |((a, b, callers), edit_whole, edit_delta, since)| {
            let first = feed(1, &a, &callers);
            let second = feed(2, &b, &callers[..callers.len() / 2]);
            let whole = edited(&strip(feed_line::encode(None, &first)), &edit_whole);
            let delta = strip(feed_line::encode(Some(&first), &second));
            let delta = edited(&delta, &edit_delta);
            let held = apply_checked(None, &whole)?;
            let held = apply_checked(held, &delta)?;
            // A delta since another version is never applied.
            if let Some((f, _)) = &held
                && since != f.version
            {
                let mut v: Value = serde_json::from_slice(&delta).unwrap_or_default();
                if let Some(d) = v.get_mut("delta").and_then(Value::as_object_mut) {
                    d.insert("since".into(), since.into());
                    let line = serde_json::to_vec(&v).unwrap();
                    let out = feed_line::decode(Some(f), &line);
                    prop_assert!(
                        matches!(
                            out,
                            Err(LineError::OutOfStep { .. }) | Err(LineError::Json(_))
                        ),
                        "{out:?}"
                    );
                }
            }
            if !edit_whole.is_empty() && !edit_delta.is_empty() && held.is_some() {
                EDITED_APPLIED.fetch_add(1, Ordering::Relaxed);
            }
            // Unedited lines always apply, and bring the follower to `second`.
            if edit_whole.is_empty() && edit_delta.is_empty() {
                let (f, _) = held.unwrap();
                prop_assert_eq!(&*f, &second);
            }
            Ok(())
        },
    );
    // Edited lines are not all refused by the parser: some reach the state.
    let edited = EDITED_APPLIED.load(Ordering::Relaxed);
    eprintln!("{edited} cases applied both edited lines");
    assert!(edited > 0, "no edited line was ever applied");
}

fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        // A real line, mangled byte by byte.
        (
            names(),
            any::<bool>(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
        )
            .prop_map(|(names, is_delta, edits)| {
                let first = feed(1, &[], &[]);
                let next = feed(2, &names, &["cluster2".to_owned()]);
                let mut b = strip(if is_delta {
                    feed_line::encode(Some(&first), &next)
                } else {
                    feed_line::encode(None, &next)
                });
                for (at, byte) in edits {
                    let i = at.index(b.len());
                    b[i] = byte;
                }
                b
            }),
        // Deep nesting and long numbers.
        (1..2_000usize).prop_map(|n| "[".repeat(n).into_bytes()),
        (1..2_000usize).prop_map(|n| format!("{{\"version\":{}}}", "9".repeat(n)).into_bytes()),
    ]
}

#[test]
fn b7_feed_arbitrary_bytes_apply_or_are_refused() {
    let opts = StateOptions::default();
    let first = Arc::new(feed(1, &[], &[]));
    let state = Arc::new(DataplaneState::build(Arc::clone(&first), &opts));
    run(line_bytes(), |bytes| {
        apply_checked(None, &bytes)?;
        apply_checked(Some((Arc::clone(&first), Arc::clone(&state))), &bytes)?;
        Ok(())
    });
    eprintln!("{} lines applied", APPLIED.load(Ordering::Relaxed));
}

// ---- The real client on a real socket -------------------------------------

/// A controller that answers each watch with the next scripted body (in
/// small chunks), then closes; the last body is held open.
async fn scripted_controller(
    bodies: Vec<Vec<u8>>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (served, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for (i, body) in bodies.iter().enumerate() {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client left before asking");
                head.extend_from_slice(&buf[..n]);
            }
            let _ = served.send(i);
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            for chunk in body.chunks(7) {
                conn.write_all(chunk).await.unwrap();
                conn.flush().await.unwrap();
            }
            if i + 1 == bodies.len() {
                // Held open: the stream goes on.
                let _ = conn.read(&mut buf).await;
            }
        }
    });
    (addr, rx)
}

/// The feed client itself (`feed::follow`) over a real socket: a garbage
/// line and a delta on a fresh stream end the stream, the client keeps the
/// last good catalog and reconnects; whole and delta lines in small chunks
/// are applied in order. Nothing broken ever reaches the follower.
#[tokio::test]
async fn b7_feed_the_client_keeps_its_last_catalog_through_garbage_and_reconnects() {
    const DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);
    let names = |n: &str| vec![("shop".to_owned(), n.to_owned())];
    let v1 = feed(1, &names("web"), &["cluster2".to_owned()]);
    let v2 = feed(2, &names("cart"), &["cluster2".to_owned()]);
    let v3 = feed(3, &names("db"), &[]);
    let v4 = feed(4, &names("web"), &["cluster3".to_owned()]);
    let bodies = vec![
        // A good whole line, then garbage.
        [
            feed_line::encode(None, &v1),
            b"{\"version\":9,\"catalog\":[\n".to_vec(),
        ]
        .concat(),
        // A delta on a fresh stream: out of step.
        feed_line::encode(Some(&v1), &v2),
        // Invalid UTF-8 and a line with neither catalog nor delta.
        b"\xff\xfe\n{\"version\":5}\n".to_vec(),
        // Whole, then a delta onto it.
        [
            feed_line::encode(None, &v3),
            feed_line::encode(Some(&v3), &v4),
        ]
        .concat(),
    ];
    let (addr, mut served) = scripted_controller(bodies).await;
    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(CatalogFeed::default()));
    let client = tokio::spawn(meshpeer_dataplane::feed::follow(addr.to_string(), tx));
    let mut seen = Vec::new();
    let outcome = tokio::time::timeout(DEADLINE, async {
        loop {
            rx.changed().await.unwrap();
            let f = rx.borrow_and_update().clone();
            seen.push(f.version);
            if f.version == 4 {
                return f;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the client never reached version 4; saw {seen:?}"));
    assert_eq!(*outcome, v4);
    // Every version the follower saw was a good one, in order.
    assert!(
        seen.iter().all(|v| [1, 3, 4].contains(v)) && seen.is_sorted(),
        "{seen:?}"
    );
    // It went through every stream: the bad ones ended theirs.
    let mut streams = Vec::new();
    while let Ok(i) = served.try_recv() {
        streams.push(i);
    }
    assert_eq!(streams, [0, 1, 2, 3]);
    client.abort();
}
