//! The access log: one JSON line per request in `DATA/logs/INSTANCE/access.log`
//! (requests for no known host go to `DATA/logs/access.log`), rotated like every
//! other log.
//!
//! Each line is a [`LogLine`] of the pseudo-unit `access` (stream `access`, a
//! short `msg`, the request's fields beside it), so the log system reads it like
//! any unit's: `applianced logs demo/access`, `-f` to follow.
//!
//! Requests never wait for the disk, nor wake anyone: a record is appended to
//! its file's in-memory batch under a short lock, and one writer thread writes
//! the batches every [`FLUSH_EVERY`] (or sooner once a batch is large). If the
//! disk cannot keep up, records are dropped and counted, never queued without
//! bound. (A channel send per request woke the writer per request: +13 µs per
//! request in `bench/proxy`.) It touches only those files.
//!
//! Sites come and go while applianced runs, so each site's file is a
//! [`SiteSink`] opened ([`AccessLog::open_site`]) and closed
//! ([`AccessLog::close_site`]) at runtime. A request holds its site, hence
//! its sink, until it is logged; a closed sink's file is written and closed
//! by the writer once no request holds it any more, so the lines of requests
//! still in flight at removal land in the right file. Requests never touch
//! the registry of sinks (only the writer and open/close do).

use crate::logs::{LogHub, LogLine, RotatingFile};
use serde::Serialize;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often the writer thread writes the batches out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A batch this large wakes the writer early.
const WAKE_AT: usize = 256 * 1024;
/// A batch this large drops further records until written (a stuck disk).
const DROP_AT: usize = 16 * 1024 * 1024;

/// One request, as written: a [`LogLine`] with its fields inline.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339 UTC, milliseconds.
    pub ts: String,
    pub instance: &'a str,
    /// Always `access`.
    pub unit: &'static str,
    /// Always `access`.
    pub stream: &'static str,
    /// `METHOD PATH STATUS`, for people reading `applianced logs`.
    pub msg: String,
    /// From the status: 5xx error, 4xx warn, else info.
    pub level: crate::logs::Level,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: usize,
    /// From the request head parsed to the response finished, milliseconds.
    pub total_ms: f64,
    /// Time php-fpm took (connect to end of response), when PHP served it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    pub remote: String,
    pub proto: &'a str,
    pub tls: bool,
    /// What answered: `static`, `php`, `redirect`, or `front` (an error page).
    pub handler: &'a str,
}

/// The writer side handed to request handlers.
#[derive(Clone)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    hub: Option<Arc<LogHub>>,
}

/// One file's batch of records, written out by the writer thread. A request
/// records into its site's sink ([`AccessLog::record`]).
#[derive(Debug)]
pub struct SiteSink {
    path: PathBuf,
    batch: Mutex<Vec<u8>>,
    /// Set by [`AccessLog::close_site`]: the file is closed once no one but
    /// the registry holds the sink.
    closing: AtomicBool,
}

impl SiteSink {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record; the batch size after it, or `None` when full.
    fn append(&self, rec: &AccessRecord<'_>) -> Option<usize> {
        let mut batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        if batch.len() >= DROP_AT {
            return None;
        }
        if serde_json::to_writer(&mut *batch, rec).is_ok() {
            batch.push(b'\n');
        }
        Some(batch.len())
    }
}

/// An open sink and its file (owned by the registry).
struct Open {
    sink: Arc<SiteSink>,
    file: RotatingFile,
}

/// The registry of open files, the fallback sink, and the writer thread.
struct Shared {
    /// Requests that matched no site; never closed.
    fallback: Arc<SiteSink>,
    /// Every open sink, the fallback included. Locked by the writer and by
    /// open/close, never by a request.
    open: Mutex<Vec<Open>>,
    rotation: crate::logs::Rotation,
    /// Lines are shipped from here too (off the request path).
    hub: Arc<LogHub>,
    dropped: AtomicU64,
    writer: std::thread::Thread,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

impl AccessLog {
    /// A log that writes nothing (`http.access_log = false`).
    pub fn disabled() -> Self {
        Self {
            shared: None,
            hub: None,
        }
    }

