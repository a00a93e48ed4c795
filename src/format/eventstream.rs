//! AWS event-stream framing (Bedrock): bytes split anywhere in, checked frames out, bounded.
//!
//! A frame is `[total len u32][headers len u32][prelude CRC32]`, headers, payload, then a CRC32
//! of everything before it; integers are big-endian and the CRC is IEEE (zlib's).

/// Prelude: total length, headers length, prelude CRC.
const PRELUDE: usize = 12;
/// Prelude plus the trailing message CRC.
const OVERHEAD: usize = PRELUDE + 4;

/// One checked frame. The `&str` fields are empty when the header is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// `:event-type`, e.g. `messageStop` or `chunk`.
    pub event_type: &'a str,
    /// `:message-type`: `event`, `exception` or `error`.
    pub message_type: &'a str,
    /// `:exception-type` for an exception, or `:error-code` for an error message.
    pub exception_type: &'a str,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Whether the frame reports a failure instead of carrying an event.
    pub fn is_exception(&self) -> bool {
        matches!(self.message_type, "exception" | "error")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The lengths cannot be trusted, so the rest of the body cannot be framed.
    #[error("event-stream prelude checksum mismatch")]
    PreludeCrc,
    #[error("event-stream prelude lengths are impossible")]
    BadLengths,
    #[error("event-stream message checksum mismatch")]
    MessageCrc,
    #[error("event-stream headers are malformed")]
    BadHeaders,
}

impl FrameError {
    /// Whether decoding stops here: after a bad prelude the next frame's start is unknown.
    pub fn is_fatal(self) -> bool {
        matches!(self, FrameError::PreludeCrc | FrameError::BadLengths)
    }
}

pub struct FrameDecoder {
    /// The frame under way when it did not arrive in one chunk.
    buf: Vec<u8>,
    /// Total length of the frame in `buf`, once its prelude is in.
    total: usize,
    /// Bytes of an oversize frame still to skip.
    skip: usize,
    max: usize,
    oversize: u64,
    /// A bad prelude was seen; the rest of the body is ignored.
    lost: bool,
}

enum Prelude {
    Frame(usize),
    /// Larger than the limit: skipped, not kept.
    Oversize(usize),
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(word)
}

fn check_prelude(p: &[u8], max: usize) -> Result<Prelude, FrameError> {
    if crc32(&p[..8]) != read_u32(p, 8) {
        return Err(FrameError::PreludeCrc);
    }
    let total = read_u32(p, 0) as usize;
    let headers = read_u32(p, 4) as usize;
    if total < OVERHEAD || headers > total - OVERHEAD {
        return Err(FrameError::BadLengths);
    }
    Ok(if total > max {
        Prelude::Oversize(total)
    } else {
        Prelude::Frame(total)
    })
}

/// Checks the message CRC and reads the headers of one whole frame.
fn decode(frame: &[u8]) -> Result<Frame<'_>, FrameError> {
    let total = frame.len();
    if crc32(&frame[..total - 4]) != read_u32(frame, total - 4) {
        return Err(FrameError::MessageCrc);
    }
    let headers_len = read_u32(frame, 4) as usize;
    let (headers, rest) = frame[PRELUDE..total - 4].split_at(headers_len);
    let mut out = Frame {
        event_type: "",
        message_type: "",
        exception_type: "",
        payload: rest,
    };
    read_headers(headers, &mut out)?;
    Ok(out)
}

/// Walks the headers, keeping the string ones we use and skipping every other type by its size.
fn read_headers<'a>(mut h: &'a [u8], out: &mut Frame<'a>) -> Result<(), FrameError> {
    fn take<'a>(h: &mut &'a [u8], n: usize) -> Result<&'a [u8], FrameError> {
        let (head, tail) = h.split_at_checked(n).ok_or(FrameError::BadHeaders)?;
        *h = tail;
        Ok(head)
    }
    let mut error_code = "";
    while !h.is_empty() {
        let name_len = take(&mut h, 1)?[0] as usize;
        let name = take(&mut h, name_len)?;
        let value_type = take(&mut h, 1)?[0];
        let value_len = match value_type {
            0 | 1 => 0, // bool true / false: no value bytes
            2 => 1,     // byte
            3 => 2,     // int16
            4 => 4,     // int32
            5 | 8 => 8, // int64, timestamp
            9 => 16,    // uuid
            6 | 7 => {
                // bytes, string: u16 length
                let len = take(&mut h, 2)?;
                u16::from_be_bytes([len[0], len[1]]) as usize
            }
            _ => return Err(FrameError::BadHeaders),
        };
        let value = take(&mut h, value_len)?;
        if value_type != 7 {
            continue;
        }
        let slot = match name {
            b":event-type" => &mut out.event_type,
            b":message-type" => &mut out.message_type,
            b":exception-type" => &mut out.exception_type,
            b":error-code" => &mut error_code,
            _ => continue,
        };
        *slot = std::str::from_utf8(value).map_err(|_| FrameError::BadHeaders)?;
    }
    if out.exception_type.is_empty() {
        out.exception_type = error_code;
    }
    Ok(())
}

