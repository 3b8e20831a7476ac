//! The control endpoint's configuration: `/etc/dockhand/control.conf`, the
//! same `KEY=VALUE` rules as `ecs.config` (environment overrides the file,
//! every error at once, exit 78). Keys are `DOCKHAND_CONTROL_*`.

use dockhand_model::conf::{
    self, absolute_path, duration_in, non_empty, KeySpec, Scheme, HOUR, MINUTE, SECOND,
};
pub use dockhand_model::conf::{ConfigErrors, EXIT_CONFIG, MAX_CONFIG_BYTES};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `dockhand control` looks for its config without `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dockhand/control.conf";

/// The control endpoint's effective settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `postgres://…`; `None` is the embedded SQLite file in `data_dir`.
    pub database: Option<String>,
    pub credentials: PathBuf,
    pub region: String,
    pub account: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// An instance with no poll for this long shows `agentConnected: false`
    /// and gets no new tasks.
    pub heartbeat_timeout: Duration,
    /// An instance silent for this long loses its service tasks to others.
    pub instance_grace: Duration,
    /// How long a poll is held open at most.
    pub poll_wait: Duration,
    /// A scheduling pass runs at least this often.
    pub scheduler_interval: Duration,
    /// Stopped tasks stay visible (DescribeTasks) this long.
    pub stopped_task_retention: Duration,
    pub log_level: String,
    pub log_json: bool,
}

pub type Loaded = conf::Loaded<Config>;

