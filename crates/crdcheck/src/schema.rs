//! The structural OpenAPI v3 schema of one CRD version, as the API server
//! reads it from `spec.versions[*].schema.openAPIV3Schema`.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value as Json;

use crate::rules::Rule;

/// `additionalProperties`: a schema for every other key, or a plain bool.
#[derive(Debug)]
pub(crate) enum Additional {
    Bool(bool),
    Schema(Box<Schema>),
}

/// One `x-kubernetes-validations` entry before it is compiled.
#[derive(Debug, Clone)]
pub(crate) struct RawRule {
    pub(crate) rule: String,
    pub(crate) message: Option<String>,
    pub(crate) field_path: Option<String>,
    /// Where the rule sits, for error messages: `openAPIV3Schema.properties.spec...`.
    pub(crate) schema_path: String,
}

/// A schema node. Only the keywords the API server acts on are kept.
#[derive(Debug, Default)]
pub(crate) struct Schema {
    pub(crate) ty: Option<String>,
    pub(crate) nullable: bool,
    pub(crate) enum_values: Option<Vec<Json>>,
    pub(crate) required: Vec<String>,
    pub(crate) properties: BTreeMap<String, Schema>,
    pub(crate) additional: Option<Additional>,
    pub(crate) items: Option<Box<Schema>>,
    pub(crate) preserve_unknown: bool,
    pub(crate) int_or_string: bool,
    pub(crate) embedded: bool,
    pub(crate) max_length: Option<u64>,
    pub(crate) min_length: Option<u64>,
    pub(crate) pattern: Option<(String, Regex)>,
    pub(crate) format: Option<String>,
    pub(crate) maximum: Option<f64>,
    pub(crate) exclusive_maximum: bool,
    pub(crate) minimum: Option<f64>,
    pub(crate) exclusive_minimum: bool,
    pub(crate) max_items: Option<u64>,
    pub(crate) min_items: Option<u64>,
    pub(crate) max_properties: Option<u64>,
    pub(crate) min_properties: Option<u64>,
    pub(crate) all_of: Vec<Schema>,
    pub(crate) any_of: Vec<Schema>,
    pub(crate) one_of: Vec<Schema>,
    pub(crate) not: Option<Box<Schema>>,
    pub(crate) list_type: Option<String>,
    pub(crate) list_map_keys: Vec<String>,
    pub(crate) default: Option<Json>,
    pub(crate) raw_rules: Vec<RawRule>,
    pub(crate) rules: Vec<Rule>,
}

/// Why a schema could not be read.
#[derive(Debug)]
pub(crate) struct SchemaError {
    pub(crate) path: String,
    pub(crate) message: String,
}

fn err(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn as_u64(v: &Json, path: &str, key: &str) -> Result<u64, SchemaError> {
    v.as_u64()
        .ok_or_else(|| err(path, format!("{key} must be a non-negative integer")))
}

fn as_bool(v: &Json, path: &str, key: &str) -> Result<bool, SchemaError> {
    v.as_bool()
        .ok_or_else(|| err(path, format!("{key} must be a boolean")))
}

fn as_str<'a>(v: &'a Json, path: &str, key: &str) -> Result<&'a str, SchemaError> {
    v.as_str()
        .ok_or_else(|| err(path, format!("{key} must be a string")))
}

fn string_list(v: &Json, path: &str, key: &str) -> Result<Vec<String>, SchemaError> {
    let arr = v
        .as_array()
        .ok_or_else(|| err(path, format!("{key} must be a list of strings")))?;
    arr.iter()
        .map(|s| as_str(s, path, key).map(str::to_owned))
        .collect()
}

fn schema_list(v: &Json, path: &str, key: &str) -> Result<Vec<Schema>, SchemaError> {
    let arr = v
        .as_array()
        .ok_or_else(|| err(path, format!("{key} must be a list of schemas")))?;
    arr.iter()
        .enumerate()
        .map(|(i, s)| junctor(s, &format!("{path}.{key}[{i}]")))
        .collect()
}

/// A sub-schema of `allOf`/`anyOf`/`oneOf`/`not`: value validations only.
/// The API server does not allow CEL rules there; refusing them here keeps
/// them from being silently ignored.
fn junctor(v: &Json, path: &str) -> Result<Schema, SchemaError> {
    let s = Schema::parse(v, path)?;
    if has_rules(&s) {
        return Err(err(
            path,
            "x-kubernetes-validations is not allowed in allOf, anyOf, oneOf or not",
        ));
    }
    Ok(s)
}

fn has_rules(s: &Schema) -> bool {
    !s.raw_rules.is_empty()
        || s.properties.values().any(has_rules)
        || s.items.as_deref().is_some_and(has_rules)
        || matches!(&s.additional, Some(Additional::Schema(ap)) if has_rules(ap))
}

