//! Dockhand's host agent.
//!
//! Data flows one way through these modules:
//!
//! - [`config`]: `ecs.config` + environment + defaults → a valid [`Config`].
//! - [`desired`]: a source (the service files directory; the control
//!   endpoint in managed mode) pushes the desired state, or "unknown", on a
//!   watch channel.
//! - [`supervisor`]: the reconcile loop. It reads actual state from the
//!   container engine by label ([`engine`], [`containers`]), derives each
//!   task's state ([`task`]), decides starts and stops per service
//!   ([`rollout`]), places tasks on host ports and resources ([`ports`]),
//!   drives the proxy ([`router`]) and keeps what must outlive it in
//!   [`store`].
//! - [`status`], [`changes`] and [`api`]: what the agent publishes about
//!   itself: a snapshot, and an ordered stream of task state changes.

pub mod api;
pub mod changes;
pub mod clock;
pub mod config;
pub mod containers;
pub mod desired;
pub mod engine;
pub mod files;
pub mod images;
pub mod limits;
pub mod managed;
pub mod metrics;
pub mod notify;
pub mod ports;
pub mod registry;
pub mod router;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod task;

pub use config::Config;

use engine::Engine;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot bind the local API on {addr}: {source}")]
    BindApi {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind the proxy listener {addr}: {source}")]
    BindProxy {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "socket {index} passed by systemd (LISTEN_FDS) is not a usable TCP listener: {source}"
    )]
    ActivatedSocket {
        index: usize,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the control endpoint client cannot be set up: {0}")]
    ControlClient(String),
}

/// How the agent was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM (systemd stop, a host shutting down): in managed mode with
    /// `DOCKHAND_DRAIN_ON_SHUTDOWN`, this host's tasks move elsewhere first.
    Drain,
    /// SIGINT, or an upgrade: exit at once, containers left running.
    Now,
}