/// Every key the control endpoint reads.
pub const KEYS: &[KeySpec<Config>] = &[
    KeySpec {
        name: "DOCKHAND_CONTROL_LISTEN",
        default: "0.0.0.0:8443",
        meaning: "address of the API (operators and agents)",
        apply: |c, v| {
            c.listen = v
                .parse()
                .map_err(|_| format!("expected an IP:PORT address, got {v:?}"))?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_DATADIR",
        default: "/var/lib/dockhand-control",
        meaning: "state directory; the SQLite database control.sqlite lives here",
        apply: |c, v| {
            c.data_dir = absolute_path(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_DATABASE",
        default: "",
        meaning: "postgres://user:password@host:port/db to keep the state in PostgreSQL (several replicas; TLS with ?sslmode=verify-full&sslrootcert=CA.pem, see docs/control.md); empty for the SQLite file",
        apply: |c, v| {
            c.database = if v.is_empty() {
                None
            } else if v.starts_with("postgres://") || v.starts_with("postgresql://") {
                Some(v.to_string())
            } else {
                return Err("expected a postgres:// URL, or empty for SQLite".into());
            };
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_CREDENTIALS",
        default: "/etc/dockhand/control-credentials",
        meaning: "access keys, in the AWS shared-credentials format, with a role per profile",
        apply: |c, v| {
            c.credentials = absolute_path(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_REGION",
        default: "us-east-1",
        meaning: "region in ARNs and in the SigV4 credential scope",
        apply: |c, v| {
            let ok = !v.is_empty()
                && v.len() <= 32
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(format!("expected a region name such as us-east-1, got {v:?}"));
            }
            c.region = v.to_string();
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_ACCOUNT",
        default: "000000000000",
        meaning: "12-digit account id in every ARN",
        apply: |c, v| {
            if v.len() != 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("expected 12 digits, got {v:?}"));
            }
            c.account = v.to_string();
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_TLS_CERT",
        default: "",
        meaning: "PEM certificate chain; set with DOCKHAND_CONTROL_TLS_KEY for HTTPS",
        apply: |c, v| {
            c.tls_cert = if v.is_empty() {
                None
            } else {
                Some(absolute_path(v)?)
            };
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_TLS_KEY",
        default: "",
        meaning: "PEM private key of the certificate",
        apply: |c, v| {
            c.tls_key = if v.is_empty() {
                None
            } else {
                Some(absolute_path(v)?)
            };
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_HEARTBEAT_TIMEOUT",
        default: "50s",
        meaning: "an instance that has not polled for this long is agentConnected false and gets no new task (5s-10m)",
        apply: |c, v| {
            c.heartbeat_timeout = duration_in(v, 5 * SECOND, 10 * MINUTE)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_INSTANCE_GRACE",
        default: "5m",
        meaning: "an instance silent for this long has its service tasks replaced on others (5s-24h)",
        apply: |c, v| {
            c.instance_grace = duration_in(v, 5 * SECOND, 24 * HOUR)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_POLL_WAIT",
        default: "20s",
        meaning: "how long an agent's poll is held open at most (1s-25s)",
        apply: |c, v| {
            c.poll_wait = duration_in(v, SECOND, 25 * SECOND)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_SCHEDULER_INTERVAL",
        default: "1s",
        meaning: "a scheduling pass runs at least this often (changes start one at once) (100ms-1m)",
        apply: |c, v| {
            c.scheduler_interval = duration_in(v, Duration::from_millis(100), MINUTE)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_STOPPED_TASK_RETENTION",
        default: "1h",
        meaning: "stopped tasks stay visible to DescribeTasks and ListTasks this long (1m-720h)",
        apply: |c, v| {
            c.stopped_task_retention = duration_in(v, MINUTE, 720 * HOUR)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_LOG_LEVEL",
        default: "info",
        meaning: "error, warn, info or debug",
        apply: |c, v| {
            if !["error", "warn", "info", "debug"].contains(&v) {
                return Err(format!("expected error, warn, info or debug, got {v:?}"));
            }
            c.log_level = non_empty(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_LOG_FORMAT",
        default: "text",
        meaning: "text, or json for one JSON object per line",
        apply: |c, v| {
            c.log_json = match v {
                "text" => false,
                "json" => true,
                _ => return Err(format!("expected text or json, got {v:?}")),
            };
            Ok(())
        },
    },
];

/// How the control endpoint reads its file and environment: only
/// `DOCKHAND_CONTROL_*` keys are its own.
pub const SCHEME: Scheme<Config> = Scheme {
    keys: KEYS,
    owned_prefixes: &["DOCKHAND_CONTROL_"],
    foreign_prefixes: &["DOCKHAND_", "ECS_"],
    quiet: &[],
    from_env: |k| k.starts_with("DOCKHAND_CONTROL_"),
};

impl Config {
    pub fn defaults() -> Config {
        let mut c = Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            data_dir: PathBuf::new(),
            database: None,
            credentials: PathBuf::new(),
            region: String::new(),
            account: String::new(),
            tls_cert: None,
            tls_key: None,
            heartbeat_timeout: Duration::ZERO,
            instance_grace: Duration::ZERO,
            poll_wait: Duration::ZERO,
            scheduler_interval: Duration::ZERO,
            stopped_task_retention: Duration::ZERO,
            log_level: String::new(),
            log_json: false,
        };
        // The defaults are constants of this file, checked by a unit test.
        if let Err(e) = conf::defaults(&SCHEME, &mut c) {
            unreachable!("built-in default must parse: {e}");
        }
        c
    }

    /// Loads `path` (absent is fine unless `required`) with `env` on top.
    pub fn load(
        path: &Path,
        required: bool,
        env: &BTreeMap<String, String>,
    ) -> Result<Loaded, ConfigErrors> {
        let text = match read_file(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(e) => {
                return Err(ConfigErrors(vec![conf::ConfigError {
                    source: conf::Source::File {
                        path: path.to_path_buf(),
                        line: 0,
                    },
                    key: None,
                    why: format!("cannot read config file: {e}"),
                }]))
            }
        };
        Self::from_parts(path, &text, env)
    }

    pub fn from_parts(
        path: &Path,
        text: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Loaded, ConfigErrors> {
        let loaded = conf::parse(&SCHEME, Config::defaults(), path, text, env)?;
        let c = &loaded.config;
        let mut errors = Vec::new();
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            errors.push(conf::ConfigError {
                source: conf::source_of(&loaded.effective, "DOCKHAND_CONTROL_TLS_KEY"),
                key: Some("DOCKHAND_CONTROL_TLS_KEY".into()),
                why: "DOCKHAND_CONTROL_TLS_CERT and DOCKHAND_CONTROL_TLS_KEY are set together"
                    .into(),
            });
        }
        if c.heartbeat_timeout >= c.instance_grace {
            errors.push(conf::ConfigError {
                source: conf::source_of(&loaded.effective, "DOCKHAND_CONTROL_INSTANCE_GRACE"),
                key: Some("DOCKHAND_CONTROL_INSTANCE_GRACE".into()),
                why: "must be longer than DOCKHAND_CONTROL_HEARTBEAT_TIMEOUT".into(),
            });
        }
        if c.poll_wait >= c.heartbeat_timeout {
            errors.push(conf::ConfigError {
                source: conf::source_of(&loaded.effective, "DOCKHAND_CONTROL_POLL_WAIT"),
                key: Some("DOCKHAND_CONTROL_POLL_WAIT".into()),
                why: "must be shorter than DOCKHAND_CONTROL_HEARTBEAT_TIMEOUT (a held poll is the heartbeat)".into(),
            });
        }
        if errors.is_empty() {
            Ok(loaded)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The SQLite file when no database URL is set.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("control.sqlite")
    }
}

/// Reads a regular file of at most [`MAX_CONFIG_BYTES`].
fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    let mut s = String::new();
    f.take(MAX_CONFIG_BYTES).read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigErrors> {
        Config::from_parts(
            Path::new("/etc/dockhand/control.conf"),
            text,
            &BTreeMap::new(),
        )
    }

    #[test]
    fn defaults_and_errors() {
        let c = parse("").unwrap().config;
        assert_eq!(c.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.account, "000000000000");
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(50));
        assert_eq!(c.instance_grace, Duration::from_secs(300));
        let e = parse("DOCKHAND_CONTROL_ACCOUNT=12\nDOCKHAND_CONTROL_LISTN=x\nDOCKHAND_CONTROL_DATABASE=mysql://x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":1: DOCKHAND_CONTROL_ACCOUNT: expected 12 digits"),
            "{e}"
        );
        assert!(e.contains("did you mean DOCKHAND_CONTROL_LISTEN"), "{e}");
        assert!(e.contains("expected a postgres:// URL"), "{e}");
        let e = parse("DOCKHAND_CONTROL_TLS_CERT=/x.pem\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("set together"), "{e}");
    }

    #[test]
    fn the_reference_documents_every_key_and_default() {
        let doc = include_str!("../../docs/configuration.md");
        for k in KEYS {
            let row = format!(
                "| `{}` | {} |",
                k.name,
                if k.default.is_empty() {
                    "empty".to_string()
                } else {
                    format!("`{}`", k.default)
                }
            );
            assert!(
                doc.contains(&row),
                "docs/configuration.md lacks the row {row}"
            );
        }
    }
}
