//! A real `dockhand control` process for a test, its keys, and the real
//! AWS CLI pointed at it.

#![allow(dead_code)]

use super::sim::Endpoint;
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One key of the credentials file.
#[derive(Clone, Debug)]
pub struct Key {
    pub profile: String,
    pub id: String,
    pub secret: String,
}

pub struct ControlProc {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub operator: Key,
    pub instance: Key,
    extra: Vec<String>,
    /// The credentials file (the first replica's, shared).
    credentials: PathBuf,
    child: Option<Child>,
}

/// Writes `dir/control.conf`: a free port, `dir/data`, the credentials
/// file, and `extra`.
fn write_config(
    dir: &std::path::Path,
    credentials: &std::path::Path,
    extra: &[&str],
) -> (PathBuf, u16) {
    std::fs::create_dir_all(dir).expect("create the test dir");
    let port = super::free_port();
    let config = dir.join("control.conf");
    let mut text = format!(
        "DOCKHAND_CONTROL_LISTEN=127.0.0.1:{port}\nDOCKHAND_CONTROL_DATADIR={}\nDOCKHAND_CONTROL_CREDENTIALS={}\n",
        dir.join("data").display(),
        credentials.display()
    );
    for l in extra {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(&config, text).expect("write control.conf");
    (config, port)
}

fn parse_profile(text: &str) -> Key {
    let mut k = Key {
        profile: String::new(),
        id: String::new(),
        secret: String::new(),
    };
    for line in text.lines() {
        let line = line.trim();
        if let Some(p) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            k.profile = p.to_string();
        } else if let Some((a, b)) = line.split_once('=') {
            match a.trim() {
                "aws_access_key_id" => k.id = b.trim().to_string(),
                "aws_secret_access_key" => k.secret = b.trim().to_string(),
                _ => {}
            }
        }
    }
    k
}

impl ControlProc {
    /// Prepares a control endpoint with `extra` config lines, an operator
    /// key and an instance key for `cluster` (made by `dockhand control
    /// credentials new`), and starts it.
    pub fn start(test: &str, cluster: &str, extra: &[&str]) -> ControlProc {
        let dir = std::env::temp_dir().join(format!(
            "dockhand-ctl-{test}-{}-{}",
            std::process::id(),
            super::free_port()
        ));
        let credentials = dir.join("credentials");
        let (config, port) = write_config(&dir, &credentials, extra);
        let new_key = |args: &[&str]| {
            let out = super::run(
                super::dockhand()
                    .args(["control", "--config"])
                    .arg(&config)
                    .args(["credentials", "new"])
                    .args(args),
            );
            parse_profile(&String::from_utf8_lossy(&out.stdout))
        };
        let operator = new_key(&["--role", "operator"]);
        let instance = new_key(&["--role", "instance", "--cluster", cluster]);
        let mut c = ControlProc {
            dir,
            config,
            port,
            operator,
            instance,
            extra: extra.iter().map(|l| l.to_string()).collect(),
            credentials,
            child: None,
        };
        c.spawn();
        c
    }

    /// Another replica of this control endpoint: the same config lines
    /// (the same database), the same credentials file, its own port.
    pub fn replica(&self, test: &str) -> ControlProc {
        let dir = std::env::temp_dir().join(format!(
            "dockhand-ctl-{test}-{}-{}",
            std::process::id(),
            super::free_port()
        ));
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (config, port) = write_config(&dir, &self.credentials, &extra);
        let mut c = ControlProc {
            dir,
            config,
            port,
            operator: self.operator.clone(),
            instance: self.instance.clone(),
            extra: self.extra.clone(),
            credentials: self.credentials.clone(),
            child: None,
        };
        c.spawn();
        c
    }

    /// Whether this replica runs the scheduler (its `/metrics`).
    pub fn is_leader(&self) -> bool {
        super::http_get(self.port, "/metrics")
            .is_ok_and(|(_, body)| body.lines().any(|l| l == "dockhand_control_leader 1"))
    }

    /// Starts the process (again) and waits until it answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("control.log"))
            .expect("open the control log");
        let mut cmd = super::dockhand();
        cmd.args(["control", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .process_group(0);
        self.child = Some(cmd.spawn().expect("start dockhand control"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = super::http_get(self.port, "/health") {
                return;
            }
            // One that exited will not answer: say so now, not at the deadline.
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "dockhand control exited ({status}) before it answered; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dockhand control did not answer; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("control.log")).unwrap_or_default()
    }

    pub fn endpoint(&self, key: &Key) -> Endpoint {
        Endpoint {
            addr: ([127, 0, 0, 1], self.port).into(),
            others: Vec::new(),
            key: key.id.clone(),
            secret: key.secret.clone(),
            region: "us-east-1".into(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `aws ecs ARGS… --endpoint-url …` as profile `profile`: the answer's
    /// JSON, or the CLI's error text.
    pub fn aws_as(&self, profile: &str, args: &[&str]) -> Result<Value, String> {
        self.aws_with(profile, args, None)
    }

    /// `aws ecs …` as the operator, without the CLI's retries (it retries a
    /// ServerException four times by default).
    pub fn aws_once(&self, args: &[&str]) -> Result<Value, String> {
        let p = self.operator.profile.clone();
        self.aws_with(&p, args, Some(1))
    }

    fn aws_with(
        &self,
        profile: &str,
        args: &[&str],
        attempts: Option<u32>,
    ) -> Result<Value, String> {
        let mut cmd = Command::new("aws");
        if let Some(n) = attempts {
            cmd.env("AWS_MAX_ATTEMPTS", n.to_string());
        }
        let out = cmd
            .arg("ecs")
            .args(args)
            .args(["--endpoint-url", &self.url(), "--output", "json"])
            .env("AWS_SHARED_CREDENTIALS_FILE", &self.credentials)
            .env("AWS_CONFIG_FILE", self.dir.join("aws-config-absent"))
            .env("AWS_PROFILE", profile)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            // Never ask an instance metadata service for anything.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .output()
            .expect("run the AWS CLI (scripts/test.sh installs it)");
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?
            })
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    /// `aws ecs …` as the operator; panics with the CLI's error.
    pub fn aws(&self, args: &[&str]) -> Value {
        let p = self.operator.profile.clone();
        self.aws_as(&p, args).unwrap_or_else(|e| {
            panic!("aws ecs {args:?} failed: {e}\ncontrol log:\n{}", self.log())
        })
    }
}

impl ControlProc {
    /// `describe-services` of one service.
    pub fn service(&self, cluster: &str, name: &str) -> Value {
        self.aws(&[
            "describe-services",
            "--cluster",
            cluster,
            "--services",
            name,
        ])["services"][0]
            .clone()
    }

    /// Describes the service every 300 ms until `check` holds; panics with
    /// the service and the control log after `timeout`.
    pub async fn wait_service(
        &self,
        cluster: &str,
        name: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.service(cluster, name);
            if check(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; service now:\n{}\ncontrol log:\n{}",
                serde_json::to_string_pretty(&s).unwrap_or_default(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// `register-task-definition` with container definitions as JSON text;
    /// returns the revision's ARN.
    pub fn register(&self, family: &str, container_definitions: &str) -> String {
        let v = self.aws(&[
            "register-task-definition",
            "--family",
            family,
            "--container-definitions",
            container_definitions,
        ]);
        v["taskDefinition"]["taskDefinitionArn"]
            .as_str()
            .unwrap_or_else(|| panic!("no taskDefinitionArn in {v}"))
            .to_string()
    }
}

impl Drop for ControlProc {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
