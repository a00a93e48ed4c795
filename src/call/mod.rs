//! The call's own wing: the record every routed call leaves ([`record`]), the sinks it is handed
//! to ([`sink`]) and the recorder that prices it and fans it out ([`recorder`]).
//!
//! Imports point one way: `record` and `sink` are leaves that cost, the stores, metrics and
//! spans import; only `recorder` imports them, and only the proxy and the server import it.

pub mod record;
pub mod recorder;
pub mod sink;
pub mod tools;

pub use record::{CallRecord, Outcome, RequestInfo, RequestParams};
