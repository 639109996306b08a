//! What the API server does with a custom resource before and during
//! validation, in its order: pruning (unknown fields are errors under strict
//! field validation), dropping non-nullable nulls, defaulting, OpenAPI schema
//! validation with list-type invariants, and the CEL rules.

use std::sync::Arc;

use cel::Env;
use serde_json::{Map, Value as Json};

use crate::Violation;
use crate::formats;
use crate::rules::Failure;
use crate::schema::Schema;

/// `parent.key`.
pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `parent[i]`.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// `parent[key]`, for the keys of a map (`additionalProperties`).
pub(crate) fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

fn push(out: &mut Vec<Violation>, path: &str, message: impl Into<String>) {
    out.push(Violation {
        path: path.to_owned(),
        message: message.into(),
    });
}

/// Fields every resource root (and embedded resource) may have whatever its
/// schema says; metadata is validated on its own.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

fn sorted_keys(map: &Map<String, Json>) -> Vec<String> {
    let mut keys: Vec<String> = map.keys().cloned().collect();
    keys.sort();
    keys
}

/// Structural pruning (`structuralpruning.Prune`): every field the schema
/// does not declare is reported (strict field validation) and removed, then
/// nulls of non-nullable fields without a default are dropped
/// (`PruneNonNullableNullsWithoutDefaults`).
pub(crate) fn prune(
    v: &mut Json,
    s: Option<&Schema>,
    path: &str,
    root: bool,
    out: &mut Vec<Violation>,
) {
    if let Some(s) = s
        && s.keeps_unknown()
        && s.properties.is_empty()
        && s.additional_schema().is_none()
    {
        return;
    }
    match v {
        Json::Object(map) => {
            for k in sorted_keys(map) {
                // Metadata is checked on its own; an embedded resource keeps
                // its apiVersion, kind and metadata whatever its schema says.
                if (root && k == "metadata")
                    || (s.is_some_and(|s| s.embedded) && ROOT_FIELDS.contains(&k.as_str()))
                {
                    continue;
                }
                let prop = s.and_then(|s| s.properties.get(&k));
                let ap = s.and_then(Schema::additional_schema);
                let Some(val) = map.get_mut(&k) else { continue };
                if let Some(prop) = prop {
                    if val.is_null() && !prop.nullable && prop.default.is_none() {
                        map.remove(&k);
                        continue;
                    }
                    prune(val, Some(prop), &child(path, &k), prop.embedded, out);
                } else if let Some(ap) = ap {
                    if val.is_null() && !ap.nullable && ap.default.is_none() {
                        map.remove(&k);
                        continue;
                    }
                    prune(val, Some(ap), &key(path, &k), ap.embedded, out);
                } else if s.is_some_and(Schema::keeps_unknown) {
                    // preserved as it is
                } else if root && ROOT_FIELDS.contains(&k.as_str()) {
                    // apiVersion / kind not declared by the schema
                } else {
                    let p = child(path, &k);
                    push(out, &p, format!("unknown field \"{p}\""));
                    map.remove(&k);
                }
            }
        }
        Json::Array(items) => {
            let item_schema = s.and_then(|s| s.items.as_deref());
            for (i, item) in items.iter_mut().enumerate() {
                let embedded = item_schema.is_some_and(|s| s.embedded);
                prune(item, item_schema, &index(path, i), embedded, out);
            }
        }
        _ => {}
    }
}

/// Structural defaulting (`structuraldefaulting.Default`): missing fields
/// (and nulls of non-nullable ones) with a default get it, recursively.
pub(crate) fn apply_defaults(v: &mut Json, s: &Schema) {
    match v {
        Json::Object(map) => {
            for (k, prop) in &s.properties {
                let Some(default) = &prop.default else {
                    continue;
                };
                match map.get(k) {
                    None => {
                        map.insert(k.clone(), default.clone());
                    }
                    Some(Json::Null) if !prop.nullable => {
                        map.insert(k.clone(), default.clone());
                    }
                    _ => {}
                }
            }
            for (k, val) in map.iter_mut() {
                if let Some(prop) = s.properties.get(k) {
                    apply_defaults(val, prop);
                } else if let Some(ap) = s.additional_schema() {
                    if val.is_null()
                        && !ap.nullable
                        && let Some(d) = &ap.default
                    {
                        *val = d.clone();
                    }
                    apply_defaults(val, ap);
                }
            }
        }
        Json::Array(items) => {
            if let Some(is) = s.items.as_deref() {
                for item in items.iter_mut() {
                    if item.is_null()
                        && !is.nullable
                        && let Some(d) = &is.default
                    {
                        *item = d.clone();
                    }
                    apply_defaults(item, is);
                }
            }
        }
        _ => {}
    }
}

