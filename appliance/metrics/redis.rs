//! Redis's essentials from `INFO`, under redis_exporter's names (`redis_up`,
//! `redis_connected_clients`, `redis_memory_used_bytes`,
//! `redis_commands_processed_total`, `redis_db_keys{db}`, ...), and the
//! Laravel queues' depth (`applianced_queue_depth{queue,state}`) from the
//! instance's Redis database 0, where the shipped config keeps them.
//!
//! A queue `Q` is Laravel's list `queues:Q` (ready jobs) with the sorted
//! sets `queues:Q:delayed` and `queues:Q:reserved`; keys are found with
//! `SCAN` (never `KEYS`, which blocks the server), at most [`MAX_KEYS`].
//!
//! Touches only the instance's socket, with its password; read-only commands.

use super::encode::{Families, labels};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Queue keys looked at, at most (a runaway app must not make scrapes slow).
const MAX_KEYS: usize = 200;
/// A reply larger than this is refused (INFO is a few KiB).
const MAX_REPLY: usize = 4 << 20;

/// What one scrape read.
#[derive(Debug, Default)]
pub struct Reading {
    /// `INFO` fields, `db0` lines included.
    pub info: BTreeMap<String, String>,
    /// (queue, state, jobs).
    pub queues: Vec<(String, &'static str, u64)>,
}

/// One RESP reply.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Text(Vec<u8>),
    Int(i64),
    Nil,
    Array(Vec<Reply>),
    Error(String),
}

struct Client {
    s: UnixStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Client {
    async fn call(&mut self, parts: &[&str]) -> Result<Reply, String> {
        let req = crate::readiness::resp_command(parts);
        let io = async {
            self.s.write_all(&req).await.map_err(|e| e.to_string())?;
            loop {
                if let Some((reply, used)) = parse(&self.buf)? {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                if self.buf.len() > MAX_REPLY {
                    return Err("reply too large".to_string());
                }
                let mut chunk = [0u8; 16 * 1024];
                let n = self.s.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("connection closed".to_string());
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        match tokio::time::timeout(self.timeout, io).await {
            Ok(Ok(Reply::Error(e))) => Err(format!("{}: {e}", parts[0])),
            Ok(r) => r,
            Err(_) => Err(format!("{} took longer than {:?}", parts[0], self.timeout)),
        }
    }
}

/// Read `INFO` and the queues over `socket`.
pub async fn read(
    socket: &Path,
    password: Option<&str>,
    timeout: Duration,
) -> Result<Reading, String> {
    let s = tokio::time::timeout(timeout, UnixStream::connect(socket))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut c = Client {
        s,
        buf: Vec::new(),
        timeout,
    };
    if let Some(p) = password {
        c.call(&["AUTH", p]).await?;
    }
    let mut out = Reading::default();
    if let Reply::Text(t) = c.call(&["INFO"]).await? {
        out.info = parse_info(&String::from_utf8_lossy(&t));
    }
    out.queues = queues(&mut c).await?;
    Ok(out)
}

async fn queues(c: &mut Client) -> Result<Vec<(String, &'static str, u64)>, String> {
    c.call(&["SELECT", "0"]).await?;
    let mut keys = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let Reply::Array(r) = c
            .call(&["SCAN", &cursor, "MATCH", "*queues:*", "COUNT", "1000"])
            .await?
        else {
            return Err("SCAN: unexpected reply".into());
        };
        match r.as_slice() {
            [Reply::Text(next), Reply::Array(found)] => {
                keys.extend(found.iter().filter_map(|k| match k {
                    Reply::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                    _ => None,
                }));
                cursor = String::from_utf8_lossy(next).into_owned();
            }
            _ => return Err("SCAN: unexpected reply".into()),
        }
        if cursor == "0" || keys.len() >= MAX_KEYS {
            break;
        }
    }
    keys.sort();
    keys.truncate(MAX_KEYS);
    let mut out = Vec::new();
    for key in keys {
        let Some((queue, state)) = queue_key(&key) else {
            continue;
        };
        let cmd = if state == "ready" { "LLEN" } else { "ZCARD" };
        // A key of another type (an app's own `queues:` key) answers an
        // error; it is not a queue, so it is left out.
        if let Ok(Reply::Int(n)) = c.call(&[cmd, &key]).await {
            out.push((queue, state, n.max(0) as u64));
        }
    }
    Ok(out)
}

/// `[prefix]queues:NAME[:delayed|:reserved]` -> (NAME, state); `:notify`
/// (Laravel's wake-up list) and other suffixes are not queues.
fn queue_key(key: &str) -> Option<(String, &'static str)> {
    let rest = &key[key.find("queues:")? + "queues:".len()..];
    let (name, state) = match rest.rsplit_once(':') {
        Some((n, "delayed")) => (n, "delayed"),
        Some((n, "reserved")) => (n, "reserved"),
        Some(_) => return None,
        None => (rest, "ready"),
    };
    (!name.is_empty()).then(|| (name.to_string(), state))
}

/// One reply from the start of `buf`: `None` until it is complete.
fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[1..end];
    let text = || String::from_utf8_lossy(line).into_owned();
    let int = || {
        text()
            .parse::<i64>()
            .map_err(|_| format!("bad RESP number {:?}", text()))
    };
    let after = end + 2;
    match buf.first() {
        Some(b'+') => Ok(Some((Reply::Text(line.to_vec()), after))),
        Some(b'-') => Ok(Some((Reply::Error(text()), after))),
        Some(b':') => Ok(Some((Reply::Int(int()?), after))),
        Some(b'$') => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Reply::Nil, after)));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            Ok(Some((
                Reply::Text(buf[after..after + n].to_vec()),
                after + n + 2,
            )))
        }
        Some(b'*') => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Reply::Nil, after)));
            }
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..n {
                match parse(&buf[at..])? {
                    Some((r, used)) => {
                        items.push(r);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(items), at)))
        }
        _ => Err("not a RESP reply".into()),
    }
}

