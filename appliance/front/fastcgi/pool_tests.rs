//! The connection pool's tests: what it keeps, its slow start and its hold
//! while php-fpm's unit starts, against unix listeners that play php-fpm.

use super::*;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_closed_pool_drops_its_idle_connections_and_keeps_no_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fpm.sock");
    // A listener that accepts and holds connections (no FastCGI needed
    // to check what the pool keeps).
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let accept = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let pool = Pool::new(path, 4);
    pool.set_warm(); // past the slow start: requests side by side
    let (a, lease_a) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    let (b, lease_b) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    let (lease_a, lease_b) = (lease_a.unwrap(), lease_b.unwrap());
    assert!(lease_a.kept && lease_b.kept);
    lease_a.release(a);
    assert_eq!((pool.idle_count(), pool.kept_count()), (1, 2));

    assert_eq!(pool.close(), 1);
    assert_eq!((pool.idle_count(), pool.kept_count()), (0, 1));
    // A request that was in flight ends: its connection is closed, not kept.
    lease_b.release(b);
    assert_eq!((pool.idle_count(), pool.kept_count()), (0, 0));
    // A request routed before the removal still gets a connection, a plain one.
    let (c, lease_c) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    let lease_c = lease_c.unwrap();
    assert!(!lease_c.kept);
    lease_c.release(c);
    assert_eq!((pool.idle_count(), pool.kept_count()), (0, 0));
    accept.abort();
}

#[tokio::test]
async fn a_connection_php_fpm_hung_up_is_closed_at_release_and_skipped_at_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fpm.sock");
    // Each accepted connection goes back to the test, which plays the
    // retiring child: it shuts its side down (php-fpm's fcgi_close).
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let accept = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let _ = tx.send(conn);
        }
    });
    let pool = Pool::new(path, 4);
    pool.set_warm();

    // Retired before the release: never kept.
    let (a, lease_a) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    let mut peer_a = accepted.recv().await.unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut peer_a)
        .await
        .unwrap();
    lease_a.unwrap().release(a);
    assert_eq!((pool.idle_count(), pool.kept_count()), (0, 0));

    // Retired while idle: the next checkout does not reuse it.
    let (b, lease_b) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    let mut peer_b = accepted.recv().await.unwrap();
    lease_b.unwrap().release(b);
    assert_eq!((pool.idle_count(), pool.kept_count()), (1, 1));
    tokio::io::AsyncWriteExt::shutdown(&mut peer_b)
        .await
        .unwrap();
    let (c, lease_c) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    let lease_c = lease_c.unwrap();
    assert!(lease_c.kept && !lease_c.reused, "a fresh kept connection");
    assert_eq!((pool.idle_count(), pool.kept_count()), (0, 1));
    let _peer_c = accepted.recv().await.unwrap();

    // A live one is kept and reused.
    lease_c.release(c);
    let (_d, lease_d) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    assert!(lease_d.unwrap().reused);
    accept.abort();
}

/// A checkout on its own task: `Ok(true)` once it got its place.
fn spawn_checkout(pool: &Arc<Pool>) -> tokio::task::JoinHandle<Result<bool, FcgiError>> {
    let pool = pool.clone();
    tokio::spawn(async move {
        pool.checkout(true, WAIT, WAIT)
            .await
            .map(|(_, lease)| lease.is_some())
    })
}

/// A listener that accepts and holds every connection.
fn holding_listener(path: &Path) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    })
}

#[tokio::test]
async fn a_cold_pool_lets_one_request_through_until_php_fpm_answers_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fpm.sock");
    let accept = holding_listener(&path);
    let pool = Pool::new(path.clone(), 4);
    assert!(!pool.is_warm());

    let (_a, lease_a) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    let lease_a = lease_a.unwrap();
    let second = spawn_checkout(&pool);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !second.is_finished(),
        "a second request went in while the pool was cold"
    );

    // php-fpm ends the first request: the rest go in together.
    lease_a.answered();
    assert!(pool.is_warm());
    assert!(
        tokio::time::timeout(WAIT, second)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    );
    let (_c, _lease_c) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    let (_d, _lease_d) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    drop(lease_a);

    // php-fpm restarts: its socket is gone, then back. Cold again.
    accept.abort();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        pool.checkout(true, WAIT, WAIT).await,
        Err(FcgiError::Connect { .. })
    ));
    assert!(!pool.is_warm(), "a refused connection makes the pool cold");
    let _accept = holding_listener(&path);
    drop((_c, _lease_c, _d, _lease_d));
    let (_e, _lease_e) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    let short = Duration::from_millis(200);
    assert!(
        matches!(
            pool.checkout(true, WAIT, short).await,
            Err(FcgiError::Timeout)
        ),
        "a second request went in while the restarted pool was cold"
    );
}

