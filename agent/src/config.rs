//! Agent configuration: the ECS agent's `ecs.config` format.
//!
//! Settings come from three layers, highest first: the process environment,
//! the config file (`KEY=VALUE` lines, as systemd's `EnvironmentFile=` reads
//! them) and the built-in defaults. [`Config::load`] reads every layer, checks
//! every value, and either returns a whole valid [`Config`] together with where
//! each setting came from, or every problem at once as `PATH:LINE: KEY: why`.
//! Nothing here touches Docker or the network, so a bad config fails before
//! anything is started (exit 78, EX_CONFIG).
//!
//! Each key is one row of [`KEYS`]: its name, default, meaning and parser. The
//! table drives parsing, `dockhand config check` and the reference in
//! `docs/configuration.md`.

use dockhand_model::conf::{
    self, absolute_path, bounded, duration_in, non_empty, parse_bool, KeySpec, Scheme, DAY, HOUR,
    MILLI, MINUTE, SECOND, ZERO,
};
pub use dockhand_model::conf::{
    parse_duration, ConfigError, ConfigErrors, Source, EXIT_CONFIG, MAX_CONFIG_BYTES,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the agent looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ecs/ecs.config";

/// How `ECS_IMAGE_PULL_BEHAVIOR` decides whether to pull (ECS semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullBehavior {
    /// Pull; use a cached image if the pull fails.
    Default,
    /// Always pull; fail the task if the pull fails.
    Always,
    /// Pull only if no image is cached.
    Once,
    /// Use the cached image if there is one, pull otherwise.
    PreferCached,
}

/// Image cleanup, with the ECS agent's knobs and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageCleanup {
    pub disabled: bool,
    pub interval: Duration,
    pub minimum_age: Duration,
    pub per_cycle: usize,
    /// Only images this agent pulled or ran are candidates.
    pub exclude_untracked: bool,
}

/// `ECS_LOGLEVEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Crit,
    Error,
    Warn,
    Info,
    Debug,
}

/// `DOCKHAND_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The agent's effective settings. See [`KEYS`] for each key's meaning.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster: String,
    /// Control endpoint URLs (several: replicas, tried in turn); empty
    /// runs standalone from service files.
    pub backend_hosts: Vec<String>,
    /// The instance key for the control endpoint (managed mode).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// The SigV4 region the control endpoint checks.
    pub region: String,
    /// This host's instance id (`ec2InstanceId`); else from
    /// `/etc/machine-id`, or EC2 instance metadata where enabled.
    pub instance_id: Option<String>,
    /// Read the instance id from EC2 instance metadata (never by default).
    pub ec2_metadata: bool,
    /// PEM file of the CA that signed the control endpoint's certificate.
    pub control_ca_file: Option<PathBuf>,
    /// Managed mode: on shutdown, ask for DRAINING and wait until this
    /// host's service tasks run elsewhere.
    pub drain_on_shutdown: bool,
    /// How long that wait lasts at most.
    pub drain_timeout: Duration,
    pub data_dir: PathBuf,
    pub log_level: LogLevel,
    pub docker_host: String,
    pub reserved_memory_mib: u64,
    pub reserved_ports: Vec<u16>,
    /// Inclusive range that `hostPort: 0` ports are taken from.
    pub dynamic_port_range: (u16, u16),
    pub container_stop_timeout: Duration,
    pub container_start_timeout: Duration,
    pub image_pull_behavior: PullBehavior,
    pub image_pull_timeout: Duration,
    pub task_cleanup_wait: Duration,
    pub image_cleanup: ImageCleanup,
    pub instance_attributes: BTreeMap<String, String>,
    pub services_dir: PathBuf,
    pub proxy_listen: Vec<SocketAddr>,
    /// The proxy's TLS listeners (none by default).
    pub proxy_tls_listen: Vec<SocketAddr>,
    /// The default certificate chain and key (PEM) of the TLS listeners.
    pub proxy_tls_cert: Option<PathBuf>,
    pub proxy_tls_key: Option<PathBuf>,
    pub api_listen: SocketAddr,
    pub port_bind_address: IpAddr,
    pub log_format: LogFormat,
    pub proxy: dockhand_proxy::Settings,
    /// Docker's client config directory (`DOCKER_CONFIG`, else
    /// `$HOME/.docker`): where registry credentials are read, as `docker
    /// pull` reads them. Docker's own variable, not an ecs.config key.
    pub docker_config_dir: PathBuf,
}

/// A loaded agent config.
pub type Loaded = conf::Loaded<Config>;

