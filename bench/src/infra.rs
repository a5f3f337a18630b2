//! What every figure needs: the service binaries as processes, fresh databases and
//! topics, a prefilled topic, peak memory, and latency percentiles.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use ipp_schemas::{RecordHeaders, Route};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    message::OwnedHeaders,
    producer::{FutureProducer, FutureRecord, Producer},
    ClientConfig,
};
use sqlx::{Connection, Executor, PgConnection};

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Peak resident set size so far (VmHWM) of process `pid`, in MiB.
pub fn peak_rss_mb_of(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    kb_field(&status, "VmHWM:")
        .map(|kb| kb / 1024.0)
        .context("no VmHWM in /proc/PID/status")
}

/// The sum of the proportional set sizes of every `postgres` process, in MiB; `None`
/// when none can be read (another user's processes, or PostgreSQL elsewhere).
pub fn postgres_pss_mb() -> Option<f64> {
    let mut kb = 0.0;
    let mut seen = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        let is_postgres =
            std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim() == "postgres");
        if !is_postgres {
            continue;
        }
        if let Some(pss) = std::fs::read_to_string(path.join("smaps_rollup"))
            .ok()
            .and_then(|rollup| kb_field(&rollup, "Pss:"))
        {
            kb += pss;
            seen = true;
        }
    }
    seen.then_some(kb / 1024.0)
}

/// The value of a `Name:   123 kB` line.
fn kb_field(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The CPU time (user + system, every thread) process `pid` has used so far, from
/// `/proc/PID/stat`. `std::process::id()` is this process.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    ticks_of(&stat, &format!("/proc/{pid}/stat"))
}

/// utime + stime of a `/proc/…/stat` line.
fn ticks_of(stat: &str, what: &str) -> anyhow::Result<Duration> {
    // The command name (field 2) may hold spaces: count fields after its closing paren,
    // where field 3 (state) is the first; utime and stime are fields 14 and 15.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("no command name in {what}"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |field: usize| -> anyhow::Result<u64> {
        fields
            .get(field - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no field {field} in {what}"))
    };
    let total = ticks(14)? + ticks(15)?;
    Ok(Duration::from_secs_f64(
        total as f64 / clock_ticks_per_second() as f64,
    ))
}

/// CPU time of this process, to the nanosecond (`/proc`'s times count in clock ticks of
/// 10 ms, too coarse for the few milliseconds a smoke run's producer uses).
pub fn own_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// CPU time (utime + stime) of this process's threads named `name` (tokio names every
/// thread of a runtime alike), summed over those alive now.
pub fn threads_cpu_time(name: &str) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
        let path = task?.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let comm = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map(|(comm, _)| comm);
        if comm == Some(name) {
            total += ticks_of(&stat, "/proc/self/task/*/stat")?;
        }
    }
    Ok(total)
}

/// `getconf CLK_TCK` (the unit of `/proc/PID/stat` times), once; 100 when it cannot say.
fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|out| out.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// A service binary running as a child process; killed when dropped.
pub struct Service {
    pub name: String,
    child: Child,
}

