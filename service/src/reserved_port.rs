//! A port held for a service that something else starts on it: the tests' harness and the
//! benchmark start the services as child processes and tell each where to listen.

use std::net::SocketAddr;

/// A port on 127.0.0.1 that no other socket of this machine is given while this lives,
/// for a child process (or a service started later) to listen on, on the same port
/// across its restarts.
///
/// A port that was merely free a moment ago can be taken, before the child binds it, by
/// any socket another test or process opens meanwhile (a listener on port 0, or the local end of a
/// connection). This holds a socket bound to the port with `SO_REUSEADDR` and never
/// listening: Linux then leaves the port out of every automatic choice (`bind` to port
/// 0, `connect`), while a server that sets `SO_REUSEADDR` too, as Rust's, Java's, Go's
/// and PostgreSQL's listeners do, may still bind it and listen.
#[derive(Debug)]
pub struct ReservedPort {
    port: u16,
    _socket: socket2::Socket,
}

impl ReservedPort {
    pub fn new() -> Self {
        let reserve = || -> std::io::Result<Self> {
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
            let port = socket
                .local_addr()?
                .as_socket()
                .expect("an IPv4 address")
                .port();
            Ok(Self {
                port,
                _socket: socket,
            })
        };
        reserve().expect("no port to reserve")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        Self::new()
    }
}
