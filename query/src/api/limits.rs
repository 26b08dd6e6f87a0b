//! The shape of a query text, checked before any parser sees it. Parsers, planners,
//! evaluators and even the dropping of an expression tree recurse over it, and a tree deep
//! enough (`((((…))))`, `1+1+1+…`) overflows a thread's stack, which aborts the whole process,
//! collector included. One pass over the bytes, no recursion: nesting of brackets and the
//! number of operators (which bounds the depth of an operator chain) are counted outside
//! string literals and comments.

/// A query text longer than this is refused.
pub const MAX_QUERY_BYTES: usize = 64 << 10;
/// Brackets (`(`, `[`, `{`) nested deeper than this are refused in PromQL.
pub const MAX_NESTING: usize = 64;
/// …and in SQL, below the 50 levels where DataFusion's SQL parser stops on its own (with a
/// message that names no limit a user can act on).
pub const MAX_NESTING_SQL: usize = 40;
/// More operators than this (`+`, `=`, `AND`, `or`, …) are refused.
pub const MAX_OPERATORS: usize = 1_000;

/// Whose comments and string literals the text has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `'…'` (`''` escapes a quote), `"…"` identifiers, `-- …` and `/* … */` comments.
    Sql,
    /// `'…'` and `"…"` with backslash escapes, `` `…` `` raw strings, `# …` comments.
    PromQl,
}

/// Words that are binary operators in either dialect.
const WORD_OPERATORS: [&str; 5] = ["and", "or", "unless", "like", "atan2"];

/// `Ok` when `text` is within the limits above; else which limit it exceeds, in words for a
/// 400 answer.
pub fn check_query_shape(text: &str, dialect: Dialect) -> Result<(), String> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "the query is {} bytes long; the limit is {MAX_QUERY_BYTES}",
            text.len()
        ));
    }
    let max_nesting = match dialect {
        Dialect::Sql => MAX_NESTING_SQL,
        Dialect::PromQl => MAX_NESTING,
    };
    let b = text.as_bytes();
    let (mut depth, mut operators, mut i) = (0usize, 0usize, 0usize);
    let mut in_operator = false;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        // Literals and comments: skipped whole.
        let skip_to = match (dialect, c, next) {
            (Dialect::Sql, b'-', Some(b'-')) | (Dialect::PromQl, b'#', _) => {
                Some(find(b, i, |x| x == b'\n'))
            }
            (Dialect::Sql, b'/', Some(b'*')) => Some(
                b[i + 2..]
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map_or(b.len(), |p| i + 2 + p + 2),
            ),
            (_, b'\'' | b'"', _) | (Dialect::PromQl, b'`', _) => Some(end_of_quoted(b, i, dialect)),
            _ => None,
        };
        if let Some(end) = skip_to {
            in_operator = false;
            i = end.max(i + 1);
            continue;
        }
        match c {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > max_nesting {
                    return Err(format!(
                        "the query nests brackets more than {max_nesting} deep (the limit)"
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        let is_operator = b"+-*/%^<>=!|&".contains(&c);
        if is_operator && !in_operator {
            operators += 1;
        }
        in_operator = is_operator;
        if c.is_ascii_alphabetic() || c == b'_' {
            let end = find(b, i, |x| !(x.is_ascii_alphanumeric() || x == b'_'));
            let word = &text[i..end];
            if WORD_OPERATORS.iter().any(|w| word.eq_ignore_ascii_case(w)) {
                operators += 1;
            }
            i = end;
        } else {
            i += 1;
        }
        if operators > MAX_OPERATORS {
            return Err(format!(
                "the query has more than {MAX_OPERATORS} operators (the limit); split it up"
            ));
        }
    }
    Ok(())
}

/// The index of the first byte after `from` for which `stop` holds, or the end.
fn find(b: &[u8], from: usize, stop: impl Fn(u8) -> bool) -> usize {
    b[from + 1..]
        .iter()
        .position(|x| stop(*x))
        .map_or(b.len(), |p| from + 1 + p)
}

/// The index just past the literal that opens at `start` (or the end, if it never closes).
fn end_of_quoted(b: &[u8], start: usize, dialect: Dialect) -> usize {
    let quote = b[start];
    let escapes = dialect == Dialect::PromQl && quote != b'`';
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if escapes => i += 2,
            // SQL doubles a quote to escape it: the literal goes on.
            q if q == quote && dialect == Dialect::Sql && b.get(i + 1) == Some(&quote) => i += 2,
            q if q == quote => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_or_long_queries_are_refused_by_name() {
        let nested = format!("{}1{}", "(".repeat(200_000), ")".repeat(200_000));
        for d in [Dialect::Sql, Dialect::PromQl] {
            let e = check_query_shape(&nested[..MAX_QUERY_BYTES], d).unwrap_err();
            assert!(e.contains("nests brackets more than"), "{e}");
            let e = check_query_shape(&nested, d).unwrap_err();
            assert!(e.contains("bytes long"), "{e}");
        }
        let chain = format!("SELECT {}", vec!["1"; 20_000].join("+"));
        let e = check_query_shape(&chain, Dialect::Sql).unwrap_err();
        assert!(e.contains("more than 1000 operators"), "{e}");
        let words = vec!["x = 1"; 600].join(" OR ");
        assert!(check_query_shape(&words, Dialect::Sql).is_err());
    }

    #[test]
    fn ordinary_queries_and_literals_pass() {
        for (q, d) in [
            (
                "sum by (le) (rate(envoy_cluster_upstream_rq_time_bucket{cluster_name=~\"outbound.*\"}[1m]))",
                Dialect::PromQl,
            ),
            (
                "SELECT response_flags, count(*) FROM requests WHERE code >= 500 AND flags <> '-' GROUP BY 1",
                Dialect::Sql,
            ),
        ] {
            assert_eq!(check_query_shape(q, d), Ok(()));
        }
        // Brackets and operators inside literals and comments do not count.
        let lit = format!(
            "SELECT '{}' -- {}\n",
            "((((+".repeat(1_000),
            "(((".repeat(100)
        );
        assert_eq!(check_query_shape(&lit, Dialect::Sql), Ok(()));
        let lit = format!(
            "up{{job=\"{}\\\"\"}} # {}",
            "(+".repeat(1_000),
            "[[".repeat(100)
        );
        assert_eq!(check_query_shape(&lit, Dialect::PromQl), Ok(()));
        let doubled = format!("SELECT 'it''s {}'", "(".repeat(100));
        assert_eq!(check_query_shape(&doubled, Dialect::Sql), Ok(()));
        // Exactly at the limits.
        let at = format!("{}1{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert_eq!(check_query_shape(&at, Dialect::PromQl), Ok(()));
        assert!(check_query_shape(&at, Dialect::Sql).is_err());
        let at = format!(
            "{}1{}",
            "(".repeat(MAX_NESTING_SQL),
            ")".repeat(MAX_NESTING_SQL)
        );
        assert_eq!(check_query_shape(&at, Dialect::Sql), Ok(()));
        let at = vec!["1"; MAX_OPERATORS + 1].join(" + ");
        assert_eq!(check_query_shape(&at, Dialect::PromQl), Ok(()));
    }
}
