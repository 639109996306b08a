//! SPEC B7: the cluster-folder reader, what file mode reads from the
//! manifests of a folder (`parse_documents`, then `FolderState` on a real
//! folder, then the export computed from it): arbitrary bytes (YAML-ish
//! text, anchors and aliases, deep nesting, invalid UTF-8) and arbitrary
//! structured objects (the httpbin example's objects with values replaced,
//! removed or copied anywhere, malformed names included). No panic; a
//! stream reads as its documents read one by one; the folder uses exactly
//! the objects of its readable files, reads again to no change, and equals
//! the one-shot reader when every file is readable; and no case allocates
//! beyond a bound proportional to its input.
//!
//! Cases: `PROPTEST_CASES` (default 256; `scripts/fuzz.sh` runs 100,000).

#![allow(clippy::unwrap_used)]

use std::alloc::System;
use std::collections::BTreeSet;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};

use meshpeer_model::testing_b7::{self as b7, run};
use meshpeer_model::{ObjectKey, Parsed, exports, parse_documents};
use meshpeer_store::file::FolderState;
use meshpeer_store::load_cluster_dir;
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
/// folder holds. The multiple is larger than for the wire formats: a
/// YAML document becomes events, a JSON tree and typed objects (measured:
/// ~40 bytes per byte of a plain YAML manifest, ~165 for one written as
/// flow-style JSON, ~90 for aliases replayed to their limit). The fixed
/// part covers a document nested to the parser's depth limit (64 levels
/// cost ~7 KB each: 80 bytes of `- - - ...` allocate ~280 KB).
fn bound(input: usize) -> usize {
    1024 * 1024 + 256 * input
}

const CLUSTER_YAML: &str = "name: cluster1\nregion: us-east\nzone: us-east-1\n";

/// The httpbin example's manifests (cluster1).
const EXAMPLE: [(&str, &str); 4] = [
    (
        "eastwest.yaml",
        include_str!("../../../examples/httpbin/cluster1/eastwest.yaml"),
    ),
    (
        "httpbin.yaml",
        include_str!("../../../examples/httpbin/cluster1/httpbin.yaml"),
    ),
    (
        "istio-system.yaml",
        include_str!("../../../examples/httpbin/cluster1/istio-system.yaml"),
    ),
    (
        "nodes.yaml",
        include_str!("../../../examples/httpbin/cluster1/nodes.yaml"),
    ),
];

/// Keys of what a parse read.
fn keys(parsed: &Parsed) -> Vec<ObjectKey> {
    parsed.objects.iter().map(|o| o.key()).collect()
}

/// Parses `text`, checking the allocation bound.
fn parse_checked(text: &str) -> Result<Parsed, TestCaseError> {
    let (parsed, used) = allocated(|| parse_documents("case.yaml", text));
    prop_assert!(
        used <= bound(text.len()),
        "parsing {} bytes allocated {used}: {:?}",
        text.len(),
        text.chars().take(200).collect::<String>()
    );
    for e in &parsed.errors {
        // Errors point into the text.
        if let Some(line) = e.line {
            prop_assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "{e}");
        }
    }
    Ok(parsed)
}

// ---- Arbitrary bytes -----------------------------------------------------

/// YAML-ish text: lines made of YAML's punctuation, keys the reader knows,
/// names well- and ill-formed; anchors, aliases and deep nesting.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "apiVersion: v1",
            "kind: Service",
            "kind: Namespace",
            "kind: List",
            "kind: EndpointSlice",
            "items:",
            "metadata:",
            "  name: web",
            "  name: a/b",
            "  name: -x-",
            "  namespace: shop",
            "  namespace: ''",
            "spec:",
            "  ports:",
            "  - port: 8000",
            "  - port: 65536",
            "  - port: -1",
            "    name: http",
            "  labels: {solo.io/service-scope: global}",
            "---",
            "...",
            "--- {a: 1}",
            "- &a [x, x, x, x, x, x, x, x]",
            "- &b [*a, *a, *a, *a, *a, *a, *a, *a]",
            "- &c [*b, *b, *b, *b, *b, *b, *b, *b]",
            "- &d [*c, *c, *c, *c, *c, *c, *c, *c]",
            "- &e [*d, *d, *d, *d, *d, *d, *d, *d]",
            "<<: *a",
            "key: !!binary aGVsbG8=",
            "key: !custom x",
            "\"quoted: \\u0000\"",
            "%YAML 1.2",
            "|",
            ">-",
            "  \t",
            "# comment",
            "{",
            "[",
            "}",
            "]",
            ": :",
            "? complex",
            "\u{feff}",
            "\r",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,30}",
        any::<String>(),
        (1..300usize).prop_map(|n| "[".repeat(n)),
        (1..300usize).prop_map(|n| "- ".repeat(n) + "x"),
        (1..60usize).prop_map(|n| format!("a: {}", "9".repeat(n))),
    ];
    prop::collection::vec(token, 0..24).prop_map(|lines| lines.join("\n"))
}

