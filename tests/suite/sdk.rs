//! The Python (`sdk/python`) and TypeScript (`sdk/typescript`) SDKs against the real
//! `jisu` binary over mTLS — one check program each, the same assertions — and their
//! generated code kept fresh.
use std::{path::Path, process::Command, time::Duration};

use crate::common::{MANIFEST, serve_binary, tool};

use jisu::security::jwt::TokenIssuer;

/// Runs an SDK's check program against a fresh server (`--target`, `--certs`, and a
/// token in `JISU_TOKEN`); returns the JSON it printed.
fn run_check(mut program: Command, what: &str) -> serde_json::Value {
    let server = serve_binary(&[]);
    let token = TokenIssuer::from_file(&server.certs.join("jwt.key"), "jisu", "jisucloud")
        .unwrap()
        .issue(
            what,
            "users:read users:write orders:read orders:write",
            Duration::from_secs(300),
        );
    let output = program
        .args(["--target", &server.addr, "--certs"])
        .arg(&server.certs)
        .env("JISU_TOKEN", token)
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "the {what} check failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// What every SDK's check must have seen; `code` names a gRPC code in that language.
fn assert_session(seen: &serde_json::Value, code: fn(tonic::Code) -> &'static str) {
    assert_eq!(seen["get_user"], "USER0001");
    // 100 demo users over three pages of 40, following the x-next-page-token trailer.
    assert_eq!(
        seen["listed"],
        serde_json::json!([100, "USER0001", "USER0100"])
    );
    let not_found = &seen["not_found"];
    assert_eq!(not_found["code"], code(tonic::Code::NotFound));
    assert_eq!(not_found["reason"], "USER_NOT_FOUND");
    assert_eq!(not_found["domain"], "jisucloud.v1");
    let trace = not_found["trace_id"].as_str().unwrap();
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "trace id {trace:?}"
    );
    assert_eq!(
        seen["invalid"],
        serde_json::json!({"code": code(tonic::Code::InvalidArgument),
                           "reason": "INVALID_ARGUMENT", "fields": ["email", "name"]})
    );
    assert_eq!(
        seen["order"],
        serde_json::json!({"status": "PENDING", "total": 2.5})
    );
    assert_eq!(
        seen["watched"],
        serde_json::json!(["PENDING", "PAID", "PROCESSING", "SHIPPED", "DELIVERED"])
    );
    // The two subscriptions answer in either order; the cancellation comes last.
    let tracked = seen["tracked"].as_array().unwrap();
    assert_eq!(tracked.len(), 3, "{tracked:?}");
    assert!(
        tracked[..2].contains(&serde_json::json!(["order", "PENDING"])),
        "{tracked:?}"
    );
    assert!(
        tracked[..2].contains(&serde_json::json!(["error", "ORD0NOPE000", "NOT_FOUND"])),
        "{tracked:?}"
    );
    assert_eq!(tracked[2], serde_json::json!(["order", "CANCELLED"]));
    assert_eq!(
        seen["token_fetches"], 1,
        "the token source reused its token"
    );
}

#[test]
fn the_python_sdk_calls_every_shape_and_reads_typed_errors() {
    let mut python = Command::new(tool("JISU_PYTHON", "python"));
    python.arg(Path::new(MANIFEST).join("sdk/python/tests/sdk_check.py"));
    let seen = run_check(python, "python-sdk");
    // grpc.StatusCode names: NOT_FOUND, INVALID_ARGUMENT.
    assert_session(&seen, |c| match c {
        tonic::Code::NotFound => "NOT_FOUND",
        _ => "INVALID_ARGUMENT",
    });
}

