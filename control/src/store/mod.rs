//! The control endpoint's state, in SQLite (embedded, the default) or
//! PostgreSQL (several replicas), through sqlx's `Any` driver: the same SQL
//! runs on both (`$N` parameters, upserts with `ON CONFLICT`, no
//! dialect-specific types; ids are made by the application).
//!
//! Every change is a transaction. Changes that decide something from what
//! they read (a registration, a scheduling pass, a report) run under
//! [`Store::lock`], so two of them never decide from the same old state in
//! one process, and their transactions ([`Store::begin`]) are serialized
//! across processes too: SQLite's `BEGIN IMMEDIATE` takes the file's write
//! lock; on PostgreSQL every writing transaction takes one transaction-level
//! advisory lock first, so replicas never decide from the same old state
//! either (no task placed twice, no service over its maximum). Reads take
//! no lock. Which replica schedules is a lease ([`Store::acquire_lease`])
//! with a fencing token that each pass checks inside its own transaction.
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`: a committed
//! transaction survives `kill -9` of the process (the WAL is in the page
//! cache), and readers never wait for the writer.

use crate::records::{ClusterRec, InstanceRec, ServiceRec, TaskDefRec, TaskRec};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Row};
use std::str::FromStr;
use std::time::Duration;

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = include_str!("schema.sql");

/// The key of the advisory lock every writing transaction takes on
/// PostgreSQL ("dockhand" in ASCII).
const WRITER_LOCK: i64 = 0x646f_636b_6861_6e64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot connect to {what}: {source}")]
    Unreachable { what: String, source: sqlx::Error },
    #[error("the database holds schema version {found}; this dockhand knows up to {SCHEMA_VERSION}: upgrade dockhand first")]
    TooNew { found: i64 },
    #[error("a stored record is not valid ({table}): {source}")]
    Corrupt {
        table: &'static str,
        source: serde_json::Error,
    },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

pub struct Store {
    pool: AnyPool,
    pub kind: Kind,
    /// Held by changes that decide from what they read.
    writer: tokio::sync::Mutex<()>,
}

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

fn body<T: DeserializeOwned>(table: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt { table, source })
}

fn json<T: Serialize>(v: &T) -> String {
    // Plain records with string keys always serialize.
    serde_json::to_string(v).unwrap_or_default()
}

/// A database URL as an error may show it: no password.
fn describe_url(url: &str) -> String {
    if url.starts_with("sqlite:") {
        return format!(
            "the SQLite file {}",
            url.trim_start_matches("sqlite://")
                .split('?')
                .next()
                .unwrap_or("")
        );
    }
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("PostgreSQL at {}", host.split('?').next().unwrap_or(host))
}

/// What is wrong with how a PostgreSQL URL protects its connection, when
/// the database is across a network: the URL carries the password, and
/// only `verify-ca`/`verify-full` make sure it goes to the right server.
/// `None` for SQLite, loopback, a Unix socket, or a checked certificate.
fn tls_warning(url: &str) -> Option<&'static str> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    if !url.starts_with("postgres") {
        return None;
    }
    // sqlx's own reading of the URL (and of PGHOST, PGSSLMODE), so the
    // warning judges what the connection will do.
    let options = PgConnectOptions::from_str(url).ok()?;
    let host = options
        .get_host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let local = options.get_socket().is_some()
        || host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if local {
        return None;
    }
    match options.get_ssl_mode() {
        PgSslMode::VerifyCa | PgSslMode::VerifyFull => None,
        PgSslMode::Disable | PgSslMode::Allow => {
            Some("the connection (and its password) is not encrypted")
        }
        PgSslMode::Prefer | PgSslMode::Require => Some(
            "the server's certificate is not checked, so whoever answers at that address gets the password",
        ),
    }
}

/// The database's time, unix milliseconds (leases compare against one
/// clock, whatever the replicas' clocks say).
pub async fn db_now(c: &mut AnyConnection, kind: Kind) -> Result<i64, StoreError> {
    Ok(match kind {
        Kind::Postgres => {
            sqlx::query_as::<_, (i64,)>(
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            )
            .fetch_one(c)
            .await?
            .0
        }
        Kind::Sqlite => crate::ids::now_ms(),
    })
}

/// Whether `holder` still has lease `name` with `token`, checked inside the
/// caller's transaction (which holds the writer lock): a replica that lost
/// the lease while it was deciding writes nothing.
pub async fn lease_held(
    c: &mut AnyConnection,
    kind: Kind,
    name: &str,
    holder: &str,
    token: i64,
) -> Result<bool, StoreError> {
    let now = db_now(c, kind).await?;
    let row: Option<(String, i64, i64)> =
        sqlx::query_as("SELECT holder, token, expires_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(c)
            .await?;
    Ok(row.is_some_and(|(h, t, exp)| h == holder && t == token && exp > now))
}

impl Store {
    /// Opens (and migrates) the database: `url` is `sqlite://PATH` or
    /// `postgres://…`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("sqlite:") {
            Kind::Sqlite
        } else {
            Kind::Postgres
        };
        let options = AnyConnectOptions::from_str(url)?;
        let what = describe_url(url);
        if let Some(why) = tls_warning(url) {
            tracing::warn!(
                "{what}: {why}; add sslmode=verify-full (and sslrootcert=CA.pem) to the URL, see docs/control.md"
            );
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if kind == Kind::Sqlite { 8 } else { 16 })
            // A database that does not answer makes calls fail in seconds
            // (ServerException), not hang.
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    let setup: &[&str] = match kind {
                        Kind::Sqlite => &[
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA busy_timeout = 10000",
                        ],
                        Kind::Postgres => &["SET statement_timeout = '10s'"],
                    };
                    for s in setup {
                        sqlx::query(s).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Unreachable { what, source })?;
        let store = Store {
            pool,
            kind,
            writer: tokio::sync::Mutex::new(()),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The SQLite URL of a file, created if missing.
    pub fn sqlite_url(path: &std::path::Path) -> Result<String, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        Ok(format!("sqlite://{}?mode=rwc", path.display()))
    }

    /// Creates the tables, or checks that the stored schema is one this
    /// binary knows.
    async fn migrate(&self) -> Result<(), StoreError> {
        // Replicas starting together migrate one after the other.
        let mut tx = self.begin().await?;
        for stmt in SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let stmt: String = stmt
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            if stmt.trim().is_empty() {
                continue;
            }
            sqlx::query(&stmt).execute(&mut *tx).await?;
        }
        let found: Option<(String,)> =
            sqlx::query_as("SELECT value FROM meta WHERE key = 'schema_version'")
                .fetch_optional(&mut *tx)
                .await?;
        match found.and_then(|(v,)| v.parse::<i64>().ok()) {
            Some(v) if v > SCHEMA_VERSION => return Err(StoreError::TooNew { found: v }),
            Some(_) => {}
            None => {
                sqlx::query("INSERT INTO meta (key, value) VALUES ('schema_version', $1)")
                    .bind(SCHEMA_VERSION.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// A transaction that writes. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`): a deferred transaction that read before
    /// another connection wrote could not write at all (SQLITE_BUSY_SNAPSHOT).
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self.kind {
            Kind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Kind::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITER_LOCK)
                    .execute(&mut *tx)
                    .await?;
                tx
            }
        })
    }

    /// Takes or renews lease `name` for `holder` for `ttl_ms` (database
    /// time); returns its fencing token when `holder` has it, and the
    /// database's time.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<(Option<i64>, i64), StoreError> {
        let mut tx = self.begin().await?;
        let now = db_now(&mut tx, self.kind).await?;
        let row: Option<(String, i64, i64)> =
            sqlx::query_as("SELECT holder, token, expires_at FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let token = match row {
            None => {
                sqlx::query(
                    "INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, 1, $3)",
                )
                .bind(name)
                .bind(holder)
                .bind(now + ttl_ms)
                .execute(&mut *tx)
                .await?;
                Some(1)
            }
            Some((h, token, expires)) if h == holder || expires < now => {
                let token = if h == holder { token } else { token + 1 };
                sqlx::query(
                    "UPDATE leases SET holder = $1, token = $2, expires_at = $3 WHERE name = $4",
                )
                .bind(holder)
                .bind(token)
                .bind(now + ttl_ms)
                .bind(name)
                .execute(&mut *tx)
                .await?;
                Some(token)
            }
            Some(_) => None,
        };
        tx.commit().await?;
        Ok((token, now))
    }

    /// Gives lease `name` up if `holder` has it (a clean shutdown: another
    /// replica takes over at once instead of after the lease runs out).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A read-only transaction: one consistent snapshot for several reads.
    pub async fn snapshot(&self) -> Result<Tx, StoreError> {
        Ok(match self.kind {
            Kind::Sqlite => self.pool.begin().await?,
            Kind::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        })
    }

    /// A connection for reads.
    pub async fn read(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    /// Serializes changes that decide from what they read.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writer.lock().await
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

// Clusters.

pub async fn get_cluster(
    c: &mut AnyConnection,
    name: &str,
) -> Result<Option<ClusterRec>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT body FROM clusters WHERE name = $1")
        .bind(name)
        .fetch_optional(c)
        .await?;
    row.map(|(b,)| body("clusters", &b)).transpose()
}