impl Schema {
    /// Reads a schema node (and everything below it).
    pub(crate) fn parse(v: &Json, path: &str) -> Result<Schema, SchemaError> {
        let obj = v
            .as_object()
            .ok_or_else(|| err(path, "a schema must be an object"))?;
        let mut s = Schema::default();
        for (key, val) in obj {
            match key.as_str() {
                "type" => s.ty = Some(as_str(val, path, key)?.to_owned()),
                "nullable" => s.nullable = as_bool(val, path, key)?,
                "enum" => {
                    let arr = val
                        .as_array()
                        .ok_or_else(|| err(path, "enum must be a list"))?;
                    s.enum_values = Some(arr.clone());
                }
                "required" => s.required = string_list(val, path, key)?,
                "properties" => {
                    let props = val
                        .as_object()
                        .ok_or_else(|| err(path, "properties must be an object"))?;
                    for (name, p) in props {
                        let child = Schema::parse(p, &format!("{path}.properties.{name}"))?;
                        s.properties.insert(name.clone(), child);
                    }
                }
                "additionalProperties" => {
                    s.additional = Some(match val {
                        Json::Bool(b) => Additional::Bool(*b),
                        _ => Additional::Schema(Box::new(Schema::parse(
                            val,
                            &format!("{path}.additionalProperties"),
                        )?)),
                    });
                }
                "items" => {
                    s.items = Some(Box::new(Schema::parse(val, &format!("{path}.items"))?));
                }
                "x-kubernetes-preserve-unknown-fields" => {
                    s.preserve_unknown = as_bool(val, path, key)?;
                }
                "x-kubernetes-int-or-string" => s.int_or_string = as_bool(val, path, key)?,
                "x-kubernetes-embedded-resource" => s.embedded = as_bool(val, path, key)?,
                "maxLength" => s.max_length = Some(as_u64(val, path, key)?),
                "minLength" => s.min_length = Some(as_u64(val, path, key)?),
                "pattern" => {
                    let p = as_str(val, path, key)?;
                    let re = Regex::new(p).map_err(|e| {
                        err(
                            path,
                            format!("pattern {p:?} is not a valid regular expression: {e}"),
                        )
                    })?;
                    s.pattern = Some((p.to_owned(), re));
                }
                "format" => s.format = Some(as_str(val, path, key)?.to_owned()),
                "maximum" => {
                    s.maximum = Some(
                        val.as_f64()
                            .ok_or_else(|| err(path, "maximum must be a number"))?,
                    );
                }
                "minimum" => {
                    s.minimum = Some(
                        val.as_f64()
                            .ok_or_else(|| err(path, "minimum must be a number"))?,
                    );
                }
                "exclusiveMaximum" => s.exclusive_maximum = as_bool(val, path, key)?,
                "exclusiveMinimum" => s.exclusive_minimum = as_bool(val, path, key)?,
                "maxItems" => s.max_items = Some(as_u64(val, path, key)?),
                "minItems" => s.min_items = Some(as_u64(val, path, key)?),
                "maxProperties" => s.max_properties = Some(as_u64(val, path, key)?),
                "minProperties" => s.min_properties = Some(as_u64(val, path, key)?),
                "allOf" => s.all_of = schema_list(val, path, key)?,
                "anyOf" => s.any_of = schema_list(val, path, key)?,
                "oneOf" => s.one_of = schema_list(val, path, key)?,
                "not" => s.not = Some(Box::new(junctor(val, &format!("{path}.not"))?)),
                "x-kubernetes-list-type" => {
                    let t = as_str(val, path, key)?;
                    if !matches!(t, "atomic" | "set" | "map") {
                        return Err(err(path, format!("unknown x-kubernetes-list-type {t:?}")));
                    }
                    s.list_type = Some(t.to_owned());
                }
                "x-kubernetes-list-map-keys" => s.list_map_keys = string_list(val, path, key)?,
                "default" => s.default = Some(val.clone()),
                "x-kubernetes-validations" => {
                    let arr = val
                        .as_array()
                        .ok_or_else(|| err(path, "x-kubernetes-validations must be a list"))?;
                    for (i, r) in arr.iter().enumerate() {
                        let rpath = format!("{path}.x-kubernetes-validations[{i}]");
                        let rule = r
                            .get("rule")
                            .and_then(Json::as_str)
                            .ok_or_else(|| err(&rpath, "rule must be a string"))?;
                        let opt = |k: &str| -> Result<Option<String>, SchemaError> {
                            match r.get(k) {
                                None | Some(Json::Null) => Ok(None),
                                Some(v) => Ok(Some(as_str(v, &rpath, k)?.to_owned())),
                            }
                        };
                        s.raw_rules.push(RawRule {
                            rule: rule.to_owned(),
                            message: opt("message")?.filter(|m| !m.trim().is_empty()),
                            field_path: opt("fieldPath")?.filter(|m| !m.is_empty()),
                            schema_path: path.to_owned(),
                        });
                    }
                }
                // Documentation and keywords with no effect on validation.
                _ => {}
            }
        }
        if s.ty.as_deref() == Some("array")
            && s.list_type.as_deref() == Some("map")
            && s.list_map_keys.is_empty()
        {
            return Err(err(
                path,
                "x-kubernetes-list-type: map needs x-kubernetes-list-map-keys",
            ));
        }
        Ok(s)
    }

    /// The schema for the values of the keys not in `properties`, if any.
    pub(crate) fn additional_schema(&self) -> Option<&Schema> {
        match &self.additional {
            Some(Additional::Schema(s)) => Some(s),
            _ => None,
        }
    }

    /// Whether keys not in `properties` are kept (not pruned).
    pub(crate) fn keeps_unknown(&self) -> bool {
        self.preserve_unknown || matches!(self.additional, Some(Additional::Bool(true)))
    }
}
