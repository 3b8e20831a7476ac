//! Test rig for integration tests against a real Docker engine.
//!
//! Each [`Agent`] is a real `dockhand agent` process with its own data
//! directory, services directory, API port and host-port range, so tests run
//! in parallel without seeing each other. Every container it creates carries
//! the `dockhand-test` label with the test's id (injected into each service
//! file), and dropping the `Agent` kills the process and removes those
//! containers, logging instead of panicking.

#![allow(dead_code)] // Each test binary uses a different part of the rig.

pub mod certs;
pub mod control;
pub mod postgres;
pub mod sim;

use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder};
use bollard::Docker;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub const TEST_LABEL: &str = "dockhand-test";

pub fn image() -> String {
    std::env::var("DOCKHAND_TEST_IMAGE").unwrap_or_else(|_| "dockhand-test/webapp:latest".into())
}

pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

pub async fn docker() -> Docker {
    Docker::connect_with_host(&docker_host())
        .expect("DOCKER_HOST is usable (scripts/test.sh sets it)")
        .negotiate_version()
        .await
        .expect("a Docker engine answers (run the tests through scripts/test.sh)")
}

/// A port range per agent, so parallel agents never compete for ports.
fn next_port_range() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    // Per test binary, offset by pid so binaries run one after another with
    // fresh ranges too; below the usual ephemeral range (32768+).
    let base = 20000 + ((std::process::id() as u16 % 20) * 500) + (slot % 10) * 50;
    (base, base + 49)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on loopback")
}

pub struct Agent {
    pub id: String,
    pub dir: PathBuf,
    pub services: PathBuf,
    pub config: PathBuf,
    pub api: u16,
    pub proxy: u16,
    pub port_range: (u16, u16),
    child: Option<Child>,
}

