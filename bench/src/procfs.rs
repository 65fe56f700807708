//! Figures read from `/proc`: a gateway process's resident memory and CPU time, the kernel's
//! socket and slab memory, and what machine this is.

use std::fs;

/// Raises the soft open-files limit to the hard one (20,000 here).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for reading and writing.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Resident set size of `pid` in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kb_field(&s, "VmRSS:").map(|kb| kb * 1024)
}

/// User plus system CPU time of `pid` (all its threads), in microseconds.
pub fn cpu_us(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&s).map(|t| t * 1_000_000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// utime + stime from a `/proc/PID/stat` line (fields 14 and 15; the command name may hold
/// spaces, so count from the closing parenthesis).
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) is index 11.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn kb_field(s: &str, name: &str) -> Option<u64> {
    s.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
}

/// Kernel memory that sockets hold: `Slab` from `/proc/meminfo` plus TCP buffer pages from
/// `/proc/net/sockstat`, in bytes. Deltas of this around opening N loopback connections cover
/// both ends of each connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelMem {
    pub slab_bytes: u64,
    pub tcp_mem_bytes: u64,
}

impl KernelMem {
    pub fn read() -> KernelMem {
        let slab = fs::read_to_string("/proc/meminfo").ok().and_then(|s| kb_field(&s, "Slab:")).unwrap_or(0);
        let tcp_pages =
            fs::read_to_string("/proc/net/sockstat").ok().and_then(|s| parse_sockstat_mem(&s)).unwrap_or(0);
        KernelMem { slab_bytes: slab * 1024, tcp_mem_bytes: tcp_pages * page_size() }
    }

    pub fn total(&self) -> u64 {
        self.slab_bytes + self.tcp_mem_bytes
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// The `mem` figure (pages) of the `TCP:` line of `/proc/net/sockstat`.
pub fn parse_sockstat_mem(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// What this machine is, for the report.
pub fn machine() -> serde_json::Value {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo").ok().and_then(|s| kb_field(&s, "MemTotal:")).unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is writable.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let io_uring_disabled =
        fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok().map(|s| s.trim().to_string());
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": cpu,
        "mem_total_bytes": mem * 1024,
        "kernel": kernel,
        "fd_limit": lim.rlim_max,
        "io_uring_disabled": io_uring_disabled,
        "somaxconn": fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap_or_default().trim(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_lines() {
        let stat = "1234 (herald serve) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        let sockstat = "sockets: used 10\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 42\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_sockstat_mem(sockstat), Some(42));
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(cpu_us(std::process::id()).is_some());
        assert!(KernelMem::read().slab_bytes > 0);
    }
}
