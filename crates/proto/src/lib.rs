//! Everything that crosses a handoff process boundary.
//!
//! The master, its workers (spawned or joined from outside) and, later, the
//! control client talk in the messages defined in [`msg`], encoded by the one
//! codec in [`codec`]; the control socket's commands and JSON replies are in
//! [`control`]. Both sides link this crate, so they share one bincode
//! configuration and one size limit. This crate does no I/O and has no
//! `unsafe`: it is pure data, which keeps it easy to property-test and fuzz.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod codec;
pub mod control;
pub mod msg;

pub use codec::{decode, encode, CodecError, MAX_FRAME_LEN};
pub use msg::*;

/// Version of the master↔worker protocol. A worker whose `Hello` carries a
/// different version is refused with a message saying both versions.
pub const PROTOCOL_VERSION: u32 = 8;

/// The most connections one `Batch` packet carries (the kernel passes at
/// most 253 fds per message).
pub const MAX_BATCH: usize = 252;

/// File name of the workers' registration socket inside the run directory.
pub const WORKERS_SOCKET_NAME: &str = "workers.sock";

/// File name of the master's lock file (holds its pid) inside the run directory.
pub const MASTER_LOCK_NAME: &str = "master.lock";

/// The article's reply prefix: the worker answers `server get message: `
/// followed by exactly the bytes of the client's first read.
pub const REPLY_PREFIX: &[u8] = b"server get message: ";

/// The article's `recv(2048)`: the most a worker reads of a request.
pub const REQUEST_CHUNK_LEN: usize = 2048;

/// The longest reply the article's protocol can produce.
pub const MAX_REPLY_LEN: usize = REPLY_PREFIX.len() + REQUEST_CHUNK_LEN;

/// The run directory both binaries default to: `$XDG_RUNTIME_DIR/handoff`
/// when that variable is set and non-empty, else `/tmp/handoff-<uid>`.
/// Pure, so callers pass in the environment and uid.
pub fn default_run_dir(xdg_runtime_dir: Option<&std::ffi::OsStr>, uid: u32) -> std::path::PathBuf {
    match xdg_runtime_dir {
        Some(dir) if !dir.is_empty() => std::path::Path::new(dir).join("handoff"),
        _ => std::path::PathBuf::from(format!("/tmp/handoff-{uid}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_run_dir_prefers_xdg_runtime_dir() {
        let xdg = std::ffi::OsStr::new("/run/user/1000");
        assert_eq!(
            default_run_dir(Some(xdg), 1000),
            std::path::Path::new("/run/user/1000/handoff")
        );
        assert_eq!(
            default_run_dir(Some(std::ffi::OsStr::new("")), 7),
            std::path::Path::new("/tmp/handoff-7")
        );
        assert_eq!(default_run_dir(None, 0), std::path::Path::new("/tmp/handoff-0"));
    }

    #[test]
    fn the_longest_reply_is_the_prefix_and_a_full_chunk() {
        assert_eq!(MAX_REPLY_LEN, 20 + 2048);
        assert_eq!(MAX_REPLY_LEN, REPLY_PREFIX.len() + REQUEST_CHUNK_LEN);
    }

    #[test]
    fn every_outcome_and_every_field_adds_up() {
        let completion = |outcome| Completion { conn_id: 1, outcome, bytes_in: 2, bytes_out: 3 };
        let mut totals = Totals {
            served: 10,
            resets: 20,
            failed: 30,
            timeouts: 40,
            health_checks: 5,
            bytes_in: 50,
            bytes_out: 60,
        };
        for outcome in [
            Outcome::Served,
            Outcome::Reset,
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::HealthCheck,
        ] {
            totals.add(&completion(outcome));
        }
        let expected = Totals {
            served: 11,
            resets: 21,
            failed: 31,
            timeouts: 41,
            health_checks: 6,
            bytes_in: 60,
            bytes_out: 75,
        };
        assert_eq!(totals, expected);
        assert_eq!(totals.total(), 11 + 21 + 31 + 41 + 6);
        let mut sum = totals;
        sum.merge(&expected);
        let doubled = Totals {
            served: 22,
            resets: 42,
            failed: 62,
            timeouts: 82,
            health_checks: 12,
            bytes_in: 120,
            bytes_out: 150,
        };
        assert_eq!(sum, doubled);
        assert_eq!(sum.since(&totals), expected);
    }
}
