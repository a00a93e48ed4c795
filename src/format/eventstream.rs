//! AWS event-stream framing (placeholder until the decoder lands).

pub struct Frame<'a> {
    pub event_type: &'a str,
    pub payload: &'a str,
}

#[derive(Debug)]
pub struct FrameError;

pub struct FrameDecoder;

impl FrameDecoder {
    pub fn new(_max: usize) -> Self {
        FrameDecoder
    }
    pub fn feed(&mut self, _chunk: &[u8], _on_frame: impl FnMut(Result<Frame<'_>, FrameError>)) {}
    pub fn finish(&mut self) -> bool {
        false
    }
}
