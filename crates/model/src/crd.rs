//! CustomResourceDefinitions of the custom resources meshpeer defines itself
//! (today only `Segment`; Gateway API and Istio ship their own CRDs), built
//! from the Rust types: group, version, kind, plural, list kind and scope
//! come from the type's `k8s_openapi::Resource` implementation, and the
//! `spec` schema lists exactly the fields of the spec type (a pattern in
//! [`segment_crd`] stops compiling when a field is added, and the tests prove
//! that every object valid under the schema is read by the type and written
//! back unchanged).
//!
//! `deploy/crds/segment.yaml` is [`segment_crd_yaml`]'s output; a test of the
//! `meshpeer` crate fails when they differ and says how to regenerate it.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceValidation,
    JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ListableResource, NamespaceResourceScope, Resource};

use crate::objects::{Segment, SegmentSpec};

/// The first line of every generated CRD file.
pub const GENERATED_HEADER: &str = "# Generated from the Rust type by meshpeer_model::crd; do not edit.\n\
# Regenerate: MESHPEER_BLESS=1 cargo nextest run -p meshpeer --test deploy\n";

fn string_schema(description: &str) -> JSONSchemaProps {
    JSONSchemaProps {
        type_: Some("string".into()),
        description: Some(description.into()),
        ..Default::default()
    }
}

/// The CRD of a namespaced custom resource `K` whose objects are
/// `apiVersion`, `kind`, `metadata` and a `spec` described by `spec`
/// (required: the types deserialize no object without one).
fn namespaced_crd<K>(
    description: &str,
    spec: JSONSchemaProps,
    columns: Vec<CustomResourceColumnDefinition>,
) -> CustomResourceDefinition
where
    K: Resource<Scope = NamespaceResourceScope> + ListableResource,
{
    let root = JSONSchemaProps {
        type_: Some("object".into()),
        description: Some(description.into()),
        required: Some(vec!["spec".into()]),
        properties: Some(BTreeMap::from([
            (
                "apiVersion".to_owned(),
                string_schema("The versioned schema of this representation of an object."),
            ),
            (
                "kind".to_owned(),
                string_schema("The REST resource this object represents."),
            ),
            (
                "metadata".to_owned(),
                JSONSchemaProps {
                    type_: Some("object".into()),
                    ..Default::default()
                },
            ),
            ("spec".to_owned(), spec),
        ])),
        ..Default::default()
    };
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{}.{}", K::URL_PATH_SEGMENT, K::GROUP)),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "meshpeer".to_owned(),
            )])),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: K::GROUP.into(),
            names: CustomResourceDefinitionNames {
                kind: K::KIND.into(),
                list_kind: Some(K::LIST_KIND.into()),
                plural: K::URL_PATH_SEGMENT.into(),
                singular: Some(K::KIND.to_ascii_lowercase()),
                ..Default::default()
            },
            // `K: Resource<Scope = NamespaceResourceScope>`.
            scope: "Namespaced".into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: K::VERSION.into(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(root),
                }),
                additional_printer_columns: Some(columns),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    }
}

/// The `Segment` CRD (`segments.admin.solo.io`, SPEC S1).
pub fn segment_crd() -> CustomResourceDefinition {
    // Every field of the spec type, and only those: this pattern stops
    // compiling when SegmentSpec gains a field, so the schema below cannot
    // silently fall behind the type.
    let SegmentSpec { domain: _ } = SegmentSpec::default();
    let spec = JSONSchemaProps {
        type_: Some("object".into()),
        required: Some(vec!["domain".into()]),
        properties: Some(BTreeMap::from([(
            "domain".to_owned(),
            JSONSchemaProps {
                min_length: Some(1),
                ..string_schema(
                    "DNS suffix of the global hostnames of the segment's clusters \
                     (<name>.<namespace>.<domain>), e.g. cluster.dev. meshpeer reports a \
                     domain that is not a DNS name, is reserved (mesh.internal, cluster.local) \
                     or is another segment's, and ignores that segment.",
                )
            },
        )])),
        ..Default::default()
    };
    let columns = vec![
        CustomResourceColumnDefinition {
            name: "Domain".into(),
            type_: "string".into(),
            json_path: ".spec.domain".into(),
            ..Default::default()
        },
        CustomResourceColumnDefinition {
            name: "Age".into(),
            type_: "date".into(),
            json_path: ".metadata.creationTimestamp".into(),
            ..Default::default()
        },
    ];
    namespaced_crd::<Segment>(
        "A segment: a named DNS domain for the global services of the clusters that \
         join it (label admin.solo.io/segment=<segment name> on their istio-system \
         namespace). Define the same Segments in every linked cluster.",
        spec,
        columns,
    )
}

