//! A bounded in-memory copy of small static files, with their ready-made
//! header values. A cached file costs the site lookup's one `lstat` and a hash
//! probe: no open, fstat, read or close, and no header formatting. On this
//! project's 2-core hosts those four syscalls and the formatting were about a
//! third of a 4 KiB static request's CPU (see docs/architecture.md).
//!
//! An entry is served only while the metadata the lookup has just read names
//! the same file in the same state: device, inode, size, and mtime and ctime to
//! the nanosecond. Any write, truncate, chmod or rename-over changes the ctime
//! or the inode, so the entry stops matching and the file is read again. One
//! gap remains: the kernel stamps times from a coarse clock, so two writes
//! within one tick can leave ctime unchanged. A file changed less than
//! [`SETTLE`] before it is read is therefore never cached (git's "racily
//! clean" rule).
//!
//! Memory: at most the configured capacity, counting each entry's bytes plus
//! [`ENTRY_OVERHEAD`]; when full, arbitrary entries are evicted until the new
//! one fits. The cache itself touches no file: [`super::prepare_with`] fills it
//! from the file it has opened and checked.

use super::Validators;
use bytes::Bytes;
use http::HeaderValue;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Files larger than this are never cached (they are streamed anyway).
pub const MAX_FILE: u64 = 64 * 1024;
/// A file must have been left alone this long before it is cached.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Charged per entry on top of its bytes: key, header values, map slot.
pub const ENTRY_OVERHEAD: usize = 256;

/// The small-file cache shared by every site of one front end (keys are
/// absolute paths, so sites never collide).
pub struct SmallFiles {
    capacity: usize,
    /// [`SETTLE`]; shorter in tests.
    settle: Duration,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Box<[u8]>, Arc<Cached>>,
    /// Sum of the entries' charges.
    used: usize,
}

/// One cached file: its bytes and what the response says about them.
pub(super) struct Cached {
    id: Identity,
    pub body: Bytes,
    pub validators: Validators,
    pub content_type: HeaderValue,
}

impl Cached {
    pub(super) fn new(
        meta: &Metadata,
        body: Bytes,
        validators: Validators,
        content_type: HeaderValue,
    ) -> Cached {
        Cached {
            id: Identity::of(meta),
            body,
            validators,
            content_type,
        }
    }

    fn charge(&self) -> usize {
        self.body.len() + ENTRY_OVERHEAD
    }
}

/// What must not have changed for an entry to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(m: &Metadata) -> Identity {
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Whether two stats of one open file, before and after reading it, show
/// the same file in the same state.
pub(super) fn unchanged(before: &Metadata, after: &Metadata) -> bool {
    Identity::of(before) == Identity::of(after)
}

impl SmallFiles {
    /// A cache of at most `capacity` bytes; 0 caches nothing.
    pub fn new(capacity: usize) -> SmallFiles {
        SmallFiles::with_settle(capacity, SETTLE)
    }

    /// A cache that takes files left alone for `settle` (tests use 0).
    pub fn with_settle(capacity: usize, settle: Duration) -> SmallFiles {
        SmallFiles {
            capacity,
            settle,
            inner: RwLock::new(Inner::default()),
        }
    }

    /// Whether the file `meta` describes (just opened) should be read into
    /// the cache: small enough, and last changed at least the settle time
    /// before `now`.
    pub(super) fn takes(&self, meta: &Metadata, now: SystemTime) -> bool {
        let id = Identity::of(meta);
        let at = |(s, ns): (i64, i64)| {
            let ns = u32::try_from(ns).unwrap_or(0);
            u64::try_from(s).map_or(UNIX_EPOCH, |s| UNIX_EPOCH + Duration::new(s, ns))
        };
        let changed = at(id.mtime).max(at(id.ctime));
        id.len <= MAX_FILE
            && (id.len as usize) + ENTRY_OVERHEAD <= self.capacity
            && now
                .duration_since(changed)
                .is_ok_and(|age| age >= self.settle)
    }

    /// The entry for `path` if `meta` (just read) still describes it.
    pub(super) fn get(&self, path: &Path, meta: &Metadata) -> Option<Arc<Cached>> {
        if self.capacity == 0 {
            return None;
        }
        let hit = self.inner.read().map.get(key(path)).cloned()?;
        (hit.id == Identity::of(meta)).then_some(hit)
    }

    /// Keep `entry` for `path` (replacing any older one), evicting others as
    /// needed; returns it for the caller to serve.
    pub(super) fn put(&self, path: &Path, entry: Cached) -> Arc<Cached> {
        let entry = Arc::new(entry);
        let charge = entry.charge();
        if charge > self.capacity {
            return entry;
        }
        let mut inner = self.inner.write();
        if let Some(old) = inner.map.remove(key(path)) {
            inner.used -= old.charge();
        }
        while inner.used + charge > self.capacity {
            let Some(victim) = inner.map.keys().next().cloned() else {
                break;
            };
            if let Some(old) = inner.map.remove(&victim) {
                inner.used -= old.charge();
            }
        }
        inner.used += charge;
        inner.map.insert(key(path).into(), entry.clone());
        entry
    }

    /// Entries and charged bytes, for tests and metrics.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.read();
        (inner.map.len(), inner.used)
    }
}

fn key(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}
