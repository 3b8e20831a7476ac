//! The standalone agent against a real Docker engine: service files in, the
//! right containers out, through crashes and agent restarts.

mod support;

use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{docker, http_get, wait_for, webapp_service, Agent};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn three_tasks_run_on_distinct_dynamic_ports_and_answer() {
    let d = docker().await;
    let mut agent = Agent::new("three", &[]);
    agent.start();
    let written = Instant::now();
    agent.write_service(webapp_service("hello", 3, &[]));

    let running = wait_for(T, "3 running tasks answering Hello world!", || async {
        let running = agent.running(&d).await;
        let answering = running
            .iter()
            .filter(|c| {
                c.ports.len() == 1
                    && matches!(http_get(c.ports[0], "/"), Ok((200, ref b)) if b == "Hello world!\n")
            })
            .count();
        (answering == 3).then_some(running)
    })
    .await;
    eprintln!(
        "figure: service file written -> 3 tasks answering: {} ms",
        written.elapsed().as_millis()
    );

    let ports: BTreeSet<u16> = running.iter().map(|c| c.ports[0]).collect();
    assert_eq!(ports.len(), 3, "distinct host ports: {ports:?}");
    for p in &ports {
        assert!(
            (agent.port_range.0..=agent.port_range.1).contains(p),
            "port {p} outside ECS_DYNAMIC_HOST_PORT_RANGE {:?}",
            agent.port_range
        );
    }
    // ECS and Dockhand labels on every container.
    for c in &running {
        for key in [
            "dockhand.instance",
            "dockhand.service",
            "dockhand.task",
            "dockhand.revision",
            "com.amazonaws.ecs.task-arn",
            "com.amazonaws.ecs.container-name",
            "com.amazonaws.ecs.task-definition-family",
            "com.amazonaws.ecs.task-definition-version",
            "com.amazonaws.ecs.cluster",
        ] {
            assert!(c.labels.contains_key(key), "{} lacks label {key}", c.name);
        }
        assert_eq!(
            c.labels["com.amazonaws.ecs.task-definition-family"],
            "hello"
        );
        assert_eq!(c.labels["com.amazonaws.ecs.cluster"], "test");
    }
    // The local API agrees.
    let s = wait_for(T, "/v1/services to show 3 running", || async {
        agent.service("hello").filter(|s| s["RunningCount"] == 3)
    })
    .await;
    assert_eq!(s["DesiredCount"], 3);
    let tasks = agent.api_get("/v1/tasks").expect("/v1/tasks");
    assert_eq!(tasks["Tasks"].as_array().map(Vec::len), Some(3));
    let meta = agent.api_get("/v1/metadata").expect("/v1/metadata");
    assert_eq!(meta["Cluster"], "test");
    assert_eq!(http_get(agent.api, "/nope").unwrap().0, 404);
    // Read endpoints refuse anything but GET.
    assert_eq!(support::raw_post(agent.api, "/v1/tasks").0, 405);
    // Prometheus text.
    let metrics = wait_for(T, "metrics with 3 running tasks", || async {
        let (code, body) = http_get(agent.api, "/metrics").ok()?;
        (code == 200 && body.contains("dockhand_service_running_tasks{service=\"hello\"} 3\n"))
            .then_some(body)
    })
    .await;
    assert!(
        metrics.contains("dockhand_tasks{service=\"hello\",state=\"RUNNING\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE dockhand_reconciles_total counter\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dockhand_image_pulls_total{result=\"failure\"} 0\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_task_is_replaced_and_its_exit_code_reported() {
    let d = docker().await;
    let mut agent = Agent::new("kill", &[]);
    agent.start();
    agent.write_service(webapp_service("victim", 1, &[]));
    let first = wait_for(T, "one running task", || async {
        agent.running(&d).await.into_iter().next()
    })
    .await;

    let killed = Instant::now();
    let status = std::process::Command::new("docker")
        .args(["kill", &first.id])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("docker kill");
    assert!(status.success());
    let replacement = wait_for(T, "a replacement task", || async {
        agent
            .running(&d)
            .await
            .into_iter()
            .find(|c| c.id != first.id)
    })
    .await;
    let took = killed.elapsed();
    eprintln!(
        "figure: docker kill -> replacement running: {} ms",
        took.as_millis()
    );
    assert!(replacement.running);

    // The killed task's container stays for inspection (cleanup wait), and
    // its failure is reported with the exit code.
    let all = agent.containers(&d).await;
    let dead = all
        .iter()
        .find(|c| c.id == first.id)
        .expect("killed container kept");
    assert_eq!(dead.exit_code, Some(137));
    let s = wait_for(T, "/v1/services to count the failure", || async {
        agent.service("victim").filter(|s| s["TotalFailures"] == 1)
    })
    .await;
    let events = s["Events"].to_string();
    assert!(
        events.contains("essential container web exited with code 137"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_task_is_retried_with_growing_delays() {
    let d = docker().await;
    let mut agent = Agent::new("crashloop", &[]);
    agent.start();
    agent.write_service(webapp_service(
        "crashy",
        1,
        &[("EXIT_AFTER_MS", "100"), ("EXIT_CODE", "3")],
    ));

    // Failures 1..=5 give delays 0, 1, 2, 4, 8 s before the next start.
    let containers = wait_for(Duration::from_secs(40), "5 crashed tasks", || async {
        let c = agent.containers(&d).await;
        let crashed = c.iter().filter(|c| c.exit_code == Some(3)).count();
        (crashed >= 5).then_some(c)
    })
    .await;
    // From a task's exit to the agent creating its replacement: the
    // backoff itself, without the engine's start-up time.
    let t = |s: &str| humantime::parse_rfc3339_weak(s).ok();
    let mut containers = containers;
    containers.sort_by(|a, b| a.created.cmp(&b.created));
    let gaps: Vec<u64> = containers
        .windows(2)
        .filter_map(|w| {
            let finished = t(&w[0].finished_at)?;
            let created = t(&w[1].created)?;
            Some(
                created
                    .duration_since(finished)
                    .unwrap_or_default()
                    .as_millis() as u64,
            )
        })
        .collect();
    eprintln!("figure: ms from crash to replacement created: {gaps:?}");
    assert!(gaps.len() >= 4, "{gaps:?}");
    // Backoff 0, 1, 2, 4 s, plus the time to notice the exit and create
    // the container (well under a second idle, more on a loaded CI box).
    for (i, backoff_ms) in [0u64, 1000, 2000, 4000].into_iter().enumerate() {
        assert!(
            gaps[i] >= backoff_ms && gaps[i] < backoff_ms + 3000,
            "replacement {i} after {backoff_ms} ms of backoff: {gaps:?}"
        );
    }

    let s = wait_for(T, "/v1/services to count 5 failures", || async {
        agent
            .service("crashy")
            .filter(|s| s["ConsecutiveFailures"].as_u64() >= Some(5))
    })
    .await;
    let reason = s["PendingReason"].as_str().unwrap_or("");
    assert!(
        reason.contains("restart backoff") || s["RunningCount"] == 1,
        "pending reason names the backoff: {s}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_adopts_its_tasks_and_restarts_none() {
    let d = docker().await;
    let mut agent = Agent::new("adopt", &[]);
    agent.start();
    agent.write_service(webapp_service("steady", 3, &[]));
    let before = agent.wait_running(&d, 3).await;

    let (_, status) = agent.signal_and_wait("KILL");
    assert!(!status.success());
    agent.start();
    // Wait until the new agent has reconciled at least once...
    wait_for(T, "the new agent's first reconcile", || async {
        agent.service("steady").filter(|s| s["RunningCount"] == 3)
    })
    .await;
    // ...and give it a few more passes to do anything wrong.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = agent.containers(&d).await;
    let ids = |v: &[support::Container]| {
        v.iter()
            .map(|c| (c.id.clone(), c.started_at.clone()))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        ids(&before),
        ids(&after),
        "same containers, same start times, none added"
    );
    assert!(after.iter().all(|c| c.running));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_services_directory_holds_running_tasks_until_it_appears() {
    let d = docker().await;
    let mut agent = Agent::new("nodir", &[]);
    agent.start();
    agent.write_service(support::routed_service("held", 2, &[], 1));
    wait_for(T, "2 healthy tasks", || async {
        agent.service("held").filter(|s| s["HealthyCount"] == 2)
    })
    .await;
    let before = agent.containers(&d).await;
    let ids = |v: &[support::Container]| {
        v.iter()
            .map(|c| (c.id.clone(), c.started_at.clone(), c.running))
            .collect::<BTreeSet<_>>()
    };

    // The agent restarts while its services directory is gone (a late
    // mount, an operator moving it).
    agent.signal_and_wait("TERM");
    let away = agent.dir.join("services.away");
    std::fs::rename(&agent.services, &away).expect("move the services directory away");
    agent.start();
    let meta = wait_for(T, "the agent's metadata", || async {
        agent.api_get("/v1/metadata")
    })
    .await;
    assert_eq!(meta["DesiredStateKnown"], false, "{meta}");
    // For 30 s: nothing stopped, nothing started, and the proxy serves
    // from the last known desired state.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(30) {
        assert_eq!(ids(&agent.containers(&d).await), ids(&before));
        if let Ok((code, body)) = http_get(agent.proxy, "/") {
            assert!(code == 200 || code == 503, "{code} {body}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (code, body) = http_get(agent.proxy, "/").expect("the proxy answers");
    assert_eq!((code, body.as_str()), (200, "Hello world!\n"));
    let s = agent.service("held").expect("the service is listed");
    assert!(
        s["PendingReason"]
            .as_str()
            .unwrap_or("")
            .contains("desired state unknown"),
        "{s}"
    );
    assert!(agent
        .log()
        .contains("services directory is missing or unreadable"));

    // The directory comes back: desired state known again, the same tasks
    // adopted, none restarted.
    std::fs::rename(&away, &agent.services).expect("move it back");
    wait_for(T, "desired state known again", || async {
        agent
            .api_get("/v1/metadata")
            .filter(|m| m["DesiredStateKnown"] == true)
    })
    .await;
    wait_for(T, "2 healthy tasks, nothing pending", || async {
        agent
            .service("held")
            .filter(|s| s["HealthyCount"] == 2 && s["PendingReason"].is_null())
    })
    .await;
    assert_eq!(ids(&agent.containers(&d).await), ids(&before));
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_3_1_2_then_removing_the_file() {
    let d = docker().await;
    let mut agent = Agent::new("scale", &[]);
    agent.start();
    agent.write_service(webapp_service("scaled", 3, &[]));
    let three = agent.wait_running(&d, 3).await;

    agent.write_service(webapp_service("scaled", 1, &[]));
    let one = wait_for(T, "1 container left, the others removed", || async {
        let all = agent.containers(&d).await;
        (all.len() == 1 && all[0].running).then_some(all)
    })
    .await;
    // Scale-in keeps the longest-running task: the first one started.
    assert_eq!(one[0].id, three[0].id);

    agent.write_service(webapp_service("scaled", 2, &[]));
    wait_for(T, "2 running", || async {
        let all = agent.containers(&d).await;
        (all.len() == 2 && all.iter().all(|c| c.running)).then_some(())
    })
    .await;

    agent.remove_service("scaled");
    wait_for(T, "every container removed", || async {
        agent.containers(&d).await.is_empty().then_some(())
    })
    .await;
    let log = agent.log();
    assert!(log.contains("service removed"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_leaves_containers_running_and_exits_promptly() {
    let d = docker().await;
    let mut agent = Agent::new("sigterm", &[]);
    agent.start();
    agent.write_service(webapp_service("stays", 2, &[]));
    let before = agent.wait_running(&d, 2).await;
    let (took, status) = agent.signal_and_wait("TERM");
    eprintln!("figure: SIGTERM -> agent exit: {} ms", took.as_millis());
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(took < Duration::from_secs(3), "exited promptly: {took:?}");
    let after = agent.running(&d).await;
    assert_eq!(after.len(), 2);
    assert_eq!(before[0].id, after[0].id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_exits_78_listing_every_error_and_starts_nothing() {
    let agent = Agent::new(
        "badconfig",
        &[
            "ECS_CONTAINER_STOP_TIMEOUT=thirty",
            "DOCKHAND_PROXY_LISTN=0.0.0.0:80",
        ],
    );
    let data = agent.dir.join("data");
    let out = support::dockhand()
        .args(["agent", "--config"])
        .arg(&agent.config)
        .output()
        .expect("run dockhand");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let cfg = agent.config.display().to_string();
    assert!(stderr.contains(&format!(
        "{cfg}:11: ECS_CONTAINER_STOP_TIMEOUT: expected a duration such as 300ms, 30s, 5m or 3h, got \"thirty\""
    )), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{cfg}:12: DOCKHAND_PROXY_LISTN: unknown key (did you mean DOCKHAND_PROXY_LISTEN?)"
        )),
        "{stderr}"
    );
    assert!(
        !data.exists(),
        "no state written before the config is valid"
    );
    assert!(
        http_get(agent.api, "/v1/metadata").is_err(),
        "API never bound"
    );

    // `config check` says the same, with the same exit code.
    let check = support::dockhand()
        .args(["config", "check", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(78));
    assert_eq!(String::from_utf8_lossy(&check.stderr), stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_service_file_is_reported_and_skipped_and_loses_nothing() {
    let d = docker().await;
    let mut agent = Agent::new("badfile", &[]);
    agent.start();
    agent.write_service(webapp_service("good", 1, &[]));
    let mut broken = webapp_service("keeper", 2, &[]);
    agent.write_service(broken.clone());
    let before = agent.wait_running(&d, 3).await;

    // A new, bad service and a bad edit of a running one.
    let mut bad = webapp_service("bad", 1, &[]);
    bad["taskDefinition"]["containerDefinitions"][0]["portMappings"][0]["containerPort"] =
        json!(70000);
    agent.write_service(bad);
    broken["desiredCount"] = json!("two");
    agent.write_service(broken);

    let log = wait_for(T, "both errors in the log", || async {
        let log = agent.log();
        (log.contains("bad.json: taskDefinition.containerDefinitions[0].portMappings[0].containerPort: must be 1-65535")
            && log.contains("keeper.json: desiredCount: invalid type: string \"two\""))
        .then_some(log)
    })
    .await;
    assert!(log.contains("service file skipped"), "{log}");
    let s = wait_for(T, "keeper marked invalid", || async {
        agent
            .service("keeper")
            .filter(|s| s["ServiceFileInvalid"] == true)
    })
    .await;
    assert_eq!(s["RunningCount"], 2, "last good version keeps running: {s}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = agent.containers(&d).await;
    let ids = |v: &[support::Container]| v.iter().map(|c| c.id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(
        ids(&before),
        ids(&after),
        "nothing started, stopped or changed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_does_not_fit_stays_pending_with_its_reason() {
    let d = docker().await;
    let mut agent = Agent::new("toobig", &["ECS_RESERVED_MEMORY=100"]);
    agent.start();
    let mut svc = webapp_service("huge", 1, &[]);
    svc["taskDefinition"]["containerDefinitions"][0]["memory"] = json!(10_000_000);
    agent.write_service(svc);
    let s = wait_for(T, "a pending reason", || async {
        agent
            .service("huge")
            .filter(|s| s["PendingReason"].is_string())
    })
    .await;
    let reason = s["PendingReason"].as_str().unwrap();
    assert!(
        reason.starts_with("not enough memory: needs 10000000 MiB, ")
            && reason.ends_with(" MiB free"),
        "{reason}"
    );
    assert_eq!(s["RunningCount"], 0);
    assert!(agent.containers(&d).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_start_in_depends_on_order() {
    let d = docker().await;
    let mut agent = Agent::new("depends", &[]);
    agent.start();
    let mut svc = webapp_service("ordered", 1, &[]);
    let mut init = svc["taskDefinition"]["containerDefinitions"][0].clone();
    init["name"] = json!("init");
    init["essential"] = json!(false);
    init["portMappings"] = json!([]);
    init["environment"] =
        json!([{"name": "EXIT_AFTER_MS", "value": "700"}, {"name": "EXIT_CODE", "value": "0"}]);
    svc["taskDefinition"]["containerDefinitions"][0]["dependsOn"] =
        json!([{"containerName": "init", "condition": "SUCCESS"}]);
    svc["taskDefinition"]["containerDefinitions"]
        .as_array_mut()
        .unwrap()
        .push(init);
    agent.write_service(svc);

    let all = wait_for(T, "web running after init succeeded", || async {
        let all = agent.containers(&d).await;
        let web_up = all.iter().any(|c| {
            c.running && c.labels.get("dockhand.container").map(String::as_str) == Some("web")
        });
        (all.len() == 2 && web_up).then_some(all)
    })
    .await;
    let init = all
        .iter()
        .find(|c| c.labels["dockhand.container"] == "init")
        .unwrap();
    let web = all
        .iter()
        .find(|c| c.labels["dockhand.container"] == "web")
        .unwrap();
    assert_eq!(init.exit_code, Some(0));
    assert!(
        web.started_at > init.finished_at,
        "web started {} after init finished {}",
        web.started_at,
        init.finished_at
    );
    // A non-essential container exiting does not stop the task.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(agent.running(&d).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_task_definition_replaces_every_task() {
    let d = docker().await;
    let mut agent = Agent::new("revision", &[]);
    agent.start();
    agent.write_service(webapp_service("rolling", 2, &[("PROVIDER", "world")]));
    let old = agent.wait_running(&d, 2).await;

    // The article's update: PROVIDER from world to ECS.
    agent.write_service(webapp_service("rolling", 2, &[("PROVIDER", "ECS")]));
    let new = wait_for(
        T,
        "2 tasks of revision 2 answering Hello ECS!, old ones removed",
        || async {
            let all = agent.containers(&d).await;
            let ok = all.len() == 2 && all.iter().all(|c| {
                c.running
                    && c.labels["dockhand.revision"] == "2"
                    && matches!(http_get(c.ports[0], "/"), Ok((200, ref b)) if b == "Hello ECS!\n")
            });
            ok.then_some(all)
        },
    )
    .await;
    assert!(new.iter().all(|n| old.iter().all(|o| o.id != n.id)));
    let s = wait_for(T, "/v1/services at revision 2", || async {
        agent
            .service("rolling")
            .filter(|s| s["Revision"] == 2 && s["RunningCount"] == 2)
    })
    .await;
    assert!(
        s["Events"]
            .to_string()
            .contains("replaced by a new revision"),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_health_checks_reach_v1_tasks_and_gate_depends_on_healthy() {
    let d = docker().await;
    let mut agent = Agent::new("dockerhealth", &[]);
    agent.start();
    let mut svc = webapp_service("checked", 1, &[]);
    let web = svc["taskDefinition"]["containerDefinitions"][0].clone();
    // The app's own check: `webapp check` GETs its /health (no shell in the image).
    svc["taskDefinition"]["containerDefinitions"][0]["healthCheck"] = json!({
        "command": ["CMD", "/webapp", "check"], "interval": 5, "timeout": 2, "retries": 1, "startPeriod": 0
    });
    // A second container that may start only once the first is HEALTHY.
    let mut side = web.clone();
    side["name"] = json!("side");
    side["essential"] = json!(false);
    side["portMappings"] = json!([]);
    side["environment"] = json!([{"name": "PORT", "value": "5001"}]);
    side["dependsOn"] = json!([{"containerName": "web", "condition": "HEALTHY"}]);
    svc["taskDefinition"]["containerDefinitions"]
        .as_array_mut()
        .unwrap()
        .push(side);
    agent.write_service(svc);

    let health = |v: &serde_json::Value, name: &str| -> String {
        v["Tasks"][0]["Containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["Name"] == name))
            .map(|c| c["HealthStatus"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    wait_for(T, "web HEALTHY in /v1/tasks", || async {
        let v = agent.api_get("/v1/tasks")?;
        (health(&v, "web") == "HEALTHY").then_some(())
    })
    .await;
    let started = wait_for(T, "side started after web became healthy", || async {
        let all = agent.containers(&d).await;
        let side = all
            .iter()
            .find(|c| c.labels.get("dockhand.container").map(String::as_str) == Some("side"))?;
        side.running.then(|| all.clone())
    })
    .await;
    assert_eq!(started.len(), 2);

    // The app turns unhealthy: Docker's check fails, and /v1/tasks says so
    // with the check's output.
    let web_port = started
        .iter()
        .find_map(|c| c.ports.first().copied())
        .unwrap();
    assert_eq!(support::raw_post(web_port, "/admin/unhealthy").0, 200);
    let v = wait_for(T, "web UNHEALTHY in /v1/tasks", || async {
        let v = agent.api_get("/v1/tasks")?;
        (health(&v, "web") == "UNHEALTHY").then_some(v)
    })
    .await;
    let web_status = v["Tasks"][0]["Containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["Name"] == "web")
        .unwrap()
        .clone();
    assert!(
        web_status["HealthOutput"]
            .as_str()
            .unwrap_or("")
            .contains("did not answer 200"),
        "{web_status}"
    );
    assert_eq!(v["Tasks"][0]["Healthy"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_policy_restarts_in_place_except_ignored_exit_codes() {
    let d = docker().await;
    let mut agent = Agent::new("restartpolicy", &[]);
    agent.start();
    // Exits with 3 after 1.5 s; the policy restarts it in place.
    let mut svc = webapp_service(
        "inplace",
        1,
        &[("EXIT_AFTER_MS", "1500"), ("EXIT_CODE", "3")],
    );
    svc["taskDefinition"]["containerDefinitions"][0]["restartPolicy"] =
        json!({"enabled": true, "ignoredExitCodes": [0], "restartAttemptPeriod": 1});
    agent.write_service(svc);
    let first = wait_for(T, "the container running", || async {
        agent.running(&d).await.into_iter().next()
    })
    .await;
    let v = wait_for(T, "two in-place restarts reported", || async {
        let v = agent.api_get("/v1/tasks")?;
        (v["Tasks"][0]["Containers"][0]["RestartCount"].as_i64()? >= 2).then_some(v)
    })
    .await;
    let all = agent.containers(&d).await;
    assert_eq!(all.len(), 1, "the same container, not a new task: {all:?}");
    assert_eq!(all[0].id, first.id);
    assert_eq!(v["Tasks"].as_array().map(Vec::len), Some(1));
    let s = agent.service("inplace").unwrap();
    assert!(
        s["Events"].to_string().contains("restarted in place"),
        "{s}"
    );
    assert_eq!(
        s["TotalFailures"], 0,
        "in-place restarts are not task failures"
    );

    // An ignored exit code: no restart in place; the task stops and the
    // service replaces it.
    let mut svc = webapp_service(
        "ignored",
        1,
        &[("EXIT_AFTER_MS", "1500"), ("EXIT_CODE", "0")],
    );
    svc["taskDefinition"]["containerDefinitions"][0]["restartPolicy"] =
        json!({"enabled": true, "ignoredExitCodes": [0], "restartAttemptPeriod": 1});
    agent.write_service(svc);
    let s = wait_for(T, "the ignored exit counted as a task stop", || async {
        agent
            .service("ignored")
            .filter(|s| s["TotalFailures"].as_u64() >= Some(1))
    })
    .await;
    assert!(
        s["Events"]
            .to_string()
            .contains("not restarted in place: exit code 0 is in ignoredExitCodes"),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_task_containers_are_removed_after_the_cleanup_wait() {
    let d = docker().await;
    let mut agent = Agent::new("cleanup", &["ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION=3s"]);
    agent.start();
    agent.write_service(webapp_service(
        "shortlived",
        1,
        &[("EXIT_AFTER_MS", "500"), ("EXIT_CODE", "2")],
    ));
    let dead = wait_for(T, "a failed task's container", || async {
        agent
            .containers(&d)
            .await
            .into_iter()
            .find(|c| c.exit_code == Some(2) && !c.running)
    })
    .await;
    // Kept for inspection first...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        agent.containers(&d).await.iter().any(|c| c.id == dead.id),
        "kept during the wait"
    );
    // ...then removed.
    wait_for(T, "the failed container removed", || async {
        (!agent.containers(&d).await.iter().any(|c| c.id == dead.id)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unused_images_are_cleaned_up_and_untracked_ones_kept() {
    let d = docker().await;
    let pid = std::process::id();
    let old_image = format!("dockhand-test/webapp:cleanup-{pid}");
    let untracked = format!("dockhand-test/webapp:untracked-{pid}");
    let docker_cli = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(docker_cli(&["tag", &support::image(), &old_image]));
    assert!(docker_cli(&["tag", &support::image(), &untracked]));

    let mut agent = Agent::new(
        "imagecleanup",
        &[
            "ECS_IMAGE_CLEANUP_INTERVAL=1s",
            "ECS_IMAGE_MINIMUM_CLEANUP_AGE=1s",
        ],
    );
    agent.start();
    let mut v1 = webapp_service("imgs", 1, &[]);
    v1["taskDefinition"]["containerDefinitions"][0]["image"] = json!(old_image);
    agent.write_service(v1);
    wait_for(T, "revision 1 running", || async {
        (agent.running(&d).await.len() == 1).then_some(())
    })
    .await;
    // In use: kept through a few cycles.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        docker_cli(&["image", "inspect", &old_image]),
        "an image in use is kept"
    );

    // Revision 2 uses another image; the old one becomes unused.
    agent.write_service(webapp_service("imgs", 1, &[]));
    wait_for(T, "the unused image removed", || async {
        (!docker_cli(&["image", "inspect", &old_image])).then_some(())
    })
    .await;
    assert!(
        agent.log().contains("removed unused image"),
        "{}",
        agent.log()
    );
    assert!(
        docker_cli(&["image", "inspect", &support::image()]),
        "the image in use stays"
    );
    assert!(
        docker_cli(&["image", "inspect", &untracked]),
        "untracked images are not touched"
    );
    docker_cli(&["rmi", &untracked]);
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_mode_without_a_key_is_a_config_error() {
    // ECS_BACKEND_HOST alone: the instance key is missing. Nothing is
    // contacted (control.invalid never resolves), the agent exits 78.
    let agent = Agent::new(
        "backendhost",
        &["ECS_BACKEND_HOST=https://control.invalid:8443"],
    );
    let out = support::dockhand()
        .args(["agent", "--config"])
        .arg(&agent.config)
        .output()
        .expect("run dockhand");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(
            "ECS_BACKEND_HOST: managed mode needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY too"
        ),
        "{stderr}"
    );
}
