//! Everything shipped inside the binary: unit templates (`units/`) and child
//! config templates, error pages and the demo app (`assets/`).
//!
//! This is the one place that renders child configs. Templates are minijinja
//! with strict undefined variables, so a typo is an error, never an empty value.
//! It touches no files except where [`install_tree`] is told to write.

use include_dir::{Dir, include_dir};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

static UNITS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/units");
static ASSETS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/assets");

/// The TOML text of a shipped unit, e.g. `unit_template("mariadb")`.
pub fn unit_template(name: &str) -> Option<&'static str> {
    UNITS.get_file(format!("{name}.toml"))?.contents_utf8()
}

/// Names of all shipped units, sorted.
pub fn unit_names() -> Vec<&'static str> {
    let mut v: Vec<&str> = UNITS
        .files()
        .filter_map(|f| f.path().to_str()?.strip_suffix(".toml"))
        .collect();
    v.sort();
    v
}

/// A text asset, e.g. `asset_text("redis/redis.conf")`.
pub fn asset_text(path: &str) -> Option<&'static str> {
    ASSETS.get_file(path)?.contents_utf8()
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("no template `{0}` among the shipped assets")]
    MissingTemplate(String),
    #[error("{0}")]
    Template(String),
}

/// Render one template string against `ctx`, failing on any undefined variable.
pub fn render_str(source: &str, ctx: &impl serde::Serialize) -> Result<String, RenderError> {
    if !source.contains("{{") && !source.contains("{%") {
        return Ok(source.to_string());
    }
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.render_str(source, ctx).map_err(|e| {
        // minijinja's Display already says what and where; keep its first line.
        let msg = e.to_string();
        RenderError::Template(msg.lines().next().unwrap_or_default().to_string())
    })
}

/// Render the shipped asset at `template` against `ctx`.
pub fn render_asset(template: &str, ctx: &impl serde::Serialize) -> Result<String, RenderError> {
    let src = asset_text(template).ok_or_else(|| RenderError::MissingTemplate(template.into()))?;
    render_str(src, ctx)
}

/// Copy the asset directory `sub` (e.g. `demo`) to `dest`, creating it. Existing
/// files are left alone: this provisions, it never overwrites.
pub fn install_tree(sub: &str, dest: &Path) -> io::Result<()> {
    let dir = ASSETS
        .get_dir(sub)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no asset dir {sub}")))?;
    copy_dir(dir, Path::new(sub), dest)
}

fn copy_dir(dir: &Dir<'_>, strip: &Path, dest: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dest)?;
    for file in dir.files() {
        let rel = file.path().strip_prefix(strip).unwrap_or(file.path());
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !target.exists() {
            std::fs::write(&target, file.contents())?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    for sub in dir.dirs() {
        copy_dir(sub, strip, dest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_units_include_the_core_stack() {
        let names = unit_names();
        for n in ["mariadb", "redis", "php-fpm"] {
            assert!(names.contains(&n), "{names:?}");
        }
    }

    #[test]
    fn undefined_template_variable_is_an_error() {
        let err = render_str("port {{ nope }}", &serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err}");
    }
}
