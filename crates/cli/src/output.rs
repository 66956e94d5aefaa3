//! How commands answer: sentences and aligned tables for people, JSON for scripts (`--json`).

use ringfence_proto::api::{PublishOutcome, RoleState};

/// Columns of text, each as wide as its widest cell, separated by two spaces.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Self { header: header.to_vec(), rows: Vec::new() }
    }

    /// A row of cells, most of them the server's words (titles, names, reasons): each is kept
    /// to one line and to what it says, its control and text-reordering characters written as
    /// `\u{..}` (`trust::review::shown`), so a stolen server cannot redraw the table.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| ringfence_trust::review::shown(c)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The header and the rows, one line each, without trailing spaces.
    pub fn lines(&self) -> Vec<String> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                match widths.get_mut(i) {
                    Some(w) => *w = (*w).max(cell.chars().count()),
                    None => widths.push(cell.chars().count()),
                }
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        std::iter::once(&header)
            .chain(&self.rows)
            .map(|cells| {
                let mut line = String::new();
                for (i, cell) in cells.iter().enumerate() {
                    if i > 0 {
                        line.push_str("  ");
                    }
                    line.push_str(cell);
                    let width = widths.get(i).copied().unwrap_or(0);
                    line.extend(std::iter::repeat_n(' ', width.saturating_sub(cell.chars().count())));
                }
                line.trim_end().to_owned()
            })
            .collect()
    }

    pub fn print(&self) {
        for line in self.lines() {
            println!("{line}");
        }
    }
}

/// Print `value` as pretty JSON (for `--json`).
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A Unix time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn time(at: i64) -> String {
    ringfence_trust::expiry::format(at)
}

/// What a publish did, and what happens next.
pub fn published(outcome: &PublishOutcome) {
    let targets: Vec<&str> = outcome.targets.iter().map(|t| t.as_str()).collect();
    println!("update {} ({} file(s)): {}", outcome.update_id, targets.len(), targets.join(", "));
    for r in &outcome.published {
        println!("{} version {} is published", r.role, r.version);
    }
    for r in &outcome.pending {
        println!("{} version {} waits for its publisher's signature", r.role, r.version);
    }
    let first = targets.first().copied().unwrap_or("<target>");
    if !outcome.pending.is_empty() {
        println!("next: the publisher signs it, then approvers approve the files for their groups:");
        println!("  ringfence pending sign-all --key <publisher key> --trusted-root <trusted 1.root.json>");
        println!("  ringfence approve --group <group> --target {first}");
    } else {
        println!("next: ringfence approve --group <group> --target {first}");
    }
}

/// Whether a role version is published, or whose signatures it waits for.
pub fn role_state(state: &RoleState) {
    if state.published {
        println!(
            "{} version {} is published ({} of {} signatures)",
            state.role, state.version, state.valid_signatures, state.threshold
        );
    } else {
        println!(
            "{} version {} waits for signatures: {} of {}; approvers run `ringfence pending sign {}`",
            state.role, state.version, state.valid_signatures, state.threshold, state.role
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["ID", "NAME", "STATE"]);
        t.row(vec!["1".into(), "first-admin".into(), "active".into()]);
        t.row(vec!["22".into(), "ci".into(), "revoked".into()]);
        assert_eq!(t.lines(), ["ID  NAME         STATE", "1   first-admin  active", "22  ci           revoked"]);
        assert!(!t.is_empty());
        assert!(Table::new(&["A"]).is_empty());
    }

    #[test]
    fn a_cell_cannot_move_the_cursor_end_its_line_or_reorder_text() {
        let mut t = Table::new(&["TITLE", "STATE"]);
        t.row(vec!["Patch\u{1b}[2J\r\nforged row".into(), "ok\u{202e}deliated".into()]);
        let lines = t.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[1], "Patch\\u{1b}[2J\\u{d}\\u{a}forged row  ok\\u{202e}deliated");
    }
}
