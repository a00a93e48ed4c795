//! What the gateway keeps locally: cost aggregates for the query API and budgets.

pub mod budgets;
pub mod costs;
pub mod sled_db;
