//! NDJSON framing: one JSON document per `\n`-terminated line.

pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    oversize: u64,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max,
            oversize: 0,
        }
    }
    pub fn feed(&mut self, chunk: &[u8], mut on_line: impl FnMut(&str)) {
        for &b in chunk {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.buf).into_owned();
                self.buf.clear();
                if !line.trim().is_empty() {
                    on_line(&line);
                }
            } else if self.buf.len() < self.max {
                self.buf.push(b);
            }
        }
    }
    pub fn oversize_lines(&self) -> u64 {
        self.oversize
    }
    pub fn finish(&mut self) -> Option<String> {
        let line = String::from_utf8_lossy(&self.buf).trim().to_string();
        self.buf.clear();
        (!line.is_empty()).then_some(line)
    }
}
