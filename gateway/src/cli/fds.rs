//! The process's file descriptor budget. Terminals, the admin API, the store, the link and the
//! metrics endpoint all take descriptors from one limit (`RLIMIT_NOFILE`); when terminals take
//! them all, accepts fail everywhere and the admin API stops answering. So at start the soft
//! limit is raised to the hard one (systemd and most shells start programs at a soft 1,024), and
//! the terminal connection cap (`gateway.max_connections`) is set below it, keeping
//! [`reserve`] descriptors for everything else.

/// The soft and hard `RLIMIT_NOFILE` after [`raise_soft_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoFile {
    pub(crate) before: u64,
    pub(crate) soft: u64,
    pub(crate) hard: u64,
}

/// Raises the soft open-file limit to the hard one (to `fs.nr_open` when the hard limit is
/// unlimited, the most the kernel grants). A refusal keeps the current limit.
pub(crate) fn raise_soft_limit() -> std::io::Result<NoFile> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    let mut target = lim.rlim_max;
    if target == libc::RLIM_INFINITY {
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if target > before {
        let want = libc::rlimit { rlim_cur: target, rlim_max: lim.rlim_max };
        // SAFETY: `want` is a valid rlimit; raising the soft limit up to the hard one needs
        // no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = target;
        }
    }
    Ok(NoFile { before, soft: lim.rlim_cur, hard: lim.rlim_max })
}

/// Descriptors that are not terminals, with room to spare: the runtimes' epoll, io_uring and
/// event descriptors (a few per core), the store file, listeners, the link (one per gateway
/// node on a control plane), the signal pipe (64 in all; `herald serve` with 2 cores uses 30
/// when idle), plus every admin API connection it may serve at once and the metrics endpoint's
/// concurrent scrapes.
pub(crate) fn reserve(cores: usize, admin_connections: usize) -> u64 {
    (64 + 4 * cores + admin_connections + herald_gateway::MAX_METRICS_CONNECTIONS) as u64
}

/// The terminal connection cap: the configured one if it fits under the descriptor limit minus
/// the reserve, else what fits (`Err` with that figure when the configured one is larger, so the
/// caller can warn). `None` when the limit leaves fewer than [`MIN_TERMINALS`] for terminals.
pub(crate) fn terminal_cap(
    soft: u64,
    reserve: u64,
    configured: Option<usize>,
) -> Option<Result<usize, usize>> {
    let room = soft.saturating_sub(reserve);
    if room < MIN_TERMINALS {
        return None;
    }
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    Some(match configured {
        Some(c) if c <= room => Ok(c),
        Some(_) => Err(room),
        None => Ok(room),
    })
}

/// Fewest terminal connections a gateway is worth starting for.
pub(crate) const MIN_TERMINALS: u64 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_the_reserve_free_and_never_exceeds_the_limit() {
        let r = reserve(2, 64);
        assert_eq!(terminal_cap(1024, r, None), Some(Ok(1024 - r as usize)));
        assert_eq!(terminal_cap(1024, r, Some(100)), Some(Ok(100)));
        assert_eq!(terminal_cap(1024, r, Some(5000)), Some(Err(1024 - r as usize)));
        assert_eq!(terminal_cap(r + MIN_TERMINALS - 1, r, None), None);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let l = raise_soft_limit().unwrap();
        assert!(l.soft >= l.before);
        if l.hard != libc::RLIM_INFINITY {
            assert_eq!(l.soft, l.hard);
        }
    }
}
