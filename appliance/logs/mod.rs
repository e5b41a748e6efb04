//! Log capture: children's stdout/stderr, line by line, into per-unit JSON-lines
//! files with size-based rotation, plus a live feed for `applianced logs -f`.
//!
//! A child can never be blocked by its output: each pipe is always drained by
//! its own task; lines longer than [`MAX_LINE`] are split; followers that fall
//! behind lose lines (broadcast lag) rather than slowing anyone down.
//! Touches only `DATA/logs/` and applianced's own log file.

pub mod events;
pub mod level;
pub mod query;
pub mod ship;

pub use level::Level;
pub use query::LogQuery;

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

/// Longest line kept whole; longer output is split into several lines.
pub const MAX_LINE: usize = 16 * 1024;

/// One captured line, as stored (one JSON object per line) and as streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 UTC with milliseconds.
    pub ts: String,
    pub instance: String,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
    /// `stdout`, `stderr`, `applianced` (supervisor notes about the unit) or
    /// `access` (the front end's request log).
    pub stream: String,
    pub msg: String,
    /// As the line states it (see [`level`]); absent when it states none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// Structured fields beside the message (the access log's host, status,
    /// timings, ...), stored flat in the same JSON object.
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The pseudo-unit name of an instance's access log: `applianced logs demo/access`.
pub const ACCESS_UNIT: &str = "access";

/// The pseudo-unit name of an instance's cron run output: `applianced logs demo/cron`.
pub const CRON_UNIT: &str = "cron";

/// Log names that are not units of the plan but have a log per instance.
pub fn is_pseudo_unit(name: &str) -> bool {
    name == ACCESS_UNIT || name == CRON_UNIT
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// When log files rotate and how long rotated files stay (`[log]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the live file would pass this size.
    pub max_bytes: u64,
    /// Rotated files kept beside the live one (`.1` newest).
    pub keep: u32,
    /// Rotate once the live file's first line is this old (`None`: by size only).
    pub max_age: Option<Duration>,
    /// Rotated files older than this (by modification time) are deleted,
    /// even when fewer than `keep` (`None`: by count only).
    pub retain: Option<Duration>,
}

impl Rotation {
    /// By size only, `keep` files (tests, the embedded defaults' shape).
    pub fn by_size(max_bytes: u64, keep: u32) -> Rotation {
        Rotation {
            max_bytes,
            keep,
            max_age: None,
            retain: None,
        }
    }
}

/// An append-only file that rotates to `.1`, `.2`, ... by size and age.
pub struct RotatingFile {
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
    policy: Rotation,
    /// When the live file's first line was written (now, for a new file).
    started: SystemTime,
}

impl RotatingFile {
    pub fn open(path: &Path, policy: Rotation) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let size = file.metadata()?.len();
        let started = if size > 0 {
            first_line_time(path).unwrap_or_else(SystemTime::now)
        } else {
            SystemTime::now()
        };
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file: BufWriter::with_capacity(64 * 1024, file),
            size,
            policy,
            started,
        })
    }

    /// Push buffered lines to the file. Callers flush after each batch of lines.
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    /// Append `line` (a newline is added), rotating first if it would overflow.
    /// Buffered: call [`RotatingFile::flush`] after a batch.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let full = self.size + line.len() as u64 + 1 > self.policy.max_bytes;
        let old = || {
            self.policy
                .max_age
                .is_some_and(|age| self.started.elapsed().is_ok_and(|since| since >= age))
        };
        if self.size > 0 && (full || old()) {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.file.write_all(b"\n")?;
        self.size += line.len() as u64 + 1;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        for i in (1..self.policy.keep).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        self.file = BufWriter::with_capacity(64 * 1024, file);
        self.size = 0;
        self.started = SystemTime::now();
        if let Some(retain) = self.policy.retain {
            for i in 1..=self.policy.keep {
                let f = rotated(&self.path, i);
                let stale = std::fs::metadata(&f)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > retain));
                if stale {
                    std::fs::remove_file(&f)?;
                }
            }
        }
        Ok(())
    }
}

/// The time of a log file's first line (its `ts`, or tracing's `timestamp`).
fn first_line_time(path: &Path) -> Option<SystemTime> {
    use std::io::BufRead;
    let mut first = String::new();
    io::BufReader::new(File::open(path).ok()?)
        .read_line(&mut first)
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&first).ok()?;
    let ts = v.get("ts").or_else(|| v.get("timestamp"))?.as_str()?;
    humantime::parse_rfc3339_weak(ts.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(ts))
        .ok()
}

