//! Process limits that decide whether a busy host stays up: open files.
//!
//! Every proxied request holds two descriptors (the client's connection and
//! the task's), health checks open one each, and the Docker client, the
//! local API and the state files need theirs. systemd's default soft limit
//! (1024) would run out at about 500 clients, after which accepts fail,
//! health checks fail with EMFILE and healthy tasks are marked unhealthy. So
//! the agent raises its soft limit to the hard one at start, and caps the
//! proxy's connections below what the limit allows, keeping
//! [`RESERVED_FDS`] for everything else.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept for health checks, Docker, the local API (at most 64
/// clients) and files, whatever the proxy's clients do.
pub const RESERVED_FDS: u64 = 512;

/// Raises the soft open-files limit to the hard limit. Returns the soft
/// limit in force afterwards.
pub fn raise_open_files() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the open-files limit");
                hard
            }
            Err(e) => {
                tracing::warn!(cause = %e, soft, hard, "cannot raise the open-files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot read the open-files limit");
            1024
        }
    }
}

/// The proxy connection cap that fits `open_files` descriptors: two per
/// connection, after the reserve.
pub fn fit_connections(configured: usize, open_files: u64) -> usize {
    let budget = open_files.saturating_sub(RESERVED_FDS) / 2;
    let budget = usize::try_from(budget).unwrap_or(usize::MAX).max(1);
    configured.min(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve() {
        assert_eq!(fit_connections(10_000, 1024), 256);
        assert_eq!(fit_connections(10_000, 1_048_576), 10_000);
        assert_eq!(fit_connections(10_000, 100), 1);
        assert_eq!(fit_connections(50, 1024), 50);
    }
}
