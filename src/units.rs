//! Sizes as people read them, the same in every front end (CLI, dashboard, diagnosis, `serve`).

/// Bytes as `6.7 GB`: decimal units (kB, MB, GB: powers of 1000), as the Hugging Face hub's
/// pages and the Python `hf` CLI show them, one decimal above bytes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_the_hub() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_bytes(6_672_212_480), "6.7 GB");
        assert_eq!(human_bytes(u64::MAX), "18446.7 PB");
    }
}
