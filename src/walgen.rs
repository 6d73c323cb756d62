//! Deterministic JSON-lines WAL of an event store, for tests, the benchmark and
//! the README tour. Entries look like what event databases write — a timestamp,
//! a context id, an event type, a small payload — with the repetition of real
//! traffic: a few hot event types and contexts, rising timestamps.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// splitmix64: tiny, fast, and its output never changes with a dependency
/// upgrade, so a seed names the same bytes forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Skewed towards 0: a few values are hot, most are rare.
    fn skewed(&mut self, n: u64) -> u64 {
        let r = self.below(n);
        r * r / n
    }
}

const EVENT_TYPES: &[&str] = &[
    "page_viewed",
    "item_added_to_cart",
    "order_placed",
    "order_paid",
    "order_shipped",
    "session_started",
    "session_ended",
    "item_removed_from_cart",
    "coupon_applied",
    "refund_requested",
    "address_changed",
    "password_reset",
];
const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "JPY"];
const PAGES: &[&str] = &[
    "/",
    "/search",
    "/cart",
    "/checkout",
    "/product",
    "/account",
    "/help",
];

pub struct EventGenerator {
    rng: SplitMix64,
    event_id: u64,
    timestamp: i64,
}

impl EventGenerator {
    pub fn new(seed: u64) -> Self {
        EventGenerator {
            rng: SplitMix64(seed),
            event_id: 0,
            timestamp: 1_700_000_000_000,
        }
    }

    /// Appends one entry (with its newline) to `out`.
    pub fn entry(&mut self, out: &mut Vec<u8>) {
        self.event_id += 1;
        self.timestamp += self.rng.below(40) as i64;
        let event_type = EVENT_TYPES[self.rng.skewed(EVENT_TYPES.len() as u64) as usize];
        let user = self.rng.skewed(5000);
        let rng = &mut self.rng;
        let payload = match event_type {
            "page_viewed" => format!(
                r#"{{"path":"{}","referrer":"{}","duration_ms":{}}}"#,
                PAGES[rng.below(PAGES.len() as u64) as usize],
                PAGES[rng.below(PAGES.len() as u64) as usize],
                rng.below(30_000)
            ),
            "item_added_to_cart" | "item_removed_from_cart" => format!(
                r#"{{"sku":"SKU-{:05}","quantity":{},"price_cents":{}}}"#,
                rng.skewed(20_000),
                1 + rng.below(3),
                99 + rng.below(20_000)
            ),
            "order_placed" | "order_paid" | "order_shipped" | "refund_requested" => format!(
                r#"{{"order_id":"ord-{:07}","amount_cents":{},"currency":"{}","items":{}}}"#,
                rng.below(10_000_000),
                100 + rng.below(50_000),
                CURRENCIES[rng.skewed(CURRENCIES.len() as u64) as usize],
                1 + rng.below(8)
            ),
            _ => format!(
                r#"{{"client":"web","version":"2.{}.{}"}}"#,
                rng.below(10),
                rng.below(30)
            ),
        };
        let _ = writeln!(
            out,
            r#"{{"timestamp":{},"context_id":"user-{}","event_type":"{}","payload":{},"event_id":{}}}"#,
            self.timestamp, user, event_type, payload, self.event_id
        );
    }

    /// A segment of whole entries, at least `size` bytes long.
    pub fn segment(&mut self, size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(size + 512);
        while out.len() < size {
            self.entry(&mut out);
        }
        out
    }
}

/// Writes `count` segments of about `size` bytes as `dir/wal-<id>.log`, ids
/// from `first_id`, zero-padded to five digits. Returns the paths.
pub fn write_wal_dir(
    dir: &Path,
    count: u64,
    size: usize,
    first_id: u64,
    seed: u64,
) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut generator = EventGenerator::new(seed);
    (first_id..first_id + count)
        .map(|id| {
            let path = dir.join(format!("wal-{id:05}.log"));
            std::fs::write(&path, generator.segment(size))?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::JsonLinesChecker;

    #[test]
    fn deterministic_and_valid() {
        let a = EventGenerator::new(7).segment(64 << 10);
        let b = EventGenerator::new(7).segment(64 << 10);
        assert_eq!(a, b);
        assert_ne!(a, EventGenerator::new(8).segment(64 << 10));
        let mut checker = JsonLinesChecker::new(1 << 20);
        checker.feed(&a).unwrap();
        let stats = checker.finish().unwrap();
        assert!(stats.entries > 100);
        assert!(stats.first_timestamp < stats.last_timestamp);
    }
}
