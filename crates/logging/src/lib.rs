//! The logging setup every handoff process shares, so the master and the
//! workers log alike: `tracing` events to stderr (stdout is kept for the
//! master's one machine-readable ready line), filtered by `RUST_LOG`
//! (default `info`), coloured only on a terminal. As text (the default) or
//! as one JSON object per line (`HANDOFF_LOG_FORMAT=json`, which the
//! master's `--log-format json` sets for itself and so for the workers it
//! spawns): the same events with the same fields either way.
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

/// The environment variable naming the log format (`text` or `json`).
pub const FORMAT_VAR: &str = "HANDOFF_LOG_FORMAT";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `tracing-subscriber`'s human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with
    /// `message`), `target`, and the current `span` and `spans`.
    Json,
}

impl Format {
    /// Parses `text` or `json`.
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// The name [`Format::parse`] takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
        }
    }

    /// The format `HANDOFF_LOG_FORMAT` names (text if unset or unknown).
    pub fn from_env() -> Format {
        std::env::var(FORMAT_VAR).ok().and_then(|v| Format::parse(&v)).unwrap_or_default()
    }
}

/// Installs the process-wide subscriber in the format `HANDOFF_LOG_FORMAT`
/// names. Call once, first thing in `main`.
pub fn init() {
    init_with(Format::from_env());
}

/// Installs the process-wide subscriber in `format`. Call once.
pub fn init_with(format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        .log_internal_errors(false);
    match format {
        Format::Text => {
            builder.with_ansi(io::IsTerminal::is_terminal(&io::stderr())).init();
        }
        Format::Json => {
            builder.json().with_ansi(false).init();
        }
    }
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
    fn formats_parse_and_print() {
        for format in [Format::Text, Format::Json] {
            assert_eq!(Format::parse(format.as_str()), Some(format));
        }
        assert_eq!(Format::parse("xml"), None);
    }

    #[test]
    fn the_format_comes_from_the_environment() {
        // The only test of this binary that touches the variable.
        std::env::set_var(FORMAT_VAR, "json");
        assert_eq!(Format::from_env(), Format::Json);
        std::env::set_var(FORMAT_VAR, "yaml");
        assert_eq!(Format::from_env(), Format::Text);
        std::env::remove_var(FORMAT_VAR);
        assert_eq!(Format::from_env(), Format::Text);
        assert_eq!((Format::Text.as_str(), Format::Json.as_str()), ("text", "json"));
    }

    #[test]
    fn writing_never_fails() {
        let mut stderr = Stderr;
        assert!(stderr.write_all(b"").is_ok());
        assert!(stderr.flush().is_ok());
    }
}
