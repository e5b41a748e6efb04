//! Answers a GET or HEAD for one static file that `site` already resolved:
//! validators (ETag, Last-Modified), conditional requests (304), a single
//! byte range (206/416), precompressed `.br`/`.gz` siblings, Content-Type.
//!
//! It touches only the file it is given and that file's two siblings, read
//! only; it opens at most one of them. No pingora types: the caller copies
//! [`StaticResponse`] into its response and streams [`Body`] in chunks.
//!
//! Decisions:
//! - Several ranges in one `Range` are ignored (200, whole file), as is a
//!   `Range` on HEAD (RFC 9110 defines ranges for GET only).
//! - Ranges on a precompressed variant address the compressed bytes, like
//!   nginx's gzip_static: that is the representation the ETag names.
//! - A 304 is decided from the metadata `site` found, without opening the
//!   file. Otherwise the file is opened and its fstat must show the inode
//!   `site` checked: a file swapped (or a directory on its path turned into a
//!   symlink) in between is refused instead of served.
//! - Header names are lowercase so they suit both HTTP/1 and HTTP/2 APIs.
//! - No Cache-Control unless [`Options::cache_control`] is set (nginx sends
//!   none); it is also repeated on 304s, as RFC 9110 asks.

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

mod headers;

use headers::{ByteRange, Coding};

/// The request headers static serving looks at, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHeaders<'a> {
    /// Only `GET` and `HEAD` are served; anything else gets 405 + `Allow`.
    pub method: &'a str,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub accept_encoding: Option<&'a str>,
}

/// Per-site or per-path policy the caller may add.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    /// Sent verbatim as `Cache-Control` (e.g. `public, max-age=31536000,
    /// immutable` for hashed build assets). `None`: no header, like nginx.
    pub cache_control: Option<&'a str>,
}

