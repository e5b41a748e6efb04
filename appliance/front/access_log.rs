//! The access log: one JSON line per request in `DATA/logs/INSTANCE/access.log`
//! (requests for no known host go to `DATA/logs/access.log`), rotated like every
//! other log.
//!
//! Each line is a [`LogLine`] of the pseudo-unit `access` (stream `access`, a
//! short `msg`, the request's fields beside it), so the log system reads it like
//! any unit's: `applianced logs demo/access`, `-f` to follow.
//!
//! Requests never wait for the disk: records go through a bounded channel to
//! one writer thread that flushes whenever the channel runs dry. If the disk
//! cannot keep up, records are dropped and counted, never queued without bound.
//! It touches only those files.

use crate::logs::{ACCESS_UNIT, LogHub, LogLine, RotatingFile};
use serde::Serialize;

/// `unit` and `stream` of every access line.
pub const ACCESS: &str = ACCESS_UNIT;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

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
    tx: Option<SyncSender<(Option<usize>, Vec<u8>)>>,
    dropped: Arc<AtomicU64>,
    hub: Option<Arc<LogHub>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("enabled", &self.tx.is_some())
            .finish()
    }
}

impl AccessLog {
    /// A log that writes nothing (`http.access_log = false`).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            dropped: Arc::default(),
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
        for p in &sites {
            files.push(RotatingFile::open(p, max_bytes, keep)?);
        }
        let fallback = RotatingFile::open(&fallback, max_bytes, keep)?;
        let (tx, rx) = sync_channel(16 * 1024);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, files, fallback))?;
        Ok(Self {
            tx: Some(tx),
            dropped: Arc::default(),
            hub: Some(hub),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn record(&self, site: Option<usize>, rec: &AccessRecord<'_>) {
        let Some(tx) = &self.tx else { return };
        let Ok(line) = serde_json::to_vec(rec) else {
            return;
        };
        if let Some(hub) = self.hub.as_ref().filter(|h| h.has_followers()) {
            if let Ok(parsed) = serde_json::from_slice::<LogLine>(&line) {
                hub.publish(Arc::new(parsed));
            }
        }
        match tx.try_send((site, line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, "access log cannot keep up; records dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn writer(
    rx: Receiver<(Option<usize>, Vec<u8>)>,
    mut files: Vec<RotatingFile>,
    mut fallback: RotatingFile,
) {
    let mut dirty = vec![false; files.len() + 1];
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some((site, line)) = next {
            let idx = site.filter(|s| *s < files.len());
            let file = match idx {
                Some(i) => &mut files[i],
                None => &mut fallback,
            };
            if let Err(e) = file.write_line(&line) {
                tracing::warn!(error = %e, "cannot write the access log");
            }
            dirty[idx.unwrap_or(files.len())] = true;
            next = rx.try_recv().ok();
        }
        for (i, d) in dirty.iter_mut().enumerate() {
            if std::mem::take(d) {
                let f = files.get_mut(i).unwrap_or(&mut fallback);
                let _ = f.flush();
            }
        }
    }
}
