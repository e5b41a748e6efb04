//! Spooling a request body of unknown length (chunked) before it goes to
//! php-fpm, which reads no body without `CONTENT_LENGTH`.
//!
//! Up to [`MEMORY_MAX`] stays in memory; beyond, the body moves to an unlinked
//! temporary file (`O_TMPFILE` in `$TMPDIR`), so a 100 MiB upload never sits in
//! RAM. The upload limit is enforced while reading (413), a malformed chunked
//! body is the client's error (400). Touches only its own temporary file.

use super::fastcgi::Exchange;
use super::php::{BodyError, send};
use pingora::proxy::Session;
use std::io::SeekFrom;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Bodies up to this size are kept in memory.
pub const MEMORY_MAX: usize = 1024 * 1024;
const SEND_CHUNK: usize = 256 * 1024;

pub enum Spooled {
    Memory(Vec<u8>),
    File { file: tokio::fs::File, len: u64 },
}

/// Read the whole body; `Err(status)` for 400 or 413 (or 500 when no temp
/// file can be made).
pub async fn read_all(session: &mut Session, limit: u64) -> Result<Spooled, u16> {
    let mut mem: Vec<u8> = Vec::new();
    let mut file: Option<tokio::fs::File> = None;
    let mut total: u64 = 0;
    loop {
        let chunk = match session.read_request_body().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "bad request body");
                return Err(400);
            }
        };
        total += chunk.len() as u64;
        if total > limit {
            return Err(413);
        }
        if file.is_none() && mem.len() + chunk.len() > MEMORY_MAX {
            let std_file = tempfile::tempfile().map_err(|e| {
                tracing::error!(error = %e, "cannot create a temp file for a request body");
                500u16
            })?;
            let mut f = tokio::fs::File::from_std(std_file);
            f.write_all(&mem).await.map_err(|_| 500u16)?;
            mem = Vec::new();
            file = Some(f);
        }
        match file.as_mut() {
            Some(f) => f.write_all(&chunk).await.map_err(|_| 500u16)?,
            None => mem.extend_from_slice(&chunk),
        }
    }
    match file {
        Some(mut f) => {
            f.flush().await.map_err(|_| 500u16)?;
            f.seek(SeekFrom::Start(0)).await.map_err(|_| 500u16)?;
            Ok(Spooled::File {
                file: f,
                len: total,
            })
        }
        None => Ok(Spooled::Memory(mem)),
    }
}

impl Spooled {
    pub fn len(&self) -> u64 {
        match self {
            Spooled::Memory(m) => m.len() as u64,
            Spooled::File { len, .. } => *len,
        }
    }

    /// Send the body as FastCGI stdin.
    pub async fn send(
        self,
        ex: &mut Exchange,
        timeout: std::time::Duration,
    ) -> Result<(), BodyError> {
        match self {
            Spooled::Memory(m) => {
                for piece in m.chunks(SEND_CHUNK) {
                    send(ex, piece, timeout).await?;
                }
            }
            Spooled::File { mut file, .. } => {
                let mut buf = vec![0u8; SEND_CHUNK];
                loop {
                    let n = file.read(&mut buf).await.map_err(|e| {
                        tracing::error!(error = %e, "cannot read a spooled request body");
                        BodyError::Client(500)
                    })?;
                    if n == 0 {
                        break;
                    }
                    ex.send_stdin(&buf[..n])
                        .await
                        .map_err(BodyError::Upstream)?;
                }
            }
        }
        Ok(())
    }
}
