//! Edits of the operator's config file for `applianced instance add|remove`:
//! one `[[instance]]` table appended or taken out, everything else (comments,
//! order, formatting) kept as written (toml_edit).
//!
//! The file is replaced atomically: the new text goes to a temp file beside
//! it, is fsynced, checked by the caller (parsed and planned like at start),
//! then renamed over the original and the directory fsynced. A crash leaves
//! the old file or the new one, never half of either. Touches only the
//! config file and its temp sibling.

use std::io::Write;
use std::path::{Path, PathBuf};
use toml_edit::{Array, DocumentMut, Item, Table, value};

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{file}: {problem}")]
    Parse { file: String, problem: String },
    #[error("{file}: `instance` is not an array of tables ([[instance]])")]
    NotTables { file: String },
    #[error("{file}: instance `{name}` is already defined")]
    Exists { file: String, name: String },
    #[error("{file}: no [[instance]] is named `{name}`")]
    Missing { file: String, name: String },
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
}

/// What `instance add` writes.
#[derive(Debug, Clone, Default)]
pub struct NewInstance {
    pub name: String,
    pub domains: Vec<String>,
    pub app_dir: Option<PathBuf>,
}

fn parse(text: &str, file: &Path) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>().map_err(|e| EditError::Parse {
        file: file.display().to_string(),
        problem: e.to_string(),
    })
}

/// `text` with one more `[[instance]]` at the end.
pub fn add_instance(text: &str, file: &Path, new: &NewInstance) -> Result<String, EditError> {
    let mut doc = parse(text, file)?;
    let f = || file.display().to_string();
    let item = doc
        .entry("instance")
        .or_insert(Item::ArrayOfTables(Default::default()));
    let list = item
        .as_array_of_tables_mut()
        .ok_or(EditError::NotTables { file: f() })?;
    if list
        .iter()
        .any(|t| t.get("name").and_then(|n| n.as_str()) == Some(new.name.as_str()))
    {
        return Err(EditError::Exists {
            file: f(),
            name: new.name.clone(),
        });
    }
    let mut t = Table::new();
    t.decor_mut()
        .set_prefix("\n# Added by `applianced instance add`.\n");
    t.insert("name", value(new.name.as_str()));
    if let Some(app) = &new.app_dir {
        t.insert("app_dir", value(app.display().to_string()));
    }
    let mut domains = Array::new();
    for d in &new.domains {
        domains.push(d.as_str());
    }
    t.insert("domains", value(domains));
    list.push(t);
    Ok(doc.to_string())
}