/// `unit.log` -> `unit.log.N`
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// All log files of the appliance, and the live feed.
pub struct LogHub {
    files: Mutex<HashMap<PathBuf, Arc<Mutex<RotatingFile>>>>,
    feed: broadcast::Sender<Arc<LogLine>>,
    rotation: Rotation,
    /// Where lines are shipped, once the daemon started it.
    shipper: std::sync::OnceLock<Arc<ship::Shipper>>,
}

impl LogHub {
    pub fn new(rotation: Rotation) -> Arc<LogHub> {
        let (feed, _) = broadcast::channel(4096);
        Arc::new(LogHub {
            files: Mutex::default(),
            feed,
            rotation,
            shipper: std::sync::OnceLock::new(),
        })
    }

    /// Ship every line from now on (set once, by the daemon).
    pub fn set_shipper(&self, shipper: Arc<ship::Shipper>) {
        if !shipper.is_empty() {
            let _ = self.shipper.set(shipper);
        }
    }

    /// The sinks' counters, for `/metrics`.
    pub fn ship_stats(&self) -> Vec<ship::SinkStats> {
        self.shipper.get().map(|s| s.stats()).unwrap_or_default()
    }

    /// Queue one stored line (its JSON) for the sinks, if any; never waits.
    pub fn ship(&self, instance: &str, unit: &str, level: Option<Level>, json: &[u8]) {
        self.ship_with(instance, unit, || level, json);
    }

    /// [`ship`](Self::ship), with a level worked out only when some sink
    /// wants the line (the access log's writer parses it from the JSON).
    pub fn ship_with(
        &self,
        instance: &str,
        unit: &str,
        level: impl FnOnce() -> Option<Level>,
        json: &[u8],
    ) {
        if let Some(s) = self.shipper.get() {
            let level = level();
            s.push(ship::Entry {
                instance: instance.to_string(),
                unit: unit.to_string(),
                level,
                at: SystemTime::now(),
                json: json.to_vec(),
            });
        }
    }

    /// How every file of the hub rotates.
    pub fn rotation(&self) -> Rotation {
        self.rotation
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.feed.subscribe()
    }

    /// Whether anyone follows the live feed (so building lines for it is worth it).
    pub fn has_followers(&self) -> bool {
        self.feed.receiver_count() > 0
    }

    /// Send a line to `logs -f` followers only (its writer stores it itself).
    pub fn publish(&self, line: Arc<LogLine>) {
        if self.feed.receiver_count() > 0 {
            let _ = self.feed.send(line);
        }
    }

    /// The writer for one unit's file (shared by its replicas).
    pub fn unit_sink(
        self: &Arc<Self>,
        path: &Path,
        instance: &str,
        unit: &str,
    ) -> io::Result<UnitLog> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let file = match files.get(path) {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(Mutex::new(RotatingFile::open(path, self.rotation)?));
                files.insert(path.to_path_buf(), f.clone());
                f
            }
        };
        Ok(UnitLog {
            hub: self.clone(),
            file,
            instance: instance.into(),
            unit: unit.into(),
        })
    }
}

/// Where one unit's lines go.
#[derive(Clone)]
pub struct UnitLog {
    hub: Arc<LogHub>,
    file: Arc<Mutex<RotatingFile>>,
    instance: String,
    unit: String,
}

impl UnitLog {
    /// Write one line now (supervisor notes, pre-start output).
    pub fn write(&self, replica: Option<u32>, stream: &str, msg: String) {
        self.write_batch(replica, stream, vec![msg]);
    }

    /// Write several lines under one lock and one flush.
    pub fn write_batch(&self, replica: Option<u32>, stream: &str, msgs: Vec<String>) {
        self.write_with_fields(replica, stream, msgs, &serde_json::Map::new());
    }

    /// Write several lines, each carrying `fields` beside its message (the
    /// cron log's `entry` and `run`).
    pub fn write_with_fields(
        &self,
        replica: Option<u32>,
        stream: &str,
        msgs: Vec<String>,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) {
        let ts = now_rfc3339();
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut result = Ok(());
        for msg in msgs {
            let line = LogLine {
                ts: ts.clone(),
                instance: self.instance.clone(),
                unit: self.unit.clone(),
                replica,
                stream: stream.into(),
                level: level::of_message(&msg),
                msg,
                fields: fields.clone(),
            };
            let json = serde_json::to_vec(&line).expect("log lines always serialize");
            if result.is_ok() {
                result = file.write_line(&json);
            }
            self.hub.ship(&self.instance, &self.unit, line.level, &json);
            // Followers that lag lose lines; this never waits.
            if self.hub.feed.receiver_count() > 0 {
                let _ = self.hub.feed.send(Arc::new(line));
            }
        }
        if let Err(e) = result.and_then(|_| file.flush()) {
            tracing::warn!(instance = %self.instance, unit = %self.unit, error = %e, "cannot write unit log");
        }
    }

