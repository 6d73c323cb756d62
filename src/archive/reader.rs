//! Verifying decoder. The original bytes come out chunk by chunk; the read that
//! reaches the end checks size and SHA-256 and returns an error instead of
//! end-of-data when they do not match, so a caller that forwards chunks can hold
//! back the last one until the whole segment is proven.

use std::io::{BufReader, Read, Seek, SeekFrom, Take};

use sha2::{Digest as _, Sha256};

use super::ArchiveError;
use super::format::{self, ArchiveFooter, ArchiveHeader, ArchiveMetadata};
use crate::types::Digest;

pub struct ArchiveReader<R: Read> {
    header: ArchiveHeader,
    footer: ArchiveFooter,
    archive_size: u64,
    expected: Digest,
    decoder: zstd::stream::read::Decoder<'static, BufReader<Take<R>>>,
    hasher: Sha256,
    produced: u64,
    verified: bool,
}

/// Header and footer of an archive, without decoding the data.
pub fn read_metadata<R: Read + Seek>(input: R) -> Result<ArchiveMetadata, ArchiveError> {
    let reader = ArchiveReader::open(input)?;
    Ok(reader.metadata())
}

impl<R: Read + Seek> ArchiveReader<R> {
    pub fn open(mut input: R) -> Result<Self, ArchiveError> {
        let archive_size = input.seek(SeekFrom::End(0))?;
        input.seek(SeekFrom::Start(0))?;
        let (body, header_len) = format::read_frame(&mut input, format::HEADER_TAG, false)?;
        let header = format::decode_header(&body)?;
        let expected = header.digest()?;

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
        let (body, _) = format::read_frame(&mut input, format::FOOTER_TAG, true).map_err(|e| {
            ArchiveError::CorruptData(format!(
                "footer is missing or damaged (archive truncated?): {e}"
            ))
        })?;
        let footer = format::decode_footer(&body)?;
        if header_len + footer.compressed_size + footer_len != archive_size
            || footer.sha256 != header.sha256
            || footer.original_size != header.original_size
        {
            return Err(ArchiveError::CorruptData(
                "footer does not match header and file size".into(),
            ));
        }

        input.seek(SeekFrom::Start(header_len))?;
        let data = BufReader::new(input.take(footer.compressed_size));
        let decoder = zstd::stream::read::Decoder::with_buffer(data)?;
        Ok(ArchiveReader {
            header,
            footer,
            archive_size,
            expected,
            decoder,
            hasher: Sha256::new(),
            produced: 0,
            verified: false,
        })
    }
}

impl<R: Read> ArchiveReader<R> {
    pub fn header(&self) -> &ArchiveHeader {
        &self.header
    }

    pub fn metadata(&self) -> ArchiveMetadata {
        ArchiveMetadata {
            header: self.header.clone(),
            compressed_size: self.footer.compressed_size,
            archive_size: self.archive_size,
            json: self.footer.json,
        }
    }

    /// Fills `buf` with original bytes; `Ok(0)` only after size and digest matched.
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, ArchiveError> {
        if self.verified {
            return Ok(0);
        }
        let mut filled = 0;
        while filled < buf.len() {
            let n = self
                .decoder
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
