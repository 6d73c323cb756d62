//! Checks JSON-lines segments while they stream in: every non-empty line must be
//! one JSON object. Lines may straddle chunks; only the unfinished line is
//! buffered. A bad line is reported with its 1-based number; nothing is skipped,
//! because a database deletes its WAL on our word. simd-json parses each line
//! (several times faster than serde_json here; see BENCHMARKS.md).

use simd_json::prelude::*;

use crate::types::JsonStats;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct JsonLinesError {
    pub line: u64,
    pub message: String,
}

pub struct JsonLinesChecker {
    partial: Vec<u8>,
    line: u64,
    max_line: usize,
    stats: JsonStats,
    /// simd-json rewrites its input, so each line is parsed from this copy.
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
}

impl JsonLinesChecker {
    pub fn new(max_line: usize) -> Self {
        JsonLinesChecker {
            partial: Vec::new(),
            line: 0,
            max_line,
            stats: JsonStats::default(),
            scratch: Vec::new(),
            buffers: simd_json::Buffers::default(),
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), JsonLinesError> {
        while let Some(end) = memchr::memchr(b'\n', data) {
            let (head, rest) = data.split_at(end);
            if self.partial.is_empty() {
                self.check_line(head)?;
            } else {
                self.append_partial(head)?;
                let line = std::mem::take(&mut self.partial);
                self.check_line(&line)?;
                self.partial = line;
                self.partial.clear();
            }
            data = &rest[1..];
        }
        self.append_partial(data)
    }

    /// Checks the last line (one without a trailing newline) and returns the stats.
    pub fn finish(mut self) -> Result<JsonStats, JsonLinesError> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.check_line(&line)?;
        }
        Ok(self.stats)
    }

    fn append_partial(&mut self, data: &[u8]) -> Result<(), JsonLinesError> {
        if self.partial.len() + data.len() > self.max_line {
            return Err(self.too_long(self.line + 1));
        }
        self.partial.extend_from_slice(data);
        Ok(())
    }

    fn too_long(&self, line: u64) -> JsonLinesError {
        JsonLinesError {
            line,
            message: format!(
                "line is longer than max_json_line_size ({} bytes)",
                self.max_line
            ),
        }
    }

    fn check_line(&mut self, raw: &[u8]) -> Result<(), JsonLinesError> {
        self.line += 1;
        if raw.len() > self.max_line {
            return Err(self.too_long(self.line));
        }
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let line = self.line;
        let bad = |message: String| JsonLinesError { line, message };
        self.scratch.clear();
        self.scratch.extend_from_slice(raw);
        let tape = simd_json::to_tape_with_buffers(&mut self.scratch, &mut self.buffers)
            .map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let value = tape.as_value();
        let Some(object) = value.as_object() else {
            return Err(bad(format!(
                "not a JSON object but {}",
                type_name(value.value_type())
            )));
        };
        self.stats.entries += 1;
        if let Some(ts) = object.get("timestamp").and_then(|v| v.as_i64()) {
            self.stats.first_timestamp.get_or_insert(ts);
            self.stats.last_timestamp = Some(ts);
        }
        Ok(())
    }
}

fn type_name(kind: simd_json::ValueType) -> &'static str {
    use simd_json::ValueType;
    match kind {
        ValueType::Array => "an array",
        ValueType::String => "a string",
        ValueType::Bool => "a boolean",
        ValueType::Null => "null",
        ValueType::I64 | ValueType::U64 | ValueType::F64 | ValueType::I128 | ValueType::U128 => {
            "a number"
        }
        _ => "not an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(chunks: &[&[u8]]) -> Result<JsonStats, JsonLinesError> {
        let mut checker = JsonLinesChecker::new(1 << 20);
        for chunk in chunks {
            checker.feed(chunk)?;
        }
        checker.finish()
    }

    #[test]
    fn lines_across_chunks_and_stats() {
        let stats = check(&[
            b"{\"timestamp\":5,\"a\":[1,2]}\n{\"b\":",
            b"{}}\n\n  \n{\"timestamp\":9}",
        ])
        .unwrap();
        assert_eq!(stats.entries, 3);
        assert_eq!(stats.first_timestamp, Some(5));
        assert_eq!(stats.last_timestamp, Some(9));
    }

    #[test]
    fn bad_lines_are_numbered() {
        assert_eq!(check(&[b"{}\n[1,2]\n"]).unwrap_err().line, 2);
        assert_eq!(check(&[b"{}\n{}\n{\"torn\":"]).unwrap_err().line, 3);
        assert_eq!(check(&[b"{}\n{} {}\n"]).unwrap_err().line, 2);
        assert_eq!(check(&[b"\"str\"\n"]).unwrap_err().line, 1);
        let err = check(&[b"{}\n{\"a\":1,}\n"]).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
        let err = check(&[b"[1]\n"]).unwrap_err();
        assert!(
            err.message.contains("not a JSON object but an array"),
            "{}",
            err.message
        );
        assert_eq!(
            check(&[b"{\"s\":\"\xff\"}\n"]).unwrap_err().line,
            1,
            "invalid UTF-8"
        );
    }

    #[test]
    fn overlong_line_is_refused() {
        let mut checker = JsonLinesChecker::new(8);
        assert_eq!(checker.feed(b"{\"a\":\"0123456789\"}").unwrap_err().line, 1);
    }
}
