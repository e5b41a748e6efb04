//! CGI/1.1 glue for the FastCGI handler: the parameter set php-fpm receives
//! for a request (what nginx's `fastcgi_params` + `snippets/fastcgi-php.conf`
//! send, which is what Laravel and Symfony expect), and the parser for the
//! response head PHP prints before the body.
//!
//! Pure functions over bytes: it touches no socket and no file. The response
//! head comes from the application and is untrusted: malformed input is a
//! [`CgiError`] (the caller answers 502), never a panic.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What the front end knows about one request, already routed to a script.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    /// Path and query exactly as the client sent them (`REQUEST_URI`).
    pub request_uri: &'a str,
    /// The decoded, normalised path being served (`DOCUMENT_URI`).
    pub document_uri: &'a str,
    /// The raw query string without `?` (empty when there is none).
    pub query: &'a str,
    pub script_filename: &'a Path,
    pub script_name: &'a str,
    /// The part of the path after the script (`/a/b` of `/index.php/a/b`).
    pub path_info: &'a str,
    pub document_root: &'a Path,
    /// The Host without its port, lowercased.
    pub server_name: &'a str,
    /// The local address the request came in on, when known.
    pub server_addr: Option<IpAddr>,
    pub server_port: u16,
    /// TLS: sets `HTTPS=on` and `REQUEST_SCHEME=https`.
    pub https: bool,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub server_protocol: &'a str,
    pub remote_addr: IpAddr,
    pub remote_port: u16,
    /// Request headers in arrival order, repeats included. For HTTP/2 the
    /// caller must include `host` (from `:authority`): apps read `HTTP_HOST`.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// `None` sends `CONTENT_LENGTH=""`: PHP then reads no body at all, so a
    /// request with a body needs a known length.
    pub content_length: Option<u64>,
    pub content_type: Option<&'a str>,
}

/// The parameter set for one request, in a stable order: CGI variables first,
/// then one `HTTP_*` per distinct request header.
pub fn params(info: &RequestInfo<'_>) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::with_capacity(24 + info.headers.len());
    let mut put = |name: &str, value: &[u8]| out.push((name.to_owned(), value.to_vec()));
    put("GATEWAY_INTERFACE", b"CGI/1.1");
    put("SERVER_SOFTWARE", b"applianced");
    put("REQUEST_METHOD", info.method.as_bytes());
    put("REQUEST_URI", info.request_uri.as_bytes());
    put("DOCUMENT_URI", info.document_uri.as_bytes());
    put("QUERY_STRING", info.query.as_bytes());
    put(
        "SCRIPT_FILENAME",
        info.script_filename.as_os_str().as_bytes(),
    );
    put("SCRIPT_NAME", info.script_name.as_bytes());
    put("PATH_INFO", info.path_info.as_bytes());
    if !info.path_info.is_empty() {
        put("PATH_TRANSLATED", &path_translated(info));
    }
    put("DOCUMENT_ROOT", info.document_root.as_os_str().as_bytes());
    put("CONTENT_TYPE", info.content_type.unwrap_or("").as_bytes());
    let length = info
        .content_length
        .map(|l| l.to_string())
        .unwrap_or_default();
    put("CONTENT_LENGTH", length.as_bytes());
    put("SERVER_NAME", info.server_name.as_bytes());
    if let Some(addr) = info.server_addr {
        put("SERVER_ADDR", addr.to_canonical().to_string().as_bytes());
    }
    put("SERVER_PORT", info.server_port.to_string().as_bytes());
    put("SERVER_PROTOCOL", info.server_protocol.as_bytes());
    put(
        "REQUEST_SCHEME",
        if info.https { b"https" } else { b"http" },
    );
    if info.https {
        put("HTTPS", b"on");
    }
    // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; apps
    // (rate limits, trusted proxies) expect the plain IPv4 form, like nginx.
    put(
        "REMOTE_ADDR",
        info.remote_addr.to_canonical().to_string().as_bytes(),
    );
    put("REMOTE_PORT", info.remote_port.to_string().as_bytes());
    // php-cgi's force-redirect check; harmless for php-fpm, expected by apps.
    put("REDIRECT_STATUS", b"200");
    out.extend(http_params(info.headers));
    out
}

/// `$document_root$fastcgi_path_info`, without a doubled slash.
fn path_translated(info: &RequestInfo<'_>) -> Vec<u8> {
    let root = info.document_root.as_os_str().as_bytes();
    let root = root.strip_suffix(b"/").unwrap_or(root);
    [root, info.path_info.as_bytes()].concat()
}

/// `HTTP_*` variables: repeated headers joined (`; ` for Cookie, `, `
/// otherwise), in first-seen order.
fn http_params(headers: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (name, value) in headers {
        let Some(var) = cgi_header_var(name) else {
            continue;
        };
        match index.get(&var) {
            Some(&i) => {
                let sep: &[u8] = if var == "HTTP_COOKIE" { b"; " } else { b", " };
                if let Some((_, joined)) = out.get_mut(i) {
                    joined.extend_from_slice(sep);
                    joined.extend_from_slice(value);
                }
            }
            None => {
                index.insert(var.clone(), out.len());
                out.push((var, value.to_vec()));
            }
        }
    }
    out
}

