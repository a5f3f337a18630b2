//! The service binaries as child processes, as an operator would run them.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where `cargo build --bins` put the service binaries. `IPP_BIN_DIR` overrides; by
/// default it is the directory above the running test executable (`target/debug`).
pub fn bin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("IPP_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(|deps| deps.parent())
                .expect("target dir")
                .to_owned()
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// `binary args` on a clean environment (apart from PATH, and RUST_LOG defaulting to
/// `default_log`) plus `env`, stdin closed.
pub(crate) fn command(
    binary: &str,
    args: &[&str],
    env: &[(&str, String)],
    default_log: &str,
) -> Command {
    let mut command = Command::new(bin_path(binary));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| default_log.into()),
        )
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_tcp(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running service binary; killed when dropped.
pub struct Service {
    pub name: String,
    child: Option<Child>,
}

impl Service {
    /// Starts `binary` with `args` and `env` (on top of a clean environment apart from
    /// PATH and RUST_LOG), its output going to the test's own output.
    pub fn spawn(binary: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let child = command(binary, args, env, "info")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        Self {
            name: binary.to_owned(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `INT`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    /// Waits for the process to exit and returns its exit status.
    pub fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit (graceful shutdown); returns the status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait(within)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
