//! FileService over real mTLS: chunked round trips larger than the message limit, resume
//! after a dropped connection, corrupted content, bad names and sizes, and the CLI.

use std::{path::Path, sync::Arc, time::Duration};

use crate::common::{
    ALL_SCOPES, Binary, TestServer, assert_status, samples, value, violated_fields,
};
use futures::StreamExt;
use jisu::{
    client::files::{Progress, sha256_file},
    pb::{GetUploadRequest, UploadHeader, UploadRequest, upload_request},
};
use sha2::{Digest, Sha256};
use tonic::Code;

const CHUNK: usize = 64 * 1024;
const MESSAGE_LIMIT: usize = 256 * 1024;

/// A server whose message limit (256 KiB) is far below the files sent.
async fn server() -> TestServer {
    TestServer::start_with(|s| {
        s.files.chunk_bytes = CHUNK;
        s.files.max_bytes = 8 << 20;
        s.server.max_decoding_message_bytes = MESSAGE_LIMIT;
        s.server.max_encoding_message_bytes = MESSAGE_LIMIT;
    })
    .await
}

fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn no_progress() -> Progress {
    Arc::new(|_, _| {})
}

fn header(name: &str, size: u64, sha256: &str, offset: u64) -> UploadRequest {
    UploadRequest {
        data: Some(upload_request::Data::Header(UploadHeader {
            name: name.into(),
            size,
            sha256: sha256.into(),
            offset,
        })),
    }
}

fn chunk(bytes: &[u8]) -> UploadRequest {
    UploadRequest {
        data: Some(upload_request::Data::Chunk(bytes.to_vec().into())),
    }
}

