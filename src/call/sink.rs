//! What a finished call is handed to. Each sink (metrics, the cost store, budgets, and any a
//! test or a new feature adds) implements [`Sink`] next to its own code; the recorder only
//! holds the list, so adding one touches the place that installs it and nothing else.

use crate::{call::record::CallRecord, trace::span::SpanRecord};

/// Takes every finished call, once, after it was priced and its span was built.
///
/// Sinks run in the order they were installed, on the task that finished the call: each must
/// be quick and never block or wait (slow work goes to a queue of its own, as the export does).
pub trait Sink: Send + Sync {
    fn record(&self, call: &CallRecord, span: &SpanRecord);
}
