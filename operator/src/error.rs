//! Reconcile errors, each with a short label for metrics.

/// Why a reconcile failed; the controller logs it, records a Warning event and retries.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields are named by the messages
pub enum Error {
    /// The object lacks a field the API server always sets, such as its namespace.
    #[error("{kind} has no {field}")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    /// Server-side apply of a child, or the keys annotation on a relay pod, was refused.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    /// A status write was refused.
    #[error("updating the status of {kind} {name}: {source}")]
    Status {
        kind: String,
        name: String,
        source: kube::Error,
    },
    /// Reading something the reflector stores do not hold (relay pods, a node) failed.
    #[error("reading {what}: {source}")]
    Read {
        what: &'static str,
        source: kube::Error,
    },
    /// A reflector store's writer is gone, so the store will never sync.
    #[error("the {0} cache stopped")]
    StoreClosed(&'static str),
}

impl Error {
    /// A bounded label for the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingField { .. } => "missing_field",
            Error::Apply { .. } => "apply",
            Error::Status { .. } => "status",
            Error::Read { .. } => "read",
            Error::StoreClosed(_) => "store_closed",
        }
    }
}
