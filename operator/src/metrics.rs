//! The operator's own metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The label of the per-controller metrics: reconciliations and their duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// `wireguardrelay` or `wireguardpeerkey`.
    pub controller: &'static str,
}

/// The labels of `wpex_operator_reconcile_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `wireguardrelay` or `wireguardpeerkey`.
    pub controller: &'static str,
    /// The error's [`metric_label`](crate::error::Error::metric_label): a bounded set.
    pub error: &'static str,
}

/// The label of `wpex_operator_relay_scrapes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// The operator's metrics; clones count into the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    scrapes: Family<ResultLabel, Counter>,
    reconciliations: Family<ControllerLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<ControllerLabel, Histogram>,
}

impl Metrics {
    /// Creates the metrics and registers them with `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            scrapes: Family::default(),
            reconciliations: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0])
            }),
        };
        let sub = registry.sub_registry_with_prefix("wpex_operator");
        sub.register(
            "reconciliations",
            "Reconciliations run",
            metrics.reconciliations.clone(),
        );
        sub.register(
            "reconcile_failures",
            "Reconciliations that failed, by error",
            metrics.failures.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Time spent reconciling",
            metrics.duration.clone(),
        );
        sub.register(
            "relay_scrapes",
            "Scrapes of relay pods' metrics for peer keys' last handshakes, by result",
            metrics.scrapes.clone(),
        );
        metrics
    }

    /// Counts a scrape of a relay pod's metrics.
    pub fn scraped(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.scrapes.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts and times one reconcile of `controller`, and its failure if `error` is set.
    pub fn observe(&self, controller: &'static str, took: Duration, error: Option<&'static str>) {
        let label = ControllerLabel { controller };
        self.reconciliations.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if let Some(error) = error {
            self.failures
                .get_or_create(&FailureLabels { controller, error })
                .inc();
        }
    }
}
