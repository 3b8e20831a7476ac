//! The operator commands that talk to a running agent through its local
//! API: `dockhand status` and `dockhand deploy`.
//!
//! The API is plain HTTP/1.1 on loopback; a tiny blocking client is enough
//! and keeps these commands free of an async runtime.

use dockhand_model::ServiceSpec;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// A rollout counts as done once its end state has held this long: a task
/// that crashes right after starting must not pass for a success.
const SETTLE: Duration = Duration::from_secs(3);

/// Unwell tasks listed per service before the rest is summarised.
const MAX_TASK_LINES: usize = 3;

/// Exit codes (sysexits.h where one fits).
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_DATAERR: u8 = 65;
pub const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent's local API at {addr}: {source} (is dockhand-agent running? DOCKHAND_API_LISTEN)")]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the agent's local API at {addr} answered {detail}")]
    BadAnswer { addr: SocketAddr, detail: String },
}

/// `GET path` on the local API, parsed as JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> Result<Value, ClientError> {
    let unreachable = |source| ClientError::Unreachable { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(unreachable)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(unreachable)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |detail: String| ClientError::BadAnswer { addr, detail };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("without an HTTP header".into()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(bad(head.lines().next().unwrap_or("").to_string()));
    }
    serde_json::from_str(body).map_err(|e| bad(format!("invalid JSON ({e})")))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The first line of `dockhand status` in managed mode: the control
/// endpoint, this instance, and whether the session is up, since when.
pub fn render_control(metadata: &Value) -> String {
    let c = &metadata["ControlEndpoint"];
    if c.is_null() {
        return String::new();
    }
    let since = c["Since"]
        .as_str()
        .map(|s| format!(" since {s}"))
        .unwrap_or_default();
    let mut out = format!(
        "control endpoint {}: {}{since}; cluster {}, instance {} ({})\n",
        str_of(&c["Url"]),
        if c["Connected"] == true {
            "connected"
        } else {
            "NOT CONNECTED"
        },
        str_of(&metadata["Cluster"]),
        metadata["ContainerInstanceArn"]
            .as_str()
            .unwrap_or("not registered"),
        str_of(&c["Ec2InstanceId"]),
    );
    if let Some(e) = c["LastError"].as_str() {
        out.push_str(&format!("  last error: {e}\n"));
    }
    if c["Draining"] == true {
        out.push_str("  draining: this host's tasks are moving to other hosts before it stops\n");
    }
    out
}

/// Renders `dockhand status`: one line per service, then for anything not
/// right, why.
pub fn render_status(services: &Value, tasks: &Value) -> String {
    let mut out = String::new();
    for w in services["Warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("warning: {}\n", str_of(w)));
    }
    if services["DesiredStateKnown"] == false {
        out.push_str("desired state unknown (services directory missing, or control endpoint not answering): every task is held as it is\n");
    }
    let list = services["Services"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        out.push_str("no services (add service files to DOCKHAND_SERVICES_DIR, or in managed mode create services on the control endpoint)\n");
        return out;
    }
    let width = list
        .iter()
        .map(|s| str_of(&s["ServiceName"]).len())
        .max()
        .unwrap_or(7)
        .max(7);
    out.push_str(&format!(
        "{:<width$}  {:>4}  {:>7}  {:>7}  {:>7}  STATE\n",
        "SERVICE", "REV", "DESIRED", "RUNNING", "HEALTHY"
    ));
    let mut details = Vec::new();
    for s in &list {
        let name = str_of(&s["ServiceName"]);
        let desired = s["DesiredCount"].as_u64().unwrap_or(0);
        let running = s["RunningCount"].as_u64().unwrap_or(0);
        let healthy = s["HealthyCount"].as_u64().unwrap_or(0);
        let rev = s["Revision"]
            .as_u64()
            .map_or("-".to_string(), |r| r.to_string());
        let mut why = Vec::new();
        if s["ServiceFileInvalid"] == true {
            why.push(format!(
                "service file invalid, last good version kept: {}",
                s["ServiceFileError"]
                    .as_str()
                    .unwrap_or("see the agent log")
            ));
        }
        if let Some(r) = s["RolloutStateReason"].as_str() {
            why.push(r.to_string());
        }
        if let Some(r) = s["PendingReason"].as_str() {
            why.push(r.to_string());
        }
        let state = if why.is_empty() && running == desired && healthy == desired {
            "ok".to_string()
        } else if why.is_empty() {
            "starting".to_string()
        } else {
            "attention".to_string()
        };
        out.push_str(&format!(
            "{name:<width$}  {rev:>4}  {desired:>7}  {running:>7}  {healthy:>7}  {state}\n"
        ));
        for w in why {
            details.push(format!("  {name}: {w}"));
        }
        // The tasks of this service that are not well: exit codes, health.
        // Failed tasks stay listed until cleanup, so show the first few.
        let mut unwell = 0;
        for t in tasks["Tasks"].as_array().into_iter().flatten() {
            if str_of(&t["ServiceName"]) != name {
                continue;
            }
            let id: String = str_of(&t["Arn"])
                .rsplit('/')
                .next()
                .unwrap_or("")
                .chars()
                .take(12)
                .collect();
            let desired_status = str_of(&t["DesiredStatus"]);
            if desired_status == "RUNNING" && t["Healthy"] == true {
                continue;
            }
            unwell += 1;
            if unwell > MAX_TASK_LINES {
                continue;
            }
            let mut line = format!(
                "  {name}: task {id} rev {} {}/{}",
                str_of(&t["Version"]),
                str_of(&t["KnownStatus"]),
                desired_status
            );
            if let Some(r) = t["StoppedReason"].as_str() {
                line.push_str(&format!(": {r}"));
            } else if let Some(r) = t["HealthReason"].as_str() {
                line.push_str(&format!(": health check: {r}"));
            } else {
                for c in t["Containers"].as_array().into_iter().flatten() {
                    if let Some(o) = c["HealthOutput"].as_str() {
                        line.push_str(&format!(": {} health: {o}", str_of(&c["Name"])));
                    }
                }
            }
            details.push(line);
        }
        if unwell > MAX_TASK_LINES {
            details.push(format!(
                "  {name}: … and {} more such task(s) (dockhand status --json)",
                unwell - MAX_TASK_LINES
            ));
        }
        if state != "ok" {
            if let Some(e) = s["Events"].as_array().and_then(|e| e.first()) {
                details.push(format!(
                    "  {name}: last event {}: {}",
                    str_of(&e["At"]),
                    str_of(&e["Message"])
                ));
            }
        }
    }
    if !details.is_empty() {
        out.push('\n');
        for d in details {
            out.push_str(&d);
            out.push('\n');
        }
    }
    out
}

/// The outcome of `dockhand deploy`.
#[derive(Debug)]
pub enum DeployError {
    Invalid(String),
    Install(String),
    Agent(ClientError),
    Failed(String),
    TimedOut(String),
}

impl DeployError {
    pub fn exit_code(&self) -> u8 {
        match self {
            DeployError::Invalid(_) => EXIT_DATAERR,
            DeployError::Agent(_) => EXIT_UNAVAILABLE,
            DeployError::Install(_) | DeployError::Failed(_) | DeployError::TimedOut(_) => {
                EXIT_FAILED
            }
        }
    }
}

impl std::fmt::Display for DeployError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeployError::Invalid(e) => write!(f, "{e}"),
            DeployError::Install(e) => write!(f, "cannot install the service file: {e}"),
            DeployError::Agent(e) => write!(f, "{e}"),
            DeployError::Failed(e) => write!(f, "rollout failed: {e}"),
            DeployError::TimedOut(e) => write!(f, "rollout did not finish in time: {e}"),
        }
    }
}

