//! Redaction at ingest: personal data and secrets in captured content are replaced with typed
//! placeholders (`[EMAIL]`, `[CARD]`, ...) before anything is stored or exported. One pass of
//! one combined regex; matches that need a checksum (cards: Luhn, IBAN: mod 97) or a parse
//! (IPv6) are replaced only when they pass it.
//!
//! The patterns are written with `\b` and `\d` and compiled with ASCII ones, `(?-u:\b)` and
//! `[0-9]`. The regex crate's fast engine (a lazy DFA) follows a Unicode `\b` only through
//! ASCII text, and not always then: text with digits and findings, or one accented letter,
//! curly quote or emoji, sent it to engines 30 to 150 times slower (a 160 kB conversation took
//! 55-65 ms of a runtime worker; see `benches/redact.rs`). An ASCII `\b` counts a non-ASCII
//! letter as a non-word character, so it finds what the Unicode one finds and more
//! (`日本語jane@example.com` is redacted, which a Unicode `\b` would not be); on ASCII text the
//! two are the same (a test compares them). Decimal digits other than ASCII's (Arabic-Indic,
//! Devanagari, full-width) are matched as the ASCII digits of the same value: the text is
//! searched with them rewritten, and what is found replaced in the text as it was. So the
//! checksums see every digit, and no text needs the slow engines.

use std::borrow::Cow;

use regex::Regex;
use regex_automata::{Input, meta};

/// Placeholders by kind, in the priority order the combined pattern tries them (compiled with
/// ASCII `\b` and `\d`: see the module's note). Each match holds a digit, an `@` or a `:`, or
/// begins as [`key_at`] finds; [`could_match`] relies on it, and a test checks it.
const PATTERNS: &[(&str, &str)] = &[
    (
        "API_KEY",
        r"\b(?:sk-(?:proj-|svcacct-|admin-|ant-(?:api|admin)\d{2}-)?[A-Za-z0-9_\-]{20,}|AIza[0-9A-Za-z_\-]{35}|xai-[A-Za-z0-9]{20,}|gsk_[A-Za-z0-9]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|hf_[A-Za-z0-9]{30,}|xox[abpr]-[A-Za-z0-9\-]{10,}|AZURE_[A-Za-z0-9]{32})\b",
    ),
    ("BEARER_TOKEN", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{16,}"),
    (
        "EMAIL",
        r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b",
    ),
    ("IBAN", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"),
    ("CARD", r"\b\d(?:[ \-]?\d){12,18}\b"),
    ("SSN", r"\b\d{3}-\d{2}-\d{4}\b"),
    (
        "IP",
        r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b",
    ),
    ("IPV6", r"(?i)(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}"),
    (
        "PHONE",
        r"(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\b\d{2,4}[ .\-])\d{3,4}[ .\-]\d{3,4}\b|\+\d{1,3}(?:[ .\-]?(?:\(\d{1,4}\))?[ .\-]?\d{1,5}){1,6}\b",
    ),
    // National numbers with their trunk 0: in pairs, one separator throughout (France,
    // Belgium), or an area code and the rest (Germany, the UK, the Netherlands).
    (
        "TRUNK_PHONE",
        r"\b0[1-9](?: \d{2}){4}\b|\b0[1-9](?:\.\d{2}){4}\b|\b0[1-9](?:-\d{2}){4}\b|\b0[1-9]\d{1,3}[ /\-]\d{5,8}\b",
    ),
];

/// Whether [`could_match`] looks closer at a byte: a digit, `@` or `:` (what most patterns
/// hold), a byte a key or token may begin or end its prefix with ([`key_at`]), or non-ASCII
/// (a digit other than ASCII's).
const fn notable(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b'@' | b':' | b'-' | b'_' | b'A' | b'b' | b'B') || b >= 0x80
}

/// [`notable`] of every byte, looked up: one load a byte.
const NOTABLE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = notable(b as u8);
        b += 1;
    }
    table
};

/// Whether a key or token that holds no digit begins around `bytes[i]` (a `-`, `_`, `A`, `b`
/// or `B`): `sk-`, `xai-` and `xox?-` end at a `-`, `gsk_`, `hf_`, `gh?_` and `AZURE_` at a
/// `_`; `AIza`, `AKIA` and `ASIA` begin at the `A`, `bearer` (in any case) at the `b`. These
/// are the beginnings of the `API_KEY` and `BEARER_TOKEN` patterns, looser (`?` is any byte).
fn key_at(bytes: &[u8], i: usize) -> bool {
    let before = &bytes[..i];
    let after = &bytes[i..];
    let ends = |s: &[u8]| {
        before.len() >= s.len()
            && s.iter()
                .zip(&before[before.len() - s.len()..])
                .all(|(&want, &have)| want == b'?' || want == have)
    };
    match bytes[i] {
        b'-' => ends(b"sk") || ends(b"xai") || ends(b"xox?"),
        b'_' => ends(b"sk") || ends(b"hf") || ends(b"gh?") || ends(b"AZURE"),
        b'A' => matches!(after.get(..4), Some(b"AIza" | b"AKIA" | b"ASIA")),
        _ => after
            .get(..6)
            .is_some_and(|b| b.eq_ignore_ascii_case(b"bearer")),
    }
}

