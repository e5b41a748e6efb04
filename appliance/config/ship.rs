//! `[[log.ship]]`: where log lines are shipped besides the local files.
//!
//! Parsing and type checks only; [`crate::logs::ship::plan`] checks URLs and
//! addresses.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipConfig {
    /// `loki` (push API), `elasticsearch` (bulk API) or `syslog` (RFC 5424).
    pub kind: ShipKindConfig,
    /// Loki: `http://HOST:3100/loki/api/v1/push`; Elasticsearch:
    /// `http://HOST:9200/_bulk`.
    #[serde(default)]
    pub url: Option<String>,
    /// Elasticsearch: the index lines go to. Default `applianced`.
    #[serde(default)]
    pub index: Option<String>,
    /// syslog: `udp://HOST:PORT` or `tcp://HOST:PORT`.
    #[serde(default)]
    pub address: Option<String>,
    /// Lines waiting while the sink is slow or down, at most this many KiB;
    /// past it the oldest are dropped (and counted). Default 8192 (8 MiB).
    #[serde(default)]
    pub buffer_kib: Option<u64>,
    /// Lines per request. Default 500.
    #[serde(default)]
    pub batch_lines: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShipKindConfig {
    Loki,
    Elasticsearch,
    Syslog,
}
