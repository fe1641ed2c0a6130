//! The dashboard (ratatui + crossterm).

/// Start the dashboard.
pub fn run() -> anyhow::Result<()> {
    anyhow::bail!(
        "the dashboard is not built yet in this version; see `dsocr --help` for the commands"
    )
}