#[tokio::test]
async fn a_slow_first_request_holds_the_others_back_no_longer_than_the_slow_start_bound_counted_from_php_fpm_taking_it()
 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fpm.sock");
    let pool = Pool::with_slow_start(path.clone(), 4, Duration::from_millis(300));
    // php-fpm not up yet: refused requests do not start the bound.
    assert!(matches!(
        pool.checkout(true, WAIT, WAIT).await,
        Err(FcgiError::Connect { .. })
    ));
    for _ in 0..8 {
        pool.reap(Instant::now());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !pool.is_warm(),
        "the slow start ended before php-fpm took a request"
    );
    let accept = holding_listener(&path);
    let (_a, _lease_a) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    let second = spawn_checkout(&pool);
    // The front end's reaper ticks; the first request never ends.
    let started = Instant::now();
    while !second.is_finished() && started.elapsed() < WAIT {
        pool.reap(Instant::now());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(second.await.unwrap().unwrap());
    assert!(pool.is_warm());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    accept.abort();
}

/// A pool that holds on a `starting` feed the test drives.
fn held_pool(path: &Path, max: Duration) -> (Arc<Pool>, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(true);
    let hold = Hold { starting: rx, max };
    (Pool::holding(path.to_path_buf(), 4, hold), tx)
}

#[tokio::test]
async fn a_request_is_held_while_php_fpm_starts_and_goes_in_once_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fpm.sock");
    // php-fpm is up and accepting, but its unit is not ready (MariaDB is
    // still starting, or the warm-up runs).
    let accept = holding_listener(&path);
    let (pool, starting) = held_pool(&path, WAIT);
    let first = spawn_checkout(&pool);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !first.is_finished(),
        "a request reached php-fpm before its unit was ready"
    );
    starting.send_replace(false);
    assert!(
        tokio::time::timeout(WAIT, first)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    );
    accept.abort();
}

#[tokio::test]
async fn a_request_is_held_no_longer_than_the_hold_bound_nor_once_the_unit_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fpm.sock");
    let accept = holding_listener(&path);
    let (pool, starting) = held_pool(&path, Duration::from_millis(300));
    let t = Instant::now();
    let (_a, lease) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    assert!(lease.is_some());
    let held = t.elapsed();
    assert!(
        held >= Duration::from_millis(300) && held < WAIT,
        "held {held:?}"
    );
    drop((_a, lease));

    // The unit's runner is gone (its instance removed): nothing to wait for.
    let (pool, starting2) = held_pool(&path, WAIT);
    drop(starting2);
    let t = Instant::now();
    let _ = pool.checkout(true, WAIT, WAIT).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    drop(starting);
    accept.abort();
}

#[tokio::test]
async fn a_warm_pool_turns_cold_and_holds_again_when_its_php_fpm_unit_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fpm.sock");
    let accept = holding_listener(&path);
    let (pool, starting) = held_pool(&path, WAIT);
    starting.send_replace(false);
    let (a, lease_a) = pool.checkout(true, WAIT, WAIT).await.unwrap();
    let lease_a = lease_a.unwrap();
    lease_a.answered();
    lease_a.release(a);
    assert!(pool.is_warm());
    pool.reap(Instant::now());
    assert!(
        pool.is_warm(),
        "ready unit: the reaper leaves a warm pool be"
    );

    // The supervisor restarts php-fpm: the reaper's next tick sees it.
    starting.send_replace(true);
    pool.reap(Instant::now());
    assert!(!pool.is_warm());
    let next = spawn_checkout(&pool);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!next.is_finished(), "a request went in during the restart");
    starting.send_replace(false);
    assert!(
        tokio::time::timeout(WAIT, next)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    );
    accept.abort();
}
