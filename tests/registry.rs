//! Image pulls from a real registry: Debian's `docker-registry` on
//! 127.0.0.1, open and with htpasswd basic auth, with credentials read from
//! Docker's `config.json` as `docker pull` reads them.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{docker, http_get, image, wait_for, webapp_service, Agent};

const T: Duration = Duration::from_secs(60);

struct Registry {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Registry {
    fn start(name: &str, auth: Option<(&str, &str)>) -> Registry {
        let dir =
            std::env::temp_dir().join(format!("dockhand-registry-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        if let Some((user, pass)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd (apache2-utils)");
            std::fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: dockhand-test\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", dir.join("config.yml").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { port, dir, child }
    }

    /// Pushes the test image as `127.0.0.1:PORT/webapp:TAG` (logging in with
    /// `login` into `docker_config` first), then removes the local copy so
    /// the agent has to pull it.
    fn push(&self, tag: &str, login: Option<(&str, &str, &Path)>) -> String {
        let target = format!("127.0.0.1:{}/webapp:{tag}", self.port);
        let docker = |args: &[&str], config: Option<&Path>| {
            let mut c = Command::new("docker");
            if let Some(dir) = config {
                c.arg("--config").arg(dir);
            }
            let out = c.args(args).output().expect("docker CLI");
            assert!(
                out.status.success(),
                "docker {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        docker(&["tag", &image(), &target], None);
        let config = login.map(|(user, pass, dir)| {
            docker(
                &[
                    "login",
                    "-u",
                    user,
                    "-p",
                    pass,
                    &format!("127.0.0.1:{}", self.port),
                ],
                Some(dir),
            );
            dir
        });
        docker(&["push", &target], config);
        docker(&["rmi", &target], None);
        target
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn service_with_image(name: &str, image: &str) -> serde_json::Value {
    let mut s = webapp_service(name, 1, &[]);
    s["taskDefinition"]["containerDefinitions"][0]["image"] = serde_json::json!(image);
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_from_an_open_registry() {
    let d = docker().await;
    let registry = Registry::start("open", None);
    let image = registry.push(&format!("open-{}", std::process::id()), None);
    let mut agent = Agent::new("pull-open", &["ECS_IMAGE_PULL_BEHAVIOR=always"]);
    let empty = agent.dir.join("docker-config");
    std::fs::create_dir_all(&empty).unwrap();
    agent.start_with_env(&[("DOCKER_CONFIG", empty.to_str().unwrap())]);
    agent.write_service(service_with_image("pulled", &image));
    let c = wait_for(T, "the pulled image running and answering", || async {
        let c = agent.running(&d).await.into_iter().next()?;
        matches!(http_get(c.ports[0], "/"), Ok((200, _))).then_some(c)
    })
    .await;
    assert!(c.running);
    assert!(
        agent
            .log()
            .contains(&format!("pulling image image=\"{image}\"")),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_with_credentials_and_fails_unauthorized_without() {
    let d = docker().await;
    let registry = Registry::start("auth", Some(("dockhand", "s3cret")));
    let login = std::env::temp_dir().join(format!("dockhand-login-{}", std::process::id()));
    std::fs::create_dir_all(&login).unwrap();
    let image = registry.push(
        &format!("auth-{}", std::process::id()),
        Some(("dockhand", "s3cret", &login)),
    );

    // No credentials: the task cannot start, and the reason says why.
    let mut anon = Agent::new("pull-anon", &["ECS_IMAGE_PULL_BEHAVIOR=always"]);
    let empty = anon.dir.join("docker-config");
    std::fs::create_dir_all(&empty).unwrap();
    anon.start_with_env(&[("DOCKER_CONFIG", empty.to_str().unwrap())]);
    anon.write_service(service_with_image("private", &image));
    let s = wait_for(T, "a pending reason", || async {
        anon.service("private")
            .filter(|s| s["PendingReason"].is_string())
    })
    .await;
    let reason = s["PendingReason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("pull {image}: unauthorized")),
        "{reason}"
    );
    assert!(anon.running(&d).await.is_empty());

    // With Docker's config.json from `docker login`: it runs.
    let mut agent = Agent::new("pull-auth", &["ECS_IMAGE_PULL_BEHAVIOR=always"]);
    agent.start_with_env(&[("DOCKER_CONFIG", login.to_str().unwrap())]);
    agent.write_service(service_with_image("private", &image));
    wait_for(T, "the private image running", || async {
        let c = agent.running(&d).await.into_iter().next()?;
        matches!(http_get(c.ports[0], "/"), Ok((200, _))).then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&login);
}
