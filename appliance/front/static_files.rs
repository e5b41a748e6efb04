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
//! - Small files are kept in memory ([`SmallFiles`]) when the caller passes a
//!   cache: a hit is revalidated against the lookup's metadata, never served
//!   blind.
//! - No Cache-Control unless [`Options::cache_control`] is set (nginx sends
//!   none); it is also repeated on 304s, as RFC 9110 asks.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, header};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod cache;
mod headers;

use cache::Cached;
pub use cache::SmallFiles;
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
#[derive(Clone, Copy, Default)]
pub struct Options<'a> {
    /// Sent verbatim as `Cache-Control` (e.g. `public, max-age=31536000,
    /// immutable` for hashed build assets). `None`: no header, like nginx.
    pub cache_control: Option<&'a str>,
    /// Serve small files from (and keep them in) this cache.
    pub cache: Option<&'a SmallFiles>,
}

/// Status, headers and body for the caller to send.
#[derive(Debug)]
pub struct StaticResponse {
    pub status: u16,
    /// `content-length` is always there except on 304, which must not carry
    /// one of its own (the caller must not add one).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Body,
}

impl StaticResponse {
    /// The value of header `name` (lowercase), for tests and logging.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str().ok())
    }
}

/// What follows the headers.
#[derive(Debug)]
pub enum Body {
    /// HEAD, 304, 405, 416 and empty files.
    Empty,
    /// The bytes themselves, from the small-file cache.
    Bytes(Bytes),
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

/// [`prepare_with`] with no Cache-Control and no cache.
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
/// precompressed, such as images), and no I/O at all for a 304, a 405 or a
/// file in [`Options::cache`].
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
                (header::ALLOW, HeaderValue::from_static("GET, HEAD")),
                (header::CONTENT_LENGTH, HeaderValue::from(0u64)),
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
        coding,
        vary,
        cache_control: opts.cache_control,
        req,
        head,
    };
    if let Some(hit) = opts.cache.and_then(|c| c.get(path, checked)) {
        let body = Source::Memory(hit.body.clone());
        return Ok(common.answer(&hit.validators, hit.content_type.clone(), body));
    }

    // A 304 needs no file descriptor.
    let validators = Validators::new(checked, coding);
    if validators.not_modified(req) {
        return Ok(common.not_modified(&validators));
    }

    // O_NONBLOCK: if a FIFO was raced in, open must not hang the worker (the
    // inode check below then refuses it); regular files ignore the flag.
    let open_error = |source| ServeError::Open {
        path: path.to_path_buf(),
        source,
    };
    let opened = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(open_error)?;
    let fresh = opened.metadata().map_err(open_error)?;
    if !fresh.is_file() || fresh.dev() != checked.dev() || fresh.ino() != checked.ino() {
        return Err(ServeError::Replaced(path.to_path_buf()));
    }
    // Same inode, but it may have been rewritten in place: decide on what
    // will actually be sent.
    let validators = Validators::new(&fresh, coding);
    let content_type = content_type(mime);
    // A file changed just now is served from disk without a read here (the
    // caller reads it once).
    if let Some(cache) = opts.cache.filter(|c| c.takes(&fresh, SystemTime::now())) {
        let mut buf = vec![0; fresh.len() as usize];
        opened.read_exact_at(&mut buf, 0).map_err(open_error)?;
        let again = opened.metadata().map_err(open_error)?;
        if cache::unchanged(&fresh, &again) {
            let body = Bytes::from(buf);
            let entry = Cached::new(&fresh, body.clone(), validators, content_type.clone());
            let entry = cache.put(path, entry);
            return Ok(common.answer(&entry.validators, content_type, Source::Memory(body)));
        }
        // Changed while it was read (rare): serve the file, not bytes that
        // may mix two versions.
    }
    Ok(common.answer(&validators, content_type, Source::File(opened, fresh.len())))
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
fn content_type(mime: &'static str) -> HeaderValue {
    let textual = mime.starts_with("text/")
        || mime.contains("javascript")
        || mime == "application/json"
        || mime.ends_with("+json");
    if textual {
        header_value(format!("{mime}; charset=utf-8"))
    } else {
        HeaderValue::from_static(mime)
    }
}

/// A value we formatted ourselves (digits, dates, a MIME type from the
/// table); an impossible invalid one becomes empty rather than a panic.
fn header_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).unwrap_or(HeaderValue::from_static(""))
}