pub async fn put_cluster(c: &mut AnyConnection, r: &ClusterRec) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO clusters (name, status, created_at, body) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET status = excluded.status, body = excluded.body",
    )
    .bind(&r.name)
    .bind(&r.status)
    .bind(r.created_at)
    .bind(json(r))
    .execute(c)
    .await?;
    Ok(())
}

pub async fn list_clusters(c: &mut AnyConnection) -> Result<Vec<ClusterRec>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT body FROM clusters ORDER BY name")
        .fetch_all(c)
        .await?;
    rows.iter().map(|(b,)| body("clusters", b)).collect()
}

// Task definitions.

pub async fn max_revision(c: &mut AnyConnection, family: &str) -> Result<i64, StoreError> {
    let row: (Option<i64>,) =
        sqlx::query_as("SELECT MAX(revision) FROM task_definitions WHERE family = $1")
            .bind(family)
            .fetch_one(c)
            .await?;
    Ok(row.0.unwrap_or(0))
}

pub async fn put_taskdef(c: &mut AnyConnection, r: &TaskDefRec) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO task_definitions (family, revision, status, registered_at, body) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (family, revision) DO UPDATE SET status = excluded.status, body = excluded.body",
    )
    .bind(&r.family)
    .bind(r.revision)
    .bind(&r.status)
    .bind(r.registered_at)
    .bind(json(r))
    .execute(c)
    .await?;
    Ok(())
}