/// Status, headers and body for the caller to send.
#[derive(Debug)]
pub struct StaticResponse {
    pub status: u16,
    /// Lowercase names. `content-length` is always there except on 304,
    /// which must not carry one of its own (the caller must not add one).
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl StaticResponse {
    /// The value of header `name` (lowercase), for tests and logging.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What follows the headers.
#[derive(Debug)]
pub enum Body {
    /// HEAD, 304, 405, 416 and empty files.
    Empty,
    /// `len` bytes of `file` from `offset`; the caller reads it in chunks.
    File { file: File, offset: u64, len: u64 },
}

/// Why a file that `site` found could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The inode opened is not the one that was checked (a deploy replaced the
    /// file, or someone raced a symlink in). Resolving again is safe.
    #[error("{} changed between lookup and open", .0.display())]
    Replaced(PathBuf),
}

impl ServeError {
    /// The status to answer with: gone is 404, unreadable 403, else 500.
    pub fn status(&self) -> u16 {
        match self {
            ServeError::Replaced(_) => 404,
            ServeError::Open { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => 404,
                io::ErrorKind::PermissionDenied => 403,
                _ => 500,
            },
        }
    }
}

/// [`prepare_with`] and no Cache-Control.
pub fn prepare(
    file: &Path,
    meta: &Metadata,
    req: &RequestHeaders,
) -> Result<StaticResponse, ServeError> {
    prepare_with(file, meta, req, &Options::default())
}

/// Builds the response for `file`, whose `meta` came from `site` (its inode is
/// checked again after opening). Costs, beyond the open and fstat of a
/// 200/206: one `lstat` per sibling looked for (none for types that are never
/// precompressed, such as images), and no I/O at all for a 304 or 405.
pub fn prepare_with(
    file: &Path,
    meta: &Metadata,
    req: &RequestHeaders,
    opts: &Options,
) -> Result<StaticResponse, ServeError> {
    let head = match req.method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let headers = vec![
                ("allow", "GET, HEAD".to_owned()),
                ("content-length", "0".to_owned()),
            ];
            return Ok(StaticResponse {
                status: 405,
                headers,
                body: Body::Empty,
            });
        }
    };
    let mime = mime_guess::from_path(file)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let (variant, vary) = choose_variant(file, meta, mime, req.accept_encoding);
    let (path, checked, coding) = match &variant {
        Some((path, m, coding)) => (path.as_path(), m, Some(*coding)),
        None => (file, meta, None),
    };
    let common = Common {
        mime,
        coding,
        vary,
        cache_control: opts.cache_control,
    };

    // A 304 needs no file descriptor.
    let validators = Validators::new(checked, coding);
    if validators.not_modified(req) {
        return Ok(common.not_modified(&validators));
    }

    // O_NONBLOCK: if a FIFO was raced in, open must not hang the worker (the
    // inode check below then refuses it); regular files ignore the flag.
    let opened = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| ServeError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let fresh = opened.metadata().map_err(|source| ServeError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !fresh.is_file() || fresh.dev() != checked.dev() || fresh.ino() != checked.ino() {
        return Err(ServeError::Replaced(path.to_path_buf()));
    }
    // Same inode, but it may have been rewritten in place: decide again on
    // what will actually be sent.
    let validators = Validators::new(&fresh, coding);
    if validators.not_modified(req) {
        return Ok(common.not_modified(&validators));
    }

    let size = fresh.len();
    let range = match (req.range, head) {
        (Some(range), false) if validators.if_range_holds(req.if_range) => {
            headers::parse_range(range, size)
        }
        _ => ByteRange::Whole,
    };
    let (status, offset, len) = match range {
        ByteRange::Whole => (200, 0, size),
        ByteRange::Part { start, len } => (206, start, len),
        ByteRange::Unsatisfiable => {
            let headers = vec![
                ("content-range", format!("bytes */{size}")),
                ("accept-ranges", "bytes".to_owned()),
                ("content-length", "0".to_owned()),
            ];
            return Ok(StaticResponse {
                status: 416,
                headers,
                body: Body::Empty,
            });
        }
    };

    let mut headers = common.representation();
    headers.push(("etag", validators.etag));
    headers.push(("last-modified", validators.last_modified));
    headers.push(("accept-ranges", "bytes".to_owned()));
    headers.push(("content-length", len.to_string()));
    if status == 206 {
        headers.push((
            "content-range",
            format!("bytes {offset}-{}/{size}", offset + len - 1),
        ));
    }
    let body = if head || len == 0 {
        Body::Empty
    } else {
        Body::File {
            file: opened,
            offset,
            len,
        }
    };
    Ok(StaticResponse {
        status,
        headers,
        body,
    })
}

/// The precompressed sibling to send, if the client accepts one that exists,
/// and whether any sibling exists (then the response varies on
/// Accept-Encoding even when the original is sent). A sibling must be a
/// regular file by `lstat`: not a symlink, so being next to a file inside the
/// root keeps it inside the root.
fn choose_variant(
    file: &Path,
    meta: &Metadata,
    mime: &str,
    accept_encoding: Option<&str>,
) -> (Option<(PathBuf, Metadata, Coding)>, bool) {
    // A client that sent no Accept-Encoding takes the original and nothing
    // varies for it (nginx's gzip_static looks only when the client accepts
    // gzip): no sibling lookups. Caches still key compressed answers on Vary.
    if accept_encoding.is_none() || !may_be_precompressed(mime, file) {
        return (None, false);
    }
    let accepted = headers::accepted_codings(accept_encoding);
    for &coding in &accepted {
        if let Some(found) = sibling(file, meta, coding) {
            return (Some((found.0, found.1, coding)), true);
        }
    }
    let any = [Coding::Br, Coding::Gzip]
        .into_iter()
        .filter(|c| !accepted.contains(c))
        .any(|c| sibling(file, meta, c).is_some());
    (None, any)
}

fn sibling(file: &Path, meta: &Metadata, coding: Coding) -> Option<(PathBuf, Metadata)> {
    let mut name = file.as_os_str().to_owned();
    name.push(coding.suffix());
    let path = PathBuf::from(name);
    let m = fs::symlink_metadata(&path).ok()?;
    // Same filesystem as the original: a cheap sign that the directory was
    // not swapped for a symlink between the two lookups.
    (m.file_type().is_file() && m.dev() == meta.dev()).then_some((path, m))
}