/// [`segment_crd`] as the YAML file `deploy/crds/segment.yaml` holds, header
/// included.
pub fn segment_crd_yaml() -> String {
    to_yaml(&segment_crd())
}

fn to_yaml(crd: &CustomResourceDefinition) -> String {
    // Through the typed struct, not a `serde_json::Value`: field order is the
    // struct's and maps are sorted, whatever serde_json's features.
    let body = serde_saphyr::to_string(crd).unwrap_or_default();
    format!("{GENERATED_HEADER}{body}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::{Value, json};

    fn validator() -> meshpeer_crdcheck::Validator {
        let mut v = meshpeer_crdcheck::Validator::new();
        v.add_crd_yaml(&segment_crd_yaml()).unwrap();
        v
    }

    fn segment(spec: Value) -> Value {
        json!({
            "apiVersion": "admin.solo.io/v1alpha1",
            "kind": "Segment",
            "metadata": {"name": "dev", "namespace": "istio-system"},
            "spec": spec,
        })
    }

    #[test]
    fn s1_names_and_scope_come_from_the_type() {
        let crd = segment_crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("segments.admin.solo.io"));
        assert_eq!(crd.spec.group, Segment::GROUP);
        assert_eq!(crd.spec.names.kind, "Segment");
        assert_eq!(crd.spec.names.plural, "segments");
        assert_eq!(crd.spec.names.list_kind.as_deref(), Some("SegmentList"));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions.len(), 1);
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
        assert!(crate::Kind::Segment.versions().contains(&"v1alpha1"));
        assert_eq!(crate::Kind::Segment.group(), crd.spec.group);
    }

    #[test]
    fn s1_the_yaml_reads_back_as_the_same_crd() {
        let text = segment_crd_yaml();
        assert!(text.starts_with(GENERATED_HEADER));
        let back: CustomResourceDefinition = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(back, segment_crd());
    }

    #[test]
    fn s1_the_schema_declares_exactly_the_fields_the_type_writes() {
        let written = serde_json::to_value(SegmentSpec {
            domain: "cluster.dev".into(),
        })
        .unwrap();
        let crd = segment_crd();
        let root = crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap();
        let spec = &root.properties.as_ref().unwrap()["spec"];
        let declared: Vec<&String> = spec.properties.as_ref().unwrap().keys().collect();
        let fields: Vec<&String> = written.as_object().unwrap().keys().collect();
        assert_eq!(declared, fields);
    }

    #[test]
    fn s1_objects_valid_under_the_schema_round_trip_through_the_type() {
        let v = validator();
        for spec in [json!({"domain": "cluster.dev"}), json!({"domain": "prod."})] {
            let obj = segment(spec);
            v.validate(&obj).unwrap();
            let typed: Segment = serde_json::from_value(obj.clone()).unwrap();
            assert_eq!(serde_json::to_value(&typed).unwrap(), obj);
        }
    }

    #[test]
    fn s1_the_schema_rejects_segments_the_type_cannot_hold_or_the_model_ignores() {
        let v = validator();
        for spec in [
            json!({}),
            json!({"domain": 7}),
            json!({"domain": "cluster.dev", "extra": true}),
            json!({"domain": ""}),
        ] {
            let obj = segment(spec.clone());
            assert!(v.validate(&obj).is_err(), "{spec} was accepted");
        }
        let mut no_spec = segment(json!({}));
        no_spec.as_object_mut().unwrap().remove("spec");
        assert!(v.validate(&no_spec).is_err());
        assert!(serde_json::from_value::<Segment>(no_spec).is_err());
        assert!(serde_json::from_value::<Segment>(segment(json!({}))).is_err());
        assert!(serde_json::from_value::<Segment>(segment(json!({"domain": 7}))).is_err());
    }
}