pub async fn get_taskdef(
    c: &mut AnyConnection,
    family: &str,
    revision: i64,
) -> Result<Option<TaskDefRec>, StoreError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT body FROM task_definitions WHERE family = $1 AND revision = $2")
            .bind(family)
            .bind(revision)
            .fetch_optional(c)
            .await?;
    row.map(|(b,)| body("task_definitions", &b)).transpose()
}

/// The latest ACTIVE revision of `family`.
pub async fn latest_taskdef(
    c: &mut AnyConnection,
    family: &str,
) -> Result<Option<TaskDefRec>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT body FROM task_definitions WHERE family = $1 AND status = 'ACTIVE' ORDER BY revision DESC LIMIT 1",
    )
    .bind(family)
    .fetch_optional(c)
    .await?;
    row.map(|(b,)| body("task_definitions", &b)).transpose()
}

/// (family, revision, status) of every revision, ordered.
pub async fn list_taskdefs(
    c: &mut AnyConnection,
) -> Result<Vec<(String, i64, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT family, revision, status FROM task_definitions ORDER BY family, revision",
    )
    .fetch_all(c)
    .await?)
}

// Services and their events.

pub async fn get_service(
    c: &mut AnyConnection,
    cluster: &str,
    name: &str,
) -> Result<Option<ServiceRec>, StoreError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT body FROM services WHERE cluster = $1 AND name = $2")
            .bind(cluster)
            .bind(name)
            .fetch_optional(c)
            .await?;
    row.map(|(b,)| body("services", &b)).transpose()
}