fn stored_files(server: &TestServer) -> Vec<String> {
    std::fs::read_dir(server.dir().join("data/files"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn upload_then_download_a_file_larger_than_the_message_limit() {
    let server = server().await;
    let client = server.client(ALL_SCOPES).await;
    let dir = tempfile::tempdir().unwrap();
    let content = random_bytes(3 * 1024 * 1024 + 123);
    let source = dir.path().join("big.bin");
    std::fs::write(&source, &content).unwrap();

    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let progress: Progress = {
        let seen = seen.clone();
        Arc::new(move |done, total| seen.lock().unwrap().push((done, total)))
    };
    let info = client
        .upload_file(&source, "big.bin", &progress)
        .await
        .unwrap();
    assert_eq!(info.size, content.len() as u64);
    assert_eq!(info.sha256, sha(&content));
    assert_eq!(info.name, "big.bin");
    assert_eq!(
        info.id,
        format!("F{}", info.sha256),
        "the id carries the whole digest"
    );
    let last = *seen.lock().unwrap().last().unwrap();
    assert_eq!(last, (content.len() as u64, content.len() as u64));

    let dest = dir.path().join("copy.bin");
    let got = client
        .download_file(&info.id, &dest, &no_progress())
        .await
        .unwrap();
    assert_eq!(got, info);
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    assert!(!dir.path().join("copy.bin.part").exists());

    // The same content again is the same file.
    let again = client
        .upload_file(&source, "other-name.bin", &no_progress())
        .await
        .unwrap();
    assert_eq!(again, info);

    // Streams were counted message by message: header + 49 chunks in, 49 chunks out.
    let chunks = content.len().div_ceil(CHUNK) as f64;
    let m = samples(&server.scrape().await);
    let upload = [("grpc_method", "Upload"), ("grpc_type", "client_stream")];
    // The second upload sent its header and was answered at once (the file exists);
    // chunks already in flight may or may not have been read, so only the first is exact.
    assert!(value(&m, "grpc_server_msg_received_total", &upload) >= chunks + 2.0);
    let download = [("grpc_method", "Download"), ("grpc_type", "server_stream")];
    assert_eq!(value(&m, "grpc_server_msg_sent_total", &download), chunks);
    assert_eq!(value(&m, "grpc_server_msg_received_total", &download), 1.0);
}

#[tokio::test]
async fn an_interrupted_upload_resumes_where_it_stopped() {
    let server = server().await;
    let content = random_bytes(10 * CHUNK);
    let digest = sha(&content);
    let size = content.len() as u64;
    {
        // Send the header and three chunks, then vanish without ending the stream.
        let client = server.client(ALL_SCOPES).await;
        let first = vec![
            header("resume.bin", size, &digest, 0),
            chunk(&content[..CHUNK]),
            chunk(&content[CHUNK..2 * CHUNK]),
            chunk(&content[2 * CHUNK..3 * CHUNK]),
        ];
        let requests = futures::stream::iter(first).chain(futures::stream::pending());
        let mut files = client.files();
        let call = tokio::spawn(async move { files.upload(requests).await });
        // Wait (bounded) until the server holds the three chunks, then drop the connection.
        let probe = server.client(ALL_SCOPES).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = probe
                .files()
                .get_upload(GetUploadRequest {
                    sha256: digest.clone(),
                    size,
                })
                .await
                .unwrap()
                .into_inner();
            if status.received == 3 * CHUNK as u64 {
                assert!(!status.complete);
                assert_eq!(status.chunk_limit, CHUNK as u64);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{status:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        call.abort();
        drop(client);
    }
    // Nothing looks complete meanwhile.
    assert!(stored_files(&server).is_empty());

    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("resume.bin");
    std::fs::write(&source, &content).unwrap();
    let first_report = Arc::new(std::sync::Mutex::new(None));
    let progress: Progress = {
        let first_report = first_report.clone();
        Arc::new(move |done, _| {
            first_report.lock().unwrap().get_or_insert(done);
        })
    };
    let client = server.client(ALL_SCOPES).await;
    let info = client
        .upload_file(&source, "resume.bin", &progress)
        .await
        .unwrap();
    assert_eq!(
        *first_report.lock().unwrap(),
        Some(3 * CHUNK as u64),
        "resumed from the stored bytes"
    );
    assert_eq!(info.sha256, digest);
    let dest = dir.path().join("back.bin");
    client
        .download_file(&info.id, &dest, &no_progress())
        .await
        .unwrap();
    assert_eq!(sha256_file(&dest).await.unwrap(), (digest, size));

    // A resume from the wrong offset is refused and says where to resume.
    let other = random_bytes(2 * CHUNK);
    let requests = futures::stream::iter(vec![
        header("x.bin", other.len() as u64, &sha(&other), 0),
        chunk(&other[..CHUNK]),
    ]);
    assert_status(
        client.files().upload(requests).await,
        Code::FailedPrecondition,
        "INCOMPLETE_UPLOAD",
    );
    let requests =
        futures::stream::iter(vec![header("x.bin", other.len() as u64, &sha(&other), 100)]);
    let status = assert_status(
        client.files().upload(requests).await,
        Code::FailedPrecondition,
        "OFFSET_MISMATCH",
    );
    assert!(
        status.message().contains(&format!("offset {CHUNK}")),
        "{status:?}"
    );
}

#[tokio::test]
async fn corrupted_content_is_data_loss_and_leaves_no_file() {
    let server = server().await;
    let client = server.client(ALL_SCOPES).await;
    let content = random_bytes(3 * CHUNK);
    let mut corrupted = content.clone();
    corrupted[CHUNK + 7] ^= 0xff;
    let requests = futures::stream::iter(vec![
        header("c.bin", content.len() as u64, &sha(&content), 0),
        chunk(&corrupted[..CHUNK]),
        chunk(&corrupted[CHUNK..2 * CHUNK]),
        chunk(&corrupted[2 * CHUNK..]),
    ]);
    let status = assert_status(
        client.files().upload(requests).await,
        Code::DataLoss,
        "SHA256_MISMATCH",
    );
    assert!(status.message().contains(&sha(&corrupted)), "{status:?}");
    assert!(stored_files(&server).is_empty());
    let state = client
        .files()
        .get_upload(GetUploadRequest {
            sha256: sha(&content),
            size: content.len() as u64,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.received, 0, "the bad upload was discarded");

    // More bytes than announced.
    let requests = futures::stream::iter(vec![
        header("c.bin", CHUNK as u64, &sha(&content[..CHUNK]), 0),
        chunk(&content[..CHUNK]),
        chunk(&content[..1]),
    ]);
    assert_status(
        client.files().upload(requests).await,
        Code::DataLoss,
        "SIZE_MISMATCH",
    );
    assert!(stored_files(&server).is_empty());
}

#[tokio::test]
async fn bad_names_sizes_and_chunks_are_refused() {
    let server = server().await;
    let client = server.client(ALL_SCOPES).await;
    let digest = sha(b"x");
    for name in [
        "../../etc/passwd",
        "a/b",
        "..",
        "",
        "nul\0byte",
        "back\\slash",
    ] {
        let status = assert_status(
            client
                .files()
                .upload(futures::stream::iter(vec![header(name, 1, &digest, 0)]))
                .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(violated_fields(&status), ["header.name"], "{name:?}");
    }
    let status = assert_status(
        client
            .files()
            .upload(futures::stream::iter(vec![header(
                "big.bin",
                9 << 20,
                &digest,
                0,
            )]))
            .await,
        Code::ResourceExhausted,
        "FILE_TOO_LARGE",
    );
    assert!(status.message().contains("limit"), "{status:?}");
    let too_big = vec![0u8; CHUNK + 1];
    let status = assert_status(
        client
            .files()
            .upload(futures::stream::iter(vec![
                header("c.bin", too_big.len() as u64, &sha(&too_big), 0),
                chunk(&too_big),
            ]))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["chunk"]);
    assert_status(
        client
            .files()
            .upload(futures::stream::iter(vec![chunk(b"no header")]))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert!(stored_files(&server).is_empty());
    // Downloads: unknown ids (including path-like ones) are NOT_FOUND.
    for id in ["F0000000000000000", "../../etc/passwd", "Fabc"] {
        let status = client
            .files()
            .download(jisu::pb::DownloadRequest {
                id: id.into(),
                offset: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{id}");
    }
    // Scopes: files:read cannot upload.
    let reader = server.client("files:read").await;
    assert_status(
        reader
            .files()
            .upload(futures::stream::iter(vec![header("a", 1, &digest, 0)]))
            .await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
}

fn jisu_call(server: &crate::common::Served, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_jisu"))
        .args(["call", "--endpoint", &server.endpoint(), "--certs"])
        .arg(&server.certs)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn jisu_call_files_upload_and_download_round_trip() {
    let server = Binary::default().start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    let content = random_bytes(2 * 1024 * 1024 + 5);
    std::fs::write(&source, &content).unwrap();
    let out = jisu_call(&server, &["files", "upload", source.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = info["id"].as_str().unwrap();
    assert_eq!(info["sha256"], sha(&content));
    assert_eq!(info["name"], "data.bin");
    let dest = dir.path().join("back.bin");
    let out = jisu_call(&server, &["files", "download", id, dest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    // A missing file is a clear error.
    let missing = dir.path().join("missing.bin");
    let out = jisu_call(
        &server,
        &[
            "files",
            "download",
            "F0000000000000000",
            missing.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(
        &out.stderr[..out
            .stderr
            .iter()
            .rposition(|b| *b == b'}')
            .map_or(0, |p| p + 1)],
    )
    .unwrap();
    assert_eq!(report["code"], "NotFound");
    assert_eq!(report["reason"], "FILE_NOT_FOUND");
    assert!(!missing.exists());
    assert!(!Path::new(&format!("{}.part", missing.display())).exists());
}

/// Ids carry the whole digest, a stored file is never replaced by another upload, and
/// the 64-bit ids of earlier versions still resolve.
#[tokio::test]
async fn stored_files_are_never_replaced_and_legacy_ids_resolve() {
    let server = server().await;
    let client = server.client(ALL_SCOPES).await;
    let dir = tempfile::tempdir().unwrap();
    let files = server.dir().join("data/files");

    // An id taken by different bytes (as a 64-bit id collision once allowed): the upload
    // that would have gone there is refused and the stored bytes stay.
    let content = random_bytes(100_000);
    let id = format!("F{}", sha(&content));
    std::fs::write(files.join(&id), b"someone else's file").unwrap();
    let source = dir.path().join("c.bin");
    std::fs::write(&source, &content).unwrap();
    let err = client
        .upload_file(&source, "c.bin", &no_progress())
        .await
        .expect_err("published over another file");
    assert!(format!("{err:?}").contains("FILE_ID_CONFLICT"), "{err:?}");
    assert_eq!(
        std::fs::read(files.join(&id)).unwrap(),
        b"someone else's file"
    );

    // A legacy id (F + 16 hex digits) written by an earlier version is served.
    let old = random_bytes(50_000);
    let legacy = format!("F{}", &sha(&old)[..16]);
    std::fs::write(files.join(&legacy), &old).unwrap();
    let meta = serde_json::json!({
        "id": legacy, "name": "old.bin", "size": old.len(), "sha256": sha(&old),
        "created_at": 1_700_000_000,
    });
    std::fs::write(files.join(format!("{legacy}.json")), meta.to_string()).unwrap();
    let dest = dir.path().join("old.bin");
    let got = client
        .download_file(&legacy, &dest, &no_progress())
        .await
        .unwrap();
    assert_eq!(got.id, legacy);
    assert_eq!(std::fs::read(&dest).unwrap(), old);
}

/// The server's limit per call (here 300 ms) bounds the work before an answer, not an
/// upload: a client slower than that to send its chunks (a large file over a slow link)
/// still completes. (The limit, applied to every call before, cut such uploads off.)
#[tokio::test]
async fn an_upload_slower_than_the_servers_call_limit_completes() {
    let server = TestServer::start_with(|s| {
        s.files.chunk_bytes = CHUNK;
        s.files.max_bytes = 8 << 20;
        s.server.max_call_duration_ms = 300;
    })
    .await;
    let content = random_bytes(2 * CHUNK);
    let digest = sha(&content);
    let client = server.client(ALL_SCOPES).await;
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(header("slow.bin", content.len() as u64, &digest, 0))
        .unwrap();
    tx.unbounded_send(chunk(&content[..CHUNK])).unwrap();
    let mut files = client.files();
    let call = tokio::spawn(async move { files.upload(rx).await });
    // Hold the upload open past the server's limit (a slow client), then finish it.
    tokio::time::sleep(Duration::from_millis(900)).await;
    // (Fails only if the call already ended: its status says why, below.)
    let _ = tx.unbounded_send(chunk(&content[CHUNK..]));
    drop(tx);
    let info = call
        .await
        .unwrap()
        .expect("the upload outlives the server's call limit")
        .into_inner();
    assert_eq!(info.size, content.len() as u64);
    assert_eq!(info.id, format!("F{digest}"));
}
