//! Streaming encoder: bytes go through zstd to the sink as they arrive, so the
//! memory a job needs is zstd's window and buffers, whatever the segment size.
//! Before the footer is written, the bytes fed are checked against the `Received` proof
//! of what was received: its size and the XXH3-128 recorded when the segment
//! arrived and its SHA-256 was verified — the same guarantee as re-hashing
//! SHA-256, at a sixth of the CPU. A mismatch returns an error and the caller
//! discards the sink. The proof may come only at the end: a segment can be
//! compressed while it still arrives (its header then lacks size and digest).

use std::io::{self, Write};

use xxhash_rust::xxh3::Xxh3;

use super::ArchiveError;
use super::format::{self, ArchiveFooter, ArchiveHeader};
use crate::types::{JsonStats, Received};

/// Bytes per zstd worker job when one segment is compressed on several threads.
const MULTITHREAD_JOB_SIZE: u32 = 4 << 20;

pub struct ArchiveWriter<W: Write> {
    encoder: zstd::stream::write::Encoder<'static, CountingWriter<W>>,
    hasher: Xxh3,
    written: u64,
    header: ArchiveHeader,
    header_len: u64,
}

/// The sink, handed back once the archive is complete, with the sizes written.
pub struct WrittenArchive<W> {
    pub sink: W,
    pub archive_size: u64,
    pub compressed_size: u64,
}

impl<W: Write> ArchiveWriter<W> {
    /// Writes the header frame and starts a zstd frame. `zstd_workers` above
    /// 1 lets zstd compress this one segment on that many threads of its own.
    pub fn new(
        mut sink: W,
        header: ArchiveHeader,
        zstd_workers: u32,
    ) -> Result<Self, ArchiveError> {
        header.digest()?;
        let header_len = format::write_header(&mut sink, &header)?;
        let mut encoder = zstd::stream::write::Encoder::new(
            CountingWriter {
                inner: sink,
                count: 0,
            },
            header.zstd_level,
        )?;
        encoder.include_checksum(true)?;
        encoder.set_pledged_src_size(header.original_size)?;
        if zstd_workers > 1 {
            encoder.multithread(zstd_workers)?;
            // By default zstd makes each job four windows long (8 MiB at level
            // 3) and buffers several per worker: 69 MiB peak for a 1 GiB
            // segment. 4 MiB jobs measured the same speed at about 45 MiB.
            encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(MULTITHREAD_JOB_SIZE))?;
        }
        Ok(ArchiveWriter {
            encoder,
            hasher: Xxh3::new(),
            written: 0,
            header,
            header_len,
        })
    }

    pub fn write_all(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        self.written += data.len() as u64;
        if let Some(size) = self.header.original_size
            && self.written > size
        {
            return Err(ArchiveError::SizeMismatch {
                expected: size,
                actual: self.written,
            });
        }
        self.hasher.update(data);
        self.encoder.write_all(data)?;
        Ok(())
    }

    /// Checks what was written against `proof` (and the header, if it has a
    /// size and digest), ends the zstd frame and writes the footer. The sink
    /// is returned unflushed to durable storage: syncing is the caller's.
    pub fn finish(
        self,
        proof: &Received,
        json: Option<JsonStats>,
    ) -> Result<WrittenArchive<W>, ArchiveError> {
        if self.written != proof.size {
            return Err(ArchiveError::SizeMismatch {
                expected: proof.size,
                actual: self.written,
            });
        }
        let actual = self.hasher.digest128();
        if actual != proof.content_xxh3 {
            return Err(ArchiveError::ContentMismatch {
                expected: format!("{:032x}", proof.content_xxh3),
                actual: format!("{actual:032x}"),
            });
        }
        let header_agrees = self
            .header
            .original_size
            .is_none_or(|size| size == proof.size)
            && self.header.digest()?.is_none_or(|sha| sha == proof.sha256);
        if !header_agrees {
            return Err(ArchiveError::CorruptMetadata(
                "the header's size or digest is not the segment's".into(),
            ));
        }
        let CountingWriter { mut inner, count } = self.encoder.finish()?;
        let footer = ArchiveFooter {
            format_version: self.header.format_version,
            original_size: self.written,
            compressed_size: count,
            sha256: proof.sha256.to_hex(),
            json,
        };
        let footer_len = format::write_footer(&mut inner, &footer)?;
        inner.flush()?;
        Ok(WrittenArchive {
            sink: inner,
            archive_size: self.header_len + count + footer_len,
            compressed_size: count,
        })
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