/// Runs the agent until `shutdown` resolves. Containers keep running after.
///
/// Start-up order: the state directory, the local API and the proxy
/// listeners are bound first, so a taken port fails the start with a clear
/// error. The engine being down is not an error: the agent waits for it, so
/// boot order does not matter. The proxy starts accepting only after the
/// first reconcile has registered the running tasks and their first health
/// checks are done, so a restarted agent (socket activation keeps new
/// connections queued meanwhile) never answers 503 for a healthy service.
///
/// Shutdown is one signal to every part (the supervisor, the proxy and its
/// connections, the local API); it is over when each has finished its work,
/// or after the proxy's shutdown grace at most.
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = Stop>,
) -> Result<(), AgentError> {
    let client = if cfg.managed() {
        Some(Arc::new(
            managed::client::Client::new(&cfg).map_err(AgentError::ControlClient)?,
        ))
    } else {
        None
    };
    let mut cfg = cfg;
    let open_files = limits::raise_open_files();
    let cap = limits::fit_connections(cfg.proxy.max_connections, open_files);
    if cap < cfg.proxy.max_connections {
        tracing::warn!(
            configured = cfg.proxy.max_connections,
            cap,
            open_files,
            "DOCKHAND_PROXY_MAX_CONNECTIONS lowered to fit the open-files limit (2 descriptors a connection, {} kept for health checks and Docker)",
            limits::RESERVED_FDS
        );
        cfg.proxy.max_connections = cap;
    }
    let cfg = Arc::new(cfg);
    let store = store::Store::open(&cfg.data_dir)?;
    let instance = store.state.instance_id.clone();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        instance = %instance,
        cluster = %cfg.cluster,
        data_dir = %cfg.data_dir.display(),
        mode = if cfg.managed() { "managed" } else { "standalone" },
        services_dir = %cfg.services_dir.display(),
        control = %cfg.backend_hosts.join(","),
        "dockhand agent starting"
    );

    let (signal, watch) = drain::channel();
    let listener = tokio::net::TcpListener::bind(cfg.api_listen)
        .await
        .map_err(|source| AgentError::BindApi {
            addr: cfg.api_listen,
            source,
        })?;
    tracing::info!(addr = %cfg.api_listen, "local API listening");
    let (proxy_listeners, tls_listeners) = proxy_listeners(&cfg)?;
    let certs = match (&cfg.proxy_tls_cert, &cfg.proxy_tls_key) {
        (Some(cert), Some(key)) => Some(dockhand_proxy::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let certs = if tls_listeners.is_empty() && certs.is_none() {
        None
    } else {
        // A default certificate that does not load stops the start here,
        // naming the file; without one, only routes' names are served.
        Some(Arc::new(
            dockhand_proxy::Certs::new(certs).map_err(AgentError::Tls)?,
        ))
    };

    let status = Arc::new(RwLock::new(status::Snapshot {
        cluster: cfg.cluster.clone(),
        instance_id: instance.clone(),
        ..Default::default()
    }));
    let changes = Arc::new(changes::Changes::default());
    let control_status: Option<managed::SharedStatus> = client.as_ref().map(|_| Arc::default());

    let (health_tx, health_rx) = tokio::sync::mpsc::unbounded_channel();
    let proxy = dockhand_proxy::Proxy::with_certs(cfg.proxy.clone(), health_tx, certs);
    tokio::spawn(reload_on_sighup(proxy.clone()));
    tokio::spawn(api::serve(
        listener,
        api::ApiState {
            status: Arc::clone(&status),
            proxy: proxy.clone(),
            changes: Arc::clone(&changes),
            control: control_status.clone(),
        },
        watch.clone(),
    ));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    {
        let proxy = proxy.clone();
        let watch = watch.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = ready_rx => notify::ready("serving"),
                // The engine may be down for long: serve 404/503 rather than
                // leave clients hanging.
                _ = tokio::time::sleep(Duration::from_secs(15)) => {}
                // Shut down before serving: the watch is dropped here.
                _ = watch.clone().signaled() => return,
            }
            if let Err(e) = proxy.serve(proxy_listeners, tls_listeners, watch).await {
                tracing::error!(cause = %e, "the proxy cannot serve");
            }
        });
    }

    let (desired_tx, desired_rx) = desired::channel();
    let (host_tx, host_rx) = tokio::sync::watch::channel(None);
    let (arn_tx, arn_rx) = tokio::sync::watch::channel(None);
    match (&client, &control_status) {
        (Some(client), Some(control)) => {
            tokio::spawn(managed::run(
                managed::Parts {
                    cfg: Arc::clone(&cfg),
                    client: Arc::clone(client),
                    status: Arc::clone(control),
                    desired: desired_tx,
                    changes: Arc::clone(&changes),
                    agent_id: instance.clone(),
                    host: host_rx,
                    arn: arn_tx,
                },
                watch.clone(),
            ));
        }
        _ => {
            tokio::spawn(desired::service_dir::watch(
                cfg.services_dir.clone(),
                desired_tx,
            ));
        }
    }

    let body = {
        let watch = watch.clone();
        let cfg = Arc::clone(&cfg);
        let proxy = proxy.clone();
        let status = Arc::clone(&status);
        async move {
            notify::status("waiting for Docker");
            let Some(engine) = connect_with_retry(&cfg.docker_host, watch.clone()).await else {
                return;
            };
            let capacity = loop {
                match engine.capacity().await {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!(cause = %e, "cannot read host capacity from Docker; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            tracing::info!(
                memory_mib = capacity.memory_mib,
                reserved_memory_mib = cfg.reserved_memory_mib,
                cpu_units = capacity.cpu_units,
                "host capacity"
            );
            let docker_version = engine.version().await.unwrap_or_default();
            host_tx.send_replace(Some(managed::HostInfo {
                capacity,
                docker_version,
            }));
            let sup = supervisor::Supervisor::new(supervisor::Parts {
                cfg,
                engine,
                router: proxy,
                clock: clock::Clock::System,
                store,
                desired: desired_rx,
                capacity,
                status,
                changes,
                health_events: health_rx,
                ready: ready_tx,
            });
            sup.run(watch).await;
        }
    };
    drop(watch);
    let supervisor = tokio::spawn(body);
    let how = shutdown.await;
    if let (Some(client), Some(control), Stop::Drain, true) =
        (&client, &control_status, how, cfg.drain_on_shutdown)
    {
        let arn = arn_rx.borrow().clone();
        managed::drain(&cfg, client, control, arn, &proxy, &status).await;
    }
    // From now on the host health check answers 503 and HTTP/2 clients
    // get GOAWAY: a load balancer in front stops sending here.
    proxy.set_draining(true);
    tracing::info!("shutting down; containers keep running");
    notify::stopping();
    // Every part stops taking work at once; the proxy's connections finish
    // their requests within the grace period.
    let grace = cfg.proxy.shutdown_grace + Duration::from_secs(1);
    if tokio::time::timeout(grace, signal.drain()).await.is_err() {
        tracing::warn!("shutdown grace period over; leaving what is left");
    }
    supervisor.abort();
    tracing::info!("agent stopped");
    Ok(())
}

/// SIGHUP: the proxy reads its certificate files again and reopens its
/// access log file.
async fn reload_on_sighup(proxy: dockhand_proxy::Proxy) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; certificates reload when their files change");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading certificates and reopening the access log");
        let p = proxy.clone();
        let _ = tokio::task::spawn_blocking(move || p.reload()).await;
    }
}

