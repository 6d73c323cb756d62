//! The RFC 8259 validator behind the JSON-lines check: one pass over a line,
//! no values built, an explicit stack instead of recursion.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Container {
    Object,
    Array,
}

/// A line that holds exactly one valid JSON value, and what the checker keeps of it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Value {
    /// `timestamp` is the first top-level member named "timestamp", if its
    /// value is an integer that fits in an i64.
    Object { timestamp: Option<i64> },
    /// "an array", "a string", …: for the error message.
    Other(&'static str),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct SyntaxError {
    /// Byte offset in the line; `None` when the line ended too early.
    at: Option<usize>,
    what: &'static str,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some(at) => write!(f, "{} at column {}", self.what, at + 1),
            None => write!(f, "{} at end of line", self.what),
        }
    }
}

pub(super) fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Validates `line` as one JSON text (RFC 8259 §2: a value with optional
/// whitespace around it) in UTF-8 (§8.1).
pub(super) fn validate(line: &[u8], open: &mut Vec<Container>) -> Result<Value, SyntaxError> {
    // Bytes outside strings are ASCII in valid JSON and string content is
    // checked as it is scanned, so only a refused line needs a UTF-8 pass: to
    // name the first bad byte when there is one.
    scan(line, open).map_err(|syntax| match std::str::from_utf8(line) {
        Ok(_) => syntax,
        Err(e) => SyntaxError {
            at: Some(e.valid_up_to()),
            what: "invalid UTF-8",
        },
    })
}

/// One pass with an explicit stack, so depth costs memory, not recursion.
fn scan(line: &[u8], open: &mut Vec<Container>) -> Result<Value, SyntaxError> {
    open.clear();
    let mut s = Scanner { line, pos: 0 };
    s.skip_space();
    let first = s.peek();
    let mut timestamp = None;
    let mut search = TimestampSearch::default();
    'value: loop {
        let is_timestamp = std::mem::take(&mut search.value_next);
        match s.peek() {
            b'{' => {
                s.pos += 1;
                s.skip_space();
                if s.peek() == b'}' {
                    s.pos += 1;
                } else {
                    open.push(Container::Object);
                    s.member_key(open.len() == 1, &mut search)?;
                    continue 'value;
                }
            }
            b'[' => {
                s.pos += 1;
                s.skip_space();
                if s.peek() == b']' {
                    s.pos += 1;
                } else {
                    open.push(Container::Array);
                    continue 'value;
                }
            }
            b'"' => {
                s.string()?;
            }
            b'-' | b'0'..=b'9' => {
                let start = s.pos;
                let integer = s.number()?;
                if is_timestamp && integer {
                    timestamp = integer_i64(&line[start..s.pos]);
                }
            }
            b't' => s.literal(b"true")?,
            b'f' => s.literal(b"false")?,
            b'n' => s.literal(b"null")?,
            _ => return Err(s.error("expected a value")),
        }
        // A value ended: close containers until another value is due.
        loop {
            s.skip_space();
            match open.last() {
                None if s.pos == line.len() => break 'value,
                None => return Err(s.error("trailing characters after the value")),
                Some(Container::Object) => match s.peek() {
                    b',' => {
                        s.pos += 1;
                        s.skip_space();
                        s.member_key(open.len() == 1, &mut search)?;
                        continue 'value;
                    }
                    b'}' => {
                        s.pos += 1;
                        open.pop();
                    }
                    _ => return Err(s.error("expected `,` or `}`")),
                },
                Some(Container::Array) => match s.peek() {
                    b',' => {
                        s.pos += 1;
                        s.skip_space();
                        continue 'value;
                    }
                    b']' => {
                        s.pos += 1;
                        open.pop();
                    }
                    _ => return Err(s.error("expected `,` or `]`")),
                },
            }
        }
    }
    Ok(match first {
        b'{' => Value::Object { timestamp },
        b'[' => Value::Other("an array"),
        b'"' => Value::Other("a string"),
        b't' | b'f' => Value::Other("a boolean"),
        b'n' => Value::Other("null"),
        _ => Value::Other("a number"),
    })
}

/// Where the first top-level member named "timestamp" stands.
#[derive(Default)]
struct TimestampSearch {
    key_seen: bool,
    /// The value about to be scanned is that member's.
    value_next: bool,
}

