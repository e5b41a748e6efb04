//! The client against a scripted fake php-fpm on a unix socket: what it
//! sends, and how it treats well-formed, hostile and truncated answers.

use super::record::{self, BEGIN_REQUEST, END_REQUEST, PARAMS, STDERR, STDIN, STDOUT};
use super::*;
use tokio::net::UnixListener;

const WAIT: Duration = Duration::from_secs(5);

/// What the fake server received, record by record (content of each stream
/// concatenated).
#[derive(Debug, Default)]
struct Seen {
    begin: Vec<u8>,
    params: Vec<u8>,
    stdin: Vec<u8>,
    stdin_ended: bool,
}

/// Raw response bytes: one STDOUT record per piece.
fn stdout(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        record::push_stream(&mut out, STDOUT, p);
    }
    out
}

fn end_request(protocol_status: u8) -> Vec<u8> {
    let mut out = Vec::new();
    record::push_stream(
        &mut out,
        END_REQUEST,
        &[0, 0, 0, 0, protocol_status, 0, 0, 0],
    );
    out
}

/// Serve one connection: read the request up to the end of STDIN (unless
/// `answer_early`), write `reply`, close. Returns the socket path and what
/// the server saw.
async fn fake_fpm(
    dir: &tempfile::TempDir,
    reply: Vec<u8>,
    answer_early: bool,
) -> (PathBuf, tokio::task::JoinHandle<Seen>) {
    let path = dir.path().join("fpm.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let task = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut seen = Seen::default();
        let mut buf = BytesMut::new();
        let mut params_done = false;
        while !(seen.stdin_ended || (answer_early && params_done)) {
            while let Some(rec) = record::decode(&mut buf).expect("client record") {
                assert_eq!(rec.request_id, REQUEST_ID);
                match rec.kind {
                    BEGIN_REQUEST => seen.begin.extend_from_slice(&rec.content),
                    PARAMS if rec.content.is_empty() => params_done = true,
                    PARAMS => seen.params.extend_from_slice(&rec.content),
                    STDIN if rec.content.is_empty() => seen.stdin_ended = true,
                    STDIN => seen.stdin.extend_from_slice(&rec.content),
                    other => panic!("client sent record type {other}"),
                }
            }
            if seen.stdin_ended || (answer_early && params_done) {
                break;
            }
            if conn.read_buf(&mut buf).await.expect("read") == 0 {
                break;
            }
        }
        conn.write_all(&reply).await.expect("reply");
        seen
    });
    (path, task)
}

fn params() -> Vec<(String, Vec<u8>)> {
    vec![
        ("REQUEST_METHOD".into(), b"POST".to_vec()),
        ("HTTP_COOKIE".into(), vec![b'c'; 100_000]),
    ]
}

async fn start(path: &Path) -> Exchange {
    Exchange::start(path, &params(), WAIT).await.expect("start")
}

#[tokio::test]
async fn request_is_begin_then_params_then_stdin_in_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut reply = stdout(&[b"Content-Type: text/plain\r\n\r\nok"]);
    reply.extend(end_request(0));
    let (path, server) = fake_fpm(&dir, reply, false).await;
    let mut ex = start(&path).await;
    let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    ex.send_stdin(&body[..150_000]).await.expect("stdin");
    ex.send_stdin(b"").await.expect("empty chunk is a no-op");
    ex.send_stdin(&body[150_000..]).await.expect("stdin");
    ex.finish_stdin().await.expect("finish");
    let seen = server.await.expect("server");
    assert_eq!(
        seen.begin,
        [0, 1, 0, 0, 0, 0, 0, 0],
        "RESPONDER, no keep-conn"
    );
    let pairs = record::decode_pairs(&seen.params);
    assert_eq!(pairs[1].0, b"HTTP_COOKIE");
    assert_eq!(pairs[1].1.len(), 100_000);
    assert_eq!(seen.stdin, body);
    assert!(seen.stdin_ended);
    assert!(ex.send_stdin(b"more").await.is_err(), "body after its end");
}

#[tokio::test]
async fn head_split_across_records_with_stderr_between_is_reassembled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut reply = stdout(&[b"Status: 404 Not"]);
    record::push_stream(&mut reply, STDERR, b"PHP Warning: x\n");
    reply.extend(stdout(&[
        b" Found\r\nX-A: 1\r",
        b"\n\r\nbody-1",
        b"body-2",
        b"",
    ]));
    reply.extend(end_request(0));
    let (path, _server) = fake_fpm(&dir, reply, false).await;
    let mut ex = start(&path).await;
    let head = ex.read_head(WAIT).await.expect("head");
    assert_eq!(
        (head.status, head.reason.as_deref()),
        (404, Some("Not Found"))
    );
    assert_eq!(head.headers, vec![("X-A".to_string(), b"1".to_vec())]);
    assert_eq!(
        ex.read_body(WAIT).await.expect("b1").as_deref(),
        Some(&b"body-1"[..])
    );
    assert_eq!(
        ex.read_body(WAIT).await.expect("b2").as_deref(),
        Some(&b"body-2"[..])
    );
    assert_eq!(ex.read_body(WAIT).await.expect("end"), None);
    assert_eq!(ex.read_body(WAIT).await.expect("still end"), None);
    assert_eq!(ex.take_stderr(), b"PHP Warning: x\n");
    assert!(ex.take_stderr().is_empty(), "taken out");
    assert!(ex.end_request().is_some_and(|e| e.completed()));
}

