//! Dockhand's control endpoint: the part of ECS that the article's console
//! and `aws ecs` talk to, and that managed agents register with.
//!
//! ```text
//!  aws ecs … ──┐                      ┌── agents: register, poll, report
//!              ▼                      ▼
//!   http.rs (SigV4: auth/) ──► api/ (ECS JSON 1.1 operations; agent.rs)
//!                                  │ transactions
//!                                  ▼
//!                    store/ (SQLite file, or PostgreSQL) ◄── scheduler/
//!                                  │                 passes: placement,
//!                                  ▼                 deployments, DAEMON,
//!                    notify.rs: wakes held polls     lost and draining instances
//! ```

pub mod api;
pub mod auth;
pub mod config;
pub mod credentials;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod notify;
pub mod query;
pub mod records;
pub mod scheduler;
pub mod store;

use config::Config;
use records::InstanceRec;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// Everything a request or a pass needs.
pub struct Control {
    pub cfg: Config,
    pub store: store::Store,
    pub creds: credentials::Credentials,
    pub notifier: notify::Notifier,
    /// Wakes the scheduler for a pass now.
    pub scheduler_wake: tokio::sync::Notify,
    /// Parsed task definitions by ARN (revisions never change).
    taskdefs: Mutex<HashMap<String, Arc<dockhand_model::TaskDefinition>>>,
    /// This process's name in the scheduler lease (PostgreSQL).
    pub holder: String,
    /// The fencing token of the scheduler lease while this process holds
    /// it; 0 when it does not. Always held with SQLite.
    lease_token: std::sync::atomic::AtomicI64,
    /// Since when this process has been able to hear agents and decide:
    /// its start, or when it last took the scheduler lease (after a
    /// takeover, or the database coming back). Silence before then is the
    /// control endpoint's own outage, not the hosts'.
    hearing_since: std::sync::atomic::AtomicI64,
    /// Set when the process is stopping: held polls answer at once.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// Agents' reports, to the group commit ([`api::agent::run_reports`]).
    pub reports: tokio::sync::mpsc::Sender<api::agent::PendingReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

impl Control {
    /// The control and the receiving end of its report queue (for
    /// [`api::agent::run_reports`]).
    pub fn new(
        cfg: Config,
        store: store::Store,
        creds: credentials::Credentials,
    ) -> (
        Control,
        tokio::sync::mpsc::Receiver<api::agent::PendingReport>,
    ) {
        let (reports, queue) = tokio::sync::mpsc::channel(4096);
        let always_leader = store.kind == store::Kind::Sqlite;
        let ctl = Control {
            cfg,
            store,
            creds,
            notifier: notify::Notifier::default(),
            scheduler_wake: tokio::sync::Notify::new(),
            taskdefs: Mutex::new(HashMap::new()),
            lease_token: std::sync::atomic::AtomicI64::new(i64::from(always_leader)),
            hearing_since: std::sync::atomic::AtomicI64::new(ids::now_ms()),
            holder: format!(
                "{}:{}:{}",
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim(),
                std::process::id(),
                ids::hex(4)
            ),
            closing: tokio::sync::watch::channel(false).0,
            reports,
        };
        (ctl, queue)
    }

    /// `arn:aws:ecs:REGION:ACCOUNT:` followed by `rest`.
    pub fn arn(&self, rest: &str) -> String {
        format!(
            "arn:aws:ecs:{}:{}:{rest}",
            self.cfg.region, self.cfg.account
        )
    }

    /// Whether an instance's agent polled within the heartbeat timeout.
    pub fn connected(&self, i: &InstanceRec, now: i64) -> bool {
        i.status != "INACTIVE"
            && now.saturating_sub(self.last_heard(i))
                < self.cfg.heartbeat_timeout.as_millis() as i64
    }

    /// When an instance was last heard from, as far as silence counts:
    /// never before this process could hear it (a control endpoint that was
    /// down, or without its database, does not hold its own outage against
    /// the hosts: their tasks are not given up for it).
    pub fn last_heard(&self, i: &InstanceRec) -> i64 {
        i.last_seen_at.max(
            self.hearing_since
                .load(std::sync::atomic::Ordering::Acquire),
        )
    }

    /// Asks the scheduler for a pass now.
    pub fn wake(&self) {
        self.scheduler_wake.notify_one();
    }

    /// Whether this process runs the scheduler (always, with SQLite).
    pub fn is_leader(&self) -> bool {
        self.lease_token() > 0
    }

    /// The scheduler lease's fencing token, 0 when not held.
    pub fn lease_token(&self) -> i64 {
        self.lease_token.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `now`: the database's time (hosts' silence is judged on it).
    fn set_lease(&self, token: i64, now: i64) {
        let before = self
            .lease_token
            .swap(token, std::sync::atomic::Ordering::AcqRel);
        metrics::set_leader(token > 0);
        if before == 0 && token > 0 {
            self.hearing_since
                .store(now, std::sync::atomic::Ordering::Release);
            tracing::info!(token, holder = %self.holder, "this replica runs the scheduler now");
            self.wake();
        } else if before > 0 && token == 0 {
            tracing::warn!(holder = %self.holder, "this replica no longer runs the scheduler");
        }
    }

    /// The parsed task definition an ARN names, cached.
    pub async fn taskdef(
        &self,
        c: &mut sqlx::AnyConnection,
        arn: &str,
    ) -> Result<Option<Arc<dockhand_model::TaskDefinition>>, store::StoreError> {
        if let Some(td) = self
            .taskdefs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(arn)
        {
            return Ok(Some(Arc::clone(td)));
        }
        let Ok((family, Some(rev))) = api::taskdefs::split_ref(arn) else {
            return Ok(None);
        };
        let Some(rec) = store::get_taskdef(c, &family, rev).await? else {
            return Ok(None);
        };
        let Ok(td) = api::taskdefs::parsed(&rec) else {
            return Ok(None);
        };
        let td = Arc::new(td);
        self.taskdefs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(arn.to_string(), Arc::clone(&td));
        Ok(Some(td))
    }