/// Whether a built-in pattern could match anything in `text`. Most text capture writes (a
/// part type, a role, a system prompt, a question in prose) holds nothing to redact, and the
/// combined pattern costs about ten instructions a byte to find nothing; this look, a load
/// and a test.
/// Every built-in match holds a digit, an `@` or a `:`, or is a key or token beginning as
/// [`key_at`] finds (a test checks it). Any decimal digit is searched as an ASCII one, so
/// non-ASCII text is asked `is_numeric`, which holds for those and more.
fn could_match(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut ascii = true;
    // Sixteen bytes at a time while none is notable (most prose), without a branch a byte:
    // half as fast again as the table alone on prose (`benches/redact.rs`: 2.7 GiB/s).
    let mut from = 0;
    for chunk in bytes.as_chunks::<16>().0 {
        let mut any = 0u8;
        for &b in chunk {
            any |= u8::from(b.wrapping_sub(b'0') < 11)
                | u8::from(b.wrapping_sub(b'@') < 3)
                | u8::from(b == b'-')
                | u8::from(b == b'_')
                | u8::from(b == b'b')
                | (b >> 7);
        }
        if any != 0 {
            break;
        }
        from += 16;
    }
    for (i, &b) in bytes.iter().enumerate().skip(from) {
        if !NOTABLE[usize::from(b)] {
            continue;
        }
        match b {
            b'0'..=b'9' | b'@' | b':' => return true,
            0x80.. => ascii = false,
            _ if key_at(bytes, i) => return true,
            _ => {}
        }
    }
    !ascii && text.chars().any(char::is_numeric)
}

/// A compiled redactor: the built-in kinds plus configured patterns.
pub struct Redactor {
    /// The built-in patterns (ASCII `\b` and `\d`), one pattern each, in [`PATTERNS`]' order:
    /// a search says which one matched, in that order of preference, as an alternation of
    /// them would (a test compares the two). With the alternation's capture groups telling it
    /// instead, every finding ran a slow engine over its match to resolve them: on a long
    /// conversation with an address in each paragraph, most of the store's cost.
    combined: meta::Regex,
    /// A decimal digit other than ASCII's.
    other_digit: Regex,
    custom: Vec<(Regex, String)>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("custom", &self.custom.len())
            .finish()
    }
}

impl Redactor {
    /// `custom` is a list of (name, regex); a match is replaced with `[NAME]`.
    pub fn new(custom: &[(String, String)]) -> Result<Redactor, String> {
        let ascii: Vec<String> = PATTERNS
            .iter()
            .map(|(_, p)| p.replace(r"\b", r"(?-u:\b)").replace(r"\d", "[0-9]"))
            .collect();
        let combined = meta::Regex::new_many(&ascii)
            .map_err(|e| format!("built-in redaction patterns: {e}"))?;
        let other_digit =
            Regex::new(r"[\d--0-9]").map_err(|e| format!("built-in redaction patterns: {e}"))?;
        let custom = custom
            .iter()
            .map(|(name, p)| {
                Regex::new(p)
                    .map(|r| (r, format!("[{}]", name.to_ascii_uppercase())))
                    .map_err(|e| format!("redaction pattern {name:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Redactor {
            combined,
            other_digit,
            custom,
        })
    }

    /// Whether it has patterns of its own besides the built-in ones.
    pub fn has_custom(&self) -> bool {
        !self.custom.is_empty()
    }

    /// The text with every finding replaced; borrowed when nothing was found.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = if could_match(text) {
            self.built_in(text)
        } else {
            Cow::Borrowed(text)
        };
        for (re, placeholder) in &self.custom {
            if let Cow::Owned(s) = re.replace_all(&out, placeholder.as_str()) {
                out = Cow::Owned(s);
            }
        }
        out
    }

    /// What the built-in patterns find in `text`, replaced. The search goes on after each
    /// match, replaced or left as it is (a number failing its checksum, a version string), or
    /// after the card found at the end of the digit groups a failed match began
    /// ([`card_ending_run`]); except after a `+` number too short to be a phone: it goes on
    /// after the `+`, so the address in `+10.0.0.1` is still found.
    fn built_in<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let rewritten = self.ascii_digits(text);
        let searched = rewritten.as_ref().map_or(text, |r| r.text.as_str());
        // Most text holds nothing to redact: a match test first, which needs no capture
        // groups.
        if !self.combined.is_match(searched) {
            return Cow::Borrowed(text);
        }
        // Found in the searched text, replaced in the text as it was.
        let original = |at: usize| rewritten.as_ref().map_or(at, |r| r.from[at] as usize);
        let mut out = String::new();
        let mut copied = 0;
        let mut from = 0;
        while let Some(m) = self.combined.search(&Input::new(searched).range(from..)) {
            let kind = PATTERNS[m.pattern().as_usize()].0;
            match placeholder(searched, kind, m.start(), m.end()) {
                Some(placeholder) => {
                    out.push_str(&text[copied..original(m.start())]);
                    out.push('[');
                    out.push_str(placeholder);
                    out.push(']');
                    copied = original(m.end());
                    from = m.end();
                }
                None if kind == "PHONE" => from = m.start() + 1,
                None => {
                    // A run of digits failing the Luhn check may hold a card with more digits
                    // beside it: its security code or expiry month (`4111 1111 1111 1111 123`);
                    // or a card may end the run of digit groups a failed match began.
                    let card = kind == "CARD";
                    let within = card
                        .then(|| card_within(&searched[m.start()..m.end()]))
                        .flatten()
                        .map(|(start, end)| (m.start() + start, m.start() + end));
                    let ending = || {
                        (card || kind == "IBAN")
                            .then(|| card_ending_run(searched, m.start(), m.end(), card))
                            .flatten()
                    };
                    from = m.end();
                    if let Some((start, end)) = within.or_else(ending) {
                        out.push_str(&text[copied..original(start)]);
                        out.push_str("[CARD]");
                        copied = original(end);
                        from = from.max(end);
                    }
                }
            }
            if from >= searched.len() {
                break;
            }
        }
        if copied == 0 {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }

