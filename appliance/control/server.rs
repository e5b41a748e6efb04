//! Serving the control socket. Only root or applianced's own uid may connect.

use super::{Reply, Request};
use crate::backup::Backups;
use crate::daemon::StopAction;
use crate::lifecycle::Lifecycle;
use crate::logs::{self, LogLine};
use crate::scheduler::Scheduler;
use crate::state::RunQuery;
use crate::supervisor::{Appliance, Verb};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

pub struct Server {
    pub appliance: Arc<Appliance>,
    pub scheduler: Arc<Scheduler>,
    pub backups: Arc<Backups>,
    /// `instance add|remove`.
    pub lifecycle: Arc<Lifecycle>,
    pub logs: Arc<logs::LogHub>,
    pub log_keep: u32,
    /// Sending on this asks the daemon to shut down (and what to do then).
    pub shutdown: mpsc::Sender<StopAction>,
    /// PID-1 mode: `reboot` and `poweroff` are allowed.
    pub init: bool,
}

/// Bind the socket; its directory is made 0700 first so there is no window in
/// which another user could connect.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

impl Server {
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.handle(stream).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
        }
    }

    async fn handle(&self, stream: UnixStream) -> std::io::Result<()> {
        let me = nix::unistd::geteuid().as_raw();
        let peer = stream.peer_cred()?.uid();
        let (read, mut write) = stream.into_split();
        if peer != 0 && peer != me {
            return send(
                &mut write,
                &Reply::err(format!(
                    "permission denied: uid {peer} may not control applianced"
                )),
            )
            .await;
        }
        let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let req: Request = match serde_json::from_str(line.trim()) {
            Ok(r) => r,
            Err(e) => return send(&mut write, &Reply::err(format!("bad request: {e}"))).await,
        };
        let a = &self.appliance;
        let reply = match req {
            Request::Status => {
                let mut rows = a.status();
                rows.extend(self.backups.status_rows());
                Reply::ok(rows)
            }
            Request::BackupList { instance, limit } => self
                .backups
                .list(instance, limit)
                .await
                .map(Reply::ok)
                .unwrap_or_else(Reply::err),
            Request::BackupRun { instance } => {
                let b = self.backups.clone();
                return streamed(&mut write, move |p| async move {
                    b.run_now(&instance, "manual", p).await
                })
                .await;
            }
            Request::BackupVerify { id } => {
                let b = self.backups.clone();
                return streamed(&mut write, move |p| async move { b.verify(&id, p).await }).await;
            }
            Request::BackupRestore { instance, id, db } => {
                let b = self.backups.clone();
                return streamed(&mut write, move |p| async move {
                    b.restore(&instance, &id, db.as_deref(), p).await
                })
                .await;
            }
            Request::BackupTestRestore { instance, id } => {
                let b = self.backups.clone();
                return streamed(&mut write, move |p| async move {
                    b.test_restore(&instance, id.as_deref(), "manual", p).await
                })
                .await;
            }
            Request::Instances => Reply::ok(a.instance_summaries()),
            Request::InstanceStop { name } => match a.stop_instance(&name).await {
                Ok(()) => Reply::ok("stopped"),
                Err(e) => Reply::err(e),
            },
            Request::InstanceStart { name } => match a.start_instance(&name).await {
                Ok(()) => Reply::ok("started"),
                Err(e) => Reply::err(e),
            },
            Request::InstanceAdd {
                name,
                domains,
                app_dir,
            } => {
                let l = self.lifecycle.clone();
                let new = crate::config::edit::NewInstance {
                    name,
                    domains,
                    app_dir,
                };
                return streamed(&mut write, move |p| async move { l.add(new, p).await }).await;
            }
            Request::InstanceRemove { name, force } => {
                let l = self.lifecycle.clone();
                return streamed(&mut write, move |p| async move {
                    l.remove(&name, force, p).await
                })
                .await;
            }
            Request::Start { target } => verb(a, Verb::Start, &target).await,
            Request::Stop { target } => verb(a, Verb::Stop, &target).await,
            Request::Restart { target } => verb(a, Verb::Restart, &target).await,
            Request::Scale { target, replicas } => a
                .scale(&target, replicas)
                .await
                .map(Reply::ok)
                .unwrap_or_else(Reply::err),
            Request::ExecSpec { instance } => a
                .exec_spec(&instance)
                .map(Reply::ok)
                .unwrap_or_else(Reply::err),
            Request::Jobs {
                instance,
                entry,
                limit,
            } => self
                .scheduler
                .runs(RunQuery {
                    instance,
                    entry,
                    limit,
                })
                .await
                .map(Reply::ok)
                .unwrap_or_else(Reply::err),
            Request::JobsRun { instance, entry } => self
                .scheduler
                .trigger(&instance, &entry)
                .await
                .map(Reply::ok)
                .unwrap_or_else(Reply::err),
            Request::Shutdown | Request::Poweroff | Request::Reboot => {
                let action = match req {
                    Request::Poweroff => StopAction::Poweroff,
                    Request::Reboot => StopAction::Reboot,
                    _ => StopAction::Exit,
                };
                if action != StopAction::Exit && !self.init {
                    return send(
                        &mut write,
                        &Reply::err(format!(
                            "refusing to {}: applianced is not this machine's init (not PID 1, no `run --init`); `applianced shutdown` stops applianced only",
                            action.as_str()
                        )),
                    )
                    .await;
                }
                let _ = self.shutdown.try_send(action);
                send(&mut write, &Reply::ok("shutting down")).await?;
                // Hold the connection: it closes when the daemon exits, which is
                // how `applianced shutdown` knows the stop is complete.
                std::future::pending::<()>().await;
                return Ok(());
            }
            Request::Logs {
                target,
                lines,
                follow,
                query,
            } => return self.logs(&mut write, &target, lines, follow, &query).await,
        };
        send(&mut write, &reply).await
    }

    async fn logs(
        &self,
        write: &mut (impl AsyncWriteExt + Unpin),
        target: &str,
        n: usize,
        follow: bool,
        query: &logs::LogQuery,
    ) -> std::io::Result<()> {
        let a = &self.appliance;
        // applianced's own events: its own log.
        if target == logs::events::OWN {
            let path = a.layout().own_log();
            let history = logs::query::tail_matching(&path, n, self.log_keep, query);
            for line in &history {
                send(write, &Reply::ok(line)).await?;
            }
            if !follow {
                return Ok(());
            }
            let mut feed = self.logs.subscribe();
            return follow_feed(write, &mut feed, |l| {
                l.stream == "event" && query.matches(l)
            })
            .await;
        }
        // Either one unit or every unit of an instance.
        let units: Vec<(String, String)> = if let Some((i, u)) = target
            .split_once('/')
            .filter(|(_, u)| logs::is_pseudo_unit(u))
        {
            match a.unit_log(i, u) {
                Ok(_) => vec![(i.to_string(), u.to_string())],
                Err(e) => return send(write, &Reply::err(e)).await,
            }
        } else if target.contains('/') {
            match a.resolve(target) {
                Ok((i, u)) => vec![(i.to_string(), u.to_string())],
                Err(e) => return send(write, &Reply::err(e)).await,
            }
        } else {
            let all: Vec<_> = a
                .status()
                .into_iter()
                .filter(|s| s.instance == target)
                .map(|s| (s.instance, s.unit))
                .collect();
            if all.is_empty() {
                return send(write, &Reply::err(format!("unknown instance `{target}`"))).await;
            }
            let mut all = all;
            all.dedup();
            all
        };
        let mut feed = self.logs.subscribe();
        let mut history: Vec<LogLine> = Vec::new();
        for (i, u) in &units {
            if let Ok(path) = a.unit_log(i, u) {
                history.extend(logs::query::tail_matching(&path, n, self.log_keep, query));
            }
        }
        history.sort_by(|x, y| x.ts.cmp(&y.ts));
        let skip = history.len().saturating_sub(n);
        for line in &history[skip..] {
            send(write, &Reply::ok(line)).await?;
        }
        if !follow {
            return Ok(());
        }
        follow_feed(write, &mut feed, |line| {
            line.stream != "event"
                && units
                    .iter()
                    .any(|(i, u)| &line.instance == i && &line.unit == u)
                && query.matches(line)
        })
        .await
    }
}

