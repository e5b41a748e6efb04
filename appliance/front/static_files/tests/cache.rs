//! The small-file cache through `prepare_with`: what it keeps, that a hit
//! answers exactly like the file, and that any change on disk is seen.

use super::*;
use crate::front::static_files::cache::{ENTRY_OVERHEAD, MAX_FILE};

/// A cache that takes files at once (no settle time), so tests need no sleep.
fn instant() -> SmallFiles {
    SmallFiles::with_settle(1024 * 1024, Duration::ZERO)
}

fn cached<'a>(c: &'a SmallFiles) -> Options<'a> {
    Options {
        cache: Some(c),
        ..Options::default()
    }
}

/// Serve `path` as the site would: a fresh lstat first.
fn serve(path: &Path, req: &RequestHeaders, c: &SmallFiles) -> StaticResponse {
    let meta = fs::symlink_metadata(path).unwrap();
    prepare_with(path, &meta, req, &cached(c)).unwrap()
}

fn from_memory(resp: &StaticResponse) -> bool {
    matches!(resp.body, Body::Bytes(_))
}

/// Coarse kernel timestamps: wait long enough for a rewrite to get a new ctime.
fn next_tick() {
    std::thread::sleep(Duration::from_millis(30));
}

#[test]
fn a_small_file_is_kept_and_a_hit_answers_exactly_like_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, meta) = file(&dir, "app.css", TEXT);
    let c = instant();
    let plain = prepare(&path, &meta, &get()).unwrap();
    let first = serve(&path, &get(), &c);
    assert_eq!(c.usage().0, 1, "the first read fills the cache");
    let hit = serve(&path, &get(), &c);
    assert!(from_memory(&hit));
    assert_eq!(hit.status, 200);
    assert_eq!(hit.headers, plain.headers);
    assert_eq!(first.headers, plain.headers);
    assert_eq!(body(hit), TEXT);

    // Ranges, HEAD and conditionals are answered from the entry too.
    let range = RequestHeaders {
        range: Some("bytes=10-19"),
        ..get()
    };
    let part = serve(&path, &range, &c);
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 10-19/36"));
    assert_eq!(body(part), &TEXT[10..20]);
    let head = RequestHeaders {
        method: "HEAD",
        ..get()
    };
    let h = serve(&path, &head, &c);
    assert_eq!((h.status, h.header("content-length")), (200, Some("36")));
    assert!(matches!(h.body, Body::Empty));
    let etag = plain.header("etag").unwrap().to_owned();
    let inm = RequestHeaders {
        if_none_match: Some(&etag),
        ..get()
    };
    assert_eq!(serve(&path, &inm, &c).status, 304);
    assert_eq!(c.usage().0, 1);
}

#[test]
fn a_file_rewritten_in_place_replaced_or_removed_is_never_served_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.js");
    fs::write(&path, b"version one").unwrap();
    let c = instant();
    assert_eq!(body(serve(&path, &get(), &c)), b"version one");
    assert!(from_memory(&serve(&path, &get(), &c)));

    // Same size, same mtime forced back: only the ctime tells.
    next_tick();
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, b"version two").unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(body(serve(&path, &get(), &c)), b"version two");
    assert_eq!(body(serve(&path, &get(), &c)), b"version two");

    // A deploy's rename over it: a new inode.
    next_tick();
    let staged = dir.path().join("app.js.new");
    fs::write(&staged, b"version 3!!").unwrap();
    fs::rename(&staged, &path).unwrap();
    assert_eq!(body(serve(&path, &get(), &c)), b"version 3!!");

    // Gone: the lookup fails before the cache is asked; the entry is inert.
    fs::remove_file(&path).unwrap();
    assert!(fs::symlink_metadata(&path).is_err());
}

#[test]
fn a_file_changed_just_now_is_served_from_disk_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.txt");
    fs::write(&path, TEXT).unwrap();
    let c = SmallFiles::new(1024 * 1024);
    let resp = serve(&path, &get(), &c);
    assert!(matches!(resp.body, Body::File { .. }));
    assert_eq!(body(resp), TEXT);
    assert_eq!(c.usage(), (0, 0));
}

#[test]
fn large_files_are_streamed_not_kept_and_the_cache_stays_within_its_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![b'x'; MAX_FILE as usize + 1];
    let (big_path, _) = file(&dir, "big.txt", &big);
    let capacity = 3 * (1000 + ENTRY_OVERHEAD);
    let c = SmallFiles::with_settle(capacity, Duration::ZERO);
    assert!(matches!(
        serve(&big_path, &get(), &c).body,
        Body::File { .. }
    ));
    assert_eq!(c.usage().0, 0);

    for i in 0..10 {
        let (p, _) = file(&dir, &format!("f{i}.txt"), &[b'a' + i as u8; 1000]);
        let resp = serve(&p, &get(), &c);
        assert_eq!(body(resp), vec![b'a' + i as u8; 1000]);
        let (entries, used) = c.usage();
        assert!(used <= capacity, "{used} > {capacity}");
        assert!(entries <= 3);
    }
    assert_eq!(c.usage().0, 3, "a full cache still takes new files");

    let none = SmallFiles::new(0);
    let (p, _) = file(&dir, "small.txt", TEXT);
    assert!(matches!(serve(&p, &get(), &none).body, Body::File { .. }));
}
