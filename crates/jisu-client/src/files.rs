//! Uploading and downloading files in chunks, resuming after an interruption.
//!
//! Upload: hash the file (streaming), ask the server how much of this content it holds
//! (`GetUpload`), send the rest from there; on a broken connection ask again and continue.
//! Download: write to `PATH.part`, resume from its length, verify the sha256, then rename
//! to `PATH`. Memory holds one chunk at a time either way.
use std::{path::Path, time::Duration};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tonic::{Code, Status};

use super::JisuClient;
use jisu_api::pb::{
    DownloadRequest, FileInfo, GetUploadRequest, UploadHeader, UploadRequest,
    file_service_client::FileServiceClient, upload_request,
};

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Status(#[from] Status),
    #[error("downloaded bytes hash to {got}, the server announced {want}; kept as {part}")]
    Corrupt {
        got: String,
        want: String,
        part: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Told `(bytes done, total)` as a transfer moves.
pub type Progress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Attempts after a broken connection before giving up.
const ATTEMPTS: u32 = 5;

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Aborted | Code::DeadlineExceeded | Code::Unknown
    )
}

async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
}

/// The sha256 (hex) and size of a file, read in chunks.
pub async fn sha256_file(path: &Path) -> Result<(String, u64), TransferError> {
    let mut file = tokio::fs::File::open(path).await.map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

impl JisuClient {
    pub fn files(&self) -> FileServiceClient<super::Authed> {
        FileServiceClient::with_interceptor(self.channel.clone(), self.credentials.clone())
            .max_decoding_message_size(16 << 20)
    }

    /// Uploads `path` as `name`, resuming what the server already holds; `progress` gets
    /// the number of bytes the server has (stored or in flight).
    pub async fn upload_file(
        &self,
        path: &Path,
        name: &str,
        progress: &Progress,
    ) -> Result<FileInfo, TransferError> {
        let (sha256, size) = sha256_file(path).await?;
        let mut attempt = 0;
        loop {
            match self.upload_once(path, name, &sha256, size, progress).await {
                Err(TransferError::Status(status)) if retryable(&status) && attempt < ATTEMPTS => {
                    attempt += 1;
                    tracing::info!(%status, attempt, "upload interrupted; resuming");
                    backoff(attempt).await;
                }
                other => return other,
            }
        }
    }

    async fn upload_once(
        &self,
        path: &Path,
        name: &str,
        sha256: &str,
        size: u64,
        progress: &Progress,
    ) -> Result<FileInfo, TransferError> {
        let status = self
            .files()
            .get_upload(GetUploadRequest {
                sha256: sha256.to_owned(),
                size,
            })
            .await?
            .into_inner();
        progress(status.received, size);
        let chunk = (status.chunk_limit as usize).clamp(1, 4 << 20);
        let offset = status.received;
        let mut file = tokio::fs::File::open(path).await.map_err(io(path))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(io(path))?;
        let header = UploadRequest {
            data: Some(upload_request::Data::Header(UploadHeader {
                name: name.to_owned(),
                size,
                sha256: sha256.to_owned(),
                offset,
            })),
        };
        // Chunks are read as the channel takes them: one in memory at a time.
        let progress = progress.clone();
        let chunks = futures::stream::unfold((file, offset), move |(mut file, sent)| {
            let progress = progress.clone();
            async move {
                if sent >= size {
                    return None;
                }
                let want = (size - sent).min(chunk as u64) as usize;
                let mut buf = bytes::BytesMut::zeroed(want);
                file.read_exact(&mut buf).await.ok()?;
                progress(sent + want as u64, size);
                let message = UploadRequest {
                    data: Some(upload_request::Data::Chunk(buf.freeze())),
                };
                Some((message, (file, sent + want as u64)))
            }
        });
        let requests = futures::stream::once(async { header }).chain(chunks);
        let mut request = tonic::Request::new(requests);
        // A large file takes longer than the default deadline.
        request.set_timeout(Duration::from_secs(24 * 3600));
        Ok(self.files().upload(request).await?.into_inner())
    }

    /// Downloads file `id` to `dest`, resuming a `dest.part` left by an earlier try, and
    /// checks the sha256 before renaming it to `dest`.
    pub async fn download_file(
        &self,
        id: &str,
        dest: &Path,
        progress: &Progress,
    ) -> Result<FileInfo, TransferError> {
        let part = dest.with_extension(match dest.extension() {
            Some(ext) => format!("{}.part", ext.to_string_lossy()),
            None => "part".into(),
        });
        let mut attempt = 0;
        let info = loop {
            match self.download_once(id, &part, progress).await {
                Err(TransferError::Status(status)) if retryable(&status) && attempt < ATTEMPTS => {
                    attempt += 1;
                    tracing::info!(%status, attempt, "download interrupted; resuming");
                    backoff(attempt).await;
                }
                other => break other?,
            }
        };
        let (got, _) = sha256_file(&part).await?;
        if got != info.sha256 {
            return Err(TransferError::Corrupt {
                got,
                want: info.sha256,
                part: part.display().to_string(),
            });
        }
        tokio::fs::rename(&part, dest).await.map_err(io(dest))?;
        Ok(info)
    }

    async fn download_once(
        &self,
        id: &str,
        part: &Path,
        progress: &Progress,
    ) -> Result<FileInfo, TransferError> {
        let offset = match tokio::fs::metadata(part).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(part)(e)),
        };
        let mut request = tonic::Request::new(DownloadRequest {
            id: id.to_owned(),
            offset,
        });
        request.set_timeout(Duration::from_secs(24 * 3600));
        let mut stream = self.files().download(request).await?.into_inner();
        // Only a download the server accepted creates the partial file.
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .await
            .map_err(io(part))?;
        let mut info = None;
        while let Some(message) = stream.next().await {
            let message = message?;
            if let Some(i) = message.info {
                info = Some(i);
            }
            file.write_all(&message.chunk).await.map_err(io(part))?;
            if let Some(i) = &info {
                progress(message.offset + message.chunk.len() as u64, i.size);
            }
        }
        file.sync_all().await.map_err(io(part))?;
        info.ok_or_else(|| Status::data_loss("the download sent no file information").into())
    }
}
