//! `jisucloud.v1.FileService`: large files in chunks, resumable, verified before they exist.
//!
//! Layout under the data directory:
//! - `files/<id>` (content) and `files/<id>.json` (its `FileInfo`): complete files only,
//!   linked there (never over an existing file) after the size and sha256 matched;
//! - `uploads/<sha256>-<size>.part`: an upload in progress (resumable), never visible as a
//!   file.
//!
//! Ids derive from the content (`F` + the 64 hex digits of the sha256; earlier versions'
//! 16-digit ids still resolve), so names are metadata only and can never be used as paths. Nothing is held in memory beyond one chunk.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tonic::{Code, Request, Response, Status, Streaming};

use super::{
    now,
    streams::{Shutdown, guard},
};
use crate::{
    error::Error,
    pb::{
        DownloadRequest, DownloadResponse, FileInfo, GetUploadRequest, UploadHeader, UploadRequest,
        UploadStatus, file_service_server::FileService, upload_request,
    },
};

pub const MAX_FILE_NAME_BYTES: usize = 255;

/// Limits of the file service.
#[derive(Debug, Clone, Copy)]
pub struct FileLimits {
    /// Largest file accepted.
    pub max_bytes: u64,
    /// Largest chunk accepted, and the size of the chunks sent.
    pub chunk_bytes: usize,
}

/// The FileService handlers over a data directory.
#[derive(Debug, Clone)]
pub struct FileApi {
    files: PathBuf,
    uploads: PathBuf,
    limits: FileLimits,
    /// Uploads in progress (by `<sha256>-<size>`): one writer per upload.
    active: Arc<Mutex<HashSet<String>>>,
    shutdown: Shutdown,
}

fn io_error(what: &str, err: std::io::Error) -> Error {
    Error::Internal(format!("{what}: {err}"))
}

/// Refuses names that are not a plain file name.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".into());
    }
    if name.len() > MAX_FILE_NAME_BYTES {
        return Err(format!("is longer than {MAX_FILE_NAME_BYTES} bytes"));
    }
    if name == "." || name == ".." || name.contains(['/', '\\']) {
        return Err("must be a plain file name (no '/', '\\', '.' or '..')".into());
    }
    if name.chars().any(char::is_control) {
        return Err("cannot contain control characters".into());
    }
    Ok(())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `F` + the whole SHA-256 of the content (256 bits): two different files cannot share
/// an id, so one can never be published over another.
fn file_id(sha256: &str) -> String {
    format!("F{sha256}")
}

