//! Tests for `static_files` on real files in a tempdir: validators,
//! conditionals, ranges, HEAD/405, precompressed siblings, Content-Type.

use super::*;
use std::io::{Read, Seek, SeekFrom};
use std::time::SystemTime;
use tempfile::TempDir;

const MTIME: u64 = 1_700_000_000; // Tue, 14 Nov 2023 22:13:20 GMT
const LAST_MODIFIED: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

/// A file with a fixed mtime, and its metadata as `site` would pass it.
fn file(dir: &TempDir, name: &str, content: &[u8]) -> (PathBuf, Metadata) {
    let path = dir.path().join(name);
    fs::write(&path, content).unwrap();
    let f = File::options().write(true).open(&path).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME))
        .unwrap();
    let meta = fs::symlink_metadata(&path).unwrap();
    (path, meta)
}

fn get<'a>() -> RequestHeaders<'a> {
    RequestHeaders {
        method: "GET",
        ..Default::default()
    }
}

fn body(resp: StaticResponse) -> Vec<u8> {
    match resp.body {
        Body::Empty => Vec::new(),
        Body::Bytes(b) => b.to_vec(),
        Body::File {
            mut file,
            offset,
            len,
        } => {
            file.seek(SeekFrom::Start(offset)).unwrap();
            let mut out = Vec::new();
            file.take(len).read_to_end(&mut out).unwrap();
            out
        }
    }
}

const TEXT: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

#[test]
fn get_sends_200_with_type_length_validators_and_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "hello.txt", TEXT);
    let resp = prepare(&path, &meta, &get()).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(resp.header("content-length"), Some("36"));
    assert_eq!(
        resp.header("etag"),
        Some(format!("\"{MTIME:x}-24\"").as_str())
    );
    assert_eq!(resp.header("last-modified"), Some(LAST_MODIFIED));
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(resp.header("accept-ranges"), Some("bytes"));
    assert_eq!(resp.header("vary"), None);
    assert_eq!(resp.header("cache-control"), None);
    assert_eq!(resp.header("content-encoding"), None);
    assert_eq!(body(resp), TEXT);
}

#[test]
fn matching_if_none_match_gives_304_with_validators_and_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.css", TEXT);
    let etag = format!("\"{MTIME:x}-24\"");
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"old\", {etag}"),
        "*".to_owned(),
    ] {
        let req = RequestHeaders {
            if_none_match: Some(&inm),
            ..get()
        };
        let resp = prepare(&path, &meta, &req).unwrap();
        assert_eq!(resp.status, 304, "{inm}");
        assert_eq!(resp.header("etag"), Some(etag.as_str()));
        assert_eq!(resp.header("last-modified"), Some(LAST_MODIFIED));
        assert_eq!(resp.header("content-length"), None);
        assert!(matches!(resp.body, Body::Empty));
    }
}

#[test]
fn if_none_match_takes_precedence_over_if_modified_since() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.css", TEXT);
    let req = RequestHeaders {
        if_none_match: Some("\"stale\""),
        if_modified_since: Some("Fri, 01 Jan 2100 00:00:00 GMT"),
        ..get()
    };
    assert_eq!(prepare(&path, &meta, &req).unwrap().status, 200);
}

#[test]
fn if_modified_since_gives_304_unless_the_file_is_newer_or_the_date_is_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.css", TEXT);
    for (ims, want) in [
        (LAST_MODIFIED, 304),
        ("Wed, 15 Nov 2023 00:00:00 GMT", 304),
        ("Tue, 14 Nov 2023 22:13:19 GMT", 200),
        ("yesterday", 200),
    ] {
        let req = RequestHeaders {
            if_modified_since: Some(ims),
            ..get()
        };
        assert_eq!(prepare(&path, &meta, &req).unwrap().status, want, "{ims}");
    }
}

#[test]
fn single_ranges_give_206_with_content_range_and_those_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.bin", TEXT);
    for (range, want_range, want_body) in [
        ("bytes=0-9", "bytes 0-9/36", &TEXT[..10]),
        ("bytes=-5", "bytes 31-35/36", &TEXT[31..]),
        ("bytes=10-", "bytes 10-35/36", &TEXT[10..]),
    ] {
        let req = RequestHeaders {
            range: Some(range),
            ..get()
        };
        let resp = prepare(&path, &meta, &req).unwrap();
        assert_eq!(resp.status, 206, "{range}");
        assert_eq!(resp.header("content-range"), Some(want_range));
        assert_eq!(
            resp.header("content-length"),
            Some(want_body.len().to_string().as_str())
        );
        assert_eq!(body(resp), want_body);
    }
}

