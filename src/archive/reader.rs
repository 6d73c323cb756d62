//! Verifying decoder. It reads an archive front to back, never seeking, so it
//! works on a file or an object-store download alike: the header frame, the
//! one zstd frame of data, then the footer frame and the end of the input.
//! The original bytes come out chunk by chunk; the read that reaches the end
//! checks size, SHA-256 and footer, and returns an error instead of
//! end-of-data when anything does not match, so a caller that forwards chunks
//! can hold back the last one until the whole segment is proven.
//!
//! What the bytes must hash to comes from the job that recorded the segment
//! (`expect`), else from the header; the footer must say the same. A
//! version 2 header may lack size and digest (the segment was compressed
//! while it arrived): then the footer is the reference.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

use super::ArchiveError;
use super::format::{self, ArchiveFooter, ArchiveHeader, ArchiveMetadata};
use super::hashing::SegmentHasher;
use crate::types::{Digest, LogId, ShardId};

/// What an archive must hold, from the job that recorded it: an archive
/// copied over another one is refused even though it is intact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub shard_id: ShardId,
    pub log_id: LogId,
    pub size: u64,
    pub sha256: Digest,
}

pub struct ArchiveReader<R: Read> {
    header: ArchiveHeader,
    header_len: u64,
    footer: Option<(ArchiveFooter, u64)>,
    /// Size and digest the bytes must have, when known before the footer.
    size: Option<u64>,
    digest: Option<Digest>,
    decoder: Option<zstd::stream::read::Decoder<'static, Consumed<BufReader<R>>>>,
    hasher: SegmentHasher,
    produced: u64,
    verified: bool,
}

/// Header and footer of an archive file, without decoding the data.
pub fn read_metadata<R: Read + Seek>(mut input: R) -> Result<ArchiveMetadata, ArchiveError> {
    let archive_size = input.seek(SeekFrom::End(0))?;
    input.seek(SeekFrom::Start(0))?;
    let (body, header_len) = format::read_frame(&mut input, format::HEADER_TAG, false)?;
    let header = format::decode_header(&body)?;
    if archive_size < header_len + 4 {
        return Err(ArchiveError::CorruptData(
            "archive ends before its footer".into(),
        ));
    }
    input.seek(SeekFrom::End(-4))?;
    let mut len_bytes = [0u8; 4];
    input.read_exact(&mut len_bytes)?;
    let footer_len = u64::from(u32::from_le_bytes(len_bytes));
    if footer_len > archive_size - header_len {
        return Err(ArchiveError::CorruptData(
            "footer is missing (archive truncated?)".into(),
        ));
    }
    input.seek(SeekFrom::Start(archive_size - footer_len))?;
    let (footer, _) = read_footer(&mut input)?;
    check_footer(&header, &footer)?;
    if header_len + footer.compressed_size + footer_len != archive_size {
        return Err(ArchiveError::CorruptData(
            "footer does not match header and file size".into(),
        ));
    }
    Ok(ArchiveMetadata::new(&header, &footer, archive_size))
}

impl<R: Read> ArchiveReader<R> {
    /// Reads the header; the data is decoded by `read_chunk`.
    pub fn open(input: R) -> Result<Self, ArchiveError> {
        let mut input = BufReader::with_capacity(256 << 10, input);
        let (body, header_len) = format::read_frame(&mut input, format::HEADER_TAG, false)?;
        let header = format::decode_header(&body)?;
        let digest = header.digest()?;
        let decoder = zstd::stream::read::Decoder::with_buffer(Consumed {
            inner: input,
            consumed: 0,
        })?
        .single_frame();
        Ok(ArchiveReader {
            size: header.original_size,
            digest,
            header,
            header_len,
            footer: None,
            decoder: Some(decoder),
            hasher: SegmentHasher::inline(),
            produced: 0,
            verified: false,
        })
    }

    /// Refuses an archive that is not the one `expected` describes.
    pub fn expect(mut self, expected: &Expected) -> Result<Self, ArchiveError> {
        let header = &self.header;
        let wrong = (header.shard_id, header.log_id) != (expected.shard_id, expected.log_id)
            || header
                .original_size
                .is_some_and(|size| size != expected.size)
            || header.digest()?.is_some_and(|sha| sha != expected.sha256);
        if wrong {
            let size = header
                .original_size
                .map_or_else(|| "?".into(), |s| s.to_string());
            let sha = header.sha256.as_deref().unwrap_or("?");
            return Err(ArchiveError::WrongSegment(format!(
                "the archive holds shard {} log_id {} ({size} bytes, SHA-256 {sha}) but the job recorded shard {} \
                 log_id {} ({} bytes, SHA-256 {})",
                header.shard_id,
                header.log_id,
                expected.shard_id,
                expected.log_id,
                expected.size,
                expected.sha256
            )));
        }
        self.size = Some(expected.size);
        self.digest = Some(expected.sha256);
        Ok(self)
    }

    /// Hashes on a thread beside the decoder, so the two overlap: for a
    /// reader that streams a whole segment out (restore).
    pub fn hash_beside(mut self) -> Self {
        if self.produced == 0 {
            self.hasher = SegmentHasher::threaded();
        }
        self
    }

    pub fn header(&self) -> &ArchiveHeader {
        &self.header
    }

