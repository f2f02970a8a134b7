//! The module layering documented in `src/lib.rs`, checked: a module of the library may
//! use only modules of lower layers (so no two modules import each other, and nothing
//! imports upwards). Read from the sources: every `crate::name` path and every top-level
//! name of a `use crate::{…}` group, outside comments and `#[cfg(test)]` modules.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Lowest first. Keep in step with the "Layers" paragraph of `src/lib.rs` and the README.
const LAYERS: &[&[&str]] = &[
    // `api` and `pb` are the `jisu-api` crate, re-exported.
    &["api", "pb"],
    &["error", "config", "docs"],
    &["telemetry"],
    &["security", "store"],
    &["transport"],
    &["middleware"],
    &["client"],
    &["service"],
    &["startup", "bench"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Drops `//` comments and everything from the first `#[cfg(test)]` on.
fn code_of(source: &str) -> String {
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level names of a `{…}` group starting right after its opening brace.
fn group_names(group: &str) -> Vec<String> {
    let mut names = Vec::new();
    let (mut depth, mut expect_name, mut word) = (0usize, true, String::new());
    for c in group.chars() {
        if c.is_alphanumeric() || c == '_' {
            if depth == 0 && expect_name {
                word.push(c);
            }
            continue;
        }
        if !word.is_empty() {
            names.push(std::mem::take(&mut word));
            expect_name = false;
        }
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expect_name = true,
            _ => {}
        }
    }
    if !word.is_empty() {
        names.push(word);
    }
    names
}

/// Modules of ours that `code` refers to.
fn references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            out.extend(group_names(group));
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    // `crate::Error` is `error::Error`, re-exported at the root.
    if out.remove("Error") {
        out.insert("error".into());
    }
    out.remove("self");
    out
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn modules_import_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        // The binary's own modules sit on top of everything.
        if matches!(module.as_str(), "lib" | "main" | "cli") {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for used in references(&code) {
            if used != module {
                edges.entry(module.clone()).or_default().insert(used);
            }
        }
        edges.entry(module).or_default();
    }
    let mut violations = Vec::new();
    for (module, uses) in &edges {
        let Some(mine) = layer_of(module) else {
            violations.push(format!("{module}: not in any layer of LAYERS"));
            continue;
        };
        for used in uses {
            match layer_of(used) {
                Some(theirs) if theirs < mine => {}
                Some(_) => violations.push(format!("{module} (layer {mine}) uses {used}")),
                None => violations.push(format!("{module} uses {used}, which is in no layer")),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layering:\n  {}",
        violations.join("\n  ")
    );
    // The API crate at the bottom depends on nothing of ours.
    let api = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/jisu-api/Cargo.toml"),
    )
    .unwrap();
    assert!(
        !api.contains("path ="),
        "jisu-api depends on nothing of ours"
    );
    // The client crate depends on the API crate only: a Rust service calling Jisu does not
    // compile the server, its database drivers or the load generator.
    let client = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/jisu-client/Cargo.toml"),
    )
    .unwrap();
    let ours: Vec<&str> = client.lines().filter(|l| l.contains("path =")).collect();
    assert_eq!(ours, [r#"jisu-api = { path = "../jisu-api" }"#]);
    for server_only in [
        "sqlx",
        "axum",
        "metrics-exporter-prometheus",
        "rcgen",
        "hdrhistogram",
    ] {
        assert!(
            !client.lines().any(|l| l.starts_with(server_only)),
            "jisu-client depends on {server_only}"
        );
    }
}

#[test]
fn the_reader_sees_groups_and_paths() {
    let code = "use crate::{a::{b, c}, d, e::f};\nfn x() { crate::g::h(); }";
    let refs: Vec<String> = references(code).into_iter().collect();
    assert_eq!(refs, ["a", "d", "e", "g"]);
}