pub async fn put_service(c: &mut AnyConnection, r: &ServiceRec) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO services (cluster, name, status, created_at, body) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (cluster, name) DO UPDATE SET status = excluded.status, body = excluded.body",
    )
    .bind(&r.cluster)
    .bind(&r.name)
    .bind(&r.status)
    .bind(r.created_at)
    .bind(json(r))
    .execute(c)
    .await?;
    Ok(())
}

pub async fn list_services(
    c: &mut AnyConnection,
    cluster: &str,
) -> Result<Vec<ServiceRec>, StoreError> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT body FROM services WHERE cluster = $1 ORDER BY name")
            .bind(cluster)
            .fetch_all(c)
            .await?;
    rows.iter().map(|(b,)| body("services", b)).collect()
}

pub async fn delete_service(
    c: &mut AnyConnection,
    cluster: &str,
    name: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM services WHERE cluster = $1 AND name = $2")
        .bind(cluster)
        .bind(name)
        .execute(&mut *c)
        .await?;
    sqlx::query("DELETE FROM service_events WHERE cluster = $1 AND service = $2")
        .bind(cluster)
        .bind(name)
        .execute(c)
        .await?;
    Ok(())
}

/// Events kept per service (ECS shows the last 100).
pub const EVENTS_KEPT: i64 = 100;

pub async fn add_event(
    c: &mut AnyConnection,
    cluster: &str,
    service: &str,
    id: &str,
    at: i64,
    message: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO service_events (cluster, service, id, created_at, message) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(cluster)
    .bind(service)
    .bind(id)
    .bind(at)
    .bind(message)
    .execute(c)
    .await?;
    Ok(())
}

/// The newest events of a service, newest first: (id, at, message).
pub async fn events(
    c: &mut AnyConnection,
    cluster: &str,
    service: &str,
) -> Result<Vec<(String, i64, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, created_at, message FROM service_events WHERE cluster = $1 AND service = $2
         ORDER BY created_at DESC, id DESC LIMIT $3",
    )
    .bind(cluster)
    .bind(service)
    .bind(EVENTS_KEPT)
    .fetch_all(c)
    .await?)
}

/// Drops events older than the newest [`EVENTS_KEPT`] of each service.
pub async fn prune_events(
    c: &mut AnyConnection,
    cluster: &str,
    service: &str,
) -> Result<(), StoreError> {
    let oldest_kept: Option<(i64,)> = sqlx::query_as(
        "SELECT created_at FROM service_events WHERE cluster = $1 AND service = $2
         ORDER BY created_at DESC LIMIT 1 OFFSET $3",
    )
    .bind(cluster)
    .bind(service)
    .bind(EVENTS_KEPT - 1)
    .fetch_optional(&mut *c)
    .await?;
    if let Some((t,)) = oldest_kept {
        sqlx::query(
            "DELETE FROM service_events WHERE cluster = $1 AND service = $2 AND created_at < $3",
        )
        .bind(cluster)
        .bind(service)
        .bind(t)
        .execute(c)
        .await?;
    }
    Ok(())
}

// Container instances.

/// The columns an instance is read from: its body, and the fields updated
/// without rewriting it (polls touch `last_seen_at`, passes bump
/// `desired_seq`).
const INSTANCE_COLUMNS: &str = "body, last_seen_at, desired_seq, report_seq";
type InstanceRow = (String, i64, i64, i64);

fn instance(row: &InstanceRow) -> Result<InstanceRec, StoreError> {
    let mut r: InstanceRec = body("container_instances", &row.0)?;
    r.last_seen_at = row.1;
    r.desired_seq = row.2;
    r.report_seq = row.3;
    Ok(r)
}

pub async fn get_instance(
    c: &mut AnyConnection,
    arn: &str,
) -> Result<Option<InstanceRec>, StoreError> {
    let row: Option<InstanceRow> = sqlx::query_as(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM container_instances WHERE arn = $1"
    ))
    .bind(arn)
    .fetch_optional(c)
    .await?;
    row.as_ref().map(instance).transpose()
}

