//! Compiles the workspace's `proto/` with protox (pure Rust, no `protoc` needed) and
//! tonic-prost-build, and writes the descriptor set (with comments) that reflection and
//! `jisu docs` serve.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos = [
        "jisucloud/v1/users.proto",
        "jisucloud/v1/orders.proto",
        "jisucloud/v1/files.proto",
    ];
    println!("cargo:rerun-if-changed={}", root.display());

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(protos)?;
    let fds = compiler.file_descriptor_set();

    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("jisucloud_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Chunks are passed on without copying.
        .bytes(".jisucloud.v1.UploadRequest")
        .bytes(".jisucloud.v1.DownloadResponse")
        // JSON for `jisu call` output and `--data` input.
        .message_attribute(
            ".jisucloud",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .enum_attribute(
            ".jisucloud",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .compile_fds(fds)?;
    Ok(())
}