/// Send the live lines `pick` wants until the client leaves.
async fn follow_feed(
    write: &mut (impl AsyncWriteExt + Unpin),
    feed: &mut tokio::sync::broadcast::Receiver<Arc<logs::LogLine>>,
    pick: impl Fn(&logs::LogLine) -> bool,
) -> std::io::Result<()> {
    loop {
        match feed.recv().await {
            Ok(line) => {
                if pick(&line) {
                    send(write, &Reply::ok(&*line)).await?;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                send(
                    write,
                    &Reply::err(format!("follower fell behind; {k} lines skipped")),
                )
                .await?;
            }
            Err(_) => return Ok(()),
        }
    }
}

/// Run a long operation (a backup, `instance add|remove`) in its own task
/// (it goes on if the client leaves), sending each progress line as
/// `{"progress": LINE}`, then `{"record": ...}` or the error.
async fn streamed<F, Fut, T, E>(
    write: &mut (impl AsyncWriteExt + Unpin),
    op: F,
) -> std::io::Result<()>
where
    F: FnOnce(crate::backup::Progress) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: serde::Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let progress: crate::backup::Progress = Arc::new(move |line: String| {
        let _ = tx.send(line);
    });
    let mut task = tokio::spawn(op(progress));
    let (mut client_gone, mut lines_done) = (false, false);
    loop {
        tokio::select! {
            line = rx.recv(), if !client_gone && !lines_done => match line {
                Some(line) => {
                    if send(write, &Reply::ok(serde_json::json!({ "progress": line }))).await.is_err() {
                        client_gone = true;
                    }
                }
                // The operation dropped its progress sink: it is ending.
                None => lines_done = true,
            },
            done = &mut task => {
                if client_gone {
                    return Ok(());
                }
                while let Ok(line) = rx.try_recv() {
                    send(write, &Reply::ok(serde_json::json!({ "progress": line }))).await?;
                }
                let reply = match done {
                    Ok(Ok(rec)) => Reply::ok(serde_json::json!({ "record": rec })),
                    Ok(Err(e)) => Reply::err(e),
                    Err(e) => Reply::err(format!("internal error: {e}")),
                };
                return send(write, &reply).await;
            }
        }
    }
}

async fn verb(a: &Appliance, v: Verb, target: &str) -> Reply {
    a.apply(v, target)
        .await
        .map(Reply::ok)
        .unwrap_or_else(Reply::err)
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}
