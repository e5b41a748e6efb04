//! What a request path means for one instance's site: a static file, a PHP
//! script, a redirect or an error. It reproduces the nginx site applianced
//! replaces (`root public/; index index.php; try_files $uri $uri/
//! /index.php$is_args$args;`, `/storage/*.php|html` denied, dotfiles hidden).
//!
//! It touches the site's `public/` dir read-only, and only through metadata
//! calls (`lstat`, and `realpath` when a symlink is on the way); it never opens
//! a file. Pure Rust, no pingora types: the front end maps [`Route`] onto its
//! responses.
//!
//! Decisions (also in the docs of the items):
//! - The path is percent-decoded exactly once, `%2F` included (as nginx does):
//!   an encoded slash is a separator, so `/..%2f..%2fetc` is `..` twice and is
//!   rejected like the plain form.
//! - `.`/`..` are resolved lexically; `..` above the root is a 400 (nginx).
//! - Symlinks are followed only while they stay inside the root (or inside a
//!   directory allowed with [`Site::allow_symlinks_into`], e.g. Laravel's
//!   `storage/app/public` behind `public/storage`). An escaping symlink is a
//!   404, like a file that is not there, so it reveals nothing.
//! - A nested `dir/index.php` runs only in [`PhpMode::AnyScript`]; in
//!   [`PhpMode::FrontController`] `dir/` falls through to `/index.php`.

use std::fs::{self, Metadata};
use std::io;
use std::path::{Path, PathBuf};

/// Which `.php` files may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhpMode {
    /// Only `public/index.php` runs (also as `/index.php/extra`). Any other
    /// `.php` path is a 404 whether it exists or not, so an uploaded or
    /// forgotten script can neither run nor leak its source.
    FrontController,
    /// nginx's behaviour: any existing `.php` file runs, with PATH_INFO split
    /// at the first segment ending in `.php` (`/foo.php/bar` runs `/foo.php`
    /// with PATH_INFO `/bar`); a missing script is a 404, and `dir/` runs
    /// `dir/index.php` when present.
    AnyScript,
}

/// Why a [`Site`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("site directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("site directory {0} is not a directory")]
    NotADirectory(PathBuf),
}

/// What to do with one request. Built by [`Site::resolve`].
#[derive(Debug)]
pub enum Route {
    /// Serve this regular file (see `static_files::prepare`). `meta` is the
    /// metadata found while resolving, so no second `stat` is needed; `file` is
    /// inside the root (or an allowed symlink target) and is never a `.php`.
    Static { file: PathBuf, meta: Metadata },
    /// Run this script through php-fpm. `REQUEST_URI` and `QUERY_STRING` are the
    /// caller's (the raw request target), so Laravel routes keep working.
    Php {
        /// Absolute path of the existing script (`SCRIPT_FILENAME`).
        script_filename: PathBuf,
        /// The script's URL path, e.g. `/index.php` (`SCRIPT_NAME`).
        script_name: String,
        /// What follows the script in the URL, `""` if nothing (`PATH_INFO`).
        path_info: String,
        /// nginx's `$document_uri` after try_files: `script_name + path_info`,
        /// so `/index.php` for a front-controller fallback (`DOCUMENT_URI`).
        document_uri: String,
    },
    /// A directory asked for without its trailing slash (Caddy's 308, which
    /// keeps the method and body). `location` is a path plus the query.
    Redirect { location: String, status: u16 },
    /// 403: `/storage/*.php|html`, or a file the server may not read.
    Deny,
    /// 404.
    NotFound,
    /// 400, with a short reason for the log (not meant for the client).
    BadRequest(&'static str),
}

impl Route {
    /// The status for the routes that are answered without a body of ours.
    pub fn error_status(&self) -> Option<u16> {
        match self {
            Route::Deny => Some(403),
            Route::NotFound => Some(404),
            Route::BadRequest(_) => Some(400),
            _ => None,
        }
    }
}

/// One instance's site: its `public/` dir and PHP policy.
#[derive(Debug, Clone)]
pub struct Site {
    /// Canonical once, so "inside the root" is a plain prefix test. A deploy
    /// that swaps a `current -> releases/N` symlink needs a new `Site`.
    root: PathBuf,
    mode: PhpMode,
    /// Canonical directories symlinks in the root may point into.
    symlink_targets: Vec<PathBuf>,
}

/// Outcome of looking one decoded path up on disk.
enum Lookup {
    Found {
        path: PathBuf,
        meta: Metadata,
    },
    Missing,
    Denied,
    /// A symlink led outside the allowed places: a 404, not a fallback to
    /// the front controller, so nothing differs from a plain missing script.
    Escaped,
}

impl Site {
    /// A site serving `root` (the app's `public/`), canonicalized here once.
    pub fn new(root: impl AsRef<Path>, mode: PhpMode) -> Result<Site, SiteError> {
        Ok(Site {
            root: canonical_dir(root.as_ref())?,
            mode,
            symlink_targets: Vec::new(),
        })
    }