pub async fn find_instance_by_ec2(
    c: &mut AnyConnection,
    cluster: &str,
    ec2_instance_id: &str,
) -> Result<Option<InstanceRec>, StoreError> {
    let row: Option<InstanceRow> = sqlx::query_as(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM container_instances WHERE cluster = $1 AND ec2_instance_id = $2 AND status != 'INACTIVE' LIMIT 1"
    ))
    .bind(cluster)
    .bind(ec2_instance_id)
    .fetch_optional(c)
    .await?;
    row.as_ref().map(instance).transpose()
}

pub async fn put_instance(c: &mut AnyConnection, r: &InstanceRec) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO container_instances (arn, cluster, ec2_instance_id, status, last_seen_at, desired_seq, report_seq, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (arn) DO UPDATE SET status = excluded.status, last_seen_at = excluded.last_seen_at,
           desired_seq = excluded.desired_seq, report_seq = excluded.report_seq, body = excluded.body,
           ec2_instance_id = excluded.ec2_instance_id",
    )
    .bind(&r.arn)
    .bind(&r.cluster)
    .bind(&r.ec2_instance_id)
    .bind(&r.status)
    .bind(r.last_seen_at)
    .bind(r.desired_seq)
    .bind(r.report_seq)
    .bind(json(r))
    .execute(c)
    .await?;
    Ok(())
}

/// Instances of a cluster (every status but INACTIVE unless `all`).
pub async fn list_instances(
    c: &mut AnyConnection,
    cluster: &str,
    all: bool,
) -> Result<Vec<InstanceRec>, StoreError> {
    let filter = if all { "" } else { " AND status != 'INACTIVE'" };
    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM container_instances WHERE cluster = $1{filter} ORDER BY arn");
    let rows: Vec<InstanceRow> = sqlx::query_as(&sql).bind(cluster).fetch_all(c).await?;
    rows.iter().map(instance).collect()
}

/// Marks an instance seen now (a poll), without rewriting its body.
pub async fn touch_instance(c: &mut AnyConnection, arn: &str, at: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE container_instances SET last_seen_at = $1 WHERE arn = $2")
        .bind(at)
        .bind(arn)
        .execute(c)
        .await?;
    Ok(())
}

/// (desired_seq, last_seen_at, status) of an instance: what a poll needs.
pub async fn instance_head(
    c: &mut AnyConnection,
    arn: &str,
) -> Result<Option<(i64, i64, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT desired_seq, last_seen_at, status FROM container_instances WHERE arn = $1",
    )
    .bind(arn)
    .fetch_optional(c)
    .await?)
}

/// Bumps the desired sequence of `arns` (their task sets changed).
pub async fn bump_desired(c: &mut AnyConnection, arns: &[String]) -> Result<(), StoreError> {
    for chunk in arns.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "UPDATE container_instances SET desired_seq = desired_seq + 1 WHERE arn IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for a in chunk {
            q = q.bind(a);
        }
        q.execute(&mut *c).await?;
    }
    Ok(())
}

// Tasks.

pub async fn get_task(c: &mut AnyConnection, arn: &str) -> Result<Option<TaskRec>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT body FROM tasks WHERE arn = $1")
        .bind(arn)
        .fetch_optional(c)
        .await?;
    row.map(|(b,)| body("tasks", &b)).transpose()
}

/// Rows per multi-row statement: 12 parameters a task row, well under
/// SQLite's and PostgreSQL's limits.
const ROWS_PER_STATEMENT: usize = 25;

pub async fn put_task(c: &mut AnyConnection, r: &TaskRec) -> Result<(), StoreError> {
    put_tasks(c, &[r]).await
}

