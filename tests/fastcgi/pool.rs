//! Kept-alive FastCGI connections ([`Pool`]) against a real php-fpm8.2 pool
//! of 2 children. php-fpm's own status page is the witness: a child waiting
//! on a kept connection counts as an "active process" (reading headers).

use super::*;
use appliance::front::fastcgi::Pool;
use appliance::front::fastcgi::pool::IDLE_TIMEOUT;
use std::sync::Arc;

const STATUS: &str = "pm.status_path = /fpm-status\n";

/// One pooled GET of `script` to its end; returns the body (a pid for
/// `pid.php`) and whether the connection was an idle one.
/// A pool past its slow start (php-fpm answered one request), so requests
/// run side by side from here on.
async fn warm_pool(fpm: &PhpFpm, children: usize) -> Arc<Pool> {
    let pool = Pool::new(fpm.socket.clone(), children);
    pooled_get(&pool, "pid.php").await;
    assert!(pool.is_warm());
    pool
}

async fn pooled_get(pool: &Arc<Pool>, script: &str) -> (String, bool) {
    let run = async {
        let req = Req::get(script);
        let mut ex = Exchange::start_pooled(pool, true, &req.encoded(), CONNECT, READ, false)
            .await
            .expect("start_pooled");
        let reused = ex.reused();
        ex.read_head(READ).await.expect("read_head");
        let mut body = Vec::new();
        while let Some(piece) = ex.read_body(READ).await.expect("read_body") {
            body.extend_from_slice(&piece);
        }
        ex.release();
        (String::from_utf8_lossy(&body).into_owned(), reused)
    };
    tokio::time::timeout(WHOLE_TEST, run)
        .await
        .expect("exchange hung")
}

/// php-fpm's status page as JSON, on a fresh connection of its own.
async fn fpm_status(socket: &Path) -> serde_json::Value {
    let param = |name: &str, value: &str| (name.to_owned(), value.as_bytes().to_vec());
    let params = [
        param("REQUEST_METHOD", "GET"),
        param("SCRIPT_NAME", "/fpm-status"),
        param("SCRIPT_FILENAME", "/fpm-status"),
        param("REQUEST_URI", "/fpm-status?json&full"),
        param("QUERY_STRING", "json&full"),
    ];
    let mut ex = Exchange::start_without_body(socket, &params, CONNECT)
        .await
        .expect("status connect");
    ex.read_head(READ).await.expect("status head");
    let mut body = Vec::new();
    while let Some(piece) = ex.read_body(READ).await.expect("status body") {
        body.extend_from_slice(&piece);
    }
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("status not JSON ({e}): {}", String::from_utf8_lossy(&body)))
}

/// Children not waiting in accept(): running a request, or pinned to a kept
/// connection ("Reading headers"). Per-process states, because the pool's
/// summary counters are only recomputed once a second.
fn active(status: &serde_json::Value) -> usize {
    let procs = status["processes"].as_array().expect("processes");
    procs.iter().filter(|p| p["state"] != "Idle").count()
}

