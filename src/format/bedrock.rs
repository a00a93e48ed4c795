//! Placeholder until the extractor lands.
pub use super::gemini::Gemini as Converse;
pub use super::gemini::Gemini as InvokeModel;
