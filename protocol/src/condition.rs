//! Boolean conditions over topics, in FCM's syntax but with no limit on the number of topics:
//! `'a' in topics && ('b' in topics || !('c' in topics))`.
//!
//! A condition is parsed once per push per node; the gateway then evaluates it per connection
//! against that connection's topic set, walking only the connections of the topics returned by
//! [`Condition::cover`] (the smallest positively named topic list) when there is one.
//!
//! Grammar (whitespace between tokens is ignored):
//! ```text
//! or    := and ( "||" and )*
//! and   := unary ( "&&" unary )*
//! unary := "!" unary | "(" or ")" | TOPIC "in" "topics"
//! TOPIC := "'" [^']+ "'" | '"' [^"]+ '"'
//! ```
//! Limits that keep hostile input cheap: at most [`MAX_CONDITION_BYTES`] bytes and nesting depth
//! [`MAX_DEPTH`].

use std::fmt;

/// Longest condition text accepted.
pub const MAX_CONDITION_BYTES: usize = 64 * 1024;
/// Deepest nesting of `!` and parentheses accepted.
pub const MAX_DEPTH: usize = 64;

/// A parsed condition. Topic names are interned: [`Expr::Topic`] holds an index into
/// [`Condition::topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    topics: Vec<String>,
    root: Expr,
}

/// A node of a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// True when the connection follows `topics()[i]`.
    Topic(usize),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// Why a condition does not parse; `at` is a byte offset into the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid condition at byte {at}: {what}")]
pub struct ConditionError {
    pub at: usize,
    pub what: &'static str,
}

impl Condition {
    /// Parses condition text.
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        if text.len() > MAX_CONDITION_BYTES {
            return Err(ConditionError { at: MAX_CONDITION_BYTES, what: "condition too long" });
        }
        let mut p = Parser { src: text.as_bytes(), pos: 0, topics: Vec::new() };
        let root = p.or(0)?;
        p.skip_ws();
        if p.pos != p.src.len() {
            return Err(p.err("unexpected text after the condition"));
        }
        Ok(Condition { topics: p.topics, root })
    }

    /// Distinct topic names, in order of first appearance.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    pub fn root(&self) -> &Expr {
        &self.root
    }

    /// Evaluates with `has(i)` telling whether the connection follows `topics()[i]`.
    pub fn eval(&self, has: &mut impl FnMut(usize) -> bool) -> bool {
        self.root.eval(has)
    }

    /// Evaluates against a topic predicate by name (tests, the control plane).
    pub fn eval_names(&self, has: impl Fn(&str) -> bool) -> bool {
        self.root.eval(&mut |i| has(&self.topics[i]))
    }

    /// A set of topic indices of which every satisfying topic set contains at least one, chosen
    /// to minimise the sum of `size(i)` (e.g. local subscribers per topic). `None` when the
    /// condition can hold for a connection that follows none of its topics (it contains a
    /// negation that is not under a positive conjunct), so every connection must be checked.
    pub fn cover(&self, size: &impl Fn(usize) -> usize) -> Option<Vec<usize>> {
        let mut out = self.root.cover(size)?;
        out.sort_unstable();
        out.dedup();
        Some(out)
    }
}

impl Expr {
    fn eval(&self, has: &mut impl FnMut(usize) -> bool) -> bool {
        match self {
            Expr::Topic(i) => has(*i),
            Expr::Not(e) => !e.eval(has),
            Expr::And(es) => es.iter().all(|e| e.eval(has)),
            Expr::Or(es) => es.iter().any(|e| e.eval(has)),
        }
    }

