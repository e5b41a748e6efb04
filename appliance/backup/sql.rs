//! Talking to an instance's MariaDB as root over its unix socket (socket
//! authentication: applianced is root), through the real `mariadb` and
//! `mariadb-dump` clients started by the [`Launcher`] (the single reaper).

use super::BackupError;
use crate::plan::{CHILD_PATH, find_program};
use crate::process::{Child, Command, Launcher};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

pub fn program(name: &str) -> Result<PathBuf, BackupError> {
    find_program(name).ok_or_else(|| {
        BackupError::Tool(format!(
            "`{name}` not found in PATH; install it (apt-get install mariadb-client mariadb-server)"
        ))
    })
}

/// Backtick-quote an identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Single-quote a string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A command for `program` as root with only PATH in its environment.
pub fn command(program: PathBuf, args: Vec<String>) -> Command {
    Command {
        program,
        args,
        env: BTreeMap::from([
            ("PATH".to_string(), CHILD_PATH.to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ]),
        capture: true,
        pdeathsig: Some(Signal::SIGTERM),
        ..Command::default()
    }
}

/// `mariadb` client arguments for `socket`, batch mode, no column names.
pub fn client_args(socket: &Path) -> Vec<String> {
    vec![
        "--no-defaults".into(),
        "--user=root".into(),
        format!("--socket={}", socket.display()),
        "--batch".into(),
        "--skip-column-names".into(),
        "--unbuffered".into(),
        "--default-character-set=utf8mb4".into(),
    ]
}

/// Read a child's pipe to the end.
pub async fn read_pipe(fd: Option<OwnedFd>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(fd) = fd {
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?
            .read_to_end(&mut buf)
            .await?;
    }
    Ok(buf)
}

/// Read a child's pipe to the end, keeping the last `max` bytes.
pub async fn read_tail(fd: Option<OwnedFd>, max: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    let Some(fd) = fd else { return buf };
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return buf;
    };
    let mut chunk = [0u8; 8192];
    while let Ok(n) = rx.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > max {
            buf.drain(..buf.len() - max);
        }
    }
    buf
}

/// Wait for a child's exit; on timeout kill its group.
pub async fn wait(child: &mut Child, timeout: Duration, what: &str) -> Result<(), BackupError> {
    let pid = child.pid;
    match tokio::time::timeout(timeout, &mut child.exit).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(BackupError::Tool(format!("{what}: {}", status.describe()))),
        Ok(Err(_)) => Err(BackupError::Tool(format!("{what}: exit status lost"))),
        Err(_) => {
            crate::process::signal_group(pid, Signal::SIGKILL);
            Err(BackupError::Tool(format!(
                "{what}: timed out after {timeout:?}"
            )))
        }
    }
}

/// Run one SQL text, returning the rows (tab-separated columns).
pub async fn query(
    launcher: &Launcher,
    socket: &Path,
    sql: &str,
) -> Result<Vec<Vec<String>>, BackupError> {
    let mut args = client_args(socket);
    args.push(format!("--execute={sql}"));
    let mut child = launcher
        .spawn(command(program("mariadb")?, args))
        .await
        .map_err(|e| BackupError::Tool(format!("mariadb: {e}")))?;
    let (out, err) = tokio::join!(
        read_tail(child.stdout.take(), usize::MAX),
        read_tail(child.stderr.take(), 8192)
    );
    let short: String = sql.chars().take(80).collect();
    wait(&mut child, Duration::from_secs(600), "mariadb")
        .await
        .map_err(|e| {
            BackupError::Sql(format!(
                "`{short}`: {e}: {}",
                String::from_utf8_lossy(&err).trim()
            ))
        })?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect())
}

/// A pipe for a child's stdin: `(read end for the child, write end for us)`.
pub fn stdin_pipe() -> Result<(Arc<OwnedFd>, std::fs::File), BackupError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| BackupError::Tool(format!("pipe: {e}")))?;
    Ok((Arc::new(r), std::fs::File::from(w)))
}

/// [`load`] from a blocking thread, `source` run on it: `mariadb [DB]
/// EXTRA...` with what `source` writes on its stdin (`extra` may hold `-e` with a `LOAD
/// DATA LOCAL INFILE '/dev/stdin'`); `rt` runs the client. Returns the bytes
/// fed once the client has exited successfully.
pub fn load_blocking(
    rt: &tokio::runtime::Handle,
    launcher: &Launcher,
    socket: &Path,
    database: Option<&str>,
    extra: &[String],
    source: &mut dyn FnMut(&mut std::fs::File) -> std::io::Result<u64>,
) -> Result<u64, BackupError> {
    let mut args = client_args(socket);
    args.push("--max-allowed-packet=1G".into());
    if let Some(db) = database {
        args.push(format!("--database={db}"));
    }
    args.extend(extra.iter().cloned());
    let (read_end, mut write_end) = stdin_pipe()?;
    let mut cmd = command(program("mariadb")?, args);
    cmd.stdin = Some(read_end);
    let mut child = rt
        .block_on(launcher.spawn(cmd))
        .map_err(|e| BackupError::Tool(format!("mariadb: {e}")))?;
    let out = rt.spawn(read_tail(child.stdout.take(), 4096));
    let err = rt.spawn(read_tail(child.stderr.take(), 8192));
    let fed = source(&mut write_end);
    drop(write_end);
    let what = format!("loading into {}", database.unwrap_or("the server"));
    let status = rt.block_on(wait(&mut child, Duration::from_secs(24 * 3600), &what));
    let (out, err) = rt.block_on(async { (out.await, err.await) });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.unwrap_or_default()).trim(),
        String::from_utf8_lossy(&err.unwrap_or_default()).trim()
    );
    status.map_err(|e| BackupError::Sql(format!("{e}: {text}")))?;
    fed.map_err(|e| BackupError::Sql(format!("{what}: {e}: {text}")))
}