/// `key:value` lines of `INFO`.
fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// (INFO field, metric, kind is counter, help); counters without `_total`.
const INFO: &[(&str, &str, bool, &str)] = &[
    (
        "uptime_in_seconds",
        "redis_uptime_in_seconds",
        false,
        "Seconds since Redis started.",
    ),
    (
        "connected_clients",
        "redis_connected_clients",
        false,
        "Clients connected.",
    ),
    (
        "blocked_clients",
        "redis_blocked_clients",
        false,
        "Clients blocked on a list or stream.",
    ),
    (
        "used_memory",
        "redis_memory_used_bytes",
        false,
        "Memory used by Redis.",
    ),
    (
        "maxmemory",
        "redis_memory_max_bytes",
        false,
        "maxmemory (0: no limit).",
    ),
    (
        "total_connections_received",
        "redis_connections_received",
        true,
        "Connections accepted.",
    ),
    (
        "total_commands_processed",
        "redis_commands_processed",
        true,
        "Commands processed.",
    ),
    (
        "rejected_connections",
        "redis_rejected_connections",
        true,
        "Connections refused (maxclients).",
    ),
    ("expired_keys", "redis_expired_keys", true, "Keys expired."),
    (
        "evicted_keys",
        "redis_evicted_keys",
        true,
        "Keys evicted for maxmemory.",
    ),
    (
        "keyspace_hits",
        "redis_keyspace_hits",
        true,
        "Lookups that found their key.",
    ),
    (
        "keyspace_misses",
        "redis_keyspace_misses",
        true,
        "Lookups that did not find their key.",
    ),
    (
        "rdb_changes_since_last_save",
        "redis_rdb_changes_since_last_save",
        false,
        "Writes since the last RDB save.",
    ),
    (
        "aof_enabled",
        "redis_aof_enabled",
        false,
        "1 when the append-only file is on.",
    ),
];

