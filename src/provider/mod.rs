//! Provider specs (`providers/*.toml`) and the registry that maps a route prefix to a provider.

mod registry;
pub mod sigv4;

pub use crate::config::providers::{
    AuthSpec, PathSpec, ProviderOverride, ProviderSpec, Quirks, WireFormat, builtin_specs,
};
pub use registry::{Provider, Registry, Route, RouteTimeouts};

/// The quirks of a built-in provider (none for an unknown name); for tests and tools that read
/// responses without a configured registry.
pub fn builtin_quirks(name: &str) -> Quirks {
    static QUIRKS: std::sync::OnceLock<Vec<(String, Quirks)>> = std::sync::OnceLock::new();
    QUIRKS
        .get_or_init(|| {
            builtin_specs()
                .iter()
                .filter_map(|(_, text)| toml::from_str::<ProviderSpec>(text).ok())
                .map(|spec| (spec.name, spec.quirks))
                .collect()
        })
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, quirks)| *quirks)
        .unwrap_or_default()
}