/// What feeds a client's stdin: writes everything, returns the byte count.
pub type Feed = Box<dyn FnOnce(&mut std::fs::File) -> std::io::Result<u64> + Send>;

/// Feed `source` into `mariadb [DB]` (blocking writes on a blocking thread);
/// returns once the client has exited successfully.
pub async fn load(
    launcher: &Launcher,
    socket: &Path,
    database: Option<&str>,
    source: Feed,
) -> Result<u64, BackupError> {
    let mut args = client_args(socket);
    args.push("--max-allowed-packet=1G".into());
    if let Some(db) = database {
        args.push(format!("--database={db}"));
    }
    let (read_end, mut write_end) = stdin_pipe()?;
    let mut cmd = command(program("mariadb")?, args);
    cmd.stdin = Some(read_end);
    let mut child = launcher
        .spawn(cmd)
        .await
        .map_err(|e| BackupError::Tool(format!("mariadb: {e}")))?;
    let feeder = tokio::task::spawn_blocking(move || {
        let r = source(&mut write_end);
        drop(write_end);
        r
    });
    let (out, err) = tokio::join!(
        read_tail(child.stdout.take(), 4096),
        read_tail(child.stderr.take(), 8192)
    );
    let fed = feeder
        .await
        .map_err(|e| BackupError::Tool(format!("loader: {e}")))?;
    let what = format!("loading into {}", database.unwrap_or("the server"));
    let status = wait(&mut child, Duration::from_secs(24 * 3600), &what).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out).trim(),
        String::from_utf8_lossy(&err).trim()
    );
    status.map_err(|e| BackupError::Sql(format!("{e}: {text}")))?;
    // A write error after the client exited 0 is still a failed load.
    fed.map_err(|e| BackupError::Sql(format!("{what}: {e}: {text}")))
}

/// Read a whole small file through the stored-file pipeline (for users.sql).
pub fn read_all(mut r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.read_to_end(&mut v)?;
    Ok(v)
}

/// A long-lived `mariadb` session fed line by line: used to hold a read
/// lock while a dump takes its snapshot.
pub struct Session {
    child: Child,
    stdin: Option<std::fs::File>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::pipe::Receiver>>,
    stderr: Option<tokio::task::JoinHandle<Vec<u8>>>,
}

impl Session {
    pub async fn open(launcher: &Launcher, socket: &Path) -> Result<Session, BackupError> {
        let (read_end, write_end) = stdin_pipe()?;
        let mut cmd = command(program("mariadb")?, client_args(socket));
        cmd.stdin = Some(read_end);
        let mut child = launcher
            .spawn(cmd)
            .await
            .map_err(|e| BackupError::Tool(format!("mariadb: {e}")))?;
        let out = child.stdout.take().expect("captured");
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(out)
            .map_err(|e| BackupError::Tool(format!("mariadb session: {e}")))?;
        let err = child.stderr.take();
        Ok(Session {
            child,
            stdin: Some(write_end),
            lines: tokio::io::BufReader::new(rx).lines(),
            stderr: Some(tokio::spawn(read_tail(err, 8192))),
        })
    }

    /// Send statements, then read rows until the marker row; returns the rows.
    pub async fn run(&mut self, sql: &str) -> Result<Vec<Vec<String>>, BackupError> {
        use std::io::Write;
        const MARK: &str = "--applianced-done--";
        let text = format!("{sql}\nSELECT '{MARK}';\n");
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| BackupError::Sql("session closed".into()))?;
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| BackupError::Sql(format!("mariadb session: {e}")))?;
        let mut rows = Vec::new();
        loop {
            match self.lines.next_line().await {
                Ok(Some(l)) if l == MARK => return Ok(rows),
                Ok(Some(l)) => rows.push(l.split('\t').map(str::to_string).collect()),
                _ => {
                    let err = match self.stderr.take() {
                        Some(h) => h.await.unwrap_or_default(),
                        None => Vec::new(),
                    };
                    return Err(BackupError::Sql(format!(
                        "mariadb session ended: {}",
                        String::from_utf8_lossy(&err).trim()
                    )));
                }
            }
        }
    }

    /// Close stdin (ending the session and releasing its locks) and wait.
    pub async fn close(mut self) -> Result<(), BackupError> {
        self.stdin.take();
        while let Ok(Some(_)) = self.lines.next_line().await {}
        wait(&mut self.child, Duration::from_secs(60), "mariadb session").await
    }
}
