//! Glue between pingora and [`static_files`](super::static_files): turn the
//! request headers into its input and stream its answer out.
//!
//! Small files (the common case: CSS, JS, icons) come from the front end's
//! small-file cache, or are read in one go on the request's task: they come
//! from the page cache and a hop to a blocking thread would cost more than the
//! read. Larger files are read in 256 KiB chunks on tokio's blocking pool, so
//! a cold disk never stalls other connections.
//! Reads only the file it is given.

use super::handler::{Ctx, Front};
use super::static_files::{self, Body, Options, RequestHeaders};
use bytes::{Bytes, BytesMut};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::fs::{File, Metadata};
use std::path::Path;

/// Files up to this size are read inline, in one read.
const INLINE_MAX: u64 = 64 * 1024;
const CHUNK: usize = 256 * 1024;

pub async fn serve(
    front: &Front,
    session: &mut Session,
    ctx: &mut Ctx,
    file: &Path,
    meta: &Metadata,
) -> Result<()> {
    let prepared = {
        let req = session.req_header();
        let h = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        let rh = RequestHeaders {
            method: req.method.as_str(),
            if_none_match: h("if-none-match"),
            if_modified_since: h("if-modified-since"),
            range: h("range"),
            if_range: h("if-range"),
            accept_encoding: h("accept-encoding"),
        };
        let opts = Options {
            cache: Some(&front.small_files),
            ..Options::default()
        };
        static_files::prepare_with(file, meta, &rh, &opts)
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            // Vanished or unreadable between resolve and open.
            tracing::debug!(file = %file.display(), error = %e, "static file not servable");
            return front.respond_page(session, ctx, e.status()).await;
        }
    };
    if prepared.status == 405 {
        return front.respond_page(session, ctx, 405).await;
    }
    let mut resp = front.response(session, ctx, prepared.status)?;
    for (name, value) in prepared.headers {
        resp.append_header(name, value)?;
    }
    match prepared.body {
        Body::Empty => session.write_response_header(Box::new(resp), true).await,
        Body::Bytes(data) => {
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(data), true).await
        }
        Body::File { file, offset, len } => {
            if len <= INLINE_MAX {
                let data = read_at(&file, offset, len).map_err(read_error)?;
                session.write_response_header(Box::new(resp), false).await?;
                session.write_response_body(Some(data), true).await
            } else {
                session.write_response_header(Box::new(resp), false).await?;
                stream_file(session, file, offset, len).await
            }
        }
    }
}

fn read_error(e: std::io::Error) -> Box<Error> {
    Error::because(ErrorType::InternalError, "reading a static file", e)
}

async fn stream_file(session: &mut Session, file: File, offset: u64, len: u64) -> Result<()> {
    let mut file = Some(file);
    let mut pos = offset;
    let mut left = len;
    while left > 0 {
        let want = left.min(CHUNK as u64);
        let Some(f) = file.take() else { break };
        let (f, chunk) = tokio::task::spawn_blocking(move || {
            let r = read_at(&f, pos, want);
            (f, r)
        })
        .await
        .map_err(|e| Error::because(ErrorType::InternalError, "static file reader", e))?;
        let chunk = chunk.map_err(read_error)?;
        file = Some(f);
        pos += want;
        left -= want;
        session.write_response_body(Some(chunk), left == 0).await?;
    }
    Ok(())
}

fn read_at(file: &File, offset: u64, len: u64) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = BytesMut::zeroed(len as usize);
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf.freeze())
}