/// Inserts or replaces tasks, many rows per statement.
pub async fn put_tasks(c: &mut AnyConnection, list: &[&TaskRec]) -> Result<(), StoreError> {
    for chunk in list.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO tasks (arn, cluster, container_instance, service, deployment, family, started_by, desired_status, last_status, live, stopped_at, body) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 12;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for k in 1..=12 {
                if k > 1 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", b + k));
            }
            sql.push(')');
        }
        sql.push_str(
            " ON CONFLICT (arn) DO UPDATE SET container_instance = excluded.container_instance,
               deployment = excluded.deployment,
               desired_status = excluded.desired_status, last_status = excluded.last_status,
               live = excluded.live, stopped_at = excluded.stopped_at, body = excluded.body",
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            let family = r
                .task_definition
                .rsplit('/')
                .next()
                .and_then(|fr| fr.split(':').next())
                .unwrap_or("")
                .to_string();
            q = q
                .bind(r.arn.clone())
                .bind(r.cluster.clone())
                .bind(r.container_instance.clone())
                .bind(r.service.clone().unwrap_or_default())
                .bind(r.deployment.clone().unwrap_or_default())
                .bind(family)
                .bind(r.started_by.clone().unwrap_or_default())
                .bind(r.desired_status.as_str())
                .bind(r.last_status.as_str())
                .bind(i64::from(r.live()))
                .bind(r.stopped_at.unwrap_or(0))
                .bind(json(r));
        }
        q.execute(&mut *c).await?;
    }
    Ok(())
}

/// The tasks of `arns` that exist, in no particular order.
pub async fn get_tasks(c: &mut AnyConnection, arns: &[&str]) -> Result<Vec<TaskRec>, StoreError> {
    let mut out = Vec::with_capacity(arns.len());
    for chunk in arns.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT body FROM tasks WHERE arn IN ({})", marks.join(", "));
        let mut q = sqlx::query_as::<_, (String,)>(&sql);
        for a in chunk {
            q = q.bind(*a);
        }
        for (b,) in q.fetch_all(&mut *c).await? {
            out.push(body("tasks", &b)?);
        }
    }
    Ok(out)
}

/// Records that an instance's reports up to `seq` are applied and that it
/// was heard from `at`, without rewriting its body.
pub async fn set_report_seq(
    c: &mut AnyConnection,
    arn: &str,
    seq: i64,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE container_instances SET report_seq = $1, last_seen_at = $2 WHERE arn = $3")
        .bind(seq)
        .bind(at)
        .bind(arn)
        .execute(c)
        .await?;
    Ok(())
}

/// (arn, desired_seq) of a cluster's instances.
pub async fn desired_seqs(
    c: &mut AnyConnection,
    cluster: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT arn, desired_seq FROM container_instances WHERE cluster = $1")
            .bind(cluster)
            .fetch_all(c)
            .await?,
    )
}

/// Tasks not yet finished, of a cluster.
pub async fn live_tasks(c: &mut AnyConnection, cluster: &str) -> Result<Vec<TaskRec>, StoreError> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT body FROM tasks WHERE cluster = $1 AND live = 1")
            .bind(cluster)
            .fetch_all(c)
            .await?;
    rows.iter().map(|(b,)| body("tasks", b)).collect()
}

/// Tasks of an instance: the live ones, and (for the agent to clean up)
/// those stopped in the last `recent_ms`.
pub async fn instance_tasks(
    c: &mut AnyConnection,
    instance: &str,
    since: i64,
) -> Result<Vec<TaskRec>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT body FROM tasks WHERE container_instance = $1 AND (live = 1 OR stopped_at >= $2)",
    )
    .bind(instance)
    .bind(since)
    .fetch_all(c)
    .await?;
    rows.iter().map(|(b,)| body("tasks", b)).collect()
}

/// Filters of ListTasks that the database applies.
#[derive(Debug, Default)]
pub struct TaskFilter<'a> {
    pub cluster: &'a str,
    pub container_instance: Option<&'a str>,
    pub family: Option<&'a str>,
    pub service: Option<&'a str>,
    pub started_by: Option<&'a str>,
    pub desired_status: Option<&'a str>,
}