    /// Drain `fd` until EOF, writing one log line per output line.
    pub fn capture(
        &self,
        fd: OwnedFd,
        replica: Option<u32>,
        stream: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
                return;
            };
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match rx.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let lines = split_lines(&mut buf);
                if !lines.is_empty() {
                    log.write_batch(replica, stream, lines);
                }
            }
            if !buf.is_empty() {
                log.write(replica, stream, String::from_utf8_lossy(&buf).into_owned());
            }
        })
    }
}

/// Take every complete line (and over-long fragments) out of `buf`, leaving
/// an incomplete tail. One pass and one drain: linear in the buffer size.
pub(crate) fn split_lines(buf: &mut Vec<u8>) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let rest = &buf[start..];
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) if i <= MAX_LINE => {
                let mut line = &rest[..i];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                out.push(String::from_utf8_lossy(line).into_owned());
                start += i + 1;
            }
            _ if rest.len() > MAX_LINE => {
                out.push(String::from_utf8_lossy(&rest[..MAX_LINE]).into_owned());
                start += MAX_LINE;
            }
            _ => break,
        }
    }
    buf.drain(..start);
    out
}

/// The last `n` lines of a unit's log, oldest first, across rotated files.
pub fn tail(path: &Path, n: usize, keep: u32) -> Vec<LogLine> {
    query::tail_matching(path, n, keep, &LogQuery::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_split_and_partial_lines_wait() {
        let mut buf = b"one\r\ntwo\npart".to_vec();
        assert_eq!(split_lines(&mut buf), ["one", "two"]);
        assert_eq!(buf, b"part");
        let mut big = vec![b'x'; MAX_LINE + 10];
        let out = split_lines(&mut big);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(big.len(), 10);
    }

    #[test]
    fn rotation_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.log");
        let mut f = RotatingFile::open(&p, Rotation::by_size(100, 2)).unwrap();
        for i in 0..50 {
            f.write_line(format!("line number {i:04}").as_bytes())
                .unwrap();
        }
        assert!(p.exists());
        assert!(rotated(&p, 1).exists());
        assert!(rotated(&p, 2).exists());
        assert!(!rotated(&p, 3).exists());
        for file in [p.clone(), rotated(&p, 1), rotated(&p, 2)] {
            assert!(std::fs::metadata(&file).unwrap().len() <= 100);
        }
    }

    #[test]
    fn a_file_whose_first_line_is_too_old_rotates_and_stale_rotations_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.log");
        // A file started long ago (its first line says so).
        std::fs::write(
            &p,
            "{\"ts\":\"2026-01-01T00:00:00.000Z\",\"msg\":\"old\"}\n",
        )
        .unwrap();
        // ...and an old rotated file, last written 40 days ago.
        std::fs::write(rotated(&p, 1), "ancient\n").unwrap();
        let forty_days = std::time::Duration::from_secs(40 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(rotated(&p, 1))
            .unwrap()
            .set_modified(SystemTime::now() - forty_days)
            .unwrap();
        let policy = Rotation {
            max_bytes: 1 << 20,
            keep: 3,
            max_age: Some(std::time::Duration::from_secs(3600)),
            retain: Some(std::time::Duration::from_secs(30 * 86_400)),
        };
        let mut f = RotatingFile::open(&p, policy).unwrap();
        f.write_line(b"{\"msg\":\"new\"}").unwrap();
        f.flush().unwrap();
        // The old live file became .1; the 40-day-old one (now .2) is gone.
        assert!(
            std::fs::read_to_string(rotated(&p, 1))
                .unwrap()
                .contains("old")
        );
        assert!(!rotated(&p, 2).exists());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"msg\":\"new\"}\n");
        // A fresh file does not rotate on the next line.
        f.write_line(b"{\"msg\":\"newer\"}").unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 2);
    }

    #[tokio::test]
    async fn tail_reads_across_rotated_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let hub = LogHub::new(Rotation::by_size(400, 3));
        let p = dir.path().join("u.log");
        let sink = hub.unit_sink(&p, "i", "u").unwrap();
        for i in 0..20 {
            sink.write(None, "stdout", format!("m{i}"));
        }
        let last: Vec<String> = tail(&p, 5, 3).into_iter().map(|l| l.msg).collect();
        assert_eq!(last, ["m15", "m16", "m17", "m18", "m19"]);
    }
}
