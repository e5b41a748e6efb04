//! Readiness probes: how the supervisor knows a unit is up.
//!
//! Protocol-level where it matters: a MariaDB greeting, a Redis PONG (after
//! AUTH), php-fpm's ping page over FastCGI. Also TCP/unix connect, HTTP, an
//! exec check, and `sd_notify` READY=1 (see [`crate::notify`]).
//! Probes only connect and read; they change nothing.

use crate::config::Readiness;
use crate::notify::NotifyState;
use crate::process::{Command, Launcher};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;

/// One probe attempt must answer within this.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// What an exec probe needs to run like the unit.
#[derive(Clone)]
pub struct ProbeEnv {
    pub launcher: Launcher,
    pub template: Command,
}

/// Poll `readiness` until it passes or `timeout` runs out. Fast at first
/// (restart-to-ready should be well under a second), then gentler. On timeout
/// the error carries the last probe failure, so `status` says *why*.
pub async fn wait_ready(
    readiness: &Readiness,
    env: &ProbeEnv,
    notify: Option<watch::Receiver<NotifyState>>,
    timeout: Duration,
) -> Result<(), String> {
    let too_slow = || format!("not ready within {:.1}s", timeout.as_secs_f64());
    if let (Readiness::Notify, Some(mut rx)) = (readiness, notify) {
        return match tokio::time::timeout(timeout, rx.wait_for(|s| s.ready)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err("notify socket closed".into()),
            Err(_) => Err(format!("{}: no READY=1 on NOTIFY_SOCKET", too_slow())),
        };
    }
    let started = tokio::time::Instant::now();
    loop {
        let last = match tokio::time::timeout(ATTEMPT_TIMEOUT, probe_once(readiness, env)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => format!("probe took longer than {ATTEMPT_TIMEOUT:?}"),
        };
        if started.elapsed() >= timeout {
            return Err(format!("{}: {last}", too_slow()));
        }
        let pause = if started.elapsed() < Duration::from_secs(3) {
            25
        } else {
            250
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// One attempt; `Err` says why it is not ready yet.
pub async fn probe_once(readiness: &Readiness, env: &ProbeEnv) -> Result<(), String> {
    match readiness {
        Readiness::None => Ok(()),
        Readiness::Notify => Err("waiting for READY=1".into()),
        Readiness::Tcp { address } => TcpStream::connect(address)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Readiness::Unix { path } => UnixStream::connect(path)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Readiness::Exec { command, args } => {
            let mut cmd = env.template.clone();
            cmd.program = command.into();
            cmd.args = args.clone();
            cmd.pdeathsig = Some(nix::sys::signal::Signal::SIGKILL);
            let (status, out) = env
                .launcher
                .output(cmd, ATTEMPT_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("{}: {}", status.describe(), out.trim()))
            }
        }
        Readiness::Http { url, status } => http(url, *status).await,
        Readiness::Fastcgi {
            socket,
            path,
            response,
        } => fastcgi_ping(socket, path, response).await,
        Readiness::Mariadb { socket } => mariadb_greeting(socket).await.map(drop),
        Readiness::Redis { socket, password } => redis_ping(socket, password.as_deref()).await,
    }
}

async fn http(url: &str, want: Option<u16>) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    let got = resp.status().as_u16();
    let ok = match want {
        Some(w) => got == w,
        None => resp.status().is_success(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("HTTP status {got}"))
    }
}

/// Send php-fpm's ping request over FastCGI and expect its configured response.
pub async fn fastcgi_ping(socket: &str, path: &str, expect: &str) -> Result<(), String> {
    // The ping page is a few bytes; cap what a confused server can make us hold.
    let body = fastcgi_get(socket, path, "", 64 * 1024, ATTEMPT_TIMEOUT).await?;
    if body.contains(expect) {
        Ok(())
    } else {
        Err(format!("unexpected ping response: {}", body.trim()))
    }
}

/// GET one of php-fpm's own pages (`ping.path`, `pm.status_path`) over
/// FastCGI, without a script on disk: its body, at most `cap` bytes, with
/// `timeout` for the connect and for each read.
pub async fn fastcgi_get(
    socket: &str,
    path: &str,
    query: &str,
    cap: usize,
    timeout: Duration,
) -> Result<String, String> {
    use crate::front::fastcgi::Exchange;
    let param = |name: &str, value: &str| (name.to_owned(), value.as_bytes().to_vec());
    let uri = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let params = [
        param("REQUEST_METHOD", "GET"),
        param("SCRIPT_NAME", path),
        param("SCRIPT_FILENAME", path),
        param("REQUEST_URI", &uri),
        param("DOCUMENT_URI", path),
        param("QUERY_STRING", query),
        param("REMOTE_ADDR", "127.0.0.1"),
        param("REMOTE_PORT", "0"),
        param("SERVER_ADDR", "127.0.0.1"),
        param("SERVER_PORT", "0"),
        param("SERVER_NAME", "applianced-probe"),
        param("SERVER_PROTOCOL", "HTTP/1.1"),
        param("GATEWAY_INTERFACE", "CGI/1.1"),
        param("CONTENT_TYPE", ""),
        param("CONTENT_LENGTH", "0"),
    ];
    let err = |e: crate::front::fastcgi::FcgiError| e.to_string();
    let mut exchange = Exchange::start_without_body(socket.as_ref(), &params, timeout)
        .await
        .map_err(err)?;
    exchange.read_head(timeout).await.map_err(err)?;
    let mut body = Vec::new();
    while body.len() < cap {
        match exchange.read_body(timeout).await.map_err(err)? {
            Some(chunk) => body.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Read the server's first packet: protocol 10 greeting means it accepts
/// clients; an error packet (0xff) carries the reason it does not.
/// Returns the server version string.
pub async fn mariadb_greeting(socket: &str) -> Result<String, String> {
    let mut s = UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await.map_err(|e| e.to_string())?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    if len == 0 || len > 16 * 1024 * 1024 {
        return Err(format!("bad packet length {len}"));
    }
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)
        .await
        .map_err(|e| e.to_string())?;
    match payload[0] {
        10 => {
            let end = payload[1..]
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(payload.len() - 1);
            Ok(String::from_utf8_lossy(&payload[1..1 + end]).into_owned())
        }
        0xff => Err(format!(
            "server refused: {}",
            String::from_utf8_lossy(payload.get(3..).unwrap_or_default())
        )),
        other => Err(format!("unexpected protocol version {other}")),
    }
}

pub(crate) fn resp_command(parts: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        out.extend_from_slice(format!("${}\r\n{p}\r\n", p.len()).as_bytes());
    }
    out
}

/// AUTH (if needed) then PING; a loading or misconfigured server is not ready.
pub async fn redis_ping(socket: &str, password: Option<&str>) -> Result<(), String> {
    let mut s = UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let mut req = Vec::new();
    if let Some(p) = password {
        req.extend(resp_command(&["AUTH", p]));
    }
    req.extend(resp_command(&["PING"]));
    s.write_all(&req).await.map_err(|e| e.to_string())?;
    let want = if password.is_some() {
        "+OK\r\n+PONG\r\n"
    } else {
        "+PONG\r\n"
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want.len() {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let got = String::from_utf8_lossy(&got);
    if got.starts_with(want) {
        Ok(())
    } else {
        Err(format!("redis answered {}", got.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_commands_are_length_prefixed() {
        assert_eq!(resp_command(&["PING"]), b"*1\r\n$4\r\nPING\r\n");
    }

    #[tokio::test]
    async fn unix_probe_fails_until_someone_listens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let r = Readiness::Unix {
            path: p.display().to_string(),
        };
        let env = ProbeEnv {
            launcher: Launcher::start().unwrap(),
            template: Command::default(),
        };
        assert!(probe_once(&r, &env).await.is_err());
        let _l = tokio::net::UnixListener::bind(&p).unwrap();
        assert!(probe_once(&r, &env).await.is_ok());
    }
}