/// Task ARNs matching `f`, ordered by ARN.
pub async fn task_arns(
    c: &mut AnyConnection,
    f: &TaskFilter<'_>,
) -> Result<Vec<String>, StoreError> {
    let mut sql = String::from("SELECT arn FROM tasks WHERE cluster = $1");
    let mut binds: Vec<&str> = vec![f.cluster];
    for (col, v) in [
        ("container_instance", f.container_instance),
        ("family", f.family),
        ("service", f.service),
        ("started_by", f.started_by),
        ("desired_status", f.desired_status),
    ] {
        if let Some(v) = v {
            binds.push(v);
            sql.push_str(&format!(" AND {col} = ${}", binds.len()));
        }
    }
    sql.push_str(" ORDER BY arn");
    let mut q = sqlx::query(&sql);
    for b in binds {
        q = q.bind(b);
    }
    let rows = q.fetch_all(c).await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
        .collect()
}

/// Live tasks of a service wanted running, counted per deployment:
/// (deployment id, running, pending).
pub async fn deployment_counts(
    c: &mut AnyConnection,
    cluster: &str,
    service: &str,
) -> Result<Vec<(String, i64, i64)>, StoreError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT deployment, last_status, COUNT(*) FROM tasks
         WHERE cluster = $1 AND service = $2 AND live = 1 AND desired_status = 'RUNNING'
         GROUP BY deployment, last_status",
    )
    .bind(cluster)
    .bind(service)
    .fetch_all(c)
    .await?;
    let mut out: Vec<(String, i64, i64)> = Vec::new();
    for (d, status, n) in rows {
        let i = match out.iter().position(|x| x.0 == d) {
            Some(i) => i,
            None => {
                out.push((d, 0, 0));
                out.len() - 1
            }
        };
        match status.as_str() {
            "RUNNING" => out[i].1 += n,
            "STOPPED" => {}
            _ => out[i].2 += n,
        }
    }
    Ok(out)
}

/// Forgets stopped tasks older than `before`.
pub async fn prune_stopped(c: &mut AnyConnection, before: i64) -> Result<u64, StoreError> {
    let r = sqlx::query("DELETE FROM tasks WHERE live = 0 AND stopped_at < $1")
        .bind(before)
        .execute(c)
        .await?;
    Ok(r.rows_affected())
}

// Client tokens (RunTask idempotency).

/// The request and answer a client token was first used with.
pub async fn client_token(
    c: &mut AnyConnection,
    cluster: &str,
    token: &str,
) -> Result<Option<(String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT request, response FROM client_tokens WHERE cluster = $1 AND token = $2",
    )
    .bind(cluster)
    .bind(token)
    .fetch_optional(c)
    .await?)
}

pub async fn put_client_token(
    c: &mut AnyConnection,
    cluster: &str,
    token: &str,
    request: &str,
    response: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO client_tokens (cluster, token, request, response, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(cluster)
    .bind(token)
    .bind(request)
    .bind(response)
    .bind(now)
    .execute(c)
    .await?;
    Ok(())
}

/// Forgets client tokens first used before `before`.
pub async fn prune_client_tokens(c: &mut AnyConnection, before: i64) -> Result<u64, StoreError> {
    let r = sqlx::query("DELETE FROM client_tokens WHERE created_at < $1")
        .bind(before)
        .execute(c)
        .await?;
    Ok(r.rows_affected())
}

// Tags.

pub async fn tags(
    c: &mut AnyConnection,
    resource: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT key, value FROM tags WHERE resource = $1 ORDER BY key")
            .bind(resource)
            .fetch_all(c)
            .await?,
    )
}

pub async fn put_tag(
    c: &mut AnyConnection,
    resource: &str,
    key: &str,
    value: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO tags (resource, key, value) VALUES ($1, $2, $3)
         ON CONFLICT (resource, key) DO UPDATE SET value = excluded.value",
    )
    .bind(resource)
    .bind(key)
    .bind(value)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn delete_tag(
    c: &mut AnyConnection,
    resource: &str,
    key: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM tags WHERE resource = $1 AND key = $2")
        .bind(resource)
        .bind(key)
        .execute(c)
        .await?;
    Ok(())
}

