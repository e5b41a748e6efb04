//! Readiness probes: how the supervisor knows a unit is up.
//!
//! Protocol-level where it matters: a MariaDB greeting, a Redis PONG (after
//! AUTH), php-fpm's ping page over FastCGI. Also TCP/unix connect, HTTP, an
//! exec check, and `sd_notify` READY=1 (see [`crate::notify`]).
//! Probes only connect and read; they change nothing. The one exception is
//! php-fpm's warm-up ([`warm_up`]): a GET the app itself answers, once per
//! start, when the unit asks for it.

use crate::config::Readiness;
use crate::notify::NotifyState;
use crate::process::{Command, Launcher};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;

/// One probe attempt must answer within this.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a warm-up request may take: past it the unit counts as ready
/// anyway.
const WARM_TIMEOUT: Duration = Duration::from_secs(60);

/// What an exec probe needs to run like the unit.
#[derive(Clone)]
pub struct ProbeEnv {
    pub launcher: Launcher,
    pub template: Command,
}

/// Poll `readiness` until it passes or `timeout` runs out. Fast at first
/// (restart-to-ready should be well under a second), then gentler. On timeout
/// the error carries the last probe failure, so `status` says *why*. The
/// warm-up ([`warm_up`]) is the caller's next step: a unit that starts early
/// waits for what it requires in between.
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
        Readiness::Listen { address } => listening(address),
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
            ..
        } => fastcgi_ping(socket, path, response).await,
        Readiness::Mariadb { socket } => mariadb_greeting(socket).await.map(drop),
        Readiness::Redis { socket, password } => redis_ping(socket, password.as_deref()).await,
    }
}

/// `Ok` when the kernel's TCP tables show a socket listening on `address`.
fn listening(address: &str) -> Result<(), String> {
    let want: std::net::SocketAddr = address
        .parse()
        .map_err(|_| format!("`{address}` is not IP:PORT"))?;
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    if listening_in(&read("/proc/net/tcp"), &read("/proc/net/tcp6"), want) {
        Ok(())
    } else {
        Err(format!("nothing listens on {address} yet"))
    }
}

/// Whether the tables (the text of /proc/net/tcp and /proc/net/tcp6) hold a
/// listener (state `0A`) that takes connections to `want`: the same port on
/// the same IP, or on the wildcard (`0.0.0.0`, or `::`, which takes IPv4
/// too unless the socket is v6-only: the table does not say, so it counts).
/// Addresses are the kernel's 32-bit words in host order; this host order
/// is little-endian (x86-64, arm64).
pub fn listening_in(tcp: &str, tcp6: &str, want: std::net::SocketAddr) -> bool {
    use std::net::IpAddr;
    // 8 hex digits per 32-bit word, each word's bytes in host (little-endian) order.
    let parse_ip = |hex: &str| -> Option<IpAddr> {
        let mut bytes = Vec::with_capacity(16);
        for i in (0..hex.len()).step_by(8) {
            bytes.extend(
                u32::from_str_radix(hex.get(i..i + 8)?, 16)
                    .ok()?
                    .to_le_bytes(),
            );
        }
        match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
            _ => None,
        }
    };
    tcp.lines().chain(tcp6.lines()).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (f.get(1), f.get(3)) else {
            return false;
        };
        let Some((ip, port)) = local.split_once(':') else {
            return false;
        };
        if *state != "0A" || u16::from_str_radix(port, 16).ok() != Some(want.port()) {
            return false;
        }
        match parse_ip(ip) {
            Some(ip) if ip == want.ip() => true,
            Some(ip) if ip.is_unspecified() => ip.is_ipv6() || want.is_ipv4(),
            Some(IpAddr::V6(v6)) => {
                matches!(want.ip(), IpAddr::V4(v4) if v6.to_ipv4_mapped() == Some(v4))
            }
            _ => false,
        }
    })
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

/// php-fpm answered its ping (and, for a unit that starts early, what it
/// requires is ready): when the unit asks for it, send the app one
/// request of its own, through its front controller, and wait for the
/// answer. A new php-fpm compiles the app on its first request; done here,
/// alone, it has the machine to itself, and what follows (the front end's
/// first clients, queue workers ordered after php-fpm) loads compiled
/// scripts. Measured on a 2-vCPU VM's first boot: the first client's answer
/// came 8 s after php-fpm was up with 8 queue workers compiling beside it.
/// Never fails the unit: the note says what happened. `early`: the page
/// asked as soon as php-fpm answers (it reads no backend), else the one
/// asked once they are ready.
pub async fn warm_up(readiness: &Readiness, early: bool) -> Option<String> {
    let Readiness::Fastcgi {
        socket,
        warm_script: Some(script),
        warm_uri,
        warm_early_uri,
        ..
    } = readiness
    else {
        return None;
    };
    let warm_uri = if early { warm_early_uri } else { warm_uri };
    if warm_uri.is_empty() {
        return None;
    }
    let script_path = std::path::Path::new(script);
    if !script_path.is_file() {
        return Some(format!("no warm-up: {script} is not a file"));
    }
    let root = script_path
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let (path, query) = warm_uri.split_once('?').unwrap_or((warm_uri, ""));
    let name = script_path
        .file_name()
        .map(|n| format!("/{}", n.to_string_lossy()))
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let params = [
        ("SCRIPT_FILENAME", script.as_str()),
        ("SCRIPT_NAME", &name),
        ("DOCUMENT_ROOT", &root),
        ("REQUEST_URI", warm_uri),
        ("DOCUMENT_URI", &name),
        ("QUERY_STRING", query),
        ("HTTP_HOST", "localhost"),
        ("HTTP_USER_AGENT", "applianced-warm-up"),
        ("SERVER_NAME", "localhost"),
    ];
    let get = fastcgi_get(socket, &params, 1 << 20, WARM_TIMEOUT);
    match tokio::time::timeout(WARM_TIMEOUT, get).await {
        Ok(Ok((status, _))) => Some(format!(
            "warmed the app: GET {path} -> {status} in {} ms",
            started.elapsed().as_millis()
        )),
        Ok(Err(e)) => Some(format!("warm-up GET {path} failed: {e}")),
        Err(_) => Some(format!(
            "warm-up GET {path} gave up after {} s",
            WARM_TIMEOUT.as_secs()
        )),
    }
}

