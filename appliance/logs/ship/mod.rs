//! Shipping log lines to Loki (push API), Elasticsearch (bulk API) or syslog
//! (RFC 5424 over UDP or TCP), besides the local files.
//!
//! Every line written anywhere (children, cron, the access log, applianced's
//! own events) is also pushed to each sink's queue. Pushing never waits: it
//! appends under a short lock. Each queue is bounded in bytes; when a sink
//! is down longer than its buffer lasts, the oldest lines are dropped and
//! counted, so memory stays bounded and no child is ever blocked. One task
//! per sink sends batches; a failed batch stays queued and is retried with a
//! growing delay (1 s to 30 s), so nothing within the bound is lost.
//! A batch is removed only once the sink took it, so a retry after a timeout
//! can deliver lines twice, never zero times.
//!
//! Touches the network addresses it is configured with, nothing else.

use super::Level;
use crate::config::{ShipConfig, ShipKindConfig};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

mod wire;
use wire::{REQUEST_TIMEOUT, send};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// At shutdown, how long the last sends may take.
const LAST_TRY: Duration = Duration::from_secs(2);

/// One sink, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkPlan {
    /// `loki`, `elasticsearch` or `syslog`, with its index in the config
    /// when there are several of a kind (`loki-1`).
    pub name: String,
    pub kind: SinkKind,
    pub buffer_bytes: usize,
    pub batch_lines: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    Loki { url: String },
    Elasticsearch { url: String, index: String },
    Syslog { tcp: bool, address: String },
}

/// Check `[[log.ship]]`. Errors are (key, problem).
pub fn plan(cfg: &[ShipConfig]) -> Result<Vec<SinkPlan>, (String, String)> {
    let mut out: Vec<SinkPlan> = Vec::new();
    for (i, c) in cfg.iter().enumerate() {
        let key = |k: &str| format!("log.ship[{i}].{k}");
        let url = || -> Result<String, (String, String)> {
            let u = c.url.clone().ok_or_else(|| {
                (
                    key("url"),
                    "missing: the sink's http:// or https:// URL".into(),
                )
            })?;
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
                return Err((
                    key("url"),
                    format!("`{u}` is not an http:// or https:// URL"),
                ));
            }
            Ok(u)
        };
        let kind = match c.kind {
            ShipKindConfig::Loki => SinkKind::Loki { url: url()? },
            ShipKindConfig::Elasticsearch => SinkKind::Elasticsearch {
                url: url()?,
                index: c.index.clone().unwrap_or_else(|| "applianced".into()),
            },
            ShipKindConfig::Syslog => {
                let a = c.address.clone().ok_or_else(|| {
                    (
                        key("address"),
                        "missing: udp://HOST:PORT or tcp://HOST:PORT".into(),
                    )
                })?;
                let (tcp, rest) = match a.split_once("://") {
                    Some(("udp", r)) => (false, r),
                    Some(("tcp", r)) => (true, r),
                    _ => {
                        return Err((
                            key("address"),
                            format!("`{a}` is not udp://HOST:PORT or tcp://HOST:PORT"),
                        ));
                    }
                };
                if rest
                    .rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err())
                {
                    return Err((key("address"), format!("`{a}` has no :PORT")));
                }
                SinkKind::Syslog {
                    tcp,
                    address: rest.to_string(),
                }
            }
        };
        let kib = c.buffer_kib.unwrap_or(8192);
        if !(16..=1024 * 1024).contains(&kib) {
            return Err((key("buffer_kib"), format!("{kib} is outside 16..=1048576")));
        }
        let batch_lines = c.batch_lines.unwrap_or(500);
        if !(1..=10_000).contains(&batch_lines) {
            return Err((
                key("batch_lines"),
                format!("{batch_lines} is outside 1..=10000"),
            ));
        }
        let base = match c.kind {
            ShipKindConfig::Loki => "loki",
            ShipKindConfig::Elasticsearch => "elasticsearch",
            ShipKindConfig::Syslog => "syslog",
        };
        let name = if cfg.iter().filter(|o| o.kind == c.kind).count() > 1 {
            format!("{base}-{i}")
        } else {
            base.to_string()
        };
        out.push(SinkPlan {
            name,
            kind,
            buffer_bytes: (kib * 1024) as usize,
            batch_lines,
        });
    }
    Ok(out)
}

