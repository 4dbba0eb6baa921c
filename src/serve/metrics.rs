//! The Prometheus metrics of `GET /metrics` (OpenMetrics text, prometheus-client): imports by
//! outcome, rows written and rejected, import durations, and imports in flight. Updated once
//! per import when it ends (and in flight when it starts), never per row.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of the metrics text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label of `importer_imports_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    /// As the run ledger spells it: succeeded, rejected_rows, failed, cancelled, skipped.
    outcome: String,
}

/// One import in `imports_in_flight`, until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The service's metrics and their registry.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    imports: Family<OutcomeLabel, Counter>,
    rows_written: Counter,
    rows_rejected: Counter,
    duration_seconds: Histogram,
    in_flight: Gauge,
}

impl Metrics {
    /// Registers every metric, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("importer");
        let imports = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "imports",
            "Imports that ended, by outcome (the run ledger's)",
            imports.clone(),
        );
        let rows_written = Counter::default();
        registry.register(
            "rows_written",
            "Rows written to tables by imports",
            rows_written.clone(),
        );
        let rows_rejected = Counter::default();
        registry.register(
            "rows_rejected",
            "Rows rejected by imports",
            rows_rejected.clone(),
        );
        // 0.05 s to about 30 min
        let duration_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 16));
        registry.register(
            "import_duration_seconds",
            "Time from the end of the upload to the end of the import",
            duration_seconds.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "imports_in_flight",
            "Imports running now",
            in_flight.clone(),
        );
        Metrics {
            registry,
            imports,
            rows_written,
            rows_rejected,
            duration_seconds,
            in_flight,
        }
    }

    /// An import started: it counts as in flight until the guard is dropped (however its
    /// task ends).
    pub fn started(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// An import ended with `outcome`, having written and rejected these rows.
    pub fn finished(&self, outcome: &str, written: u64, rejected: u64, seconds: f64) {
        self.imports
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
        self.rows_written.inc_by(written);
        self.rows_rejected.inc_by(rejected);
        self.duration_seconds.observe(seconds);
    }

    /// The metrics in OpenMetrics text.
    pub fn render(&self) -> anyhow::Result<String> {
        let mut text = String::new();
        encode(&mut text, &self.registry)
            .map_err(|_| anyhow::anyhow!("cannot encode the metrics"))?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_count_imports_by_outcome_and_rows() {
        let metrics = Metrics::new();
        let in_flight = metrics.started();
        metrics.finished("rejected_rows", 7, 3, 0.2);
        drop(in_flight);
        let text = metrics.render().expect("metrics encode");
        assert!(
            text.contains("importer_imports_total{outcome=\"rejected_rows\"} 1"),
            "{text}"
        );
        assert!(text.contains("importer_rows_written_total 7"), "{text}");
        assert!(text.contains("importer_rows_rejected_total 3"), "{text}");
        assert!(text.contains("importer_imports_in_flight 0"), "{text}");
        assert!(
            text.contains("importer_import_duration_seconds_count 1"),
            "{text}"
        );
    }
}
