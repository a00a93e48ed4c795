//! Getting spans out: the OTLP export path and the local spool that holds batches the collector
//! could not take yet.

pub mod spool;

pub mod otlp;
pub mod pipeline;
#[cfg(test)]
mod spool_tests;