    /// Lets symlinks inside the root point into `dir` too, e.g.
    /// `storage/app/public` for Laravel's `public/storage` link. Without it
    /// such a link is treated as an escape (404).
    pub fn allow_symlinks_into(mut self, dir: impl AsRef<Path>) -> Result<Site, SiteError> {
        self.symlink_targets.push(canonical_dir(dir.as_ref())?);
        Ok(self)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn mode(&self) -> PhpMode {
        self.mode
    }

    /// Decides what `raw_path` (the request path as sent, without `?query`)
    /// means. `query` is only used to keep it in a redirect. Never panics on
    /// hostile input; costs one `lstat` per path segment that exists (a missing
    /// first segment, the usual Laravel route, costs one).
    pub fn resolve(&self, raw_path: &str, query: Option<&str>) -> Route {
        let decoded = match decode_path(raw_path) {
            Ok(d) => d,
            Err(why) => return Route::BadRequest(why),
        };
        let mut segs: Vec<&str> = Vec::new();
        for seg in decoded.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    if segs.pop().is_none() {
                        return Route::BadRequest("path goes above the root");
                    }
                }
                s => segs.push(s),
            }
        }
        let trailing_slash =
            decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");

        // Hidden files: `.env`, `.git/`, ... Only `/.well-known` itself is
        // exempt (ACME, security.txt); a dot segment below it is still hidden.
        let hidden = segs
            .iter()
            .enumerate()
            .any(|(i, s)| s.starts_with('.') && !(i == 0 && *s == ".well-known"));
        if hidden {
            return Route::NotFound;
        }
        // nginx's `location ~ /storage/.*\.(php|html)$`, at any depth; a later
        // `.php` segment counts too so `/storage/x.php/y` cannot run x.php.
        if let Some(at) = segs.iter().position(|s| *s == "storage") {
            if segs[at + 1..]
                .iter()
                .any(|s| ends_with_ci(s, ".php") || ends_with_ci(s, ".html"))
            {
                return Route::Deny;
            }
        }

        match self.mode {
            PhpMode::FrontController => {
                if segs.first() == Some(&"index.php") {
                    return self.front_controller(join_info(&segs[1..], trailing_slash));
                }
                // Exists or not, another script is a 404 (nginx: try_files =404).
                if segs.last().is_some_and(|s| ends_with_ci(s, ".php")) {
                    return Route::NotFound;
                }
            }
            PhpMode::AnyScript => {
                // Case-sensitive like nginx's `\.php` and php-fpm's
                // limit_extensions; `x.PHP` is never served as source below.
                if let Some(at) = segs.iter().position(|s| s.ends_with(".php")) {
                    let info = join_info(&segs[at + 1..], trailing_slash);
                    return self.script(&segs[..=at], info);
                }
            }
        }

        // The root itself: a directory (checked when the site was made), so
        // its index, the front controller, without a stat of the root.
        if segs.is_empty() {
            return self.front_controller(String::new());
        }
        match self.lookup(&segs) {
            Lookup::Missing => self.front_controller(String::new()),
            Lookup::Denied => Route::Deny,
            Lookup::Escaped => Route::NotFound,
            Lookup::Found { meta, .. } if meta.is_dir() => {
                if !trailing_slash && !segs.is_empty() {
                    let mut location = String::with_capacity(raw_path.len() + 8);
                    for s in &segs {
                        location.push('/');
                        push_encoded_segment(&mut location, s);
                    }
                    location.push('/');
                    if let Some(q) = query.filter(|q| !q.is_empty()) {
                        location.push('?');
                        push_encoded_query(&mut location, q);
                    }
                    return Route::Redirect {
                        location,
                        status: 308,
                    };
                }
                // nginx's `index index.php` in a subdirectory; the root's
                // index.php is the front controller itself.
                if self.mode == PhpMode::AnyScript && !segs.is_empty() {
                    let mut index = segs.clone();
                    index.push("index.php");
                    let route = self.script(&index, String::new());
                    if matches!(route, Route::Php { .. } | Route::Deny) {
                        return route;
                    }
                }
                self.front_controller(String::new())
            }
            Lookup::Found { path, meta } if meta.is_file() => {
                if trailing_slash {
                    // `file/` is not the file (ENOTDIR for nginx's `$uri`).
                    self.front_controller(String::new())
                } else if file_name_ends_with_ci(&path, ".php") {
                    Route::NotFound
                } else {
                    Route::Static { file: path, meta }
                }
            }
            // FIFOs, sockets, devices.
            Lookup::Found { .. } => Route::NotFound,
        }
    }

    /// `/index.php` with `path_info`; 404 when the app has none.
    fn front_controller(&self, path_info: String) -> Route {
        self.script(&["index.php"], path_info)
    }

    /// The script at `segs` if it is an existing regular `.php` file.
    fn script(&self, segs: &[&str], path_info: String) -> Route {
        match self.lookup(segs) {
            Lookup::Found { path, meta }
                if meta.is_file() && file_name_ends_with_ci(&path, ".php") =>
            {
                let mut script_name = String::new();
                for s in segs {
                    script_name.push('/');
                    script_name.push_str(s);
                }
                let document_uri = format!("{script_name}{path_info}");
                Route::Php {
                    script_filename: path,
                    script_name,
                    path_info,
                    document_uri,
                }
            }
            Lookup::Denied => Route::Deny,
            _ => Route::NotFound,
        }
    }

    /// Walks `segs` below the root with `lstat`, so a symlink anywhere on the
    /// way is seen. With none, the lexically clean path below the canonical
    /// root is its own real path and no `realpath` is needed. A symlink is
    /// canonicalized where it is met and must land in an allowed place before
    /// the walk goes on from its target, so nothing behind an escaping link,
    /// present or missing, answers differently from anything else.
    fn lookup(&self, segs: &[&str]) -> Lookup {
        let mut path = self.root.clone();
        if segs.is_empty() {
            return match fs::metadata(&path) {
                Ok(meta) => Lookup::Found { path, meta },
                Err(e) => from_error(&e),
            };
        }
        for (i, seg) in segs.iter().enumerate() {
            path.push(seg);
            let mut meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => return from_error(&e),
            };
            if meta.file_type().is_symlink() {
                path = match fs::canonicalize(&path) {
                    Ok(real) => real,
                    // Dangling: as if absent.
                    Err(e) => return from_error(&e),
                };
                if !self.allowed_real_path(&path) {
                    return Lookup::Escaped;
                }
                meta = match fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) => return from_error(&e),
                };
            }
            if i + 1 == segs.len() {
                return Lookup::Found { path, meta };
            }
            if !meta.is_dir() {
                return Lookup::Missing;
            }
        }
        Lookup::Missing
    }

    /// A symlink's real target must be inside the root or an allowed target
    /// dir, and not a hidden file there.
    fn allowed_real_path(&self, real: &Path) -> bool {
        let Some(rel) = std::iter::once(&self.root)
            .chain(&self.symlink_targets)
            .find_map(|base| real.strip_prefix(base).ok())
        else {
            tracing::debug!(real = %real.display(), "symlink leaves the site root");
            return false;
        };
        !rel.components().enumerate().any(|(i, c)| {
            let name = c.as_os_str().as_encoded_bytes();
            name.starts_with(b".") && !(i == 0 && name == b".well-known")
        })
    }
}

