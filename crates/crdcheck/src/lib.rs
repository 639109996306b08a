//! Validates Kubernetes objects against CustomResourceDefinitions the way a
//! Kubernetes API server does on create with strict field validation
//! (`kubectl apply --validate=strict`).
//!
//! For an object, in the API server's order:
//!
//! 1. `apiVersion`/`kind` select a CRD and a served version;
//! 2. fields the structural schema does not declare are violations (strict)
//!    and are pruned; nulls of non-nullable fields without a default go;
//! 3. `metadata` is checked as ObjectMeta (name, namespace, labels, ...);
//! 4. schema defaults are applied;
//! 5. the OpenAPI v3 schema is checked (types, enums, bounds, patterns,
//!    formats, `required`, junctors, list types);
//! 6. every `x-kubernetes-validations` CEL rule is evaluated on the
//!    defaulted object (transition rules, which use `oldSelf`, are skipped).
//!
//! Every violation is collected, in that order; within a step, fields are
//! visited depth first with object keys sorted.
//!
//! ```
//! let mut validator = meshpeer_crdcheck::Validator::new();
//! validator.add_crd_yaml(r#"
//! apiVersion: apiextensions.k8s.io/v1
//! kind: CustomResourceDefinition
//! metadata: {name: widgets.example.com}
//! spec:
//!   group: example.com
//!   names: {kind: Widget, plural: widgets}
//!   scope: Namespaced
//!   versions:
//!   - name: v1
//!     served: true
//!     storage: true
//!     schema:
//!       openAPIV3Schema:
//!         type: object
//!         properties:
//!           spec:
//!             type: object
//!             properties:
//!               port: {type: integer}
//!             x-kubernetes-validations:
//!             - rule: "!has(self.port) || self.port > 0"
//!               message: port must be positive
//! "#).unwrap();
//! let widget = serde_json::json!({
//!     "apiVersion": "example.com/v1",
//!     "kind": "Widget",
//!     "metadata": {"name": "w", "namespace": "default"},
//!     "spec": {"port": 0},
//! });
//! let violations = validator.validate(&widget).unwrap_err();
//! assert_eq!(violations[0].to_string(), "spec: port must be positive");
//! ```

mod check;
mod formats;
mod meta;
mod rules;
mod schema;
mod structural;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;

use crate::schema::Schema;

/// One way an object is not valid: where, and what the API server would say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field, as the API server writes it: `spec.ports[1].number`,
    /// `spec`, `metadata.labels[app]` (map keys in brackets). Empty for the
    /// object itself.
    pub path: String,
    /// The message, e.g. a rule's `message`, or `Required value`.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a CRD could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// A file or folder could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file of a folder did not load.
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: Box<CrdError>,
    },
    /// The text is not YAML.
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// The document is not an `apiextensions.k8s.io/v1` CustomResourceDefinition,
    /// or lacks something one must have.
    #[error("invalid CustomResourceDefinition {crd}: {message}")]
    Invalid { crd: String, message: String },
    /// A schema of a version can not be used (a bad `pattern`, a keyword of
    /// the wrong type, ...).
    #[error("CRD {crd} version {version}: schema at {schema_path}: {message}")]
    Schema {
        crd: String,
        version: String,
        schema_path: String,
        message: String,
    },
    /// An `x-kubernetes-validations` rule does not compile: a syntax error, an
    /// unknown function or field, a type error, a result that is not a bool.
    #[error(
        "CRD {crd} version {version}: rule {rule:?} at {schema_path} does not compile: {message}"
    )]
    CelCompile {
        crd: String,
        version: String,
        /// Where the rule is: `openAPIV3Schema.properties.spec.properties.ports`.
        schema_path: String,
        /// The rule text.
        rule: String,
        message: String,
    },
    /// Two CRDs for the same group and kind.
    #[error("a CRD for kind {kind} in group {group} is already loaded")]
    Duplicate { group: String, kind: String },
    /// The CEL environment could not be built (a bug of this crate).
    #[error("CEL environment: {0}")]
    Environment(String),
}

