//! Getting spans out: the OTLP export path and the local spool that holds batches the collector
//! could not take yet.

pub mod spool;

pub mod conventions;

pub mod otlp;
pub mod pipeline;
pub mod sampling;
#[cfg(test)]
mod spool_tests;
