#![doc = include_str!("../README.md")]
//! Helpers for the black-box tests: a broker to talk to, unique topics, fresh
//! databases, the services in-process (most tests) or as child processes (signals, exit
//! codes, CLI output), and an independent webhook signer.

pub mod actions;
pub mod cli;
pub mod commands;
pub mod db;
pub mod eventually;
pub mod faults;
pub mod ingest;
pub mod inprocess;
pub mod kafka;
pub mod om_sim;
pub mod orders;
pub mod otlp;
pub mod pipeline;
pub mod postgres;
pub mod process;
pub mod processes;
pub mod produce;
pub mod projector;
pub mod signer;
pub mod wiring;

use std::net::SocketAddr;

/// A name no other test (or earlier run) uses: topics, groups, databases.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A port on 127.0.0.1 that no other socket of this machine is given while this lives,
/// for a child process (or a service started later) to listen on, on the same port
/// across its restarts.
///
/// A port that was merely free a moment ago can be taken, before the child binds it, by
/// any socket another test opens meanwhile (a listener on port 0, or the local end of a
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

/// A webhook body from `schemas/fixtures/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../schemas/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The JSON body of `response`.
pub async fn json_of(response: reqwest::Response) -> serde_json::Value {
    response.json().await.expect("json body")
}