/// `dockhand deploy FILE`: validate, install atomically as
/// `<serviceName>.json`, then follow the rollout until every desired task of
/// the new revision runs and passes its checks, or it fails, or `timeout`.
/// `progress` gets one line per visible change.
pub fn deploy(
    file: &Path,
    services_dir: &Path,
    api: SocketAddr,
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> Result<(), DeployError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| DeployError::Invalid(format!("{}: cannot read: {e}", file.display())))?;
    let parsed = ServiceSpec::parse(&text).map_err(|errors| {
        DeployError::Invalid(
            errors
                .iter()
                .map(|e| format!("{}: {e}", file.display()))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    for w in &parsed.warnings {
        progress(&format!("warning: {}: {w}", file.display()));
    }
    let spec = parsed.spec;
    let name = spec.service_name.clone();
    let digest = spec.task_definition.digest();
    // The agent must be there to follow the rollout; check before installing.
    get_json(api, "/v1/metadata").map_err(DeployError::Agent)?;

    let target = services_dir.join(format!("{name}.json"));
    let tmp = services_dir.join(format!(".{name}.json.tmp"));
    let install = || -> std::io::Result<()> {
        std::fs::create_dir_all(services_dir)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        std::fs::File::open(services_dir)?.sync_all()
    };
    install().map_err(|e| DeployError::Install(format!("{}: {e}", target.display())))?;
    progress(&format!(
        "installed {} (task definition {digest})",
        target.display()
    ));

    let wanted = u64::from(spec.wanted_tasks());
    let deadline = Instant::now() + timeout;
    let mut last_line = String::new();
    let mut last_reason = String::new();
    let mut settled_since: Option<Instant> = None;
    loop {
        let services = get_json(api, "/v1/services").map_err(DeployError::Agent)?;
        let s = services["Services"]
            .as_array()
            .and_then(|l| l.iter().find(|s| str_of(&s["ServiceName"]) == name))
            .cloned();
        if let Some(s) = s {
            let failed_ours = s["FailedDigest"].as_str() == Some(digest.as_str());
            if failed_ours {
                return Err(DeployError::Failed(
                    s["RolloutStateReason"]
                        .as_str()
                        .unwrap_or("the circuit breaker tripped")
                        .to_string(),
                ));
            }
            let ours = str_of(&s["Digest"]) == digest;
            let revision = s["Revision"].as_u64();
            let deployments = s["Deployments"].as_array().cloned().unwrap_or_default();
            let current = deployments
                .iter()
                .find(|d| d["Revision"].as_u64() == revision);
            let count = |k: &str| current.and_then(|d| d[k].as_u64()).unwrap_or(0);
            let (running, healthy) = (count("RunningCount"), count("HealthyCount"));
            let line = format!(
                "revision {}: {running} running, {healthy} healthy of {wanted}{}",
                revision.map_or("?".into(), |r| r.to_string()),
                if deployments.len() > 1 {
                    "; older revision still serving"
                } else {
                    ""
                }
            );
            if line != last_line {
                progress(&line);
                last_line = line;
            }
            if let Some(r) = s["PendingReason"].as_str() {
                last_reason = r.to_string();
            }
            let done = ours && deployments.len() == 1 && running == wanted && healthy == wanted;
            match (done, settled_since) {
                (false, _) => settled_since = None,
                (true, None) => settled_since = Some(Instant::now()),
                (true, Some(since)) if since.elapsed() >= SETTLE => {
                    progress(&format!(
                        "{name} is running revision {} on every task",
                        revision.unwrap_or(0)
                    ));
                    return Ok(());
                }
                (true, Some(_)) => {}
            }
        }
        if Instant::now() >= deadline {
            let why = if last_reason.is_empty() {
                format!(
                    "{} elapsed; see dockhand status",
                    humantime::format_duration(timeout)
                )
            } else {
                format!(
                    "{} elapsed; last reason: {last_reason}",
                    humantime::format_duration(timeout)
                )
            };
            return Err(DeployError::TimedOut(why));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_lists_three_unwell_tasks_then_counts_the_rest() {
        let services = json!({"Services": [{"ServiceName": "crashy", "Revision": 1, "DesiredCount": 1,
            "RunningCount": 0, "HealthyCount": 0, "PendingReason": "restart backoff", "Events": []}]});
        let tasks: Vec<_> = (0..5)
            .map(|i| json!({"Arn": format!("arn:aws:ecs:local:0:task/c/{i:032}"), "ServiceName": "crashy",
                "Version": "1", "DesiredStatus": "STOPPED", "KnownStatus": "STOPPED", "Healthy": false,
                "StoppedReason": "essential container web exited with code 3", "Containers": []}))
            .collect();
        let out = render_status(&services, &json!({ "Tasks": tasks }));
        assert_eq!(out.matches("exited with code 3").count(), 3, "{out}");
        assert!(
            out.contains("  crashy: … and 2 more such task(s) (dockhand status --json)\n"),
            "{out}"
        );
    }

    #[test]
    fn status_names_what_is_wrong_and_why() {
        let services = json!({"Services": [
            {"ServiceName": "web", "Revision": 2, "DesiredCount": 2, "RunningCount": 2, "HealthyCount": 2,
             "Deployments": [{"Revision": 2}], "Events": []},
            {"ServiceName": "huge", "Revision": 1, "DesiredCount": 1, "RunningCount": 0, "HealthyCount": 0,
             "PendingReason": "not enough memory: needs 9000 MiB, 100 MiB free",
             "Events": [{"At": "2026-11-26T07:00:00Z", "Message": "cannot start a task: not enough memory"}]}
        ]});
        let tasks = json!({"Tasks": [
            {"Arn": "arn:aws:ecs:local:0:task/c/abcdef0123456789", "ServiceName": "huge", "Version": "1",
             "DesiredStatus": "STOPPED", "KnownStatus": "STOPPED", "Healthy": false,
             "StoppedReason": "essential container web exited with code 3", "Containers": []}
        ]});
        let out = render_status(&services, &tasks);
        assert!(
            out.starts_with("SERVICE   REV  DESIRED  RUNNING  HEALTHY  STATE\n"),
            "{out}"
        );
        assert!(
            out.contains("web         2        2        2        2  ok\n"),
            "{out}"
        );
        assert!(
            out.contains("huge        1        1        0        0  attention\n"),
            "{out}"
        );
        assert!(
            out.contains("  huge: not enough memory: needs 9000 MiB, 100 MiB free\n"),
            "{out}"
        );
        assert!(out.contains("  huge: task abcdef012345 rev 1 STOPPED/STOPPED: essential container web exited with code 3"), "{out}");
    }
}
