//! `[backup]` + `[instance.backup]` -> one checked [`BackupSpec`] per
//! instance, at plan time, so a bad value is a config error naming its key
//! before anything starts.

use crate::config::{BackupConfig, InstanceConfig, S3Config};
use crate::layout::Layout;
use crate::plan::InstancePlan;
use crate::plan::KeyedProblem;
use crate::scheduler::schedule::Schedule;
use std::path::PathBuf;

pub const DEFAULT_SCHEDULE: &str = "0 3 * * *";
pub const DEFAULT_TEST_RESTORE: &str = "30 4 * * 0";

/// How many backups retention keeps, by calendar bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

#[derive(Debug, Clone)]
pub struct S3Spec {
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    pub region: String,
    pub path_style: bool,
    pub retries: u32,
    pub part_size: usize,
}

/// One instance's backup settings, checked.
#[derive(Debug, Clone)]
pub struct BackupSpec {
    pub instance: String,
    pub enabled: bool,
    pub schedule: Schedule,
    pub test_restore: Option<Schedule>,
    pub keep: Keep,
    /// The local target root; this instance's backups are in `dir/INSTANCE/ID/`.
    pub dir: PathBuf,
    pub parallel: usize,
    pub zstd_level: i32,
    pub checksums: bool,
    pub encrypt: bool,
    pub s3: Option<S3Spec>,
    /// The app dir: `storage/` is archived from here and `VERSION` read.
    pub app_dir: PathBuf,
    /// The instance runs the shipped `mariadb` unit (else no dumps).
    pub has_mariadb: bool,
    /// The `[instance.env]` `APP_VERSION`, if any (recorded in the manifest).
    pub app_version: Option<String>,
}

impl BackupSpec {
    /// Where this instance's local backups live.
    pub fn instance_dir(&self) -> PathBuf {
        self.dir.join(&self.instance)
    }
}

/// Build every instance's spec. `instances` and `plans` are parallel.
pub fn build(
    defaults: &BackupConfig,
    instances: &[InstanceConfig],
    plans: &[InstancePlan],
    layout: &Layout,
) -> Result<Vec<BackupSpec>, KeyedProblem> {
    let mut out = Vec::new();
    for (i, (cfg, plan)) in instances.iter().zip(plans).enumerate() {
        let merged = defaults.clone().overlay(&cfg.backup);
        // A problem is reported at the key the value came from.
        let set_here = serde_json::to_value(&cfg.backup).unwrap_or_default();
        let key = |field: &str| {
            if set_here.get(field).is_some_and(|v| !v.is_null()) {
                format!("instance[{i}].backup.{field}")
            } else {
                format!("backup.{field}")
            }
        };
        out.push(one(&merged, plan, layout, &key)?);
    }
    Ok(out)
}

fn one(
    c: &BackupConfig,
    plan: &InstancePlan,
    layout: &Layout,
    key: &dyn Fn(&str) -> String,
) -> Result<BackupSpec, KeyedProblem> {
    let schedule = Schedule::parse(c.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE))
        .map_err(|e| (key("schedule"), e))?;
    let test_restore = match c
        .test_restore_schedule
        .as_deref()
        .unwrap_or(DEFAULT_TEST_RESTORE)
    {
        "off" | "" => None,
        s => Some(Schedule::parse(s).map_err(|e| (key("test_restore_schedule"), e))?),
    };
    let keep = Keep {
        daily: c.keep_daily.unwrap_or(7),
        weekly: c.keep_weekly.unwrap_or(0),
        monthly: c.keep_monthly.unwrap_or(0),
    };
    if keep.daily == 0 && keep.weekly == 0 && keep.monthly == 0 {
        return Err((
            key("keep_daily"),
            "keep_daily, keep_weekly and keep_monthly are all 0: nothing would be kept".into(),
        ));
    }
    let parallel = c.parallel.unwrap_or(3);
    if !(1..=16).contains(&parallel) {
        return Err((
            key("parallel"),
            format!("{parallel} is out of range 1..=16"),
        ));
    }
    // 1, not zstd's usual 3: on bench/backup's dataset level 1 took half
    // the compression CPU and its output was smaller (110 vs 118 MiB).
    let zstd_level = c.zstd_level.unwrap_or(1);
    if !(1..=19).contains(&zstd_level) {
        return Err((
            key("zstd_level"),
            format!("{zstd_level} is out of range 1..=19"),
        ));
    }
    let dir = c
        .dir
        .clone()
        .unwrap_or_else(|| layout.data_dir().join("backups"));
    if !dir.is_absolute() {
        return Err((
            key("dir"),
            format!("`{}` must be an absolute path", dir.display()),
        ));
    }
    let s3 =
        c.s3.as_ref()
            .map(|s| s3_spec(s, &|f: &str| format!("{}.{f}", key("s3"))))
            .transpose()?;
    Ok(BackupSpec {
        instance: plan.name.clone(),
        enabled: c.enabled.unwrap_or(true),
        schedule,
        test_restore,
        keep,
        dir,
        parallel: parallel as usize,
        zstd_level,
        checksums: c.checksums.unwrap_or(true),
        encrypt: c.encrypt.unwrap_or(false),
        s3,
        app_dir: plan.app_dir.clone(),
        has_mariadb: plan.unit("mariadb").is_some(),
        app_version: plan.env.get("APP_VERSION").cloned(),
    })
}

fn s3_spec(s: &S3Config, key: &dyn Fn(&str) -> String) -> Result<S3Spec, KeyedProblem> {
    if s.bucket.is_empty() {
        return Err((key("bucket"), "must not be empty".into()));
    }
    if let Some(e) = &s.endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err((
                key("endpoint"),
                format!("`{e}` must start with http:// or https://"),
            ));
        }
    }
    let part = s.part_size_mb.unwrap_or(16);
    if !(5..=512).contains(&part) {
        return Err((
            key("part_size_mb"),
            format!("{part} is out of range 5..=512 (S3 parts are at least 5 MiB)"),
        ));
    }
    let retries = s.retries.unwrap_or(3);
    if retries > 20 {
        return Err((key("retries"), format!("{retries} is more than 20")));
    }
    Ok(S3Spec {
        endpoint: s.endpoint.clone(),
        bucket: s.bucket.clone(),
        prefix: s
            .prefix
            .clone()
            .unwrap_or_default()
            .trim_matches('/')
            .to_string(),
        region: s.region.clone().unwrap_or_else(|| "us-east-1".into()),
        path_style: s.path_style.unwrap_or(true),
        retries,
        part_size: part as usize * 1024 * 1024,
    })
}