#[test]
fn range_past_the_end_gives_416_with_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.bin", TEXT);
    let req = RequestHeaders {
        range: Some("bytes=36-"),
        ..get()
    };
    let resp = prepare(&path, &meta, &req).unwrap();
    assert_eq!(resp.status, 416);
    assert_eq!(resp.header("content-range"), Some("bytes */36"));
    assert_eq!(resp.header("content-length"), Some("0"));
    assert!(matches!(resp.body, Body::Empty));
}

#[test]
fn multiple_or_malformed_ranges_send_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.bin", TEXT);
    for range in ["bytes=0-1,5-6", "bytes=9-2", "lines=1-2"] {
        let req = RequestHeaders {
            range: Some(range),
            ..get()
        };
        let resp = prepare(&path, &meta, &req).unwrap();
        assert_eq!(resp.status, 200, "{range}");
        assert_eq!(body(resp), TEXT);
    }
}

#[test]
fn if_range_honours_the_range_only_for_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.bin", TEXT);
    let etag = format!("\"{MTIME:x}-24\"");
    let weak = format!("W/{etag}");
    for (if_range, want) in [
        (etag.as_str(), 206),
        (LAST_MODIFIED, 206),
        ("\"other\"", 200),
        (weak.as_str(), 200),
        ("Wed, 15 Nov 2023 00:00:00 GMT", 200),
    ] {
        let req = RequestHeaders {
            range: Some("bytes=0-9"),
            if_range: Some(if_range),
            ..get()
        };
        assert_eq!(
            prepare(&path, &meta, &req).unwrap().status,
            want,
            "{if_range}"
        );
    }
}

#[test]
fn head_has_the_headers_of_get_and_no_body_and_ignores_range() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.js", TEXT);
    let got = prepare(&path, &meta, &get()).unwrap();
    let req = RequestHeaders {
        method: "HEAD",
        range: Some("bytes=0-1"),
        ..Default::default()
    };
    let head = prepare(&path, &meta, &req).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.headers, got.headers);
    assert!(matches!(head.body, Body::Empty));
}

#[test]
fn other_methods_get_405_with_allow() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.txt", TEXT);
    for method in ["POST", "PUT", "DELETE", "get", "OPTIONS"] {
        let resp = prepare(
            &path,
            &meta,
            &RequestHeaders {
                method,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(resp.status, 405, "{method}");
        assert_eq!(resp.header("allow"), Some("GET, HEAD"));
    }
}

#[test]
fn precompressed_siblings_are_chosen_by_accept_encoding_with_q_values() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "app.js", TEXT);
    file(&dir, "app.js.br", b"BROTLI");
    file(&dir, "app.js.gz", b"GZIPPED!");
    for (ae, want_enc, want_body) in [
        (Some("gzip, deflate, br"), Some("br"), &b"BROTLI"[..]),
        (Some("gzip, br;q=0"), Some("gzip"), b"GZIPPED!"),
        (Some("br;q=0.5, gzip"), Some("gzip"), b"GZIPPED!"),
        (Some("gzip;q=0, br;q=0"), None, TEXT),
        (Some("identity"), None, TEXT),
        (None, None, TEXT),
    ] {
        let req = RequestHeaders {
            accept_encoding: ae,
            ..get()
        };
        let resp = prepare(&path, &meta, &req).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-encoding"), want_enc, "{ae:?}");
        assert_eq!(
            resp.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        // No Accept-Encoding: the original, no sibling lookup, nothing varies.
        let want_vary = ae.map(|_| "Accept-Encoding");
        assert_eq!(resp.header("vary"), want_vary, "{ae:?}");
        assert_eq!(
            resp.header("content-length"),
            Some(want_body.len().to_string().as_str())
        );
        assert_eq!(body(resp), want_body);
    }
}

#[test]
fn each_variant_has_its_own_etag() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "app.css", TEXT);
    file(&dir, "app.css.gz", TEXT); // same size and mtime on purpose
    let plain = prepare(&path, &meta, &get()).unwrap();
    let req = RequestHeaders {
        accept_encoding: Some("gzip"),
        ..get()
    };
    let gz = prepare(&path, &meta, &req).unwrap();
    assert_eq!(
        gz.header("etag"),
        Some(format!("\"{MTIME:x}-24-gz\"").as_str())
    );
    assert_ne!(plain.header("etag"), gz.header("etag"));
    // The plain tag does not validate the gzip variant.
    let req = RequestHeaders {
        accept_encoding: Some("gzip"),
        if_none_match: plain.header("etag"),
        ..get()
    };
    assert_eq!(prepare(&path, &meta, &req).unwrap().status, 200);
}

