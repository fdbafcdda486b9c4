//! The documentation stays in step with the code.

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).expect(path)
}

#[test]
fn openapi_lists_exactly_the_routes_the_api_serves() {
    let spec: std::collections::BTreeSet<String> = read("docs/openapi.yaml")
        .lines()
        .filter(|l| l.starts_with("  /") && l.ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':').to_owned())
        .collect();
    let api = read("node/src/api.rs");
    let routes: std::collections::BTreeSet<String> = api
        .split(".route(\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect();
    assert!(routes.len() >= 20, "{routes:?}");
    assert_eq!(spec, routes);
}
