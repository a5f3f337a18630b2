//! What the whole machine's CPUs did while a figure ran, from `/proc/stat`: how busy
//! they were and how much of them the hypervisor took (steal). On a shared virtual
//! machine a figure missed while the hypervisor held a third of the CPUs says little
//! about our code; every figure carries the share of its own group so that can be read.

use std::{fmt, future::Future, time::Instant};

use serde::Serialize;

/// Cumulative CPU time of all CPUs, in clock ticks, split the way the figures need it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    busy: u64,
    steal: u64,
    idle: u64,
}

impl CpuTicks {
    /// Now; all zero where `/proc/stat` cannot be read (the shares then read 0).
    pub fn read() -> Self {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| Self::parse(&stat))
            .unwrap_or_default()
    }

    /// The first line, `cpu  user nice system idle iowait irq softirq steal guest
    /// guest_nice` (guest time is already counted in user and nice).
    fn parse(stat: &str) -> Option<Self> {
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        Some(Self {
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            idle: field(3) + field(4),
            steal: field(7),
        })
    }

    /// The shares of the time from `self` to `later`.
    pub fn until(self, later: Self) -> CpuShare {
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let steal = later.steal.saturating_sub(self.steal) as f64;
        let idle = later.idle.saturating_sub(self.idle) as f64;
        let total = busy + steal + idle;
        let pct = |part: f64| {
            if total > 0.0 {
                100.0 * part / total
            } else {
                0.0
            }
        };
        CpuShare {
            busy_pct: pct(busy),
            steal_pct: pct(steal),
            idle_pct: pct(idle),
        }
    }
}

/// Shares of all CPUs' time over an interval, in per cent; they add up to 100.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuShare {
    pub busy_pct: f64,
    /// Taken by the hypervisor for other guests while this machine had work to run.
    pub steal_pct: f64,
    pub idle_pct: f64,
}

impl fmt::Display for CpuShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0} % busy, {:.0} % stolen by the hypervisor, {:.0} % idle",
            self.busy_pct, self.steal_pct, self.idle_pct
        )
    }
}

/// Runs `work` and returns what the machine's CPUs did meanwhile.
pub async fn during<T>(work: impl Future<Output = T>) -> (T, CpuShare) {
    let before = CpuTicks::read();
    let result = work.await;
    (result, before.until(CpuTicks::read()))
}

/// `/proc/stat` read at intervals while a figure runs, to tell which of its samples
/// fell in a window where the hypervisor took much of the machine.
#[derive(Debug, Default)]
pub struct CpuTimeline {
    readings: Vec<(Instant, CpuTicks)>,
}

impl CpuTimeline {
    pub fn sample(&mut self) {
        self.readings.push((Instant::now(), CpuTicks::read()));
    }

    /// The share of the window between the two readings around `at`; `None` before the
    /// first or after the last reading.
    pub fn share_at(&self, at: Instant) -> Option<CpuShare> {
        let after = self.readings.iter().position(|(t, _)| *t >= at)?;
        let (_, before) = self.readings.get(after.checked_sub(1)?)?;
        Some(before.until(self.readings[after].1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_busy_steal_and_idle_between_two_readings() {
        let before = CpuTicks::parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        let after = CpuTicks::parse("cpu  160 0 70 820 60 5 5 30 9 0\n").unwrap();
        let share = before.until(after);
        // busy 60+20+5+5 = 90, idle 20+10 = 30, steal 30: of 150 ticks.
        assert_eq!(share.busy_pct, 60.0);
        assert_eq!(share.idle_pct, 20.0);
        assert_eq!(share.steal_pct, 20.0);
        assert_eq!(CpuTicks::parse("intr 1 2"), None);
    }

    #[test]
    fn a_sample_gets_the_window_around_it() {
        let start = Instant::now();
        let reading = |ms: u64, steal: u64| {
            (
                start + std::time::Duration::from_millis(ms),
                CpuTicks {
                    busy: 10 * ms,
                    steal,
                    idle: 0,
                },
            )
        };
        let timeline = CpuTimeline {
            readings: vec![reading(0, 0), reading(500, 0), reading(1000, 5000)],
        };
        let at = |ms| start + std::time::Duration::from_millis(ms);
        assert_eq!(timeline.share_at(at(200)).unwrap().steal_pct, 0.0);
        assert_eq!(timeline.share_at(at(700)).unwrap().steal_pct, 50.0);
        assert_eq!(timeline.share_at(at(1200)), None);
    }
}
