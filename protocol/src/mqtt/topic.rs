//! Topic names, topic filters and matching (section 4.7 of both specs).

/// Whether `name` is a valid topic name for PUBLISH: at least one character, no `+` or `#`
/// (MQTT-4.7.1-1, 4.7.3-1). UTF-8 and U+0000 were checked when the string was read.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.bytes().any(|b| b == b'+' || b == b'#')
}

/// Whether `filter` is a well-formed topic filter: at least one character; `#` only as the whole
/// last level; `+` only as a whole level (MQTT-4.7.1-2, -3).
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if last => {}
            "+" => {}
            _ if level.bytes().any(|b| b == b'+' || b == b'#') => return false,
            _ => {}
        }
    }
    true
}

/// Whether the topic filter `filter` matches the topic name `name`.
///
/// `+` matches exactly one level (which may be empty), `#` matches the rest of the name including
/// its parent level (`a/#` matches `a`). A filter starting with a wildcard does not match a name
/// starting with `$` (MQTT-4.7.2-1), so `#` does not cover `$SYS/...`. Neither argument is
/// validated here: pass a [`super::TopicFilter`]'s text for the filter.
pub fn topic_matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples_of_matching() {
        // MQTT 5.0 section 4.7.1.2 and 4.7.1.3.
        assert!(topic_matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(topic_matches("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(topic_matches("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"));
        assert!(topic_matches("sport/#", "sport"));
        assert!(topic_matches("#", "anything/at/all"));
        assert!(topic_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!topic_matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(topic_matches("sport/+", "sport/"));
        assert!(!topic_matches("sport/+", "sport"));
        assert!(topic_matches("+/+", "/finance"));
        assert!(topic_matches("/+", "/finance"));
        assert!(!topic_matches("+", "/finance"));
        assert!(topic_matches("+/tennis/#", "sport/tennis/x"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("a/b/c", "a/b"));
        assert!(topic_matches("a/b", "a/b"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!topic_matches("#", "$SYS/monitor/Clients"));
        assert!(!topic_matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(topic_matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(topic_matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }

    #[test]
    fn filter_syntax() {
        for ok in ["#", "+", "a/#", "+/+", "a/+/b", "/", "a//b", "$share/g/a/#", "sport/tennis/#"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "#/a", "a+", "a/b+/c", "+a", "##", "a/++"] {
            assert!(!valid_filter(bad), "{bad}");
        }
        assert!(valid_name("a/b") && valid_name("/") && valid_name("$SYS/x"));
        assert!(!valid_name("") && !valid_name("a/+") && !valid_name("#"));
    }
}
