//! Unit tests for the CGI parameter set and the response-head parser.

use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn info<'a>(headers: &'a [(&'a str, &'a [u8])]) -> RequestInfo<'a> {
    RequestInfo {
        method: "GET",
        request_uri: "/index.php/a%20b?x=1&y=2",
        document_uri: "/index.php/a b",
        query: "x=1&y=2",
        script_filename: Path::new("/srv/app/public/index.php"),
        script_name: "/index.php",
        path_info: "/a b",
        document_root: Path::new("/srv/app/public/"),
        server_name: "example.test",
        server_addr: None,
        server_port: 443,
        https: true,
        server_protocol: "HTTP/1.1",
        remote_addr: IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()),
        remote_port: 50123,
        headers,
        content_length: None,
        content_type: None,
    }
}

fn get<'a>(params: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

#[test]
fn cgi_variables_follow_nginx_fastcgi_params() {
    let p = params(&info(&[]));
    let expect: &[(&str, &str)] = &[
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "applianced"),
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", "/index.php/a%20b?x=1&y=2"),
        ("DOCUMENT_URI", "/index.php/a b"),
        ("QUERY_STRING", "x=1&y=2"),
        ("SCRIPT_FILENAME", "/srv/app/public/index.php"),
        ("SCRIPT_NAME", "/index.php"),
        ("PATH_INFO", "/a b"),
        ("PATH_TRANSLATED", "/srv/app/public/a b"),
        ("DOCUMENT_ROOT", "/srv/app/public/"),
        ("CONTENT_TYPE", ""),
        ("CONTENT_LENGTH", ""),
        ("SERVER_NAME", "example.test"),
        ("SERVER_PORT", "443"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "https"),
        ("HTTPS", "on"),
        ("REMOTE_ADDR", "192.0.2.7"),
        ("REMOTE_PORT", "50123"),
        ("REDIRECT_STATUS", "200"),
    ];
    for (name, value) in expect {
        assert_eq!(get(&p, name), Some(value.as_bytes()), "{name}");
    }
    assert_eq!(get(&p, "SERVER_ADDR"), None);
}

#[test]
fn plain_http_without_path_info_has_no_https_or_path_translated() {
    let mut i = info(&[]);
    i.https = false;
    i.path_info = "";
    i.server_addr = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
    i.content_length = Some(12);
    i.content_type = Some("application/x-www-form-urlencoded");
    let p = params(&i);
    assert_eq!(get(&p, "HTTPS"), None);
    assert_eq!(get(&p, "REQUEST_SCHEME"), Some(&b"http"[..]));
    assert_eq!(get(&p, "PATH_INFO"), Some(&b""[..]));
    assert_eq!(get(&p, "PATH_TRANSLATED"), None);
    assert_eq!(get(&p, "SERVER_ADDR"), Some(&b"::1"[..]));
    assert_eq!(get(&p, "CONTENT_LENGTH"), Some(&b"12"[..]));
    assert_eq!(
        get(&p, "CONTENT_TYPE"),
        Some(&b"application/x-www-form-urlencoded"[..])
    );
}

#[test]
fn request_headers_become_http_vars_joined_and_filtered() {
    let headers: &[(&str, &[u8])] = &[
        ("Host", b"example.test"),
        ("X-Forwarded-For", b"1.1.1.1"),
        ("x-forwarded-for", b"2.2.2.2"),
        ("Cookie", b"a=1"),
        ("cookie", b"b=2"),
        ("Proxy", b"http://evil:8080"),
        ("X_Forwarded_For", b"spoofed"),
        ("Content-Type", b"text/plain"),
        ("Content-Length", b"5"),
        (":authority", b"example.test"),
        ("Accept-Language", b"de"),
    ];
    let p = params(&info(headers));
    let http: Vec<(&str, &[u8])> = p
        .iter()
        .filter(|(n, _)| n.starts_with("HTTP_"))
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    assert_eq!(
        http,
        vec![
            ("HTTP_HOST", &b"example.test"[..]),
            ("HTTP_X_FORWARDED_FOR", &b"1.1.1.1, 2.2.2.2"[..]),
            ("HTTP_COOKIE", &b"a=1; b=2"[..]),
            ("HTTP_ACCEPT_LANGUAGE", &b"de"[..]),
        ]
    );
}

fn parsed(buf: &[u8]) -> (ResponseHead, usize) {
    parse_head(buf).unwrap().unwrap()
}

fn header<'a>(head: &'a ResponseHead, name: &str) -> Vec<&'a [u8]> {
    head.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

#[test]
fn status_header_sets_the_status_and_is_removed() {
    let buf = b"Status: 404 Not Found\r\nContent-type: text/html\r\n\r\nbody";
    let (head, used) = parsed(buf);
    assert_eq!(head.status, 404);
    assert_eq!(head.reason.as_deref(), Some("Not Found"));
    assert_eq!(
        head.headers,
        vec![("Content-type".into(), b"text/html".to_vec())]
    );
    assert_eq!(&buf[used..], b"body");
}