/// Saves two `lstat`s per request for types nobody precompresses.
fn may_be_precompressed(mime: &str, file: &Path) -> bool {
    let already_compressed = match mime.split_once('/') {
        Some(("image", sub)) => !matches!(sub, "svg+xml" | "x-icon" | "vnd.microsoft.icon" | "bmp"),
        Some(("audio" | "video", _)) => true,
        Some(("font", sub)) => matches!(sub, "woff" | "woff2"),
        Some(("application", sub)) => matches!(
            sub,
            "zip"
                | "gzip"
                | "x-gzip"
                | "x-bzip2"
                | "x-xz"
                | "zstd"
                | "x-7z-compressed"
                | "vnd.rar"
                | "x-rar-compressed"
        ),
        _ => false,
    };
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    !already_compressed && !matches!(ext, "gz" | "br" | "zst")
}

/// `text/*`, JavaScript and JSON get `charset=utf-8` (what our apps emit and
/// what browsers otherwise guess wrong); everything else goes as typed.
fn content_type(mime: &str) -> String {
    let textual = mime.starts_with("text/")
        || mime.contains("javascript")
        || mime == "application/json"
        || mime.ends_with("+json");
    if textual {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    }
}

/// Headers shared by 200, 206 and 304.
struct Common<'a> {
    mime: &'static str,
    coding: Option<Coding>,
    vary: bool,
    cache_control: Option<&'a str>,
}

impl Common<'_> {
    fn cache_headers(&self, headers: &mut Vec<(&'static str, String)>) {
        if self.vary {
            headers.push(("vary", "Accept-Encoding".to_owned()));
        }
        if let Some(cc) = self.cache_control {
            headers.push(("cache-control", cc.to_owned()));
        }
    }

    fn representation(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::with_capacity(10);
        headers.push(("content-type", content_type(self.mime)));
        headers.push(("x-content-type-options", "nosniff".to_owned()));
        if let Some(coding) = self.coding {
            headers.push(("content-encoding", coding.name().to_owned()));
        }
        self.cache_headers(&mut headers);
        headers
    }

    fn not_modified(&self, v: &Validators) -> StaticResponse {
        let mut headers = vec![
            ("etag", v.etag.clone()),
            ("last-modified", v.last_modified.clone()),
        ];
        self.cache_headers(&mut headers);
        StaticResponse {
            status: 304,
            headers,
            body: Body::Empty,
        }
    }
}

/// ETag and Last-Modified of one variant.
struct Validators {
    /// nginx's `"<mtime hex>-<size hex>"`, plus `-br`/`-gz` for a sibling so
    /// the variants never share a tag.
    etag: String,
    last_modified: String,
    mtime: u64,
}

impl Validators {
    fn new(meta: &Metadata, coding: Option<Coding>) -> Validators {
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        let tag = coding.map_or("", |c| &c.suffix()[1..]);
        let sep = if tag.is_empty() { "" } else { "-" };
        Validators {
            etag: format!("\"{mtime:x}-{:x}{sep}{tag}\"", meta.len()),
            last_modified: httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(mtime)),
            mtime,
        }
    }

    /// RFC 9110 13.2.2: If-None-Match decides when present; If-Modified-Since
    /// only without it, and an unparsable date is ignored.
    fn not_modified(&self, req: &RequestHeaders) -> bool {
        if let Some(inm) = req.if_none_match {
            return headers::none_match(inm, &self.etag);
        }
        req.if_modified_since
            .and_then(http_date_secs)
            .is_some_and(|since| self.mtime <= since)
    }

    /// No If-Range, or one naming this exact version (strong ETag, or the
    /// very Last-Modified date): the Range may be honoured.
    fn if_range_holds(&self, if_range: Option<&str>) -> bool {
        match if_range.map(str::trim) {
            None => true,
            Some(v) if v.starts_with('"') || v.starts_with("W/") => {
                headers::strong_match(v, &self.etag)
            }
            Some(v) => http_date_secs(v) == Some(self.mtime),
        }
    }
}

fn http_date_secs(v: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(v.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

#[cfg(test)]
mod tests;