/// (registered instances, running tasks, pending tasks, active services)
/// of a cluster.
pub async fn cluster_counts(
    c: &mut AnyConnection,
    cluster: &str,
) -> Result<(i64, i64, i64, i64), StoreError> {
    let (instances,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM container_instances WHERE cluster = $1 AND status != 'INACTIVE'",
    )
    .bind(cluster)
    .fetch_one(&mut *c)
    .await?;
    let (running,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM tasks WHERE cluster = $1 AND live = 1 AND last_status = 'RUNNING'",
    )
    .bind(cluster)
    .fetch_one(&mut *c)
    .await?;
    let (pending,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM tasks WHERE cluster = $1 AND live = 1 AND last_status != 'RUNNING' AND last_status != 'STOPPED'",
    )
    .bind(cluster)
    .fetch_one(&mut *c)
    .await?;
    let (services,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM services WHERE cluster = $1 AND status = 'ACTIVE'")
            .bind(cluster)
            .fetch_one(c)
            .await?;
    Ok((instances, running, pending, services))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("dockhand-store-{}", crate::ids::hex(6)));
        let url = Store::sqlite_url(&dir.join("control.sqlite")).unwrap();
        (dir, url)
    }

    #[tokio::test]
    async fn a_schema_newer_than_the_binary_is_refused_and_left_alone() {
        let (dir, url) = temp_db();
        let store = Store::open(&url).await.unwrap();
        sqlx::query("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
            .execute(&store.pool)
            .await
            .unwrap();
        store.close().await;
        let e = Store::open(&url).await.err().expect("refused");
        assert!(
            e.to_string()
                .contains("schema version 99; this dockhand knows up to 1: upgrade dockhand first"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn the_lease_has_one_holder_and_a_new_token_for_each() {
        let (dir, url) = temp_db();
        let store = Store::open(&url).await.unwrap();
        assert_eq!(
            store.acquire_lease("s", "a", 60_000).await.unwrap().0,
            Some(1)
        );
        assert_eq!(store.acquire_lease("s", "b", 60_000).await.unwrap().0, None);
        assert_eq!(
            store.acquire_lease("s", "a", 60_000).await.unwrap().0,
            Some(1),
            "renewed"
        );
        store.release_lease("s", "a").await.unwrap();
        assert_eq!(
            store.acquire_lease("s", "b", 60_000).await.unwrap().0,
            Some(2),
            "a new holder fences the old"
        );
        let mut c = store.read().await.unwrap();
        assert!(lease_held(&mut c, store.kind, "s", "b", 2).await.unwrap());
        assert!(!lease_held(&mut c, store.kind, "s", "a", 1).await.unwrap());
        drop(c);
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_database_across_the_network_without_a_checked_certificate_is_warned_of() {
        let remote = "postgres://dockhand:pw@db.internal:5432/control";
        assert!(tls_warning(remote).unwrap().contains("not checked"));
        for mode in ["prefer", "require"] {
            let url = format!("{remote}?sslmode={mode}");
            assert!(tls_warning(&url).unwrap().contains("not checked"), "{url}");
        }
        let url = format!("{remote}?sslmode=disable");
        assert!(tls_warning(&url).unwrap().contains("not encrypted"));
        for fine in [
            format!("{remote}?sslmode=verify-full&sslrootcert=/etc/ca.pem"),
            format!("{remote}?sslrootcert=/etc/ca.pem&sslmode=verify-ca"),
            "postgres://dockhand:pw@127.0.0.1:5432/control".to_string(),
            "postgres://dockhand:pw@localhost/control?sslmode=disable".to_string(),
            "postgresql://dockhand:pw@[::1]:5432/control".to_string(),
            "postgres:///control?host=/run/postgresql".to_string(),
            "sqlite:///var/lib/dockhand/control.db".to_string(),
        ] {
            assert_eq!(tls_warning(&fine), None, "{fine}");
        }
        // `host=` in the query names the server the URL's authority does not.
        assert!(tls_warning("postgres://u:pw@localhost/c?host=db.internal").is_some());
        assert!(tls_warning("postgresql://u:pw@[2001:db8::1]:5432/c").is_some());
    }

    #[test]
    fn errors_never_show_a_password() {
        assert_eq!(
            describe_url("postgres://dockhand:s3cret@db.internal:5432/control?sslmode=require"),
            "PostgreSQL at db.internal:5432/control"
        );
    }
}
