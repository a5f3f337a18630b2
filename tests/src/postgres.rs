//! A PostgreSQL server of the test's own, for the tests that stop and start the
//! database: the suite's server (`TEST_DATABASE_URL`) is shared by every test and is never
//! stopped. `initdb` and `pg_ctl` from the PostgreSQL installation into a temporary
//! directory, on a free port of 127.0.0.1, trust authentication; stopped and removed when
//! dropped.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sqlx::{Connection, PgConnection};

/// The OS user that runs the server when the tests run as root (initdb refuses root).
const SERVER_USER: &str = "postgres";

/// How long `pg_ctl` waits for a start or a stop.
const PG_CTL_WAIT_SECS: &str = "60";

pub struct PrivatePostgres {
    /// Kept from every other socket, across the server's restarts.
    port: crate::ReservedPort,
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// `Some(user)` when the server runs as another user than the tests (root).
    run_as: Option<&'static str>,
    running: bool,
    /// With TLS: the server's certificate and key, in the data directory.
    tls: bool,
    /// How long `initdb` and the first start took.
    pub initdb_took: Duration,
    pub first_start_took: Duration,
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Creates a cluster in a temporary directory and starts it.
    pub fn start() -> Self {
        Self::create(false)
    }

    /// Like [`PrivatePostgres::start`], also accepting TLS (`ssl=on`) with a certificate
    /// for `127.0.0.1` and `localhost` signed by a CA of the test's own
    /// ([`PrivatePostgres::ca_file`]), made with `openssl`. Plain connections are still
    /// accepted: a client asks for TLS with its `sslmode`.
    pub fn start_with_tls() -> Self {
        Self::create(true)
    }

    /// The PEM file of the CA that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The PEM file of a CA that signed nothing here (a client trusting it must refuse).
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    fn create(tls: bool) -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let run_as = is_root().then_some(SERVER_USER);
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        std::fs::create_dir(&data).expect("data dir");
        std::fs::write(&log, "").expect("log file");
        if let Some(user) = run_as {
            // The server's user must reach its files: the temporary directory is root's.
            set_mode(dir.path(), 0o755);
            set_mode(&data, 0o700);
            for path in [&data, &log] {
                chown(path, user);
            }
        }
        let mut server = Self {
            port: crate::ReservedPort::new(),
            bin,
            data,
            log,
            run_as,
            running: false,
            tls,
            initdb_took: Duration::ZERO,
            first_start_took: Duration::ZERO,
            dir,
        };
        let started = Instant::now();
        let data = server.data.to_str().expect("utf-8 path").to_owned();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                // What is lost without fsync is only lost in a machine crash: not tested here.
                "--no-sync",
            ],
        );
        server.initdb_took = started.elapsed();
        if tls {
            server.make_certificates();
        }
        server.first_start_took = server.start_again();
        server
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.port.port()
        )
    }

    /// Stops the server (`pg_ctl stop -m fast`: open connections are closed, the data is
    /// kept) and returns how long that took.
    pub fn stop(&mut self) -> Duration {
        let started = Instant::now();
        let data = self.data.to_str().expect("utf-8 path").to_owned();
        self.run(
            "pg_ctl",
            &[
                "stop",
                "-D",
                &data,
                "-m",
                "fast",
                "-w",
                "-t",
                PG_CTL_WAIT_SECS,
            ],
        );
        self.running = false;
        started.elapsed()
    }

    /// Starts the server on its port with its data directory, waits until it accepts
    /// connections, and returns how long that took.
    pub fn start_again(&mut self) -> Duration {
        let started = Instant::now();
        let data = self.data.to_str().expect("utf-8 path").to_owned();
        let log = self.log.to_str().expect("utf-8 path").to_owned();
        // The socket directory is the data directory: /var/run/postgresql may be missing
        // or another server's.
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {data} -c fsync=off",
            self.port.port()
        );
        if self.tls {
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        self.run(
            "pg_ctl",
            &[
                "start",
                "-D",
                &data,
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "-t",
                PG_CTL_WAIT_SECS,
            ],
        );
        self.running = true;
        started.elapsed()
    }

    /// A CA, the server's key and certificate (in the data directory, the server's user
    /// owning them, the key 0600 as PostgreSQL demands), and another CA.
    fn make_certificates(&self) {
        let dir = self.dir.path();
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, subject) in [("ca", "/CN=ipp test CA"), ("other-ca", "/CN=another CA")] {
            let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
            let mut args = vec!["req", "-x509", "-days", "2", "-subj", subject];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &cert]);
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            openssl(&args);
        }
        let mut request = vec!["req", "-subj", "/CN=127.0.0.1", "-keyout", "server.key"];
        request.extend(ec);
        request.extend(["-out", "server.csr"]);
        openssl(&request);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ]);
        for file in ["server.crt", "server.key"] {
            let target = self.data.join(file);
            std::fs::copy(dir.join(file), &target).expect("copy into the data directory");
            set_mode(&target, 0o600);
            if let Some(user) = self.run_as {
                chown(&target, user);
            }
        }
    }

    /// Runs one of the server's programs (as its user when the tests are root); panics
    /// with its output and the server log when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&path);
                command
            }
            None => Command::new(&path),
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}):\n{}{}\n--- server log ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the test's PostgreSQL, its log ---");
            eprintln!("{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
        if self.running {
            let data = self.data.to_str().expect("utf-8 path").to_owned();
            let path = self.bin.join("pg_ctl");
            let mut command = match self.run_as {
                Some(user) => {
                    let mut command = Command::new("runuser");
                    command.args(["-u", user, "--"]).arg(&path);
                    command
                }
                None => Command::new(&path),
            };
            // Immediate: nothing of this server is kept anyway.
            let _ = command
                .args(["stop", "-D", &data, "-m", "immediate", "-w"])
                .output();
        }
        // The temporary directory (its files are the server user's) goes with `dir`.
    }
}

/// Terminates every backend connected to `database` (what an administrator, a
/// failover or a proxy does to open connections, transactions in progress included);
/// returns how many there were. `url` is a connection to another database of the same
/// server, which is not terminated.
pub async fn terminate_backends(url: &str, database: &str) -> u64 {
    let mut admin = PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .expect("pg_terminate_backend");
    let _ = admin.close().await;
    terminated.into_iter().filter(|&t| t).count() as u64
}

/// Where `initdb` and `pg_ctl` are: `IPP_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout, what scripts/lib.sh installs).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IPP_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql: install PostgreSQL or set IPP_TEST_PG_BIN")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/<version>/bin/initdb: set IPP_TEST_PG_BIN")
}

fn is_root() -> bool {
    id(&["-u"]) == "0"
}

/// `id ARGS…`, trimmed.
fn id(args: &[&str]) -> String {
    let output = Command::new("id").args(args).output().expect("id");
    assert!(output.status.success(), "id {args:?}");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn chown(path: &Path, user: &str) {
    let uid: u32 = id(&["-u", user]).parse().expect("uid");
    let gid: u32 = id(&["-g", user]).parse().expect("gid");
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
