//! Everything that crosses a handoff process boundary.
//!
//! The master, its workers (spawned or joined from outside) and, later, the
//! control client talk in the messages defined in [`msg`], encoded by the one
//! codec in [`codec`]. Both sides link this crate, so they share one bincode
//! configuration and one size limit. This crate does no I/O and has no
//! `unsafe`: it is pure data, which keeps it easy to property-test and fuzz.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod codec;
pub mod msg;

pub use codec::{decode, encode, CodecError, MAX_FRAME_LEN};
pub use msg::*;

/// Version of the master↔worker protocol. A worker whose `Hello` carries a
/// different version is refused with a message saying both versions.
pub const PROTOCOL_VERSION: u32 = 1;

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
