//! Property tests for the parsers and formats that take untrusted bytes: the
//! archive reader, the JSON-lines checker and request validation. Each runs a
//! bounded number of cases (PROPTEST_CASES overrides); regressions found are
//! kept in tests/properties.proptest-regressions and replayed first.

use std::io::Cursor;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseResult, TestRunner};

use wal_archiver::archive::{
    ArchiveHeader, ArchiveReader, ArchiveWriter, FORMAT_VERSION, FORMAT_WITH_DIGEST_UP_FRONT,
    JsonLinesChecker,
};
use wal_archiver::proto;
use wal_archiver::types::{ContentKind, Digest, Received};

/// An archive of `data`; with `up_front`, size and digest are in the header
/// too (as when the client declared them before its bytes).
fn archive_of(data: &[u8], level: i32, up_front: bool) -> Vec<u8> {
    let sha256 = Digest::of(data);
    let header = ArchiveHeader {
        format_version: if up_front {
            FORMAT_WITH_DIGEST_UP_FRONT
        } else {
            FORMAT_VERSION
        },
        shard_id: 3,
        log_id: 9,
        content_kind: ContentKind::Raw,
        original_size: up_front.then_some(data.len() as u64),
        sha256: up_front.then(|| sha256.to_hex()),
        zstd_level: level,
        created_unix_ms: 1,
    };
    let proof = Received {
        size: data.len() as u64,
        sha256,
        content_xxh3: xxhash_rust::xxh3::xxh3_128(data),
    };
    let mut writer = ArchiveWriter::new(Vec::new(), header, 0).unwrap();
    for chunk in data.chunks(777) {
        writer.write_all(chunk).unwrap();
    }
    writer.finish(&proof, None).unwrap().sink
}

