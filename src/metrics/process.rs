//! The `process_*` family with the names, types and help texts of
//! Prometheus' client libraries (client_golang's process collector), so
//! the dashboards and alerts written for any exporter work on sipedge as
//! they are (plus `process_threads`, as the `prometheus` crate's own
//! collector has it). Read at scrape time from `/proc/self/stat` (CPU,
//! memory, threads), `/proc/self/fd` (open descriptors) and
//! RLIMIT_NOFILE; the start time once, from `/proc/self/stat` and the
//! boot time in `/proc/stat`. No `unsafe` and no new crate: sysconf and
//! getrlimit through nix's safe wrappers. Off Linux, or with `/proc`
//! unreadable, the families that could not be read are left out of that
//! scrape; nothing fails.

use prometheus::core::{Collector, Desc};
use prometheus::{proto, Counter, Gauge, IntGauge, Opts};

use super::{MetricsError, PROCESS_CPU_SECONDS_TOTAL, PROCESS_MAX_FDS, PROCESS_OPEN_FDS};
use super::{
    PROCESS_RESIDENT_MEMORY_BYTES, PROCESS_START_TIME_SECONDS, PROCESS_THREADS,
    PROCESS_VIRTUAL_MEMORY_BYTES,
};

/// What `/proc/self/stat` says about the process (proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    /// User and system time, in clock ticks (fields 14 and 15).
    pub cpu_ticks: u64,
    /// Field 20.
    pub threads: u64,
    /// Since boot, in clock ticks (field 22).
    pub start_ticks: u64,
    /// Virtual memory size in bytes (field 23).
    pub vsize: u64,
    /// Resident set size in pages (field 24).
    pub rss_pages: u64,
}

