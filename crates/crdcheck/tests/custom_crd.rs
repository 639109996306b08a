//! Loading errors (rules that do not compile, bad schemas) and schema
//! features the four Istio / Gateway API CRDs do not all exercise, on small
//! CRDs written for the purpose.

use meshpeer_crdcheck::{CrdError, Validator};
use serde_json::{Value as Json, json};

/// A namespaced CRD `widgets.example.com` whose `spec` schema is `spec`
/// (YAML, indented for its place), with `extra` appended to the root schema.
fn crd(spec: &str) -> String {
    crd_with(spec, "Namespaced", "")
}

fn crd_with(spec: &str, scope: &str, root_rules: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names:
    kind: Widget
    plural: widgets
  scope: {scope}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
{root_rules}
        properties:
          spec:
{spec}
  - name: v0
    served: false
    storage: false
    schema:
      openAPIV3Schema:
        type: object
"#
    )
}

fn load(spec: &str) -> Result<Validator, CrdError> {
    let mut v = Validator::new();
    v.add_crd_yaml(&crd(spec))?;
    Ok(v)
}

fn widget(spec: Json) -> Json {
    json!({
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": "default"},
        "spec": spec,
    })
}

fn violations(v: &Validator, obj: &Json) -> Vec<String> {
    match v.validate(obj) {
        Ok(()) => Vec::new(),
        Err(vs) => vs.iter().map(ToString::to_string).collect(),
    }
}

/// A spec schema with a string `name`, an integer `port` and `rule`.
fn with_rule(rule: &str) -> String {
    format!(
        r#"            type: object
            properties:
              name: {{type: string}}
              port: {{type: integer}}
              namespace: {{type: string}}
            x-kubernetes-validations:
            - rule: {}
"#,
        serde_json::to_string(rule).expect("a JSON string")
    )
}

#[track_caller]
fn compile_error(rule: &str, expected: &str) {
    match load(&with_rule(rule)) {
        Err(CrdError::CelCompile {
            crd,
            version,
            schema_path,
            rule: text,
            message,
        }) => {
            assert_eq!(crd, "widgets.example.com");
            assert_eq!(version, "v1");
            assert_eq!(schema_path, "openAPIV3Schema.properties.spec");
            assert_eq!(text, rule);
            assert!(
                message.contains(expected),
                "{rule}: {message:?} should contain {expected:?}"
            );
        }
        Err(other) => panic!("{rule}: unexpected error {other}"),
        Ok(_) => panic!("{rule}: compiled, but must not"),
    }
}

#[test]
fn rules_that_do_not_compile_are_load_errors() {
    compile_error("self.name ==", "syntax error");
    compile_error("isIP(self.name)", "undeclared reference to 'isIP'");
    compile_error(
        "self.name.lowerAscii() == 'a'",
        "undeclared reference to 'lowerAscii'",
    );
    compile_error("self.nmae == 'a'", "undefined field 'nmae'");
    compile_error("has(self.nmae)", "undefined field 'nmae'");
    compile_error("self.name", "must evaluate to a bool");
    compile_error("self.name + 1 == 2", "found no matching overload for '_+_'");
    compile_error(
        "self.port.startsWith('1')",
        "found no matching overload for 'startsWith'",
    );
    compile_error("self.name.matches('[')", "invalid regular expression");
    compile_error("other == 1", "undeclared reference to 'other'");
    compile_error(
        "self.name in ['a', 1]",
        "expected type 'string' but found 'int'",
    );
    // `namespace` is a CEL reserved word: the field is `__namespace__`.
    compile_error("self.namespace == 'a'", "");
    assert!(
        load(&with_rule(
            "!has(self.__namespace__) || self.__namespace__ != ''"
        ))
        .is_ok()
    );
}

