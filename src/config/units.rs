//! Sizes and durations with units (`1GiB`, `512MiB`, `30s`, `5m`), the same in
//! a file, a variable and a flag. A bare number keeps meaning what it always
//! did: bytes, seconds, milliseconds or days, whichever the key counts.

use super::keys::Unit;

/// The number `text` stands for, in `unit`.
pub fn parse(unit: Unit, text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(number) = text.parse::<u64>() {
        return Ok(number);
    }
    match unit {
        Unit::Bytes => text
            .parse::<bytesize::ByteSize>()
            .map(|size| size.as_u64())
            .map_err(|_| {
                format!(
                    "{text:?} is not a size: give bytes (1048576) or a number with a unit \
                     (64KiB, 512MiB, 1GiB; kB, MB, GB are powers of 1000)"
                )
            }),
        Unit::Days => {
            let duration = humantime::parse_duration(text).map_err(|e| {
                format!("{text:?} is not a number of days ({e}): give days (7) or a number with a unit (7d, 2w)")
            })?;
            const DAY: u64 = 24 * 60 * 60;
            if duration.subsec_nanos() != 0 || duration.as_secs() % DAY != 0 {
                return Err(format!(
                    "{text:?} is finer than this key counts: give whole days"
                ));
            }
            Ok(duration.as_secs() / DAY)
        }
        Unit::Seconds | Unit::Millis => {
            let duration = humantime::parse_duration(text).map_err(|e| {
                format!(
                    "{text:?} is not a duration ({e}): give {} or a number with a unit (500ms, 30s, 5m, 2h)",
                    if unit == Unit::Seconds {
                        "seconds (30)"
                    } else {
                        "milliseconds (30000)"
                    }
                )
            })?;
            let (whole, rest) = match unit {
                Unit::Seconds => (duration.as_secs() as u128, duration.subsec_nanos()),
                _ => (duration.as_millis(), duration.subsec_nanos() % 1_000_000),
            };
            if rest != 0 {
                return Err(format!(
                    "{text:?} is finer than this key counts: give whole {}",
                    if unit == Unit::Seconds {
                        "seconds"
                    } else {
                        "milliseconds"
                    }
                ));
            }
            u64::try_from(whole).map_err(|_| format!("{text:?} is too long"))
        }
    }
}