struct Scanner<'a> {
    line: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    /// The byte at the position, or 0 at the end of the line: 0 is never valid
    /// where a caller looks, so the end needs no case of its own.
    fn peek(&self) -> u8 {
        self.line.get(self.pos).copied().unwrap_or(0)
    }

    fn error(&self, what: &'static str) -> SyntaxError {
        SyntaxError {
            at: (self.pos < self.line.len()).then_some(self.pos),
            what,
        }
    }

    fn skip_space(&mut self) {
        while is_json_space(self.peek()) {
            self.pos += 1;
        }
    }

    /// Reads `"key"` and the `:` after it, leaving the position at the value.
    fn member_key(
        &mut self,
        top_level: bool,
        search: &mut TimestampSearch,
    ) -> Result<(), SyntaxError> {
        if self.peek() != b'"' {
            return Err(self.error("expected a string as object key"));
        }
        let start = self.pos + 1;
        self.string()?;
        if top_level && !search.key_seen && names_timestamp(&self.line[start..self.pos - 1]) {
            search.key_seen = true;
            search.value_next = true;
        }
        self.skip_space();
        if self.peek() != b':' {
            return Err(self.error("expected `:`"));
        }
        self.pos += 1;
        self.skip_space();
        Ok(())
    }

    /// Skips a string, the position being at its opening quote.
    fn string(&mut self) -> Result<(), SyntaxError> {
        self.pos += 1;
        loop {
            let (end, non_ascii) = plain_run(self.line, self.pos);
            // A run ends at an ASCII byte, which never splits a UTF-8
            // sequence, so runs can be checked one by one.
            if non_ascii && std::str::from_utf8(&self.line[self.pos..end]).is_err() {
                return Err(self.error("invalid UTF-8"));
            }
            self.pos = end;
            match self.line.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => self.escape()?,
                Some(_) => return Err(self.error("unescaped control character in a string")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    /// Skips an escape sequence, the position being at its backslash. Any four
    /// hex digits are valid after `\u`, lone surrogates included (RFC 8259 §7
    /// allows them; §8.2 only warns that they may not decode).
    fn escape(&mut self) -> Result<(), SyntaxError> {
        match self.line.get(self.pos + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 2,
            Some(b'u') => {
                let hex = self.line.get(self.pos + 2..self.pos + 6);
                if !hex.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                    return Err(self.error("invalid \\u escape"));
                }
                self.pos += 6;
            }
            _ => return Err(self.error("invalid escape")),
        }
        Ok(())
    }

    /// Skips a number (RFC 8259 §6); returns whether it is an integer (no
    /// fraction, no exponent). Its size does not matter.
    fn number(&mut self) -> Result<bool, SyntaxError> {
        if self.peek() == b'-' {
            self.pos += 1;
        }
        match self.peek() {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        let mut integer = true;
        if self.peek() == b'.' {
            integer = false;
            self.pos += 1;
            self.required_digits()?;
        }
        if matches!(self.peek(), b'e' | b'E') {
            integer = false;
            self.pos += 1;
            if matches!(self.peek(), b'+' | b'-') {
                self.pos += 1;
            }
            self.required_digits()?;
        }
        Ok(integer)
    }

    fn digits(&mut self) {
        while self.peek().is_ascii_digit() {
            self.pos += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), SyntaxError> {
        if !self.peek().is_ascii_digit() {
            return Err(self.error("invalid number"));
        }
        self.digits();
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), SyntaxError> {
        if self.line.get(self.pos..self.pos + word.len()) != Some(word) {
            return Err(self.error("expected a value"));
        }
        self.pos += word.len();
        Ok(())
    }
}

/// The end of a run of plain string content from `from`: the offset of the
/// first `"`, `\` or control character (or the line's length), and whether
/// the run has bytes beyond ASCII. Looks at eight bytes at a time, because
/// most of a JSON line is string content.
pub(super) fn plain_run(line: &[u8], mut from: usize) -> (usize, bool) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let mut seen = 0u64;
    while let Some(word) = line.get(from..from + 8) {
        let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // The classic "has a zero byte" / "has a byte below n" tests: each may
        // flag bytes above a true hit, never below one, so the lowest flagged
        // byte is the first true hit.
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let hits = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (word.wrapping_sub(ONES * 0x20) & !word))
            & HIGH_BITS;
        if hits != 0 {
            let run = hits.trailing_zeros() / 8;
            seen |= word & ((1u64 << (8 * run)) - 1);
            return (from + run as usize, seen & HIGH_BITS != 0);
        }
        seen |= word;
        from += 8;
    }
    while let Some(&b) = line.get(from) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        seen |= u64::from(b);
        from += 1;
    }
    (from, seen & HIGH_BITS != 0)
}

/// The value of a valid JSON integer token, if it fits in an i64.
fn integer_i64(token: &[u8]) -> Option<i64> {
    let (negative, digits) = match token.split_first() {
        Some((b'-', digits)) => (true, digits),
        _ => (false, token),
    };
    // Summed as a negative number, whose range reaches i64::MIN.
    let mut value: i64 = 0;
    for &digit in digits {
        value = value
            .checked_mul(10)?
            .checked_sub(i64::from(digit - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// Whether the content of a valid JSON string (between its quotes) decodes
/// to "timestamp"; escapes count as what they stand for.
fn names_timestamp(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"timestamp";
    if !raw.contains(&b'\\') {
        return raw == NAME;
    }
    // Compare UTF-16 code units, the unit of `\u` escapes; bytes of other
    // characters and control escapes are units that cannot match.
    let mut units = Vec::with_capacity(NAME.len() + 1);
    let mut rest = raw;
    while let Some((&b, tail)) = rest.split_first() {
        if units.len() > NAME.len() {
            return false;
        }
        if b != b'\\' {
            units.push(u16::from(b));
            rest = tail;
            continue;
        }
        match tail {
            [b'u', hex @ ..] if hex.len() >= 4 => {
                let hex = std::str::from_utf8(&hex[..4]).unwrap_or("");
                units.push(u16::from_str_radix(hex, 16).unwrap_or(0));
                rest = &tail[5..];
            }
            [escaped @ (b'"' | b'\\' | b'/'), ..] => {
                units.push(u16::from(*escaped));
                rest = &tail[1..];
            }
            // \b \f \n \r \t stand for control characters.
            _ => {
                units.push(0);
                rest = tail.get(1..).unwrap_or(&[]);
            }
        }
    }
    units.iter().copied().eq(NAME.iter().map(|&b| u16::from(b)))
}
