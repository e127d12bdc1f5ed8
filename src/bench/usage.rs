//! The broker's memory during a scenario: VmRSS from /proc/PID/status,
//! polled, so each scenario gets its own peak (VmHWM is the process's
//! lifetime peak and would carry one scenario's figure into the next).

use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const POLL_EVERY: Duration = Duration::from_millis(100);

/// A `kB` field of /proc/PID/status, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmRSS")
}

/// Polls a process's resident set until stopped.
pub struct RssSampler {
    stop: CancellationToken,
    task: JoinHandle<Option<u64>>,
}

impl RssSampler {
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
        Self { stop, task }
    }

    /// The peak VmRSS seen, in KiB; `None` if the process could not be read.
    pub async fn finish(self) -> Option<u64> {
        self.stop.cancel();
        self.task.await.ok().flatten()
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
    fn our_own_process_has_a_resident_set() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
