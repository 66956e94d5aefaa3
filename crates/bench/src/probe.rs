//! The server seen from outside: its CPU time and memory from `/proc/<pid>` (Linux).

use serde::Serialize;

/// What the server used during a phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerUse {
    /// CPU seconds (user and system) per second of the phase: 1.0 is one core busy.
    pub cpu_cores: f64,
    /// The largest resident set seen, sampled every 100 ms.
    pub rss_peak_mib: f64,
    /// The resident set when the phase ended.
    pub rss_end_mib: f64,
}

/// A process to watch.
pub struct Probe {
    pid: u32,
}

/// Linux reports times in `/proc/<pid>/stat` in units of USER_HZ, 100 on every architecture
/// Linux supports today.
const TICKS_PER_SECOND: f64 = 100.0;

impl Probe {
    /// `None` unless `/proc/<pid>/stat` can be read.
    pub fn new(pid: u32) -> Option<Probe> {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().map(|_| Probe { pid })
    }

    /// User and system CPU seconds so far (0 if the process is gone).
    pub fn cpu_seconds(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok().and_then(|s| parse_cpu(&s)).unwrap_or(0.0)
    }

    /// The resident set now, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS:")
    }

    /// The largest resident set the process ever had, KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        parse_status_kib(&status, field)
    }
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted after its closing parenthesis.
fn parse_cpu(stat: &str) -> Option<f64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.trim_start_matches(field).split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_lines_are_read_as_linux_writes_them() {
        let stat = "4242 (ringfence serve) S 1 4242 4242 0 -1 4194560 2500 0 0 0 350 150 0 0 20 0 9 0 100 0";
        assert_eq!(parse_cpu(stat), Some(5.0));
        assert_eq!(parse_cpu("garbage"), None);
        let status = "Name:\tringfence\nVmHWM:\t  123456 kB\nVmRSS:\t   65432 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(65432));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(123456));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_can_be_watched() {
        let me = Probe::new(std::process::id()).unwrap();
        assert!(me.rss_kib().unwrap() > 0);
        assert!(me.peak_rss_kib().unwrap() >= me.rss_kib().unwrap());
        assert!(me.cpu_seconds() >= 0.0);
    }
}
