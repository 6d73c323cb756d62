//! Checks JSON-lines segments while they stream in: every non-empty line must be
//! one JSON object. Lines may straddle chunks; only the unfinished line is
//! buffered. A bad line is reported with its 1-based number; nothing is skipped,
//! because a database deletes its WAL on our word.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

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
}

impl JsonLinesChecker {
    pub fn new(max_line: usize) -> Self {
        JsonLinesChecker {
            partial: Vec::new(),
            line: 0,
            max_line,
            stats: JsonStats::default(),
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), JsonLinesError> {
        while let Some(end) = memchr(b'\n', data) {
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
            return Err(JsonLinesError {
                line: self.line + 1,
                message: format!(
                    "line is longer than max_json_line_size ({} bytes)",
                    self.max_line
                ),
            });
        }
        self.partial.extend_from_slice(data);
        Ok(())
    }

    fn check_line(&mut self, raw: &[u8]) -> Result<(), JsonLinesError> {
        self.line += 1;
        if raw.len() > self.max_line {
            return Err(JsonLinesError {
                line: self.line,
                message: format!(
                    "line is longer than max_json_line_size ({} bytes)",
                    self.max_line
                ),
            });
        }
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let mut de = serde_json::Deserializer::from_slice(raw);
        let entry = de
            .deserialize_map(EntryVisitor)
            .and_then(|entry| de.end().map(|()| entry))
            .map_err(|e| JsonLinesError {
                line: self.line,
                message: describe(&e),
            })?;
        self.stats.entries += 1;
        if let Some(ts) = entry.timestamp {
            self.stats.first_timestamp.get_or_insert(ts);
            self.stats.last_timestamp = Some(ts);
        }
        Ok(())
    }
}

fn describe(e: &serde_json::Error) -> String {
    let what = if e.is_eof() {
        "truncated JSON"
    } else {
        "not a JSON object"
    };
    format!("{what}: {e}")
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

struct Entry {
    timestamp: Option<i64>,
}

/// Accepts only a JSON object (serde would otherwise take an array for a struct)
/// and keeps an integer `timestamp` if there is one.
struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = Entry;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
        let mut timestamp = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "timestamp" {
                timestamp = map.next_value::<serde_json::Value>()?.as_i64();
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Entry { timestamp })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Entry, A::Error> {
        Err(de::Error::invalid_type(de::Unexpected::Seq, &self))
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
        assert!(err.message.contains("not a JSON object"), "{}", err.message);
    }

    #[test]
    fn overlong_line_is_refused() {
        let mut checker = JsonLinesChecker::new(8);
        assert_eq!(checker.feed(b"{\"a\":\"0123456789\"}").unwrap_err().line, 1);
    }
}
