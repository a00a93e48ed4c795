//! What the gateway keeps locally: cost aggregates for the query API and budgets, and the trace
//! store behind the trace API and the web UI.

pub mod budgets;
pub mod costs;
pub mod sled_db;
pub mod traces;
