//! No input makes the reader panic: random text, and the built-in file mangled at random.

use citadel_spec::{BUILTIN, Capabilities, parse};
use proptest::prelude::*;

fn check(src: &str) {
    match parse(src, "fuzz.toml", &Capabilities::all()) {
        Ok((_, warnings)) => drop(warnings.to_string()),
        Err(report) => {
            assert!(report.has_errors());
            let _ = report.to_string();
        }
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    DuplicateLine(usize),
    SwapLines(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(at, len)| Edit::Delete(at, len)),
        (any::<usize>(), "[\\[\\]{}=\"',.#\\n a-z0-9/:_-]{0,12}")
            .prop_map(|(at, s)| Edit::Insert(at, s)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

fn apply(src: &str, edits: &[Edit]) -> String {
    let mut s = src.to_string();
    for e in edits {
        match e {
            Edit::Delete(at, len) => {
                let start = floor(&s, at % (s.len() + 1));
                let end = floor(&s, (start + len).min(s.len()));
                s.replace_range(start..end, "");
            }
            Edit::Insert(at, text) => {
                let at = floor(&s, at % (s.len() + 1));
                s.insert_str(at, text);
            }
            Edit::DuplicateLine(i) | Edit::SwapLines(i, _) if s.is_empty() => {
                let _ = i;
            }
            Edit::DuplicateLine(i) => {
                let mut lines: Vec<&str> = s.lines().collect();
                let i = i % lines.len().max(1);
                if let Some(line) = lines.get(i).copied() {
                    lines.insert(i, line);
                }
                s = lines.join("\n");
            }
            Edit::SwapLines(a, b) => {
                let mut lines: Vec<&str> = s.lines().collect();
                let n = lines.len().max(1);
                if !lines.is_empty() {
                    lines.swap(a % n, b % n);
                }
                s = lines.join("\n");
            }
        }
    }
    s
}

fn floor(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_text_never_panics(src in "\\PC{0,300}") {
        check(&src);
    }

    #[test]
    fn mangled_builtin_never_panics(edits in proptest::collection::vec(edit(), 1..8)) {
        check(&apply(BUILTIN, &edits));
    }
}