/// Decodes everything; `Ok` only with size and SHA-256 verified.
fn decode(archive: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut reader = ArchiveReader::open(Cursor::new(archive)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    reader.copy_to(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Cases of each archive and request property on every run.
const ARCHIVE_CASES: u32 = 2000;

/// The same cases on every run, CI's included, unless PROPTEST_RNG_SEED asks
/// for others; PROPTEST_CASES may ask for more than ARCHIVE_CASES, never for
/// fewer.
fn archive_config() -> ProptestConfig {
    // The default config is the one the PROPTEST_* variables make.
    let env = ProptestConfig::default();
    ProptestConfig {
        cases: env.cases.max(ARCHIVE_CASES),
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            env.rng_seed
        } else {
            RngSeed::Fixed(1952)
        },
        source_file: Some(file!()),
        ..env
    }
}

/// Runs `test` on values of `strategy` under `archive_config`, after the
/// failures kept in tests/properties.proptest-regressions. The runner is made
/// here rather than by `proptest!`, which would let PROPTEST_CASES lower the
/// number of cases.
fn run_property<S: Strategy>(
    name: &'static str,
    strategy: S,
    test: impl Fn(S::Value) -> TestCaseResult,
) {
    let mut config = archive_config();
    config.test_name = Some(name);
    let mut runner = TestRunner::new(config);
    if let Err(failure) = runner.run(&strategy, test) {
        panic!("{name}: {failure}\n{runner}");
    }
}

#[test]
fn archive_roundtrips() {
    run_property(
        "archive_roundtrips",
        (
            proptest::collection::vec(any::<u8>(), 0..20_000),
            1i32..6,
            any::<bool>(),
        ),
        |(data, level, up_front)| {
            prop_assert_eq!(decode(archive_of(&data, level, up_front)).unwrap(), data);
            Ok(())
        },
    );
}

/// Any damage is either detected or harmless: the reader never panics and
/// never returns bytes other than the original.
#[test]
fn damaged_archives_never_yield_wrong_bytes() {
    run_property(
        "damaged_archives_never_yield_wrong_bytes",
        (
            proptest::collection::vec(any::<u8>(), 1..5_000),
            proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
            proptest::option::of(any::<prop::sample::Index>()),
            any::<bool>(),
        ),
        |(data, flips, cut, up_front)| {
            let mut archive = archive_of(&data, 3, up_front);
            for (at, mask) in &flips {
                let i = at.index(archive.len());
                archive[i] ^= mask;
            }
            if let Some(cut) = cut {
                archive.truncate(cut.index(archive.len()));
            }
            if let Ok(decoded) = decode(archive) {
                prop_assert_eq!(decoded, data);
            }
            Ok(())
        },
    );
}

#[test]
fn random_bytes_are_not_archives() {
    run_property(
        "random_bytes_are_not_archives",
        proptest::collection::vec(any::<u8>(), 0..2_000),
        |bytes| {
            prop_assert!(decode(bytes).is_err());
            Ok(())
        },
    );
}

/// Where chunks split a segment does not change the verdict or the stats.
#[test]
fn json_lines_chunking_is_invisible() {
    run_property(
        "json_lines_chunking_is_invisible",
        (
            0u64..1000,
            proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ),
        |(seed, cuts)| {
            let data = wal_archiver::walgen::EventGenerator::new(seed).segment(4_000);
            let whole = check(&[&data]).unwrap();
            prop_assert_eq!(check(&chunks(&data, &cuts)).unwrap(), whole);
            Ok(())
        },
    );
}

/// Header validation never panics, and accepts exactly the well-formed headers.
#[test]
fn header_validation() {
    run_property(
        "header_validation",
        (
            any::<u32>(),
            any::<u64>(),
            prop_oneof![Just(0usize), Just(32usize), 0usize..64],
            -2i32..5,
            -2i32..5,
            proptest::option::of(any::<u64>()),
        ),
        |(shard_id, log_id, sha_len, kind, ack, size)| {
            let header = proto::SegmentHeader {
                shard_id,
                log_id,
                size,
                sha256: Bytes::from(vec![7u8; sha_len]),
                kind,
                ack,
                zstd_level: None,
            };
            let valid = (sha_len == 0 || sha_len == 32)
                && (0..=2).contains(&kind)
                && (0..=2).contains(&ack);
            match wal_archiver::types::SegmentRequest::try_from(header) {
                Ok(request) => {
                    prop_assert!(valid);
                    prop_assert_eq!(request.shard_id, shard_id);
                    prop_assert_eq!(request.sha256.is_some(), sha_len == 32);
                }
                Err(invalid) => {
                    prop_assert!(!valid);
                    let status = wal_archiver::service::status(invalid);
                    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                }
            }
            Ok(())
        },
    );
}

/// Undecodable request bytes are an error, never a panic.
#[test]
fn request_decoding_never_panics() {
    run_property(
        "request_decoding_never_panics",
        proptest::collection::vec(any::<u8>(), 0..512),
        |bytes| {
            let _ = <proto::ArchiveRequest as prost::Message>::decode(&bytes[..]);
            Ok(())
        },
    );
}

/// `data` cut where `cuts` say, empty chunks included.
fn chunks<'a>(data: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
    points.sort();
    let mut pieces = Vec::new();
    let mut last = 0;
    for p in points {
        pieces.push(&data[last..p]);
        last = p;
    }
    pieces.push(&data[last..]);
    pieces
}

fn check(chunks: &[&[u8]]) -> Result<wal_archiver::types::JsonStats, String> {
    let mut checker = JsonLinesChecker::new(1 << 20);
    for chunk in chunks {
        checker.feed(chunk).map_err(|e| e.to_string())?;
    }
    checker.finish().map_err(|e| e.to_string())
}

// JSON lines against RFC 8259. Lines are written from a tree of JSON values,
// valid by construction unless the tree or the line holds a defect, so each
// line's verdict is known twice: from how it was built, and from the oracle.

/// The same cases on every run, CI's included, unless PROPTEST_RNG_SEED asks
/// for others; PROPTEST_CASES sets how many. Failures found are kept in
/// tests/properties.proptest-regressions and replayed first.
fn json_config() -> ProptestConfig {
    let env = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            env.cases
        } else {
            1000
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            env.rng_seed
        } else {
            RngSeed::Fixed(8259)
        },
        ..env
    }
}

