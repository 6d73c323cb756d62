//! PostgreSQL's archive files as (shard, log_id): the mapping behind
//! `wal-archiver archive-push` (PostgreSQL's `archive_command`) and
//! `archive-get` (its `restore_command`). Pure functions, no I/O, so the
//! mapping is tested on its own and both commands share it.
//!
//! A WAL segment `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline T, segment number
//! S = X × 2^32 / wal_segment_size + Y) is log_id T × 2^40 + S: dense within a
//! timeline, so a gap in a shard's log_ids is a real hole in its WAL, and a
//! later timeline sorts after an earlier one, so a timeline switch only moves
//! the watermark forward. Every other file PostgreSQL archives (`.history`,
//! `.backup` labels, `.partial` segments) is a *side file*: log_id 2^62 + the
//! first 62 bits of the SHA-256 of its name. Side files sit above every
//! segment and do not take part in the watermark (the server's rule for log_ids
//! ≥ 2^62). Both halves are functions of the name, so `archive-get` finds a
//! file again from the name PostgreSQL asks for; a segment additionally needs
//! the segment size, which `archive-push` reads from the file and
//! `archive-get` from the archive (see docs/POSTGRESQL.md for why).

use sha2::{Digest as _, Sha256};

use crate::types::LogId;

/// log_ids from here up are side files: outside every shard's watermark.
pub const SIDE_FILE_BASE: LogId = 1 << 62;
/// A segment's timeline is multiplied by 2^40 …
pub const TIMELINE_SHIFT: u32 = 40;
/// … so timelines must stay below 2^22 for segments to stay below 2^62 …
pub const TIMELINE_LIMIT: u32 = 1 << (62 - TIMELINE_SHIFT);
/// … and segment numbers below 2^40 (1 EiB of WAL with 1 MiB segments).
pub const SEGMENT_NUMBER_LIMIT: u64 = 1 << TIMELINE_SHIFT;
/// The segment sizes `initdb --wal-segsize` accepts: powers of two in this range.
pub const MIN_SEGMENT_SIZE: u64 = 1 << 20;
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{0:?} is not a file name")]
    NotAFileName(String),
    #[error(
        "{name}: timeline {timeline} is too large for a log_id (timelines up to {} are supported)",
        TIMELINE_LIMIT - 1
    )]
    TimelineTooLarge { name: String, timeline: u32 },
    #[error(
        "{name}: segment number {number} is too large for a log_id (at most 2^40-1 segments per timeline)"
    )]
    SegmentNumberTooLarge { name: String, number: u64 },
    #[error(
        "{name}: {size} bytes is not a WAL segment size (a power of two from 1 MiB to 1 GiB); a segment file is always exactly wal_segment_size"
    )]
    BadSegmentSize { name: String, size: u64 },
    #[error("{name}: the segment field {seg:#X} does not exist with {size}-byte segments")]
    SegmentOutOfRange { name: String, seg: u32, size: u64 },
}

/// A WAL segment's name, parsed: `TTTTTTTTXXXXXXXXYYYYYYYY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalSegment {
    pub timeline: u32,
    /// The high 32 bits of the segment's start LSN (`X`).
    pub log: u32,
    /// The segment within those 4 GiB (`Y`).
    pub seg: u32,
}

