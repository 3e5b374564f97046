//! Redis's glob patterns (KEYS, SCAN MATCH, PSUBSCRIBE-style).

/// Glob match as Redis's stringmatchlen: * ? [abc] [^a-z] and \ escapes.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    // `skip`: a later `*` already tried every rest of the string and failed; an earlier `*`
    // taking more only leaves it less (every other token has a fixed width), so give up
    // (Redis's skipLongerMatches: without it "a*a*…a*b" against a long "aaa…" is exponential).
    fn m(p: &[u8], s: &[u8], depth: usize, skip: &mut bool) -> bool {
        if depth > 64 {
            return false;
        }
        let (mut pi, mut si) = (0, 0);
        while pi < p.len() {
            match p[pi] {
                b'*' => {
                    while pi + 1 < p.len() && p[pi + 1] == b'*' {
                        pi += 1;
                    }
                    if pi + 1 == p.len() {
                        return true;
                    }
                    for k in si..=s.len() {
                        if m(&p[pi + 1..], &s[k..], depth + 1, skip) {
                            return true;
                        }
                        if *skip {
                            return false;
                        }
                    }
                    *skip = true;
                    return false;
                }
                b'?' => {
                    if si >= s.len() {
                        return false;
                    }
                    si += 1;
                }
                b'[' => {
                    if si >= s.len() {
                        return false;
                    }
                    pi += 1;
                    let not = pi < p.len() && p[pi] == b'^';
                    if not {
                        pi += 1;
                    }
                    let mut matched = false;
                    while pi < p.len() && p[pi] != b']' {
                        if p[pi] == b'\\' && pi + 1 < p.len() {
                            pi += 1;
                            if p[pi] == s[si] {
                                matched = true;
                            }
                        } else if pi + 2 < p.len() && p[pi + 1] == b'-' && p[pi + 2] != b']' {
                            let (a, b) = (p[pi].min(p[pi + 2]), p[pi].max(p[pi + 2]));
                            if s[si] >= a && s[si] <= b {
                                matched = true;
                            }
                            pi += 2;
                        } else if p[pi] == s[si] {
                            matched = true;
                        }
                        pi += 1;
                    }
                    if matched == not {
                        return false;
                    }
                    si += 1;
                }
                b'\\' if pi + 1 < p.len() => {
                    pi += 1;
                    if si >= s.len() || p[pi] != s[si] {
                        return false;
                    }
                    si += 1;
                }
                c => {
                    if si >= s.len() || c != s[si] {
                        return false;
                    }
                    si += 1;
                }
            }
            pi += 1;
        }
        si == s.len()
    }
    m(pat, s, 0, &mut false)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn many_stars_do_not_explode() {
        let s = vec![b'a'; 40];
        let t = std::time::Instant::now();
        assert!(!glob_match(
            b"a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b",
            &s
        ));
        assert!(glob_match(b"a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a", &s));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert!(glob_match(b"h*llo", b"hello"));
        assert!(glob_match(b"*b?c*", b"xxbxcyy"));
        assert!(!glob_match(b"*b?c", b"xxbxcyy"));
        assert!(glob_match(b"*[0-9]x*", b"ab7xz"));
    }
}
