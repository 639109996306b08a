//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;

use meshpeer_crdcheck::Validator;
use serde_json::Value as Json;

pub(crate) const SCHEMAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas");

/// The validator for the four CRDs of `schemas/`, loaded once.
pub(crate) fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| Validator::from_dir(Path::new(SCHEMAS)).expect("schemas/ loads"))
}

/// One YAML document as JSON.
pub(crate) fn yaml(text: &str) -> Json {
    serde_saphyr::from_str(text).expect("valid YAML")
}

/// The documents of a `---`-separated YAML stream.
pub(crate) fn yaml_docs(text: &str) -> Vec<Json> {
    text.split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(yaml)
        .collect()
}

/// The violations of `obj` as `path: message` strings (empty when valid).
pub(crate) fn violations(obj: &Json) -> Vec<String> {
    match validator().validate(obj) {
        Ok(()) => Vec::new(),
        Err(vs) => {
            assert!(!vs.is_empty(), "Err(vec![]) must not happen");
            vs.iter().map(ToString::to_string).collect()
        }
    }
}

#[track_caller]
pub(crate) fn assert_valid(obj: &Json) {
    let vs = violations(obj);
    assert!(vs.is_empty(), "expected no violations, got {vs:#?}");
}

/// `obj` with the value at JSON pointer `pointer` set to `value` (the
/// parent must exist; a list index may be one past the end to append).
pub(crate) fn with(obj: &Json, pointer: &str, value: Json) -> Json {
    let mut obj = obj.clone();
    let (parent, last) = pointer.rsplit_once('/').expect("a JSON pointer");
    let parent = obj
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent} in the object"));
    match parent {
        Json::Object(map) => {
            map.insert(last.replace("~1", "/").replace("~0", "~"), value);
        }
        Json::Array(items) => {
            let i: usize = last.parse().expect("a list index");
            if i == items.len() {
                items.push(value);
            } else {
                items[i] = value;
            }
        }
        other => panic!("cannot set {last} in {other}"),
    }
    obj
}

/// `obj` without the value at JSON pointer `pointer`.
pub(crate) fn without(obj: &Json, pointer: &str) -> Json {
    let mut obj = obj.clone();
    let (parent, last) = pointer.rsplit_once('/').expect("a JSON pointer");
    match obj.pointer_mut(parent).expect("the parent exists") {
        Json::Object(map) => {
            map.remove(last).expect("the field exists");
        }
        Json::Array(items) => {
            items.remove(last.parse::<usize>().expect("a list index"));
        }
        other => panic!("cannot remove {last} from {other}"),
    }
    obj
}