impl WalSegment {
    /// Exactly 24 upper-case hex digits, as PostgreSQL writes them.
    pub fn parse(name: &str) -> Option<WalSegment> {
        if name.len() != 24 || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
            return None;
        }
        let field = |range: std::ops::Range<usize>| u32::from_str_radix(&name[range], 16).ok();
        Some(WalSegment {
            timeline: field(0..8)?,
            log: field(8..16)?,
            seg: field(16..24)?,
        })
    }

    pub fn name(&self) -> String {
        format!("{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }

    /// The segment number S = X × (2^32 / size) + Y.
    pub fn number(&self, segment_size: u64) -> Result<u64, NameError> {
        check_segment_size(&self.name(), segment_size)?;
        let per_log = (1u64 << 32) / segment_size;
        if u64::from(self.seg) >= per_log {
            return Err(NameError::SegmentOutOfRange {
                name: self.name(),
                seg: self.seg,
                size: segment_size,
            });
        }
        Ok(u64::from(self.log) * per_log + u64::from(self.seg))
    }

    /// T × 2^40 + S.
    pub fn log_id(&self, segment_size: u64) -> Result<LogId, NameError> {
        if self.timeline >= TIMELINE_LIMIT {
            return Err(NameError::TimelineTooLarge {
                name: self.name(),
                timeline: self.timeline,
            });
        }
        let number = self.number(segment_size)?;
        if number >= SEGMENT_NUMBER_LIMIT {
            return Err(NameError::SegmentNumberTooLarge {
                name: self.name(),
                number,
            });
        }
        Ok((u64::from(self.timeline) << TIMELINE_SHIFT) + number)
    }

    /// The segment a log_id below 2^62 stands for, given the segment size.
    pub fn from_log_id(log_id: LogId, segment_size: u64) -> Option<WalSegment> {
        if is_side_file(log_id) || !is_segment_size(segment_size) {
            return None;
        }
        let per_log = (1u64 << 32) / segment_size;
        let number = log_id & (SEGMENT_NUMBER_LIMIT - 1);
        Some(WalSegment {
            timeline: (log_id >> TIMELINE_SHIFT) as u32,
            log: u32::try_from(number / per_log).ok()?,
            seg: (number % per_log) as u32,
        })
    }
}

/// What PostgreSQL hands `archive_command` or asks `restore_command` for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveFile {
    /// A WAL segment: its log_id needs the segment size.
    Segment(WalSegment),
    /// Anything else (`.history`, `.backup`, `.partial`): a side file.
    Side(String),
}

impl ArchiveFile {
    /// Any single path component is accepted; names that are not segments are side files.
    pub fn from_name(name: &str) -> Result<ArchiveFile, NameError> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(NameError::NotAFileName(name.to_owned()));
        }
        Ok(match WalSegment::parse(name) {
            Some(segment) => ArchiveFile::Segment(segment),
            None => ArchiveFile::Side(name.to_owned()),
        })
    }

    /// The log_id; `segment_size` is only read for segments.
    pub fn log_id(&self, segment_size: u64) -> Result<LogId, NameError> {
        match self {
            ArchiveFile::Segment(segment) => segment.log_id(segment_size),
            ArchiveFile::Side(name) => Ok(side_file_log_id(name)),
        }
    }
}

/// 2^62 + the first 62 bits of the SHA-256 of the name. Two names colliding
/// (probability ~n²/2^63) with different bytes are refused by the server as
/// ALREADY_EXISTS, never silently overwritten.
pub fn side_file_log_id(name: &str) -> LogId {
    let digest = Sha256::digest(name.as_bytes());
    let first = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    SIDE_FILE_BASE | (first >> 2)
}

pub fn is_side_file(log_id: LogId) -> bool {
    log_id >= SIDE_FILE_BASE
}

pub fn is_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size)
}

