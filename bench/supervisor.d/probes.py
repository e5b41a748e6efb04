"""Read-only probes and /proc helpers for bench/supervisor (stdlib only).

The same functions probe the programs under applianced and under supervisord.
Every socket operation has a timeout; failures return None/False, never raise.
"""

import json
import os
import socket
import struct

TIMEOUT = 1.0


def _connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect(path)
    except OSError:
        s.close()
        raise
    return s


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


# ---------------------------------------------------------------- MariaDB


def mariadb_ready(path):
    """The server's first packet is a protocol-10 greeting (not an error packet)."""
    try:
        with _connect(path) as s:
            header = _recv_exact(s, 4)
            n = int.from_bytes(header[:3], "little")
            if not 0 < n < 1 << 20:
                return False
            return _recv_exact(s, n)[0] == 10
    except OSError:
        return False


# ---------------------------------------------------------------- Redis


def _resp(*parts):
    out = f"*{len(parts)}\r\n".encode()
    for p in parts:
        b = p.encode()
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    return out


def redis_pid(path, password):
    """AUTH + PING must answer +OK +PONG; then INFO server. Returns the server's
    process_id, or None when it is not ready."""
    if password is None:
        return None
    try:
        with _connect(path) as s:
            s.sendall(_resp("AUTH", password) + _resp("PING") + _resp("INFO", "server"))
            want = b"+OK\r\n+PONG\r\n"
            buf = b""
            while b"\r\n" not in buf[len(want):]:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                buf += chunk
                if len(buf) >= len(want) and not buf.startswith(want):
                    return None
            head, rest = buf[len(want):].split(b"\r\n", 1)
            if not head.startswith(b"$"):
                return None
            n = int(head[1:])
            while len(rest) < n:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                rest += chunk
            for line in rest[:n].decode(errors="replace").splitlines():
                if line.startswith("process_id:"):
                    return int(line.split(":", 1)[1])
            return None
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- FastCGI (php-fpm)


def _fcgi_record(rtype, content, rid=1):
    return struct.pack("!BBHHBx", 1, rtype, rid, len(content), 0) + content


def _fcgi_len(n):
    return bytes([n]) if n < 128 else struct.pack("!I", n | 0x80000000)


def fcgi_get(path, uri, query=""):
    """One FastCGI GET; returns (headers, body) bytes or None."""
    params = {
        "GATEWAY_INTERFACE": "CGI/1.1", "REQUEST_METHOD": "GET", "SCRIPT_NAME": uri,
        "SCRIPT_FILENAME": uri, "REQUEST_URI": uri + ("?" + query if query else ""),
        "DOCUMENT_URI": uri, "QUERY_STRING": query, "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "bench", "SERVER_ADDR": "127.0.0.1", "SERVER_PORT": "0",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "0", "CONTENT_TYPE": "",
        "CONTENT_LENGTH": "0",
    }
    enc = b"".join(_fcgi_len(len(k)) + _fcgi_len(len(v.encode())) + k.encode() + v.encode()
                   for k, v in params.items())
    req = (_fcgi_record(1, struct.pack("!HB5x", 1, 0))  # BEGIN_REQUEST, responder
           + _fcgi_record(4, enc) + _fcgi_record(4, b"")  # PARAMS
           + _fcgi_record(5, b""))  # STDIN
    try:
        with _connect(path) as s:
            s.sendall(req)
            out = b""
            while True:
                _ver, rtype, _rid, clen, plen = struct.unpack("!BBHHBx", _recv_exact(s, 8))
                content = _recv_exact(s, clen + plen)[:clen]
                if rtype == 6:  # STDOUT
                    out += content
                elif rtype == 3:  # END_REQUEST
                    break
    except (OSError, struct.error):
        return None
    head, _, body = out.partition(b"\r\n\r\n")
    return head, body


def fpm_pong(path):
    r = fcgi_get(path, "/fpm-ping")
    return r is not None and r[1].strip() == b"pong"


def fpm_worker_pids(path):
    """Pids of the pool's processes according to the answering php-fpm (its
    status page), or None when it does not answer."""
    r = fcgi_get(path, "/fpm-status", "json&full")
    if r is None:
        return None
    try:
        return [int(p["pid"]) for p in json.loads(r[1])["processes"]]
    except (ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- /proc


def _stat(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()  # [state, ppid, pgrp, ...]


def state(pid):
    st = _stat(pid)
    return st[0] if st else None


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def children(ppid):
    out = []
    for pid in all_pids():
        st = _stat(pid)
        if st and int(st[1]) == ppid and st[0] != "Z":
            out.append(pid)
    return out


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0")[:-1]]


def environ(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = [e.decode() for e in f.read().split(b"\0") if b"=" in e]
    return dict(e.split("=", 1) for e in items)


def vmrss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _mentions(pid, needle):
    # redis-server and php-fpm overwrite argv/environ with a process title, so
    # the environment alone misses them; their working directory (data dir, app
    # dir) and title (config path) still name our directory.
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd").encode()
        if cwd == needle or cwd.startswith(needle + b"/"):
            return True
    except OSError:
        pass
    for f in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{f}", "rb") as fh:
                if needle in fh.read():
                    return True
        except OSError:
            pass
    return False


def marked_pids(marker):
    """Live processes (not us, not zombies) that belong to directory `marker`:
    its path is in their environment, title or working directory."""
    me, needle = os.getpid(), marker.encode()
    return [pid for pid in all_pids()
            if pid != me and _mentions(pid, needle) and state(pid) not in (None, "Z")]
