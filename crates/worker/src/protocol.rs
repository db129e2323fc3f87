//! Which protocol a connection speaks: [`Protocol`] (`--protocol`) and
//! [`Conn`], a handed-off connection with its header and its protocol's
//! state machine. This is the one module that knows every protocol; the
//! protocols themselves know only the connection core ([`crate::conn`]).

use std::io::{Read, Write};
use std::time::Instant;

use handoff_proto::{ClientProtocol, Dispatch};

use crate::article::ArticleConn;
use crate::conn::{discard_pending_input, Outcome, Progress, Work};
use crate::http::HttpConn;
use crate::proxy::{HeaderProgress, Prefixed, ProxyHeader};

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
    /// The PROXY header being read (`--proxy-protocol`), then the bytes read
    /// past it; `None` without the flag, which costs nothing.
    pub proxy: Option<Box<ProxyHeader>>,
}

/// The protocol state machine of a connection. The article's state (with
/// a short reply's bytes) is inline, so the measured path allocates nothing
/// per connection (slab slots are reused), and an idle connection holds no
/// request buffer. HTTP connections are boxed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ProtocolState {
    Article(ArticleConn),
    Http(Box<HttpConn>),
}

impl Conn {
    pub fn new(
        dispatch: Dispatch,
        received_at_ns: u64,
        protocol: Protocol,
        proxy_protocol: bool,
    ) -> Conn {
        let state = match protocol {
            Protocol::Article => ProtocolState::Article(ArticleConn::new()),
            Protocol::Http => ProtocolState::Http(Box::default()),
        };
        let proxy = proxy_protocol.then(|| Box::new(ProxyHeader::new()));
        Conn { dispatch, received_at_ns, deadline: None, state, proxy }
    }

    /// The client a PROXY header named (`--proxy-protocol`), if any: the
    /// real peer, where the socket's own is the balancer.
    pub fn proxied_source(&self) -> Option<std::net::SocketAddr> {
        self.proxy.as_deref().and_then(ProxyHeader::source)
    }

    /// Advances the connection as far as `stream` allows: with
    /// `--proxy-protocol`, first its PROXY header (the client it names
    /// becomes the connection's peer; without a valid one it is closed
    /// without a reply, counted as failed).
    pub fn drive<S: Read + Write>(&mut self, stream: &mut S, work: &Work) -> Progress {
        let Some(header) = self.proxy.as_deref_mut() else {
            return Self::drive_protocol(&mut self.state, stream, work);
        };
        if !header.done() {
            match header.read(stream) {
                HeaderProgress::Io(progress) => return progress,
                HeaderProgress::Invalid(why) => {
                    // (The server's "finished" line that follows names the peer.)
                    tracing::debug!(
                        conn_id = self.dispatch.conn_id,
                        why,
                        "no valid PROXY header: closed"
                    );
                    discard_pending_input(stream);
                    return Progress::Done(Outcome::Failed);
                }
                // The source is kept in the header: `proxied_source`.
                HeaderProgress::Done(_) => {}
            }
        }
        let local = header.local();
        match Self::drive_protocol(&mut self.state, &mut Prefixed { header, stream }, work) {
            // A health check ends as it came: with a close (or a reset,
            // which HAProxy's checks send), no request.
            Progress::Done(Outcome::Reset | Outcome::Failed) if local => {
                Progress::Done(Outcome::HealthCheck)
            }
            progress => progress,
        }
    }

    fn drive_protocol<S: Read + Write>(
        state: &mut ProtocolState,
        stream: &mut S,
        work: &Work,
    ) -> Progress {
        match state {
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
