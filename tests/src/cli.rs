//! Running a service binary's one-shot command (`dlq list`, `status`, …) to completion
//! and capturing what it printed.

use std::{
    io::Read,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::process::command;

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with the command's output unless it exited 0.
    pub fn success(self) -> Self {
        assert!(
            self.status.success(),
            "command failed with {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Every stdout line parsed as JSON (for `--json` outputs).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// Runs `binary args` with `env` (on a clean environment apart from PATH and RUST_LOG),
/// killing it after `within`.
pub fn run(binary: &str, args: &[&str], env: &[(&str, String)], within: Duration) -> Output {
    let mut child = command(binary, args, env, "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{binary} {args:?} did not finish within {within:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// [`run`] off the async runtime (on a blocking thread), for `#[tokio::test]`s.
pub async fn run_async(
    binary: &'static str,
    args: &[&str],
    env: &[(&str, String)],
    within: Duration,
) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        run(binary, &args, &env, within)
    })
    .await
    .expect("cli task")
}
