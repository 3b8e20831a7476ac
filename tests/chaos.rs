//! Chaos against the real engine: the agent killed at random moments of
//! rollouts, its data directory full, its state file corrupted, the wall
//! clock stepped. After each: the desired count is exact, no task is
//! duplicated or orphaned, and no healthy task was restarted.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;
use support::{docker, http_get, routed_service, wait_for, wait_until, Agent, Container};

const T: Duration = Duration::from_secs(60);

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Each container's start time, by id: a container whose start time
/// changes was restarted.
fn starts(cs: &[Container]) -> BTreeMap<String, String> {
    cs.iter()
        .filter(|c| c.running)
        .map(|c| (c.id.clone(), c.started_at.clone()))
        .collect()
}

/// No two containers of one task (every task here has one container).
fn assert_no_duplicate_task(cs: &[Container]) {
    let mut seen = BTreeSet::new();
    for c in cs {
        let task = c.labels.get("dockhand.task").cloned().unwrap_or_default();
        assert!(seen.insert(task.clone()), "task {task} has two containers");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_kills_during_rollouts_lose_or_duplicate_nothing() {
    let d = docker().await;
    let mut agent = Agent::new("chaos-kill", &[]);
    agent.start();
    let service = |v: u32| routed_service("roll", 4, &[("V", &v.to_string())], 1);
    agent.write_service(service(0));
    wait_for(T, "4 healthy", || async {
        agent.service("roll").filter(|s| s["HealthyCount"] == 4)
    })
    .await;
    let mut rng = Lcg(0x5eed);
    let mut kills = 0;
    for i in 1..=20u32 {
        agent.write_service(service(i));
        tokio::time::sleep(Duration::from_millis(rng.next(2500))).await;
        let before = agent.containers(&d).await;
        agent.signal_and_wait("KILL");
        kills += 1;
        let at_kill = agent.containers(&d).await;
        assert_no_duplicate_task(&at_kill);
        let live = at_kill.iter().filter(|c| c.running).count();
        assert!(live <= 8, "{live} tasks run, maximumPercent 200 allows 8");
        // Nothing restarted what was running (the kill itself stops none).
        for (id, started) in starts(&before) {
            if let Some(now) = starts(&at_kill).get(&id) {
                assert_eq!(now, &started, "container {id} was restarted");
            }
        }
        agent.start();
        // Let the new agent adopt and move on for a random moment.
        tokio::time::sleep(Duration::from_millis(rng.next(1500))).await;
        let after = agent.containers(&d).await;
        for (id, started) in starts(&at_kill) {
            if let Some(now) = starts(&after).get(&id) {
                assert_eq!(now, &started, "the new agent restarted container {id}");
            }
        }
    }
    // The last revision, exactly 4 tasks, every one healthy, nothing else.
    // A timeout shows what was there instead.
    let last = wait_until(
        Duration::from_secs(120),
        "4 healthy tasks of the last revision",
        || async {
            let s = agent.service("roll");
            let cs = agent.containers(&d).await;
            let ok = s
                .as_ref()
                .is_some_and(|s| s["HealthyCount"] == 4 && s["RunningCount"] == 4)
                && cs.len() == 4
                && cs.iter().all(|c| {
                    c.running && c.labels.get("dockhand.revision") == Some(&"21".to_string())
                });
            if ok {
                return Ok(cs);
            }
            let containers: Vec<String> = cs
                .iter()
                .map(|c| {
                    format!(
                        "  {} {} {} {:?}",
                        c.labels.get("dockhand.task").map_or("?", String::as_str),
                        c.labels
                            .get("dockhand.revision")
                            .map_or("?", String::as_str),
                        c.running,
                        c.exit_code
                    )
                })
                .collect();
            Err(format!(
                "service: {}\ncontainers (task, revision, running, exit code):\n{}",
                s.map_or("none".into(), |s| s.to_string()),
                containers.join("\n")
            ))
        },
    )
    .await;
    assert_no_duplicate_task(&last);
    // No orphan: every container is a task the agent knows, RUNNING.
    let tasks = agent.api_get("/v1/tasks").expect("tasks");
    let known: BTreeSet<String> = tasks["Tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["DesiredStatus"] == "RUNNING")
        .flat_map(|t| t["Containers"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["DockerId"].as_str().map(str::to_string))
        .collect();
    let running: BTreeSet<String> = last.iter().map(|c| c.id.clone()).collect();
    assert_eq!(known, running);
    let s = agent.service("roll").unwrap();
    assert_eq!(s["TotalFailures"], 0, "no task failed: {s}");
    eprintln!(
        "figure: {kills} agent kills during rollouts; tasks lost 0, duplicated 0, restarted 0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_state_file_is_rebuilt_and_the_tasks_adopted() {
    let d = docker().await;
    let mut agent = Agent::new("chaos-corrupt", &[]);
    agent.start();
    agent.write_service(routed_service("steady", 2, &[], 1));
    wait_for(T, "2 healthy", || async {
        agent.service("steady").filter(|s| s["HealthyCount"] == 2)
    })
    .await;
    let before = starts(&agent.containers(&d).await);
    agent.signal_and_wait("KILL");
    let state = agent.dir.join("data/state.json");
    std::fs::write(&state, b"{\"instance_id\": \"trunc").expect("corrupt the state");
    agent.start();
    wait_for(T, "2 healthy again", || async {
        agent.service("steady").filter(|s| s["HealthyCount"] == 2)
    })
    .await;
    assert_eq!(
        starts(&agent.containers(&d).await),
        before,
        "adopted, none restarted"
    );
    let meta = agent.api_get("/v1/metadata").unwrap();
    let warnings = meta["Warnings"].to_string();
    assert!(warnings.contains("was not valid agent state"), "{meta}");
    let status = agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("warning:") && text.contains("rebuilt"),
        "{text}"
    );
}

/// A tmpfs of `kib` KiB mounted on `dir`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);
impl Tmpfs {
    fn mount(dir: &std::path::Path, kib: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount a tmpfs (root) on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_data_directory_is_reported_and_the_host_keeps_serving() {
    let d = docker().await;
    let mut agent = Agent::new("chaos-full", &[]);
    let _fs = Tmpfs::mount(&agent.dir.join("data"), 256);
    agent.start();
    agent.write_service(routed_service("full", 1, &[], 1));
    wait_for(T, "1 healthy", || async {
        agent.service("full").filter(|s| s["HealthyCount"] == 1)
    })
    .await;
    // Fill the file system.
    let filler = agent.dir.join("data/filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    // A change that must be saved: one more task.
    agent.write_service(routed_service("full", 2, &[], 1));
    wait_for(T, "2 healthy, and the save failure shown", || async {
        let v = agent.api_get("/v1/services")?;
        let s = v["Services"]
            .as_array()?
            .iter()
            .find(|s| s["ServiceName"] == "full")?
            .clone();
        (s["HealthyCount"] == 2 && v["Warnings"].to_string().contains("cannot be saved"))
            .then_some(())
    })
    .await;
    assert_eq!(
        http_get(agent.proxy, "/").unwrap().0,
        200,
        "the proxy serves"
    );
    assert!(agent.log().contains("No space left on device"));
    // Space comes back: the state is saved, the warning goes.
    std::fs::remove_file(&filler).unwrap();
    wait_for(T, "the state saved again", || async {
        agent
            .api_get("/v1/services")
            .filter(|v| v["Warnings"].as_array().is_some_and(|w| w.is_empty()))
    })
    .await;
    assert!(agent.log().contains("agent state saved again"));
    assert_eq!(agent.running(&d).await.len(), 2);
}

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test(flavor = "multi_thread")]
async fn the_wall_clock_stepped_an_hour_either_way_changes_nothing() {
    let d = docker().await;
    let mut agent = Agent::new("chaos-clock", &[]);
    // The agent's wall clock (only) follows the offset in this file.
    let offset = agent.dir.join("faketime");
    std::fs::write(&offset, "+0").unwrap();
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "libfaketime (Debian package faketime) is installed by scripts/test.sh"
    );
    let offset_path = offset.display().to_string();
    agent.start_with_env(&[
        ("LD_PRELOAD", FAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", &offset_path),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    agent.write_service(routed_service("clock", 2, &[], 1));
    wait_for(T, "2 healthy", || async {
        agent.service("clock").filter(|s| s["HealthyCount"] == 2)
    })
    .await;
    let before = starts(&agent.containers(&d).await);

    std::fs::write(&offset, "+1h").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        starts(&agent.containers(&d).await),
        before,
        "nothing restarted after +1h"
    );
    assert_eq!(agent.service("clock").unwrap()["HealthyCount"], 2);

    // A crash: replaced at once; the agent's wall clock is an hour ahead.
    let kill_one = || async {
        let victim = agent.running(&d).await[0].id.clone();
        Command::new("docker")
            .args(["kill", &victim])
            .status()
            .unwrap();
        victim
    };
    let replaced = |victim: String| {
        let agent = &agent;
        let d = &d;
        async move {
            wait_for(Duration::from_secs(20), "a replacement", || async {
                let r = agent.running(d).await;
                (r.len() == 2 && r.iter().all(|c| c.id != victim)).then_some(())
            })
            .await
        }
    };
    let victim = kill_one().await;
    replaced(victim).await;
    let events = agent.service("clock").unwrap()["Events"].clone();
    let newest = events[0]["At"].as_str().unwrap().to_string();
    let at = humantime::parse_rfc3339_weak(&newest).unwrap();
    let ahead = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        ahead > Duration::from_secs(3000),
        "the agent's clock is an hour ahead: {newest}"
    );

    // Back an hour: a crash now counts toward backoff (to the agent, the
    // task ran no time at all).
    std::fs::write(&offset, "-1h").unwrap();
    let victim = kill_one().await;
    replaced(victim).await;
    // The next crash waits 2 s of backoff, and the clock steps back two
    // more hours during that wait. The replacement still comes after about
    // a second, not after two hours.
    let failures = agent.service("clock").unwrap()["ConsecutiveFailures"]
        .as_u64()
        .unwrap();
    let victim = kill_one().await;
    let started = std::time::Instant::now();
    // Inside the backoff wait: once the crash is counted (its deadline set),
    // the clock steps.
    wait_for(Duration::from_secs(10), "the crash counted", || async {
        agent
            .service("clock")
            .filter(|s| s["ConsecutiveFailures"].as_u64() > Some(failures))
    })
    .await;
    std::fs::write(&offset, "-3h").unwrap();
    replaced(victim).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "backoff followed the wall clock back"
    );
    wait_for(T, "2 healthy", || async {
        agent.service("clock").filter(|s| s["HealthyCount"] == 2)
    })
    .await;
    assert_eq!(
        agent
            .containers(&d)
            .await
            .iter()
            .filter(|c| c.running)
            .count(),
        2
    );
}