impl FrameDecoder {
    /// `max` is the largest frame kept, in bytes; larger ones are skipped and counted.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            total: 0,
            skip: 0,
            max: max.max(OVERHEAD),
            oversize: 0,
            lost: false,
        }
    }

    /// Frames skipped because they were larger than the limit.
    pub fn oversize_frames(&self) -> u64 {
        self.oversize
    }

    /// Buffer capacity held between feeds: one frame's worth at most, whatever was fed.
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Feeds the next bytes; `on_frame` gets every whole frame, or why one could not be read.
    /// After a fatal error (bad prelude) nothing more is reported.
    pub fn feed(&mut self, chunk: &[u8], mut on_frame: impl FnMut(Result<Frame<'_>, FrameError>)) {
        let mut input = chunk;
        while !input.is_empty() && !self.lost {
            if self.skip > 0 {
                let n = self.skip.min(input.len());
                self.skip -= n;
                input = &input[n..];
                continue;
            }
            if self.buf.is_empty() {
                // The common case: whole frames inside the chunk are decoded in place.
                if input.len() < PRELUDE {
                    self.buf.extend_from_slice(input);
                    return;
                }
                match check_prelude(&input[..PRELUDE], self.max) {
                    Err(e) => return self.lose(e, &mut on_frame),
                    Ok(Prelude::Oversize(total)) => {
                        self.oversize += 1;
                        self.skip = total;
                    }
                    Ok(Prelude::Frame(total)) if input.len() >= total => {
                        on_frame(decode(&input[..total]));
                        input = &input[total..];
                    }
                    Ok(Prelude::Frame(total)) => {
                        self.total = total;
                        self.buf.extend_from_slice(input);
                        return;
                    }
                }
                continue;
            }
            if self.buf.len() < PRELUDE {
                let n = (PRELUDE - self.buf.len()).min(input.len());
                self.buf.extend_from_slice(&input[..n]);
                input = &input[n..];
                if self.buf.len() < PRELUDE {
                    return;
                }
                match check_prelude(&self.buf, self.max) {
                    Err(e) => return self.lose(e, &mut on_frame),
                    Ok(Prelude::Oversize(total)) => {
                        self.oversize += 1;
                        self.skip = total - PRELUDE;
                        self.buf.clear();
                        continue;
                    }
                    Ok(Prelude::Frame(total)) => self.total = total,
                }
            }
            let n = (self.total - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..n]);
            input = &input[n..];
            if self.buf.len() == self.total {
                on_frame(decode(&self.buf));
                self.buf.clear();
            }
        }
    }

    fn lose(&mut self, e: FrameError, on_frame: &mut impl FnMut(Result<Frame<'_>, FrameError>)) {
        self.lost = true;
        self.buf = Vec::new();
        on_frame(Err(e));
    }

    /// End of body: whether it ended inside a frame.
    pub fn finish(&mut self) -> bool {
        let inside = !self.lost && (!self.buf.is_empty() || self.skip > 0);
        self.buf = Vec::new();
        self.skip = 0;
        inside
    }
}

