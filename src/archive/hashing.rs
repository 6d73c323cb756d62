//! SHA-256 of decoded bytes, inline or on a thread of its own. Restoring a
//! segment decodes and hashes every byte; on one thread the hash costs about
//! half of what decoding does, so a restore hashes beside the decoder, and the
//! two overlap on two cores.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use crate::types::Digest;

/// Chunks in flight to the hashing thread: enough to ride out scheduling
/// jitter, few enough to bound memory to a few chunks.
const IN_FLIGHT: usize = 4;

pub(super) enum SegmentHasher {
    Inline(Sha256),
    Threaded(Threaded),
    /// The hashing thread died: no digest can be claimed.
    Broken,
}

pub(super) struct Threaded {
    chunks: SyncSender<Vec<u8>>,
    /// Buffers the thread is done with, for reuse.
    spare: Receiver<Vec<u8>>,
    thread: JoinHandle<Digest>,
}

impl SegmentHasher {
    pub fn inline() -> Self {
        SegmentHasher::Inline(Sha256::new())
    }

    /// A hasher on its own thread; inline if no thread can be started.
    pub fn threaded() -> Self {
        let (chunks, incoming) = sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (done, spare) = sync_channel::<Vec<u8>>(IN_FLIGHT + 1);
        let started = std::thread::Builder::new()
            .name("restore-hash".into())
            .spawn(move || {
                let mut sha = Sha256::new();
                for chunk in incoming {
                    sha.update(&chunk);
                    let _ = done.try_send(chunk);
                }
                Digest(sha.finalize().into())
            });
        match started {
            Ok(thread) => SegmentHasher::Threaded(Threaded {
                chunks,
                spare,
                thread,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a hashing thread: hashing inline");
                SegmentHasher::inline()
            }
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            SegmentHasher::Inline(sha) => sha.update(data),
            SegmentHasher::Threaded(threaded) => {
                let mut chunk = threaded.spare.try_recv().unwrap_or_default();
                chunk.clear();
                chunk.extend_from_slice(data);
                if threaded.chunks.send(chunk).is_err() {
                    *self = SegmentHasher::Broken;
                }
            }
            SegmentHasher::Broken => {}
        }
    }

    /// The digest of everything fed; `None` if the hashing thread failed
    /// (the caller then cannot claim the bytes verified).
    pub fn finish(self) -> Option<Digest> {
        match self {
            SegmentHasher::Inline(sha) => Some(Digest(sha.finalize().into())),
            SegmentHasher::Threaded(Threaded { chunks, thread, .. }) => {
                drop(chunks);
                thread.join().ok()
            }
            SegmentHasher::Broken => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threaded_and_inline_agree() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut inline = SegmentHasher::inline();
        let mut threaded = SegmentHasher::threaded();
        for chunk in data.chunks(65_537) {
            inline.update(chunk);
            threaded.update(chunk);
        }
        let expected = Digest::of(&data);
        assert_eq!(inline.finish(), Some(expected));
        assert_eq!(threaded.finish(), Some(expected));
    }
}
