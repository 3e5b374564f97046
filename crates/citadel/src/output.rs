//! How every operator verb prints: a human table (or one sentence) by default, JSON with
//! `--json`. One place, so that every verb has the same shape.

use comfy_table::{Table, presets::NOTHING};
use serde::Serialize;

/// A table with a header row and no borders, as `status` prints it.
pub fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING);
    table.set_header(header.to_vec());
    table
}

/// Pretty JSON on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A finished action: `sentence` for a person, or `value` as JSON.
pub fn done(json_out: bool, sentence: impl std::fmt::Display, value: serde_json::Value) {
    if json_out {
        println!("{value}");
    } else {
        println!("{sentence}");
    }
}

/// "3m ago": how long ago a moment in unix seconds was.
pub fn ago_unix_secs(at: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at);
    match at.elapsed() {
        Ok(ago) => format!("{} ago", citadel_spec::units::format_duration(ago)),
        Err(_) => "just now".into(),
    }
}

/// "in 59m", "never", "expired": when a deadline in unix milliseconds falls.
pub fn until_unix_ms(deadline: Option<u64>) -> String {
    let Some(deadline) = deadline else {
        return "never".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match deadline.checked_sub(now) {
        Some(left) if left > 0 => format!(
            "in {}",
            citadel_spec::units::format_duration(std::time::Duration::from_millis(left))
        ),
        _ => "expired".into(),
    }
}