/// Text ending in a newline (so that appending a line cannot change its
/// last line).
fn terminated(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[test]
fn b7_folder_arbitrary_text_reads_as_its_documents_do() {
    run((yamlish(), yamlish()), |(a, b)| {
        let (a, b) = (terminated(a), terminated(b));
        let pa = parse_checked(&a)?;
        let pb = parse_checked(&b)?;
        let both = format!("{a}---\n{b}");
        let pboth = parse_checked(&both)?;
        // Same input, same reading.
        let again = parse_documents("case.yaml", &a);
        prop_assert_eq!(&again.objects, &pa.objects);
        prop_assert_eq!(&again.errors, &pa.errors);
        // A stream reads as its two halves read alone.
        prop_assert_eq!(keys(&pboth), [keys(&pa), keys(&pb)].concat());
        prop_assert_eq!(pboth.errors.len(), pa.errors.len() + pb.errors.len());
        prop_assert_eq!(pboth.skipped.len(), pa.skipped.len() + pb.skipped.len());
        Ok(())
    });
}

/// A billion laughs: aliases that would expand to 10^9 nodes are refused,
/// not expanded.
#[test]
fn b7_folder_alias_bombs_are_refused_within_the_bound() {
    let _one = b7::alone();
    let mut text = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    a0: &a0 \"lol\"\n",
    );
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        let list = [prev.as_str(); 10].join(", ");
        text.push_str(&format!("    a{i}: &a{i} [{list}]\n"));
    }
    let (parsed, used) = allocated(|| parse_documents("bomb.yaml", &text));
    assert!(parsed.objects.is_empty(), "{:?}", parsed.objects);
    assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
    assert!(used <= bound(text.len()), "{used} bytes allocated");
}

// ---- Arbitrary structured objects on a real folder -----------------------

/// Names, malformed ones as often as not.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            [
                "web",
                "shop",
                "httpbin",
                "istio-system",
                "",
                "-",
                "a/b",
                "..",
                "Web",
                "ünï",
                "a.b",
                "x y",
                "web.shop.mesh.internal",
                "global",
                "solo.io/service-scope",
            ]
            .map(str::to_owned)
            .into_iter()
            .chain(["x".repeat(300)])
            .collect::<Vec<_>>()
        ),
        "[a-z0-9-]{1,12}",
        any::<String>(),
    ]
}

/// Any JSON value, small.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::from(65_536)),
        Just(Value::from(0)),
        Just(Value::from(-1)),
        name().prop_map(Value::String),
        prop::sample::select(vec![
            "10.0.0.1",
            "::1",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "fe80::1%eth0",
            "10.0.0.0/8",
            "global",
            "cluster",
            "PreferClose",
            "TCP",
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

/// An edit of an object: a value replaced (by anything, or by one of its
/// kind), removed, or copied elsewhere.
#[derive(Clone, Debug)]
enum Edit {
    Replace(prop::sample::Index, Value),
    InKind(prop::sample::Index, String, i64),
    Remove(prop::sample::Index),
    Copy(prop::sample::Index, prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => (any::<prop::sample::Index>(), json()).prop_map(|(i, v)| Edit::Replace(i, v)),
        6 => (any::<prop::sample::Index>(), name(), any::<i64>())
            .prop_map(|(i, s, n)| Edit::InKind(i, s, n)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Remove),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Edit::Copy(a, b)),
    ]
}

fn apply_edit(v: &mut Value, e: &Edit) {
    let mut at = Vec::new();
    pointers(v, String::new(), &mut at);
    match e {
        Edit::Replace(i, new) => {
            if let Some(slot) = v.pointer_mut(&at[i.index(at.len())]) {
                *slot = new.clone();
            }
        }
        Edit::InKind(i, text, n) => {
            let leaves: Vec<&String> = at
                .iter()
                .filter(|p| {
                    v.pointer(p)
                        .is_some_and(|l| !l.is_array() && !l.is_object())
                })
                .collect();
            if leaves.is_empty() {
                return;
            }
            let p = leaves[i.index(leaves.len())].clone();
            if let Some(slot) = v.pointer_mut(&p) {
                *slot = match &*slot {
                    Value::String(_) => Value::String(text.clone()),
                    Value::Number(_) => Value::from(*n % 70_000),
                    Value::Bool(b) => Value::Bool(!*b),
                    other => other.clone(),
                };
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
            if let (Some(copy), Some(slot)) = (copy, v.pointer_mut(&at[to.index(at.len())]))
                && serde_json::to_vec(&copy).map_or(0, |b| b.len()) < 16 * 1024
            {
                *slot = copy;
            }
        }
    }
}

/// The example's documents, as JSON values, by file.
fn example_docs() -> Vec<(&'static str, Vec<Value>)> {
    EXAMPLE
        .iter()
        .map(|(file, text)| {
            let docs = text
                .split("\n---\n")
                .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
                .filter(|v| v.is_object())
                .collect();
            (*file, docs)
        })
        .collect()
}

/// How a file is written: its documents as YAML, as JSON documents, or as
/// one JSON `List`; or raw bytes.
#[derive(Clone, Debug)]
enum Form {
    Yaml,
    Json,
    List,
    Bytes(Vec<u8>),
}

fn form() -> impl Strategy<Value = Form> {
    prop_oneof![
        4 => Just(Form::Yaml),
        2 => Just(Form::Json),
        1 => Just(Form::List),
        1 => prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            yamlish().prop_map(String::into_bytes),
        ]
        .prop_map(Form::Bytes),
    ]
}

fn render(docs: &[Value], form: &Form) -> Vec<u8> {
    match form {
        Form::Yaml => docs
            .iter()
            .map(|d| serde_saphyr::to_string(d).unwrap())
            .collect::<Vec<_>>()
            .join("---\n")
            .into_bytes(),
        Form::Json => docs
            .iter()
            .map(|d| serde_json::to_string(d).unwrap())
            .collect::<Vec<_>>()
            .join("\n---\n")
            .into_bytes(),
        Form::List => serde_json::to_vec(&serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": docs,
        }))
        .unwrap(),
        Form::Bytes(b) => b.clone(),
    }
}