    /// The segment's size and SHA-256 as the archive records them: from the
    /// header when it carries them, else (an archive written while its
    /// segment still arrived) from the footer, which takes reading it all.
    pub fn identity(&mut self) -> Result<(u64, Digest), ArchiveError> {
        if let (Some(size), Some(sha)) = (self.header.original_size, self.header.digest()?) {
            return Ok((size, sha));
        }
        self.copy_to(&mut std::io::sink())?;
        let (footer, _) = self
            .footer
            .as_ref()
            .ok_or_else(|| ArchiveError::CorruptData("no footer".into()))?;
        let sha = footer
            .sha256
            .parse()
            .map_err(ArchiveError::CorruptMetadata)?;
        Ok((footer.original_size, sha))
    }

    /// Header and footer; the footer is only known once everything was read.
    pub fn metadata(&self) -> Option<ArchiveMetadata> {
        let (footer, archive_size) = self.footer.as_ref()?;
        Some(ArchiveMetadata::new(&self.header, footer, *archive_size))
    }

    /// Fills `buf` with original bytes; `Ok(0)` only after size, digest and
    /// footer were checked.
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, ArchiveError> {
        if self.verified {
            return Ok(0);
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return Err(ArchiveError::CorruptData("read after a failure".into()));
        };
        let mut filled = 0;
        while filled < buf.len() {
            let n = decoder
                .read(&mut buf[filled..])
                .map_err(|e| ArchiveError::CorruptData(e.to_string()))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        self.produced += filled as u64;
        if let Some(size) = self.size
            && self.produced > size
        {
            return Err(ArchiveError::SizeMismatch {
                expected: size,
                actual: self.produced,
            });
        }
        self.hasher.update(&buf[..filled]);
        if filled < buf.len() {
            self.verify()?;
        }
        Ok(filled)
    }

    /// At the end of the data: the footer, then size and digest against it
    /// and against what was expected.
    fn verify(&mut self) -> Result<(), ArchiveError> {
        let Some(decoder) = self.decoder.take() else {
            return Err(ArchiveError::CorruptData("read after a failure".into()));
        };
        let Consumed {
            inner: mut rest,
            consumed: compressed,
        } = decoder.finish();
        let (footer, footer_len) = read_footer(&mut rest)?;
        let mut trailing = [0u8; 1];
        if rest.read(&mut trailing)? != 0 {
            return Err(ArchiveError::CorruptData("bytes after the footer".into()));
        }
        check_footer(&self.header, &footer)?;
        if footer.compressed_size != compressed {
            return Err(ArchiveError::CorruptData(format!(
                "footer says {} compressed bytes, the data frame has {compressed}",
                footer.compressed_size
            )));
        }
        let size = self.size.unwrap_or(footer.original_size);
        if self.produced != size || footer.original_size != size {
            return Err(ArchiveError::SizeMismatch {
                expected: size,
                actual: self.produced,
            });
        }
        let footer_digest: Digest = footer
            .sha256
            .parse()
            .map_err(ArchiveError::CorruptMetadata)?;
        let expected = self.digest.unwrap_or(footer_digest);
        let actual = std::mem::replace(&mut self.hasher, SegmentHasher::inline())
            .finish()
            .ok_or_else(|| std::io::Error::other("the hashing thread failed"))?;
        if actual != expected || footer_digest != expected {
            return Err(ArchiveError::DigestMismatch {
                expected: expected.to_hex(),
                actual: actual.to_hex(),
            });
        }
        self.footer = Some((footer, self.header_len + compressed + footer_len));
        self.verified = true;
        Ok(())
    }

    /// Decodes everything into `out`, verifying size and digest.
    pub fn copy_to(&mut self, out: &mut impl std::io::Write) -> Result<u64, ArchiveError> {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = self.read_chunk(&mut buf)?;
            if n == 0 {
                return Ok(self.produced);
            }
            out.write_all(&buf[..n])?;
        }
    }
}

fn read_footer(input: &mut impl Read) -> Result<(ArchiveFooter, u64), ArchiveError> {
    let (body, len) = format::read_frame(input, format::FOOTER_TAG, true).map_err(|e| {
        ArchiveError::CorruptData(format!(
            "footer is missing or damaged (archive truncated?): {e}"
        ))
    })?;
    Ok((format::decode_footer(&body)?, len))
}

/// The footer must describe the same segment as the header (where the header
/// says anything).
fn check_footer(header: &ArchiveHeader, footer: &ArchiveFooter) -> Result<(), ArchiveError> {
    let agrees = header
        .sha256
        .as_ref()
        .is_none_or(|sha| *sha == footer.sha256)
        && header
            .original_size
            .is_none_or(|size| size == footer.original_size)
        && footer.format_version == header.format_version;
    if !agrees {
        return Err(ArchiveError::CorruptData(
            "footer does not match header".into(),
        ));
    }
    Ok(())
}

/// Counts the bytes the zstd decoder takes from the buffer, which is the size
/// of the data frame: the footer follows right after it.
struct Consumed<B> {
    inner: B,
    consumed: u64,
}

impl<B: BufRead> Read for Consumed<B> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

impl<B: BufRead> BufRead for Consumed<B> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.consumed += amount as u64;
        self.inner.consume(amount);
    }
}