impl Agent {
    /// Prepares (but does not start) an agent; `extra` lines go into its
    /// ecs.config.
    pub fn new(test: &str, extra: &[&str]) -> Agent {
        let id = format!("{test}-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("dockhand-it-{id}-{}", rand_suffix()));
        let services = dir.join("services");
        std::fs::create_dir_all(&services).expect("create test dirs");
        let api = free_port();
        let proxy = free_port();
        let port_range = next_port_range();
        let mut text = format!(
            "ECS_CLUSTER=test\nECS_DATADIR={}\nDOCKHAND_SERVICES_DIR={}\nDOCKER_HOST={}\n\
             DOCKHAND_API_LISTEN=127.0.0.1:{api}\nDOCKHAND_PROXY_LISTEN=127.0.0.1:{proxy}\n\
             ECS_DYNAMIC_HOST_PORT_RANGE={}-{}\nECS_IMAGE_PULL_BEHAVIOR=prefer-cached\n\
             ECS_CONTAINER_STOP_TIMEOUT=5s\nECS_LOGLEVEL=debug\n",
            dir.join("data").display(),
            services.display(),
            docker_host(),
            port_range.0,
            port_range.1,
        );
        for line in extra {
            text.push_str(line);
            text.push('\n');
        }
        let config = dir.join("ecs.config");
        std::fs::write(&config, text).expect("write test config");
        Agent {
            id,
            dir,
            services,
            config,
            api,
            proxy,
            port_range,
            child: None,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn open_log(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open agent log")
    }

    /// Starts the agent process (appending to its log).
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts the agent with extra environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        self.start_with(env, None);
    }

    /// Starts the agent with its open-files limit (soft and hard) set to
    /// `nofile`, as a host with a low limit would.
    pub fn start_with_open_files(&mut self, nofile: u64) {
        self.start_with(&[], Some(nofile));
    }

    fn start_with(&mut self, env: &[(&str, &str)], nofile: Option<u64>) {
        assert!(self.child.is_none(), "agent already running");
        let log = self.open_log();
        let mut cmd = match nofile {
            None => dockhand(),
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_dockhand"));
                for (k, _) in std::env::vars() {
                    if k.starts_with("ECS_")
                        || k.starts_with("DOCKHAND_")
                        || k.starts_with("AWS_")
                        || k == "DOCKER_HOST"
                    {
                        c.env_remove(k);
                    }
                }
                c
            }
        };
        let child = cmd
            .args(["agent", "--config"])
            .arg(&self.config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn dockhand agent");
        self.child = Some(child);
        // Ready for tests once its local API answers (bound before Docker is
        // even asked), so no test races the agent's start.
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_get(self.api, "/v1/metadata").is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the agent under `systemd-socket-activate`, which holds the
    /// proxy socket as systemd would and passes it as fd 3. The shell runs
    /// the agent `runs` times in a row on the same socket, as systemd
    /// restarts a service: `LISTEN_PID` is cleared because it names the
    /// shell, not each agent.
    pub fn start_socket_activated(&mut self, runs: usize) {
        self.start_activated(runs, None);
    }

    /// [`Agent::start_socket_activated`] once, with a second socket named
    /// `tls` on `tls_port` (as `dockhand-proxy-tls.socket` passes it).
    pub fn start_socket_activated_tls(&mut self, tls_port: u16) {
        self.start_activated(1, Some(tls_port));
    }

    fn start_activated(&mut self, runs: usize, tls_port: Option<u16>) {
        assert!(self.child.is_none(), "agent already running");
        let log = self.open_log();
        let bin = env!("CARGO_BIN_EXE_dockhand");
        let one = format!("LISTEN_PID= {bin} agent --config {}", self.config.display());
        let script = vec![one; runs].join("; ");
        let mut listens = vec!["-l".to_string(), format!("127.0.0.1:{}", self.proxy)];
        if let Some(p) = tls_port {
            listens.extend([
                "-l".into(),
                format!("127.0.0.1:{p}"),
                "--fdname=http:tls".into(),
            ]);
        }
        let child = Command::new("systemd-socket-activate")
            .args(&listens)
            .args(["-E", "RUST_BACKTRACE", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn systemd-socket-activate (Debian package systemd)");
        self.child = Some(child);
    }

    /// The pid of the agent process running under the activation shell.
    pub fn activated_agent_pid(&self) -> Option<u32> {
        let shell = self.child.as_ref()?.id();
        let out = Command::new("pgrep")
            .args(["-P", &shell.to_string()])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// Sends `signal` and waits for the process to exit; returns how long
    /// that took and the exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> (Duration, std::process::ExitStatus) {
        let mut child = self.child.take().expect("agent running");
        let started = Instant::now();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        let status = child.wait().expect("wait for agent");
        (started.elapsed(), status)
    }

    /// Labels every container of a service for this test's cleanup.
    pub fn labelled(&self, mut service: Value) -> Value {
        if let Some(cs) = service["taskDefinition"]["containerDefinitions"].as_array_mut() {
            for c in cs {
                c["dockerLabels"][TEST_LABEL] = json!(self.id);
            }
        }
        service
    }

    /// Writes a service file, labelling every container for cleanup.
    pub fn write_service(&self, service: Value) {
        let service = self.labelled(service);
        let name = service["serviceName"]
            .as_str()
            .expect("serviceName")
            .to_string();
        self.write_raw(
            &name,
            &serde_json::to_string_pretty(&service).expect("json"),
        );
    }

    /// Runs a `dockhand` subcommand against this agent's config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let (cmd, rest) = args.split_first().expect("a subcommand");
        dockhand()
            .arg(cmd)
            .args(["--config", self.config.to_str().expect("utf-8 path")])
            .args(rest)
            .output()
            .expect("run dockhand")
    }

    /// Installs a file atomically, as `dockhand deploy` will.
    pub fn write_raw(&self, name: &str, text: &str) {
        let tmp = self.services.join(format!(".{name}.json.tmp"));
        std::fs::write(&tmp, text).expect("write service file");
        std::fs::rename(&tmp, self.services.join(format!("{name}.json")))
            .expect("install service file");
    }

    pub fn remove_service(&self, name: &str) {
        std::fs::remove_file(self.services.join(format!("{name}.json")))
            .expect("remove service file");
    }

    pub fn api_get(&self, path: &str) -> Option<Value> {
        let (status, body) = http_get(self.api, path).ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// The service's entry in `/v1/services`, once the agent has reconciled.
    pub fn service(&self, name: &str) -> Option<Value> {
        let v = self.api_get("/v1/services")?;
        v["Services"]
            .as_array()?
            .iter()
            .find(|s| s["ServiceName"] == name)
            .cloned()
    }

    /// This agent's containers (all states), by the test label.
    pub async fn containers(&self, docker: &Docker) -> Vec<Container> {
        let filters: HashMap<&str, Vec<String>> =
            HashMap::from([("label", vec![format!("{TEST_LABEL}={}", self.id)])]);
        let list = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .expect("list containers");
        let mut out = Vec::new();
        for s in list {
            let Some(id) = s.id else { continue };
            let Ok(c) = docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            else {
                continue;
            };
            let state = c.state.unwrap_or_default();
            let ports = c
                .host_config
                .and_then(|h| h.port_bindings)
                .unwrap_or_default()
                .values()
                .flatten()
                .flatten()
                .filter_map(|b| b.host_port.as_deref().and_then(|p| p.parse().ok()))
                .collect();
            let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
            let created = c.created.unwrap_or_default();
            out.push(Container {
                id,
                name: c
                    .name
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                running: state.running.unwrap_or(false),
                exit_code: state.exit_code,
                created,
                started_at: state.started_at.unwrap_or_default(),
                finished_at: state.finished_at.unwrap_or_default(),
                ports,
                labels,
            });
        }
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        out
    }

    /// Waits (30 s at most) until exactly `n` of this agent's containers run.
    pub async fn wait_running(&self, docker: &Docker, n: usize) -> Vec<Container> {
        wait_for(
            Duration::from_secs(30),
            &format!("{n} running containers"),
            || async {
                let r = self.running(docker).await;
                (r.len() == n).then_some(r)
            },
        )
        .await
    }

    pub async fn running(&self, docker: &Docker) -> Vec<Container> {
        self.containers(docker)
            .await
            .into_iter()
            .filter(|c| c.running)
            .collect()
    }

    fn cleanup(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The whole process group: under socket activation the agent is
            // a grandchild, and must not outlive the test.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        // Synchronous cleanup through the docker CLI: Drop cannot await.
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label={TEST_LABEL}={}", self.id),
            ])
            .output();
        match ids {
            Ok(out) => {
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                if !ids.is_empty() {
                    let ok = Command::new("docker")
                        .args(["rm", "-f"])
                        .args(&ids)
                        .stdout(Stdio::null())
                        .status();
                    if !matches!(ok, Ok(s) if s.success()) {
                        eprintln!("cleanup: docker rm -f of {} container(s) failed", ids.len());
                    }
                }
            }
            Err(e) => eprintln!("cleanup: cannot run docker: {e}"),
        }
        if std::thread::panicking() {
            eprintln!(
                "--- agent log ({}) ---\n{}",
                self.log_path().display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.cleanup();
    }
}

#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub created: String,
    pub started_at: String,
    pub finished_at: String,
    pub ports: Vec<u16>,
    pub labels: HashMap<String, String>,
}

/// Runs `cmd`, which must succeed; its output. A failure names the
/// command and gives its standard error.
pub fn run(cmd: &mut Command) -> std::process::Output {
    let what = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `dockhand` binary under test.
pub fn dockhand() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dockhand"));
    // The test's own config must not be overridden by the caller's shell.
    for (k, _) in std::env::vars() {
        if k.starts_with("ECS_")
            || k.starts_with("DOCKHAND_")
            || k.starts_with("AWS_")
            || k == "DOCKER_HOST"
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// HAProxy in front of some agents' proxies: the article's ELB. It checks
/// each host every 500 ms, and retries a request that a host could not
/// serve (refused, or 503: no task of the service there right now) on
/// another host, as an ELB in front of Dockhand hosts should be set up.
pub struct Haproxy {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl Haproxy {
    /// Starts HAProxy on a free port, balancing over `hosts` (proxy
    /// ports), health-checking `check_path` on each.
    pub fn start(hosts: &[u16], check_path: &str) -> Haproxy {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("dockhand-haproxy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("haproxy dir");
        let mut cfg = format!(
            "global\n  maxconn 2000\n\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  \
             retries 3\n  option redispatch 1\n  retry-on conn-failure empty-response response-timeout 503\n\n\
             frontend elb\n  bind 127.0.0.1:{port}\n  default_backend hosts\n\n\
             backend hosts\n  balance roundrobin\n  option httpchk GET {check_path}\n  http-check expect status 200\n  \
             default-server inter 500ms fall 2 rise 2\n"
        );
        for (i, h) in hosts.iter().enumerate() {
            cfg.push_str(&format!("  server host{i} 127.0.0.1:{h} check\n"));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start haproxy (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy { port, dir, child }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos:08x}")
}

/// A minimal HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(split_response(&buf))
}

/// A raw HTTP response's status code and body.
fn split_response(raw: &str) -> (u16, String) {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with
/// `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_until(timeout, what, || {
        let checked = check();
        async move { checked.await.ok_or_else(String::new) }
    })
    .await
}

/// [`wait_for`] whose `check` says what it found instead (`Err`): a
/// timeout panics with the last of those.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let found = match check().await {
            Ok(v) => return v,
            Err(found) => found,
        };
        if Instant::now() > deadline {
            if found.is_empty() {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            panic!("timed out after {timeout:?} waiting for {what}; last seen:\n{found}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A service running the test webapp; `env` adds knobs.
pub fn webapp_service(name: &str, count: u32, env: &[(&str, &str)]) -> Value {
    let environment: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    json!({
        "serviceName": name,
        "desiredCount": count,
        "taskDefinition": {
            "family": name,
            "networkMode": "bridge",
            "containerDefinitions": [{
                "name": "web",
                "image": image(),
                "memory": 32,
                "essential": true,
                "stopTimeout": 2,
                "portMappings": [{"containerPort": 5000, "hostPort": 0, "protocol": "tcp"}],
                "environment": environment,
            }]
        }
    })
}

/// A routed service: the webapp behind the proxy, checked every second on
/// `/health` (2 passes to join, 2 failures to leave), drained for at most
/// `drain_secs`.
pub fn routed_service(name: &str, count: u32, env: &[(&str, &str)], drain_secs: u64) -> Value {
    let mut s = webapp_service(name, count, env);
    s["loadBalancers"] = json!([{
        "containerName": "web",
        "containerPort": 5000,
        "pathPrefix": "/",
        "healthCheck": {"path": "/health", "intervalSeconds": 1, "timeoutSeconds": 1,
                        "healthyThresholdCount": 2, "unhealthyThresholdCount": 2,
                        "matcher": "200-399"},
        "deregistrationDelaySeconds": drain_secs,
    }]);
    s
}

/// Sends raw bytes and reads until the peer closes or `timeout`.
pub fn raw(port: u16, request: &[u8], timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(request)?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Background load: `threads` clients looping GET / until stopped,
/// counting answers by body, non-200 answers and socket errors.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<LoadStats>>,
}

#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    pub ok: u64,
    pub non_200: u64,
    pub errors: u64,
    pub bodies: std::collections::BTreeMap<String, u64>,
    /// The last few bodies answered, in order.
    pub last: Vec<String>,
    pub failures: Vec<String>,
}

impl Load {
    pub fn start(port: u16, threads: usize) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut st = LoadStats::default();
                    while !stop.load(Ordering::Relaxed) {
                        match http_get(port, "/") {
                            Ok((200, body)) => {
                                st.ok += 1;
                                *st.bodies.entry(body.trim().to_string()).or_default() += 1;
                                st.last.push(body.trim().to_string());
                                if st.last.len() > 20 {
                                    st.last.remove(0);
                                }
                            }
                            Ok((code, body)) => {
                                st.non_200 += 1;
                                if st.failures.len() < 10 {
                                    st.failures.push(format!("{code}: {}", body.trim()));
                                }
                            }
                            Err(e) => {
                                st.errors += 1;
                                if st.failures.len() < 10 {
                                    st.failures.push(e.to_string());
                                }
                            }
                        }
                    }
                    st
                })
            })
            .collect();
        Load { stop, handles }
    }

    pub fn stop(self) -> LoadStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadStats::default();
        for h in self.handles {
            let st = h.join().expect("load thread");
            total.ok += st.ok;
            total.non_200 += st.non_200;
            total.errors += st.errors;
            for (b, n) in st.bodies {
                *total.bodies.entry(b).or_default() += n;
            }
            total.last.extend(st.last);
            total.failures.extend(st.failures);
        }
        total
    }
}

/// A bodyless POST straight to a port: (status, body).
pub fn raw_post(port: u16, path: &str) -> (u16, String) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    split_response(&raw(port, req.as_bytes(), Duration::from_secs(5)).unwrap_or_default())
}

/// A process's resident memory, KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