    fn cover(&self, size: &impl Fn(usize) -> usize) -> Option<Vec<usize>> {
        match self {
            Expr::Topic(i) => Some(vec![*i]),
            Expr::Not(_) => None,
            Expr::And(es) => es
                .iter()
                .filter_map(|e| e.cover(size))
                .min_by_key(|c| c.iter().map(|&i| size(i)).sum::<usize>()),
            Expr::Or(es) => {
                let mut all = Vec::new();
                for e in es {
                    all.extend(e.cover(size)?);
                }
                Some(all)
            }
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn go(c: &Condition, e: &Expr, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match e {
                Expr::Topic(i) => write!(f, "'{}' in topics", c.topics[*i]),
                Expr::Not(e) => {
                    f.write_str("!(")?;
                    go(c, e, f)?;
                    f.write_str(")")
                }
                Expr::And(es) | Expr::Or(es) => {
                    let op = if matches!(e, Expr::And(_)) { " && " } else { " || " };
                    f.write_str("(")?;
                    for (n, e) in es.iter().enumerate() {
                        if n > 0 {
                            f.write_str(op)?;
                        }
                        go(c, e, f)?;
                    }
                    f.write_str(")")
                }
            }
        }
        go(self, &self.root, f)
    }
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    topics: Vec<String>,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> ConditionError {
        ConditionError { at: self.pos, what }
    }

    fn skip_ws(&mut self) {
        while self.pos < self.src.len() && self.src[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, tok: &[u8]) -> bool {
        self.skip_ws();
        if self.src[self.pos..].starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        let mut terms = vec![self.and(depth)?];
        while self.eat(b"||") {
            terms.push(self.and(depth)?);
        }
        Ok(if terms.len() == 1 { terms.pop().unwrap_or(Expr::Or(Vec::new())) } else { Expr::Or(terms) })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        let mut terms = vec![self.unary(depth)?];
        while self.eat(b"&&") {
            terms.push(self.unary(depth)?);
        }
        Ok(if terms.len() == 1 { terms.pop().unwrap_or(Expr::And(Vec::new())) } else { Expr::And(terms) })
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        if depth >= MAX_DEPTH {
            return Err(self.err("condition nested too deeply"));
        }
        if self.eat(b"!") {
            return Ok(Expr::Not(Box::new(self.unary(depth + 1)?)));
        }
        if self.eat(b"(") {
            let e = self.or(depth + 1)?;
            if !self.eat(b")") {
                return Err(self.err("expected ')'"));
            }
            return Ok(e);
        }
        self.skip_ws();
        let quote = match self.src.get(self.pos) {
            Some(&q @ (b'\'' | b'"')) => q,
            Some(_) => return Err(self.err("expected a quoted topic, '!' or '('")),
            None => return Err(self.err("unexpected end of condition")),
        };
        let start = self.pos + 1;
        let len = self.src[start..]
            .iter()
            .position(|&b| b == quote)
            .ok_or(ConditionError { at: self.pos, what: "unterminated topic name" })?;
        if len == 0 {
            return Err(self.err("empty topic name"));
        }
        // Both ends are ASCII quotes, so the slice is on char boundaries of valid UTF-8.
        let name = String::from_utf8_lossy(&self.src[start..start + len]).into_owned();
        self.pos = start + len + 1;
        if !self.keyword(b"in") || !self.keyword(b"topics") {
            return Err(self.err("expected `in topics` after a topic name"));
        }
        let idx = match self.topics.iter().position(|t| *t == name) {
            Some(i) => i,
            None => {
                self.topics.push(name);
                self.topics.len() - 1
            }
        };
        Ok(Expr::Topic(idx))
    }

    /// A keyword followed by a non-identifier byte.
    fn keyword(&mut self, kw: &[u8]) -> bool {
        self.skip_ws();
        let end = self.pos + kw.len();
        let ok = self.src[self.pos..].starts_with(kw)
            && self.src.get(end).is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
        if ok {
            self.pos = end;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(cond: &str, topics: &[&str]) -> bool {
        Condition::parse(cond).unwrap().eval_names(|t| topics.contains(&t))
    }

    #[test]
    fn fcm_examples() {
        let c = "'a' in topics && ('b' in topics || !('c' in topics))";
        assert!(holds(c, &["a", "b"]));
        assert!(holds(c, &["a"]));
        assert!(!holds(c, &["a", "c"]));
        assert!(holds(c, &["a", "b", "c"]));
        assert!(!holds(c, &["b"]));
        assert!(holds("\"x.y-z~%\" in topics", &["x.y-z~%"]));
        assert!(holds("!!('a' in topics)", &["a"]));
    }

    #[test]
    fn precedence_and_binds_tighter() {
        // a || b && c  ==  a || (b && c)
        assert!(holds("'a' in topics || 'b' in topics && 'c' in topics", &["a"]));
        assert!(!holds("'a' in topics || 'b' in topics && 'c' in topics", &["b"]));
    }

    #[test]
    fn no_topic_limit() {
        let text: Vec<String> = (0..500).map(|i| format!("'t{i}' in topics")).collect();
        let c = Condition::parse(&text.join(" || ")).unwrap();
        assert_eq!(c.topics().len(), 500);
        assert!(c.eval_names(|t| t == "t499"));
    }

    #[test]
    fn errors_say_where() {
        for (text, at) in [
            ("", 0),
            ("'a' in topic", 7),
            ("'a' in topics &&", 16),
            ("('a' in topics", 14),
            ("'a in topics", 0),
            ("'' in topics", 0),
            ("'a' in topics 'b'", 14),
            ("'a' intopics", 4),
        ] {
            let e = Condition::parse(text).unwrap_err();
            assert_eq!(e.at, at, "{text:?}: {e}");
        }
        let deep = "(".repeat(1000) + "'a' in topics" + &")".repeat(1000);
        assert_eq!(Condition::parse(&deep).unwrap_err().what, "condition nested too deeply");
        assert!(Condition::parse(&"!".repeat(10_000)).is_err());
    }

    #[test]
    fn cover_picks_the_smallest_positive_list() {
        let c = Condition::parse("'big' in topics && ('s1' in topics || 's2' in topics)").unwrap();
        let size = |i: usize| match c.topics()[i].as_str() {
            "big" => 1000,
            _ => 3,
        };
        let cover: Vec<&str> = c.cover(&size).unwrap().iter().map(|&i| c.topics()[i].as_str()).collect();
        assert_eq!(cover, ["s1", "s2"]);
        assert_eq!(Condition::parse("!('a' in topics)").unwrap().cover(&size), None);
        assert_eq!(Condition::parse("'a' in topics || !('b' in topics)").unwrap().cover(&size), None);
        assert!(Condition::parse("'a' in topics && !('b' in topics)").unwrap().cover(&size).is_some());
    }

    #[test]
    fn display_round_trips() {
        let c = Condition::parse("'a' in topics && ('b' in topics || !('c' in topics))").unwrap();
        let again = Condition::parse(&c.to_string()).unwrap();
        assert_eq!(c, again);
    }

    fn arb_expr() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = (0..6u8).prop_map(|t| format!("'t{t}' in topics"));
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| format!("!({e})")),
                proptest::collection::vec(inner.clone(), 2..4).prop_map(|v| format!("({})", v.join(" && "))),
                proptest::collection::vec(inner, 2..4).prop_map(|v| format!("({})", v.join(" || "))),
            ]
        })
    }

    proptest::proptest! {
        /// The cover is sound: every topic set (of 6 topics) that satisfies a condition contains
        /// a topic of its cover, so walking only the cover's subscribers misses no one.
        #[test]
        fn cover_never_misses_a_match(text in arb_expr(), sizes in proptest::collection::vec(0usize..100, 6)) {
            let c = Condition::parse(&text).unwrap();
            let size = |i: usize| sizes[c.topics()[i][1..].parse::<usize>().unwrap()];
            let cover = c.cover(&size);
            for mask in 0u32..64 {
                let has = |t: &str| mask & (1 << t[1..].parse::<u32>().unwrap()) != 0;
                if !c.eval_names(has) {
                    continue;
                }
                if let Some(cover) = &cover {
                    proptest::prop_assert!(cover.iter().any(|&i| has(&c.topics()[i])), "{text} mask {mask:b}");
                }
            }
            proptest::prop_assert_eq!(Condition::parse(&c.to_string()).unwrap().to_string(), c.to_string());
        }
    }
}
