//! `dockhand status` and `dockhand deploy` against a running agent.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{docker, routed_service, wait_for, webapp_service, Agent};

const T: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread")]
async fn status_names_the_reason_for_a_pending_task() {
    let mut agent = Agent::new("status", &[]);
    agent.start();
    agent.write_service(webapp_service("fine", 1, &[]));
    let mut huge = webapp_service("huge", 1, &[]);
    huge["taskDefinition"]["containerDefinitions"][0]["memory"] = json!(10_000_000);
    agent.write_service(huge);
    wait_for(T, "both services known to the agent", || async {
        agent
            .service("huge")
            .filter(|s| s["PendingReason"].is_string())?;
        agent.service("fine").filter(|s| s["RunningCount"] == 1)
    })
    .await;
    let out = agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("dockhand status:\n{text}");
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.starts_with("SERVICE   REV  DESIRED  RUNNING  HEALTHY  STATE\n"),
        "{text}"
    );
    assert!(
        text.contains("fine        1        1        1        1  ok"),
        "{text}"
    );
    assert!(
        text.contains("huge        1        1        0        0  attention"),
        "{text}"
    );
    assert!(
        text.contains("  huge: not enough memory: needs 10000000 MiB, "),
        "{text}"
    );

    let out = agent.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(v["Services"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["Tasks"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_follows_a_good_rollout_and_reports_a_failed_one() {
    let d = docker().await;
    let mut agent = Agent::new("deploy", &[]);
    agent.start();
    let file = agent.dir.join("web.json");
    let write =
        |v: serde_json::Value| std::fs::write(&file, agent.labelled(v).to_string()).unwrap();

    // A good first revision: exit 0 once it runs and passes its checks.
    write(routed_service("web", 2, &[], 2));
    let out = agent.cli(&["deploy", file.to_str().unwrap(), "--timeout", "60s"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("web is running revision 1 on every task"),
        "{err}"
    );
    assert_eq!(agent.running(&d).await.len(), 2);
    assert!(agent.services.join("web.json").exists());

    // A revision whose tasks crash at start: the circuit breaker's reason.
    write(routed_service("web", 2, &[("EXIT_AFTER_MS", "200")], 2));
    let out = agent.cli(&["deploy", file.to_str().unwrap(), "--timeout", "60s"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("dockhand deploy: rollout failed: deployment of revision 2 failed")
            && err.contains("exited with code 1"),
        "{err}"
    );

    // An invalid file: exit 65 with the path, and nothing installed.
    let before = std::fs::read_to_string(agent.services.join("web.json")).unwrap();
    let mut bad = routed_service("web", 2, &[], 2);
    bad["taskDefinition"]["containerDefinitions"][0]["portMappings"][0]["containerPort"] = json!(0);
    write(bad);
    let out = agent.cli(&["deploy", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains(
            "taskDefinition.containerDefinitions[0].portMappings[0].containerPort: must be 1-65535"
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(agent.services.join("web.json")).unwrap(),
        before
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_of_a_first_revision_that_crashes_times_out_with_the_reason() {
    let mut agent = Agent::new("deploy-first", &[]);
    agent.start();
    let file = agent.dir.join("crashy.json");
    std::fs::write(
        &file,
        agent
            .labelled(webapp_service("crashy", 1, &[("EXIT_AFTER_MS", "100")]))
            .to_string(),
    )
    .unwrap();
    let out = agent.cli(&["deploy", file.to_str().unwrap(), "--timeout", "6s"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("rollout did not finish in time"), "{err}");
    assert!(
        err.contains("restart backoff") || err.contains("exited with code 1"),
        "{err}"
    );
}
