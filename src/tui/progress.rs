//! A bar's progress as a value ([`ByteProgress`]: bytes done of a total, a percent that never
//! shows 100 % early; not the hub's [`crate::hub::download::Progress`] event), and the
//! human-readable durations the panes print (sizes: [`crate::units::human_bytes`]).

use std::time::Duration;

/// Bytes done out of a total that may still be unknown (0): one bar of the Models pane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteProgress {
    /// Bytes done so far.
    pub done: u64,
    /// Expected total in bytes; 0 when unknown.
    pub total: u64,
}

impl ByteProgress {
    /// `done` of `total` bytes.
    pub fn new(done: u64, total: u64) -> Self {
        Self { done, total }
    }

    /// Fraction in `0.0..=1.0` for a gauge; 0 when the total is unknown. Capped just below 1
    /// until `done` reaches `total`, so a bar never looks finished early.
    pub fn ratio(self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        if self.done >= self.total {
            return 1.0;
        }
        (self.done as f64 / self.total as f64).min(0.999)
    }

    /// Whole percent, rounded down (99 until the last byte arrives).
    pub fn percent(self) -> u8 {
        (self.ratio() * 100.0).floor() as u8
    }

    /// Whether every expected byte is there (an unknown total is never complete).
    pub fn is_complete(self) -> bool {
        self.total > 0 && self.done >= self.total
    }
}

/// `mm:ss`, or `h:mm:ss` past an hour.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_total_is_zero_and_never_complete() {
        let p = ByteProgress::new(0, 0);
        assert_eq!(p.ratio(), 0.0);
        assert_eq!(p.percent(), 0);
        assert!(!p.is_complete());
    }

    #[test]
    fn never_shows_100_before_the_last_byte() {
        assert_eq!(ByteProgress::new(999_999, 1_000_000).percent(), 99);
        assert_eq!(ByteProgress::new(1_000_000, 1_000_000).percent(), 100);
        assert!(ByteProgress::new(1_000_000, 1_000_000).is_complete());
        assert_eq!(ByteProgress::new(1, 3).percent(), 33);
    }

    #[test]
    fn human_forms() {
        assert_eq!(human_duration(Duration::from_secs(75)), "01:15");
        assert_eq!(human_duration(Duration::from_secs(3725)), "1:02:05");
    }
}