    /// `text` with each decimal digit other than ASCII's written as the ASCII digit of its
    /// value; `None` when it has none.
    fn ascii_digits(&self, text: &str) -> Option<Rewritten> {
        if text.is_ascii() || !self.other_digit.is_match(text) {
            return None;
        }
        let is_digit = |c: char| self.other_digit.is_match(c.encode_utf8(&mut [0; 4]));
        let mut rewritten = Rewritten {
            text: String::with_capacity(text.len()),
            from: Vec::with_capacity(text.len() + 1),
        };
        // The zero of the last digit's set: the digits of one text are mostly of one script,
        // and finding a zero takes a look at each code point before it.
        let mut zero: Option<u32> = None;
        let mut copied = 0;
        for m in self.other_digit.find_iter(text) {
            rewritten.copy(text, copied, m.start());
            let c = m.as_str().chars().next().unwrap_or('0') as u32;
            let value = match zero {
                Some(z) if (z..z + 10).contains(&c) => c - z,
                _ => {
                    let value = char::from_u32(c).map_or(0, |c| digit_value(c, is_digit));
                    zero = Some(c - u32::from(value));
                    u32::from(value)
                }
            };
            rewritten.text.push(char::from(b'0' + value as u8));
            rewritten.from.push(m.start() as u32);
            copied = m.end();
        }
        rewritten.copy(text, copied, text.len());
        rewritten.from.push(text.len() as u32);
        Some(rewritten)
    }
}

/// A text with its decimal digits rewritten as ASCII ones.
struct Rewritten {
    text: String,
    /// Where each byte of `text` (and its end) came from in the text as it was (captured text
    /// is far below 4 GiB: the request body limit).
    from: Vec<u32>,
}

impl Rewritten {
    /// Copies `original[start..end]` as it is.
    fn copy(&mut self, original: &str, start: usize, end: usize) {
        self.text.push_str(&original[start..end]);
        self.from.extend(start as u32..end as u32);
    }
}

/// The value of a decimal digit (`is_digit` holds for it): Unicode encodes each set of them as
/// ten code points in order, zero first, and some sets adjoin (the mathematical digits).
fn digit_value(c: char, is_digit: impl Fn(char) -> bool) -> u8 {
    let mut first = c as u32;
    while let Some(before) = first.checked_sub(1).and_then(char::from_u32)
        && is_digit(before)
    {
        first -= 1;
    }
    ((c as u32 - first) % 10) as u8
}

