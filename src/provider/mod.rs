//! Provider specs (`providers/*.toml`) and the registry that maps a route prefix to a provider.

mod registry;
mod spec;

pub use registry::{Provider, Registry, Route, RouteTimeouts};
pub use spec::{AuthSpec, PathSpec, ProviderOverride, ProviderSpec, WireFormat};

/// The provider files in `providers/`, compiled into the binary so it runs with no files at all.
/// `build.rs` lists the directory, so adding a provider is adding a file.
pub fn builtin_specs() -> &'static [(&'static str, &'static str)] {
    include!(concat!(env!("OUT_DIR"), "/builtin_providers.rs"))
}
