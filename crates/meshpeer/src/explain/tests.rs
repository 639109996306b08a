use super::*;

#[test]
fn queries_parse_host_and_port() {
    let q = Query::parse("In-Ambient.httpbin.mesh.internal.:8000", "cluster1").unwrap();
    assert_eq!(q.host, "in-ambient.httpbin.mesh.internal");
    assert_eq!(q.port, Some(8000));
    assert_eq!(Query::parse("a.b.c", "x").unwrap().port, None);
    for bad in ["a.b.c:0", "a.b.c:70000", "a.b.c:http", ":80", "a b:80"] {
        assert!(Query::parse(bad, "x").is_err(), "{bad}");
    }
}

#[test]
fn near_misses_of_the_scope_label_are_found() {
    let labels = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    for key in [
        "solo.io/service_scope",
        "solo.io/servicescope",
        "solo.io/service-scop",
        "Solo.io/Service-Scope",
        "service-scope",
    ] {
        assert_eq!(
            near_misses(&labels(&[(key, "global"), ("app", "web")])),
            [(key.to_owned(), "global".to_owned())],
            "{key}"
        );
    }
    assert!(near_misses(&labels(&[(labels::SERVICE_SCOPE, "global")])).is_empty());
    assert!(near_misses(&labels(&[("solo.io/service-takeover", "true")])).is_empty());
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}
