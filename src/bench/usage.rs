//! What the broker process spent during a scenario, from /proc/PID:
//!
//! - peak resident memory: VmRSS from `status`, polled, so each scenario
//!   gets its own peak (VmHWM is the process's lifetime peak and would carry
//!   one scenario's figure into the next);
//! - CPU time: user + system from `stat`, before and after. On a shared
//!   machine the broker's CPU per message moves much less with other load
//!   than its messages per second do.

use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const POLL_EVERY: Duration = Duration::from_millis(100);
/// /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 per second.
const TICKS_PER_SECOND: u64 = 100;

/// A `kB` field of /proc/PID/status, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// utime + stime from /proc/PID/stat, in ticks. The command name, field 2,
/// may contain spaces and parentheses, so fields are counted after the last ')'.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After the name come state (field 3) … utime (14) and stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The 1-minute load average, the first field of /proc/loadavg.
pub fn load1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmRSS")
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// What [`UsageSampler::finish`] found; `None` where /proc could not be read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub peak_rss_kib: Option<u64>,
    pub cpu: Option<Duration>,
}

/// Watches one process from `start` to `finish`.
pub struct UsageSampler {
    pid: u32,
    cpu_before: Option<u64>,
    stop: CancellationToken,
    task: JoinHandle<Option<u64>>,
}

impl UsageSampler {
    pub fn start(pid: u32) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = rss_kib(pid);
            let mut tick = tokio::time::interval(POLL_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = token.cancelled() => break,
                }
                peak = peak.max(rss_kib(pid));
            }
            peak.max(rss_kib(pid))
        });
        Self {
            pid,
            cpu_before: cpu_ticks(pid),
            stop,
            task,
        }
    }

    pub async fn finish(self) -> Usage {
        let cpu = match (self.cpu_before, cpu_ticks(self.pid)) {
            (Some(before), Some(after)) => {
                let ticks = after.saturating_sub(before);
                Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
            }
            _ => None,
        };
        self.stop.cancel();
        Usage {
            peak_rss_kib: self.task.await.ok().flatten(),
            cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields_from_proc_status() {
        let status = "Name:\tbeam.smp\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(102_400));
        assert_eq!(status_kib(status, "VmHWM"), Some(204_800));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn cpu_ticks_are_counted_after_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 30 0";
        assert_eq!(stat_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn our_own_process_has_a_resident_set_and_cpu_time() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(cpu_ticks(pid).is_some());
        assert!(load1().is_some_and(|l| l >= 0.0));
    }
}
