//! The logging setup every handoff process shares, so the master and the
//! workers log alike: `tracing` events to stderr (stdout is kept for the
//! master's one machine-readable ready line), filtered by `RUST_LOG`
//! (default `info`), coloured only on a terminal.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Installs the process-wide subscriber. Call once, first thing in `main`.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