/// The `HTTP_*` name for a request header, or `None` when it must not be
/// passed: names with `_` (nginx's `underscores_in_headers off`, so `x_foo`
/// cannot spoof `X-Foo`), `Proxy` (httpoxy: it would become `HTTP_PROXY`),
/// Content-Type/Length (sent as CONTENT_*), and anything that is not a token
/// (HTTP/2 pseudo-headers included).
fn cgi_header_var(name: &str) -> Option<String> {
    let skip = ["proxy", "content-type", "content-length"];
    if name.contains('_') || !is_token(name.as_bytes()) {
        return None;
    }
    if skip.iter().any(|s| name.eq_ignore_ascii_case(s)) {
        return None;
    }
    let upper = name.to_ascii_uppercase().replace('-', "_");
    Some(format!("HTTP_{upper}"))
}

/// RFC 9110 token characters.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The response head exceeds this: the caller answers 502 instead of
/// buffering an endless head.
pub const MAX_HEAD: usize = 64 * 1024;

/// The CGI response head: status and headers, `Status:` already removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// The reason phrase from a `Status:` header, when it gave one.
    pub reason: Option<String>,
    /// Headers in the order PHP sent them; repeats (Set-Cookie) stay separate.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why a response head was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgiError {
    #[error("response head longer than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("response head line {line} is not `Name: value`")]
    NotAHeader { line: usize },
    #[error("response head line {line}: header name is not a token")]
    BadName { line: usize },
    #[error("response head line {line}: header value has control characters")]
    BadValue { line: usize },
    #[error("bad Status header {0:?}")]
    BadStatus(String),
}

/// Parse the head at the start of `buf`. `Ok(None)`: not complete yet, read
/// more. On success also returns how many bytes the head took (the body
/// starts there).
///
/// The head ends at the first empty line (`\r\n\r\n` from PHP; bare `\n` is
/// accepted too). `Status:` sets the status and is removed. Without it, a
/// `Location:` gives 302; CGI's "local redirect" (a relative Location
/// re-dispatched by the server) is deliberately not done, the 302 goes to the
/// client. Otherwise 200.
pub fn parse_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, CgiError> {
    let too_large = CgiError::TooLarge { limit: MAX_HEAD };
    let Some(end) = head_end(buf) else {
        return if buf.len() > MAX_HEAD {
            Err(too_large)
        } else {
            Ok(None)
        };
    };
    if end > MAX_HEAD {
        return Err(too_large);
    }
    let mut head = ResponseHead {
        status: 200,
        reason: None,
        headers: Vec::new(),
    };
    let mut explicit_status = false;
    let lines = buf[..end].split(|&b| b == b'\n').map(strip_cr);
    for (i, line) in lines.take_while(|l| !l.is_empty()).enumerate() {
        let (name, value) = parse_line(line, i + 1)?;
        if name.eq_ignore_ascii_case("status") {
            (head.status, head.reason) = parse_status(value)?;
            explicit_status = true;
        } else {
            head.headers.push((name.to_owned(), value.to_vec()));
        }
    }
    let has_location = head
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("location"));
    if !explicit_status && has_location {
        head.status = 302;
    }
    Ok(Some((head, end)))
}

/// Index just past the empty line that ends the head, if there is one.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf.get(start..)?.iter().position(|&b| b == b'\n') {
        let line_end = start + nl;
        if strip_cr(&buf[start..line_end]).is_empty() {
            return Some(line_end + 1);
        }
        start = line_end + 1;
    }
    None
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// One `Name: value` line; `line` (1-based) is for the error message.
fn parse_line(line: &[u8], no: usize) -> Result<(&str, &[u8]), CgiError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(CgiError::NotAHeader { line: no })?;
    let (name, rest) = line.split_at(colon);
    if !is_token(name) {
        return Err(CgiError::BadName { line: no });
    }
    let name = std::str::from_utf8(name).map_err(|_| CgiError::BadName { line: no })?;
    let value = rest.get(1..).unwrap_or_default().trim_ascii();
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(CgiError::BadValue { line: no });
    }
    Ok((name, value))
}

/// `Status: 404 Not Found` (reason optional).
fn parse_status(value: &[u8]) -> Result<(u16, Option<String>), CgiError> {
    let bad = || CgiError::BadStatus(String::from_utf8_lossy(value).into_owned());
    let (code, reason) = match value.iter().position(|&b| b == b' ') {
        Some(sp) => (&value[..sp], value[sp..].trim_ascii()),
        None => (value, &b""[..]),
    };
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let status: u16 = std::str::from_utf8(code)
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(bad)?;
    let reason = std::str::from_utf8(reason)
        .ok()
        .filter(|r| !r.is_empty())
        .map(str::to_owned);
    Ok((status, reason))
}

#[cfg(test)]
mod tests;
