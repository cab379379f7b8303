//! Progress bars of long commands, on stderr, shown only when asked for (a terminal, no
//! `--json`).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting to `len` of `what` (which may use indicatif's `{msg}`), or a hidden one.
pub fn bar(len: u64, what: &str, shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let template = format!("{{bar:40}} {{pos}}/{{len}} {what} [{{elapsed}}, {{eta}} left]");
    let style = ProgressStyle::with_template(&template).expect("valid progress template");
    ProgressBar::new(len).with_style(style)
}