/// Send php-fpm's ping request over FastCGI and expect its configured response.
pub async fn fastcgi_ping(socket: &str, path: &str, expect: &str) -> Result<(), String> {
    // The ping page is a few bytes; cap what a confused server can make us hold.
    let body = php_fpm_page(socket, path, "", 64 * 1024, ATTEMPT_TIMEOUT).await?;
    if body.contains(expect) {
        Ok(())
    } else {
        Err(format!("unexpected ping response: {}", body.trim()))
    }
}

/// GET one of php-fpm's own pages (`ping.path`, `pm.status_path`), which
/// have no script on disk: its body, at most `cap` bytes.
pub async fn php_fpm_page(
    socket: &str,
    path: &str,
    query: &str,
    cap: usize,
    timeout: Duration,
) -> Result<String, String> {
    let uri = match query {
        "" => path.to_string(),
        q => format!("{path}?{q}"),
    };
    let vars = [
        ("SCRIPT_NAME", path),
        ("SCRIPT_FILENAME", path),
        ("REQUEST_URI", &uri),
        ("DOCUMENT_URI", path),
        ("QUERY_STRING", query),
        ("SERVER_NAME", "applianced-probe"),
    ];
    Ok(fastcgi_get(socket, &vars, cap, timeout).await?.1)
}

/// A GET over FastCGI with the CGI variables in `vars` (script, URI, names)
/// on top of a request from 127.0.0.1 with no body: its status and body (at
/// most `cap` bytes), with `timeout` for the connect and for each read.
pub async fn fastcgi_get(
    socket: &str,
    vars: &[(&str, &str)],
    cap: usize,
    timeout: Duration,
) -> Result<(u16, String), String> {
    use crate::front::fastcgi::Exchange;
    let base = [
        ("REQUEST_METHOD", "GET"),
        ("QUERY_STRING", ""),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "0"),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", "0"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("CONTENT_TYPE", ""),
        ("CONTENT_LENGTH", "0"),
    ];
    // `vars` win over the base set (php-fpm takes the last of a repeated name,
    // but say it once).
    let params: Vec<(String, Vec<u8>)> = base
        .iter()
        .filter(|(k, _)| !vars.iter().any(|(v, _)| v == k))
        .chain(vars)
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    let err = |e: crate::front::fastcgi::FcgiError| e.to_string();
    let mut exchange = Exchange::start_without_body(socket.as_ref(), &params, timeout)
        .await
        .map_err(err)?;
    let head = exchange.read_head(timeout).await.map_err(err)?;
    let mut body = Vec::new();
    while body.len() < cap {
        match exchange.read_body(timeout).await.map_err(err)? {
            Some(chunk) => body.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok((head.status, String::from_utf8_lossy(&body).into_owned()))
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

    /// Lines as the kernel prints them: sshd on 0.0.0.0:22 and [::]:22,
    /// MariaDB's old port on 127.0.0.1:3306, a connection (state 01) to :80.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   100        0 2 1 0 100 0 0 10 0
   2: 0F02000A:0050 0202000A:D0A4 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
";
    const TCP6: &str =
        "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A
";

    #[test]
    fn a_listener_is_found_by_port_on_its_address_or_the_wildcard_and_a_connection_is_not_one() {
        let at = |a: &str| listening_in(TCP, TCP6, a.parse().unwrap());
        assert!(at("127.0.0.1:22"), "0.0.0.0:22 takes loopback");
        assert!(at("[::1]:22"), ":::22 takes ::1");
        assert!(at("127.0.0.1:3306"));
        assert!(!at("10.0.2.15:3306"), "3306 listens on loopback only");
        assert!(at("[::1]:8080"), "::1 listens on 8080");
        assert!(!at("127.0.0.1:8080"), "a v6 loopback socket is not v4");
        assert!(
            !at("10.0.2.15:80"),
            "an established connection is no listener"
        );
        assert!(!listening_in("", "", "127.0.0.1:22".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_listen_probe_passes_once_a_socket_listens_without_connecting_to_it() {
        let env = ProbeEnv {
            launcher: Launcher::start().unwrap(),
            template: Command::default(),
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = l.local_addr().unwrap().to_string();
        let r = Readiness::Listen {
            address: address.clone(),
        };
        assert!(probe_once(&r, &env).await.is_ok(), "{address}");
        l.set_nonblocking(true).unwrap();
        assert!(l.accept().is_err(), "the probe connected");
        drop(l);
        let e = probe_once(&r, &env).await.unwrap_err();
        assert!(e.contains("nothing listens on"), "{e}");
    }
}
