//! The API contract's guards, with the real `buf` (npm `@bufbuild/buf`, installed into
//! `.tools/` by the test command): the protos pass lint, nothing breaks the released v1
//! image, and a breaking edit is caught — by the rule that names it.
use std::{path::Path, process::Command};

use crate::common::MANIFEST;

fn buf() -> std::path::PathBuf {
    let path = std::env::var_os("JISU_BUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(MANIFEST).join(".tools/node_modules/.bin/buf"));
    assert!(
        path.exists(),
        "{} not found: run scripts/test (it installs buf from npm) or set JISU_BUF",
        path.display()
    );
    path
}

/// Runs buf in `dir` (a workspace with `buf.yaml` and `proto/`); returns (ok, output).
fn run(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(buf())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run buf");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const AGAINST: &[&str] = &[
    "breaking",
    "--against",
    "proto/jisucloud/v1/v1.binpb",
    "--error-format",
    "json",
];

#[test]
fn the_protos_pass_lint_and_keep_the_released_v1() {
    let root = Path::new(MANIFEST);
    let (ok, out) = run(root, &["lint"]);
    assert!(ok, "buf lint:\n{out}");
    let (ok, out) = run(root, AGAINST);
    assert!(ok, "buf breaking against v1.binpb:\n{out}");
}

#[test]
fn a_breaking_edit_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(MANIFEST);
    std::fs::copy(root.join("buf.yaml"), dir.path().join("buf.yaml")).unwrap();
    let v1 = dir.path().join("proto/jisucloud/v1");
    std::fs::create_dir_all(&v1).unwrap();
    for entry in std::fs::read_dir(root.join("proto/jisucloud/v1")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), v1.join(entry.file_name())).unwrap();
    }
    // Additive: a new field with a new number is fine.
    let users = v1.join("users.proto");
    let original = std::fs::read_to_string(&users).unwrap();
    let added = original.replace(
        "  int64 updated_at = 7;\n}",
        "  int64 updated_at = 7;\n  // Added later.\n  string nickname = 8;\n}",
    );
    assert_ne!(added, original, "the edit applied");
    std::fs::write(&users, &added).unwrap();
    let (ok, out) = run(dir.path(), AGAINST);
    assert!(ok, "an added field is not breaking:\n{out}");
    // Breaking: a renamed field and a changed type.
    let broken = original
        .replace("  string email = 3;", "  string email_address = 3;")
        .replace("  int64 created_at = 6;", "  string created_at = 6;");
    std::fs::write(&users, broken).unwrap();
    let (ok, out) = run(dir.path(), AGAINST);
    assert!(!ok, "buf breaking accepted a breaking change:\n{out}");
    for rule in ["FIELD_SAME_NAME", "FIELD_WIRE_JSON_COMPATIBLE_TYPE"] {
        assert!(out.contains(rule), "{rule} not reported:\n{out}");
    }
}