fn check_segment_size(name: &str, size: u64) -> Result<(), NameError> {
    if is_segment_size(size) {
        Ok(())
    } else {
        Err(NameError::BadSegmentSize {
            name: name.to_owned(),
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn segment_id(name: &str, size: u64) -> Result<LogId, NameError> {
        ArchiveFile::from_name(name)?.log_id(size)
    }

    #[test]
    fn segments_of_16_mib() {
        assert_eq!(
            segment_id("000000010000000000000001", 16 * MIB),
            Ok((1 << 40) + 1)
        );
        // 0/FF000000 is segment 255, 1/00000000 segment 256: no gap at the 4 GiB boundary.
        assert_eq!(
            segment_id("0000000100000000000000FF", 16 * MIB),
            Ok((1 << 40) + 255)
        );
        assert_eq!(
            segment_id("000000010000000100000000", 16 * MIB),
            Ok((1 << 40) + 256)
        );
        assert_eq!(
            segment_id("00000002000000A300000042", 16 * MIB),
            Ok((2 << 40) + 0xA3 * 256 + 0x42)
        );
        // Y beyond 0xFF does not exist with 16 MiB segments.
        assert!(matches!(
            segment_id("000000010000000000000100", 16 * MIB),
            Err(NameError::SegmentOutOfRange { .. })
        ));
    }

    #[test]
    fn other_segment_sizes() {
        assert_eq!(
            segment_id("000000010000000000000FFF", MIB),
            Ok((1 << 40) + 4095)
        );
        assert_eq!(
            segment_id("000000010000000100000000", MIB),
            Ok((1 << 40) + 4096)
        );
        assert_eq!(
            segment_id("000000010000000100000003", 64 * MIB),
            Ok((1 << 40) + 64 + 3)
        );
        assert_eq!(
            segment_id("000000010000000100000003", 1024 * MIB),
            Ok((1 << 40) + 4 + 3)
        );
        for size in [0, MIB - 1, 3 * MIB, 2048 * MIB, 16 * MIB + 1] {
            assert!(matches!(
                segment_id("000000010000000000000001", size),
                Err(NameError::BadSegmentSize { .. })
            ));
        }
    }

    #[test]
    fn bounds() {
        assert_eq!(
            segment_id("003FFFFF0000000000000001", 16 * MIB),
            Ok(((TIMELINE_LIMIT as u64 - 1) << 40) + 1)
        );
        assert!(matches!(
            segment_id("004000000000000000000001", 16 * MIB),
            Err(NameError::TimelineTooLarge {
                timeline: 0x40_0000,
                ..
            })
        ));
        // The largest segment number: X = 2^28 - 1, Y = 4095 with 1 MiB segments.
        let last = segment_id("000000010FFFFFFF00000FFF", MIB).unwrap();
        assert_eq!(last, (1 << 40) + SEGMENT_NUMBER_LIMIT - 1);
        assert!(!is_side_file(last));
        assert!(matches!(
            segment_id("000000011000000000000000", MIB),
            Err(NameError::SegmentNumberTooLarge { .. })
        ));
        // With 1 GiB segments the whole LSN range fits.
        assert!(segment_id("00000001FFFFFFFF00000003", 1024 * MIB).is_ok());
    }

    #[test]
    fn later_timelines_sort_after_earlier_ones() {
        let size = 16 * MIB;
        let last_of_1 = segment_id("0000000100000FFF000000FF", size).unwrap();
        let first_of_2 = segment_id("000000020000000000000001", size).unwrap();
        assert!(first_of_2 > last_of_1);
    }

    #[test]
    fn round_trip() {
        for size in [MIB, 16 * MIB, 64 * MIB, 1024 * MIB] {
            for name in [
                "000000010000000000000001",
                "00000007000000AB00000002",
                "003FFFFF0000000000000000",
            ] {
                let segment = WalSegment::parse(name).unwrap();
                let log_id = segment.log_id(size).unwrap();
                assert_eq!(
                    WalSegment::from_log_id(log_id, size),
                    Some(segment),
                    "{name} {size}"
                );
            }
        }
        assert_eq!(WalSegment::from_log_id(SIDE_FILE_BASE, 16 * MIB), None);
    }

    #[test]
    fn side_files() {
        for name in [
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000005.partial",
            "00000001000000000000000a", // lower case: not how PostgreSQL names segments
            "0000000100000000000000010",
        ] {
            let file = ArchiveFile::from_name(name).unwrap();
            assert_eq!(file, ArchiveFile::Side(name.to_owned()));
            let log_id = file.log_id(0).unwrap();
            assert!(is_side_file(log_id), "{name}");
            assert!(log_id <= i64::MAX as u64, "{name}");
            assert_eq!(log_id, side_file_log_id(name), "deterministic");
        }
        assert_ne!(
            side_file_log_id("00000002.history"),
            side_file_log_id("00000003.history")
        );
        // Pinned, so a change of the mapping cannot go unnoticed: archives
        // already pushed would no longer be found.
        assert_eq!(
            side_file_log_id("00000002.history"),
            7_917_756_078_159_095_574
        );
    }

    #[test]
    fn not_file_names() {
        for name in ["", ".", "..", "pg_wal/000000010000000000000001", "a\0b"] {
            assert!(
                matches!(
                    ArchiveFile::from_name(name),
                    Err(NameError::NotAFileName(_))
                ),
                "{name:?}"
            );
        }
    }
}
