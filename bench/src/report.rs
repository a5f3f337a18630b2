//! The figures, the table and the two result files.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::system::CpuShare;

/// Which way a target points.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// `ratio >= target` (throughputs against their ceiling).
    RatioAtLeast,
    /// `ratio <= target` (latencies against their ceiling).
    RatioAtMost,
    /// `value <= target` (absolute bounds: freshness, memory).
    ValueAtMost,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Stable identifier, e.g. `ingest_c64_throughput`.
    pub id: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The ceiling measured in the same run, in the same unit; `None` where the issue has none.
    pub ceiling: Option<f64>,
    /// `value / ceiling`.
    pub ratio: Option<f64>,
    /// `None` for figures the issue lists without a target (e.g. ipp-actions' memory).
    pub target: Option<f64>,
    pub goal: Goal,
    pub met: Option<bool>,
    /// How it was measured and what else was seen (counts, p50, ...).
    pub detail: String,
    /// What the machine's CPUs did while the figure's group ran (the hypervisor's steal
    /// included): a missed figure in a window of heavy steal says little about our code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu: Option<CpuShare>,
}

impl Figure {
    pub fn against_ceiling(
        id: &str,
        name: &str,
        value: f64,
        ceiling: f64,
        unit: &str,
        (goal, target): (Goal, f64),
        detail: String,
    ) -> Self {
        let ratio = if ceiling > 0.0 { value / ceiling } else { 0.0 };
        let met = match goal {
            Goal::RatioAtLeast => ratio >= target,
            Goal::RatioAtMost => ratio <= target,
            Goal::ValueAtMost => value <= target,
        };
        Self {
            id: id.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            ceiling: Some(ceiling),
            ratio: Some(ratio),
            target: Some(target),
            goal,
            met: Some(met),
            detail,
            machine_cpu: None,
        }
    }

    /// A figure beside a ceiling, with no target of its own: the ratio is reported (e.g.
    /// what HTTP alone serves, next to ingest).
    pub fn beside_ceiling(
        id: &str,
        name: &str,
        value: f64,
        ceiling: f64,
        unit: &str,
        detail: String,
    ) -> Self {
        Self {
            ceiling: Some(ceiling),
            ratio: Some(if ceiling > 0.0 { value / ceiling } else { 0.0 }),
            ..Self::bounded(id, name, value, unit, None, detail)
        }
    }

    /// A figure with no ceiling: an absolute bound, or (`target: None`) just reported.
    pub fn bounded(
        id: &str,
        name: &str,
        value: f64,
        unit: &str,
        target: Option<f64>,
        detail: String,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            ceiling: None,
            ratio: None,
            target,
            goal: Goal::ValueAtMost,
            met: target.map(|t| value <= t),
            detail,
            machine_cpu: None,
        }
    }

    /// The figure, with what the machine's CPUs did while its group ran.
    pub fn with_machine_cpu(self, cpu: CpuShare) -> Self {
        Self {
            machine_cpu: Some(cpu),
            ..self
        }
    }

    fn target_text(&self) -> String {
        let Some(target) = self.target else {
            return "—".into();
        };
        match self.goal {
            Goal::RatioAtLeast => format!("≥ {target}×"),
            Goal::RatioAtMost => format!("≤ {target}×"),
            Goal::ValueAtMost => format!("≤ {target} {}", self.unit),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub smoke: bool,
    pub started_at: String,
    pub finished_at: String,
    pub machine: Machine,
    pub sizes: crate::config::Sizes,
    pub figures: Vec<Figure>,
    /// Anything that went wrong in a figure that could not be measured.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mb: u64,
    pub load_average_at_start: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let memory_mb = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        let load_average_at_start = std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_mb,
            load_average_at_start,
        }
    }
}

fn number(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Report {
    /// The table as Markdown (also what is printed).
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str("| Figure | Value | Ceiling (same run) | Ratio | Target | Met |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for f in &self.figures {
            let ceiling = f
                .ceiling
                .map_or("—".into(), |c| format!("{} {}", number(c), f.unit));
            let ratio = f.ratio.map_or("—".into(), |r| format!("{r:.2}×"));
            let _ = writeln!(
                out,
                "| {} | {} {} | {} | {} | {} | {} |",
                f.name,
                number(f.value),
                f.unit,
                ceiling,
                ratio,
                f.target_text(),
                match f.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "—",
                }
            );
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# ipp-pipeline benchmark{}\n",
            if self.smoke {
                " (smoke sizes: not meaningful)"
            } else {
                ""
            }
        );
        let m = &self.machine;
        let _ = writeln!(
            out,
            "Run {} → {} on {} CPUs ({}), {} MB RAM, load average at start {}.\n",
            self.started_at,
            self.finished_at,
            m.cpus,
            m.cpu_model,
            m.memory_mb,
            m.load_average_at_start
        );
        out.push_str(&self.table());
        out.push_str("\n## How each figure was measured\n\n");
        for f in &self.figures {
            let _ = write!(out, "- **{}**: {}", f.name, f.detail);
            match &f.machine_cpu {
                Some(cpu) => {
                    let _ = writeln!(out, ". The machine while its group ran: {cpu}.");
                }
                None => out.push('\n'),
            }
        }
        if !self.errors.is_empty() {
            out.push_str("\n## Errors\n\n");
            for e in &self.errors {
                let _ = writeln!(out, "- {e}");
            }
        }
        let _ = writeln!(
            out,
            "\nSizes: `{}`",
            serde_json::to_string(&self.sizes).unwrap_or_default()
        );
        out
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        Ok(())
    }
}
