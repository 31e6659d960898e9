//! The one Markdown table printer of the benchmark: headers, rows, then a blank line.

use std::fmt;

use llama_shm::internals::stats::{fmt_duration, Summary};

/// A Markdown table, printed with [`Table::print`] (or formatted with `Display`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (an empty header is an unnamed column).
    pub fn new<const N: usize>(headers: [&str; N]) -> Self {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; it must have one cell per column.
    ///
    /// # Panics
    ///
    /// If the row's length is not the number of columns (a bug in the caller).
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) -> &mut Self {
        let cells: Vec<String> = cells.into_iter().collect();
        assert_eq!(
            cells.len(),
            self.headers.len(),
            "row {cells:?} for columns {:?}",
            self.headers
        );
        self.rows.push(cells);
        self
    }

    /// Prints the table on stdout, followed by a blank line.
    pub fn print(&self) {
        println!("{self}");
    }
}

/// The cells of a latency row: `label`, then the summary's n, p50, p99, p99.9 and max.
pub fn latency_cells(label: &str, s: &Summary) -> [String; 6] {
    [
        label.to_owned(),
        s.n.to_string(),
        fmt_duration(s.p50),
        fmt_duration(s.p99),
        fmt_duration(s.p999),
        fmt_duration(s.max),
    ]
}

/// One `| a | b |` line; an empty cell is `| |`.
fn line(f: &mut fmt::Formatter<'_>, cells: &[String]) -> fmt::Result {
    write!(f, "|")?;
    for cell in cells {
        if cell.is_empty() {
            write!(f, " |")?;
        } else {
            write!(f, " {cell} |")?;
        }
    }
    writeln!(f)
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        line(f, &self.headers)?;
        writeln!(f, "|{}", "---|".repeat(self.headers.len()))?;
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_markdown_with_unnamed_columns() {
        let mut table = Table::new(["", "p50", "max"]);
        table.row(["in-process".into(), "1.00 µs".into(), "—".into()]);
        assert_eq!(
            table.to_string(),
            "| | p50 | max |\n|---|---|---|\n| in-process | 1.00 µs | — |\n"
        );
    }

    #[test]
    #[should_panic(expected = "for columns")]
    fn a_short_row_is_a_bug() {
        Table::new(["a", "b"]).row(["x".into()]);
    }
}