#[test]
fn compile_error_message_names_rule_and_path() {
    let err = load(&with_rule("self.nmae == 'a'"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "CRD widgets.example.com version v1: rule \"self.nmae == 'a'\" at \
         openAPIV3Schema.properties.spec does not compile: undefined field 'nmae'"
    );
}

#[test]
fn rule_without_message_and_field_path() {
    let v = load(
        r#"            type: object
            properties:
              name: {type: string}
            x-kubernetes-validations:
            - rule: "self.name != 'x'"
            - rule: "self.name != 'y'"
              message: "y is taken"
              fieldPath: ".name"
"#,
    )
    .unwrap();
    assert_eq!(
        violations(&v, &widget(json!({"name": "x"}))),
        ["spec: failed rule: self.name != 'x'"]
    );
    assert_eq!(
        violations(&v, &widget(json!({"name": "y"}))),
        ["spec.name: y is taken"]
    );
    // No such key is an evaluation error, reported with the rule.
    assert_eq!(
        violations(&v, &widget(json!({}))),
        [
            "spec: no such key: name evaluating rule: self.name != 'x'",
            "spec: no such key: name evaluating rule: y is taken",
        ]
    );
}

#[test]
fn transition_rules_are_skipped() {
    let v = load(&with_rule("self.name == oldSelf.name")).unwrap();
    assert_eq!(
        violations(&v, &widget(json!({"name": "a"}))),
        Vec::<String>::new()
    );
}

#[test]
fn root_rules_see_metadata_name() {
    let mut v = Validator::new();
    v.add_crd_yaml(&crd_with(
        "            type: object\n",
        "Namespaced",
        "        x-kubernetes-validations:\n        - rule: \"self.metadata.name.startsWith('w')\"\n          message: name must start with w\n",
    ))
    .unwrap();
    assert!(v.validate(&widget(json!({}))).is_ok());
    let mut other = widget(json!({}));
    other["metadata"]["name"] = json!("x1");
    assert_eq!(violations(&v, &other), ["name must start with w"]);
}

#[test]
fn cluster_scoped_objects_have_no_namespace() {
    let mut v = Validator::new();
    v.add_crd_yaml(&crd_with("            type: object\n", "Cluster", ""))
        .unwrap();
    assert_eq!(
        violations(&v, &widget(json!({}))),
        ["metadata.namespace: Forbidden: not allowed on this type"]
    );
    let mut cluster = widget(json!({}));
    cluster["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    assert!(v.validate(&cluster).is_ok());
}

#[test]
fn versions_that_are_not_served() {
    let v = load("            type: object\n").unwrap();
    let mut old = widget(json!({}));
    old["apiVersion"] = json!("example.com/v0");
    assert_eq!(
        violations(&v, &old),
        ["apiVersion: version \"v0\" of CRD widgets.example.com is not served"]
    );
}

#[test]
fn load_errors() {
    let mut v = Validator::new();
    assert!(matches!(v.add_crd_yaml("a: [b"), Err(CrdError::Yaml(_))));
    assert!(matches!(
        v.add_crd_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"),
        Err(CrdError::Invalid { .. })
    ));
    let bad_pattern = "            type: string\n            pattern: \"([a-z\"\n";
    assert!(matches!(load(bad_pattern), Err(CrdError::Schema { .. })));
    v.add_crd_yaml(&crd("            type: object\n")).unwrap();
    assert!(matches!(
        v.add_crd_yaml(&crd("            type: object\n")),
        Err(CrdError::Duplicate { .. })
    ));
    assert!(matches!(
        Validator::from_dir(std::path::Path::new("/nonexistent/crds")),
        Err(CrdError::Io { .. })
    ));
}

#[test]
fn numbers_int_or_string_and_nullable() {
    let v = load(
        r#"            type: object
            properties:
              ratio:
                type: number
                maximum: 1
                exclusiveMaximum: true
                x-kubernetes-validations:
                - rule: "self >= 0.0"
                  message: ratio must not be negative
              target:
                x-kubernetes-int-or-string: true
                anyOf:
                - type: integer
                - type: string
                x-kubernetes-validations:
                - rule: "type(self) == string ? self.endsWith('%') : self >= 0"
                  message: target must be a percentage or a count
              note:
                type: string
                nullable: true
                x-kubernetes-validations:
                - rule: "self != ''"
              gone:
                type: string
"#,
    )
    .unwrap();
    let ok = widget(json!({"ratio": 0, "target": "50%", "note": null, "gone": null}));
    assert_eq!(violations(&v, &ok), Vec::<String>::new());
    assert_eq!(
        violations(&v, &widget(json!({"target": 3}))),
        Vec::<String>::new()
    );
    assert_eq!(
        violations(&v, &widget(json!({"ratio": 1, "target": "50"}))),
        [
            "spec.ratio: should be less than 1",
            "spec.target: target must be a percentage or a count",
        ]
    );
    assert_eq!(
        violations(&v, &widget(json!({"ratio": -0.5, "target": 1.5}))),
        [
            "spec.target: must validate at least one schema (anyOf)",
            "spec.target: must be of type integer: \"number\"",
            "spec.ratio: ratio must not be negative",
            "spec.target: invalid data, expected XIntOrString value to be either a string or \
             integer evaluating rule: target must be a percentage or a count",
        ]
    );
}

#[test]
fn defaults_apply_before_rules() {
    let v = load(
        r#"            type: object
            properties:
              mode:
                type: string
                default: Fast
              items:
                type: array
                items:
                  type: object
                  properties:
                    kind: {type: string, default: Thing}
                    name: {type: string}
                  x-kubernetes-validations:
                  - rule: "self.kind == 'Thing'"
                    message: only things
            x-kubernetes-validations:
            - rule: "self.mode == 'Fast'"
              message: must be fast
"#,
    )
    .unwrap();
    assert_eq!(
        violations(
            &v,
            &widget(json!({"items": [{"name": "a"}, {"kind": "Other"}]}))
        ),
        ["spec.items[1]: only things"]
    );
    // A null of a non-nullable field with a default gets the default.
    assert_eq!(
        violations(&v, &widget(json!({"mode": null}))),
        Vec::<String>::new()
    );
}

#[test]
fn sets_junctors_and_preserved_fields() {
    let v = load(
        r#"            type: object
            maxProperties: 3
            properties:
              tags:
                type: array
                items: {type: string}
                x-kubernetes-list-type: set
              size:
                type: integer
                allOf:
                - minimum: 1
                - maximum: 10
                not:
                  enum: [7]
              blob:
                type: object
                x-kubernetes-preserve-unknown-fields: true
                properties:
                  kind: {type: string, enum: [a, b]}
              embedded:
                type: object
                x-kubernetes-embedded-resource: true
                properties:
                  spec:
                    type: object
                    properties:
                      replicas: {type: integer}
"#,
    )
    .unwrap();
    let ok = widget(json!({
        "tags": ["a", "b"],
        "size": 5,
        "blob": {"kind": "a", "anything": {"else": [1, 2]}},
    }));
    assert_eq!(violations(&v, &ok), Vec::<String>::new());
    let embedded = widget(json!({"embedded": {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"replicas": 1, "paused": true}
    }}));
    assert_eq!(
        violations(&v, &embedded),
        ["spec.embedded.spec.paused: unknown field \"spec.embedded.spec.paused\""]
    );
    assert_eq!(
        violations(
            &v,
            &widget(json!({"tags": ["a", "a"], "size": 7, "blob": {"kind": "c"}}))
        ),
        [
            "spec.blob.kind: Unsupported value: \"c\": supported values: \"a\", \"b\"",
            "spec.size: must not validate the schema (not)",
            "spec.tags[1]: Duplicate value: \"a\"",
        ]
    );
    assert_eq!(
        violations(&v, &widget(json!({"size": 11}))),
        [
            "spec.size: must validate all the schemas (allOf)",
            "spec.size: should be less than or equal to 10",
        ]
    );
    assert_eq!(
        violations(
            &v,
            &widget(json!({"tags": [], "size": 1, "blob": {}, "embedded": {}}))
        ),
        ["spec: should have at most 3 properties"]
    );
}
