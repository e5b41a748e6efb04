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

use crate::logs::{LogHub, LogLine, RotatingFile};
use serde::Serialize;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// One batch per file (the sites', then the fallback), and the writer thread.
struct Shared {
    batches: Vec<Mutex<Vec<u8>>>,
    files: Mutex<Vec<RotatingFile>>,
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

    /// Start the writer thread. `sites[i]` is site i's file; `fallback` takes
    /// requests that matched no site.
    pub fn start(
        sites: Vec<PathBuf>,
        fallback: PathBuf,
        max_bytes: u64,
        keep: u32,
        hub: Arc<LogHub>,
    ) -> std::io::Result<Self> {
        let mut files = Vec::new();
        for p in sites.iter().chain([&fallback]) {
            files.push(RotatingFile::open(p, max_bytes, keep)?);
        }
        let batches = files.iter().map(|_| Mutex::new(Vec::new())).collect();
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
            batches,
            files: Mutex::new(files),
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

    pub fn record(&self, site: Option<usize>, rec: &AccessRecord<'_>) {
        let Some(shared) = &self.shared else { return };
        if let Some(hub) = self.hub.as_ref().filter(|h| h.has_followers()) {
            if let Ok(line) = serde_json::to_vec(rec) {
                if let Ok(parsed) = serde_json::from_slice::<LogLine>(&line) {
                    hub.publish(Arc::new(parsed));
                }
            }
        }
        let fallback = shared.batches.len() - 1;
        let idx = site.filter(|s| *s < fallback).unwrap_or(fallback);
        let size = {
            let mut batch = shared.batches[idx]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if batch.len() >= DROP_AT {
                usize::MAX
            } else {
                if serde_json::to_writer(&mut *batch, rec).is_ok() {
                    batch.push(b'\n');
                }
                batch.len()
            }
        };
        if size == usize::MAX {
            let n = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "access log cannot keep up; records dropped");
            }
        } else if size >= WAKE_AT {
            shared.writer.unpark();
        }
    }

    /// Write everything recorded so far (at shutdown).
    pub fn flush(&self) {
        if let Some(shared) = &self.shared {
            shared.write_out();
        }
    }
}

impl Shared {
    /// Swap each batch out and append it to its file.
    fn write_out(&self) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for (batch, file) in self.batches.iter().zip(files.iter_mut()) {
            let lines = {
                let mut b = batch.lock().unwrap_or_else(|p| p.into_inner());
                if b.is_empty() {
                    continue;
                }
                std::mem::take(&mut *b)
            };
            let mut result = Ok(());
            for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                result = result.and_then(|_| file.write_line(line));
            }
            if let Err(e) = result.and_then(|_| file.flush()) {
                tracing::warn!(error = %e, "cannot write the access log");
            }
        }
    }
}
