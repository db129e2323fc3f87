//! Which protocol a connection speaks: [`Protocol`] (`--protocol`) and
//! [`Conn`], a handed-off connection with its header and its protocol's
//! state machine. This is the one module that knows every protocol; the
//! protocols themselves know only the connection core ([`crate::conn`]).

use std::io::{Read, Write};
use std::time::Instant;

use handoff_proto::{ClientProtocol, Dispatch};

use crate::article::ArticleConn;
use crate::conn::{Progress, Work};
use crate::http::HttpConn;

/// Which protocol a worker speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// The article's: echo the first chunk after `server get message: `.
    Article,
    /// Minimal HTTP/1.1, keep-alive by default.
    Http,
}

impl Protocol {
    /// How the worker names it to the master in its `Hello`.
    pub fn to_wire(self) -> ClientProtocol {
        match self {
            Protocol::Article => ClientProtocol::Article,
            Protocol::Http => ClientProtocol::Http,
        }
    }
}

/// One connection: its hand-off header and its protocol state.
#[derive(Debug)]
pub struct Conn {
    pub dispatch: Dispatch,
    /// When this worker received the fd (`CLOCK_MONOTONIC` ns).
    pub received_at_ns: u64,
    /// When the worker gives up on it (`--read-timeout`); set once it has to
    /// wait for the socket.
    pub deadline: Option<Instant>,
    pub state: ProtocolState,
}

/// The protocol state machine of a connection. The article's state (with
/// its reply buffer) is inline, so the measured path allocates nothing per
/// connection: slab slots are reused. HTTP connections are boxed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ProtocolState {
    Article(ArticleConn),
    Http(Box<HttpConn>),
}

impl Conn {
    pub fn new(dispatch: Dispatch, received_at_ns: u64, protocol: Protocol) -> Conn {
        let state = match protocol {
            Protocol::Article => ProtocolState::Article(ArticleConn::new()),
            Protocol::Http => ProtocolState::Http(Box::default()),
        };
        Conn { dispatch, received_at_ns, deadline: None, state }
    }

    /// Advances the connection as far as `stream` allows.
    pub fn drive<S: Read + Write>(&mut self, stream: &mut S, work: &Work) -> Progress {
        match &mut self.state {
            ProtocolState::Article(conn) => conn.drive(stream, work),
            ProtocolState::Http(conn) => conn.drive(stream, work),
        }
    }

    /// The worker is draining (see [`HttpConn::drain`]); the article's
    /// connections end after one reply anyway. Returns true when the
    /// connection must be driven now (it waits between requests).
    pub fn drain(&mut self) -> bool {
        match &mut self.state {
            ProtocolState::Article(_) => false,
            ProtocolState::Http(conn) => conn.drain(),
        }
    }

    /// True once per request finished since the last call (keep-alive
    /// connections get a fresh read deadline per request).
    pub fn take_activity(&mut self) -> bool {
        match &mut self.state {
            ProtocolState::Article(_) => false,
            ProtocolState::Http(conn) => conn.take_activity(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_connection_core_knows_no_protocol() {
        // The protocol modules depend on `conn`, never the other way round
        // (they used to import each other).
        let code = |source: &'static str| -> String {
            let source = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
            source.lines().filter(|line| !line.trim_start().starts_with("//")).collect()
        };
        let core = code(include_str!("conn.rs"));
        for module in ["crate::article", "crate::http", "crate::protocol"] {
            assert!(!core.contains(module), "conn.rs uses {module}");
        }
        for (name, source) in
            [("article", include_str!("article.rs")), ("http", include_str!("http.rs"))]
        {
            assert!(!code(source).contains("crate::protocol"), "{name}.rs uses crate::protocol");
        }
    }
}