type Listeners = Vec<tokio::net::TcpListener>;

/// How many connections the kernel may hold, handshake done, for the proxy
/// to accept (the kernel caps it at `net.core.somaxconn`, 4096 by default).
/// The Rust standard library's 128 is far too few for a front door: when a
/// thousand clients connect at once, the queue overflows, the kernel drops
/// their handshakes' last packets, and each of those clients waits for a
/// retransmission (200 ms to seconds) before its first request; that was
/// most of the proxy's p99 at 1,000 connections in `bench/proxy.sh`.
/// The socket units in systemd/ set the same `Backlog=4096`; HAProxy asks
/// for its frontend's maxconn.
const PROXY_BACKLOG: u32 = 4096;

/// The proxy's listening sockets, plain and TLS: those systemd passes
/// (`LISTEN_FDS`, socket activation: the socket outlives agent restarts,
/// so none refuses a connection; a socket named `tls` with
/// `FileDescriptorName=` is a TLS listener), else `DOCKHAND_PROXY_LISTEN`
/// and `DOCKHAND_PROXY_TLS_LISTEN` bound here.
fn proxy_listeners(cfg: &Config) -> Result<(Listeners, Listeners), AgentError> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::new();
    let mut tls = Vec::new();
    if fds.len() > 0 {
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .unwrap_or_default()
            .split(':')
            .map(str::to_string)
            .collect();
        for i in 0..fds.len() {
            match fds.take_tcp_listener(i) {
                Ok(Some(l)) => {
                    let l = l
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpListener::from_std(l))
                        .map_err(|source| AgentError::ActivatedSocket { index: i, source })?;
                    if names.get(i).is_some_and(|n| n == "tls") {
                        tls.push(l);
                    } else {
                        out.push(l);
                    }
                }
                Ok(None) => {}
                Err(source) => return Err(AgentError::ActivatedSocket { index: i, source }),
            }
        }
        tracing::info!(
            sockets = out.len(),
            tls_sockets = tls.len(),
            "proxy listeners from socket activation (DOCKHAND_PROXY_LISTEN and DOCKHAND_PROXY_TLS_LISTEN not used)"
        );
        return Ok((out, tls));
    }
    let bind = |addr: &std::net::SocketAddr| {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        socket
            .and_then(|s| s.set_reuseaddr(true).map(|()| s))
            .and_then(|s| s.bind(*addr).map(|()| s))
            .and_then(|s| s.listen(PROXY_BACKLOG))
            .map_err(|source| AgentError::BindProxy {
                addr: *addr,
                source,
            })
    };
    for addr in &cfg.proxy_listen {
        out.push(bind(addr)?);
    }
    for addr in &cfg.proxy_tls_listen {
        tls.push(bind(addr)?);
    }
    Ok((out, tls))
}

/// Connects to Docker, retrying with backoff until it answers or shutdown
/// is signaled.
async fn connect_with_retry(
    host: &str,
    shutdown: drain::Watch,
) -> Option<engine::docker::DockerEngine> {
    let signaled = shutdown.signaled();
    tokio::pin!(signaled);
    let mut delay = Duration::from_millis(200);
    loop {
        match engine::docker::DockerEngine::connect(host).await {
            Ok(d) => {
                tracing::info!(docker_host = host, "connected to Docker");
                return Some(d);
            }
            Err(e) => {
                tracing::warn!(cause = %e, retry_in_ms = delay.as_millis() as u64, "Docker is not answering")
            }
        }
        tokio::select! {
            _ = &mut signaled => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Sets up logging from `ECS_LOGLEVEL` and `DOCKHAND_LOG_FORMAT`, to stderr
/// (journald adds timestamps; text keeps them for terminals).
pub fn init_logging(cfg: &Config) {
    use config::{LogFormat, LogLevel};
    use tracing::level_filters::LevelFilter;
    let level = match cfg.log_level {
        LogLevel::Crit | LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}
