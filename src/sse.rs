//! Incremental event-stream (SSE) parser after the WHATWG algorithm: bytes in, events out, no
//! I/O. Lines are cut on bytes and decoded as UTF-8 only once whole, so a character or a CRLF
//! split across reads is handled; memory is bounded by `max_event_bytes`.

/// One dispatched event. `event` is empty when the stream named none (WHATWG's "message").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub event: &'a str,
    pub data: &'a str,
}

/// The end of one event block: a blank line. `event` is `None` when the block had no data (only
/// comments, `event:`, `id:` or `retry:`) or was too large to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boundary<'a> {
    pub event: Option<SseEvent<'a>>,
    /// Offset in the chunk just fed, right after the line end of the blank line.
    pub end: usize,
}

#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the current line that arrived in an earlier chunk.
    line: Vec<u8>,
    /// The current line began in an earlier chunk (its bytes are in `line`, or were dropped
    /// because the event is oversize): its end is never a blank line.
    mid_line: bool,
    /// The last chunk ended with CR: an LF at the start of the next one belongs to it.
    pending_cr: bool,
    /// Still at the very start of the stream (a BOM may come, possibly split).
    at_start: bool,
    event: String,
    data: String,
    /// Bytes held for the current event; past the limit it is skipped.
    held: usize,
    oversize: bool,
    max_event_bytes: usize,
    oversize_events: u64,
    bytes: u64,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    pub fn new(max_event_bytes: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            mid_line: false,
            pending_cr: false,
            at_start: true,
            event: String::new(),
            data: String::new(),
            held: 0,
            oversize: false,
            max_event_bytes,
            oversize_events: 0,
            bytes: 0,
        }
    }

    /// Events skipped because they were larger than `max_event_bytes`.
    pub fn oversize_events(&self) -> u64 {
        self.oversize_events
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Buffer capacity held between feeds: one event's worth at most (its lines as bytes, its
    /// data and name as text), whatever was fed.
    pub fn held_bytes(&self) -> usize {
        self.line.capacity() + self.event.capacity() + self.data.capacity()
    }

    /// Whether an event (or line) is under way: at end of stream it would be discarded.
    pub fn has_partial_event(&self) -> bool {
        self.mid_line || !self.line.is_empty() || !self.data.is_empty() || self.oversize
    }

    /// Feeds the next bytes of the stream; `on_boundary` is called at every blank line.
    pub fn feed(&mut self, chunk: &[u8], mut on_boundary: impl FnMut(Boundary<'_>)) {
        self.bytes += chunk.len() as u64;
        let mut pos = 0;
        // An empty chunk (an empty DATA frame) between a CR and its LF changes nothing.
        if self.pending_cr && !chunk.is_empty() {
            self.pending_cr = false;
            if chunk.first() == Some(&b'\n') {
                pos = 1;
            }
        }
        if self.at_start {
            // Hold bytes until we know whether the stream starts with a BOM.
            let need = BOM.len() - self.line.len();
            let take = need.min(chunk.len() - pos);
            let mut head = self.line.clone();
            head.extend_from_slice(&chunk[pos..pos + take]);
            if BOM.starts_with(&head) {
                if head.len() < BOM.len() {
                    self.line = head;
                    return;
                }
                self.line.clear();
                pos += take;
                self.at_start = false;
            } else {
                // The bytes held as a possible BOM start the first line.
                self.at_start = false;
                self.held = self.line.len();
                self.mid_line = !self.line.is_empty();
            }
        }
        while pos < chunk.len() {
            let rest = &chunk[pos..];
            match memchr::memchr2(b'\n', b'\r', rest) {
                None => {
                    self.hold(rest);
                    self.mid_line = true;
                    return;
                }
                Some(i) => {
                    let terminator = rest[i];
                    let mut end = pos + i + 1;
                    if terminator == b'\r' {
                        match chunk.get(end) {
                            Some(b'\n') => end += 1,
                            Some(_) => {}
                            None => self.pending_cr = true,
                        }
                    }
                    if self.mid_line {
                        self.mid_line = false;
                        self.hold(&rest[..i]);
                        let line = std::mem::take(&mut self.line);
                        self.line_done(&line, true, end, &mut on_boundary);
                        self.line = line;
                        self.line.clear();
                    } else {
                        self.held += i;
                        self.line_done(&rest[..i], false, end, &mut on_boundary);
                    }
                    pos = end;
                }
            }
        }
    }

    /// End of stream: an event without its blank line is discarded. Returns whether one was.
    pub fn finish(&mut self) -> bool {
        let partial = self.has_partial_event();
        self.mid_line = false;
        self.line.clear();
        self.data.clear();
        self.event.clear();
        self.held = 0;
        self.oversize = false;
        partial
    }

    /// Keeps bytes of a line that goes on in the next chunk, counting them toward the event.
    fn hold(&mut self, bytes: &[u8]) {
        self.held += bytes.len();
        if self.held > self.max_event_bytes {
            self.oversize = true;
            self.line.clear();
            self.data.clear();
        } else if !self.oversize {
            self.line.extend_from_slice(bytes);
        }
    }

    /// A whole line (without its end), already counted in `held`. `continued` when it began
    /// in an earlier chunk: then it is not blank even if its bytes were dropped as oversize.
    fn line_done(
        &mut self,
        line: &[u8],
        continued: bool,
        end: usize,
        on_boundary: &mut impl FnMut(Boundary<'_>),
    ) {
        if line.is_empty() && !continued {
            let event = if self.oversize {
                self.oversize_events += 1;
                None
            } else if self.data.is_empty() {
                None
            } else {
                if self.data.ends_with('\n') {
                    self.data.pop();
                }
                Some(SseEvent {
                    event: &self.event,
                    data: &self.data,
                })
            };
            on_boundary(Boundary { event, end });
            self.data.clear();
            self.event.clear();
            self.held = 0;
            self.oversize = false;
            return;
        }
        if self.held > self.max_event_bytes {
            self.oversize = true;
            self.data.clear();
        }
        if self.oversize || line.first() == Some(&b':') {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                push_utf8(&mut self.data, value);
                self.data.push('\n');
            }
            b"event" => {
                self.event.clear();
                push_utf8(&mut self.event, value);
            }
            _ => {}
        }
    }
}

fn push_utf8(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => out.push_str(s),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events as (name, data), every boundary's end offset in stream terms, and whether an
    /// unterminated event was left at the end.
    type Parsed = (Vec<(String, String)>, Vec<usize>, bool);

    fn parse_in(chunks: &[&[u8]]) -> Parsed {
        let mut p = SseParser::new(1 << 20);
        let mut events = Vec::new();
        let mut ends = Vec::new();
        let mut offset = 0;
        for c in chunks {
            p.feed(c, |b| {
                ends.push(offset + b.end);
                if let Some(e) = b.event {
                    events.push((e.event.to_string(), e.data.to_string()));
                }
            });
            offset += c.len();
        }
        let partial = p.finish();
        (events, ends, partial)
    }

    fn every_split(body: &[u8]) -> Vec<Parsed> {
        let mut out = vec![parse_in(&[body])];
        for i in 0..=body.len() {
            // Splits between CR and LF move a boundary by one byte; they are checked on their own.
            if i > 0 && body[i - 1] == b'\r' && body.get(i) == Some(&b'\n') {
                let (events, _, partial) = parse_in(&[&body[..i], &body[i..]]);
                out.push((events, out[0].1.clone(), partial));
                continue;
            }
            out.push(parse_in(&[&body[..i], &body[i..]]));
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        let (events, _, partial) = parse_in(&bytes);
        out.push((events, out[0].1.clone(), partial));
        out
    }

    fn check(body: &[u8], want: &[(&str, &str)]) {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        for (got, _, _) in every_split(body) {
            assert_eq!(got, want, "body {:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn data_with_or_without_the_space() {
        check(
            b"data:x\n\ndata: y\n\ndata:  z\n\n",
            &[("", "x"), ("", "y"), ("", " z")],
        );
    }

    #[test]
    fn crlf_cr_and_lf_line_ends_even_split_between_cr_and_lf() {
        check(
            b"data: a\r\n\r\ndata: b\r\rdata: c\n\n",
            &[("", "a"), ("", "b"), ("", "c")],
        );
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        check(b"data: {\"a\":\ndata: 1}\n\n", &[("", "{\"a\":\n1}")]);
    }

    #[test]
    fn event_name_anywhere_in_the_block_and_comments_inside_it() {
        check(
            b"data: 1\n: keep-alive\nevent: ping\n\n:\n\nevent: x\n\n",
            &[("ping", "1")],
        );
    }

    #[test]
    fn a_leading_bom_is_dropped_even_when_split() {
        check(b"\xEF\xBB\xBFdata: a\n\n", &[("", "a")]);
        // Only at the very start.
        check(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n", &[("", "a")]);
    }

    #[test]
    fn multi_byte_characters_split_across_reads_stay_whole() {
        check("data: 你好→🙂\n\n".as_bytes(), &[("", "你好→🙂")]);
    }

    #[test]
    fn an_unterminated_last_event_is_discarded() {
        let (events, _, partial) = parse_in(&[b"data: a\n\ndata: {\"trunc"]);
        assert_eq!(events, [("".to_string(), "a".to_string())]);
        assert!(partial);
    }

    #[test]
    fn a_field_without_colon_and_unknown_fields() {
        check(
            b"data\ndata\n\nid: 7\nretry: 10\nfoo: bar\ndata: z\n\n",
            &[("", "\n"), ("", "z")],
        );
    }

    #[test]
    fn boundaries_mark_the_end_of_each_blank_line_in_stream_offsets() {
        let body = b"data: a\n\n: c\n\ndata: b\r\n\r\n";
        for (_, ends, _) in every_split(body) {
            assert_eq!(ends, [9, 14, body.len()]);
        }
        // A CRLF split between reads ends the line at the CR: the LF has not arrived yet.
        let (_, ends, _) = parse_in(&[&body[..body.len() - 1], &body[body.len() - 1..]]);
        assert_eq!(ends, [9, 14, body.len() - 1]);
    }

    #[test]
    fn an_oversize_event_is_skipped_and_counted_and_parsing_goes_on() {
        let mut p = SseParser::new(16);
        let mut events = Vec::new();
        let body = format!("data: {}\n\ndata: ok\n\n", "x".repeat(100));
        for c in body.as_bytes().chunks(7) {
            p.feed(c, |b| {
                if let Some(e) = b.event {
                    events.push(e.data.to_string());
                }
            });
        }
        assert_eq!(events, ["ok"]);
        assert_eq!(p.oversize_events(), 1);
        assert!(p.line.capacity() <= 64, "memory must stay bounded");
    }
}