#[tokio::test]
async fn a_kept_connection_serves_the_next_requests_in_the_same_child_until_reaped() {
    let fpm = PhpFpm::start_with(STATUS);
    let pool = Pool::new(fpm.socket.clone(), 2);
    let mut pids = Vec::new();
    for i in 0..5 {
        let (pid, reused) = pooled_get(&pool, "pid.php").await;
        assert_eq!(reused, i > 0, "request {i}: only the first connects");
        assert_eq!(pool.idle_count(), 1);
        pids.push(pid);
    }
    assert!(pids.iter().all(|p| *p == pids[0]), "one child: {pids:?}");
    // The kept connection pins a child: the status request runs in the other
    // one and sees both busy.
    assert_eq!(active(&fpm_status(&fpm.socket).await), 2);

    let now = std::time::Instant::now();
    assert_eq!(pool.reap(now), 0, "not idle long enough yet");
    assert_eq!(pool.reap(now + IDLE_TIMEOUT), 1);
    assert_eq!(pool.idle_count(), 0);
    // php-fpm sees the close: only the status request itself is active.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = active(&fpm_status(&fpm.socket).await);
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "child still pinned: {n} active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn at_most_children_minus_one_connections_stay_idle() {
    let fpm = PhpFpm::start_with(STATUS);
    let pool = warm_pool(&fpm, 2).await;
    let (a, b) = tokio::join!(pooled_get(&pool, "pid.php"), pooled_get(&pool, "pid.php"));
    assert_ne!(a.0, b.0, "two requests at once ran in both children");
    assert_eq!(pool.idle_count(), 1, "one child stays free");
    // The free child answers a client that is not the pool at once.
    let t0 = Instant::now();
    assert_eq!(active(&fpm_status(&fpm.socket).await), 2);
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn past_children_minus_one_kept_connections_a_new_one_is_plain_and_a_free_child_takes_it() {
    let fpm = PhpFpm::start();
    let pool = Pool::new(fpm.socket.clone(), 2);
    let (first, _) = pooled_get(&pool, "pid.php").await;
    assert_eq!((pool.kept_count(), pool.idle_count()), (1, 1));
    // No room for a second kept connection: this one is plain (php-fpm
    // closes it at the end) and child 2, never pinned, takes it for 3 s.
    let slow = Req::get("sleep.php").encoded();
    let t0 = Instant::now();
    let mut busy = Exchange::start_pooled(&pool, false, &slow, CONNECT, READ, false)
        .await
        .expect("slow request");
    assert_eq!(pool.kept_count(), 1, "not kept");
    // Meanwhile the kept connection still serves, in child 1.
    let (again, reused) = pooled_get(&pool, "pid.php").await;
    assert!(reused && again == first, "{first} {again}");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    busy.read_head(READ).await.expect("slow request answers");
    while busy.read_body(READ).await.expect("body").is_some() {}
    busy.release();
    assert_eq!((pool.kept_count(), pool.idle_count()), (1, 1));
}

#[tokio::test]
async fn requests_beyond_the_children_wait_for_a_place_and_time_out() {
    let fpm = PhpFpm::start();
    let pool = warm_pool(&fpm, 2).await;
    let slow = Req::get("sleep.php").encoded();
    let start = || Exchange::start_pooled(&pool, true, &slow, CONNECT, READ, false);
    let (a, b) = (
        start().await.expect("first"),
        start().await.expect("second"),
    );
    let wait = Duration::from_millis(300);
    let third = Exchange::start_pooled(&pool, true, &slow, CONNECT, wait, false).await;
    assert!(matches!(third, Err(FcgiError::Timeout)), "{third:?}");
    // A place frees up when one of the two is over.
    drop(a);
    let third = Exchange::start_pooled(&pool, true, &slow, CONNECT, wait, false).await;
    assert!(third.is_ok(), "{third:?}");
    drop(b);
}

#[tokio::test]
async fn a_connection_whose_child_retired_is_closed_not_reused() {
    // Each child retires after 2 requests: it ends the second response with
    // a shutdown of its side, then waits for our close before it exits.
    let fpm = PhpFpm::start_with("pm.max_requests = 2\n");
    let pool = Pool::new(fpm.socket.clone(), 2);
    let (first, _) = pooled_get(&pool, "pid.php").await;
    let (second, reused) = pooled_get(&pool, "pid.php").await;
    assert!(reused && first == second, "{first} {second}");
    // Seen at the request's end or, when the shutdown came after it, at the
    // reaper's next tick (run here by hand): not kept, so the child can exit
    // and be replaced.
    tokio::time::sleep(Duration::from_millis(200)).await;
    pool.reap(std::time::Instant::now());
    assert_eq!(pool.idle_count(), 0, "a hung-up connection is never kept");
    assert_eq!(pool.kept_count(), 0);
    // The next request goes to a live child on a new connection.
    let (third, reused) = pooled_get(&pool, "pid.php").await;
    assert!(!reused && third != first, "{first} {third}");
    // The retired child is gone (it exited once we closed its connection).
    let retired: i32 = first.trim().parse().expect("pid.php prints its pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{retired}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "child {retired} still alive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_keepalive_every_request_gets_a_fresh_connection() {
    let fpm = PhpFpm::start();
    let pool = Pool::new(fpm.socket.clone(), 0);
    for _ in 0..3 {
        let (_, reused) = pooled_get(&pool, "pid.php").await;
        assert!(!reused);
        assert_eq!(pool.idle_count(), 0);
    }
}
