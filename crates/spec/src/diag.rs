//! Problems found in a cluster file, with the place they were found.

use std::fmt;
use std::ops::Range;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem: what is wrong, where (a byte range of the source, when it came from a file)
/// and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub hint: Option<String>,
    pub span: Option<Range<usize>>,
}

impl Diagnostic {
    pub fn error(span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            hint: None,
            span,
        }
    }

    pub fn warning(span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(span, message)
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Where a 0-based byte offset sits, as 1-based line and column (columns count characters).
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = source[line_start..offset].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Every problem found in one source, ready to print.
#[derive(Clone, Debug)]
pub struct Report {
    /// What the source is called in messages: a path, or a description such as "built-in cluster".
    pub origin: String,
    pub source: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// `origin:line:col` of a diagnostic, or just the origin when it has no place.
    pub fn location(&self, d: &Diagnostic) -> String {
        match &d.span {
            Some(span) => {
                let (line, col) = line_col(&self.source, span.start);
                format!("{}:{line}:{col}", self.origin)
            }
            None => self.origin.clone(),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            let label = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            writeln!(f, "{}: {label}: {}", self.location(d), d.message)?;
            if let Some(span) = &d.span {
                let (line, col) = line_col(&self.source, span.start);
                if let Some(text) = self.source.lines().nth(line - 1) {
                    writeln!(f, "  {line:>4} | {text}")?;
                    let width = self.source[span.clone()]
                        .lines()
                        .next()
                        .map_or(1, |s| s.chars().count().max(1))
                        .min(text.chars().count().saturating_sub(col - 1).max(1));
                    writeln!(f, "       | {}{}", " ".repeat(col - 1), "^".repeat(width))?;
                }
            }
            if let Some(hint) = &d.hint {
                writeln!(f, "       = hint: {hint}")?;
            }
        }
        let errors = self.errors().count();
        let warnings = self.diagnostics.len() - errors;
        if errors > 0 {
            write!(f, "{}: {errors} error(s)", self.origin)?;
            if warnings > 0 {
                write!(f, ", {warnings} warning(s)")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for Report {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 3));
        assert_eq!(line_col(src, 1000), (3, 1));
    }
}