#[tokio::test]
async fn close_before_end_request_is_an_error_not_a_short_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reply = stdout(&[b"Content-Type: text/plain\r\n\r\nhalf"]);
    let (path, _server) = fake_fpm(&dir, reply, false).await;
    let mut ex = start(&path).await;
    ex.read_head(WAIT).await.expect("head");
    assert_eq!(
        ex.read_body(WAIT).await.expect("half").as_deref(),
        Some(&b"half"[..])
    );
    let err = ex.read_body(WAIT).await.expect_err("truncated");
    assert!(
        matches!(err, FcgiError::Protocol(ref m) if m.contains("before END_REQUEST")),
        "{err}"
    );
}

#[tokio::test]
async fn end_request_before_the_head_is_a_protocol_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut reply = stdout(&[b"Content-Type: text/pl"]);
    reply.extend(end_request(0));
    let (path, _server) = fake_fpm(&dir, reply, false).await;
    let mut ex = start(&path).await;
    let err = ex.read_head(WAIT).await.expect_err("no head");
    assert!(matches!(err, FcgiError::Protocol(_)), "{err}");
}

#[tokio::test]
async fn overloaded_php_fpm_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _server) = fake_fpm(&dir, end_request(2), false).await;
    let mut ex = start(&path).await;
    let err = ex.read_head(WAIT).await.expect_err("refused");
    assert!(
        matches!(err, FcgiError::Refused(e) if e.protocol_status == 2),
        "{err}"
    );
}

#[tokio::test]
async fn unexpected_records_and_bad_versions_are_rejected() {
    let cases: [(&str, Vec<u8>); 4] = [
        ("management record", vec![1, 10, 0, 0, 0, 0, 0, 0]),
        ("unknown type", vec![1, 42, 0, 1, 0, 0, 0, 0]),
        (
            "other request id",
            vec![1, STDOUT, 0, 2, 0, 1, 7, 0, b'x', 0, 0, 0, 0, 0, 0, 0],
        ),
        ("version 9", vec![9, STDOUT, 0, 1, 0, 0, 0, 0]),
    ];
    for (what, reply) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _server) = fake_fpm(&dir, reply, false).await;
        let mut ex = start(&path).await;
        let err = ex.read_head(WAIT).await.expect_err(what);
        assert!(matches!(err, FcgiError::Protocol(_)), "{what}: {err}");
    }
}

#[tokio::test]
async fn malformed_head_is_a_head_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut reply = stdout(&[b"this is not a header\r\n\r\n"]);
    reply.extend(end_request(0));
    let (path, _server) = fake_fpm(&dir, reply, false).await;
    let mut ex = start(&path).await;
    let err = ex.read_head(WAIT).await.expect_err("malformed");
    assert!(
        matches!(err, FcgiError::Head(CgiError::NotAHeader { line: 1 })),
        "{err}"
    );
}

#[tokio::test]
async fn body_sent_after_php_fpm_answered_and_closed_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut reply = stdout(&[b"Status: 413 Too Large\r\n\r\nno"]);
    reply.extend(end_request(0));
    let (path, server) = fake_fpm(&dir, reply, true).await;
    let mut ex = start(&path).await;
    server.await.expect("server answered and closed");
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..64 {
        ex.send_stdin(&chunk).await.expect("dropped, not an error");
    }
    ex.finish_stdin().await.expect("finish");
    let head = ex.read_head(WAIT).await.expect("the early answer survives");
    assert_eq!(head.status, 413);
    assert_eq!(
        ex.read_body(WAIT).await.expect("body").as_deref(),
        Some(&b"no"[..])
    );
    assert_eq!(ex.read_body(WAIT).await.expect("end"), None);
}

#[tokio::test]
async fn silence_is_a_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fpm.sock");
    // Accepts (the backlog does) but never answers.
    let _listener = UnixListener::bind(&path).expect("bind");
    let small = [("REQUEST_METHOD".to_string(), b"GET".to_vec())];
    let mut ex = Exchange::start(&path, &small, WAIT).await.expect("start");
    let err = ex
        .read_head(Duration::from_millis(100))
        .await
        .expect_err("silent");
    assert!(matches!(err, FcgiError::Timeout), "{err}");
}