/// The placeholder for a match, `None` when it is left as it is (it fails its kind's check).
fn placeholder(text: &str, kind: &'static str, start: usize, end: usize) -> Option<&'static str> {
    let whole = &text[start..end];
    let keep = match kind {
        "CARD" => !luhn(whole),
        "IBAN" => !iban_valid(whole),
        "SSN" => !ssn_plausible(whole),
        // Shorter than any number with its country code (E.164): a sum, a score.
        "PHONE" => whole.bytes().filter(u8::is_ascii_digit).count() < 8,
        "IPV6" => whole.parse::<std::net::Ipv6Addr>().is_err(),
        // Part of a longer dotted number (a version string), not an address.
        "IP" => dotted_neighbour(text, start, end),
        "TRUNK_PHONE" => chained(text, start, end),
        _ => false,
    };
    match kind {
        _ if keep => None,
        "IPV6" => Some("IP"),
        "TRUNK_PHONE" => Some("PHONE"),
        name => Some(name),
    }
}

/// Part of a longer chain of groups (a MAC address `08-00-27-12-34-56`, an id
/// `INV-042-12345`): right after it, one of its own separators and a digit (a German extension,
/// `089 12345-0`, is not a longer chain), and after a number in pairs, a pair (a list, `01 02
/// 03 04 05 06`; `06 12 34 56 78 2 fois` is a number and a count); right before it, a `-` after
/// a letter or a digit, or a `.` or `/` after a digit (`Tél.01 23 45 67 89` and `Fax/030
/// 1234567` are numbers).
fn chained(text: &str, start: usize, end: usize) -> bool {
    let b = text.as_bytes();
    let own = |c: u8| matches!(c, b' ' | b'.' | b'-' | b'/') && b[start..end].contains(&c);
    let in_pairs = b[start..end].iter().filter(|c| !c.is_ascii_digit()).count() == 4;
    let next_group = b.get(end + 1..).map_or(0, |rest| {
        rest.iter().take_while(|c| c.is_ascii_digit()).count()
    });
    let after =
        end + 1 < b.len() && own(b[end]) && next_group > 0 && (!in_pairs || next_group == 2);
    let before = start >= 2
        && match b[start - 1] {
            b'-' => b[start - 2].is_ascii_alphanumeric(),
            b'.' | b'/' => b[start - 2].is_ascii_digit(),
            _ => false,
        };
    after || before
}

fn dotted_neighbour(text: &str, start: usize, end: usize) -> bool {
    let b = text.as_bytes();
    let before = start >= 2 && b[start - 1] == b'.' && b[start - 2].is_ascii_digit();
    let after = end + 1 < b.len() && b[end] == b'.' && b[end + 1].is_ascii_digit();
    before || after
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// Card numbers: 13 to 19 digits passing the Luhn check.
fn luhn(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                if x * 2 > 9 { x * 2 - 9 } else { x * 2 }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The card inside a run of digit groups that fails the Luhn check as a whole, as a card is
/// written beside its security code or expiry month: the run without its last group (or else
/// its first) of 1 to 4 digits, when what is left is groups of at least 4 digits, 13 to 19 in
/// all, passing the check. Its byte range in `run`. A list of short numbers (`1 2 3 ... 15`)
/// holds none, nor does a run of digits with no separator.
fn card_within(run: &str) -> Option<(usize, usize)> {
    let mut groups = Vec::new();
    let mut start = None;
    for (i, b) in run.bytes().chain([b' ']).enumerate() {
        match (b.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                groups.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    let digits = |g: &[(usize, usize)]| g.iter().map(|(s, e)| e - s).sum::<usize>();
    let n = groups.len();
    if n < 2 {
        return None;
    }
    [
        (&groups[n - 1..], &groups[..n - 1]),
        (&groups[..1], &groups[1..]),
    ]
    .into_iter()
    .filter(|(dropped, _)| (1..=4).contains(&digits(dropped)))
    .map(|(_, card)| (card[0].0, card[card.len() - 1].1, card))
    .find(|&(start, end, card)| {
        card.iter().all(|(s, e)| e - s >= 4)
            && (13..=19).contains(&digits(card))
            && luhn(&run[start..end])
    })
    .map(|(start, end, _)| (start, end))
}

/// A card at the end of a run of digit groups that a match (`start..end` of `searched`) failing
/// its check took the start of: after a year or a reference the card pattern took with it
/// (`2024 4111 1111 1111 1111`: twenty digits, of which the pattern takes the first sixteen), or
/// after letters and digits taken for an IBAN (`AB12 4111 1111 1111 1111`). The run goes on
/// from the match's end through more groups after a space or a `-`; a card match counts only
/// when the run goes on past it (`continued`): one that ends with its run was given to
/// [`card_within`]. The card is the longest whole groups at the run's end, after its first
/// group, each of at least 4 digits, 13 to 19 in all, starting as issued cards start
/// ([`issued`]) and passing the Luhn check. As it ends the run, the search goes on after the
/// run, and nothing a match would have found in it is left. When no card ends the run, one
/// ending before its last group of 1 to 3 digits (a security code) is looked for the same way.
/// Its range in `searched`.
fn card_ending_run(
    searched: &str,
    start: usize,
    end: usize,
    continued: bool,
) -> Option<(usize, usize)> {
    let bytes = searched.as_bytes();
    let mut run_end = end;
    // Digits past the match: past 19, a card at the run's end is a match of its own later on
    // (and a long list is not walked to its end from each of its matches).
    let mut past = 0;
    while run_end + 1 < bytes.len()
        && matches!(bytes[run_end], b' ' | b'-')
        && bytes[run_end + 1].is_ascii_digit()
    {
        run_end += 1;
        while run_end < bytes.len() && bytes[run_end].is_ascii_digit() {
            run_end += 1;
            past += 1;
        }
        if past > 19 {
            return None;
        }
    }
    let glued = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    if (continued && run_end == end) || bytes.get(run_end).is_some_and(glued) {
        return None;
    }
    // The card ends the run, or the group before a last one of 1 to 3 digits (its security
    // code or expiry month: `2024 4111 1111 1111 1111 123`). Not 4: in a long run of groups of
    // four (an id, a serial) some sixteen digits before the last group pass the check.
    let last_sep = searched[start..run_end]
        .rfind([' ', '-'])
        .map(|i| start + i)
        .filter(|&sep| (1..=3).contains(&(run_end - sep - 1)));
    [Some(run_end), last_sep]
        .into_iter()
        .flatten()
        .find_map(|card_end| card_ending_at(searched, start, card_end))
}

/// The longest card of [`card_ending_run`] that ends at `card_end`: whole groups of at least 4
/// digits after the first group of `searched[start..card_end]`.
fn card_ending_at(searched: &str, start: usize, card_end: usize) -> Option<(usize, usize)> {
    let mut card_start = None;
    let mut digits = 0;
    let mut at = card_end;
    while let Some(sep) = searched[start..at].rfind([' ', '-']).map(|i| start + i) {
        let group = &searched[sep + 1..at];
        if group.len() < 4 || !group.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        digits += group.len();
        if digits > 19 {
            break;
        }
        let card = &searched[sep + 1..card_end];
        if digits >= 13 && issued(card) && luhn(card) {
            card_start = Some(sep + 1);
        }
        at = sep;
    }
    card_start.map(|s| (s, card_end))
}

/// Starts as the card networks' numbers start: 3 to 6 (American Express, Diners, JCB, Visa,
/// Mastercard, Discover, UnionPay, Maestro, RuPay), 2200 to 2204 (Mir), 2221 to 2720
/// (Mastercard), 81 and 82 (UnionPay, RuPay) or 9792 (Troy); not UATP's 1, as years start. A
/// run of years or of other numbers in groups of four mostly does not (`1954 1955 1956 1957`
/// passes Luhn): one taken from the end of a longer run has this to pass as well as the check.
fn issued(card: &str) -> bool {
    // Its first four digits as a number (a card has at least 13).
    let n = card
        .bytes()
        .filter(u8::is_ascii_digit)
        .take(4)
        .fold(0u32, |n, b| n * 10 + u32::from(b - b'0'));
    matches!(n / 1000, 3..=6) || matches!(n, 2200..=2204 | 2221..=2720 | 8100..=8299 | 9792)
}

/// IBAN: move the first four characters to the end, letters to numbers, mod 97 must be 1.
/// Only ASCII is an IBAN (the patterns match only ASCII digits: see the module's note).
fn iban_valid(s: &str) -> bool {
    if !s.is_ascii() {
        return false;
    }
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rearranged = format!("{}{}", &compact[4..], &compact[..4]);
    let mut rem: u32 = 0;
    for c in rearranged.chars() {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// US SSNs never start with 000, 666 or 9, and have no all-zero group. The patterns match only
/// ASCII digits (other digits are searched as the ASCII ones); anything else is taken as
/// plausible rather than cut between the bytes of a character.
fn ssn_plausible(s: &str) -> bool {
    if !s.is_ascii() {
        return true;
    }
    let area = &s[..3];
    area != "000"
        && area != "666"
        && !area.starts_with('9')
        && &s[4..6] != "00"
        && &s[7..] != "0000"
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r() -> Redactor {
        Redactor::new(&[("ticket".into(), r"TICKET-\d+".into())]).unwrap()
    }

    /// The built-in patterns as one alternation, each in a group named by its placeholder,
    /// each rewritten by `rewrite`.
    fn alternation(rewrite: impl Fn(&str) -> String) -> Regex {
        let joined = PATTERNS
            .iter()
            .map(|(name, p)| format!("(?P<{name}>{})", rewrite(p)))
            .collect::<Vec<_>>()
            .join("|");
        Regex::new(&joined).unwrap()
    }

    /// The built-in patterns as written (Unicode `\b` and `\d`), as one alternation.
    fn as_written() -> Regex {
        alternation(str::to_string)
    }

    /// Searched from any place, in any text, the patterns one by one find what their
    /// alternation (with the same ASCII `\b` and `\d`) finds, and say which one as its groups
    /// do: the context before the place counts for both.
    #[test]
    fn the_patterns_one_by_one_find_what_their_alternation_finds_from_any_place() {
        let ours = Redactor::new(&[]).unwrap();
        let theirs = alternation(|p| p.replace(r"\b", r"(?-u:\b)").replace(r"\d", "[0-9]"));
        for text in [
            "Mail jane.doe@example.com or call +1 415-555-0132; card 4111 1111 1111 1111.",
            "Écris à jane@exämple.fr, tél. 06 12 34 56 78, IBAN FR76 3000 6000 0112 3456 7890 189",
            "Bearer\u{a0}abcdefghijklmnopqrstu and ſk-proj-abcdefghijklmnopqrstuvwx 10.1.2.3.4",
            "日本語jane@example.com ::1 fe80::1ff:fe23:4567:890a SSN 123-45-6789 sk-abc",
        ] {
            for from in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
                let a = ours
                    .combined
                    .search(&Input::new(text).range(from..))
                    .map(|m| (m.start(), m.end(), PATTERNS[m.pattern().as_usize()].0));
                let b = theirs.captures_at(text, from).map(|c| {
                    let m = c.get(0).unwrap();
                    let kind = PATTERNS
                        .iter()
                        .find(|(n, _)| c.name(n).is_some())
                        .unwrap()
                        .0;
                    (m.start(), m.end(), kind)
                });
                assert_eq!(a, b, "{text:?} from {from}");
            }
        }
    }

    #[test]
    fn positive_samples_are_replaced_with_typed_placeholders() {
        let cases = [
            (
                "mail me at jane.doe+x@example.co.uk now",
                "mail me at [EMAIL] now",
            ),
            ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
            ("card 5500-0000-0000-0004", "card [CARD]"),
            ("ssn 123-45-6789", "ssn [SSN]"),
            (
                "iban DE89 3704 0044 0532 0130 00 thanks",
                "iban [IBAN] thanks",
            ),
            ("iban GB82WEST12345698765432", "iban [IBAN]"),
            (
                "key sk-proj-abcdefghijklmnopqrstuvwxyz012345",
                "key [API_KEY]",
            ),
            (
                "key sk-ant-api03-abcdefghijklmnopqrstuvwxyz_-0123",
                "key [API_KEY]",
            ),
            (
                "google AIzaSyA1234567890abcdefghijklmnopqrstuv",
                "google [API_KEY]",
            ),
            ("aws AKIAIOSFODNN7EXAMPLE", "aws [API_KEY]"),
            (
                "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def",
                "Authorization: [BEARER_TOKEN]",
            ),
            ("from 192.168.1.20 to 10.0.0.1", "from [IP] to [IP]"),
            ("v6 2001:db8::8a2e:370:7334 here", "v6 [IP] here"),
            (
                "call +1 415-555-0132 or (020) 7946 0958",
                "call [PHONE] or [PHONE]",
            ),
            ("e164 +447911123456", "e164 [PHONE]"),
            // International numbers in their countries' own groupings.
            ("appelez le +33 6 12 34 56 78.", "appelez le [PHONE]."),
            ("Tel. +49 30 12345678", "Tel. [PHONE]"),
            ("ring +44 (0)20 7946 0958", "ring [PHONE]"),
            ("call +91 98765 43210 now", "call [PHONE] now"),
            ("電話 +81 3-1234-5678", "電話 [PHONE]"),
            // National numbers with their trunk 0: in pairs (France, Belgium), or an area
            // code and the rest (Germany, the UK, the Netherlands, Italy).
            ("appelez le 06 12 34 56 78.", "appelez le [PHONE]."),
            (
                "appelez le 06 12 34 56 78 2 fois",
                "appelez le [PHONE] 2 fois",
            ),
            ("au 01.23.45.67.89.123", "au [PHONE].123"),
            ("tél. 01.23.45.67.89", "tél. [PHONE]"),
            ("Tel. 030 12345678", "Tel. [PHONE]"),
            ("Handy 0171/1234567", "Handy [PHONE]"),
            ("mobile 07700 900123", "mobile [PHONE]"),
            ("bel 020-7946095 nu", "bel [PHONE] nu"),
            ("Durchwahl 089 12345-0", "Durchwahl [PHONE]-0"),
            ("Tél.01 23 45 67 89", "Tél.[PHONE]"),
            ("Fax/030 1234567", "Fax/[PHONE]"),
            ("see TICKET-991", "see [TICKET]"),
        ];
        let r = r();
        for (input, want) in cases {
            assert_eq!(r.redact(input), want, "{input}");
        }
    }

    /// A card with its security code or expiry month beside it fails the Luhn check as one
    /// run of digits; the card in it is still found. Runs with no card in them are kept whole.
    #[test]
    fn a_card_beside_more_digits_is_still_redacted() {
        let r = r();
        for (input, want) in [
            ("card 4111 1111 1111 1111 123 exp", "card [CARD] 123 exp"),
            ("card 4111 1111 1111 1111 12/26", "card [CARD] 12/26"),
            ("cvv 123 4111-1111-1111-1111", "cvv 123 [CARD]"),
            ("amex 3782 822463 10005 1234", "amex [CARD] 1234"),
            ("no gap 4111111111111111123", "no gap 4111111111111111123"),
            (
                "card 4111 1111 1111 1112 123",
                "card 4111 1111 1111 1112 123",
            ),
            (
                "0 1 2 3 4 5 6 7 8 9 10 11 12 13",
                "0 1 2 3 4 5 6 7 8 9 10 11 12 13",
            ),
            (
                "pi 3 1 4 1 5 9 2 6 5 3 5 8 9 7 9 3",
                "pi 3 1 4 1 5 9 2 6 5 3 5 8 9 7 9 3",
            ),
        ] {
            assert_eq!(r.redact(input), want, "{input}");
        }
        // In other digits too: the range maps back to the text as it was.
        assert_eq!(
            r.redact("بطاقة ٤١١١ ١١١١ ١١١١ ١١١١ ١٢٣"),
            "بطاقة [CARD] ١٢٣"
        );
    }

    /// A card at the end of the digit groups a match failing its check began: after a group
    /// the card pattern took with it (twenty digits, of which it takes sixteen), or after
    /// letters and digits taken for an IBAN. Only cards in groups of four or more digits,
    /// starting as issued cards start, are looked for there.
    #[test]
    fn a_card_inside_a_failed_match_is_still_redacted() {
        let r = r();
        for (input, want) in [
            (
                "paid 2024 4111 1111 1111 1111 today",
                "paid 2024 [CARD] today",
            ),
            ("0126 4111 1111 1111 1111", "0126 [CARD]"),
            ("ref 2024-4111-1111-1111-1111 ok", "ref 2024-[CARD] ok"),
            ("AB12 4111 1111 1111 1111", "AB12 [CARD]"),
            ("2024 2200 0000 0000 0004 ok", "2024 [CARD] ok"),
            ("2024 4111 1111 1111 1111_x", "2024 4111 1111 1111 1111_x"),
            // No card ends the run: the phone in it is found as before.
            (
                "ids 3034 7276 6067 1434 7933 0941 9469 ok",
                "ids 3034 7276 6067 1434 [PHONE] ok",
            ),
            // No card inside: kept whole.
            (
                "ref 1234 5678 9012 3456 7890",
                "ref 1234 5678 9012 3456 7890",
            ),
            ("2024 4111 1111 1111 1112", "2024 4111 1111 1111 1112"),
            // `1954 1955 1956 1957` passes Luhn, but no card starts with a 1.
            (
                "years 1952 1953 1954 1955 1956 1957",
                "years 1952 1953 1954 1955 1956 1957",
            ),
            // The card at the run's end, not the first run of 16 digits passing Luhn in it (as
            // the search found it before: the first sixteen fail and it goes on after them).
            (
                "ref 0792 4402 6859 9528 4111 1111 1111 1111 ok",
                "ref 0792 4402 6859 9528 [CARD] ok",
            ),
            // Its only Luhn-passing run ends in a group of two digits.
            (
                "iban DE89 3704 0044 0532 0130 01 bad checksum",
                "iban DE89 3704 0044 0532 0130 01 bad checksum",
            ),
            // With its security code or expiry month after it as well.
            (
                "paid 2024 4111 1111 1111 1111 123 today",
                "paid 2024 [CARD] 123 today",
            ),
            ("AB12 4111 1111 1111 1111 09 ok", "AB12 [CARD] 09 ok"),
            ("2024-4111-1111-1111-1111-123", "2024-[CARD]-123"),
            (
                "2024 4111 1111 1111 1112 123",
                "2024 4111 1111 1111 1112 123",
            ),
            (
                "years 1952 1953 1954 1955 1956 1957 12",
                "years 1952 1953 1954 1955 1956 1957 12",
            ),
        ] {
            assert_eq!(r.redact(input), want, "{input}");
        }
    }

    #[test]
    fn negative_samples_are_left_alone() {
        let r = r();
        for input in [
            "card 4111 1111 1111 1112 fails Luhn",
            "order 1234567890123 is not a card",
            "ssn-like 000-12-3456 and 666-12-3456",
            "iban DE89 3704 0044 0532 0130 01 bad checksum",
            "version 1.2.3.4.5 and 999.1.1.1",
            "time 12:30:45 is not an address",
            "sk-short",
            "score +15 points, +2.0.1, +3 4 5 6",
            "dates 01.02.2024, 05 06 07, ref 012 3456, room 0-12",
            "Termin 01.02.24 10.30 Uhr, MAC 08-00-27-12-34-56",
            "Order 0012-3456789, INV-042-12345, part 0171/1234567/9, list 01 02 03 04 05 06",
            "hello world, nothing here",
        ] {
            assert_eq!(r.redact(input), input, "{input}");
        }
    }

    /// Text with no digit, `@` or `:`, of letters (ASCII, accented, other scripts), the
    /// punctuation the patterns use, and pieces of the keys' and tokens' beginnings, whole and
    /// cut short.
    fn without_digits() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(vec![
                "a",
                "f",
                "x",
                "o",
                "b",
                "A",
                "K",
                "I",
                "Z",
                "S",
                "k",
                "h",
                "g",
                "p",
                "r",
                "i",
                "z",
                "s",
                "e",
                "u",
                "E",
                "R",
                "W",
                "-",
                "_",
                ".",
                "+",
                "%",
                " ",
                "/",
                "=",
                "~",
                "(",
                ")",
                "é",
                "ß",
                "Ж",
                "漢",
                "\n",
                "\t",
                "sk",
                "sk-",
                "gs",
                "xai",
                "xo",
                "xox",
                "xoxb",
                "gh",
                "ghp",
                "hf",
                "AI",
                "AIz",
                "AK",
                "AKI",
                "AS",
                "ASI",
                "AZUR",
                "bear",
                "Bea",
                "rer",
                "er",
                "ABCDEFGHIJKLMNOP",
                "abcdefghijklmnopqrstuvwxyz",
            ]),
            0..40,
        )
        .prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn no_built_in_pattern_matches_what_could_match_rules_out(text in without_digits()) {
            static BOTH: std::sync::LazyLock<(Redactor, Regex)> =
                std::sync::LazyLock::new(|| (Redactor::new(&[]).unwrap(), as_written()));
            if !could_match(&text) {
                prop_assert!(!BOTH.0.combined.is_match(&text), "{:?}", text);
                prop_assert!(!BOTH.1.is_match(&text), "{:?}", text);
            }
        }
    }

    #[test]
    fn a_notable_byte_is_seen_wherever_it_stands() {
        // Every byte value, at every place around the sixteen-byte chunks: the chunked look
        // stops where the table says a byte is notable, and a digit is always a maybe.
        for b in 0..=255u8 {
            for at in 0..40 {
                let mut bytes = vec![b'x'; 40];
                bytes[at] = b;
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    continue;
                };
                if b.is_ascii_digit() || b == b'@' || b == b':' {
                    assert!(could_match(text), "{b} at {at}");
                } else if !NOTABLE[usize::from(b)] {
                    assert!(!could_match(text), "{b} at {at}");
                }
            }
        }
        // A digit other than ASCII's, inside a chunk and after the last.
        for at in [0, 5, 15, 16, 30, 33] {
            let text = format!("{}٣{}", "x".repeat(at), "x".repeat(33 - at));
            assert!(could_match(&text), "{text}");
        }
        assert!(!could_match(&format!(
            "{}é{}",
            "x".repeat(5),
            "x".repeat(28)
        )));
    }

    #[test]
    fn prose_without_digits_skips_the_patterns_and_keys_without_digits_do_not() {
        for prose in [
            "You are a helpful assistant.",
            "Say hello and count to twenty.",
            "A well-known step-by-step guide, in short_form, see below",
            "Réponds en français, s'il te plaît. Ответь по-русски.",
        ] {
            assert!(!could_match(prose), "{prose}");
        }
        let letters = |n: usize| {
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".repeat(2)[..n].to_string()
        };
        let upper = |n: usize| "ABCDEFGHIJKLMNOPQRSTUVWXYZ".repeat(2)[..n].to_string();
        for (key, kind) in [
            ("xoxb-abcdefghij".to_string(), "API_KEY"),
            (format!("sk-{}", letters(24)), "API_KEY"),
            (format!("sk-proj-{}", letters(24)), "API_KEY"),
            (format!("xai-{}", letters(20)), "API_KEY"),
            (format!("gsk_{}", letters(20)), "API_KEY"),
            (format!("hf_{}", letters(30)), "API_KEY"),
            (format!("ghp_{}", letters(36)), "API_KEY"),
            (format!("AIza{}", letters(35)), "API_KEY"),
            (format!("AKIA{}", upper(16)), "API_KEY"),
            (format!("ASIA{}", upper(16)), "API_KEY"),
            (format!("AZURE_{}", letters(32)), "API_KEY"),
            (format!("Bearer {}", letters(20)), "BEARER_TOKEN"),
            (format!("BEARER {}", letters(20)), "BEARER_TOKEN"),
            ("::".to_string(), "IP"),
            ("a@b.cd".to_string(), "EMAIL"),
        ] {
            assert!(could_match(&key), "{key}");
            assert_eq!(
                r().redact(&format!("use {key} now")),
                format!("use [{kind}] now")
            );
        }
    }

    #[test]
    fn custom_patterns_apply_to_short_words_too() {
        let r = Redactor::new(&[("word".into(), "stop".into())]).unwrap();
        assert_eq!(r.redact("stop"), "[WORD]");
    }

    #[test]
    fn an_ssn_in_other_digits_is_redacted_without_a_panic() {
        // Arabic-Indic digits: two bytes each.
        assert_eq!(r().redact("ssn ١٢٣-٤٥-٦٧٨٩"), "ssn [SSN]");
        // Devanagari digits (three bytes each) where an IBAN's check digits go: 12 fails the
        // check (89 passes).
        let text = "iban DE१२ 3704 0044 0532 0130 00";
        assert_eq!(r().redact(text), text);
        assert_eq!(
            r().redact("iban DE८९ 3704 0044 0532 0130 00 ok"),
            "iban [IBAN] ok"
        );
    }

    #[test]
    fn other_digits_are_checked_by_their_value_and_replaced_where_they_stand() {
        let r = r();
        // Full-width digits (three bytes each): a card passing Luhn, one failing it.
        assert_eq!(
            r.redact("カード ４１１１ １１１１ １１１１ １１１１ です"),
            "カード [CARD] です"
        );
        let failing = "番号 ４１１１ １１１１ １１１１ １１１２";
        assert_eq!(r.redact(failing), failing);
        // Arabic-Indic digits in a phone number beside an ASCII e-mail address, in Arabic.
        assert_eq!(
            r.redact("اتصل على ٤١٥-٥٥٥-٠١٣٢ أو jane@example.com شكرا"),
            "اتصل على [PHONE] أو [EMAIL] شكرا"
        );
        // Mathematical digits: five sets of ten that adjoin (double-struck here).
        assert_eq!(r.redact("ip 𝟙𝟘.𝟘.𝟘.𝟙 up"), "ip [IP] up");
        // Other digits found but nothing to redact: the text comes back as it was.
        assert!(matches!(r.redact("page ٤٢ of ١٠٠"), Cow::Borrowed(_)));
    }

    /// Text with findings and near-findings whose digits are ASCII, Arabic-Indic, Devanagari or
    /// full-width, beside letters of several scripts.
    fn mixed_digit_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("4111 1111 1111 1111"),
            Just("4111 1111 1111 1112"),
            Just("123-45-6789"),
            Just("10.1.2.3"),
            Just("+1 415-555-0132"),
            Just("DE89 3704 0044 0532 0130 00"),
            Just("jane@example.com"),
            Just(" "),
            Just("-"),
            Just("é"),
            Just("日本"),
            Just("x"),
        ];
        let zero = proptest::sample::select(vec!['0', '٠', '०', '０']);
        proptest::collection::vec((piece, zero), 0..8).prop_map(|parts| {
            parts
                .into_iter()
                .map(|(p, zero)| {
                    p.chars()
                        .map(|c| match c.to_digit(10) {
                            Some(d) => char::from_u32(zero as u32 + d).unwrap(),
                            None => c,
                        })
                        .collect::<String>()
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn other_digits_redact_as_their_ascii_values_do(text in mixed_digit_text()) {
            let r = Redactor::new(&[]).unwrap();
            let is_digit = |c: char| r.other_digit.is_match(c.encode_utf8(&mut [0; 4]));
            let ascii = |t: &str| -> String {
                t.chars()
                    .map(|c| if is_digit(c) { char::from(b'0' + digit_value(c, is_digit)) } else { c })
                    .collect()
            };
            // Redacting, then writing the digits that are left as ASCII, is writing them as
            // ASCII, then redacting.
            prop_assert_eq!(ascii(&r.redact(&text)), r.redact(&ascii(&text)).into_owned());
        }
    }

    #[test]
    fn digit_values_follow_unicode_s_sets_of_ten() {
        let r = r();
        let is_digit = |c: char| r.other_digit.is_match(c.encode_utf8(&mut [0; 4]));
        for (zero, name) in [
            ('٠', "Arabic-Indic"),
            ('۰', "Extended Arabic-Indic"),
            ('०', "Devanagari"),
            ('০', "Bengali"),
            ('０', "full-width"),
            ('𝟎', "mathematical bold"),
            ('𝟘', "mathematical double-struck"),
            ('𝟿', "mathematical monospace nine"),
        ] {
            if name.ends_with("nine") {
                assert_eq!(digit_value(zero, is_digit), 9, "{name}");
                continue;
            }
            for v in 0..10u8 {
                let c = char::from_u32(zero as u32 + u32::from(v)).unwrap();
                assert_eq!(digit_value(c, is_digit), v, "{name} {v}");
            }
        }
    }

    #[test]
    fn findings_beside_non_ascii_letters_are_redacted() {
        let r = r();
        for (input, want) in [
            (
                "café jane.doe@example.com — carte 4111 1111 1111 1111 « ok »",
                "café [EMAIL] — carte [CARD] « ok »",
            ),
            // A Unicode `\b` sees no boundary between these letters and the finding.
            ("日本語jane@example.com", "日本語[EMAIL]"),
            ("電話192.168.1.20", "電話[IP]"),
            (
                "Schlüssel:sk-proj-abcdefghijklmnopqrstuvwxyz012345",
                "Schlüssel:[API_KEY]",
            ),
            ("“call +1 415-555-0132” 🙂", "“call [PHONE]” 🙂"),
        ] {
            assert_eq!(r.redact(input), want, "{input}");
        }
    }

    #[test]
    fn a_plus_too_short_for_a_phone_hides_nothing_after_it() {
        let r = r();
        for (input, want) in [
            ("+10.0.0.1 db", "+[IP] db"),
            ("+10.0.0.1:8080", "+[IP]:8080"),
            ("+1 10.1.2.3", "+1 [IP]"),
            ("+2001:db8::1", "+[IP]"),
            ("(+1234@example.com)", "(+[EMAIL])"),
            ("+15 points", "+15 points"),
        ] {
            assert_eq!(r.redact(input), want, "{input}");
        }
    }

    /// ASCII text with findings, near-findings and the characters around them.
    fn ascii_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("jane@example.com".to_string()),
                Just("4111 1111 1111 1111".to_string()),
                Just("123-45-6789".to_string()),
                Just("10.1.2.3".to_string()),
                Just("2001:db8::1".to_string()),
                Just("+1 415-555-0132".to_string()),
                Just("sk-proj-abcdefghijklmnopqrstuvwxyz0123".to_string()),
                Just("Bearer abcdefghijklmnop1234".to_string()),
                Just("DE89 3704 0044 0532 0130 00".to_string()),
                "[a-zA-Z0-9 ._@:+()\\-]{0,12}",
            ],
            0..8,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn on_ascii_text_both_boundaries_find_the_same(text in ascii_text()) {
            let r = Redactor::new(&[]).unwrap();
            // The patterns searched one by one, in their order of preference, find what
            // their alternation finds, and say which one as its groups do.
            let ours: Vec<(usize, usize, usize)> = r
                .combined
                .find_iter(text.as_bytes())
                .map(|m| (m.start(), m.end(), m.pattern().as_usize()))
                .collect();
            let written: Vec<(usize, usize, usize)> = as_written()
                .captures_iter(&text)
                .map(|c| {
                    let m = c.get(0).unwrap();
                    let kind = PATTERNS.iter().position(|(n, _)| c.name(n).is_some()).unwrap();
                    (m.start(), m.end(), kind)
                })
                .collect();
            prop_assert_eq!(ours, written);
        }
    }

    #[test]
    fn nothing_found_borrows_the_input() {
        assert!(matches!(r().redact("plain text"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_bad_custom_pattern_is_refused_with_its_name() {
        let err = Redactor::new(&[("bad".into(), "(".into())]).unwrap_err();
        assert!(err.contains("bad"), "{err}");
    }
}