impl Service {
    /// Starts `bin_dir/name` with a clean environment plus `env`; output goes to
    /// `logs/name-N.log`.
    pub fn spawn(
        bin_dir: &Path,
        logs: &Path,
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let binary = bin_dir.join(name);
        if !binary.exists() {
            bail!("{} is missing: build the binaries first", binary.display());
        }
        std::fs::create_dir_all(logs)?;
        let log_path = logs.join(format!("{}.log", unique(name)));
        let log = File::create(&log_path)?;
        let mut command = Command::new(&binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // BENCH_SERVICE_LOG (a RUST_LOG filter) turns the services' logs up to diagnose.
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // An empty value means "not set" (services reject some empty settings).
        for (key, value) in env.iter().filter(|(_, v)| !v.is_empty()) {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        Ok(Self {
            name: name.into(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far (VmHWM), in MiB.
    pub fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        peak_rss_mb_of(self.pid())
    }

    /// Fails if the process already exited (a crash would otherwise look like a stall).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }

    /// Waits for a one-shot command (`migrate`) to exit successfully.
    pub fn wait_exit(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                bail!("{} failed: {status}", self.name);
            }
            if Instant::now() > deadline {
                bail!("{} did not finish within {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait up to `within` for a clean exit, then SIGKILL.
    pub fn stop(mut self, within: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `GET url` answers 200 (a service's `/readyz`).
pub async fn wait_ready(
    client: &reqwest::Client,
    url: &str,
    service: &mut Service,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        service.check_running()?;
        if let Ok(response) = client.get(url).send().await {
            if response.status() == 200 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{} not ready at {url} within {within:?}", service.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A database created for one figure, dropped by `drop_now` unless kept.
pub struct Database {
    pub url: String,
    name: String,
    server: String,
}

impl Database {
    pub async fn create(server: &str) -> anyhow::Result<Self> {
        let name = unique("ipp_bench");
        let mut conn = PgConnection::connect(server)
            .await
            .with_context(|| format!("connecting to {server}"))?;
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        let (base, _) = server
            .rsplit_once('/')
            .context("database url has no path")?;
        Ok(Self {
            url: format!("{base}/{name}"),
            name,
            server: server.into(),
        })
    }

    pub async fn drop_now(self, keep: bool) -> anyhow::Result<()> {
        if keep {
            return Ok(());
        }
        let mut conn = PgConnection::connect(&self.server).await?;
        conn.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await?;
        Ok(())
    }
}

pub async fn create_topic(brokers: &str, prefix: &str, partitions: i32) -> anyhow::Result<String> {
    let name = unique(prefix);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "ipp-bench")
        .create()?;
    let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        result.map_err(|(topic, code)| anyhow::anyhow!("create topic {topic}: {code}"))?;
    }
    Ok(name)
}

/// The producer settings ipp-ingest uses (acks=all, idempotent, linger 2 ms, its
/// compression), plus `extra` KEY=VALUE properties.
pub fn ingest_like_producer(brokers: &str, extra: &[String]) -> anyhow::Result<FutureProducer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "ipp-bench")
        .set("allow.auto.create.topics", "false")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "2")
        .set("compression.type", ipp_ingest::COMPRESSION);
    for property in extra {
        if let Some((key, value)) = property.split_once('=') {
            config.set(key.trim(), value.trim());
        }
    }
    Ok(config.create()?)
}

/// The record ipp-ingest would write for `body`: key and headers.
pub fn record_for(body: &[u8], webhook_id: &str) -> anyhow::Result<(String, RecordHeaders)> {
    let route = Route::parse(body)?;
    let headers = RecordHeaders {
        event_id: route.event_id.clone(),
        event_type: route.event_type.clone(),
        merchant_id: route.merchant_id.clone(),
        webhook_id: webhook_id.into(),
        webhook_timestamp: chrono::Utc::now().timestamp().to_string(),
        received_at: chrono::Utc::now(),
    };
    Ok((route.key().to_owned(), headers))
}

/// Writes `bodies` to `topic` exactly as ipp-ingest would, as fast as the broker takes
/// them, printing progress. Returns the number of records written.
pub async fn prefill(brokers: &str, topic: &str, bodies: &[&[u8]]) -> anyhow::Result<usize> {
    prefill_with(brokers, topic, bodies, |i, body| {
        let (key, headers) = record_for(body, &format!("msg_prefill_{i}"))?;
        Ok((key, Some(headers.to_kafka())))
    })
    .await
}

/// Writes `records` (key, value) to `topic` with no headers, as ipp-actions writes its
/// observations.
pub async fn prefill_keyed(
    brokers: &str,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> anyhow::Result<usize> {
    let values: Vec<&[u8]> = records.iter().map(|(_, value)| value.as_slice()).collect();
    prefill_with(brokers, topic, &values, |i, _| {
        Ok((records[i].0.clone(), None))
    })
    .await
}

/// Writes `bodies` to `topic`, each with the key and headers `record` gives it.
async fn prefill_with(
    brokers: &str,
    topic: &str,
    bodies: &[&[u8]],
    key_and_headers: impl Fn(usize, &[u8]) -> anyhow::Result<(String, Option<OwnedHeaders>)>,
) -> anyhow::Result<usize> {
    let producer = ingest_like_producer(brokers, &[])?;
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    let mut done = 0usize;
    for (i, body) in bodies.iter().enumerate() {
        let (key, headers) = key_and_headers(i, body)?;
        let mut record = FutureRecord::to(topic).key(key.as_bytes()).payload(*body);
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    returned,
                )) => {
                    record = returned;
                    if let Some(delivery) = pending.pop_front() {
                        delivery
                            .await?
                            .map_err(|(e, _)| anyhow::anyhow!("prefill {topic}: {e}"))?;
                        done += 1;
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Err((e, _)) => bail!("prefill {topic}: {e}"),
            }
        }
        // Keep a bounded window so progress is real and memory stays flat.
        while pending.len() > 20_000 {
            let delivery = pending.pop_front().expect("non-empty");
            delivery
                .await?
                .map_err(|(e, _)| anyhow::anyhow!("prefill {topic}: {e}"))?;
            done += 1;
            if done.is_multiple_of(10_000) {
                crate::progress(&format!(
                    "prefill {topic}: {done}/{} records ({:.0}/s)",
                    bodies.len(),
                    done as f64 / started.elapsed().as_secs_f64()
                ));
            }
        }
    }
    for delivery in pending {
        delivery
            .await?
            .map_err(|(e, _)| anyhow::anyhow!("prefill {topic}: {e}"))?;
        done += 1;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(done)
}

/// Latency percentiles over every sample (a sorted vector: exact, and small enough).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index].as_secs_f64() * 1000.0
        };
        Self {
            count: samples.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

pub fn logs_dir(out: &Path) -> PathBuf {
    out.join("logs")
}

/// Sum and count of a Prometheus histogram on a service's `/metrics` (0, 0 if absent).
pub async fn histogram(client: &reqwest::Client, metrics_url: &str, name: &str) -> (f64, f64) {
    let Ok(response) = client.get(metrics_url).send().await else {
        return (0.0, 0.0);
    };
    let text = response.text().await.unwrap_or_default();
    let value = |suffix: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{suffix}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (value("_sum"), value("_count"))
}

/// Flushes PostgreSQL's dirty buffers, so the next measurement does not pay for the
/// previous one's writes; needs a superuser, and is skipped without one.
pub async fn checkpoint(server: &str) {
    let done = async {
        let mut conn = PgConnection::connect(server).await?;
        conn.execute("CHECKPOINT").await?;
        Ok::<_, sqlx::Error>(())
    };
    if let Err(e) = done.await {
        crate::progress(&format!("CHECKPOINT skipped: {e}"));
    }
}