#[test]
fn status_without_reason_and_default_200() {
    let (head, _) = parsed(b"status: 201\r\n\r\n");
    assert_eq!((head.status, head.reason), (201, None));
    let (head, _) = parsed(b"X-Powered-By: PHP\r\n\r\n");
    assert_eq!(head.status, 200);
}

#[test]
fn location_without_status_is_302_and_status_wins_over_it() {
    let (head, _) = parsed(b"Location: https://example.test/x\r\n\r\n");
    assert_eq!(head.status, 302);
    let (head, _) = parsed(b"Location: /relative\r\n\r\n");
    assert_eq!(
        head.status, 302,
        "no CGI local redirect: passed through as 302"
    );
    let (head, _) = parsed(b"Status: 301 Moved Permanently\r\nLocation: /x\r\n\r\n");
    assert_eq!(head.status, 301);
    assert_eq!(header(&head, "location"), vec![&b"/x"[..]]);
}

#[test]
fn repeated_set_cookie_headers_stay_separate_and_in_order() {
    let (head, _) = parsed(b"Set-Cookie: a=1\r\nX-A: 1\r\nSet-Cookie: b=2; HttpOnly\r\n\r\n");
    assert_eq!(
        header(&head, "set-cookie"),
        vec![&b"a=1"[..], &b"b=2; HttpOnly"[..]]
    );
    assert_eq!(head.headers[1].0, "X-A");
}

#[test]
fn lf_only_heads_are_accepted() {
    let buf = b"Status: 418 I'm a teapot\nContent-Type: text/plain\n\nrest";
    let (head, used) = parsed(buf);
    assert_eq!(head.status, 418);
    assert_eq!(&buf[used..], b"rest");
}

#[test]
fn value_whitespace_is_trimmed_and_empty_values_kept() {
    let (head, _) = parsed(b"X-A:   spaced\t \r\nX-Empty:\r\n\r\n");
    assert_eq!(header(&head, "x-a"), vec![&b"spaced"[..]]);
    assert_eq!(header(&head, "x-empty"), vec![&b""[..]]);
}

#[test]
fn incomplete_heads_ask_for_more_bytes() {
    let full = b"Status: 201 Created\r\nContent-Type: text/plain\r\n\r\nbody";
    let end = full.len() - 4;
    for cut in 0..end {
        assert_eq!(parse_head(&full[..cut]), Ok(None), "cut at {cut}");
    }
    let (head, used) = parsed(&full[..end]);
    assert_eq!((head.status, used), (201, end));
}

#[test]
fn malformed_lines_are_errors() {
    assert_eq!(
        parse_head(b"no colon here\r\n\r\n"),
        Err(CgiError::NotAHeader { line: 1 })
    );
    assert_eq!(
        parse_head(b"A: 1\r\nBad Name: x\r\n\r\n"),
        Err(CgiError::BadName { line: 2 })
    );
    assert_eq!(
        parse_head(b": x\r\n\r\n"),
        Err(CgiError::BadName { line: 1 })
    );
    assert_eq!(
        parse_head(b" folded: x\r\n\r\n"),
        Err(CgiError::BadName { line: 1 })
    );
    assert_eq!(
        parse_head(b"A: x\ry\r\n\r\n"),
        Err(CgiError::BadValue { line: 1 })
    );
    assert_eq!(
        parse_head(b"A: \x00\n\n"),
        Err(CgiError::BadValue { line: 1 })
    );
    for bad in [
        "Status: abc",
        "Status: 20",
        "Status: 2000 x",
        "Status: 099",
        "Status:",
    ] {
        let buf = format!("{bad}\r\n\r\n");
        assert!(
            matches!(parse_head(buf.as_bytes()), Err(CgiError::BadStatus(_))),
            "{bad}"
        );
    }
}

#[test]
fn oversized_heads_are_rejected_with_or_without_an_end() {
    let endless = vec![b'a'; MAX_HEAD + 1];
    assert_eq!(
        parse_head(&endless),
        Err(CgiError::TooLarge { limit: MAX_HEAD })
    );
    let mut long = b"X-Big: ".to_vec();
    long.extend(vec![b'b'; MAX_HEAD]);
    long.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        parse_head(&long),
        Err(CgiError::TooLarge { limit: MAX_HEAD })
    );
    let mut fits = b"X-Big: ".to_vec();
    fits.extend(vec![b'b'; MAX_HEAD - 20]);
    fits.extend_from_slice(b"\r\n\r\n");
    assert!(parse_head(&fits).unwrap().is_some());
}

#[test]
fn a_head_with_no_headers_is_an_empty_200() {
    let (head, used) = parsed(b"\r\nbody");
    assert_eq!((head.status, head.headers.len(), used), (200, 0, 2));
}
