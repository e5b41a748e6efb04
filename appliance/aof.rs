//! Repair of the one kind of damage a power cut does to Redis's append-only
//! file on ext4: a tail of NUL bytes. Appending into an already allocated
//! block can have the file's new size committed by the journal before the
//! block's data is written back, so after a cut the file ends in zeros where
//! the last writes were. Redis's own `aof-load-truncated` accepts a cut-off
//! last command but not zeros ("Bad file format"), and then refuses to start
//! at all. Seen in the VM power-cut test (tests/vm.rs).
//!
//! Only a NUL tail is removed: no Redis command contains a bare NUL between
//! commands, so it can only be bytes that were never written. What remains
//! may end in a cut-off command, which Redis drops itself. Any other damage is
//! left for Redis to report. Lost: the writes of the last moments before the
//! cut, which `appendfsync everysec` never promised anyway.
//! Runs as the redis unit's `exec_start_pre` (`applianced repair-aof DIR`);
//! touches only `*.aof` files in that directory.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// What a repair did to one file.
#[derive(Debug, PartialEq, Eq)]
pub struct Trimmed {
    pub file: PathBuf,
    pub nul_bytes: u64,
}

/// Trim the NUL tail of every `*.aof` file in `dir` (Redis 7's
/// `appendonlydir/` with its `.incr.aof` parts, or an older single
/// `appendonly.aof`). A missing dir is nothing to do.
pub fn repair_dir(dir: &Path) -> std::io::Result<Vec<Trimmed>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "aof") && p.is_file())
        .collect();
    files.sort();
    for file in files {
        let nul_bytes = trim_nul_tail(&file)?;
        if nul_bytes > 0 {
            out.push(Trimmed { file, nul_bytes });
        }
    }
    Ok(out)
}

/// Cut `file` after its last non-NUL byte; returns how many bytes went.
pub fn trim_nul_tail(file: &Path) -> std::io::Result<u64> {
    let mut f = OpenOptions::new().read(true).write(true).open(file)?;
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        match chunk.iter().rposition(|&b| b != 0) {
            Some(i) => {
                end = start + i as u64 + 1;
                break;
            }
            None => end = start,
        }
    }
    if end < len {
        f.set_len(end)?;
        f.sync_all()?;
    }
    Ok(len - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_nul_tail_is_cut_and_everything_before_it_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n";
        let damaged = dir.path().join("appendonly.aof.1.incr.aof");
        let mut bytes = cmd.repeat(3000); // past one 64 KiB read
        bytes.extend(std::iter::repeat_n(0u8, 70_000));
        std::fs::write(&damaged, &bytes).unwrap();
        let clean = dir.path().join("appendonly.aof.2.incr.aof");
        std::fs::write(&clean, cmd).unwrap();
        let zeros = dir.path().join("appendonly.aof.3.incr.aof");
        std::fs::write(&zeros, [0u8; 10]).unwrap();
        let other = dir.path().join("appendonly.aof.1.base.rdb");
        std::fs::write(&other, [0u8; 10]).unwrap();

        let done = repair_dir(dir.path()).unwrap();
        assert_eq!(
            done,
            vec![
                Trimmed {
                    file: damaged.clone(),
                    nul_bytes: 70_000
                },
                Trimmed {
                    file: zeros.clone(),
                    nul_bytes: 10
                },
            ]
        );
        assert_eq!(std::fs::read(&damaged).unwrap(), cmd.repeat(3000));
        assert_eq!(std::fs::read(&clean).unwrap(), cmd);
        assert_eq!(std::fs::read(&zeros).unwrap(), b"");
        assert_eq!(
            std::fs::read(&other).unwrap(),
            [0u8; 10],
            "not an .aof file"
        );
        assert!(repair_dir(dir.path()).unwrap().is_empty(), "idempotent");
        assert!(repair_dir(&dir.path().join("missing")).unwrap().is_empty());
    }
}