/// Add one instance's Redis: `redis_up`, and when up, the essentials, keys
/// per database and queue depths.
pub fn add(f: &mut Families, instance: &str, read: &Result<Reading, String>) {
    let l = || labels(&[("app", instance)]);
    f.gauge(
        "redis_up",
        "1 when Redis answered INFO.",
        l(),
        f64::from(u8::from(read.is_ok())),
    );
    let Ok(r) = read else { return };
    for (field, name, counter, help) in INFO {
        if let Some(v) = r.info.get(*field).and_then(|v| v.parse::<f64>().ok()) {
            if *counter {
                f.counter(name, help, l(), v);
            } else {
                f.gauge(name, help, l(), v);
            }
        }
    }
    for (db, line) in r.info.iter().filter(|(k, _)| k.starts_with("db")) {
        // `db0:keys=3,expires=0,avg_ttl=0`
        let field = |want: &str| {
            line.split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == want)
                .and_then(|(_, v)| v.parse::<f64>().ok())
        };
        let dl = || labels(&[("app", instance), ("db", db)]);
        if let Some(v) = field("keys") {
            f.gauge("redis_db_keys", "Keys per database.", dl(), v);
        }
        if let Some(v) = field("expires") {
            f.gauge(
                "redis_db_keys_expiring",
                "Keys with an expiry per database.",
                dl(),
                v,
            );
        }
    }
    for (queue, state, n) in &r.queues {
        f.gauge(
            "applianced_queue_depth",
            "Jobs in a Laravel queue: ready, delayed or reserved (being worked on).",
            labels(&[("app", instance), ("queue", queue), ("state", state)]),
            *n as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_parse_only_when_complete() {
        assert_eq!(
            parse(b"+OK\r\n").unwrap(),
            Some((Reply::Text(b"OK".to_vec()), 5))
        );
        assert_eq!(parse(b":42\r\n").unwrap(), Some((Reply::Int(42), 5)));
        assert_eq!(parse(b"$5\r\nhel").unwrap(), None);
        assert_eq!(
            parse(b"$5\r\nhello\r\n").unwrap(),
            Some((Reply::Text(b"hello".to_vec()), 11))
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Nil, 5)));
        let scan = b"*2\r\n$1\r\n0\r\n*1\r\n$14\r\nqueues:default\r\n";
        assert_eq!(
            parse(scan).unwrap(),
            Some((
                Reply::Array(vec![
                    Reply::Text(b"0".to_vec()),
                    Reply::Array(vec![Reply::Text(b"queues:default".to_vec())])
                ]),
                scan.len()
            ))
        );
        assert_eq!(parse(&scan[..scan.len() - 3]).unwrap(), None);
        assert!(parse(b"?\r\n").is_err());
    }

    #[test]
    fn laravel_queue_keys_name_their_queue_and_state() {
        assert_eq!(
            queue_key("queues:default"),
            Some(("default".into(), "ready"))
        );
        assert_eq!(
            queue_key("app_database_queues:mail:delayed"),
            Some(("mail".into(), "delayed"))
        );
        assert_eq!(
            queue_key("queues:default:reserved"),
            Some(("default".into(), "reserved"))
        );
        assert_eq!(queue_key("queues:default:notify"), None);
        assert_eq!(queue_key("sessions:abc"), None);
    }

    #[test]
    fn info_becomes_redis_exporter_series() {
        let info = "# Server\r\nuptime_in_seconds:12\r\n# Clients\r\nconnected_clients:9\r\n\
                    used_memory:1048576\r\ntotal_commands_processed:77\r\n# Keyspace\r\n\
                    db0:keys=3,expires=1,avg_ttl=0\r\n";
        let r = Reading {
            info: parse_info(info),
            queues: vec![("default".into(), "ready", 4)],
        };
        let mut f = Families::new();
        add(&mut f, "demo", &Ok(r));
        let text = f.classic();
        for want in [
            "redis_up{app=\"demo\"} 1",
            "redis_connected_clients{app=\"demo\"} 9",
            "redis_memory_used_bytes{app=\"demo\"} 1048576",
            "redis_commands_processed_total{app=\"demo\"} 77",
            "redis_db_keys{app=\"demo\",db=\"db0\"} 3",
            "applianced_queue_depth{app=\"demo\",queue=\"default\",state=\"ready\"} 4",
        ] {
            assert!(text.contains(want), "missing {want}:\n{text}");
        }
    }
}
