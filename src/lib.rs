//! sidetrace: a reverse-proxy LLM gateway. Calls stream through untouched; usage, cost and
//! traces are read on the side. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod background;
pub mod call;
pub mod cli;
pub mod config;
pub mod cost;
pub mod digest;
pub mod error;
pub mod export;
pub mod format;
pub mod ingest;
pub mod metrics;
pub mod provider;
pub mod proxy;
pub mod server;
pub mod sse;
pub mod store;
pub mod tls;
pub mod trace;

pub use config::Config;
pub use server::Gateway;
