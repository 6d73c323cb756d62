//! Which shards a server serves. Several replicas share one bucket by each
//! owning a set of shards: listed (`owned_shards = "0-63,128"`) or by
//! partition (`shard_partition = "INDEX/COUNT"`: every shard whose id modulo
//! COUNT is INDEX). The client routes with the same rule (`client::Router`).

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use super::ShardId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Ownership {
    /// Every shard (one server).
    #[default]
    All,
    /// These ranges of shard ids.
    Listed(Vec<RangeInclusive<ShardId>>),
    /// Shards whose id modulo `count` is `index`.
    Partition { index: u32, count: u32 },
}

impl Ownership {
    pub fn owns(&self, shard: ShardId) -> bool {
        match self {
            Ownership::All => true,
            Ownership::Listed(ranges) => ranges.iter().any(|r| r.contains(&shard)),
            Ownership::Partition { index, count } => shard % count == *index,
        }
    }

    /// `owned_shards = "0-63,128"`.
    pub fn listed(text: &str) -> Result<Ownership, String> {
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let number = |s: &str| {
                s.trim()
                    .parse::<ShardId>()
                    .map_err(|_| format!("{s:?} in owned_shards is not a shard id"))
            };
            let range = match part.split_once('-') {
                Some((from, to)) => number(from)?..=number(to)?,
                None => number(part)?..=number(part)?,
            };
            if range.is_empty() {
                return Err(format!("{part:?} in owned_shards is an empty range"));
            }
            ranges.push(range);
        }
        if ranges.is_empty() {
            return Err("owned_shards names no shard".into());
        }
        Ok(Ownership::Listed(ranges))
    }

    /// `shard_partition = "INDEX/COUNT"`.
    pub fn partition(text: &str) -> Result<Ownership, String> {
        let bad = || format!("shard_partition {text:?} is not INDEX/COUNT with INDEX < COUNT");
        let (index, count) = text.trim().split_once('/').ok_or_else(bad)?;
        let index: u32 = index.trim().parse().map_err(|_| bad())?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Ownership::Partition { index, count })
    }
}

impl fmt::Display for Ownership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ownership::All => f.write_str("every shard"),
            Ownership::Listed(ranges) => {
                let parts: Vec<String> = ranges
                    .iter()
                    .map(|r| {
                        if r.start() == r.end() {
                            r.start().to_string()
                        } else {
                            format!("{}-{}", r.start(), r.end())
                        }
                    })
                    .collect();
                write!(f, "shards {} (owned_shards)", parts.join(","))
            }
            Ownership::Partition { index, count } => write!(
                f,
                "shards whose id modulo {count} is {index} (shard_partition {index}/{count})"
            ),
        }
    }
}

impl FromStr for Ownership {
    type Err = String;
    /// `INDEX/COUNT` for a partition, else a list of ids and ranges.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('/') {
            Ownership::partition(s)
        } else {
            Ownership::listed(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_partitions() {
        let listed = Ownership::listed("0-63, 128").unwrap();
        assert!(listed.owns(0) && listed.owns(63) && listed.owns(128));
        assert!(!listed.owns(64) && !listed.owns(127));
        assert_eq!(listed.to_string(), "shards 0-63,128 (owned_shards)");
        let part = Ownership::partition("1/3").unwrap();
        assert!(part.owns(1) && part.owns(4) && !part.owns(3));
        for bad in ["", "x", "5-2", "1,,b"] {
            assert!(Ownership::listed(bad).is_err(), "{bad:?}");
        }
        for bad in ["3/3", "1/0", "a/2", "1"] {
            assert!(Ownership::partition(bad).is_err(), "{bad:?}");
        }
    }
}