/// Per example file: edits to its documents (document index, edit) and how
/// it is written.
type FileCase = (Vec<(prop::sample::Index, Edit)>, Form);

/// Cases whose folder used some edited object.
static EDITED_USED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn b7_folder_arbitrary_objects_on_a_real_folder() {
    let base = example_docs();
    assert!(base.iter().map(|(_, d)| d.len()).sum::<usize>() > 10);
    let file_case = (
        prop::collection::vec((any::<prop::sample::Index>(), edit()), 0..6),
        form(),
    );
    run(
        prop::collection::vec(file_case, EXAMPLE.len()..=EXAMPLE.len()),
        |files: Vec<FileCase>| {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("cluster.yaml"), CLUSTER_YAML).unwrap();
            let mut expected: BTreeSet<ObjectKey> = BTreeSet::new();
            let mut all_clean = true;
            let mut input = CLUSTER_YAML.len();
            let mut edited = false;
            for ((file, docs), (edits, form)) in base.iter().zip(&files) {
                let mut docs = docs.clone();
                for (i, e) in edits {
                    let d = i.index(docs.len());
                    apply_edit(&mut docs[d], e);
                    edited = true;
                }
                let bytes = render(&docs, form);
                input += bytes.len();
                fs::write(dir.path().join(file), &bytes).unwrap();
                // The folder uses a file's objects when all of it reads.
                match std::str::from_utf8(&bytes) {
                    Ok(text) => {
                        let parsed = parse_checked(text)?;
                        if parsed.errors.is_empty() {
                            expected.extend(keys(&parsed));
                        } else {
                            all_clean = false;
                        }
                    }
                    Err(_) => all_clean = false,
                }
            }
            let (state, used) = allocated(|| FolderState::load(dir.path()));
            prop_assert!(
                used <= bound(input),
                "{input} bytes of folder allocated {used}"
            );
            let mut state = state.unwrap();
            let got: BTreeSet<ObjectKey> = state.objects().map(|o| o.key()).collect();
            prop_assert_eq!(&got, &expected);
            // Read again: nothing changed.
            prop_assert!(state.poll().unwrap().is_empty());
            let snap = state.snapshot();
            if all_clean {
                let once = load_cluster_dir(dir.path()).unwrap();
                prop_assert_eq!(once.objects(), snap.objects());
            }
            // What the cluster exports from it: computed, bounded.
            let (_export, used) = allocated(|| exports(&snap));
            prop_assert!(
                used <= bound(input),
                "exporting {input} bytes allocated {used}"
            );
            if edited && !got.is_empty() {
                EDITED_USED.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        },
    );
    let used = EDITED_USED.load(Ordering::Relaxed);
    eprintln!("{used} cases used edited objects");
    assert!(used > 0, "no edited object was ever used");
}
