//! One child process the soak starts, kills and restarts: a service binary or the
//! broker, its output appended to a log file of its own across restarts.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Kill,
    Term,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "KILL",
            Self::Term => "TERM",
        }
    }
}

/// What to run: the program, its arguments and environment.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to a clean environment (PATH and HOME only) for the services; the broker
    /// script inherits the soak's environment (java, its settings).
    pub env: Vec<(&'static str, String)>,
    pub clean_env: bool,
}

pub struct Process {
    pub spec: Spec,
    log_path: PathBuf,
    child: Option<Child>,
    /// Whether the soak wants it running: an exit while this holds is unexpected.
    pub wanted: bool,
    pub starts: u32,
}

impl Process {
    pub fn new(spec: Spec, log_dir: &Path) -> Self {
        Self {
            log_path: log_dir.join(format!("{}.log", spec.name)),
            spec,
            child: None,
            wanted: false,
            starts: 0,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("{} is already running", self.spec.name);
        }
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        self.starts += 1;
        writeln!(
            log,
            "=== ipp-soak: start #{} of {} at {}",
            self.starts,
            self.spec.name,
            chrono::Utc::now().to_rfc3339()
        )?;
        let mut command = Command::new(&self.spec.program);
        command.args(&self.spec.args).stdin(Stdio::null());
        if self.spec.clean_env {
            command.env_clear();
            for key in ["PATH", "HOME"] {
                if let Some(value) = std::env::var_os(key) {
                    command.env(key, value);
                }
            }
            command.env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        }
        command.envs(self.spec.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.spec.program.display()))?;
        self.child = Some(child);
        self.wanted = true;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it runs; reaps it when it has exited.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none() && self.child.is_some()
    }

    /// The exit status of a process that has exited (and is then forgotten).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// Sends `signal`; the caller then waits with [`Process::wait_exit`].
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        self.wanted = false;
        let Some(pid) = self.pid() else {
            bail!("{} is not running", self.spec.name);
        };
        let status = Command::new("kill")
            .arg(format!("-{}", signal.name()))
            .arg(pid.to_string())
            .status()
            .context("run kill")?;
        if !status.success() {
            bail!("kill -{} {pid} ({}) failed", signal.name(), self.spec.name);
        }
        Ok(())
    }

    /// Waits up to `within` for the process to exit; SIGKILLs it after that.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            // Never started, or already reaped.
            self.child.as_ref()?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until something accepts connections on `127.0.0.1:port`.
pub async fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
