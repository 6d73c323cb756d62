//! Header and footer frames. Both are zstd skippable frames (magic
//! 0x184D2A50, little-endian u32 length, payload) whose payload is a 4-byte tag
//! followed by MessagePack with named fields, so fields can be added without a
//! version bump. The footer payload ends with the footer frame's total length,
//! so a reader finds it from the end of the file without scanning.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::ArchiveError;
use crate::types::{ContentKind, Digest, JsonStats, LogId, ShardId};

/// The newest version this build writes and reads. Version 2 allows a header
/// without the segment's size and digest (a segment compressed while it still
/// arrives); an archive whose header has both is still written as version 1.
pub const FORMAT_VERSION: u32 = 2;
/// The version of an archive whose header knows the segment's size and digest.
pub const FORMAT_WITH_DIGEST_UP_FRONT: u32 = 1;
pub(super) const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
pub(super) const HEADER_TAG: &[u8; 4] = b"WALH";
pub(super) const FOOTER_TAG: &[u8; 4] = b"WALF";
/// Larger metadata than this is corruption, not a real header.
const MAX_METADATA_SIZE: u32 = 64 << 10;

/// Written before the data: everything known when compression starts. The
/// size and digest are absent when compression started before the segment
/// had fully arrived (version 2); the footer always has them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveHeader {
    pub format_version: u32,
    pub shard_id: ShardId,
    pub log_id: LogId,
    pub content_kind: ContentKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub zstd_level: i32,
    pub created_unix_ms: i64,
}

/// Written after the data: what is only known once it is compressed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveFooter {
    pub format_version: u32,
    pub original_size: u64,
    /// Bytes of the zstd data frames between header and footer.
    pub compressed_size: u64,
    pub sha256: String,
    /// JSON-lines only: counted while compressing, so it lives here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<JsonStats>,
}

/// Header and footer together, as `inspect` shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveMetadata {
    pub format_version: u32,
    pub shard_id: ShardId,
    pub log_id: LogId,
    pub content_kind: ContentKind,
    pub original_size: u64,
    pub sha256: String,
    pub zstd_level: i32,
    pub created_unix_ms: i64,
    pub compressed_size: u64,
    pub archive_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<JsonStats>,
}

impl ArchiveMetadata {
    pub fn new(header: &ArchiveHeader, footer: &ArchiveFooter, archive_size: u64) -> Self {
        ArchiveMetadata {
            format_version: header.format_version,
            shard_id: header.shard_id,
            log_id: header.log_id,
            content_kind: header.content_kind,
            original_size: footer.original_size,
            sha256: footer.sha256.clone(),
            zstd_level: header.zstd_level,
            created_unix_ms: header.created_unix_ms,
            compressed_size: footer.compressed_size,
            archive_size,
            json: footer.json,
        }
    }
}

impl ArchiveHeader {
    /// The segment's digest if the header carries it.
    pub fn digest(&self) -> Result<Option<Digest>, ArchiveError> {
        self.sha256
            .as_deref()
            .map(|hex| hex.parse().map_err(ArchiveError::CorruptMetadata))
            .transpose()
    }
}

pub(super) fn write_header(out: &mut impl Write, header: &ArchiveHeader) -> std::io::Result<u64> {
    let body = rmp_serde::to_vec_named(header).map_err(std::io::Error::other)?;
    write_frame(out, HEADER_TAG, &body, false)
}

pub(super) fn write_footer(out: &mut impl Write, footer: &ArchiveFooter) -> std::io::Result<u64> {
    let body = rmp_serde::to_vec_named(footer).map_err(std::io::Error::other)?;
    write_frame(out, FOOTER_TAG, &body, true)
}

/// Writes one skippable frame and returns its total length.
fn write_frame(
    out: &mut impl Write,
    tag: &[u8; 4],
    body: &[u8],
    with_length_suffix: bool,
) -> std::io::Result<u64> {
    let suffix = if with_length_suffix { 4 } else { 0 };
    let payload_len = (tag.len() + body.len() + suffix) as u32;
    let total = 8 + payload_len;
    out.write_all(&SKIPPABLE_MAGIC.to_le_bytes())?;
    out.write_all(&payload_len.to_le_bytes())?;
    out.write_all(tag)?;
    out.write_all(body)?;
    if with_length_suffix {
        out.write_all(&total.to_le_bytes())?;
    }
    Ok(u64::from(total))
}

/// Reads the frame at the reader's position; returns its MessagePack body and total length.
pub(super) fn read_frame(
    input: &mut impl Read,
    tag: &[u8; 4],
    with_length_suffix: bool,
) -> Result<(Vec<u8>, u64), ArchiveError> {
    let mut head = [0u8; 8];
    input.read_exact(&mut head).map_err(|e| truncated(tag, e))?;
    let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if magic != SKIPPABLE_MAGIC {
        return Err(ArchiveError::NotAnArchive(format!(
            "no {} frame (magic {magic:#010x})",
            tag_name(tag)
        )));
    }
    let suffix = if with_length_suffix { 4 } else { 0 };
    if len > MAX_METADATA_SIZE || (len as usize) < tag.len() + suffix {
        return Err(ArchiveError::CorruptMetadata(format!(
            "{} frame of {len} bytes",
            tag_name(tag)
        )));
    }
    let mut payload = vec![0u8; len as usize];
    input
        .read_exact(&mut payload)
        .map_err(|e| truncated(tag, e))?;
    if &payload[..4] != tag {
        return Err(ArchiveError::NotAnArchive(format!(
            "skippable frame is not a {} frame",
            tag_name(tag)
        )));
    }
    payload.truncate(payload.len() - suffix);
    payload.drain(..4);
    Ok((payload, 8 + u64::from(len)))
}

pub(super) fn decode_header(body: &[u8]) -> Result<ArchiveHeader, ArchiveError> {
    let header: ArchiveHeader = rmp_serde::from_slice(body)
        .map_err(|e| ArchiveError::CorruptMetadata(format!("header: {e}")))?;
    check_version(header.format_version)?;
    if header.format_version == FORMAT_WITH_DIGEST_UP_FRONT
        && (header.original_size.is_none() || header.sha256.is_none())
    {
        return Err(ArchiveError::CorruptMetadata(
            "a version 1 header must hold the segment's size and SHA-256".into(),
        ));
    }
    Ok(header)
}

pub(super) fn decode_footer(body: &[u8]) -> Result<ArchiveFooter, ArchiveError> {
    let footer: ArchiveFooter = rmp_serde::from_slice(body)
        .map_err(|e| ArchiveError::CorruptMetadata(format!("footer: {e}")))?;
    check_version(footer.format_version)?;
    Ok(footer)
}

fn check_version(version: u32) -> Result<(), ArchiveError> {
    if version == 0 || version > FORMAT_VERSION {
        return Err(ArchiveError::UnsupportedVersion(version));
    }
    Ok(())
}

fn tag_name(tag: &[u8; 4]) -> &'static str {
    if tag == HEADER_TAG {
        "header"
    } else {
        "footer"
    }
}

fn truncated(tag: &[u8; 4], e: std::io::Error) -> ArchiveError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ArchiveError::CorruptMetadata(format!("archive ends inside its {} frame", tag_name(tag)))
    } else {
        ArchiveError::Io(e)
    }
}
