//! Verifying decoder. It reads an archive front to back, never seeking, so it
//! works on a file or an object-store download alike: the header frame, the
//! one zstd frame of data, then the footer frame and the end of the input.
//! The original bytes come out chunk by chunk; the read that reaches the end
//! checks size, SHA-256 and footer, and returns an error instead of
//! end-of-data when anything does not match, so a caller that forwards chunks
//! can hold back the last one until the whole segment is proven.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

use sha2::{Digest as _, Sha256};

use super::ArchiveError;
use super::format::{self, ArchiveFooter, ArchiveHeader, ArchiveMetadata};
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
    expected: Digest,
    decoder: Option<zstd::stream::read::Decoder<'static, Consumed<BufReader<R>>>>,
    hasher: Sha256,
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
    let footer = read_footer(&mut input)?;
    check_footer(
        &header,
        &footer,
        header_len + footer.compressed_size + footer_len,
        archive_size,
    )?;
    Ok(metadata(header, &footer, archive_size))
}

impl<R: Read> ArchiveReader<R> {
    /// Reads the header; the data is decoded by `read_chunk`.
    pub fn open(input: R) -> Result<Self, ArchiveError> {
        let mut input = BufReader::with_capacity(256 << 10, input);
        let (body, header_len) = format::read_frame(&mut input, format::HEADER_TAG, false)?;
        let header = format::decode_header(&body)?;
        let expected = header.digest()?;
        let decoder = zstd::stream::read::Decoder::with_buffer(Consumed {
            inner: input,
            consumed: 0,
        })?
        .single_frame();
        Ok(ArchiveReader {
            header,
            header_len,
            footer: None,
            expected,
            decoder: Some(decoder),
            hasher: Sha256::new(),
            produced: 0,
            verified: false,
        })
    }

    /// Refuses an archive that is not the one `expected` describes.
    pub fn expect(mut self, expected: &Expected) -> Result<Self, ArchiveError> {
        let header = &self.header;
        let found = (header.shard_id, header.log_id, header.original_size);
        let wanted = (expected.shard_id, expected.log_id, expected.size);
        if found != wanted || header.digest()? != expected.sha256 {
            return Err(ArchiveError::WrongSegment(format!(
                "the archive holds shard {} log_id {} ({} bytes, SHA-256 {}) but the job recorded shard {} \
                 log_id {} ({} bytes, SHA-256 {})",
                found.0,
                found.1,
                found.2,
                header.sha256,
                wanted.0,
                wanted.1,
                wanted.2,
                expected.sha256
            )));
        }
        self.expected = expected.sha256;
        Ok(self)
    }

    pub fn header(&self) -> &ArchiveHeader {
        &self.header
    }

    /// Header and footer; the footer is only known once everything was read.
    pub fn metadata(&self) -> Option<ArchiveMetadata> {
        let (footer, archive_size) = self.footer.as_ref()?;
        Some(metadata(self.header.clone(), footer, *archive_size))
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
        if self.produced > self.header.original_size {
            return Err(ArchiveError::SizeMismatch {
                expected: self.header.original_size,
                actual: self.produced,
            });
        }
        self.hasher.update(&buf[..filled]);
        if filled < buf.len() {
            self.verify()?;
        }
        Ok(filled)
    }

    fn verify(&mut self) -> Result<(), ArchiveError> {
        if self.produced != self.header.original_size {
            return Err(ArchiveError::SizeMismatch {
                expected: self.header.original_size,
                actual: self.produced,
            });
        }
        let actual = Digest(std::mem::take(&mut self.hasher).finalize().into());
        if actual != self.expected {
            return Err(ArchiveError::DigestMismatch {
                expected: self.expected.to_hex(),
                actual: actual.to_hex(),
            });
        }
        let Some(decoder) = self.decoder.take() else {
            return Err(ArchiveError::CorruptData("read after a failure".into()));
        };
        let Consumed {
            inner: mut rest,
            consumed: compressed,
        } = decoder.finish();
        let (footer, footer_len) = read_footer_with_len(&mut rest)?;
        let mut trailing = [0u8; 1];
        if rest.read(&mut trailing)? != 0 {
            return Err(ArchiveError::CorruptData("bytes after the footer".into()));
        }
        let archive_size = self.header_len + compressed + footer_len;
        check_footer(&self.header, &footer, archive_size, archive_size)?;
        if footer.compressed_size != compressed {
            return Err(ArchiveError::CorruptData(format!(
                "footer says {} compressed bytes, the data frame has {compressed}",
                footer.compressed_size
            )));
        }
        self.footer = Some((footer, archive_size));
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

fn read_footer(input: &mut impl Read) -> Result<ArchiveFooter, ArchiveError> {
    read_footer_with_len(input).map(|(footer, _)| footer)
}

fn read_footer_with_len(input: &mut impl Read) -> Result<(ArchiveFooter, u64), ArchiveError> {
    let (body, len) = format::read_frame(input, format::FOOTER_TAG, true).map_err(|e| {
        ArchiveError::CorruptData(format!(
            "footer is missing or damaged (archive truncated?): {e}"
        ))
    })?;
    Ok((format::decode_footer(&body)?, len))
}

/// The footer must describe the same segment as the header and add up to
/// the archive's size.
fn check_footer(
    header: &ArchiveHeader,
    footer: &ArchiveFooter,
    computed_size: u64,
    archive_size: u64,
) -> Result<(), ArchiveError> {
    if computed_size != archive_size
        || footer.sha256 != header.sha256
        || footer.original_size != header.original_size
    {
        return Err(ArchiveError::CorruptData(
            "footer does not match header and file size".into(),
        ));
    }
    Ok(())
}

fn metadata(header: ArchiveHeader, footer: &ArchiveFooter, archive_size: u64) -> ArchiveMetadata {
    ArchiveMetadata {
        header,
        compressed_size: footer.compressed_size,
        archive_size,
        json: footer.json,
    }
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