#[derive(Debug)]
struct CrdVersion {
    name: String,
    served: bool,
    schema: Schema,
}

#[derive(Debug)]
struct Crd {
    name: String,
    namespaced: bool,
    versions: Vec<CrdVersion>,
}

/// CRDs by (group, kind), ready to validate objects.
pub struct Validator {
    crds: BTreeMap<(String, String), Crd>,
    env: Result<Arc<cel::Env>, String>,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field(
                "crds",
                &self.crds.values().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

fn invalid(crd: &str, message: impl Into<String>) -> CrdError {
    CrdError::Invalid {
        crd: crd.to_owned(),
        message: message.into(),
    }
}

fn get_str<'a>(v: &'a Json, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Json::as_str)
}

impl Validator {
    /// A validator with no CRDs.
    pub fn new() -> Self {
        Validator {
            crds: BTreeMap::new(),
            env: rules::k8s_env().map(Arc::new).map_err(|e| e.to_string()),
        }
    }

    /// Parses one CRD (YAML text); compiles every CEL rule up front.
    pub fn add_crd_yaml(&mut self, text: &str) -> Result<(), CrdError> {
        let env = self.env.clone().map_err(CrdError::Environment)?;
        let doc: Json = serde_saphyr::from_str(text).map_err(|e| CrdError::Yaml(e.to_string()))?;
        let name = get_str(&doc, "/metadata/name")
            .unwrap_or("<unnamed>")
            .to_owned();
        if get_str(&doc, "/apiVersion") != Some("apiextensions.k8s.io/v1")
            || get_str(&doc, "/kind") != Some("CustomResourceDefinition")
        {
            return Err(invalid(
                &name,
                "not an apiextensions.k8s.io/v1 CustomResourceDefinition",
            ));
        }
        let group = get_str(&doc, "/spec/group")
            .ok_or_else(|| invalid(&name, "spec.group is required"))?
            .to_owned();
        let kind = get_str(&doc, "/spec/names/kind")
            .ok_or_else(|| invalid(&name, "spec.names.kind is required"))?
            .to_owned();
        let namespaced = match get_str(&doc, "/spec/scope") {
            Some("Namespaced") => true,
            Some("Cluster") => false,
            other => {
                return Err(invalid(
                    &name,
                    format!("spec.scope must be Namespaced or Cluster, not {other:?}"),
                ));
            }
        };
        let versions_json = doc
            .pointer("/spec/versions")
            .and_then(Json::as_array)
            .ok_or_else(|| invalid(&name, "spec.versions is required"))?;
        let mut versions = Vec::with_capacity(versions_json.len());
        for v in versions_json {
            let vname = get_str(v, "/name")
                .ok_or_else(|| invalid(&name, "a version has no name"))?
                .to_owned();
            let served = v.get("served").and_then(Json::as_bool).unwrap_or(false);
            let schema_json = v.pointer("/schema/openAPIV3Schema").ok_or_else(|| {
                invalid(
                    &name,
                    format!("version {vname} has no schema.openAPIV3Schema"),
                )
            })?;
            let mut schema =
                Schema::parse(schema_json, "openAPIV3Schema").map_err(|e| CrdError::Schema {
                    crd: name.clone(),
                    version: vname.clone(),
                    schema_path: e.path,
                    message: e.message,
                })?;
            rules::compile_tree(&env, &mut schema, true).map_err(|e| CrdError::CelCompile {
                crd: name.clone(),
                version: vname.clone(),
                schema_path: e.schema_path,
                rule: e.rule,
                message: e.message,
            })?;
            versions.push(CrdVersion {
                name: vname,
                served,
                schema,
            });
        }
        let key = (group, kind);
        if self.crds.contains_key(&key) {
            let (group, kind) = key;
            return Err(CrdError::Duplicate { group, kind });
        }
        self.crds.insert(
            key,
            Crd {
                name,
                namespaced,
                versions,
            },
        );
        Ok(())
    }