/// The JSON type name the OpenAPI validator reports a value as.
fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(n) => {
            if n.is_i64() || n.is_u64() {
                "integer"
            } else {
                "number"
            }
        }
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

fn is_integer(v: &Json) -> bool {
    match v {
        Json::Number(n) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn type_ok(v: &Json, ty: &str) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "integer" => is_integer(v),
        _ => true,
    }
}

/// JSON equality with numbers compared by value (1 == 1.0).
pub(crate) fn json_eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        _ => a == b,
    }
}

fn render(v: &Json) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

fn number_text(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e18 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

/// Violations found by the schema validator, and how many checks passed
/// (go-openapi's `MatchCount`, which picks the branch of a failed
/// `anyOf`/`oneOf` whose errors are reported).
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) out: Vec<Violation>,
    matched: usize,
}

impl Report {
    fn fail(&mut self, path: &str, message: impl Into<String>) {
        push(&mut self.out, path, message);
    }

    /// Records a check: a pass counts towards `matched`.
    fn check(&mut self, ok: bool, path: &str, message: impl FnOnce() -> String) {
        if ok {
            self.matched += 1;
        } else {
            self.fail(path, message());
        }
    }
}

/// OpenAPI v3 validation of `v` against `s` (kube-openapi's validator as the
/// API server runs it on custom resources), plus the list-type invariants
/// (`structurallisttype.ValidateListSetsAndMaps`).
pub(crate) fn validate(v: &Json, s: &Schema, path: &str, root: bool, r: &mut Report) {
    if v.is_null() && s.nullable {
        r.matched += 1;
        return;
    }
    if let Some(ty) = s.ty.as_deref() {
        if !type_ok(v, ty) {
            r.fail(path, format!("must be of type {ty}: \"{}\"", json_type(v)));
            return;
        }
        r.matched += 1;
    }
    if let Some(values) = &s.enum_values {
        r.check(values.iter().any(|e| json_eq(e, v)), path, || {
            let supported = values.iter().map(render).collect::<Vec<_>>().join(", ");
            format!(
                "Unsupported value: {}: supported values: {supported}",
                render(v)
            )
        });
    }
    match v {
        Json::String(text) => validate_string(text, s, path, r),
        Json::Number(n) => {
            if let Some(f) = n.as_f64() {
                validate_number(f, s, path, r);
            }
        }
        Json::Array(items) => validate_array(items, s, path, r),
        Json::Object(map) => validate_object(map, s, path, root, r),
        _ => {}
    }
    validate_junctors(v, s, path, r);
}

fn validate_string(text: &str, s: &Schema, path: &str, r: &mut Report) {
    if let Some(format) = s.format.as_deref() {
        r.check(formats::valid(format, text), path, || {
            format!("must be of type {format}: {}", render(&Json::from(text)))
        });
    }
    let len = text.chars().count() as u64;
    if let Some(max) = s.max_length {
        r.check(len <= max, path, || {
            let unit = if max == 1 { "byte" } else { "bytes" };
            format!("Too long: may not be more than {max} {unit}")
        });
    }
    if let Some(min) = s.min_length {
        r.check(len >= min, path, || {
            format!("should be at least {min} chars long")
        });
    }
    if let Some((pattern, re)) = &s.pattern {
        r.check(re.is_match(text), path, || {
            format!("should match '{pattern}'")
        });
    }
}

