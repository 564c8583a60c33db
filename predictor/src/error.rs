//! The one error shape of this crate's inputs: a field that was refused, and why.
//!
//! Configuration ([`crate::model::ModelConfig`], [`crate::analyzer::AnalyzerConfig`]) and
//! run-time input (a capacity, a [`crate::events::ScheduledEvent`]) are checked the same
//! way, so a caller — the control plane's HTTP API, a configuration file loader — can
//! name the offending field without knowing which check refused it.

/// An input field that was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct FieldError {
    /// The field's path, e.g. `seasons[1].buckets` or `duration_secs`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, its field nested under `parent` (`model` + `horizon` →
    /// `model.horizon`).
    pub fn within(self, parent: &str) -> FieldError {
        FieldError {
            field: format!("{parent}.{}", self.field),
            ..self
        }
    }
}