    /// Wakes the held polls of `arns`, instances of `cluster` (one query
    /// for the whole cluster, for the scheduler's large passes).
    pub async fn notify_cluster(&self, cluster: &str, arns: &BTreeSet<String>) {
        if arns.is_empty() {
            return;
        }
        let Ok(mut c) = self.store.read().await else {
            return;
        };
        if let Ok(seqs) = store::desired_seqs(&mut c, cluster).await {
            for (arn, seq) in seqs.iter().filter(|(a, _)| arns.contains(a)) {
                self.notifier.desired_changed(arn, *seq);
            }
        }
    }

    /// Wakes the held polls of `arns` (their desired sets changed).
    pub async fn notify_instances(&self, arns: &BTreeSet<String>) {
        if arns.is_empty() {
            return;
        }
        let Ok(mut c) = self.store.read().await else {
            return;
        };
        for arn in arns {
            if let Ok(Some((seq, _, _))) = store::instance_head(&mut c, arn).await {
                self.notifier.desired_changed(arn, seq);
            }
        }
    }
}

/// The scheduler lease: how long it lasts without renewal, and how often
/// it is renewed (or tried for). A dead leader is replaced within
/// `LEASE_TTL + LEASE_EVERY`.
const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(6);
const LEASE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
pub const LEASE: &str = "scheduler";

/// Holds or tries for the scheduler lease, until `shutdown` (PostgreSQL).
async fn lease_loop(ctl: Arc<Control>, shutdown: drain::Watch) {
    let signaled = shutdown.signaled();
    tokio::pin!(signaled);
    loop {
        let started = std::time::Instant::now();
        match ctl
            .store
            .acquire_lease(LEASE, &ctl.holder, LEASE_TTL.as_millis() as i64)
            .await
        {
            Ok((Some(token), now)) => ctl.set_lease(token, now),
            Ok((None, now)) => ctl.set_lease(0, now),
            Err(e) => {
                // Without the database a replica cannot know it still holds
                // the lease: it stops scheduling at once.
                if ctl.is_leader() {
                    tracing::warn!(cause = %e, "cannot renew the scheduler lease");
                }
                ctl.set_lease(0, ids::now_ms());
            }
        }
        tokio::select! {
            _ = &mut signaled => break,
            _ = tokio::time::sleep(LEASE_EVERY.saturating_sub(started.elapsed())) => {}
        }
    }
    if ctl.is_leader() {
        ctl.set_lease(0, ids::now_ms());
        if let Err(e) = ctl.store.release_lease(LEASE, &ctl.holder).await {
            tracing::warn!(cause = %e, "cannot release the scheduler lease; another replica takes over when it runs out");
        }
    }
}

/// Sets up logging from `DOCKHAND_CONTROL_LOG_LEVEL` and
/// `DOCKHAND_CONTROL_LOG_FORMAT`, to stderr.
pub fn init_logging(cfg: &Config) {
    use tracing::level_filters::LevelFilter;
    let level = match cfg.log_level.as_str() {
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "debug" => LevelFilter::DEBUG,
        _ => LevelFilter::INFO,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    if cfg.log_json {
        builder.json().flatten_event(true).init()
    } else {
        builder.with_ansi(false).init()
    }
}

/// Opens the database and brings its schema up to this version
/// (`dockhand control migrate`); returns the schema version.
pub async fn migrate(cfg: &Config) -> Result<i64, ControlError> {
    let url = match &cfg.database {
        Some(u) => u.clone(),
        None => store::Store::sqlite_url(&cfg.sqlite_path())?,
    };
    let store = store::Store::open(&url).await?;
    store.close().await;
    Ok(store::SCHEMA_VERSION)
}

/// The TLS acceptor for the configured certificate and key.
fn tls_acceptor(cfg: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, ControlError> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Ok(None);
    };
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ControlError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ControlError::Tls(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ControlError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ControlError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ControlError::Tls(e.to_string()))?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Runs the control endpoint until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ControlError> {
    let url = match &cfg.database {
        Some(u) => u.clone(),
        None => store::Store::sqlite_url(&cfg.sqlite_path())?,
    };
    let store = store::Store::open(&url).await?;
    let creds = credentials::Credentials::load(&cfg.credentials)?;
    let tls = tls_acceptor(&cfg)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ControlError::Bind {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        addr = %cfg.listen,
        tls = tls.is_some(),
        database = if cfg.database.is_some() { "postgresql" } else { "sqlite" },
        region = %cfg.region,
        "dockhand control listening"
    );
    let (ctl, queue) = Control::new(cfg, store, creds);
    let ctl = Arc::new(ctl);
    let reports = tokio::spawn(api::agent::run_reports(Arc::clone(&ctl), queue));
    let (signal, watch) = drain::channel();
    metrics::set_leader(ctl.is_leader());
    let lease = (ctl.store.kind == store::Kind::Postgres)
        .then(|| tokio::spawn(lease_loop(Arc::clone(&ctl), watch.clone())));
    let server = tokio::spawn(http::serve(Arc::clone(&ctl), listener, tls, watch.clone()));
    let scheduler = tokio::spawn(scheduler::run(Arc::clone(&ctl), watch));
    ctl.wake();
    shutdown.await;
    tracing::info!("shutting down");
    ctl.closing.send_replace(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), signal.drain()).await;
    if let Some(l) = lease {
        let _ = l.await;
    }
    server.abort();
    scheduler.abort();
    reports.abort();
    ctl.store.close().await;
    Ok(())
}
