//! What every service's `/metrics` shares: one naming scheme (`ipp_<service>_…`, base
//! units, `_total` counters, `_seconds` durations, `_timestamp_seconds` for moments),
//! `ipp_<service>_build_info`, the standard `process_*` metrics, and, for one release,
//! the former names of renamed metrics so that dashboards keep working meanwhile.

use prometheus::{
    core::Collector, proto::MetricFamily, Encoder, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// A metric that was renamed: its family is exported under both names until the
/// release that drops `old` (see CHANGELOG.md).
#[derive(Debug, Clone, Copy)]
pub struct Renamed {
    pub old: &'static str,
    pub new: &'static str,
}

/// The metrics of one service: its registry, with `build_info` and the process
/// metrics already in it.
pub struct ServiceMetrics {
    registry: Registry,
    renamed: &'static [Renamed],
}

impl ServiceMetrics {
    /// `service` is the `<service>` of `ipp_<service>_build_info` (`ingest`, ...).
    pub fn new(service: &str, renamed: &'static [Renamed]) -> Self {
        for rename in renamed {
            assert_ne!(rename.old, rename.new, "a rename changes the name");
        }
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                format!("ipp_{service}_build_info"),
                "Always 1; the labels say which build is running",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("unique metric");
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        // read from /proc at each scrape.
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        Self { registry, renamed }
    }

    /// Adds a service metric.
    pub fn register(&self, metric: Box<dyn Collector>) {
        self.registry.register(metric).expect("unique metric name");
    }

    /// The text exposition format, for `GET /metrics`: every family, and a copy of each
    /// renamed one under its former name.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(former_names(&families, self.renamed));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        encode(&families)
    }
}

fn former_names(families: &[MetricFamily], renamed: &[Renamed]) -> Vec<MetricFamily> {
    renamed
        .iter()
        .filter_map(|rename| {
            let family = families.iter().find(|f| f.name() == rename.new)?;
            let mut copy = family.clone();
            copy.set_name(rename.old.to_owned());
            copy.set_help(format!("Deprecated: renamed {}", rename.new));
            Some(copy)
        })
        .collect()
}

fn encode(families: &[MetricFamily]) -> String {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(families, &mut buffer)
        .expect("text encoding of gathered metrics cannot fail");
    String::from_utf8(buffer).expect("prometheus text is UTF-8")
}

#[cfg(test)]
mod tests {
    use prometheus::IntCounter;

    use super::*;

    const RENAMED: &[Renamed] = &[Renamed {
        old: "widgets_total",
        new: "ipp_test_widgets_total",
    }];

    #[test]
    fn a_renamed_metric_is_exported_under_both_names() {
        let metrics = ServiceMetrics::new("test", RENAMED);
        let widgets = IntCounter::new("ipp_test_widgets_total", "Widgets").unwrap();
        metrics.register(Box::new(widgets.clone()));
        widgets.inc_by(3);

        let text = metrics.render();
        assert!(text.contains("\nipp_test_widgets_total 3\n"), "{text}");
        assert!(text.contains("\nwidgets_total 3\n"), "{text}");
        assert!(
            text.contains("# HELP widgets_total Deprecated: renamed ipp_test_widgets_total"),
            "{text}"
        );
    }

    #[test]
    fn build_info_and_process_metrics_are_exported() {
        let text = ServiceMetrics::new("test", &[]).render();
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!("ipp_test_build_info{{version=\"{version}\"}} 1")),
            "{text}"
        );
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
        ] {
            assert!(
                text.contains(&format!("\n{name} ")),
                "{name} missing: {text}"
            );
        }
    }
}