    /// Start the writer thread with the `fallback` file, which takes requests
    /// that matched no site. Sites' files are added by [`open_site`](Self::open_site).
    pub fn start(fallback: PathBuf, hub: Arc<LogHub>) -> std::io::Result<Self> {
        let rotation = hub.rotation();
        let file = RotatingFile::open(&fallback, rotation)?;
        let sink = Arc::new(SiteSink::new(fallback));
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Shared>>();
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                if let Ok(shared) = rx.recv() {
                    loop {
                        std::thread::park_timeout(FLUSH_EVERY);
                        shared.write_out();
                    }
                }
            })?;
        let shared = Arc::new(Shared {
            fallback: sink.clone(),
            open: Mutex::new(vec![Open { sink, file }]),
            rotation,
            hub: hub.clone(),
            dropped: AtomicU64::new(0),
            writer: handle.thread().clone(),
        });
        let _ = tx.send(shared.clone());
        Ok(Self {
            shared: Some(shared),
            hub: Some(hub),
        })
    }

    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Open (creating it if needed) a site's file and register it with the
    /// writer. `None` when the log is disabled. A file still being closed
    /// (its site was removed, some of its requests are in flight) is taken
    /// back rather than opened twice.
    pub fn open_site(&self, path: &Path) -> std::io::Result<Option<Arc<SiteSink>>> {
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        let mut open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = open.iter().find(|o| o.sink.path == path) {
            o.sink.closing.store(false, Ordering::Release);
            return Ok(Some(o.sink.clone()));
        }
        let file = RotatingFile::open(path, shared.rotation)?;
        let sink = Arc::new(SiteSink::new(path.to_path_buf()));
        open.push(Open {
            sink: sink.clone(),
            file,
        });
        Ok(Some(sink))
    }

    /// Write out what `sink` holds now and close its file: at once when the
    /// caller held the last reference besides the registry, else by the
    /// writer once the requests still holding it are done (their records are
    /// written first).
    pub fn close_site(&self, sink: Arc<SiteSink>) {
        let Some(shared) = &self.shared else { return };
        if Arc::ptr_eq(&sink, &shared.fallback) {
            return;
        }
        sink.closing.store(true, Ordering::Release);
        let mut open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
        drop(sink);
        shared.write_some(&mut open, true);
    }

    /// Files open right now, the fallback included (tests, status).
    pub fn open_files(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| {
            s.open.lock().unwrap_or_else(|p| p.into_inner()).len()
        })
    }

    /// Record one request into its site's sink (`None`: the fallback file).
    pub fn record(&self, site: Option<&SiteSink>, rec: &AccessRecord<'_>) {
        let Some(shared) = &self.shared else { return };
        if let Some(hub) = self.hub.as_ref().filter(|h| h.has_followers()) {
            if let Ok(line) = serde_json::to_vec(rec) {
                if let Ok(parsed) = serde_json::from_slice::<LogLine>(&line) {
                    hub.publish(Arc::new(parsed));
                }
            }
        }
        match site.unwrap_or(&shared.fallback).append(rec) {
            None => {
                let n = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, "access log cannot keep up; records dropped");
                }
            }
            Some(size) if size >= WAKE_AT => shared.writer.unpark(),
            Some(_) => {}
        }
    }

    /// Write everything recorded so far (at shutdown).
    pub fn flush(&self) {
        if let Some(shared) = &self.shared {
            shared.write_out();
        }
    }
}

impl SiteSink {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            batch: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
        }
    }
}

impl Shared {
    fn write_out(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        self.write_some(&mut open, false);
    }

