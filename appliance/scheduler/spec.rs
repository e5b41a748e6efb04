//! Config -> cron entries of one instance, checked at plan time: the shipped
//! `schedule-run` entry merged with `[instance.cron.NAME]` overrides, schedules
//! parsed, timeouts read, names checked. Programs and templates are checked by
//! [`crate::plan`] rendering each entry once, as for units.
//!
//! Reads only the config and whether `APP_DIR/artisan` exists.

use super::schedule::Schedule;
use crate::config::{CronConfig, InstanceConfig, OverlapPolicy};
use crate::plan::{FieldRenderer, TemplateCtx, UnitRenderError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shipped entry: Laravel's scheduler, every minute, in the app dir.
pub const DEFAULT_ENTRY: &str = "schedule-run";

/// How long a run may take unless its entry says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// One cron entry, merged and typed. String fields are still templates.
#[derive(Debug, Clone)]
pub struct CronSpec {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub schedule: Schedule,
    pub timeout: Duration,
    pub overlap: OverlapPolicy,
    pub working_directory: Option<String>,
    pub user: Option<String>,
    pub environment: BTreeMap<String, String>,
}

/// An entry with its templates rendered: ready to spawn.
#[derive(Debug, Clone)]
pub struct RenderedCron {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub working_directory: Option<PathBuf>,
}

fn default_entry() -> CronConfig {
    CronConfig {
        command: Some("php".into()),
        // The CLI opcache from the instance's file cache (see
        // units/queue-worker.toml): a run every minute need not compile the app.
        args: Some(
            [
                "-d",
                "opcache.enable_cli=1",
                "-d",
                "opcache.file_cache={{ instance_dir }}/opcache",
                "-d",
                "opcache.file_cache_only=1",
                "artisan",
                "schedule:run",
            ]
            .map(String::from)
            .to_vec(),
        ),
        schedule: Some("* * * * *".into()),
        ..CronConfig::default()
    }
}

/// The instance's entries in name order. `key(NAME, FIELD)` names a config key.
///
/// `schedule-run` is on when the app has an `artisan` file (a Laravel app), or
/// when the instance has a `[instance.cron.schedule-run]` table, unless that
/// table says `enabled = false`. An app without `artisan` therefore gets no
/// entry that could only fail every minute. `bundled`: the app is the bundled
/// demo, copied on first provision (after planning), so the embedded copy is
/// what counts.
pub fn build(
    inst: &InstanceConfig,
    app_dir: &Path,
    bundled: bool,
    key: &dyn Fn(&str, &str) -> String,
) -> Result<Vec<CronSpec>, (String, String)> {
    let mut merged: BTreeMap<String, CronConfig> = BTreeMap::new();
    let laravel = app_dir.join("artisan").is_file()
        || (bundled && crate::assets::asset_text("demo/artisan").is_some());
    if laravel || inst.cron.contains_key(DEFAULT_ENTRY) {
        merged.insert(DEFAULT_ENTRY.into(), default_entry());
    }
    for (name, over) in &inst.cron {
        let base = merged.remove(name).unwrap_or_default();
        merged.insert(name.clone(), base.overlay(over));
    }
    let mut out = Vec::new();
    for (name, c) in merged {
        if !crate::plan::valid_name(&name, 40) {
            return Err((
                key(&name, ""),
                format!(
                    "`{name}` is not a valid cron entry name: lowercase letters, digits and `-`, starting with a letter"
                ),
            ));
        }
        if c.enabled == Some(false) {
            continue;
        }
        out.push(entry(&name, c, key)?);
    }
    Ok(out)
}

fn entry(
    name: &str,
    c: CronConfig,
    key: &dyn Fn(&str, &str) -> String,
) -> Result<CronSpec, (String, String)> {
    let missing = |field: &str| {
        (
            key(name, field),
            format!("cron entry `{name}` has no `{field}`"),
        )
    };
    let command = c.command.ok_or_else(|| missing("command"))?;
    let schedule_text = c.schedule.ok_or_else(|| missing("schedule"))?;
    let schedule = Schedule::parse(&schedule_text).map_err(|p| (key(name, "schedule"), p))?;
    let timeout = match &c.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => match humantime::parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                return Err((
                    key(name, "timeout"),
                    "a timeout must be longer than 0".into(),
                ));
            }
            Err(e) => {
                return Err((
                    key(name, "timeout"),
                    format!("`{t}` is not a duration such as \"90s\", \"10m\" or \"1h\": {e}"),
                ));
            }
        },
    };
    Ok(CronSpec {
        name: name.to_string(),
        command,
        args: c.args.unwrap_or_default(),
        schedule,
        timeout,
        overlap: c.overlap.unwrap_or_default(),
        working_directory: c.working_directory,
        user: c.user,
        environment: c.environment.unwrap_or_default(),
    })
}

