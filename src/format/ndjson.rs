//! NDJSON framing: one JSON document per `\n`-terminated line, split on bytes, bounded.

use std::borrow::Cow;

pub struct LineSplitter {
    /// Bytes of the current line that arrived in earlier chunks.
    buf: Vec<u8>,
    max: usize,
    oversize: u64,
    /// The current line passed `max`: its bytes are dropped until its newline.
    skipping: bool,
}

impl LineSplitter {
    /// `max` is the longest line kept, in bytes, without its line end.
    pub fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max,
            oversize: 0,
            skipping: false,
        }
    }

    /// Feeds the next bytes; `on_line` gets each complete, non-blank line (without its `\r\n`
    /// or `\n`). Lines longer than `max` are skipped whole and counted, never cut and parsed.
    pub fn feed(&mut self, chunk: &[u8], mut on_line: impl FnMut(&str)) {
        let mut rest = chunk;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let piece = &rest[..end];
            rest = &rest[end + 1..];
            if self.skipping {
                self.skipping = false;
            } else if self.buf.is_empty() {
                // The common case: a whole line inside one chunk, passed on without a copy.
                if piece.len() > self.max {
                    self.oversize += 1;
                } else {
                    emit(piece, &mut on_line);
                }
            } else if self.buf.len() + piece.len() > self.max {
                self.oversize += 1;
                self.buf.clear();
            } else {
                self.buf.extend_from_slice(piece);
                emit(&self.buf, &mut on_line);
                self.buf.clear();
            }
        }
        if rest.is_empty() || self.skipping {
            return;
        }
        if self.buf.len() + rest.len() > self.max {
            self.oversize += 1;
            self.skipping = true;
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(rest);
        }
    }

    /// Lines skipped because they were longer than `max`.
    pub fn oversize_lines(&self) -> u64 {
        self.oversize
    }

    /// Buffer capacity held between feeds: one line's worth at most, whatever was fed.
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// End of body: the last line if it had no newline (and was not oversize).
    pub fn finish(&mut self) -> Option<String> {
        self.skipping = false;
        let tail = std::mem::take(&mut self.buf);
        let line = String::from_utf8_lossy(&tail);
        let line = line.trim();
        (!line.is_empty()).then(|| line.to_owned())
    }
}

fn emit(line: &[u8], on_line: &mut impl FnMut(&str)) {
    let line = line.trim_ascii();
    if line.is_empty() {
        return;
    }
    let text = match std::str::from_utf8(line) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(line),
    };
    on_line(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> (Vec<String>, u64, Option<String>) {
        let mut s = LineSplitter::new(max);
        let mut lines = Vec::new();
        for c in chunks {
            s.feed(c, |l| lines.push(l.to_owned()));
        }
        let tail = s.finish();
        (lines, s.oversize_lines(), tail)
    }

    #[test]
    fn lines_split_across_chunks_and_crlf_ends_come_out_whole() {
        let body = "{\"a\":1}\r\n\n{\"b\":\"é\"}\n{\"c\"";
        for cut in 0..=body.len() {
            let (l, o, t) = split(64, &[&body.as_bytes()[..cut], &body.as_bytes()[cut..]]);
            assert_eq!(l, ["{\"a\":1}", "{\"b\":\"é\"}"]);
            assert_eq!((o, t.as_deref()), (0, Some("{\"c\"")));
        }
    }

    #[test]
    fn an_oversize_line_is_skipped_and_counted_not_truncated() {
        let long = format!("{{\"x\":\"{}\"}}", "y".repeat(100));
        let body = format!("{long}\n{{\"ok\":1}}\n{long}");
        for step in [1, 7, body.len()] {
            let chunks: Vec<&[u8]> = body.as_bytes().chunks(step).collect();
            let (l, o, t) = split(32, &chunks);
            assert_eq!(l, ["{\"ok\":1}"], "step {step}");
            assert_eq!(o, 2, "step {step}");
            assert_eq!(t, None, "an oversize tail is not returned");
        }
    }

    #[test]
    fn memory_stays_bounded_by_the_line_limit() {
        let mut s = LineSplitter::new(16);
        for _ in 0..1000 {
            s.feed(&[b'x'; 100], |_| {});
        }
        assert!(s.buf.capacity() <= 64);
        assert_eq!(s.oversize_lines(), 1);
    }
}
