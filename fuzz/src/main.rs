//! `dockhand-fuzz [TARGET|all] [--seconds N] [--seed S]`: runs the fuzz
//! targets for a bounded time each and prints cases, inputs accepted,
//! panics and failures. Exits 1 if any target panicked or failed.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let mut target = "all".to_string();
    let mut seconds = 10u64;
    let mut seed = 1u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(seconds),
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).unwrap_or(seed),
            "-h" | "--help" => {
                println!(
                    "dockhand-fuzz [{}|all] [--seconds N] [--seed S]",
                    dockhand_fuzz::TARGETS.join("|")
                );
                return ExitCode::SUCCESS;
            }
            t => target = t.to_string(),
        }
    }
    let targets: Vec<&str> = if target == "all" {
        dockhand_fuzz::TARGETS.to_vec()
    } else {
        vec![target.as_str()]
    };
    println!(
        "{:<14} {:>10} {:>10} {:>8} {:>9} {:>9}",
        "target", "cases", "accepted", "panics", "failures", "cases/s"
    );
    let mut bad = false;
    for t in targets {
        let Some(o) = dockhand_fuzz::run(t, Duration::from_secs(seconds), seed) else {
            eprintln!(
                "unknown target {t:?}; one of {}",
                dockhand_fuzz::TARGETS.join(", ")
            );
            return ExitCode::from(2);
        };
        println!(
            "{:<14} {:>10} {:>10} {:>8} {:>9} {:>9}",
            o.target,
            o.cases,
            o.accepted,
            o.panics,
            o.failures,
            o.cases / seconds.max(1)
        );
        for f in &o.first_failures {
            println!("  {f}");
        }
        bad |= o.panics > 0 || o.failures > 0;
    }
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