#[test]
fn ranges_on_a_precompressed_variant_address_the_compressed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "app.js", TEXT);
    file(&dir, "app.js.gz", b"GZIPPED!");
    let req = RequestHeaders {
        accept_encoding: Some("gzip"),
        range: Some("bytes=-3"),
        ..get()
    };
    let resp = prepare(&path, &meta, &req).unwrap();
    assert_eq!(resp.status, 206);
    assert_eq!(resp.header("content-range"), Some("bytes 5-7/8"));
    assert_eq!(body(resp), b"ED!");
}

#[test]
fn symlinked_or_directory_siblings_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "app.js", TEXT);
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("app.js.br")).unwrap();
    fs::create_dir(dir.path().join("app.js.gz")).unwrap();
    let req = RequestHeaders {
        accept_encoding: Some("br, gzip"),
        ..get()
    };
    let resp = prepare(&path, &meta, &req).unwrap();
    assert_eq!(resp.header("content-encoding"), None);
    assert_eq!(resp.header("vary"), None);
    assert_eq!(body(resp), TEXT);
}

#[test]
fn charset_is_added_to_text_javascript_and_json_only() {
    let dir = tempfile::tempdir().unwrap();
    for (name, want) in [
        ("a.html", "text/html; charset=utf-8"),
        ("a.css", "text/css; charset=utf-8"),
        ("a.mjs", "application/javascript; charset=utf-8"),
        ("a.json", "application/json; charset=utf-8"),
        (
            "site.webmanifest",
            "application/manifest+json; charset=utf-8",
        ),
        ("a.svg", "image/svg+xml"),
        ("a.png", "image/png"),
        ("a.woff2", "font/woff2"),
        ("a.unknownext", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ] {
        let (path, meta) = file(&dir, name, b"x");
        let resp = prepare(&path, &meta, &get()).unwrap();
        assert_eq!(resp.header("content-type"), Some(want), "{name}");
    }
}

#[test]
fn cache_control_hook_is_sent_on_200_and_304() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.css", TEXT);
    let opts = Options {
        cache_control: Some("public, max-age=60"),
        ..Options::default()
    };
    let resp = prepare_with(&path, &meta, &get(), &opts).unwrap();
    assert_eq!(resp.header("cache-control"), Some("public, max-age=60"));
    let req = RequestHeaders {
        if_none_match: Some("*"),
        ..get()
    };
    let resp = prepare_with(&path, &meta, &req, &opts).unwrap();
    assert_eq!(resp.status, 304);
    assert_eq!(resp.header("cache-control"), Some("public, max-age=60"));
}

#[test]
fn empty_file_has_length_zero_and_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "empty.txt", b"");
    let resp = prepare(&path, &meta, &get()).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("0"));
    assert!(matches!(resp.body, Body::Empty));
}

#[test]
fn a_file_replaced_after_lookup_is_refused_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.txt", TEXT);
    let (other, _) = file(&dir, "b.txt", b"secret");
    fs::rename(&other, &path).unwrap();
    let err = prepare(&path, &meta, &get()).unwrap_err();
    assert!(matches!(err, ServeError::Replaced(_)), "{err}");
    assert_eq!(err.status(), 404);
}

#[test]
fn a_fifo_raced_in_after_lookup_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.txt", TEXT);
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    fs::rename(&fifo, &path).unwrap();
    let err = prepare(&path, &meta, &get()).unwrap_err();
    assert!(matches!(err, ServeError::Replaced(_)), "{err}");
}

#[test]
fn a_file_rewritten_in_place_is_described_as_it_is_now() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.txt", TEXT);
    fs::write(&path, b"new").unwrap(); // same inode, new size and mtime
    let resp = prepare(&path, &meta, &get()).unwrap();
    assert_eq!(resp.header("content-length"), Some("3"));
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    assert!(mtime > SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME));
    assert_eq!(body(resp), b"new");
}

#[test]
fn a_file_deleted_after_lookup_is_a_404() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "a.txt", TEXT);
    fs::remove_file(&path).unwrap();
    let err = prepare(&path, &meta, &get()).unwrap_err();
    assert!(matches!(err, ServeError::Open { .. }));
    assert_eq!(err.status(), 404);
}

mod cache;