    /// Swap each batch out and append it to its file (only the closing ones
    /// when `closing_only`), then drop the closed sinks no one holds.
    fn write_some(&self, open: &mut Vec<Open>, closing_only: bool) {
        open.retain_mut(|o| {
            let closing = o.sink.closing.load(Ordering::Acquire);
            if closing_only && !closing {
                return true;
            }
            // Checked before writing: held by the registry alone, nothing
            // can append to it any more, so this write is its last.
            let last = closing && Arc::strong_count(&o.sink) == 1;
            let lines = {
                let mut b = o.sink.batch.lock().unwrap_or_else(|p| p.into_inner());
                std::mem::take(&mut *b)
            };
            if !lines.is_empty() {
                let mut result = Ok(());
                // DATA/logs/INSTANCE/access.log; DATA/logs/access.log: no instance.
                let instance = o
                    .sink
                    .path
                    .parent()
                    .filter(|d| d.file_name().is_some_and(|n| n != "logs"))
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    result = result.and_then(|_| o.file.write_line(line));
                    self.hub.ship_with(
                        &instance,
                        crate::logs::ACCESS_UNIT,
                        || crate::logs::ship::access_level(line),
                        line,
                    );
                }
                if let Err(e) = result.and_then(|_| o.file.flush()) {
                    tracing::warn!(error = %e, path = %o.sink.path.display(), "cannot write the access log");
                }
            }
            !last
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(host: &str) -> AccessRecord<'_> {
        AccessRecord {
            ts: "2026-01-01T00:00:00.000Z".into(),
            instance: "t",
            unit: "access",
            stream: "access",
            msg: "GET / 200".into(),
            level: crate::logs::Level::Info,
            host,
            method: "GET",
            path: "/",
            status: 200,
            bytes: 0,
            total_ms: 0.1,
            upstream_ms: None,
            remote: "127.0.0.1:1".into(),
            proto: "HTTP/1.1",
            tls: false,
            handler: "static",
        }
    }

    fn log(dir: &Path) -> AccessLog {
        AccessLog::start(
            dir.join("access.log"),
            LogHub::new(crate::logs::Rotation::by_size(1 << 20, 2)),
        )
        .unwrap()
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn sites_open_and_close_at_runtime_with_their_lines_written() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let path = dir.path().join("one/access.log");
        let sink = log.open_site(&path).unwrap().unwrap();
        assert_eq!(log.open_files(), 2);
        log.record(Some(&sink), &rec("one.test"));
        log.record(None, &rec("nobody.test"));
        // Not held elsewhere: written out and closed at once.
        log.close_site(sink);
        assert_eq!(log.open_files(), 1);
        assert!(read(&path).contains("one.test"));
        assert!(!read(&path).contains("nobody.test"));
        log.flush();
        assert!(read(&dir.path().join("access.log")).contains("nobody.test"));
    }

    #[test]
    fn a_closed_sink_still_held_by_a_request_is_closed_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let path = dir.path().join("two/access.log");
        let sink = log.open_site(&path).unwrap().unwrap();
        let in_flight = sink.clone();
        log.record(Some(&sink), &rec("early.test"));
        log.close_site(sink);
        assert!(read(&path).contains("early.test"));
        assert_eq!(log.open_files(), 2, "closed under a request");
        // The request ends and is logged, then lets go of its site.
        log.record(Some(&in_flight), &rec("late.test"));
        drop(in_flight);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while log.open_files() > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(log.open_files(), 1);
        assert!(read(&path).contains("late.test"));
    }

    #[test]
    fn reopening_a_closing_file_takes_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let path = dir.path().join("three/access.log");
        let sink = log.open_site(&path).unwrap().unwrap();
        let in_flight = sink.clone();
        log.close_site(sink);
        let again = log.open_site(&path).unwrap().unwrap();
        assert!(Arc::ptr_eq(&again, &in_flight));
        drop(in_flight);
        std::thread::sleep(FLUSH_EVERY * 3);
        assert_eq!(log.open_files(), 2, "reopened, so not closed");
        assert!(AccessLog::disabled().open_site(&path).unwrap().is_none());
    }
}