/// `text` without the `[[instance]]` named `name` (and its sub-tables).
pub fn remove_instance(text: &str, file: &Path, name: &str) -> Result<String, EditError> {
    let mut doc = parse(text, file)?;
    let f = || file.display().to_string();
    let missing = || EditError::Missing {
        file: f(),
        name: name.into(),
    };
    let list = doc
        .get_mut("instance")
        .ok_or_else(missing)?
        .as_array_of_tables_mut()
        .ok_or(EditError::NotTables { file: f() })?;
    let pos = list
        .iter()
        .position(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
        .ok_or_else(missing)?;
    list.remove(pos);
    if list.is_empty() {
        doc.remove("instance");
    }
    Ok(doc.to_string())
}

/// A new version of `file`, written and fsynced beside it; [`Staged::commit`]
/// puts it in place, dropping it removes it.
#[derive(Debug)]
pub struct Staged {
    target: PathBuf,
    temp: PathBuf,
    committed: bool,
}

impl Staged {
    /// Write `text` to `.NAME.new` beside `file`, with `file`'s mode.
    pub fn write(file: &Path, text: &str) -> Result<Staged, EditError> {
        let io = |source| EditError::Io {
            file: file.display().to_string(),
            source,
        };
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "appliance.toml".into());
        let temp = file.with_file_name(format!(".{name}.new"));
        let mode = std::fs::metadata(file)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
            .unwrap_or(0o644);
        let staged = Staged {
            target: file.to_path_buf(),
            temp: temp.clone(),
            committed: false,
        };
        let mut out = std::fs::File::create(&temp).map_err(io)?;
        out.write_all(text.as_bytes()).map_err(io)?;
        out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777))
            .map_err(io)?;
        out.sync_all().map_err(io)?;
        Ok(staged)
    }

    /// The staged file, for checking before it is committed.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Rename it over the original and fsync the directory.
    pub fn commit(mut self) -> Result<(), EditError> {
        let io = |source| EditError::Io {
            file: self.target.display().to_string(),
            source,
        };
        std::fs::rename(&self.temp, &self.target).map_err(io)?;
        self.committed = true;
        if let Some(dir) = self.target.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# my appliance
data_dir = "/srv/a"   # keep

[http]
listen = ["0.0.0.0:80"]

[[instance]]
name = "smart1"
domains = ["smart1.example"]   # the first one

[instance.limits]
memory_max = "2G"

[[instance]]
name = "smart2"
domains = ["smart2.example"]
"#;

    fn f() -> &'static Path {
        Path::new("/etc/applianced/appliance.toml")
    }

    #[test]
    fn adding_appends_an_instance_and_keeps_comments_and_layout() {
        let new = NewInstance {
            name: "smart3".into(),
            domains: vec!["smart3.example".into(), "*.smart3.example".into()],
            app_dir: Some("/srv/apps/smart3".into()),
        };
        let out = add_instance(TEXT, f(), &new).unwrap();
        assert!(
            out.starts_with(TEXT),
            "the original text is kept as is:\n{out}"
        );
        let cfg: toml::Table = toml::from_str(&out).unwrap();
        let list = cfg["instance"].as_array().unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[2]["name"].as_str(), Some("smart3"));
        assert_eq!(list[2]["app_dir"].as_str(), Some("/srv/apps/smart3"));
        assert_eq!(list[2]["domains"].as_array().unwrap().len(), 2);
        assert_eq!(list[0]["limits"]["memory_max"].as_str(), Some("2G"));
    }

    #[test]
    fn adding_a_name_already_there_is_refused() {
        let new = NewInstance {
            name: "smart2".into(),
            ..Default::default()
        };
        let e = add_instance(TEXT, f(), &new).unwrap_err().to_string();
        assert!(e.contains("`smart2` is already defined"), "{e}");
        assert!(e.contains("/etc/applianced/appliance.toml"), "{e}");
    }

    #[test]
    fn adding_to_a_file_without_instances_creates_the_array() {
        let new = NewInstance {
            name: "one".into(),
            domains: vec!["one.example".into()],
            app_dir: None,
        };
        let out = add_instance("[http]\nlisten = []\n", f(), &new).unwrap();
        let cfg: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(cfg["instance"][0]["name"].as_str(), Some("one"));
        assert!(cfg["instance"][0].get("app_dir").is_none());
    }

    #[test]
    fn removing_takes_out_the_instance_with_its_sub_tables_only() {
        let out = remove_instance(TEXT, f(), "smart1").unwrap();
        assert!(out.contains("# my appliance") && out.contains("# keep"));
        let cfg: toml::Table = toml::from_str(&out).unwrap();
        let list = cfg["instance"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["name"].as_str(), Some("smart2"));
        assert!(list[0].get("limits").is_none(), "{out}");
        let e = remove_instance(TEXT, f(), "nope").unwrap_err().to_string();
        assert!(e.contains("no [[instance]] is named `nope`"), "{e}");
    }

    #[test]
    fn broken_toml_is_reported_with_the_file_name() {
        let e = add_instance("[[instance]\n", f(), &NewInstance::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/applianced/appliance.toml:"), "{e}");
    }

    #[test]
    fn a_staged_file_replaces_the_original_only_on_commit_and_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("appliance.toml");
        std::fs::write(&file, "old").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        {
            let staged = Staged::write(&file, "dropped").unwrap();
            assert_eq!(std::fs::read_to_string(staged.path()).unwrap(), "dropped");
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "old");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp removed"
        );
        Staged::write(&file, "new").unwrap().commit().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
        let mode = std::fs::metadata(&file).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o640
        );
    }
}
