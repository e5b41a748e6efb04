//! The app's `storage/` dir as `storage.tar.zst`: written and extracted with
//! owners, modes and mtimes kept. Blocking: run it on a blocking thread.

use super::BackupError;
use super::manifest::FileEntry;
use super::stream::{self, Key, Writer};
use std::io::Write;
use std::path::Path;

pub const FILE: &str = "storage.tar.zst";

/// Archive `storage` (which may be missing: an empty archive) into `out`.
pub fn write(
    storage: &Path,
    out: &Path,
    level: i32,
    key: Option<&Key>,
) -> Result<FileEntry, BackupError> {
    let io = |e: std::io::Error| BackupError::Io(format!("archiving {}: {e}", storage.display()));
    let file = std::fs::File::create(out).map_err(io)?;
    let w =
        Writer::new(std::io::BufWriter::with_capacity(1 << 20, file), level, key).map_err(io)?;
    let mut tar = tar::Builder::new(w);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    if storage.is_dir() {
        tar.append_dir_all("storage", storage).map_err(io)?;
    }
    let w = tar.into_inner().map_err(io)?;
    let (sha256, size, raw_size, buf) = w.finish().map_err(io)?;
    let mut file = buf.into_inner().map_err(|e| io(e.into_error()))?;
    file.flush().map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(FileEntry {
        name: FILE.into(),
        kind: "storage".into(),
        size,
        sha256,
        raw_size,
    })
}

/// Extract `archive` so that its `storage/` lands at `dest` (which must not
/// exist yet). Returns the number of entries.
pub fn extract(archive: &Path, dest: &Path, key: Option<&Key>) -> Result<u64, BackupError> {
    let io = |e: std::io::Error| {
        BackupError::Io(format!(
            "extracting {} to {}: {e}",
            archive.display(),
            dest.display()
        ))
    };
    let parent = dest
        .parent()
        .ok_or_else(|| BackupError::Io(format!("{} has no parent", dest.display())))?;
    let work = parent.join(format!(
        ".{}.extract",
        dest.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io)?;
    let file = std::fs::File::open(archive).map_err(io)?;
    let mut tar =
        tar::Archive::new(stream::reader(std::io::BufReader::new(file), key).map_err(io)?);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_preserve_mtime(true);
    tar.set_overwrite(false);
    let mut n = 0u64;
    for entry in tar.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        // unpack_in refuses paths that would leave `work` (`..`, absolute).
        if !entry.unpack_in(&work).map_err(io)? {
            return Err(BackupError::Corrupt(format!(
                "{}: entry `{}` would land outside the storage dir",
                archive.display(),
                entry
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )));
        }
        n += 1;
    }
    let got = work.join("storage");
    if got.is_dir() {
        std::fs::rename(&got, dest).map_err(io)?;
    } else {
        std::fs::create_dir_all(dest).map_err(io)?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn storage_round_trips_with_modes_and_nested_dirs() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("storage");
        std::fs::create_dir_all(src.join("app/public")).unwrap();
        std::fs::write(src.join("app/public/a.txt"), b"hello").unwrap();
        std::fs::write(src.join("logs.log"), vec![9u8; 100_000]).unwrap();
        std::fs::set_permissions(src.join("logs.log"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        let out = t.path().join("s.tar.zst");
        let key = Key([3; 32]);
        let entry = write(&src, &out, 3, Some(&key)).unwrap();
        assert_eq!(stream::hash_file(&out).unwrap().0, entry.sha256);
        let dest = t.path().join("restored");
        extract(&out, &dest, Some(&key)).unwrap();
        assert_eq!(
            std::fs::read(dest.join("app/public/a.txt")).unwrap(),
            b"hello"
        );
        let mode = std::fs::metadata(dest.join("logs.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}
