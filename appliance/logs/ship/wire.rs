//! The sinks' wire formats: Loki's push body, Elasticsearch's bulk body,
//! RFC 5424 syslog over UDP or TCP (RFC 6587 octet counting), and sending
//! one batch.
//!
//! Touches only the sink's address.

use super::{Entry, SinkKind};
use crate::logs::Level;
use std::time::{Duration, SystemTime};

pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn send(
    client: &reqwest::Client,
    kind: &SinkKind,
    batch: &[(u64, Entry)],
) -> Result<(), String> {
    match kind {
        SinkKind::Loki { url } => {
            let body = loki_body(batch);
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(format!("Loki answered {}", r.status()))
            }
        }
        SinkKind::Elasticsearch { url, index } => {
            let r = client
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(bulk_body(index, batch))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status();
            let text = r.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("Elasticsearch answered {status}"));
            }
            // The bulk API answers 200 with `"errors": true` when some
            // documents were refused: retry the batch.
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) if v["errors"] == true => Err("Elasticsearch refused documents".into()),
                _ => Ok(()),
            }
        }
        SinkKind::Syslog { tcp, address } => syslog(*tcp, address, batch).await,
    }
}

/// Loki's push body: one stream per (instance, unit), values in order.
fn loki_body(batch: &[(u64, Entry)]) -> Vec<u8> {
    let mut streams: Vec<((&str, &str), Vec<serde_json::Value>)> = Vec::new();
    for (_, e) in batch {
        let ns =
            e.at.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
                .to_string();
        let value = serde_json::json!([ns, String::from_utf8_lossy(&e.json)]);
        let key = (e.instance.as_str(), e.unit.as_str());
        match streams.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(value),
            None => streams.push((key, vec![value])),
        }
    }
    let streams: Vec<serde_json::Value> = streams
        .into_iter()
        .map(|((instance, unit), values)| {
            serde_json::json!({
                "stream": {"job": "applianced", "app": instance, "unit": unit},
                "values": values,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "streams": streams })).unwrap_or_default()
}

/// Elasticsearch's bulk body: an `index` action and the line, per line.
fn bulk_body(index: &str, batch: &[(u64, Entry)]) -> Vec<u8> {
    let action =
        serde_json::to_vec(&serde_json::json!({"index": {"_index": index}})).unwrap_or_default();
    let mut out = Vec::new();
    for (_, e) in batch {
        out.extend_from_slice(&action);
        out.push(b'\n');
        out.extend_from_slice(&e.json);
        out.push(b'\n');
    }
    out
}

/// One RFC 5424 message: facility local0, severity from the level.
fn syslog_line(e: &Entry) -> Vec<u8> {
    let severity = match e.level {
        Some(Level::Error) => 3,
        Some(Level::Warn) => 4,
        Some(Level::Debug) => 7,
        Some(Level::Info) | None => 6,
    };
    let ts = humantime::format_rfc3339_millis(e.at);
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "-".into());
    let app = if e.instance.is_empty() {
        "-"
    } else {
        &e.instance
    };
    let mut out = format!(
        "<{}>1 {ts} {host} applianced - {app}/{} - ",
        16 * 8 + severity,
        e.unit
    )
    .into_bytes();
    out.extend_from_slice(&e.json);
    out
}

async fn syslog(tcp: bool, address: &str, batch: &[(u64, Entry)]) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let io = async {
        if tcp {
            // RFC 6587 octet counting.
            let mut s = tokio::net::TcpStream::connect(address).await?;
            let mut buf = Vec::new();
            for (_, e) in batch {
                let line = syslog_line(e);
                buf.extend_from_slice(format!("{} ", line.len()).as_bytes());
                buf.extend_from_slice(&line);
            }
            s.write_all(&buf).await?;
            s.shutdown().await
        } else {
            let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
            s.connect(address).await?;
            for (_, e) in batch {
                s.send(&syslog_line(e)).await?;
            }
            Ok(())
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, io)
        .await
        .map_err(|_| "syslog: timed out".to_string())?
        .map_err(|e| format!("syslog {address}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_entry as entry;

    #[test]
    fn loki_gets_one_stream_per_instance_and_unit_with_nanosecond_times() {
        let batch: Vec<(u64, Entry)> = (0..4).map(|i| (i as u64, entry(i))).collect();
        let v: serde_json::Value = serde_json::from_slice(&loki_body(&batch)).unwrap();
        let streams = v["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(streams[0]["stream"]["unit"], "php-fpm");
        assert_eq!(streams[0]["stream"]["app"], "demo");
        assert_eq!(streams[0]["values"][0][0], "1764720000000000000");
        assert_eq!(streams[0]["values"][1][1], "{\"msg\":\"line 2\"}");
    }

    #[test]
    fn bulk_and_syslog_bodies_carry_each_line() {
        let batch: Vec<(u64, Entry)> = (0..2).map(|i| (i as u64, entry(i))).collect();
        let text = String::from_utf8(bulk_body("logs", &batch)).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert_eq!(
            text.lines().next(),
            Some("{\"index\":{\"_index\":\"logs\"}}")
        );
        let line = String::from_utf8(syslog_line(&entry(0))).unwrap();
        assert!(
            line.starts_with("<132>1 2025-12-03T00:00:00.000Z "),
            "{line}"
        );
        assert!(
            line.ends_with(" applianced - demo/php-fpm - {\"msg\":\"line 0\"}"),
            "{line}"
        );
    }
}