/// Not found and not-a-directory mean "try the next thing" (try_files); a
/// permission problem is a 403 as in nginx. Anything else (ELOOP,
/// ENAMETOOLONG, EIO) is treated as missing.
fn from_error(e: &io::Error) -> Lookup {
    if e.kind() == io::ErrorKind::PermissionDenied {
        Lookup::Denied
    } else {
        Lookup::Missing
    }
}

fn canonical_dir(dir: &Path) -> Result<PathBuf, SiteError> {
    let real = fs::canonicalize(dir).map_err(|source| SiteError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let meta = fs::metadata(&real).map_err(|source| SiteError::Io {
        path: real.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(SiteError::NotADirectory(real));
    }
    Ok(real)
}

/// Percent-decodes once and refuses what has no business in a file path:
/// bad escapes, NUL and other control characters, backslashes (Windows-style
/// separators some backends honour), and bytes that are not UTF-8 (this also
/// catches overlong encodings such as `%c0%ae`).
fn decode_path(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err("path does not start with /");
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| hex_value(*c));
            let lo = bytes.get(i + 2).and_then(|c| hex_value(*c));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err("invalid percent-escape");
            };
            i += 3;
            hi << 4 | lo
        } else {
            i += 1;
            bytes[i - 1]
        };
        match b {
            0 => return Err("NUL in path"),
            b'\\' => return Err("backslash in path"),
            0x01..=0x1f | 0x7f => return Err("control character in path"),
            _ => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| "path is not UTF-8")
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `/a/b` (plus a trailing `/` when the request had one), or `""`.
fn join_info(segs: &[&str], trailing_slash: bool) -> String {
    let mut info = String::new();
    for s in segs {
        info.push('/');
        info.push_str(s);
    }
    if trailing_slash && !segs.is_empty() {
        info.push('/');
    }
    info
}

fn ends_with_ci(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

fn file_name_ends_with_ci(path: &Path, suffix: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| ends_with_ci(n, suffix))
}

/// Re-encodes a decoded segment for a `Location` header: RFC 3986 pchars stay,
/// everything else (space, `?`, `#`, `%`, non-ASCII) is escaped.
fn push_encoded_segment(out: &mut String, seg: &str) {
    for &b in seg.as_bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
        push_byte(out, b, keep);
    }
}

/// The query goes back as sent, except that anything that could break the
/// header (controls, spaces, non-ASCII) or end the URL (`#`) is escaped.
fn push_encoded_query(out: &mut String, query: &str) {
    for &b in query.as_bytes() {
        push_byte(out, b, (0x21..=0x7e).contains(&b) && b != b'#');
    }
}

fn push_byte(out: &mut String, b: u8, keep: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if keep {
        out.push(char::from(b));
    } else {
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
}

#[cfg(test)]
mod tests;
