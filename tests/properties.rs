//! Property tests for the parsers and formats that take untrusted bytes: the
//! archive reader, the JSON-lines checker and request validation. Each runs a
//! bounded number of cases (PROPTEST_CASES overrides); regressions found are
//! kept in tests/properties.proptest-regressions and replayed first.

use std::io::Cursor;

use bytes::Bytes;
use proptest::prelude::*;

use wal_archiver::archive::{
    ArchiveHeader, ArchiveReader, ArchiveWriter, FORMAT_VERSION, JsonLinesChecker,
};
use wal_archiver::proto;
use wal_archiver::types::{ContentKind, Digest};

fn archive_of(data: &[u8], level: i32) -> Vec<u8> {
    let header = ArchiveHeader {
        format_version: FORMAT_VERSION,
        shard_id: 3,
        log_id: 9,
        content_kind: ContentKind::Raw,
        original_size: data.len() as u64,
        sha256: Digest::of(data).to_hex(),
        zstd_level: level,
        created_unix_ms: 1,
    };
    let xxh3 = xxhash_rust::xxh3::xxh3_128(data);
    let mut writer = ArchiveWriter::new(Vec::new(), header, xxh3, 0).unwrap();
    for chunk in data.chunks(777) {
        writer.write_all(chunk).unwrap();
    }
    writer.finish(None).unwrap().sink
}

/// Decodes everything; `Ok` only with size and SHA-256 verified.
fn decode(archive: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut reader = ArchiveReader::open(Cursor::new(archive)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    reader.copy_to(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn archive_roundtrips(data in proptest::collection::vec(any::<u8>(), 0..20_000), level in 1i32..6) {
        prop_assert_eq!(decode(archive_of(&data, level)).unwrap(), data);
    }

    /// Any damage is either detected or harmless: the reader never panics and
    /// never returns bytes other than the original.
    #[test]
    fn damaged_archives_never_yield_wrong_bytes(
        data in proptest::collection::vec(any::<u8>(), 1..5_000),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut archive = archive_of(&data, 3);
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
    }

    #[test]
    fn random_bytes_are_not_archives(bytes in proptest::collection::vec(any::<u8>(), 0..2_000)) {
        prop_assert!(decode(bytes).is_err());
    }

    /// Where chunks split a segment does not change the verdict or the stats.
    #[test]
    fn json_lines_chunking_is_invisible(seed in 0u64..1000, cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let data = wal_archiver::walgen::EventGenerator::new(seed).segment(4_000);
        let whole = check(&[&data]).unwrap();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len())).collect();
        points.sort();
        let mut pieces = Vec::new();
        let mut last = 0;
        for p in points {
            pieces.push(&data[last..p]);
            last = p;
        }
        pieces.push(&data[last..]);
        prop_assert_eq!(check(&pieces).unwrap(), whole);
    }

    /// A line is accepted exactly when serde_json reads it as one JSON object.
    #[test]
    fn json_lines_agree_with_serde_json(line in json_line()) {
        let ours = check(&[line.as_bytes(), b"\n"]);
        let serde_object = matches!(serde_json::from_str::<serde_json::Value>(&line), Ok(serde_json::Value::Object(_)));
        let blank = line.trim().is_empty();
        prop_assert_eq!(ours.is_ok(), serde_object || blank, "line {:?}: {:?}", line, ours);
    }

    /// Header validation never panics, and accepts exactly the well-formed headers.
    #[test]
    fn header_validation(
        shard_id in any::<u32>(),
        log_id in any::<u64>(),
        sha_len in prop_oneof![Just(0usize), Just(32usize), 0usize..64],
        kind in -2i32..5,
        ack in -2i32..5,
        size in proptest::option::of(any::<u64>()),
    ) {
        let header = proto::SegmentHeader {
            shard_id,
            log_id,
            size,
            sha256: Bytes::from(vec![7u8; sha_len]),
            kind,
            ack,
            zstd_level: None,
        };
        let valid = (sha_len == 0 || sha_len == 32) && (0..=2).contains(&kind) && (0..=2).contains(&ack);
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
    }

    /// Undecodable request bytes are an error, never a panic.
    #[test]
    fn request_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = <proto::ArchiveRequest as prost::Message>::decode(&bytes[..]);
    }
}

fn check(chunks: &[&[u8]]) -> Result<wal_archiver::types::JsonStats, String> {
    let mut checker = JsonLinesChecker::new(1 << 20);
    for chunk in chunks {
        checker.feed(chunk).map_err(|e| e.to_string())?;
    }
    checker.finish().map_err(|e| e.to_string())
}

/// Lines that are mostly valid JSON of every kind, with some damage.
fn json_line() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        (-1e6f64..1e6).prop_map(|f| format!("{f}")),
        "[a-z \\\\\"é]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec(("[a-z]{1,4}", inner), 0..4).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    (
        value,
        0u8..10,
        any::<prop::sample::Index>(),
        "[ ,:{}\\[\\]\"x]",
    )
        .prop_map(|(v, damage, at, junk)| {
            if damage == 0 && !v.is_empty() {
                let i = at.index(v.len());
                let mut s = v;
                if s.is_char_boundary(i) {
                    s.insert_str(i, &junk);
                }
                s
            } else if damage == 1 && v.len() > 1 {
                let i = at.index(v.len());
                v.get(..i).unwrap_or("").to_owned()
            } else {
                v
            }
        })
}
