//! Host port and resource accounting.
//!
//! Dynamic host ports (`hostPort: 0`) come from `ECS_DYNAMIC_HOST_PORT_RANGE`,
//! never from `ECS_RESERVED_PORTS` or a port a task of this agent holds, and
//! each candidate is bound once before it is handed out, so a port some other
//! process listens on is skipped. The cursor moves on after each grant rather
//! than reusing the lowest free port, so a port just released by a stopping
//! task is not handed to the next task while clients may still reach it.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};

pub struct PortAllocator {
    range: (u16, u16),
    reserved: BTreeSet<u16>,
    bind_address: IpAddr,
    cursor: u16,
}

impl PortAllocator {
    pub fn new(range: (u16, u16), reserved: &[u16], bind_address: IpAddr) -> PortAllocator {
        // Start somewhere in the range that depends on the process, so two
        // agents started at once (tests) do not race for the same ports.
        let span = u32::from(range.1 - range.0) + 1;
        let offset = (std::process::id() % span) as u16;
        PortAllocator {
            range,
            reserved: reserved.iter().copied().collect(),
            bind_address,
            cursor: range.0 + offset,
        }
    }

    /// A free port for `protocol` (`tcp` or `udp`), not in `in_use`.
    pub fn allocate(&mut self, protocol: &str, in_use: &BTreeSet<u16>) -> Option<u16> {
        let (lo, hi) = self.range;
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span {
            let port = self.cursor;
            self.cursor = if self.cursor >= hi {
                lo
            } else {
                self.cursor + 1
            };
            if self.reserved.contains(&port) || in_use.contains(&port) {
                continue;
            }
            if self.bindable(port, protocol) {
                return Some(port);
            }
        }
        None
    }

    fn bindable(&self, port: u16, protocol: &str) -> bool {
        let addr = SocketAddr::new(self.bind_address, port);
        if protocol == "udp" {
            UdpSocket::bind(addr).is_ok()
        } else {
            TcpListener::bind(addr).is_ok()
        }
    }
}

/// Why a task cannot be placed on this host, in numbers. Free amounts are
/// wide integers, so no reservation (from a label, untrusted) can wrap them.
pub fn check_fit(
    need_memory: u64,
    free_memory: i128,
    need_cpu: u64,
    free_cpu: i128,
    static_ports: &[(u16, &str)],
    in_use: &BTreeSet<u16>,
    reserved: &[u16],
) -> Result<(), String> {
    if i128::from(need_memory) > free_memory {
        return Err(format!(
            "not enough memory: needs {need_memory} MiB, {} MiB free",
            free_memory.max(0)
        ));
    }
    if i128::from(need_cpu) > free_cpu {
        return Err(format!(
            "not enough CPU: needs {need_cpu} CPU units, {} free",
            free_cpu.max(0)
        ));
    }
    for (port, proto) in static_ports {
        if reserved.contains(port) {
            return Err(format!("host port {port}/{proto} is in ECS_RESERVED_PORTS"));
        }
        if in_use.contains(port) {
            return Err(format!(
                "host port {port}/{proto} is already used by another task"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_reserved_in_use_and_bound_ports() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap().port();
        let lo = busy.saturating_sub(2).max(1);
        let mut a = PortAllocator::new((lo, busy), &[lo], IpAddr::from([127, 0, 0, 1]));
        a.cursor = lo;
        let in_use = BTreeSet::from([lo + 1]);
        let got = a.allocate("tcp", &in_use);
        // lo is reserved, lo+1 in use, busy is bound: only lo+... remain.
        if let Some(p) = got {
            assert!(p != lo && p != lo + 1 && p != busy, "got {p}");
        }
        let mut full = PortAllocator::new((busy, busy), &[], IpAddr::from([127, 0, 0, 1]));
        assert_eq!(full.allocate("tcp", &BTreeSet::new()), None);
    }

    #[test]
    fn fit_reasons_name_the_resource_and_numbers() {
        let none = BTreeSet::new();
        assert_eq!(
            check_fit(512, 200, 0, 1024, &[], &none, &[]),
            Err("not enough memory: needs 512 MiB, 200 MiB free".into())
        );
        assert_eq!(
            check_fit(1, 200, 2048, 1024, &[], &none, &[]),
            Err("not enough CPU: needs 2048 CPU units, 1024 free".into())
        );
        let used = BTreeSet::from([8080]);
        assert!(check_fit(1, 200, 0, 1024, &[(8080, "tcp")], &used, &[])
            .unwrap_err()
            .contains("8080/tcp is already used"));
        assert!(check_fit(1, 200, 0, 1024, &[(80, "tcp")], &none, &[]).is_ok());
        // Huge needs do not wrap into small ones.
        assert!(check_fit(u64::MAX, 200, 0, 1024, &[], &none, &[]).is_err());
        assert!(check_fit(1, 200, u64::MAX, 1024, &[], &none, &[]).is_err());
    }
}
