//! Traces: where a call sits in its trace, the metadata it carries, what content it may
//! capture, and the span record built from it.

pub mod capture;
pub mod context;
pub mod metadata;
pub mod redact;
pub mod span;