fn validate_number(f: f64, s: &Schema, path: &str, r: &mut Report) {
    if let Some(max) = s.maximum {
        if s.exclusive_maximum {
            r.check(f < max, path, || {
                format!("should be less than {}", number_text(max))
            });
        } else {
            r.check(f <= max, path, || {
                format!("should be less than or equal to {}", number_text(max))
            });
        }
    }
    if let Some(min) = s.minimum {
        if s.exclusive_minimum {
            r.check(f > min, path, || {
                format!("should be greater than {}", number_text(min))
            });
        } else {
            r.check(f >= min, path, || {
                format!("should be greater than or equal to {}", number_text(min))
            });
        }
    }
}

fn validate_array(items: &[Json], s: &Schema, path: &str, r: &mut Report) {
    let n = items.len() as u64;
    if let Some(max) = s.max_items {
        r.check(n <= max, path, || {
            format!("Too many: {n}: must have at most {max} items")
        });
    }
    if let Some(min) = s.min_items {
        r.check(n >= min, path, || {
            format!("should have at least {min} items")
        });
    }
    if let Some(is) = s.items.as_deref() {
        for (i, item) in items.iter().enumerate() {
            validate(item, is, &index(path, i), is.embedded, r);
        }
    }
    match s.list_type.as_deref() {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].iter().any(|prev| json_eq(prev, item)) {
                    r.fail(
                        &index(path, i),
                        format!("Duplicate value: {}", render(item)),
                    );
                }
            }
        }
        Some("map") => validate_list_map(items, s, path, r),
        _ => {}
    }
}

/// Items of an `x-kubernetes-list-type: map` list must be objects, unique by
/// their `x-kubernetes-list-map-keys` (a missing key takes its default).
fn validate_list_map(items: &[Json], s: &Schema, path: &str, r: &mut Report) {
    let mut seen: Vec<Vec<Option<Json>>> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Json::Object(obj) = item else {
            r.fail(
                &index(path, i),
                "must be an object for an array of list-type map",
            );
            continue;
        };
        let keys: Vec<Option<Json>> = s
            .list_map_keys
            .iter()
            .map(|k| {
                obj.get(k).cloned().or_else(|| {
                    s.items
                        .as_deref()
                        .and_then(|is| is.properties.get(k))
                        .and_then(|p| p.default.clone())
                })
            })
            .collect();
        let duplicate = seen.iter().any(|prev| {
            prev.iter().zip(&keys).all(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => json_eq(a, b),
                (None, None) => true,
                _ => false,
            })
        });
        if duplicate {
            let mut shown = Map::new();
            for (k, val) in s.list_map_keys.iter().zip(&keys) {
                if let Some(val) = val {
                    shown.insert(k.clone(), val.clone());
                }
            }
            r.fail(
                &index(path, i),
                format!("Duplicate value: {}", render(&Json::Object(shown))),
            );
        }
        seen.push(keys);
    }
}

fn validate_object(map: &Map<String, Json>, s: &Schema, path: &str, root: bool, r: &mut Report) {
    for req in &s.required {
        r.check(map.contains_key(req), &child(path, req), || {
            "Required value".to_owned()
        });
    }
    let n = map.len() as u64;
    if let Some(max) = s.max_properties {
        r.check(n <= max, path, || {
            format!("should have at most {max} properties")
        });
    }
    if let Some(min) = s.min_properties {
        r.check(n >= min, path, || {
            format!("should have at least {min} properties")
        });
    }
    for k in sorted_keys(map) {
        if (root || s.embedded) && k == "metadata" {
            continue;
        }
        let Some(val) = map.get(&k) else { continue };
        if let Some(prop) = s.properties.get(&k) {
            validate(val, prop, &child(path, &k), prop.embedded, r);
        } else if let Some(ap) = s.additional_schema() {
            validate(val, ap, &key(path, &k), ap.embedded, r);
        }
    }
}

/// The report of `v` against a sub-schema of a junctor.
fn branch(v: &Json, s: &Schema, path: &str) -> Report {
    let mut r = Report::default();
    validate(v, s, path, false, &mut r);
    r
}

