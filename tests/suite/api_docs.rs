//! `docs/api.md` is generated from the proto comments; this fails when it is stale.
#[test]
fn api_reference_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = jisu::docs::api_markdown();
    assert!(
        committed == generated,
        "docs/api.md is stale: run `cargo run -- docs api --out docs/api.md`"
    );
    // The reference really carries the proto comments.
    assert!(generated.contains("Ids are `USER` followed by at least four digits"));
    assert!(generated.contains("| 3 | `email` | `optional string` |"));
}
