//! Reconcile errors, each with a short label for metrics.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} has no {field}")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("updating the status of {kind} {name}: {source}")]
    Status {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("reading {what}: {source}")]
    Read {
        what: &'static str,
        source: kube::Error,
    },
    #[error("the {0} cache stopped")]
    StoreClosed(&'static str),
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl Error {
    /// A bounded label for the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingField { .. } => "missing_field",
            Error::Apply { .. } => "apply",
            Error::Status { .. } => "status",
            Error::Read { .. } => "read",
            Error::Serialize { .. } => "serialize",
            Error::StoreClosed(_) => "store_closed",
        }
    }
}