impl CronSpec {
    /// Render the templates and find the program. `ctx.unit` is `cron`.
    pub fn render(&self, ctx: &TemplateCtx) -> Result<RenderedCron, UnitRenderError> {
        let f = FieldRenderer::new(ctx);
        let program = f.program("command", &self.command)?;
        let args = f.list("args", &self.args)?;
        let environment = f.map("environment", &self.environment)?;
        let working_directory = f.path("working_directory", &self.working_directory)?;
        Ok(RenderedCron {
            program,
            args,
            environment,
            working_directory,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(toml_text: &str) -> InstanceConfig {
        toml::from_str(&format!("name = \"a\"\n{toml_text}")).unwrap()
    }
    fn key(n: &str, f: &str) -> String {
        format!("instance[0].cron.{n}.{f}")
    }
    fn names(v: &[CronSpec]) -> Vec<&str> {
        v.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn schedule_run_is_on_only_for_apps_with_artisan() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            build(&inst(""), dir.path(), false, &key)
                .unwrap()
                .is_empty()
        );
        // The bundled demo (Laravel) is copied only at provision: its embedded
        // artisan counts while the app dir is still empty.
        let bundled = build(&inst(""), dir.path(), true, &key).unwrap();
        assert_eq!(names(&bundled), [DEFAULT_ENTRY]);
        std::fs::write(dir.path().join("artisan"), "<?php").unwrap();
        let v = build(&inst(""), dir.path(), false, &key).unwrap();
        assert_eq!(names(&v), [DEFAULT_ENTRY]);
        assert_eq!(v[0].command, "php");
        assert_eq!(
            v[0].args[v[0].args.len() - 2..],
            ["artisan", "schedule:run"]
        );
        assert!(
            v[0].args
                .contains(&"opcache.file_cache={{ instance_dir }}/opcache".to_string())
        );
        assert_eq!(v[0].schedule.as_str(), "* * * * *");
        assert_eq!(v[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(v[0].overlap, OverlapPolicy::Skip);
    }

    #[test]
    fn schedule_run_can_be_overridden_field_by_field_or_disabled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("artisan"), "<?php").unwrap();
        let v = build(
            &inst("[cron.schedule-run]\nschedule = \"*/5 * * * *\"\ntimeout = \"2m\"\n"),
            dir.path(),
            false,
            &key,
        )
        .unwrap();
        assert_eq!(v[0].command, "php");
        assert_eq!(v[0].schedule.as_str(), "*/5 * * * *");
        assert_eq!(v[0].timeout, Duration::from_secs(120));
        let v = build(&inst("[cron.schedule-run]\nenabled = false\n[cron.backup]\ncommand = \"true\"\nschedule = \"0 3 * * *\"\noverlap = \"allow\"\n"), dir.path(), false,
            &key,
        )
        .unwrap();
        assert_eq!(names(&v), ["backup"]);
        assert_eq!(v[0].overlap, OverlapPolicy::Allow);
    }

    #[test]
    fn bad_entries_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let e = build(
            &inst("[cron.x]\ncommand = \"true\"\nschedule = \"* * *\"\n"),
            dir.path(),
            false,
            &key,
        )
        .unwrap_err();
        assert_eq!(e.0, "instance[0].cron.x.schedule");
        let e = build(
            &inst("[cron.x]\ncommand = \"true\"\nschedule = \"* * * * *\"\ntimeout = \"soon\"\n"),
            dir.path(),
            false,
            &key,
        )
        .unwrap_err();
        assert_eq!(e.0, "instance[0].cron.x.timeout");
        assert!(e.1.contains("`soon` is not a duration"), "{}", e.1);
        let e = build(
            &inst("[cron.x]\ncommand = \"true\"\n"),
            dir.path(),
            false,
            &key,
        )
        .unwrap_err();
        assert_eq!(e.0, "instance[0].cron.x.schedule");
        assert!(e.1.contains("has no `schedule`"), "{}", e.1);
        let e = build(
            &inst("[cron.Bad_Name]\ncommand = \"true\"\nschedule = \"* * * * *\"\n"),
            dir.path(),
            false,
            &key,
        )
        .unwrap_err();
        assert!(e.1.contains("not a valid cron entry name"), "{}", e.1);
    }
}
