//! The logging setup every handoff process shares, so the master and the
//! workers log alike: `tracing` events to stderr (stdout is kept for the
//! master's one machine-readable ready line), filtered by `RUST_LOG`
//! (default `info`), coloured only on a terminal.
//!
//! Logging never takes a process down: stderr is often a pipe (`… 2>&1 |
//! tee log`) whose reader may exit first (Ctrl-C reaches `tee` too). A line
//! that cannot be written is dropped ([`Stderr`] reports success whatever
//! the write says, and `tracing-subscriber` is told not to print its own
//! complaint, which would panic on the same closed stderr); once stderr
//! says `EPIPE` its reader is gone for good and no more writes are tried.
//! SIGPIPE stays ignored (Rust's runtime ignores it; the binaries also
//! handle it), so a closed pipe is an error, not a signal.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Installs the process-wide subscriber. Call once, first thing in `main`.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .log_internal_errors(false)
        .init();
}

/// Set once a write to stderr failed with `EPIPE`: nobody reads it any more.
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// Standard error as a writer that never fails: a line that cannot be
/// written (closed pipe, full non-blocking pipe, any other error) is
/// dropped. Also for the binaries' own last words (a fatal error line).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if STDERR_GONE.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        match io::stderr().write(buf) {
            // Ok(0) would make `write_all` fail; count it as written too.
            Ok(0) => Ok(buf.len()),
            Ok(n) => Ok(n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Err(err),
            Err(err) => {
                if err.kind() == io::ErrorKind::BrokenPipe {
                    STDERR_GONE.store(true, Ordering::Relaxed);
                }
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writing_never_fails() {
        let mut stderr = Stderr;
        assert!(stderr.write_all(b"").is_ok());
        assert!(stderr.flush().is_ok());
    }
}
