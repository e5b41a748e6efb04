//! MariaDB's essentials from `SHOW GLOBAL STATUS` (and `max_connections`),
//! under mysqld_exporter's names, so its dashboards work unchanged:
//! `mysql_up`, `mysql_global_status_*` (untyped, as that exporter publishes
//! them), `mysql_global_status_commands_total{command}`,
//! `mysql_global_status_buffer_pool_pages{state}` and
//! `mysql_global_variables_max_connections`.
//!
//! Read as root over the instance's unix socket with the backup's client
//! ([`crate::backup::wire`]), on a blocking thread. Touches only that socket.

use super::encode::{Families, labels};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `SHOW GLOBAL STATUS` variables published as `mysql_global_status_NAME`.
const PLAIN: &[&str] = &[
    "aborted_clients",
    "aborted_connects",
    "bytes_received",
    "bytes_sent",
    "connections",
    "created_tmp_disk_tables",
    "created_tmp_tables",
    "innodb_buffer_pool_read_requests",
    "innodb_buffer_pool_reads",
    "innodb_data_read",
    "innodb_data_written",
    "innodb_row_lock_waits",
    "innodb_row_lock_time",
    "max_used_connections",
    "open_files",
    "open_tables",
    "opened_tables",
    "queries",
    "questions",
    "select_full_join",
    "slow_queries",
    "table_locks_waited",
    "threads_cached",
    "threads_connected",
    "threads_created",
    "threads_running",
    "uptime",
];

/// `Com_*` counters published as `commands_total{command}`.
const COMMANDS: &[&str] = &[
    "select", "insert", "update", "delete", "replace", "begin", "commit", "rollback",
];

/// `Innodb_buffer_pool_pages_*` published as `buffer_pool_pages{state}`.
const PAGES: &[&str] = &["data", "free", "misc"];

/// Status variables, lowercased, with `max_connections` beside them.
pub type Status = BTreeMap<String, String>;

/// Read the server's status over `socket` (blocking work on its own thread).
pub async fn read(socket: &Path, timeout: Duration) -> Result<Status, String> {
    let socket: PathBuf = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut conn =
            crate::backup::wire::Conn::connect(&socket, timeout).map_err(|e| e.to_string())?;
        let mut out = Status::new();
        let mut put = |r: &[crate::backup::wire::Value]| {
            if let (Some(Some(k)), Some(Some(v))) = (r.first(), r.get(1)) {
                out.insert(
                    String::from_utf8_lossy(k).to_ascii_lowercase(),
                    String::from_utf8_lossy(v).into_owned(),
                );
            }
            Ok(())
        };
        conn.query("SHOW GLOBAL STATUS", &mut put)
            .and_then(|()| conn.query("SHOW GLOBAL VARIABLES LIKE 'max_connections'", &mut put))
            .map_err(|e| e.to_string())?;
        Ok(out)
    })
    .await
    .map_err(|e| format!("status reader: {e}"))?
}

/// Add one instance's server: `mysql_up` and, when up, the essentials.
pub fn add(f: &mut Families, instance: &str, read: &Result<Status, String>) {
    f.gauge(
        "mysql_up",
        "1 when MariaDB answered SHOW GLOBAL STATUS.",
        labels(&[("app", instance)]),
        f64::from(u8::from(read.is_ok())),
    );
    let Ok(s) = read else { return };
    let num = |k: &str| s.get(k).and_then(|v| v.parse::<f64>().ok());
    for name in PLAIN {
        if let Some(v) = num(name) {
            f.untyped(
                &format!("mysql_global_status_{name}"),
                "Generic metric from SHOW GLOBAL STATUS.",
                labels(&[("app", instance)]),
                v,
            );
        }
    }
    for c in COMMANDS {
        if let Some(v) = num(&format!("com_{c}")) {
            f.counter(
                "mysql_global_status_commands",
                "Total number of executed MySQL commands.",
                labels(&[("app", instance), ("command", c)]),
                v,
            );
        }
    }
    for p in PAGES {
        if let Some(v) = num(&format!("innodb_buffer_pool_pages_{p}")) {
            f.gauge(
                "mysql_global_status_buffer_pool_pages",
                "Innodb buffer pool pages by state.",
                labels(&[("app", instance), ("state", p)]),
                v,
            );
        }
    }
    if let Some(v) = num("innodb_buffer_pool_pages_dirty") {
        f.gauge(
            "mysql_global_status_buffer_pool_dirty_pages",
            "Innodb buffer pool dirty pages.",
            labels(&[("app", instance)]),
            v,
        );
    }
    if let Some(v) = num("max_connections") {
        f.gauge(
            "mysql_global_variables_max_connections",
            "Generic gauge metric from SHOW GLOBAL VARIABLES.",
            labels(&[("app", instance)]),
            v,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_status_becomes_mysqld_exporter_series() {
        let mut s = Status::new();
        for (k, v) in [
            ("threads_connected", "3"),
            ("queries", "1200"),
            ("com_select", "900"),
            ("innodb_buffer_pool_pages_free", "7000"),
            ("max_connections", "151"),
            ("wsrep_ready", "OFF"),
        ] {
            s.insert(k.into(), v.into());
        }
        let mut f = Families::new();
        add(&mut f, "demo", &Ok(s));
        let text = f.classic();
        for want in [
            "mysql_up{app=\"demo\"} 1",
            "mysql_global_status_threads_connected{app=\"demo\"} 3",
            "# TYPE mysql_global_status_queries untyped",
            "mysql_global_status_commands_total{app=\"demo\",command=\"select\"} 900",
            "mysql_global_status_buffer_pool_pages{app=\"demo\",state=\"free\"} 7000",
            "mysql_global_variables_max_connections{app=\"demo\"} 151",
        ] {
            assert!(text.contains(want), "missing {want}:\n{text}");
        }
        assert!(!text.contains("wsrep"), "{text}");
    }
}