/// One line to ship.
#[derive(Debug, Clone)]
pub struct Entry {
    pub instance: String,
    pub unit: String,
    pub level: Option<Level>,
    /// When it was written.
    pub at: SystemTime,
    /// The line as stored: one JSON object.
    pub json: Vec<u8>,
}

impl Entry {
    fn cost(&self) -> usize {
        self.json.len() + self.instance.len() + self.unit.len() + 64
    }
}

#[derive(Default)]
struct Queue {
    /// (sequence number, entry), oldest first.
    entries: VecDeque<(u64, Entry)>,
    bytes: usize,
    next_seq: u64,
}

/// A sink's queue, counters and sender.
pub struct Sink {
    plan: SinkPlan,
    queue: Mutex<Queue>,
    wake: Notify,
    sent: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
}

/// What `/metrics` reads of a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkStats {
    pub name: String,
    pub sent: u64,
    pub dropped: u64,
    pub failures: u64,
    pub buffered_bytes: u64,
    pub buffered_lines: u64,
}

impl Sink {
    fn push(&self, e: Entry) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.bytes += e.cost();
        let seq = q.next_seq;
        q.next_seq += 1;
        q.entries.push_back((seq, e));
        while q.bytes > self.plan.buffer_bytes {
            let Some((_, old)) = q.entries.pop_front() else {
                break;
            };
            q.bytes -= old.cost();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        let ready = q.entries.len() >= self.plan.batch_lines;
        drop(q);
        if ready {
            self.wake.notify_one();
        }
    }

    /// The oldest lines, up to a batch, copied (they stay queued until sent).
    fn peek(&self) -> Vec<(u64, Entry)> {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.entries
            .iter()
            .take(self.plan.batch_lines)
            .cloned()
            .collect()
    }

