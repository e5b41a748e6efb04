//! What a child gets between fork and exec, before it runs any code of its
//! own: its instance's cgroup, an optional private `/tmp`, then its user.
//! Shared by the launcher (units, cron runs) and the CLI's `exec`, so every
//! program of an instance is confined the same way.
//!
//! Touches, in the child only: its cgroup membership, its mount namespace,
//! its credentials.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Prepared in the parent (allocations, opens); applied in the child.
#[derive(Debug)]
pub struct ChildSetup {
    /// The leaf's `cgroup.procs`, opened by the parent (as root): the kernel
    /// checks a cgroup move against the credentials the file was opened with
    /// (Linux 5.16+). Opened O_CLOEXEC, so the program never sees it.
    procs: Option<File>,
    tmp: Option<CString>,
    identity: Option<(u32, u32)>,
}

impl ChildSetup {
    pub fn prepare(
        cgroup: Option<&Path>,
        private_tmp: Option<&Path>,
        identity: Option<(u32, u32)>,
    ) -> io::Result<ChildSetup> {
        let procs = match cgroup {
            Some(dir) => Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("cgroup {}: {e}", dir.display()))
                    })?,
            ),
            None => None,
        };
        let tmp = match private_tmp {
            Some(dir) => Some(
                CString::new(dir.as_os_str().as_encoded_bytes())
                    .map_err(|_| io::Error::other("private tmp path has a NUL byte"))?,
            ),
            None => None,
        };
        Ok(ChildSetup {
            procs,
            tmp,
            identity,
        })
    }

    /// Join the cgroup, bind the private `/tmp` in a new mount namespace,
    /// then drop to the identity (supplementary groups cleared). Root-only
    /// steps come first, credentials last.
    ///
    /// # Safety
    /// Call only in a forked child before exec: it changes the calling
    /// process's cgroup, namespace and credentials. It makes only
    /// async-signal-safe calls (write, unshare, mount, setgroups, setgid,
    /// setuid) and allocates nothing.
    pub unsafe fn apply(&self) -> io::Result<()> {
        // SAFETY (each call below): plain syscalls on pointers to memory that
        // lives as long as `self` (static C strings, the prepared CString).
        unsafe {
            if let Some(f) = &self.procs {
                if libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(tmp) = &self.tmp {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // Our mounts must not propagate back to the host's namespace.
                if libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                    || libc::mount(
                        tmp.as_ptr(),
                        c"/tmp".as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((uid, gid)) = self.identity {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}