    /// Loads every `*.yaml` CRD in a folder (in file name order).
    pub fn from_dir(dir: &Path) -> Result<Self, CrdError> {
        let io = |source| CrdError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "yaml") && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let mut validator = Validator::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| CrdError::Io {
                path: path.clone(),
                source,
            })?;
            validator.add_crd_yaml(&text).map_err(|e| CrdError::File {
                path: path.clone(),
                source: Box::new(e),
            })?;
        }
        Ok(validator)
    }

    /// Validates one object (apiVersion/kind/metadata/spec/...). Ok(()) or
    /// every violation found.
    pub fn validate(&self, obj: &Json) -> Result<(), Vec<Violation>> {
        let violation = |path: &str, message: String| {
            vec![Violation {
                path: path.to_owned(),
                message,
            }]
        };
        let Some(map) = obj.as_object() else {
            return Err(violation("", "must be of type object".to_owned()));
        };
        let mut out = Vec::new();
        let api_version = map.get("apiVersion").and_then(Json::as_str).unwrap_or("");
        let kind = map.get("kind").and_then(Json::as_str).unwrap_or("");
        if api_version.is_empty() {
            out.extend(violation("apiVersion", "Required value".to_owned()));
        }
        if kind.is_empty() {
            out.extend(violation("kind", "Required value".to_owned()));
        }
        if !out.is_empty() {
            return Err(out);
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let Some(crd) = self.crds.get(&(group.to_owned(), kind.to_owned())) else {
            return Err(violation(
                "kind",
                format!("no CRD for kind {kind:?} in group {group:?}"),
            ));
        };
        let Some(ver) = crd.versions.iter().find(|v| v.name == version) else {
            let known: Vec<&str> = crd.versions.iter().map(|v| v.name.as_str()).collect();
            return Err(violation(
                "apiVersion",
                format!(
                    "no version {version:?} in CRD {} (versions: {})",
                    crd.name,
                    known.join(", ")
                ),
            ));
        };
        if !ver.served {
            return Err(violation(
                "apiVersion",
                format!("version {version:?} of CRD {} is not served", crd.name),
            ));
        }
        let env = match &self.env {
            Ok(env) => env,
            Err(e) => return Err(violation("", format!("CEL environment: {e}"))),
        };

        let schema = &ver.schema;
        let mut working = obj.clone();
        structural::prune(&mut working, Some(schema), "", true, &mut out);
        meta::validate(map.get("metadata"), crd.namespaced, &mut out);
        structural::apply_defaults(&mut working, schema);
        let mut report = structural::Report::default();
        structural::validate(&working, schema, "", true, &mut report);
        out.append(&mut report.out);
        structural::eval_rules(env, &working, schema, "", true, &mut out);
        if out.is_empty() { Ok(()) } else { Err(out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_rules(s: &Schema) -> usize {
        assert_eq!(s.rules.len(), s.raw_rules.len());
        s.rules.len()
            + s.properties.values().map(count_rules).sum::<usize>()
            + s.items.as_deref().map_or(0, count_rules)
            + s.additional_schema().map_or(0, count_rules)
    }

    #[test]
    fn every_rule_of_the_schemas_is_compiled() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas"));
        let v = Validator::from_dir(dir).unwrap();
        let per_crd: Vec<(&str, usize)> = v
            .crds
            .values()
            .map(|c| {
                let n = c.versions.iter().map(|v| count_rules(&v.schema)).sum();
                (c.name.as_str(), n)
            })
            .collect();
        // Counted in the YAML files: every `x-kubernetes-validations` entry
        // of every version.
        assert_eq!(
            per_crd,
            [
                ("gateways.gateway.networking.k8s.io", 32),
                ("httproutes.gateway.networking.k8s.io", 212),
                ("serviceentries.networking.istio.io", 45),
                ("workloadentries.networking.istio.io", 18),
            ]
        );
    }

    #[test]
    fn validator_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Validator>();
    }
}
