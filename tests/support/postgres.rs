//! A private PostgreSQL server for a test: Debian's binaries, its own data
//! directory and port on 127.0.0.1, trust authentication (over TLS only
//! with [`Postgres::start_tls`]), stopped and removed when dropped.
//! `scripts/test.sh` installs the `postgresql` package; the server runs as
//! the `postgres` user (it refuses root).

#![allow(dead_code)]

use super::run;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Settings added to the server's command line.
    settings: String,
}

/// The newest installed server's binaries.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/test.sh installs Debian's postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql/*/bin")
}

fn as_postgres(bin: &std::path::Path, tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
    c
}

impl Postgres {
    /// Initializes and starts a server.
    pub fn start() -> Postgres {
        let pg = Postgres::init();
        pg.resume();
        pg
    }

    /// Initializes and starts a server that takes TCP connections over TLS
    /// only (`hostssl` in pg_hba.conf), with the PEM files `cert` and `key`.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Postgres {
        let mut pg = Postgres::init();
        let data = pg.dir.join("data");
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            std::fs::copy(from, data.join(to)).expect("copy the server's TLS files");
        }
        // The server refuses a key others can read.
        run(Command::new("chown")
            .args(["postgres:postgres"])
            .arg(data.join("server.crt"))
            .arg(data.join("server.key")));
        run(Command::new("chmod")
            .arg("600")
            .arg(data.join("server.key")));
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("write pg_hba.conf");
        pg.settings = " -c ssl=on".into();
        pg.resume();
        pg
    }

    /// Initializes a server's data directory.
    fn init() -> Postgres {
        let bin = bin_dir();
        let port = super::free_port();
        let dir = std::env::temp_dir().join(format!("dockhand-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the PostgreSQL dir");
        run(Command::new("chown").args(["postgres:postgres"]).arg(&dir));
        run(as_postgres(&bin, "initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.join("data")));
        Postgres {
            port,
            dir,
            bin,
            settings: String::new(),
        }
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn resume(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200{}",
            self.port,
            self.dir.display(),
            self.settings
        );
        let out = as_postgres(&self.bin, "pg_ctl")
            .args(["-w", "-t", "30", "-D"])
            .arg(self.dir.join("data"))
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("server.log"))
            .arg("start")
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .args(["-w", "-m", "fast", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// `psql` on database `db` as the superuser, over TCP (libpq's default
    /// `sslmode=prefer`: TLS when the server offers it).
    fn psql(&self, db: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db]);
        c
    }

    /// The rows `sql` returns, `|` between columns.
    pub fn query(&self, db: &str, sql: &str) -> String {
        let out = run(self.psql(db).args(["-At", "-c", sql]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The URL of database `db`, created if missing.
    pub fn database(&self, db: &str) -> String {
        let out = self
            .psql("postgres")
            .arg("-c")
            .arg(format!("CREATE DATABASE \"{db}\""))
            .output()
            .expect("run psql");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("already exists"),
            "create database {db}: {err}"
        );
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            eprintln!("--- PostgreSQL log ---\n{}", self.log());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
