//! CPU time and memory of the processes under test, read from /proc while the load runs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// Linux reports utime and stime in USER_HZ ticks, which is 100 per second on every
/// architecture Linux supports today (the kernel's own HZ can differ; USER_HZ does not).
const MS_PER_TICK: u64 = 10;

/// A named group of processes whose figures are summed: nginx is a master and its workers.
#[derive(Clone, Debug)]
pub struct Watched {
    pub name: String,
    pub pids: Vec<u32>,
}

impl std::str::FromStr for Watched {
    type Err = String;

    /// `NAME=PID[,PID...]`
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, pids) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=PID[,PID...]"))?;
        let pids = pids
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.trim().parse::<u32>().map_err(|e| format!("{p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if name.is_empty() || pids.is_empty() {
            return Err(format!("{s:?}: expected NAME=PID[,PID...]"));
        }
        Ok(Watched {
            name: name.to_string(),
            pids,
        })
    }
}

/// User plus system CPU time of one process (all its threads, live and exited), in ms.
fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * MS_PER_TICK)
}

/// A `/proc/<pid>/status` size field such as VmRSS or VmHWM, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kib(&status, field)
}

fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Proportional set size: shared pages split between the processes that map them, so that a
/// group's sum does not count nginx's binary and libraries once per worker.
fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Summed over the group's processes; a process that has gone counts zero.
pub fn group_cpu_ms(w: &Watched) -> u64 {
    w.pids.iter().filter_map(|&p| cpu_ms(p)).sum()
}

pub fn group_rss_kib(w: &Watched) -> u64 {
    w.pids.iter().filter_map(|&p| status_kib(p, "VmRSS")).sum()
}

/// Too slow to sample often (the kernel walks the page tables): read at the end only.
pub fn group_pss_kib(w: &Watched) -> u64 {
    w.pids.iter().filter_map(|&p| pss_kib(p)).sum()
}

/// The sum of each process's own lifetime peak: an upper bound of the group's peak.
pub fn group_hwm_kib(w: &Watched) -> u64 {
    w.pids.iter().filter_map(|&p| status_kib(p, "VmHWM")).sum()
}

/// Samples the groups' resident memory in the background, keeping the highest sum of each.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<u64>>,
}

impl RssSampler {
    pub fn start(groups: Vec<Watched>, every: Duration, max_samples: u64) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = vec![0u64; groups.len()];
            for _ in 0..max_samples {
                for (peak, g) in peaks.iter_mut().zip(&groups) {
                    *peak = (*peak).max(group_rss_kib(g));
                }
                if flag.load(Ordering::Acquire) {
                    break;
                }
                std::thread::sleep(every);
            }
            peaks
        });
        RssSampler { stop, thread }
    }

    /// Stops sampling (after one last sample) and returns each group's peak, in KiB.
    pub fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_figures_are_readable() {
        let me = Watched {
            name: "me".into(),
            pids: vec![std::process::id()],
        };
        assert!(group_rss_kib(&me) > 0);
        assert!(group_hwm_kib(&me) > 0);
        // Other test threads allocate between two reads: compare figures from one read only.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let rss = status_field_kib(&status, "VmRSS").unwrap();
        assert!(status_field_kib(&status, "VmHWM").unwrap() >= rss);
        assert!(group_pss_kib(&me) > 0);
        let _ = group_cpu_ms(&me);
    }

    #[test]
    fn watch_spec_parses_names_and_pid_lists() {
        let w: Watched = "nginx=10,11,12".parse().unwrap();
        assert_eq!(w.name, "nginx");
        assert_eq!(w.pids, [10, 11, 12]);
        assert!("nginx".parse::<Watched>().is_err());
        assert!("x=".parse::<Watched>().is_err());
    }
}