/// A file id: `F` + 64 hex digits, or the 16 of ids issued before (still served).
fn is_file_id(id: &str) -> bool {
    (id.len() == 65 || id.len() == LEGACY_ID_LEN)
        && id.starts_with('F')
        && id[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Length of the 64-bit ids of earlier versions (`F` + 16 hex digits).
const LEGACY_ID_LEN: usize = 17;

/// Releases an upload's writer slot on every exit path.
struct Active {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

impl FileApi {
    /// Creates `files/` and `uploads/` under `data_dir` when missing.
    pub fn new(data_dir: &Path, limits: FileLimits) -> std::io::Result<Self> {
        let files = data_dir.join("files");
        let uploads = data_dir.join("uploads");
        std::fs::create_dir_all(&files)?;
        std::fs::create_dir_all(&uploads)?;
        Ok(Self {
            files,
            uploads,
            limits,
            active: Arc::default(),
            shutdown: Shutdown::default(),
        })
    }

    /// Downloads end with UNAVAILABLE when `shutdown` triggers (resume from the offset).
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    fn part_path(&self, sha256: &str, size: u64) -> PathBuf {
        self.uploads.join(format!("{sha256}-{size}.part"))
    }

    /// The stored file with this content, if any.
    async fn complete(&self, sha256: &str, size: u64) -> Result<Option<FileInfo>, Error> {
        let id = file_id(sha256);
        match tokio::fs::read(self.files.join(format!("{id}.json"))).await {
            Ok(raw) => {
                let info: FileInfo = serde_json::from_slice(&raw)
                    .map_err(|e| Error::Internal(format!("file metadata {id}: {e}")))?;
                Ok((info.sha256 == sha256 && info.size == size).then_some(info))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("reading file metadata", e)),
        }
    }

    async fn stored_bytes(&self, sha256: &str, size: u64) -> Result<u64, Error> {
        match tokio::fs::metadata(self.part_path(sha256, size)).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_error("reading upload state", e)),
        }
    }

    fn check_header(&self, header: &UploadHeader) -> Result<(), Error> {
        let mut violations = super::validate::Violations::default();
        if let Err(why) = check_name(&header.name) {
            violations.add("header.name", why);
        }
        if !is_sha256_hex(&header.sha256) {
            violations.add("header.sha256", "must be 64 lower-case hex digits");
        }
        if header.offset > header.size {
            violations.add(
                "header.offset",
                format!("{} is past the size {}", header.offset, header.size),
            );
        }
        violations.finish()?;
        if header.size > self.limits.max_bytes {
            return Err(Error::refused(
                Code::ResourceExhausted,
                "FILE_TOO_LARGE",
                format!(
                    "{} bytes is over this server's limit of {} bytes",
                    header.size, self.limits.max_bytes
                ),
            ));
        }
        Ok(())
    }

    async fn upload(&self, mut incoming: Streaming<UploadRequest>) -> Result<FileInfo, Error> {
        let header = match incoming.next().await {
            Some(Ok(UploadRequest {
                data: Some(upload_request::Data::Header(h)),
            })) => h,
            Some(Ok(_)) => {
                return Err(Error::invalid(
                    "header",
                    "the first message must be the UploadHeader",
                ));
            }
            Some(Err(status)) => return Err(Error::Unavailable(status.to_string())),
            None => return Err(Error::invalid("header", "the upload sent no message")),
        };
        self.check_header(&header)?;
        let (sha256, size) = (header.sha256.as_str(), header.size);
        if let Some(info) = self.complete(sha256, size).await? {
            return Ok(info);
        }
        let key = format!("{sha256}-{size}");
        if !self.active.lock().insert(key.clone()) {
            return Err(Error::refused(
                Code::Aborted,
                "UPLOAD_IN_PROGRESS",
                "another upload of this content is in progress; retry when it ends",
            ));
        }
        let _active = Active {
            set: self.active.clone(),
            key,
        };
        let part = self.part_path(sha256, size);
        let stored = self.stored_bytes(sha256, size).await?;
        let mut hasher = Sha256::new();
        let mut file = if header.offset == 0 {
            tokio::fs::File::create(&part)
                .await
                .map_err(|e| io_error("creating the upload", e))?
        } else if header.offset == stored {
            // Resume: the hash covers what is stored already.
            let mut file = tokio::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(&part)
                .await
                .map_err(|e| io_error("opening the upload", e))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| io_error("reading the upload", e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            file
        } else {
            return Err(Error::refused(
                Code::FailedPrecondition,
                "OFFSET_MISMATCH",
                format!(
                    "the server holds {stored} bytes of this upload: resume from offset {stored}"
                ),
            ));
        };
        let mut received = header.offset;
        let interrupted = loop {
            let chunk = match incoming.next().await {
                Some(Ok(UploadRequest {
                    data: Some(upload_request::Data::Chunk(chunk)),
                })) => chunk,
                Some(Ok(_)) => {
                    return Err(Error::invalid(
                        "chunk",
                        "only the first message may be a header",
                    ));
                }
                Some(Err(status)) => break Some(status),
                None => break None,
            };
            if chunk.len() > self.limits.chunk_bytes {
                return Err(Error::invalid(
                    "chunk",
                    format!(
                        "{} bytes; chunks are at most {} bytes",
                        chunk.len(),
                        self.limits.chunk_bytes
                    ),
                ));
            }
            if received + chunk.len() as u64 > size {
                drop(file);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(Error::refused(
                    Code::DataLoss,
                    "SIZE_MISMATCH",
                    format!("more bytes than the announced size {size}; the upload was discarded"),
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| io_error("writing the upload", e))?;
            hasher.update(&chunk);
            received += chunk.len() as u64;
        };
        // Whatever happens next, what was received is on disk for a resume.
        file.sync_data()
            .await
            .map_err(|e| io_error("syncing the upload", e))?;
        if let Some(status) = interrupted {
            tracing::info!(received, size, "upload interrupted; kept for resume");
            return Err(Error::Unavailable(format!(
                "upload interrupted after {received} bytes: {status}"
            )));
        }
        if received < size {
            return Err(Error::refused(
                Code::FailedPrecondition,
                "INCOMPLETE_UPLOAD",
                format!("{received} of {size} bytes stored; send the rest from offset {received}"),
            ));
        }
        let digest = hex::encode(hasher.finalize());
        if digest != sha256 {
            drop(file);
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Error::refused(
                Code::DataLoss,
                "SHA256_MISMATCH",
                format!(
                    "the received bytes hash to {digest}, not {sha256}; the upload was discarded"
                ),
            ));
        }
        drop(file);
        let info = FileInfo {
            id: file_id(sha256),
            name: header.name,
            size,
            sha256: sha256.to_owned(),
            created_at: now(),
        };
        let info = self.publish(&part, &info).await?;
        tracing::info!(file_id = %info.id, size, "file stored");
        Ok(info)
    }

    /// Moves a verified upload into `files/`: content first, then its metadata (written to
    /// a temporary name and renamed), so a file is listed only when complete. The content
    /// is linked, never renamed, into place: an existing file is never replaced. Its id is
    /// its digest and only verified bytes are published, so an existing file with this id
    /// holds these very bytes; the upload is then a duplicate and the stored file stands.
    async fn publish(&self, part: &Path, info: &FileInfo) -> Result<FileInfo, Error> {
        let content = self.files.join(&info.id);
        let meta = self.files.join(format!("{}.json", info.id));
        match tokio::fs::hard_link(part, &content).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = tokio::fs::remove_file(part).await;
                if let Ok(existing) = self.info(&info.id).await {
                    tracing::info!(file_id = %info.id, "duplicate upload: the stored file stands");
                    return Ok(existing);
                }
                // Content without metadata (a crash between the two): finish the publish,
                // but only over the very bytes this id names.
                let (stored, _) = jisu_client::files::sha256_file(&content)
                    .await
                    .map_err(|e| Error::Internal(format!("reading a stored file: {e}")))?;
                if stored != info.sha256 {
                    tracing::error!(file_id = %info.id, "a different file is stored under this id");
                    return Err(Error::refused(
                        Code::DataLoss,
                        "FILE_ID_CONFLICT",
                        "a different file is already stored under this id; the upload was \
                         not published",
                    ));
                }
            }
            Err(e) => return Err(io_error("storing the file", e)),
        }
        let _ = tokio::fs::remove_file(part).await;
        let json = serde_json::to_vec(info).map_err(|e| Error::Internal(e.to_string()))?;
        let tmp = self.files.join(format!("{}.json.tmp", info.id));
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_error("writing file metadata", e))?;
        f.write_all(&json)
            .await
            .map_err(|e| io_error("writing file metadata", e))?;
        f.sync_all()
            .await
            .map_err(|e| io_error("syncing file metadata", e))?;
        tokio::fs::rename(&tmp, &meta)
            .await
            .map_err(|e| io_error("storing file metadata", e))?;
        if let Ok(dir) = tokio::fs::File::open(&self.files).await {
            let _ = dir.sync_all().await;
        }
        Ok(info.clone())
    }

    async fn info(&self, id: &str) -> Result<FileInfo, Error> {
        let not_found = || Error::NotFound {
            reason: "FILE_NOT_FOUND",
            message: format!("file {id:?} not found"),
        };
        if !is_file_id(id) {
            return Err(not_found());
        }
        match tokio::fs::read(self.files.join(format!("{id}.json"))).await {
            Ok(raw) => serde_json::from_slice(&raw)
                .map_err(|e| Error::Internal(format!("file metadata {id}: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(not_found()),
            Err(e) => Err(io_error("reading file metadata", e)),
        }
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FileService for FileApi {
    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<FileInfo>, Status> {
        Ok(Response::new(
            FileApi::upload(self, request.into_inner()).await?,
        ))
    }

    type DownloadStream = DownloadStream;

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let (metadata, _, req) = request.into_parts();
        let info = self.info(&req.id).await?;
        if req.offset > info.size {
            return Err(Error::refused(
                Code::OutOfRange,
                "OFFSET_PAST_END",
                format!(
                    "offset {} is past the end ({} bytes)",
                    req.offset, info.size
                ),
            )
            .into());
        }
        let mut file = tokio::fs::File::open(self.files.join(&info.id))
            .await
            .map_err(|e| io_error("opening the file", e))?;
        file.seek(std::io::SeekFrom::Start(req.offset))
            .await
            .map_err(|e| io_error("seeking the file", e))?;
        let chunk_bytes = self.limits.chunk_bytes;
        let size = info.size;
        // One chunk in memory at a time: the next is read only when the client has taken
        // the last (h2 flow control drives the stream).
        let state = (file, req.offset, Some(info));
        let chunks = futures::stream::unfold(state, move |(mut file, offset, info)| async move {
            if offset >= size && info.is_none() {
                return None;
            }
            let want = (size - offset).min(chunk_bytes as u64) as usize;
            let mut buf = BytesMut::zeroed(want);
            if let Err(e) = file.read_exact(&mut buf).await {
                let status: Status = io_error("reading the file", e).into();
                return Some((Err(status), (file, size, None)));
            }
            let message = DownloadResponse {
                info,
                offset,
                chunk: Bytes::from(buf),
            };
            Some((Ok(message), (file, offset + want as u64, None)))
        });
        Ok(Response::new(Box::pin(guard(
            chunks,
            &metadata,
            &self.shutdown,
        ))))
    }

    async fn get_upload(
        &self,
        request: Request<GetUploadRequest>,
    ) -> Result<Response<UploadStatus>, Status> {
        let req = request.into_inner();
        if !is_sha256_hex(&req.sha256) {
            return Err(Error::invalid("sha256", "must be 64 lower-case hex digits").into());
        }
        let chunk_limit = self.limits.chunk_bytes as u64;
        if let Some(info) = self.complete(&req.sha256, req.size).await? {
            return Ok(Response::new(UploadStatus {
                received: info.size,
                size: info.size,
                complete: true,
                file_id: info.id,
                chunk_limit,
            }));
        }
        let received = self.stored_bytes(&req.sha256, req.size).await?;
        Ok(Response::new(UploadStatus {
            received,
            size: req.size,
            complete: false,
            file_id: String::new(),
            chunk_limit,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plain_file_names() {
        for ok in ["report.pdf", "数据.csv", "a b", ".hidden", "x..y"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "/abs",
            "nul\0",
            "tab\t",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn ids_come_from_the_content() {
        let sha = "ab".repeat(32);
        assert_eq!(file_id(&sha), format!("F{sha}"), "the whole digest");
        assert!(is_file_id(&file_id(&sha)));
        assert!(
            is_file_id("Fabababababababab"),
            "legacy 64-bit ids still resolve"
        );
        assert!(!is_file_id("Fababababababababab"));
        assert!(!is_file_id("F../../etc/passwd"));
        assert!(!is_file_id("FABABABABABABABAB"));
    }
}