/// Where a 200/206 body comes from.
enum Source {
    Memory(Bytes),
    /// The opened file and its size.
    File(File, u64),
}

/// What every answer about one request for one variant shares.
struct Common<'a> {
    coding: Option<Coding>,
    vary: bool,
    cache_control: Option<&'a str>,
    req: &'a RequestHeaders<'a>,
    head: bool,
}

impl Common<'_> {
    fn cache_headers(&self, headers: &mut Vec<(HeaderName, HeaderValue)>) {
        if self.vary {
            headers.push((header::VARY, HeaderValue::from_static("Accept-Encoding")));
        }
        if let Some(cc) = self.cache_control {
            headers.push((header::CACHE_CONTROL, header_value(cc.to_owned())));
        }
    }

    /// 304, 416, 206 or 200 for the variant `v` describes.
    fn answer(&self, v: &Validators, content_type: HeaderValue, source: Source) -> StaticResponse {
        if v.not_modified(self.req) {
            return self.not_modified(v);
        }
        let size = match &source {
            Source::Memory(b) => b.len() as u64,
            Source::File(_, size) => *size,
        };
        let range = match (self.req.range, self.head) {
            (Some(range), false) if v.if_range_holds(self.req.if_range) => {
                headers::parse_range(range, size)
            }
            _ => ByteRange::Whole,
        };
        let (status, offset, len) = match range {
            ByteRange::Whole => (200, 0, size),
            ByteRange::Part { start, len } => (206, start, len),
            ByteRange::Unsatisfiable => {
                let headers = vec![
                    (
                        header::CONTENT_RANGE,
                        header_value(format!("bytes */{size}")),
                    ),
                    (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
                    (header::CONTENT_LENGTH, HeaderValue::from(0u64)),
                ];
                return StaticResponse {
                    status: 416,
                    headers,
                    body: Body::Empty,
                };
            }
        };
        let mut headers = Vec::with_capacity(10);
        headers.push((header::CONTENT_TYPE, content_type));
        headers.push((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
        if let Some(coding) = self.coding {
            headers.push((
                header::CONTENT_ENCODING,
                HeaderValue::from_static(coding.name()),
            ));
        }
        self.cache_headers(&mut headers);
        headers.push((header::ETAG, v.etag.clone()));
        headers.push((header::LAST_MODIFIED, v.last_modified.clone()));
        headers.push((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
        headers.push((header::CONTENT_LENGTH, HeaderValue::from(len)));
        if status == 206 {
            let last = offset + len - 1;
            headers.push((
                header::CONTENT_RANGE,
                header_value(format!("bytes {offset}-{last}/{size}")),
            ));
        }
        let body = match source {
            _ if self.head || len == 0 => Body::Empty,
            Source::Memory(b) => Body::Bytes(b.slice(offset as usize..(offset + len) as usize)),
            Source::File(file, _) => Body::File { file, offset, len },
        };
        StaticResponse {
            status,
            headers,
            body,
        }
    }

    fn not_modified(&self, v: &Validators) -> StaticResponse {
        let mut headers = vec![
            (header::ETAG, v.etag.clone()),
            (header::LAST_MODIFIED, v.last_modified.clone()),
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
pub(super) struct Validators {
    /// nginx's `"<mtime hex>-<size hex>"`, plus `-br`/`-gz` for a sibling so
    /// the variants never share a tag.
    etag: HeaderValue,
    last_modified: HeaderValue,
    mtime: u64,
}

impl Validators {
    fn new(meta: &Metadata, coding: Option<Coding>) -> Validators {
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        let tag = coding.map_or("", |c| &c.suffix()[1..]);
        let sep = if tag.is_empty() { "" } else { "-" };
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(mtime));
        Validators {
            etag: header_value(format!("\"{mtime:x}-{:x}{sep}{tag}\"", meta.len())),
            last_modified: header_value(date),
            mtime,
        }
    }

    fn etag(&self) -> &str {
        self.etag.to_str().unwrap_or("")
    }

    /// RFC 9110 13.2.2: If-None-Match decides when present; If-Modified-Since
    /// only without it, and an unparsable date is ignored.
    fn not_modified(&self, req: &RequestHeaders) -> bool {
        if let Some(inm) = req.if_none_match {
            return headers::none_match(inm, self.etag());
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
                headers::strong_match(v, self.etag())
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
