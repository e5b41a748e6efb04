//! Running the OS tools PID-1 mode needs (blkid, ip, modprobe, sfdisk,
//! partx) synchronously, with a timeout, before the supervisor's reaper
//! exists. Only init/ calls this, and only while no `waitpid(-1)` loop runs
//! (early boot, and after the runtime is gone), so waiting on our own child
//! cannot race the reaper. Touches nothing but the processes it starts.

use crate::plan::{CHILD_PATH, find_program};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("`{0}` not found in {CHILD_PATH}")]
    Missing(String),
    #[error("{program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} timed out after {secs} s")]
    Timeout { program: String, secs: u64 },
    #[error("{program} {args}: exit {code}: {output}")]
    Failed {
        program: String,
        args: String,
        code: i32,
        output: String,
    },
}

/// What a finished tool printed, and its exit code (-1: killed by a signal).
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// Run `program args...` to its end (killed after `timeout`); any exit code.
pub fn run(program: &str, args: &[&str], timeout: Duration) -> Result<Output, ToolError> {
    run_with_input(program, args, b"", timeout)
}

/// [`run`] with `input` on the tool's stdin (a script for sfdisk).
pub fn run_with_input(
    program: &str,
    args: &[&str],
    input: &[u8],
    timeout: Duration,
) -> Result<Output, ToolError> {
    let mut child = spawn(program, args, Stdio::piped)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A few bytes: they fit the pipe, so this cannot block. A tool that
        // exited without reading them shows in its exit code.
        let _ = std::io::Write::write_all(&mut stdin, input);
    }
    // Drain both pipes on threads so a chatty tool cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(st) => Ok(Output {
            code: st.code().unwrap_or(-1),
            stdout,
            stderr,
        }),
        None => Err(ToolError::Timeout {
            program: program.into(),
            secs: timeout.as_secs(),
        }),
    }
}

/// Start `program args...` and do not wait for it: it is collected later by
/// the supervisor's reaper (as PID 1 every exited child is), or stays a zombie
/// until that reaper runs. For slow work nothing in the boot depends on.
pub fn spawn_detached(program: &str, args: &[&str]) -> Result<u32, ToolError> {
    // Dropping a std Child neither waits for nor kills the process.
    Ok(spawn(program, args, Stdio::null)?.id())
}

/// `program` from [`CHILD_PATH`] with a clean environment; stdin, stdout and
/// stderr from `io` (stdin is closed at once when it is a pipe no one writes).
fn spawn(
    program: &str,
    args: &[&str],
    io: fn() -> Stdio,
) -> Result<std::process::Child, ToolError> {
    let path = find_program(program).ok_or_else(|| ToolError::Missing(program.into()))?;
    Command::new(&path)
        .args(args)
        .env_clear()
        .env("PATH", CHILD_PATH)
        .env("LANG", "C.UTF-8")
        .stdin(io())
        .stdout(io())
        .stderr(io())
        .spawn()
        .map_err(|source| ToolError::Spawn {
            program: program.into(),
            source,
        })
}

/// [`run`], and a non-zero exit is an error carrying the tool's output.
pub fn check(program: &str, args: &[&str], timeout: Duration) -> Result<Output, ToolError> {
    check_with_input(program, args, b"", timeout)
}

/// [`run_with_input`], and a non-zero exit is an error carrying the tool's output.
pub fn check_with_input(
    program: &str,
    args: &[&str],
    input: &[u8],
    timeout: Duration,
) -> Result<Output, ToolError> {
    let o = run_with_input(program, args, input, timeout)?;
    if o.ok() {
        return Ok(o);
    }
    Err(ToolError::Failed {
        program: program.into(),
        args: args.join(" "),
        code: o.code,
        output: format!("{}{}", o.stdout, o.stderr).trim().to_string(),
    })
}
