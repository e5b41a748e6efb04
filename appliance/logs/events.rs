//! applianced's own events (everything it logs through `tracing`) as
//! [`LogLine`]s: the same JSON line format as the children's output and the
//! access log, in `DATA/applianced.log`, and on the live feed for
//! `applianced logs -f applianced`.
//!
//! An event's `instance` and `unit` fields, when it has them, become the
//! line's; its other fields are kept beside the message. Stream `event`.
//! Touches only applianced's own log file.

use super::{Level, LogHub, LogLine, RotatingFile};
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// The pseudo-instance (and unit) of events about no instance.
pub const OWN: &str = "applianced";

/// A tracing layer writing each event as one [`LogLine`].
pub struct EventLayer {
    pub file: Arc<Mutex<RotatingFile>>,
    pub hub: Arc<LogHub>,
}

#[derive(Default)]
struct Fields {
    msg: String,
    map: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, serde_json::Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, serde_json::Value::String(format!("{value:?}")));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.msg = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.map.insert(field.name().to_string(), value);
        }
    }
}

fn level(l: &tracing::Level) -> Level {
    match *l {
        tracing::Level::ERROR => Level::Error,
        tracing::Level::WARN => Level::Warn,
        tracing::Level::INFO => Level::Info,
        _ => Level::Debug,
    }
}

/// The line for one event.
fn line(event: &tracing::Event<'_>) -> LogLine {
    let mut f = Fields::default();
    event.record(&mut f);
    let mut take = |k: &str| match f.map.remove(k) {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
        None => None,
    };
    let instance = take("instance").unwrap_or_else(|| OWN.to_string());
    let unit = take("unit").unwrap_or_else(|| OWN.to_string());
    f.map.insert(
        "target".into(),
        serde_json::Value::String(event.metadata().target().to_string()),
    );
    LogLine {
        ts: super::now_rfc3339(),
        instance,
        unit,
        replica: None,
        stream: "event".into(),
        msg: f.msg,
        level: Some(level(event.metadata().level())),
        fields: f.map,
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let line = line(event);
        if let Ok(json) = serde_json::to_vec(&line) {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            // Written through at once: these lines are few, and the last
            // ones before a crash are the ones that matter.
            let _ = file.write_line(&json).and_then(|()| file.flush());
            drop(file);
            self.hub.ship(&line.instance, &line.unit, line.level, &json);
        }
        self.hub.publish(Arc::new(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn events_become_log_lines_with_their_instance_level_and_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("applianced.log");
        let file = Arc::new(Mutex::new(
            RotatingFile::open(&path, super::super::Rotation::by_size(1 << 20, 2)).unwrap(),
        ));
        let hub = LogHub::new(super::super::Rotation::by_size(1 << 20, 2));
        let subscriber = tracing_subscriber::registry().with(EventLayer { file, hub });
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                instance = "demo",
                unit = "redis",
                restarts = 3,
                "unit restarted"
            );
            tracing::info!(port = 80, "listening");
        });
        let lines = super::super::tail(&path, 10, 2);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].instance, "demo");
        assert_eq!(lines[0].unit, "redis");
        assert_eq!(lines[0].level, Some(Level::Warn));
        assert_eq!(lines[0].msg, "unit restarted");
        assert_eq!(lines[0].fields["restarts"], 3);
        assert_eq!(lines[1].instance, OWN);
        assert_eq!(lines[1].stream, "event");
        assert_eq!(lines[1].fields["port"], 80);
    }
}
