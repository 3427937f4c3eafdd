//! Text from a peer that is kept, logged or repeated.

/// `s` cut to at most `max` bytes, at a character boundary, ending in `…`
/// when cut: for text from a peer (a proxy, a zone) that is kept, logged
/// or repeated.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cut text stays within the bound, at a character boundary, and says
    /// it was cut; short text is unchanged.
    #[test]
    fn clip_bounds_text_with_an_ellipsis() {
        assert_eq!(clip("short", 10), "short");
        let c = clip(&"é".repeat(100), 11);
        assert!(c.len() <= 11 && c.ends_with('…'), "{c}");
        assert_eq!(c, "éééé…");
        assert_eq!(clip(&"x".repeat(5000), 1024).len(), 1024);
    }
}
