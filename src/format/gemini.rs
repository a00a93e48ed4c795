//! Placeholder until the extractor lands.
use super::{EventKind, Extractor, ResponseRecord};

#[derive(Default)]
pub struct Gemini;

impl Extractor for Gemini {
    fn on_event(&mut self, _name: &str, _data: &str, _record: &mut ResponseRecord) -> EventKind {
        EventKind::Other
    }
    fn on_json(&mut self, _body: &[u8], _record: &mut ResponseRecord) {}
    fn output_started(&self) -> bool {
        false
    }
    fn finish(&mut self, _clean: bool, _record: &mut ResponseRecord) {}
}
