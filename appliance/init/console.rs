//! PID 1's voice: stdin/stdout/stderr on /dev/console, one-line reports
//! (`applianced: init: ...`) and the panic hook that reports instead of
//! dying. Touches /dev/console and the process's fds 0-2 only.

/// Print one report line on the console (stderr is the console in PID-1 mode).
pub fn say(msg: impl std::fmt::Display) {
    eprintln!("applianced: init: {msg}");
}

/// Point fds 0, 1 and 2 at /dev/console (the kernel usually did already, but
/// an initramfs may hand over something else). Failures are ignored: there is
/// nobody to tell.
pub fn attach() {
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    let _ = nix::unistd::dup2_stdin(&console);
    let _ = nix::unistd::dup2_stdout(&console);
    let _ = nix::unistd::dup2_stderr(&console);
}

/// Report panics on the console and keep going: the panicking thread or task
/// ends (tokio keeps the runtime; init catches a panic of the main future).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        eprintln!(
            "applianced: init: internal error (panic) in thread {name}: {info}; PID 1 carries on"
        );
        tracing::error!(panic = %info, thread = name, "internal error (panic); PID 1 carries on");
    }));
}