impl Stat {
    /// Parses the one line of `/proc/self/stat`. The command name (field
    /// 2) is in parentheses and may itself hold spaces and `)`: the fields
    /// after it are counted from its last `)`.
    pub(super) fn parse(line: &str) -> Option<Stat> {
        let rest = &line[line.rfind(')')? + 1..];
        // rest's first field is field 3 (state).
        let field =
            |n: usize| -> Option<u64> { rest.split_ascii_whitespace().nth(n - 3)?.parse().ok() };
        Some(Stat {
            cpu_ticks: field(14)?.checked_add(field(15)?)?,
            threads: field(20)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

/// The boot time in seconds since the epoch: the `btime` line of
/// `/proc/stat`.
pub(super) fn parse_btime(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Clock ticks per second and the page size, from sysconf(3) through
/// nix's safe wrapper. The fallbacks are Linux's own constants for
/// userspace: USER_HZ is 100 on every architecture (the kernel scales
/// what it reports in `/proc` to it), and 4096 is the page size of x86
/// and of most arm64 kernels.
fn sysconf_or(var: nix::unistd::SysconfVar, fallback: u64) -> u64 {
    match nix::unistd::sysconf(var) {
        Ok(Some(v)) => u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(fallback),
        _ => fallback,
    }
}

/// The collector registered in each [`super::Metrics`]' registry.
#[derive(Debug)]
pub(super) struct ProcessCollector {
    cpu: Counter,
    open_fds: IntGauge,
    max_fds: IntGauge,
    vsize: IntGauge,
    rss: IntGauge,
    start_time: Gauge,
    threads: IntGauge,
    descs: Vec<Desc>,
    ticks: f64,
    page_size: u64,
    /// Read once: neither the boot time nor our start time moves.
    started: bool,
}

impl ProcessCollector {
    pub(super) fn new() -> Result<ProcessCollector, MetricsError> {
        let define = |metric: &'static str| move |source| MetricsError::Define { metric, source };
        let int = |name: &'static str, help: &str| {
            IntGauge::with_opts(Opts::new(name, help)).map_err(define(name))
        };
        let cpu = Counter::with_opts(Opts::new(
            PROCESS_CPU_SECONDS_TOTAL,
            "Total user and system CPU time spent in seconds.",
        ))
        .map_err(define(PROCESS_CPU_SECONDS_TOTAL))?;
        let start_time = Gauge::with_opts(Opts::new(
            PROCESS_START_TIME_SECONDS,
            "Start time of the process since unix epoch in seconds.",
        ))
        .map_err(define(PROCESS_START_TIME_SECONDS))?;
        let mut c = ProcessCollector {
            cpu,
            open_fds: int(PROCESS_OPEN_FDS, "Number of open file descriptors.")?,
            max_fds: int(PROCESS_MAX_FDS, "Maximum number of open file descriptors.")?,
            vsize: int(
                PROCESS_VIRTUAL_MEMORY_BYTES,
                "Virtual memory size in bytes.",
            )?,
            rss: int(
                PROCESS_RESIDENT_MEMORY_BYTES,
                "Resident memory size in bytes.",
            )?,
            start_time,
            threads: int(PROCESS_THREADS, "Number of OS threads in the process.")?,
            descs: Vec::new(),
            ticks: sysconf_or(nix::unistd::SysconfVar::CLK_TCK, 100) as f64,
            page_size: sysconf_or(nix::unistd::SysconfVar::PAGE_SIZE, 4096),
            started: false,
        };
        c.descs = [
            c.cpu.desc(),
            c.open_fds.desc(),
            c.max_fds.desc(),
            c.vsize.desc(),
            c.rss.desc(),
            c.start_time.desc(),
            c.threads.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_btime(&s));
        let stat = read_stat();
        if let (Some(boot), Some(stat)) = (boot, stat) {
            c.start_time
                .set(boot as f64 + stat.start_ticks as f64 / c.ticks);
            c.started = true;
        }
        Ok(c)
    }
}

fn read_stat() -> Option<Stat> {
    Stat::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Open descriptors: the entries of `/proc/self/fd` (the one this listing
/// holds open included, as client_golang counts it).
fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let mut out = Vec::with_capacity(self.descs.len());
        if let Some(stat) = read_stat() {
            let cpu = stat.cpu_ticks as f64 / self.ticks;
            // Two scrapes at once may both add: never below what it shows.
            let shown = self.cpu.get();
            if cpu > shown {
                self.cpu.inc_by(cpu - shown);
            }
            self.vsize.set(saturating(stat.vsize));
            self.rss
                .set(saturating(stat.rss_pages.saturating_mul(self.page_size)));
            self.threads.set(saturating(stat.threads));
            out.extend(self.cpu.collect());
            out.extend(self.vsize.collect());
            out.extend(self.rss.collect());
            out.extend(self.threads.collect());
        }
        if let Some(n) = open_fds() {
            self.open_fds.set(saturating(n as u64));
            out.extend(self.open_fds.collect());
        }
        // The soft limit: what an open(2) runs into (sipedge raises it at
        // start, see crate::rlimit).
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            self.max_fds.set(saturating(soft));
            out.extend(self.max_fds.collect());
        }
        if self.started {
            out.extend(self.start_time.collect());
        }
        out
    }
}

fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line (a kernel 6.1 `cat /proc/self/stat`), with a command
    /// name holding a space and a `)`.
    const LINE: &str = "4242 (sip edge) x) S 1 4242 4242 0 -1 4194560 1203 0 0 0 \
        250 75 0 0 20 0 7 0 123456 104857600 2560 18446744073709551615 \
        1 1 0 0 0 0 0 4096 17926 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        assert_eq!(
            Stat::parse(LINE),
            Some(Stat {
                cpu_ticks: 325,
                threads: 7,
                start_ticks: 123456,
                vsize: 104_857_600,
                rss_pages: 2560,
            })
        );
    }

    #[test]
    fn a_short_or_garbled_stat_is_none_not_a_panic() {
        for bad in [
            "",
            "4242 (x",
            "4242 (x) S 1",
            "4242 (x) S 1 2 3 4 5 6 7 8 9 10 nan",
        ] {
            assert_eq!(Stat::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn btime_is_read_from_its_line() {
        let stat = "cpu  1 2 3\nintr 5\nctxt 9\nbtime 1765000000\nprocesses 77\n";
        assert_eq!(parse_btime(stat), Some(1_765_000_000));
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    /// On this Linux machine: every family is there, with the values of
    /// the test process itself.
    #[test]
    fn the_test_process_reports_itself() {
        let c = ProcessCollector::new().expect("collector");
        let families = c.collect();
        let value = |name: &str| {
            let f = families
                .iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| panic!("no {name}"));
            let m = &f.get_metric()[0];
            if name == PROCESS_CPU_SECONDS_TOTAL {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            }
        };
        assert!(value(PROCESS_RESIDENT_MEMORY_BYTES) > 0.0);
        assert!(value(PROCESS_VIRTUAL_MEMORY_BYTES) >= value(PROCESS_RESIDENT_MEMORY_BYTES));
        assert!(value(PROCESS_OPEN_FDS) >= 3.0, "stdio at least");
        assert!(value(PROCESS_MAX_FDS) >= value(PROCESS_OPEN_FDS));
        assert!(value(PROCESS_THREADS) >= 1.0);
        assert!(value(PROCESS_CPU_SECONDS_TOTAL) >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value(PROCESS_START_TIME_SECONDS);
        // btime is whole seconds: up to one second early.
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
    }
}