/// Every key the agent reads. ECS names where the meaning is ECS's.
pub const KEYS: &[KeySpec<Config>] = &[
    KeySpec {
        name: "ECS_CLUSTER",
        default: "default",
        meaning: "cluster to join",
        apply: |c, v| {
            c.cluster = non_empty(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_BACKEND_HOST",
        default: "",
        meaning: "control endpoint URL (comma-separated for several replicas, tried in turn); empty runs standalone from service files",
        apply: |c, v| {
            c.backend_hosts = v
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|u| {
                    if (u.starts_with("http://") || u.starts_with("https://")) && !u.contains(char::is_whitespace) {
                        Ok(u.trim_end_matches('/').to_string())
                    } else {
                        Err(format!("expected http:// or https:// URLs, got {u:?}"))
                    }
                })
                .collect::<Result<_, _>>()?;
            Ok(())
        },
    },
    KeySpec {
        name: "AWS_ACCESS_KEY_ID",
        default: "",
        meaning: "managed mode: the instance key's id (dockhand control credentials new --role instance)",
        apply: |c, v| {
            c.access_key_id = (!v.is_empty()).then(|| v.to_string());
            Ok(())
        },
    },
    KeySpec {
        name: "AWS_SECRET_ACCESS_KEY",
        default: "",
        meaning: "managed mode: the instance key's secret (never printed)",
        apply: |c, v| {
            c.secret_access_key = (!v.is_empty()).then(|| v.to_string());
            Ok(())
        },
    },
    KeySpec {
        name: "AWS_DEFAULT_REGION",
        default: "us-east-1",
        meaning: "managed mode: the region requests are signed for (the control endpoint's DOCKHAND_CONTROL_REGION)",
        apply: |c, v| {
            c.region = non_empty(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_INSTANCE_ID",
        default: "",
        meaning: "managed mode: this host's instance id; empty derives one from /etc/machine-id",
        apply: |c, v| {
            if v.len() > 255 || v.contains(char::is_whitespace) {
                return Err("expected an id of at most 255 characters without spaces".into());
            }
            c.instance_id = (!v.is_empty()).then(|| v.to_string());
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_EC2_METADATA",
        default: "false",
        meaning: "managed mode: true reads the instance id from EC2 instance metadata (user-data.sh sets it on EC2); never asked otherwise",
        apply: |c, v| {
            c.ec2_metadata = parse_bool(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_CONTROL_CA_FILE",
        default: "",
        meaning: "managed mode: PEM certificate of the CA that signed the control endpoint's certificate; empty trusts the usual public CAs",
        apply: |c, v| {
            c.control_ca_file = if v.is_empty() { None } else { Some(absolute_path(v)?) };
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_DRAIN_ON_SHUTDOWN",
        default: "true",
        meaning: "managed mode: on SIGTERM, ask for DRAINING, answer /dockhand/health with 503 and wait until this host's service tasks run elsewhere before exiting (SIGINT exits at once)",
        apply: |c, v| {
            c.drain_on_shutdown = parse_bool(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_DRAIN_TIMEOUT",
        default: "5m",
        meaning: "managed mode: how long a shutdown waits for the drain at most (0s-1h)",
        apply: |c, v| {
            c.drain_timeout = duration_in(v, ZERO, HOUR)?;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_DATADIR",
        default: "/var/lib/dockhand",
        meaning: "agent state (instance id, task records, crash backoff)",
        apply: |c, v| {
            c.data_dir = absolute_path(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_LOGLEVEL",
        default: "info",
        meaning: "crit, error, warn, info or debug",
        apply: |c, v| {
            c.log_level = match v.to_ascii_lowercase().as_str() {
                "crit" => LogLevel::Crit,
                "error" => LogLevel::Error,
                "warn" => LogLevel::Warn,
                "info" => LogLevel::Info,
                "debug" => LogLevel::Debug,
                _ => {
                    return Err(format!(
                        "expected crit, error, warn, info or debug, got {v:?}"
                    ))
                }
            };
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKER_HOST",
        default: "unix:///var/run/docker.sock",
        meaning: "Docker Engine address: unix:///path or tcp://host:port",
        apply: |c, v| {
            if !(v.starts_with("unix:///") || v.starts_with("tcp://")) {
                return Err(format!(
                    "expected unix:///path or tcp://host:port, got {v:?}"
                ));
            }
            c.docker_host = v.to_string();
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_RESERVED_MEMORY",
        default: "0",
        meaning: "MiB of host memory withheld from tasks (0-16777216)",
        apply: |c, v| {
            c.reserved_memory_mib = bounded(v, 0, 16 * 1024 * 1024)? as u64;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_RESERVED_PORTS",
        default: "[22,2375,2376,51678,51679]",
        meaning: "host ports never handed out to tasks (JSON array)",
        apply: |c, v| {
            let bad = || format!("expected a JSON array of ports 1-65535, got {v:?}");
            let mut ports = serde_json::from_str::<Vec<u16>>(v).map_err(|_| bad())?;
            if ports.contains(&0) {
                return Err(bad());
            }
            // Repeats are harmless, but counted twice they made a range
            // look wholly reserved when it was not.
            ports.sort_unstable();
            ports.dedup();
            c.reserved_ports = ports;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_DYNAMIC_HOST_PORT_RANGE",
        default: "49153-65535",
        meaning: "where hostPort 0 ports come from (FIRST-LAST, inclusive)",
        apply: |c, v| {
            let bad = || format!("expected FIRST-LAST with 1 <= FIRST <= LAST <= 65535, got {v:?}");
            let (a, b) = v.split_once('-').ok_or_else(bad)?;
            let a: u16 = a.trim().parse().map_err(|_| bad())?;
            let b: u16 = b.trim().parse().map_err(|_| bad())?;
            if a == 0 || a > b {
                return Err(bad());
            }
            c.dynamic_port_range = (a, b);
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_CONTAINER_STOP_TIMEOUT",
        default: "30s",
        meaning: "SIGTERM to SIGKILL, for containers that set no stopTimeout (0s-24h)",
        apply: |c, v| {
            c.container_stop_timeout = duration_in(v, ZERO, DAY)?;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_CONTAINER_START_TIMEOUT",
        default: "3m",
        meaning: "how long a container may take to start before its task is failed (1s-24h)",
        apply: |c, v| {
            c.container_start_timeout = duration_in(v, SECOND, DAY)?;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_IMAGE_PULL_BEHAVIOR",
        default: "default",
        meaning: "default, always, once or prefer-cached (ECS semantics)",
        apply: |c, v| {
            c.image_pull_behavior = match v {
                "default" => PullBehavior::Default,
                "always" => PullBehavior::Always,
                "once" => PullBehavior::Once,
                "prefer-cached" => PullBehavior::PreferCached,
                _ => {
                    return Err(format!(
                        "expected default, always, once or prefer-cached, got {v:?}"
                    ))
                }
            };
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_IMAGE_PULL_TIMEOUT",
        default: "2h",
        meaning: "a pull taking longer fails (its task does not start) (1s-24h)",
        apply: |c, v| {
            c.image_pull_timeout = duration_in(v, SECOND, DAY)?;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION",
        default: "1h",
        meaning: "stopped task containers are removed after this (0s-30d, as 720h)",
        apply: |c, v| {
            c.task_cleanup_wait = duration_in(v, ZERO, 30 * DAY)?;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_DISABLE_IMAGE_CLEANUP",
        default: "false",
        meaning: "true: never remove unused images",
        apply: |c, v| {
            c.image_cleanup.disabled = parse_bool(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_IMAGE_CLEANUP_INTERVAL",
        default: "30m",
        meaning: "how often unused images are looked for (1s-7d, as 168h)",
        apply: |c, v| {
            c.image_cleanup.interval = duration_in(v, SECOND, 7 * DAY)?;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_IMAGE_MINIMUM_CLEANUP_AGE",
        default: "1h",
        meaning: "an image unused for less than this is kept (0s-365d, as 8760h)",
        apply: |c, v| {
            c.image_cleanup.minimum_age = duration_in(v, ZERO, 365 * DAY)?;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_NUM_IMAGES_DELETE_PER_CYCLE",
        default: "5",
        meaning: "images removed per cleanup cycle, at most (oldest first)",
        apply: |c, v| {
            c.image_cleanup.per_cycle = bounded(v, 1, 1000)?;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_EXCLUDE_UNTRACKED_IMAGE",
        default: "true",
        meaning: "true: only images Dockhand pulled or ran are removed; false: any unused image",
        apply: |c, v| {
            c.image_cleanup.exclude_untracked = parse_bool(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "ECS_INSTANCE_ATTRIBUTES",
        default: "{}",
        meaning: "JSON map of string attributes, reported at registration",
        apply: |c, v| {
            let map: BTreeMap<String, String> = serde_json::from_str(v)
                .map_err(|_| format!("expected a JSON object of strings, got {v:?}"))?;
            // The control endpoint's rules, here, so that `config check`
            // says it rather than a registration refused for ever.
            // (Dockhand adds a few of its own at registration.)
            if map.len() > dockhand_model::instance::Attribute::MAX_PER_INSTANCE - 10 {
                return Err(format!(
                    "{} attributes: at most {}",
                    map.len(),
                    dockhand_model::instance::Attribute::MAX_PER_INSTANCE - 10
                ));
            }
            for (name, value) in &map {
                dockhand_model::instance::Attribute::check(name, Some(value))?;
            }
            c.instance_attributes = map;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_SERVICES_DIR",
        default: "/etc/dockhand/services",
        meaning: "directory of standalone service files (<serviceName>.json)",
        apply: |c, v| {
            c.services_dir = absolute_path(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_LISTEN",
        default: "0.0.0.0:80",
        meaning: "comma-separated proxy listener addresses",
        apply: |c, v| {
            c.proxy_listen = addr_list(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_API_LISTEN",
        default: "127.0.0.1:51678",
        meaning: "local API address",
        apply: |c, v| {
            c.api_listen = v
                .parse()
                .map_err(|_| format!("expected an IP:PORT address, got {v:?}"))?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PORT_BIND_ADDRESS",
        default: "127.0.0.1",
        meaning: "host IP that task ports are published on",
        apply: |c, v| {
            c.port_bind_address = v
                .parse()
                .map_err(|_| format!("expected an IP address, got {v:?}"))?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_LOG_FORMAT",
        default: "text",
        meaning: "text, or json for one JSON object per line",
        apply: |c, v| {
            c.log_format = match v {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(format!("expected text or json, got {v:?}")),
            };
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_CONNECT_TIMEOUT",
        default: "5s",
        meaning: "proxy: connecting to a task (1ms-5m)",
        apply: |c, v| {
            c.proxy.connect_timeout = duration_in(v, MILLI, 5 * MINUTE)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_RESPONSE_TIMEOUT",
        default: "60s",
        meaning: "proxy: from request sent to response headers, 504 after (1ms-24h)",
        apply: |c, v| {
            c.proxy.response_timeout = duration_in(v, MILLI, DAY)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_IDLE_TIMEOUT",
        default: "60s",
        meaning: "proxy: an idle client keep-alive connection is closed after this; also the time a client has to send its headers (1ms-24h)",
        apply: |c, v| {
            c.proxy.idle_timeout = duration_in(v, MILLI, DAY)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_MAX_HEADER_BYTES",
        default: "65536",
        meaning: "proxy: request line and headers, in bytes (431 beyond)",
        apply: |c, v| {
            c.proxy.max_header_bytes = bounded(v, 1024, 1 << 20)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_MAX_HEADERS",
        default: "100",
        meaning: "proxy: number of request headers (431 beyond)",
        apply: |c, v| {
            c.proxy.max_headers = bounded(v, 8, 10_000)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_MAX_CONNECTIONS",
        default: "10000",
        meaning: "proxy: open client connections; more wait in the listen backlog (lowered at start to fit the open-file limit)",
        apply: |c, v| {
            c.proxy.max_connections = bounded(v, 1, 1_000_000)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_SHUTDOWN_GRACE",
        default: "30s",
        meaning: "proxy: on SIGTERM, how long in-flight requests get to finish (0s-1h)",
        apply: |c, v| {
            c.proxy.shutdown_grace = duration_in(v, ZERO, HOUR)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_MAX_CONNECTIONS_PER_CLIENT",
        default: "1000",
        meaning: "proxy: open connections from one client IP address; more are closed at once, so one client cannot lock the others out",
        apply: |c, v| {
            c.proxy.max_connections_per_client = bounded(v, 1, 1_000_000)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_TLS_LISTEN",
        default: "",
        meaning: "comma-separated TLS listener addresses of the proxy (e.g. 0.0.0.0:443); none by default",
        apply: |c, v| {
            c.proxy_tls_listen = addr_list(v)?;
            if let Some(a) = c.proxy_tls_listen.first() {
                c.proxy.https_port = a.port();
            }
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_TLS_CERT",
        default: "",
        meaning: "TLS: the default certificate chain (PEM file), for names no route's certificate covers and clients sending no name; reloaded when it changes and on SIGHUP",
        apply: |c, v| {
            c.proxy_tls_cert = optional_path(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_TLS_KEY",
        default: "",
        meaning: "TLS: the default certificate's private key (PEM file: PKCS#8, PKCS#1 or SEC1)",
        apply: |c, v| {
            c.proxy_tls_key = optional_path(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_HTTP2",
        default: "true",
        meaning: "TLS listeners offer HTTP/2 (ALPN h2) as well as HTTP/1.1",
        apply: |c, v| {
            c.proxy.http2 = parse_bool(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_H2C",
        default: "false",
        meaning: "plain listeners also take prior-knowledge HTTP/2 (h2c), e.g. from a load balancer in front",
        apply: |c, v| {
            c.proxy.h2c = parse_bool(v)?;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_H2_MAX_STREAMS",
        default: "100",
        meaning: "HTTP/2: concurrent streams per client connection (1-10000)",
        apply: |c, v| {
            c.proxy.h2_max_streams = bounded(v, 1, 10_000)? as u32;
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_THREADS",
        default: "0",
        meaning: "threads serving client connections, each an event loop accepting on every proxy listener (1-1024; 0: one per CPU)",
        apply: |c, v| {
            c.proxy.threads = match bounded(v, 0, 1024)? {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => n,
            };
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_HEALTH_PATH",
        default: "/dockhand/health",
        meaning: "the host's health check on the proxy listeners, never routed to a task: 200 while the host serves, 503 from the moment it drains or shuts down",
        apply: |c, v| {
            dockhand_model::route::check_origin_form(v)?;
            if v.contains('?') {
                return Err("must not contain a query ('?')".into());
            }
            c.proxy.health_path = v.to_string();
            Ok(())
        },
    },
    KeySpec {
        name: "DOCKHAND_PROXY_ACCESS_LOG",
        default: "off",
        meaning: "access log, one JSON object per request: off, stdout, or an absolute file path (appended; reopened on SIGHUP)",
        apply: |c, v| {
            c.proxy.access_log = match v {
                "off" => dockhand_proxy::AccessLog::Off,
                "stdout" => dockhand_proxy::AccessLog::Stdout,
                p => dockhand_proxy::AccessLog::File(absolute_path(p).map_err(|e| {
                    format!("expected off, stdout or an absolute path: {e}")
                })?),
            };
            Ok(())
        },
    },
];

/// Comma-separated `IP:PORT` addresses (empty: none).
fn addr_list(v: &str) -> Result<Vec<SocketAddr>, String> {
    v.split(',')
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse()
                .map_err(|_| format!("expected IP:PORT addresses, got {a:?}"))
        })
        .collect()
}

/// An absolute path, or none when empty.
fn optional_path(v: &str) -> Result<Option<PathBuf>, String> {
    if v.trim().is_empty() {
        Ok(None)
    } else {
        absolute_path(v).map(Some)
    }
}

/// How the agent reads `ecs.config` and its environment: `DOCKHAND_*` is
/// Dockhand's (an unknown one is an error), `ECS_*` the ECS agent's (an
/// unknown one is warned about and ignored). The control endpoint's keys
/// (`DOCKHAND_CONTROL_*`) in the environment are not the agent's business.
pub const SCHEME: Scheme<Config> = Scheme {
    keys: KEYS,
    owned_prefixes: &["DOCKHAND_"],
    foreign_prefixes: &["ECS_"],
    // ECS agent keys read elsewhere or meaning nothing on a Dockhand host.
    quiet: &["ECS_ENABLE_TASK_IAM_ROLE", "ECS_LOGFILE"],
    from_env: |k| {
        ((k.starts_with("ECS_") || k.starts_with("DOCKHAND_") || k == "DOCKER_HOST")
            && (!k.starts_with("DOCKHAND_CONTROL_") || k == "DOCKHAND_CONTROL_CA_FILE"))
            || [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_DEFAULT_REGION",
            ]
            .contains(&k)
    },
};

impl Config {
    /// Whether the agent runs managed by a control endpoint.
    pub fn managed(&self) -> bool {
        !self.backend_hosts.is_empty()
    }

    /// The built-in defaults, as [`KEYS`] states them.
    pub fn defaults() -> Config {
        let mut c = Config {
            cluster: String::new(),
            backend_hosts: Vec::new(),
            access_key_id: None,
            secret_access_key: None,
            region: String::new(),
            instance_id: None,
            ec2_metadata: false,
            control_ca_file: None,
            drain_on_shutdown: true,
            drain_timeout: Duration::ZERO,
            data_dir: PathBuf::new(),
            log_level: LogLevel::Info,
            docker_host: String::new(),
            reserved_memory_mib: 0,
            reserved_ports: Vec::new(),
            dynamic_port_range: (0, 0),
            container_stop_timeout: Duration::ZERO,
            container_start_timeout: Duration::ZERO,
            image_pull_behavior: PullBehavior::Default,
            image_pull_timeout: Duration::ZERO,
            task_cleanup_wait: Duration::ZERO,
            image_cleanup: ImageCleanup {
                disabled: false,
                interval: Duration::ZERO,
                minimum_age: Duration::ZERO,
                per_cycle: 0,
                exclude_untracked: true,
            },
            instance_attributes: BTreeMap::new(),
            services_dir: PathBuf::new(),
            proxy_listen: Vec::new(),
            proxy_tls_listen: Vec::new(),
            proxy_tls_cert: None,
            proxy_tls_key: None,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 51678)),
            port_bind_address: IpAddr::from([127, 0, 0, 1]),
            log_format: LogFormat::Text,
            proxy: dockhand_proxy::Settings::default(),
            docker_config_dir: PathBuf::from("/root/.docker"),
        };
        // The defaults are constants of this file, checked by a unit test.
        if let Err(e) = conf::defaults(&SCHEME, &mut c) {
            unreachable!("built-in default must parse: {e}");
        }
        c
    }

    /// Loads the config file at `path` (it may be absent only when
    /// `required` is false) with `env` layered on top.
    ///
    /// `env` is passed in, never read here, so tests parse from maps.
    pub fn load(
        path: &Path,
        required: bool,
        env: &BTreeMap<String, String>,
    ) -> Result<Loaded, ConfigErrors> {
        let text = match crate::files::read_regular(path, MAX_CONFIG_BYTES) {
            Ok(text) => Some(text),
            Err(crate::files::ReadError::Io(e))
                if e.kind() == std::io::ErrorKind::NotFound && !required =>
            {
                None
            }
            Err(e) => {
                return Err(ConfigErrors(vec![ConfigError {
                    source: Source::File {
                        path: path.to_path_buf(),
                        line: 0,
                    },
                    key: None,
                    why: format!("cannot read config file: {e}"),
                }]))
            }
        };
        Self::from_parts(path, text.as_deref().unwrap_or(""), env)
    }

    /// Parses file text (as if read from `path`) with `env` layered on top.
    pub fn from_parts(
        path: &Path,
        text: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Loaded, ConfigErrors> {
        let mut defaults = Config::defaults();
        defaults.docker_config_dir = crate::registry::docker_config_dir(env);
        let loaded = conf::parse(&SCHEME, defaults, path, text, env)?;
        let mut errors = loaded.config.cross_check(&loaded.effective);
        if errors.is_empty() {
            Ok(loaded)
        } else {
            conf::sort(&mut errors);
            Err(ConfigErrors(errors))
        }
    }

    /// Checks between keys, once each key is valid on its own.
    fn cross_check(&self, effective: &[(&'static str, String, Source)]) -> Vec<ConfigError> {
        let source_of = |name: &str| conf::source_of(effective, name);
        let mut errors = Vec::new();
        let (lo, hi) = self.dynamic_port_range;
        let reserved_in_range = self
            .reserved_ports
            .iter()
            .filter(|p| (lo..=hi).contains(*p))
            .count();
        if usize::from(hi - lo) < reserved_in_range {
            errors.push(ConfigError {
                source: source_of("ECS_DYNAMIC_HOST_PORT_RANGE"),
                key: Some("ECS_DYNAMIC_HOST_PORT_RANGE".into()),
                why: "every port of the range is in ECS_RESERVED_PORTS".into(),
            });
        }
        if !self.backend_hosts.is_empty()
            && (self.access_key_id.is_none() || self.secret_access_key.is_none())
        {
            errors.push(ConfigError {
                source: source_of("ECS_BACKEND_HOST"),
                key: Some("ECS_BACKEND_HOST".into()),
                why: "managed mode needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY too: an instance key, made with `dockhand control credentials new --role instance --cluster CLUSTER`".into(),
            });
        }
        if self.proxy_tls_cert.is_some() != self.proxy_tls_key.is_some() {
            let (set, missing) = if self.proxy_tls_cert.is_some() {
                ("DOCKHAND_PROXY_TLS_CERT", "DOCKHAND_PROXY_TLS_KEY")
            } else {
                ("DOCKHAND_PROXY_TLS_KEY", "DOCKHAND_PROXY_TLS_CERT")
            };
            errors.push(ConfigError {
                source: source_of(set),
                key: Some(set.into()),
                why: format!("needs {missing} too"),
            });
        }
        if let Some(a) = self
            .proxy_tls_listen
            .iter()
            .find(|a| self.proxy_listen.contains(a) || **a == self.api_listen)
        {
            errors.push(ConfigError {
                source: source_of("DOCKHAND_PROXY_TLS_LISTEN"),
                key: Some("DOCKHAND_PROXY_TLS_LISTEN".into()),
                why: format!("{a} is also a plain proxy listener or the local API"),
            });
        }
        if self.proxy_listen.contains(&self.api_listen) {
            errors.push(ConfigError {
                source: source_of("DOCKHAND_API_LISTEN"),
                key: Some("DOCKHAND_API_LISTEN".into()),
                why: format!("{} is also a proxy listener", self.api_listen),
            });
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(text: &str, e: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
        Config::from_parts(Path::new("/etc/ecs/ecs.config"), text, &env(e))
    }

    #[test]
    fn defaults_match_the_design() {
        let c = parse("", &[]).unwrap().config;
        assert_eq!(c.cluster, "default");
        assert!(c.backend_hosts.is_empty());
        assert!(c.drain_on_shutdown);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/dockhand"));
        assert_eq!(c.reserved_ports, vec![22, 2375, 2376, 51678, 51679]);
        assert_eq!(c.dynamic_port_range, (49153, 65535));
        assert_eq!(c.container_stop_timeout, Duration::from_secs(30));
        assert_eq!(c.container_start_timeout, Duration::from_secs(180));
        assert_eq!(c.task_cleanup_wait, Duration::from_secs(3600));
        assert_eq!(c.proxy_listen, vec!["0.0.0.0:80".parse().unwrap()]);
        assert_eq!(c.api_listen, "127.0.0.1:51678".parse().unwrap());
        assert_eq!(c.port_bind_address, IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn managed_mode_needs_a_key_and_never_shows_the_secret() {
        let e = parse("ECS_BACKEND_HOST=https://a:8443, https://b:8443\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ecs.config:1: ECS_BACKEND_HOST: managed mode needs AWS_ACCESS_KEY_ID"),
            "{e}"
        );
        let l = parse(
            "ECS_BACKEND_HOST=https://a:8443, https://b:8443/\nAWS_ACCESS_KEY_ID=AKIAX\n",
            &[
                ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
                ("AWS_SESSION_TOKEN", "ignored"),
            ],
        )
        .unwrap();
        assert!(l.config.managed());
        assert_eq!(l.config.backend_hosts, ["https://a:8443", "https://b:8443"]);
        assert_eq!(l.config.secret_access_key.as_deref(), Some("s3cr3t"));
        let shown: Vec<String> = l
            .effective
            .iter()
            .map(|(k, v, _)| format!("{k}={v}"))
            .collect();
        assert!(
            shown.contains(&"AWS_SECRET_ACCESS_KEY=(set, not shown)".to_string()),
            "{shown:?}"
        );
        assert!(!shown.iter().any(|s| s.contains("s3cr3t")));
        assert!(parse("ECS_BACKEND_HOST=control:8443\n", &[]).is_err());
    }

    #[test]
    fn reserved_ports_are_ports_and_repeats_count_once() {
        assert!(parse("ECS_RESERVED_PORTS=[0]\n", &[]).is_err());
        let l = parse(
            "ECS_RESERVED_PORTS=[22,22]\nECS_DYNAMIC_HOST_PORT_RANGE=22-23\n",
            &[],
        )
        .unwrap();
        assert_eq!(l.config.reserved_ports, [22]);
    }

    #[test]
    fn instance_attributes_follow_the_control_endpoints_rules() {
        let l = parse(
            "ECS_INSTANCE_ATTRIBUTES={\"stack\": \"prod\", \"team/a@b\": \"x\"}\n",
            &[],
        )
        .unwrap();
        assert_eq!(l.config.instance_attributes.len(), 2);
        let e = parse("\nECS_INSTANCE_ATTRIBUTES={\"bad name\": \"x\"}\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ecs.config:2: ECS_INSTANCE_ATTRIBUTES: attribute \"bad name\""),
            "{e}"
        );
        let long = format!(
            "ECS_INSTANCE_ATTRIBUTES={{\"a\": \"{}\"}}\n",
            "v".repeat(129)
        );
        assert!(parse(&long, &[]).is_err());
        let many: Vec<String> = (0..91).map(|i| format!("\"a{i}\": \"v\"")).collect();
        let many = format!("ECS_INSTANCE_ATTRIBUTES={{{}}}\n", many.join(", "));
        assert!(parse(&many, &[])
            .unwrap_err()
            .to_string()
            .contains("at most 90"));
    }

    #[test]
    fn the_articles_user_data_line_works() {
        let l = parse("ECS_CLUSTER=my-ecs-cluster\n", &[]).unwrap();
        assert_eq!(l.config.cluster, "my-ecs-cluster");
        // Also from a file an editor saved with a byte-order mark.
        let l = parse("\u{feff}ECS_CLUSTER=my-ecs-cluster\n", &[]).unwrap();
        assert_eq!(l.config.cluster, "my-ecs-cluster");
        let (_, value, source) = &l.effective[0];
        assert_eq!(value, "my-ecs-cluster");
        assert_eq!(source.to_string(), "/etc/ecs/ecs.config:1");
    }

    #[test]
    fn comments_quotes_whitespace_and_environment_override() {
        let text = "# comment\n\n  ECS_CLUSTER = \"prod\" \nECS_LOGLEVEL='debug'\nexport ECS_RESERVED_MEMORY=256\n";
        let l = parse(text, &[("ECS_CLUSTER", "from-env"), ("PATH", "/bin")]).unwrap();
        assert_eq!(l.config.cluster, "from-env");
        assert_eq!(l.config.log_level, LogLevel::Debug);
        assert_eq!(l.config.reserved_memory_mib, 256);
        let cluster = l.effective.iter().find(|e| e.0 == "ECS_CLUSTER").unwrap();
        assert_eq!(cluster.2, Source::Environment);
        let level = l.effective.iter().find(|e| e.0 == "ECS_LOGLEVEL").unwrap();
        assert_eq!(level.2.to_string(), "/etc/ecs/ecs.config:4");
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_line() {
        let text = "ECS_CLUSTER=ok\nECS_CONTAINER_STOP_TIMEOUT=30\nnot a line\nDOCKHAND_PROXY_LISTN=0.0.0.0:80\nECS_DYNAMIC_HOST_PORT_RANGE=9000-8000\n";
        let errs = parse(text, &[("DOCKHAND_LOG_FORMAT", "xml")]).unwrap_err();
        let lines: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            vec![
                "/etc/ecs/ecs.config:2: ECS_CONTAINER_STOP_TIMEOUT: expected a duration such as 300ms, 30s, 5m or 3h, got \"30\"",
                "/etc/ecs/ecs.config:3: expected KEY=VALUE, got \"not a line\"",
                "/etc/ecs/ecs.config:4: DOCKHAND_PROXY_LISTN: unknown key (did you mean DOCKHAND_PROXY_LISTEN?)",
                "/etc/ecs/ecs.config:5: ECS_DYNAMIC_HOST_PORT_RANGE: expected FIRST-LAST with 1 <= FIRST <= LAST <= 65535, got \"9000-8000\"",
                "environment: DOCKHAND_LOG_FORMAT: expected text or json, got \"xml\"",
            ]
        );
    }

    #[test]
    fn unknown_ecs_keys_warn_and_are_ignored() {
        let l = parse("ECS_ENABLE_SPOT_INSTANCE_DRAINING=true\n", &[]).unwrap();
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].contains("ECS_ENABLE_SPOT_INSTANCE_DRAINING: not used"));
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

    #[test]
    fn every_duration_and_size_key_has_a_range() {
        // Values that used to pass and then overflow a clock at run time.
        for key in [
            "ECS_CONTAINER_STOP_TIMEOUT",
            "ECS_CONTAINER_START_TIMEOUT",
            "ECS_IMAGE_PULL_TIMEOUT",
            "ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION",
            "ECS_IMAGE_CLEANUP_INTERVAL",
            "ECS_IMAGE_MINIMUM_CLEANUP_AGE",
            "DOCKHAND_PROXY_CONNECT_TIMEOUT",
            "DOCKHAND_PROXY_RESPONSE_TIMEOUT",
            "DOCKHAND_PROXY_IDLE_TIMEOUT",
            "DOCKHAND_PROXY_SHUTDOWN_GRACE",
        ] {
            for huge in ["18446744073709551615s", "5124095576030431h", "100000h"] {
                let e = parse(&format!("{key}={huge}\n"), &[]).unwrap_err();
                assert!(e.to_string().contains(key), "{key}={huge}: {e}");
            }
        }
        let e = parse("ECS_RESERVED_MEMORY=18446744073709551615\n", &[]).unwrap_err();
        assert!(
            e.to_string().contains("expected a whole number 0-16777216"),
            "{e}"
        );
    }

    #[test]
    fn the_config_file_must_be_a_regular_file() {
        let e = Config::load(Path::new("/dev/zero"), true, &env(&[])).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = Config::load(Path::new("/"), true, &env(&[])).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }

    #[test]
    fn cross_checks_run_after_single_keys() {
        let errs = parse(
            "ECS_DYNAMIC_HOST_PORT_RANGE=22-22\nDOCKHAND_API_LISTEN=0.0.0.0:80\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(errs.0.len(), 2, "{errs}");
    }

    #[test]
    fn a_missing_optional_file_is_all_defaults() {
        let l = Config::load(Path::new("/nonexistent/ecs.config"), false, &env(&[])).unwrap();
        assert_eq!(l.config.cluster, "default");
        let e = Config::load(Path::new("/nonexistent/ecs.config"), true, &env(&[])).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("/nonexistent/ecs.config: cannot read"));
    }
}