/// The generated Python code in `sdk/python/src/jisucloud` is what grpcio-tools makes
/// of `proto/` today.
#[test]
fn the_python_sdk_generated_code_is_up_to_date() {
    let python = tool("JISU_PYTHON", "python");
    let out = tempfile::tempdir().unwrap();
    let root = Path::new(MANIFEST);
    let status = Command::new(python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto"))
        .arg(format!("--python_out={}", out.path().display()))
        .arg(format!("--pyi_out={}", out.path().display()))
        .arg(format!("--grpc_python_out={}", out.path().display()))
        .args(
            ["users", "orders", "files"]
                .map(|f| root.join(format!("proto/jisucloud/v1/{f}.proto"))),
        )
        .status()
        .unwrap();
    assert!(status.success());
    for entry in std::fs::read_dir(out.path().join("jisucloud/v1")).unwrap() {
        let name = entry.unwrap().file_name();
        let fresh = std::fs::read_to_string(out.path().join("jisucloud/v1").join(&name)).unwrap();
        let committed =
            std::fs::read_to_string(root.join("sdk/python/src/jisucloud/v1").join(&name))
                .unwrap_or_default();
        assert!(
            fresh == committed,
            "sdk/python/src/jisucloud/v1/{} is stale: run scripts/gen-sdk",
            name.to_string_lossy()
        );
    }
}

fn typescript_dir() -> std::path::PathBuf {
    Path::new(MANIFEST).join("sdk/typescript")
}

/// A tool of the TypeScript SDK's own `node_modules` (`scripts/test` runs `npm ci`).
fn node_tool(name: &str) -> std::path::PathBuf {
    let path = typescript_dir().join("node_modules/.bin").join(name);
    assert!(
        path.exists(),
        "{} not found: run scripts/test (it installs sdk/typescript's npm packages)",
        path.display()
    );
    path
}

#[test]
fn the_typescript_sdk_compiles_strict_and_calls_every_shape() {
    let tsc = Command::new(node_tool("tsc"))
        .args(["-p", "tsconfig.json"])
        .current_dir(typescript_dir())
        .output()
        .unwrap();
    assert!(
        tsc.status.success(),
        "tsc --strict: {}{}",
        String::from_utf8_lossy(&tsc.stdout),
        String::from_utf8_lossy(&tsc.stderr)
    );
    let mut node = Command::new("node");
    node.arg(typescript_dir().join("dist/tests/sdk_check.js"));
    let seen = run_check(node, "ts-sdk");
    assert_eq!(seen["created_at_is_bigint"], true, "int64 is bigint");
    // connect-es Code names: NotFound, InvalidArgument.
    assert_session(&seen, |c| match c {
        tonic::Code::NotFound => "NotFound",
        _ => "InvalidArgument",
    });
}

/// The generated TypeScript in `sdk/typescript/src/gen` is what protoc-gen-es makes of
/// `proto/` (and of the google.rpc protos) today.
#[test]
fn the_typescript_sdk_generated_code_is_up_to_date() {
    let out = tempfile::tempdir().unwrap();
    let dir = typescript_dir();
    let buf = node_tool("buf");
    let generate = |input: &str, paths: &[&str]| {
        let mut cmd = Command::new(&buf);
        cmd.args(["generate", input, "--template", "buf.gen.yaml", "-o"])
            .arg(out.path())
            .current_dir(&dir);
        for p in paths {
            cmd.args(["--path", p]);
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "buf generate {input}");
    };
    generate("../..", &[]);
    generate(
        "node_modules/google-proto-files",
        &[
            "node_modules/google-proto-files/google/rpc/error_details.proto",
            "node_modules/google-proto-files/google/rpc/status.proto",
        ],
    );
    for sub in ["jisucloud/v1", "google/rpc"] {
        for entry in std::fs::read_dir(out.path().join("src/gen").join(sub)).unwrap() {
            let name = entry.unwrap().file_name();
            let fresh =
                std::fs::read_to_string(out.path().join("src/gen").join(sub).join(&name)).unwrap();
            let committed = std::fs::read_to_string(dir.join("src/gen").join(sub).join(&name))
                .unwrap_or_default();
            assert!(
                fresh == committed,
                "sdk/typescript/src/gen/{sub}/{} is stale: run npm run generate in sdk/typescript",
                name.to_string_lossy()
            );
        }
    }
}
