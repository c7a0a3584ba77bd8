//! CPU time and memory of a process, read from Linux `/proc`.

use std::sync::OnceLock;

use anyhow::Context;

/// utime + stime of every thread of `pid`, in clock ticks (`/proc/PID/stat` fields 14, 15).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat_cpu(&text).with_context(|| format!("parsing /proc/{pid}/stat"))
}

/// Peak resident set size (VmHWM) of `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_status_kib(&text, "VmHWM:").with_context(|| format!("no VmHWM in /proc/{pid}/status"))
}

/// Current resident set size (VmRSS) of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_status_kib(&text, "VmRSS:").with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The whole machine's CPU time so far, from the first line of `/proc/stat`, in clock ticks:
/// busy (user, nice, system, irq, softirq) and steal (time the hypervisor gave to others).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineTicks {
    pub busy: u64,
    pub steal: u64,
}

pub fn machine_ticks() -> anyhow::Result<MachineTicks> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine(&text).context("parsing the cpu line of /proc/stat")
}

fn parse_machine(text: &str) -> Option<MachineTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(MachineTicks {
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        steal: at(7),
    })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every mainstream Linux if that fails).
pub fn ticks_per_second() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// Ticks to microseconds.
pub fn ticks_to_us(ticks: u64) -> f64 {
    ticks as f64 * 1e6 / ticks_per_second() as f64
}

fn parse_stat_cpu(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14 and stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_a_tricky_comm() {
        let stat = "1234 (quiver (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 \
                    100 1000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(287));
    }

    #[test]
    fn reads_machine_busy_and_steal() {
        let stat = "cpu  100 5 30 9000 7 2 3 40 0 0\ncpu0 50 2 15 4500 3 1 1 20 0 0\n";
        let m = parse_machine(stat).unwrap();
        assert_eq!((m.busy, m.steal), (140, 40));
        assert!(parse_machine("cpu0 1 2 3\n").is_none());
    }

    #[test]
    fn reads_vm_hwm() {
        let status = "Name:\tquiver-proxy\nVmPeak:\t  100 kB\nVmHWM:\t   20480 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(1));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn our_own_process_has_cpu_and_memory() {
        let pid = std::process::id();
        assert!(peak_rss_kib(pid).is_ok_and(|k| k > 0));
        assert!(rss_kib(pid).is_ok_and(|k| k > 0));
        assert!(cpu_ticks(pid).is_ok());
        assert!(ticks_per_second() > 0);
    }
}