    /// Remove what was sent (up to `last`; older lines may have been dropped meanwhile).
    fn ack(&self, last: u64) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while q.entries.front().is_some_and(|(s, _)| *s <= last) {
            if let Some((_, e)) = q.entries.pop_front() {
                q.bytes -= e.cost();
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn stats(&self) -> SinkStats {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        SinkStats {
            name: self.plan.name.clone(),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            buffered_bytes: q.bytes as u64,
            buffered_lines: q.entries.len() as u64,
        }
    }

    /// Send batches until `stop`; then one last try within a couple of seconds.
    async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        let mut backoff = Duration::from_secs(1);
        loop {
            let batch = self.peek();
            if batch.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                continue;
            }
            let last = batch.last().map(|(s, _)| *s).unwrap_or_default();
            match send(&client, &self.plan.kind, &batch).await {
                Ok(()) => {
                    self.ack(last);
                    backoff = Duration::from_secs(1);
                    // A partial batch: give more lines a moment to gather.
                    if batch.len() < self.plan.batch_lines {
                        tokio::select! {
                            _ = self.wake.notified() => {}
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                            _ = stop.wait_for(|s| *s) => break,
                        }
                    }
                }
                Err(e) => {
                    let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        // Not through tracing at warn level every time: these
                        // lines would be shipped to the failing sink too.
                        tracing::warn!(sink = %self.plan.name, failures = n, error = %e, "log shipping failed; lines stay queued");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        // Shutting down: what is queued gets one last try, briefly.
        let deadline = tokio::time::Instant::now() + LAST_TRY;
        loop {
            let batch = self.peek();
            let Some(last) = batch.last().map(|(s, _)| *s) else {
                return;
            };
            match tokio::time::timeout_at(deadline, send(&client, &self.plan.kind, &batch)).await {
                Ok(Ok(())) => self.ack(last),
                _ => return,
            }
        }
    }
}

/// Every sink.
pub struct Shipper {
    sinks: Vec<Arc<Sink>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Shipper {
    /// Start one sender task per sink (none: an idle shipper).
    pub fn start(plans: &[SinkPlan]) -> Arc<Shipper> {
        let (stop, _) = tokio::sync::watch::channel(false);
        let sinks: Vec<Arc<Sink>> = plans
            .iter()
            .map(|p| {
                Arc::new(Sink {
                    plan: p.clone(),
                    queue: Mutex::default(),
                    wake: Notify::new(),
                    sent: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                })
            })
            .collect();
        let mut tasks = Vec::new();
        for s in &sinks {
            tracing::info!(sink = %s.plan.name, kind = ?s.plan.kind, "shipping logs");
            tasks.push(tokio::spawn(s.clone().run(stop.subscribe())));
        }
        Arc::new(Shipper {
            sinks,
            stop,
            tasks: Mutex::new(tasks),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Queue a line for every sink; never waits.
    pub fn push(&self, e: Entry) {
        if let Some((last, rest)) = self.sinks.split_last() {
            for s in rest {
                s.push(e.clone());
            }
            last.push(e);
        }
    }

    pub fn stats(&self) -> Vec<SinkStats> {
        self.sinks.iter().map(|s| s.stats()).collect()
    }

    /// Stop the senders after one last try of what is queued (at most
    /// [`LAST_TRY`] plus a send in flight); what a sink still refuses then
    /// is lost with the process.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let all = futures_util::future::join_all(tasks);
        let _ = tokio::time::timeout(LAST_TRY + Duration::from_secs(1), all).await;
    }
}

/// `"status":NNN` of an access line, for its level.
pub fn access_level(json: &[u8]) -> Option<Level> {
    let rest = &json[memchr::memmem::find(json, b"\"status\":")? + 9..];
    let digits = &rest[..rest.iter().take_while(|b| b.is_ascii_digit()).count()];
    let status = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(super::level::of_status(status))
}

/// A line for the tests: `demo`, units alternating php-fpm and access.
#[cfg(test)]
fn test_entry(i: usize) -> Entry {
    Entry {
        instance: "demo".into(),
        unit: if i % 2 == 0 { "php-fpm" } else { "access" }.into(),
        level: Some(Level::Warn),
        at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_720_000),
        json: format!("{{\"msg\":\"line {i}\"}}").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_entry as entry;

    fn sink(buffer_bytes: usize) -> Sink {
        Sink {
            plan: SinkPlan {
                name: "loki".into(),
                kind: SinkKind::Loki {
                    url: "http://127.0.0.1:1/".into(),
                },
                buffer_bytes,
                batch_lines: 3,
            },
            queue: Mutex::default(),
            wake: Notify::new(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_lines_and_counts_them() {
        let s = sink(entry(0).cost() * 4);
        for i in 0..10 {
            s.push(entry(i));
        }
        let st = s.stats();
        assert_eq!(st.buffered_lines, 4);
        assert_eq!(st.dropped, 6);
        assert!(st.buffered_bytes as usize <= entry(0).cost() * 4);
        let first = s.peek();
        assert_eq!(first.len(), 3);
        assert_eq!(first[0].1.json, entry(6).json);
    }

    #[test]
    fn only_what_was_sent_is_removed_even_when_older_lines_were_dropped_meanwhile() {
        let s = sink(1 << 20);
        for i in 0..5 {
            s.push(entry(i));
        }
        let batch = s.peek();
        let last = batch.last().unwrap().0;
        for i in 5..7 {
            s.push(entry(i));
        }
        s.ack(last);
        let st = s.stats();
        assert_eq!((st.sent, st.buffered_lines), (3, 4));
        assert_eq!(s.peek()[0].1.json, entry(3).json);
    }

    #[test]
    fn bad_sinks_are_refused_naming_their_key() {
        let cfg = |kind, url: Option<&str>, address: Option<&str>| ShipConfig {
            kind,
            url: url.map(str::to_string),
            index: None,
            address: address.map(str::to_string),
            buffer_kib: None,
            batch_lines: None,
        };
        let err = plan(&[cfg(ShipKindConfig::Loki, None, None)]).unwrap_err();
        assert_eq!(err.0, "log.ship[0].url");
        let err = plan(&[
            cfg(
                ShipKindConfig::Loki,
                Some("http://l:3100/loki/api/v1/push"),
                None,
            ),
            cfg(ShipKindConfig::Syslog, None, Some("10.0.0.1:514")),
        ])
        .unwrap_err();
        assert_eq!(err.0, "log.ship[1].address");
        let ok = plan(&[cfg(
            ShipKindConfig::Syslog,
            None,
            Some("tcp://10.0.0.1:514"),
        )])
        .unwrap();
        assert_eq!(
            ok[0].kind,
            SinkKind::Syslog {
                tcp: true,
                address: "10.0.0.1:514".into()
            }
        );
        assert_eq!(
            access_level(b"{\"status\":503,\"x\":1}"),
            Some(Level::Error)
        );
    }
}
