//! The `sd_notify` endpoint applianced serves to its children.
//!
//! Each unit start gets its own datagram socket, passed as `NOTIFY_SOCKET`, so
//! a message's sender is known by the socket it arrives on (no credential
//! checks needed). MariaDB, Redis (`supervised systemd`) and php-fpm speak it.
//! Touches only the socket file it is given.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::net::UnixDatagram;
use tokio::sync::watch;

/// What the child has told us so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyState {
    pub ready: bool,
    pub stopping: bool,
    /// The last `STATUS=` text, shown by `applianced status`.
    pub status: Option<String>,
}

/// A bound notify socket; the file is removed on drop.
pub struct NotifySocket {
    path: PathBuf,
    state: watch::Receiver<NotifyState>,
    task: tokio::task::JoinHandle<()>,
}

impl NotifySocket {
    /// Bind at `path`, readable only by `owner` (uid, gid) and us.
    pub fn bind(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<NotifySocket> {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        let (tx, rx) = watch::channel(NotifyState::default());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                tx.send_modify(|st| apply(st, &text));
            }
        });
        Ok(NotifySocket {
            path: path.to_path_buf(),
            state: rx,
            task,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state(&self) -> watch::Receiver<NotifyState> {
        self.state.clone()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Apply one datagram (newline-separated `KEY=VALUE` assignments).
fn apply(st: &mut NotifyState, text: &str) {
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => st.ready = true,
            Some(("STOPPING", "1")) => st.stopping = true,
            Some(("RELOADING", "1")) => st.ready = false,
            Some(("STATUS", s)) => st.status = Some(s.to_string()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_update_ready_and_status() {
        let mut st = NotifyState::default();
        apply(&mut st, "STATUS=loading\n");
        assert!(!st.ready);
        apply(&mut st, "READY=1\nSTATUS=Taking your SQL requests now...");
        assert!(st.ready);
        assert_eq!(
            st.status.as_deref(),
            Some("Taking your SQL requests now...")
        );
    }

    #[tokio::test]
    async fn a_datagram_from_a_child_marks_ready() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.sock");
        let ns = NotifySocket::bind(&p, None).unwrap();
        let mut rx = ns.state();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1", &p).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(|s| s.ready))
            .await
            .unwrap()
            .unwrap();
    }
}
