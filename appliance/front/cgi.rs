//! CGI/1.1 glue for the FastCGI handler: the parameter set php-fpm receives
//! for a request (what nginx's `fastcgi_params` + `snippets/fastcgi-php.conf`
//! send, which is what Laravel and Symfony expect), and the parser for the
//! response head PHP prints before the body.
//!
//! Pure functions over bytes: it touches no socket and no file. The response
//! head comes from the application and is untrusted: malformed input is a
//! [`CgiError`] (the caller answers 502), never a panic.

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

/// Where parameters go: a list (tests, diagnostics) or straight into the
/// FastCGI PARAMS encoding ([`FcgiParams`], the request path), so one function
/// decides the parameter set and the hot path allocates nothing per parameter.
pub trait ParamSink {
    /// One parameter; its value is the concatenation of `value`'s parts.
    fn put(&mut self, name: &[u8], value: &[&[u8]]);
}

impl ParamSink for Vec<(String, Vec<u8>)> {
    fn put(&mut self, name: &[u8], value: &[&[u8]]) {
        self.push((String::from_utf8_lossy(name).into_owned(), value.concat()));
    }
}

/// The PARAMS stream content, encoded as parameters are put.
#[derive(Debug, Default)]
pub struct FcgiParams {
    pub bytes: Vec<u8>,
    /// A name or value too long to encode (over 2 GiB), if any.
    pub too_long: Option<String>,
}

impl ParamSink for FcgiParams {
    fn put(&mut self, name: &[u8], value: &[&[u8]]) {
        if let Err(e) = crate::front::fastcgi::record::push_pair(&mut self.bytes, name, value) {
            self.too_long.get_or_insert(e.0);
        }
    }
}

/// The parameter set for one request, as a list (see [`write_params`]).
pub fn params(info: &RequestInfo<'_>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(24 + info.headers.len());
    write_params(info, &mut out);
    out
}

/// The parameter set for one request, in a stable order: CGI variables first,
/// then one `HTTP_*` per distinct request header.
pub fn write_params(info: &RequestInfo<'_>, out: &mut impl ParamSink) {
    let mut num = NumBuf::default();
    out.put(b"GATEWAY_INTERFACE", &[b"CGI/1.1"]);
    out.put(b"SERVER_SOFTWARE", &[b"applianced"]);
    out.put(b"REQUEST_METHOD", &[info.method.as_bytes()]);
    out.put(b"REQUEST_URI", &[info.request_uri.as_bytes()]);
    out.put(b"DOCUMENT_URI", &[info.document_uri.as_bytes()]);
    out.put(b"QUERY_STRING", &[info.query.as_bytes()]);
    out.put(
        b"SCRIPT_FILENAME",
        &[info.script_filename.as_os_str().as_bytes()],
    );
    out.put(b"SCRIPT_NAME", &[info.script_name.as_bytes()]);
    out.put(b"PATH_INFO", &[info.path_info.as_bytes()]);
    let root = info.document_root.as_os_str().as_bytes();
    if !info.path_info.is_empty() {
        // `$document_root$fastcgi_path_info`, without a doubled slash.
        let trimmed = root.strip_suffix(b"/").unwrap_or(root);
        out.put(b"PATH_TRANSLATED", &[trimmed, info.path_info.as_bytes()]);
    }
    out.put(b"DOCUMENT_ROOT", &[root]);
    out.put(
        b"CONTENT_TYPE",
        &[info.content_type.unwrap_or("").as_bytes()],
    );
    match info.content_length {
        Some(l) => out.put(b"CONTENT_LENGTH", &[num.fmt(l)]),
        None => out.put(b"CONTENT_LENGTH", &[b""]),
    }
    out.put(b"SERVER_NAME", &[info.server_name.as_bytes()]);
    if let Some(addr) = info.server_addr {
        out.put(b"SERVER_ADDR", &[num.ip(addr)]);
    }
    out.put(b"SERVER_PORT", &[num.fmt(info.server_port)]);
    out.put(b"SERVER_PROTOCOL", &[info.server_protocol.as_bytes()]);
    let scheme: &[u8] = if info.https { b"https" } else { b"http" };
    out.put(b"REQUEST_SCHEME", &[scheme]);
    if info.https {
        out.put(b"HTTPS", &[b"on"]);
    }
    // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; apps
    // (rate limits, trusted proxies) expect the plain IPv4 form, like nginx.
    out.put(b"REMOTE_ADDR", &[num.ip(info.remote_addr)]);
    out.put(b"REMOTE_PORT", &[num.fmt(info.remote_port)]);
    // php-cgi's force-redirect check; harmless for php-fpm, expected by apps.
    out.put(b"REDIRECT_STATUS", &[b"200"]);
    http_params(info.headers, out);
}

/// Formats numbers and addresses into a reused stack buffer.
struct NumBuf {
    buf: [u8; 48],
}

impl Default for NumBuf {
    fn default() -> Self {
        Self { buf: [0; 48] }
    }
}

impl NumBuf {
    fn fmt(&mut self, n: impl std::fmt::Display) -> &[u8] {
        self.write(format_args!("{n}"))
    }
    fn ip(&mut self, ip: std::net::IpAddr) -> &[u8] {
        self.write(format_args!("{}", ip.to_canonical()))
    }
    fn write(&mut self, args: std::fmt::Arguments<'_>) -> &[u8] {
        use std::io::Write;
        let mut cur = std::io::Cursor::new(&mut self.buf[..]);
        let _ = cur.write_fmt(args);
        let n = cur.position() as usize;
        &self.buf[..n]
    }
}

/// `HTTP_*` variables: repeated headers joined (`; ` for Cookie, `, `
/// otherwise), in first-seen order. Quadratic in the header count (a few
/// dozen at most) so that nothing is allocated but the name buffer.
fn http_params(headers: &[(&str, &[u8])], out: &mut impl ParamSink) {
    let mut var: Vec<u8> = Vec::with_capacity(64);
    let mut parts: Vec<&[u8]> = Vec::with_capacity(4);
    for (i, (name, value)) in headers.iter().enumerate() {
        if headers[..i]
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            continue; // joined into its first occurrence
        }
        if !cgi_header_var(name, &mut var) {
            continue;
        }
        let sep: &[u8] = if var == b"HTTP_COOKIE" { b"; " } else { b", " };
        parts.clear();
        parts.push(value);
        for (_, more) in headers[i + 1..]
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            parts.push(sep);
            parts.push(more);
        }
        out.put(&var, &parts);
    }
}

/// Write the `HTTP_*` name for a request header into `var`, or return false
/// when it must not be passed: names with `_` (nginx's `underscores_in_headers
/// off`, so `x_foo` cannot spoof `X-Foo`), `Proxy` (httpoxy: it would become
/// `HTTP_PROXY`), Content-Type/Length (sent as CONTENT_*), and anything that
/// is not a token (HTTP/2 pseudo-headers included).
fn cgi_header_var(name: &str, var: &mut Vec<u8>) -> bool {
    let skip = ["proxy", "content-type", "content-length"];
    if name.contains('_') || !is_token(name.as_bytes()) {
        return false;
    }
    if skip.iter().any(|s| name.eq_ignore_ascii_case(s)) {
        return false;
    }
    var.clear();
    var.extend_from_slice(b"HTTP_");
    var.extend(name.bytes().map(|b| match b {
        b'-' => b'_',
        b => b.to_ascii_uppercase(),
    }));
    true
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