/// CRC-32 (IEEE 802.3, as zlib), slicing by 8. Written here rather than pulled in as a crate:
/// it is a few lines, and frames are small enough that SIMD would not show.
pub fn crc32(data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut crc = !0u32;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let lo = crc ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in words.remainder() {
        crc = t[0][((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

/// Builds one frame with string headers; for tests and benches.
#[doc(hidden)]
pub fn encode_frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = (OVERHEAD + h.len() + payload.len()) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    type Decoded = Vec<Result<(String, String, String, Vec<u8>), FrameError>>;

    fn run(max: usize, chunks: &[&[u8]]) -> (Decoded, bool, u64) {
        let mut d = FrameDecoder::new(max);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, |f| {
                out.push(f.map(|f| {
                    (
                        f.event_type.to_owned(),
                        f.message_type.to_owned(),
                        f.exception_type.to_owned(),
                        f.payload.to_vec(),
                    )
                }))
            });
        }
        let inside = d.finish();
        (out, inside, d.oversize_frames())
    }

    fn event(name: &str, payload: &str) -> Vec<u8> {
        encode_frame(
            &[
                (":event-type", name),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    }

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(&[0u8; 32]), 0x190A_55AD);
    }

    #[test]
    fn frames_come_out_whole_at_every_split() {
        let mut body = event("messageStart", r#"{"role":"assistant"}"#);
        body.extend(event("messageStop", r#"{"stopReason":"end_turn"}"#));
        let (whole, inside, _) = run(1 << 20, &[&body]);
        assert_eq!(whole.len(), 2);
        assert!(!inside);
        for cut in 0..=body.len() {
            let (split, inside, _) = run(1 << 20, &[&body[..cut], &body[cut..]]);
            assert_eq!(split, whole, "cut at {cut}");
            assert!(!inside);
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(run(1 << 20, &bytes).0, whole);
    }

    #[test]
    fn a_bad_message_crc_is_reported_and_the_next_frame_still_decodes() {
        let mut bad = event("contentBlockDelta", r#"{"delta":{"text":"x"}}"#);
        let at = bad.len() - 10;
        bad[at] ^= 0xff;
        let mut body = bad;
        body.extend(event("messageStop", "{}"));
        let (out, _, _) = run(1 << 20, &[&body]);
        assert_eq!(out[0], Err(FrameError::MessageCrc));
        assert_eq!(out[1].as_ref().map(|f| f.0.as_str()), Ok("messageStop"));
    }

    #[test]
    fn a_bad_prelude_crc_stops_decoding() {
        let mut body = event("messageStart", "{}");
        body[9] ^= 1;
        body.extend(event("messageStop", "{}"));
        let (out, inside, _) = run(1 << 20, &[&body]);
        assert_eq!(out, vec![Err(FrameError::PreludeCrc)]);
        assert!(!inside);
    }

    #[test]
    fn an_oversize_frame_is_skipped_and_counted_at_any_split() {
        let mut body = event("chunk", &"x".repeat(500));
        body.extend(event("messageStop", "{}"));
        for step in [1, 5, 13, body.len()] {
            let chunks: Vec<&[u8]> = body.chunks(step).collect();
            let (out, inside, oversize) = run(256, &chunks);
            assert_eq!(oversize, 1, "step {step}");
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].as_ref().map(|f| f.0.as_str()), Ok("messageStop"));
            assert!(!inside);
        }
    }

    #[test]
    fn exceptions_name_their_type_and_other_header_types_are_skipped() {
        // A frame with every non-string header type before the string ones.
        let mut h = Vec::new();
        let mut push = |name: &str, ty: u8, value: &[u8]| {
            h.push(name.len() as u8);
            h.extend_from_slice(name.as_bytes());
            h.push(ty);
            h.extend_from_slice(value);
        };
        push("t", 0, &[]);
        push("f", 1, &[]);
        push("b", 2, &[7]);
        push("s", 3, &[0, 1]);
        push("i", 4, &[0, 0, 0, 1]);
        push("l", 5, &[0; 8]);
        push("y", 6, &[0, 3, 1, 2, 3]);
        push("d", 8, &[0; 8]);
        push("u", 9, &[0; 16]);
        push(":message-type", 7, b"\x00\x09exception");
        push(":exception-type", 7, b"\x00\x13throttlingException");
        let payload = br#"{"message":"Too many requests"}"#;
        let total = (OVERHEAD + h.len() + payload.len()) as u32;
        let mut frame = Vec::new();
        frame.extend_from_slice(&total.to_be_bytes());
        frame.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let c = crc32(&frame);
        frame.extend_from_slice(&c.to_be_bytes());
        frame.extend_from_slice(&h);
        frame.extend_from_slice(payload);
        let c = crc32(&frame);
        frame.extend_from_slice(&c.to_be_bytes());
        let (out, _, _) = run(1 << 20, &[&frame]);
        let (_, mt, et, p) = out[0].clone().expect("frame");
        assert_eq!(
            (mt.as_str(), et.as_str()),
            ("exception", "throttlingException")
        );
        assert_eq!(p, payload);
    }

    #[test]
    fn a_body_cut_inside_a_frame_is_reported_at_finish() {
        let body = event("messageStop", "{}");
        for cut in 1..body.len() {
            let (out, inside, _) = run(1 << 20, &[&body[..cut]]);
            assert!(out.is_empty());
            assert!(inside, "cut at {cut}");
        }
    }
}
