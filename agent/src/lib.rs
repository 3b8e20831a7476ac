//! Dockhand's host agent.
//!
//! Data flows one way through these modules:
//!
//! - [`config`]: `ecs.config` + environment + defaults → a valid [`Config`].
//! - [`desired`]: a [`desired::DesiredSource`] (service files today, the
//!   control endpoint later) → the services this host should run, each a
//!   [`taskdef::ServiceSpec`] with an inline ECS task definition.
//! - [`supervisor`]: the reconcile loop. It reads actual state from Docker by
//!   label ([`docker`]), derives each task's state ([`task`]), decides starts
//!   and stops per service ([`rollout`]), places tasks on host ports and
//!   resources ([`ports`]) and keeps what must outlive it in [`store`].
//! - [`status`] and [`api`]: what the agent publishes about itself.

pub mod api;
pub mod client;
pub mod config;
pub mod desired;
pub mod docker;
pub mod images;
pub mod metrics;
pub mod notify;
pub mod ports;
pub mod registry;
pub mod rollout;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod task;
pub mod taskdef;

pub use config::Config;

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
    #[error("ECS_BACKEND_HOST is set to {0}, but this build runs standalone only (the control endpoint is not built yet); unset it to use service files")]
    ControlNotSupported(String),
}

/// Runs the agent until `shutdown` resolves. Containers keep running after.
///
/// Start-up order: the state directory, the local API and the proxy
/// listeners are bound first, so a taken port fails the start with a clear
/// error. Docker being down is not an error: the agent waits for it, so boot
/// order does not matter. The proxy starts accepting only after the first
/// reconcile has registered the running tasks and their first health checks
/// are done, so a restarted agent (socket activation keeps new connections
/// queued meanwhile) never answers 503 for a healthy service.
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    if let Some(url) = &cfg.backend_host {
        return Err(AgentError::ControlNotSupported(url.clone()));
    }
    let cfg = Arc::new(cfg);
    let store = store::Store::open(&cfg.data_dir)?;
    let instance = store.state.instance_id.clone();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        instance = %instance,
        cluster = %cfg.cluster,
        data_dir = %cfg.data_dir.display(),
        services_dir = %cfg.services_dir.display(),
        "dockhand agent starting"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let listener = tokio::net::TcpListener::bind(cfg.api_listen)
        .await
        .map_err(|source| AgentError::BindApi {
            addr: cfg.api_listen,
            source,
        })?;
    tracing::info!(addr = %cfg.api_listen, "local API listening");
    let proxy_listeners = proxy_listeners(&cfg)?;

    let status = Arc::new(RwLock::new(status::Snapshot {
        cluster: cfg.cluster.clone(),
        instance_id: instance,
        ..Default::default()
    }));

    let (health_tx, health_rx) = tokio::sync::mpsc::unbounded_channel();
    let proxy = dockhand_proxy::Proxy::new(cfg.proxy.clone(), health_tx);
    let api = tokio::spawn(api::serve(
        listener,
        Arc::clone(&status),
        proxy.clone(),
        stopped(stop_rx.clone()),
    ));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy_task = {
        let proxy = proxy.clone();
        let before = stopped(stop_rx.clone());
        let during = stopped(stop_rx.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = ready_rx => notify::ready("serving"),
                // Docker may be down for long: serve 404/503 rather than
                // leave clients hanging.
                _ = tokio::time::sleep(Duration::from_secs(15)) => {}
                _ = before => return,
            }
            proxy.serve(proxy_listeners, during).await;
        })
    };

    let body = async {
        notify::status("waiting for Docker");
        let Some(docker) = connect_with_retry(&cfg.docker_host, stopped(stop_rx.clone())).await
        else {
            return;
        };
        let capacity = loop {
            match docker::capacity(&docker).await {
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
        let source = desired::ServiceDir::new(cfg.services_dir.clone());
        let sup = supervisor::Supervisor::new(
            Arc::clone(&cfg),
            docker,
            store,
            source,
            capacity,
            status,
            proxy,
            health_rx,
            ready_tx,
        );
        sup.run(stopped(stop_rx.clone())).await;
    };
    tokio::pin!(body);
    tokio::select! {
        _ = &mut body => {}
        _ = shutdown => {
            tracing::info!("shutting down; containers keep running");
        }
    }
    notify::stopping();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut body).await;
    // The proxy finishes in-flight requests within its grace period.
    let grace = cfg.proxy.shutdown_grace + Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, proxy_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), api).await;
    tracing::info!("agent stopped");
    Ok(())
}

/// The proxy's listening sockets: those systemd passes (`LISTEN_FDS`, socket
/// activation: the socket outlives agent restarts, so none refuses a
/// connection), else `DOCKHAND_PROXY_LISTEN` bound here.
fn proxy_listeners(cfg: &Config) -> Result<Vec<tokio::net::TcpListener>, AgentError> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::new();
    if fds.len() > 0 {
        for i in 0..fds.len() {
            match fds.take_tcp_listener(i) {
                Ok(Some(l)) => {
                    let l = l
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpListener::from_std(l))
                        .map_err(|source| AgentError::ActivatedSocket { index: i, source })?;
                    out.push(l);
                }
                Ok(None) => {}
                Err(source) => return Err(AgentError::ActivatedSocket { index: i, source }),
            }
        }
        tracing::info!(
            sockets = out.len(),
            "proxy listeners from socket activation (DOCKHAND_PROXY_LISTEN not used)"
        );
        return Ok(out);
    }
    for addr in &cfg.proxy_listen {
        let l = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|source| AgentError::BindProxy {
                addr: *addr,
                source,
            })?;
        out.push(l);
    }
    Ok(out)
}

/// Connects to Docker, retrying with backoff until it answers or `stop`.
async fn connect_with_retry(
    host: &str,
    stop: impl std::future::Future<Output = ()>,
) -> Option<bollard::Docker> {
    tokio::pin!(stop);
    let mut delay = Duration::from_millis(200);
    loop {
        match docker::connect(host).await {
            Ok(d) => {
                tracing::info!(docker_host = host, "connected to Docker");
                return Some(d);
            }
            Err(e) => {
                tracing::warn!(cause = %e, retry_in_ms = delay.as_millis() as u64, "Docker is not answering")
            }
        }
        tokio::select! {
            _ = &mut stop => return None,
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