/// The failed branch whose errors go-openapi reports: the one with the most
/// passed checks, the first of those on a tie.
fn best(branches: Vec<Report>) -> Vec<Violation> {
    let mut best: Option<Report> = None;
    for b in branches.into_iter().filter(|b| !b.out.is_empty()) {
        if best.as_ref().is_none_or(|cur| b.matched > cur.matched) {
            best = Some(b);
        }
    }
    best.map(|b| b.out).unwrap_or_default()
}

fn validate_junctors(v: &Json, s: &Schema, path: &str, r: &mut Report) {
    if !s.all_of.is_empty() {
        let branches: Vec<Report> = s.all_of.iter().map(|b| branch(v, b, path)).collect();
        if branches.iter().any(|b| !b.out.is_empty()) {
            r.fail(path, "must validate all the schemas (allOf)");
            r.out.extend(branches.into_iter().flat_map(|b| b.out));
        } else {
            r.matched += 1;
        }
    }
    if !s.any_of.is_empty() {
        let branches: Vec<Report> = s.any_of.iter().map(|b| branch(v, b, path)).collect();
        if branches.iter().all(|b| !b.out.is_empty()) {
            r.fail(path, "must validate at least one schema (anyOf)");
            r.out.extend(best(branches));
        } else {
            r.matched += 1;
        }
    }
    if !s.one_of.is_empty() {
        let branches: Vec<Report> = s.one_of.iter().map(|b| branch(v, b, path)).collect();
        let valid = branches.iter().filter(|b| b.out.is_empty()).count();
        if valid == 0 {
            r.fail(
                path,
                "must validate one and only one schema (oneOf). Found none valid",
            );
            r.out.extend(best(branches));
        } else if valid > 1 {
            r.fail(
                path,
                format!(
                    "must validate one and only one schema (oneOf). Found {valid} valid alternatives"
                ),
            );
        } else {
            r.matched += 1;
        }
    }
    if let Some(not) = s.not.as_deref() {
        r.check(!branch(v, not, path).out.is_empty(), path, || {
            "must not validate the schema (not)".to_owned()
        });
    }
}

/// Evaluates every `x-kubernetes-validations` rule on every present,
/// non-null value, the node's own rules before those of its children.
pub(crate) fn eval_rules(
    env: &Arc<Env>,
    v: &Json,
    s: &Schema,
    path: &str,
    root: bool,
    out: &mut Vec<Violation>,
) {
    if v.is_null() {
        return;
    }
    for rule in &s.rules {
        if rule.transition {
            continue;
        }
        match rule.eval(env, v, s, root) {
            Ok(()) => {}
            Err(Failure::False) => {
                let p = match rule.field_path.as_deref() {
                    Some(fp) if fp.starts_with('.') || fp.starts_with('[') => {
                        format!("{path}{fp}").trim_start_matches('.').to_owned()
                    }
                    Some(fp) => child(path, fp),
                    None => path.to_owned(),
                };
                let message = match &rule.message {
                    Some(m) => m.trim().to_owned(),
                    None => format!("failed rule: {}", rule.error_string()),
                };
                push(out, &p, message);
            }
            Err(Failure::Error(e)) => {
                let message = if e == "no such overload" {
                    format!(
                        "'{e}': call arguments did not match a supported operator, function or \
                         macro signature for rule: {}",
                        rule.error_string()
                    )
                } else {
                    format!("{e} evaluating rule: {}", rule.error_string())
                };
                push(out, path, message);
            }
        }
    }
    match v {
        Json::Object(map) => {
            for k in sorted_keys(map) {
                if (root || s.embedded) && k == "metadata" {
                    continue;
                }
                let Some(val) = map.get(&k) else { continue };
                if let Some(prop) = s.properties.get(&k) {
                    eval_rules(env, val, prop, &child(path, &k), prop.embedded, out);
                } else if let Some(ap) = s.additional_schema() {
                    eval_rules(env, val, ap, &key(path, &k), ap.embedded, out);
                }
            }
        }
        Json::Array(items) => {
            if let Some(is) = s.items.as_deref() {
                for (i, item) in items.iter().enumerate() {
                    eval_rules(env, item, is, &index(path, i), is.embedded, out);
                }
            }
        }
        _ => {}
    }
}
