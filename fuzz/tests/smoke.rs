//! A short run of every fuzz target, in the test suite (CI): a few seconds
//! each, no panic and no failure. `bench/fuzz.sh` runs them for longer.

use std::time::Duration;

#[test]
fn every_target_survives_a_short_run() {
    for target in dockhand_fuzz::TARGETS {
        let secs = if target.starts_with('p') || *target == "api" {
            3
        } else {
            2
        };
        let o = dockhand_fuzz::run(target, Duration::from_secs(secs), 42).expect("a known target");
        eprintln!(
            "fuzz smoke: {target}: {} cases, {} accepted, {} panics, {} failures",
            o.cases, o.accepted, o.panics, o.failures
        );
        assert!(o.cases > 100, "{target} ran only {} cases", o.cases);
        assert_eq!(o.panics, 0, "{target}: {:#?}", o.first_failures);
        assert_eq!(o.failures, 0, "{target}: {:#?}", o.first_failures);
    }
}