proptest! {
    #![proptest_config(json_config())]

    /// Valid lines pass and defective ones fail, with their line number, as
    /// built and as the oracle judges; the timestamp is the model's.
    #[test]
    fn json_lines_follow_rfc_8259(line in json_line(true)) {
        let bytes = line.render();
        let expected = line.expected();
        prop_assert_eq!(oracle(&bytes), expected, "oracle vs construction: {:?}", String::from_utf8_lossy(&bytes));
        let (verdict, stats) = ours(&bytes);
        prop_assert_eq!(verdict, expected, "{:?}", String::from_utf8_lossy(&bytes));
        if expected == Verdict::Object {
            prop_assert_eq!(stats.map(|s| s.first_timestamp), Some(line.timestamp()));
        }
    }

    /// The same without defects: every generated object (big numbers, deep
    /// nesting, escapes, lone surrogates, CRLF) passes.
    #[test]
    fn valid_json_objects_pass(line in json_line(false)) {
        let bytes = line.render();
        let expected = line.expected();
        prop_assert!(expected != Verdict::Invalid);
        prop_assert_eq!(oracle(&bytes), expected, "oracle vs construction: {:?}", String::from_utf8_lossy(&bytes));
        prop_assert_eq!(ours(&bytes).0, expected, "{:?}", String::from_utf8_lossy(&bytes));
    }

    /// Bytes inserted, replaced or deleted anywhere: the checker agrees with
    /// the oracle, whatever the damage made of the line.
    #[test]
    fn damaged_json_lines_agree_with_the_oracle(
        line in json_line(false),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), edit()), 1..4),
    ) {
        let mut bytes = line.render();
        for (at, edit) in edits {
            match edit {
                Edit::Insert(b) => bytes.insert(at.index(bytes.len() + 1), b),
                Edit::Replace(b) if !bytes.is_empty() => {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
                Edit::Delete if !bytes.is_empty() => {
                    bytes.remove(at.index(bytes.len()));
                }
                _ => {}
            }
        }
        prop_assert_eq!(ours(&bytes).0, oracle(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
    }

    /// A segment of generated lines, blank ones among them, gives the verdict
    /// the models predict, however chunks cut it.
    #[test]
    fn json_segments_whatever_the_chunks(
        lines in proptest::collection::vec(segment_line(), 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut segment = Vec::new();
        let mut expected = Ok(wal_archiver::types::JsonStats::default());
        for (number, line) in (1..).zip(&lines) {
            if number > 1 {
                segment.push(b'\n');
            }
            match line {
                SegmentLine::Blank(blank) => segment.extend_from_slice(blank.as_bytes()),
                SegmentLine::Json(line) => {
                    segment.extend(line.render());
                    if let Ok(stats) = &mut expected {
                        if line.expected() == Verdict::Object {
                            stats.entries += 1;
                            if let Some(ts) = line.timestamp() {
                                stats.first_timestamp.get_or_insert(ts);
                                stats.last_timestamp = Some(ts);
                            }
                        } else {
                            expected = Err(number);
                        }
                    }
                }
            }
        }
        let whole = check(&[&segment]);
        match (&whole, expected) {
            (Ok(stats), Ok(model)) => prop_assert_eq!(*stats, model),
            (Err(e), Err(number)) => prop_assert!(e.starts_with(&format!("line {number}: ")), "{}", e),
            (whole, expected) => prop_assert!(false, "{:?}, expected {:?}", whole, expected),
        }
        prop_assert_eq!(check(&chunks(&segment, &cuts)), whole);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Blank,
    Object,
    NotObject,
    Invalid,
}

fn is_json_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// What RFC 8259 says of a line. serde_json checks the syntax: deserializing
/// `IgnoredAny` builds no values, so no number is out of range, and it skips
/// nested values without recursing, so any depth passes. It does not check
/// UTF-8 inside strings when reading bytes, so std does.
fn oracle(line: &[u8]) -> Verdict {
    if line.iter().all(is_json_space) {
        Verdict::Blank
    } else if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err()
        || std::str::from_utf8(line).is_err()
    {
        Verdict::Invalid
    } else if line.iter().find(|b| !is_json_space(b)) == Some(&b'{') {
        Verdict::Object
    } else {
        Verdict::NotObject
    }
}

/// The checker's verdict on `line` as line 2 of 3; panics if an error names
/// another line or is neither kind of error.
fn ours(line: &[u8]) -> (Verdict, Option<wal_archiver::types::JsonStats>) {
    let mut segment = b"{}\n".to_vec();
    segment.extend_from_slice(line);
    segment.extend_from_slice(b"\n{}\r\n");
    let mut checker = JsonLinesChecker::new(1 << 20);
    match checker.feed(&segment).and_then(|()| checker.finish()) {
        Ok(stats) if stats.entries == 2 => (Verdict::Blank, Some(stats)),
        Ok(stats) => (Verdict::Object, Some(stats)),
        Err(e) => {
            assert_eq!(e.line, 2, "{e}");
            if e.message.starts_with("not valid JSON: ") {
                (Verdict::Invalid, None)
            } else {
                assert!(e.message.starts_with("not a JSON object but "), "{e}");
                (Verdict::NotObject, None)
            }
        }
    }
}

/// A JSON value to be written out.
#[derive(Clone, Debug)]
enum Json {
    /// A valid token written as is (never an integer that fits in an i64).
    Literal(&'static str),
    Number(Number),
    String(Vec<Piece>),
    Array(Vec<Json>),
    Object(Vec<(Vec<Piece>, Json)>),
    /// `depth` arrays, or one-member objects, around a value.
    Nested {
        depth: usize,
        objects: bool,
        inner: Box<Json>,
    },
    /// A defect: invalid wherever a value may stand.
    Bad(&'static [u8]),
}

#[derive(Clone, Debug)]
enum Number {
    Int(i64),
    NegativeZero,
    /// An integer beyond i64.
    Big {
        negative: bool,
        digits: String,
    },
    /// With a fraction, an exponent or both; digits of any length.
    Real {
        negative: bool,
        int: String,
        frac: Option<String>,
        exp: Option<String>,
    },
}

/// A piece of string content.
#[derive(Clone, Debug)]
enum Piece {
    /// Written raw where JSON allows it, escaped where it must be.
    Char(char),
    /// Written as `\uXXXX` (a surrogate pair beyond the BMP).
    Escaped { c: char, upper: bool },
    /// `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r` or `\t`.
    Short(u8),
    /// `\uD800`…`\uDFFF` alone: valid JSON text (RFC 8259 §8.2).
    Surrogate(u16),
    /// A defect: invalid wherever string content may stand.
    Bad(&'static [u8]),
}

impl Json {
    fn is_valid(&self) -> bool {
        match self {
            Json::Bad(_) => false,
            Json::String(pieces) => pieces_valid(pieces),
            Json::Array(items) => items.iter().all(Json::is_valid),
            Json::Object(members) => members_valid(members),
            Json::Nested { inner, .. } => inner.is_valid(),
            Json::Literal(_) | Json::Number(_) => true,
        }
    }

    fn is_object(&self) -> bool {
        matches!(self, Json::Object(_) | Json::Nested { objects: true, .. })
    }
}

fn pieces_valid(pieces: &[Piece]) -> bool {
    !pieces.iter().any(|p| matches!(p, Piece::Bad(_)))
}

fn members_valid(members: &[(Vec<Piece>, Json)]) -> bool {
    members
        .iter()
        .all(|(key, value)| pieces_valid(key) && value.is_valid())
}

/// The timestamp the checker should take from an object with these members:
/// the first member named "timestamp", if its value is an i64 integer.
fn model_timestamp(members: &[(Vec<Piece>, Json)]) -> Option<i64> {
    let (_, value) = members
        .iter()
        .find(|(key, _)| decoded(key).as_deref() == Some("timestamp"))?;
    match value {
        Json::Number(Number::Int(n)) => Some(*n),
        Json::Number(Number::NegativeZero) => Some(0),
        _ => None,
    }
}

/// The string the pieces stand for; `None` if a lone surrogate makes it no string.
fn decoded(pieces: &[Piece]) -> Option<String> {
    pieces
        .iter()
        .map(|piece| match piece {
            Piece::Char(c) | Piece::Escaped { c, .. } => Some(*c),
            Piece::Short(b) => Some(match b {
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                other => char::from(*other),
            }),
            Piece::Surrogate(_) | Piece::Bad(_) => None,
        })
        .collect()
}

/// Writes values out, taking the whitespace between tokens in turn from `spaces`.
struct Writer {
    out: Vec<u8>,
    spaces: Vec<&'static str>,
    next: usize,
}

impl Writer {
    fn space(&mut self) {
        if let Some(space) = self.spaces.get(self.next % self.spaces.len().max(1)) {
            self.out.extend_from_slice(space.as_bytes());
            self.next += 1;
        }
    }

    /// The comma before the item at `index` of an array or object.
    fn separator(&mut self, index: usize) {
        if index > 0 {
            self.space();
            self.out.push(b',');
            self.space();
        }
    }

    fn value(&mut self, value: &Json) {
        match value {
            Json::Literal(token) => self.out.extend_from_slice(token.as_bytes()),
            Json::Number(number) => self.number(number),
            Json::String(pieces) => self.string(pieces),
            Json::Array(items) => {
                self.out.push(b'[');
                self.space();
                for (i, item) in items.iter().enumerate() {
                    self.separator(i);
                    self.value(item);
                }
                self.space();
                self.out.push(b']');
            }
            Json::Object(members) => self.object(members),
            Json::Nested {
                depth,
                objects,
                inner,
            } => {
                let (open, close): (&[u8], u8) = if *objects {
                    (b"{\"n\":", b'}')
                } else {
                    (b"[", b']')
                };
                for _ in 0..*depth {
                    self.out.extend_from_slice(open);
                }
                self.value(inner);
                self.out.extend(std::iter::repeat_n(close, *depth));
            }
            Json::Bad(bytes) => self.out.extend_from_slice(bytes),
        }
    }

    fn object(&mut self, members: &[(Vec<Piece>, Json)]) {
        self.out.push(b'{');
        self.space();
        for (i, (key, value)) in members.iter().enumerate() {
            self.separator(i);
            self.string(key);
            self.space();
            self.out.push(b':');
            self.space();
            self.value(value);
        }
        self.space();
        self.out.push(b'}');
    }

    fn number(&mut self, number: &Number) {
        let text = match number {
            Number::Int(n) => n.to_string(),
            Number::NegativeZero => "-0".to_owned(),
            Number::Big { negative, digits } => format!("{}{digits}", sign(*negative)),
            Number::Real {
                negative,
                int,
                frac,
                exp,
            } => format!(
                "{}{int}{}{}",
                sign(*negative),
                frac.as_ref().map(|f| format!(".{f}")).unwrap_or_default(),
                exp.as_deref().unwrap_or_default()
            ),
        };
        self.out.extend_from_slice(text.as_bytes());
    }

    fn string(&mut self, pieces: &[Piece]) {
        self.out.push(b'"');
        for piece in pieces {
            match piece {
                Piece::Char('"') => self.out.extend_from_slice(b"\\\""),
                Piece::Char('\\') => self.out.extend_from_slice(b"\\\\"),
                Piece::Char(c) if *c < ' ' => {
                    self.out
                        .extend_from_slice(format!("\\u{:04x}", u32::from(*c)).as_bytes());
                }
                Piece::Char(c) => {
                    self.out
                        .extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                Piece::Escaped { c, upper } => {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        let escape = if *upper {
                            format!("\\u{unit:04X}")
                        } else {
                            format!("\\u{unit:04x}")
                        };
                        self.out.extend_from_slice(escape.as_bytes());
                    }
                }
                Piece::Short(b) => self.out.extend_from_slice(&[b'\\', *b]),
                Piece::Surrogate(unit) => {
                    self.out
                        .extend_from_slice(format!("\\u{unit:04x}").as_bytes());
                }
                Piece::Bad(bytes) => self.out.extend_from_slice(bytes),
            }
        }
        self.out.push(b'"');
    }
}

fn sign(negative: bool) -> &'static str {
    if negative { "-" } else { "" }
}

/// What makes a line bad (or not an object) beyond the values in it.
#[derive(Clone, Debug)]
enum Defect {
    None,
    /// Cut after its `{` and before its last `}`.
    Truncated(prop::sample::Index),
    Leading(&'static [u8]),
    Trailing(&'static [u8]),
    /// A valid value, but not an object.
    NotObject(Json),
}

/// One line of a JSON-lines segment, without its `\n`.
#[derive(Clone, Debug)]
struct Line {
    members: Vec<(Vec<Piece>, Json)>,
    spaces: Vec<&'static str>,
    before: &'static str,
    after: &'static str,
    crlf: bool,
    defect: Defect,
}

impl Line {
    fn render(&self) -> Vec<u8> {
        let mut writer = Writer {
            out: Vec::new(),
            spaces: self.spaces.clone(),
            next: 0,
        };
        if let Defect::Leading(junk) = &self.defect {
            writer.out.extend_from_slice(junk);
        }
        writer.out.extend_from_slice(self.before.as_bytes());
        let start = writer.out.len();
        match &self.defect {
            Defect::NotObject(value) => writer.value(value),
            _ => writer.object(&self.members),
        }
        if let Defect::Truncated(at) = &self.defect {
            // Keep the `{`, lose at least the `}` that closes it.
            let (first, last) = (start + 1, writer.out.len() - 1);
            writer.out.truncate(first + at.index(last - first + 1));
        }
        writer.out.extend_from_slice(self.after.as_bytes());
        if let Defect::Trailing(junk) = &self.defect {
            writer.out.extend_from_slice(junk);
        }
        if self.crlf {
            writer.out.push(b'\r');
        }
        writer.out
    }

    fn expected(&self) -> Verdict {
        match &self.defect {
            Defect::None if members_valid(&self.members) => Verdict::Object,
            Defect::NotObject(value) if value.is_valid() => Verdict::NotObject,
            _ => Verdict::Invalid,
        }
    }

    fn timestamp(&self) -> Option<i64> {
        model_timestamp(&self.members)
    }
}

#[derive(Clone, Debug)]
enum SegmentLine {
    Blank(&'static str),
    Json(Line),
}

/// Invalid wherever a value may stand, since a delimiter always follows.
const BAD_VALUES: &[&[u8]] = &[
    b"01",
    b"-01",
    b"00",
    b"-",
    b"1.",
    b".5",
    b"1e",
    b"1e+",
    b"+1",
    b"1.e5",
    b"0x1F",
    b"1_000",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"tru",
    b"nul",
    b"True",
    b"undefined",
    b"'a'",
    b"1 2",
    b"\"\x01\"",
    b"\"\x00\"",
    b"\"a\x1fb\"",
    b"\"\t\"",
    b"\"\xff\"",
    b"\"\xc0\xaf\"",
    b"\"\xed\xa0\x80\"",
    b"\"\xe2\x82\"",
    b"\"\xf4\x90\x80\x80\"",
    b"\"\\x41\"",
    b"\"\\u12G4\"",
    b"\"\\U0041\"",
    b"\"\\'\"",
    b"[1,]",
    b"[,1]",
    b"[1 2]",
    b"{\"a\":1,}",
    b"{\"a\" 1}",
    b"{\"a\"::1}",
    b"{a:1}",
    b"{1:2}",
    b"{\"a\"}",
    b"[1}",
    b"{\"a\":1]",
    b"\xc2\xa0",
    b"\x0c1",
    b"\xef\xbb\xbf1",
    b"/*c*/1",
];

/// Invalid wherever string content may stand: raw control characters, bad
/// UTF-8, bad escapes.
const BAD_PIECES: &[&[u8]] = &[
    b"\x00",
    b"\x01",
    b"\x1f",
    b"\t",
    b"\r",
    b"\x7f\x1b",
    b"\xff",
    b"\x80",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xe2\x82",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\\x",
    b"\\u12G4",
    b"\\U0041",
    b"\\'",
    b"\\ ",
];

/// Invalid before the object, or after it.
const BAD_LEADING: &[&[u8]] = &[
    b"\xef\xbb\xbf",
    b"\x0c",
    b"\x0b",
    b"\xc2\xa0",
    b"\x00",
    b",",
];
const BAD_TRAILING: &[&[u8]] = &[
    b"x",
    b"{}",
    b",",
    b"\x00",
    b"]",
    b"}",
    b"\x0c",
    b"\xc2\xa0",
    b"\"\"",
    b"0",
    b"/",
    b"\xff",
    b"[]",
];

/// Bytes that make interesting damage (a `\n` would only split the line).
const DAMAGE: &[u8] = &[
    0x00, 0x01, 0x09, 0x0b, 0x0c, 0x0d, 0x1f, b' ', b'"', b'\\', b'/', b'{', b'}', b'[', b']',
    b',', b':', b'0', b'1', b'-', b'+', b'.', b'e', b'E', b'u', b'a', b'n', b't', 0x7f, 0x80, 0xbf,
    0xc2, 0xe2, 0xed, 0xf0, 0xf4, 0xff,
];

fn space() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => Just(""),
        1 => Just(" "),
        1 => Just("\t"),
        1 => Just("\r"),
        1 => Just(" \t\r  "),
    ]
}

fn number() -> impl Strategy<Value = Number> {
    let real = (
        any::<bool>(),
        "0|[1-9][0-9]{0,30}",
        proptest::option::of("[0-9]{1,40}"),
        proptest::option::of("[eE][+-]?[0-9]{1,25}"),
    )
        .prop_filter("a fraction or an exponent", |(_, _, frac, exp)| {
            frac.is_some() || exp.is_some()
        })
        .prop_map(|(negative, int, frac, exp)| Number::Real {
            negative,
            int,
            frac,
            exp,
        });
    prop_oneof![
        4 => any::<i64>().prop_map(Number::Int),
        1 => prop::sample::select(vec![0, 1, -1, i64::MAX, i64::MIN]).prop_map(Number::Int),
        1 => Just(Number::NegativeZero),
        // 20 digits and more: beyond i64 either way.
        2 => (any::<bool>(), "[1-9][0-9]{19,60}")
            .prop_map(|(negative, digits)| Number::Big { negative, digits }),
        1 => prop::sample::select(vec![
            (false, "9223372036854775808"),
            (true, "9223372036854775809"),
            (false, "18446744073709551616"),
        ])
        .prop_map(|(negative, digits)| Number::Big { negative, digits: digits.to_owned() }),
        3 => real,
    ]
}

fn pieces(bad: bool) -> BoxedStrategy<Vec<Piece>> {
    let good = prop_oneof![
        6 => any::<char>().prop_map(Piece::Char),
        6 => prop::sample::select(vec!['a', 'z', '0', ' ', '_', 'é', '€', '😀', '\u{7f}', '\u{2028}', '\u{fffd}'])
            .prop_map(Piece::Char),
        2 => (any::<char>(), any::<bool>()).prop_map(|(c, upper)| Piece::Escaped { c, upper }),
        1 => prop::sample::select(b"\"\\/bfnrt".to_vec()).prop_map(Piece::Short),
        1 => (0xD800u16..=0xDFFF).prop_map(Piece::Surrogate),
    ];
    let piece = if bad {
        prop_oneof![20 => good, 1 => prop::sample::select(BAD_PIECES).prop_map(Piece::Bad)].boxed()
    } else {
        good.boxed()
    };
    proptest::collection::vec(piece, 0..12).boxed()
}

/// "timestamp", some of it escaped.
fn timestamp_key() -> impl Strategy<Value = Vec<Piece>> {
    proptest::collection::vec(prop::bool::weighted(0.15), 9).prop_map(|escape| {
        "timestamp"
            .chars()
            .zip(escape)
            .map(|(c, escape)| {
                if escape {
                    Piece::Escaped { c, upper: c < 'm' }
                } else {
                    Piece::Char(c)
                }
            })
            .collect()
    })
}

fn key(bad: bool) -> BoxedStrategy<Vec<Piece>> {
    prop_oneof![1 => timestamp_key(), 3 => pieces(bad)].boxed()
}

fn json(bad: bool) -> BoxedStrategy<Json> {
    let leaf = prop_oneof![
        2 => prop::sample::select(vec![
            "null", "true", "false", "1e400", "-1E+400", "1.8e308", "4.9e-325",
            "1e-99999999999999999999", "0e400", "-0.0e-0",
        ])
        .prop_map(Json::Literal),
        4 => number().prop_map(Json::Number),
        4 => pieces(bad).prop_map(Json::String),
    ];
    let leaf = if bad {
        prop_oneof![15 => leaf, 1 => prop::sample::select(BAD_VALUES).prop_map(Json::Bad)].boxed()
    } else {
        leaf.boxed()
    };
    leaf.prop_recursive(4, 32, 5, move |inner| {
        prop_oneof![
            3 => proptest::collection::vec(inner.clone(), 0..5).prop_map(Json::Array),
            3 => proptest::collection::vec((key(bad), inner.clone()), 0..5).prop_map(Json::Object),
            1 => (prop_oneof![1..20usize, 500..3000usize], any::<bool>(), inner).prop_map(
                |(depth, objects, inner)| Json::Nested { depth, objects, inner: Box::new(inner) }
            ),
        ]
    })
    .boxed()
}

/// Lines that are one object, or (with `bad`) not quite.
fn json_line(bad: bool) -> BoxedStrategy<Line> {
    let not_object = json(bad)
        .prop_filter("not an object", |value| !value.is_object())
        .prop_map(Defect::NotObject);
    let defect = if bad {
        prop_oneof![
            8 => Just(Defect::None),
            1 => any::<prop::sample::Index>().prop_map(Defect::Truncated),
            1 => prop::sample::select(BAD_LEADING).prop_map(Defect::Leading),
            1 => prop::sample::select(BAD_TRAILING).prop_map(Defect::Trailing),
            1 => not_object,
        ]
        .boxed()
    } else {
        prop_oneof![12 => Just(Defect::None), 1 => not_object].boxed()
    };
    (
        proptest::collection::vec(
            prop_oneof![
                3 => (key(bad), json(bad)),
                1 => (timestamp_key(), number().prop_map(Json::Number)),
            ],
            0..6,
        ),
        proptest::collection::vec(space(), 0..6),
        space(),
        space(),
        any::<bool>(),
        defect,
    )
        .prop_map(|(members, spaces, before, after, crlf, defect)| Line {
            members,
            spaces,
            before,
            after,
            crlf,
            defect,
        })
        .boxed()
}

fn segment_line() -> impl Strategy<Value = SegmentLine> {
    prop_oneof![
        1 => prop::sample::select(vec!["", " ", "\t\r", "\r"]).prop_map(SegmentLine::Blank),
        5 => json_line(true).prop_map(SegmentLine::Json),
    ]
}

#[derive(Clone, Debug)]
enum Edit {
    Insert(u8),
    Replace(u8),
    Delete,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        prop::sample::select(DAMAGE).prop_map(Edit::Insert),
        prop::sample::select(DAMAGE).prop_map(Edit::Replace),
        Just(Edit::Delete),
    ]
}
