//! Stop strings in streamed text.

/// Finds stop strings in text that arrives in chunks, holding back only what could still
/// turn into one.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds a chunk. Returns the text that is safe to release and whether a stop string was
    /// found (the released text then ends just before it).
    pub fn push(&mut self, chunk: &str) -> (String, bool) {
        self.pending.push_str(chunk);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        let keep = self.longest_partial_suffix();
        let out = self.pending[..self.pending.len() - keep].to_string();
        self.pending.drain(..self.pending.len() - keep);
        (out, false)
    }

    /// What is still held back, released when generation ends without a stop.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn longest_partial_suffix(&self) -> usize {
        let text = &self.pending;
        let mut best = 0;
        for stop in &self.stops {
            for (len, _) in stop.char_indices().skip(1) {
                if len > best && text.ends_with(&stop[..len]) {
                    best = len;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    #[test]
    fn holds_back_only_possible_stop_prefixes() {
        let mut m = StopMatcher::new(&["###".into(), "終わり".into()]);
        assert_eq!(m.push("abc#"), ("abc".into(), false));
        assert_eq!(m.push("#x"), ("##x".into(), false));
        assert_eq!(m.push("終"), ("".into(), false));
        assert_eq!(m.push("わ"), ("".into(), false));
        assert_eq!(m.push("る"), ("終わる".into(), false));
        assert_eq!(m.push("y##"), ("y".into(), false));
        assert_eq!(m.push("#tail"), ("".into(), true));
    }

    #[test]
    fn finish_releases_the_rest() {
        let mut m = StopMatcher::new(&["STOP".into()]);
        assert_eq!(m.push("go ST"), ("go ".into(), false));
        assert_eq!(m.finish(), "ST");
        let mut none = StopMatcher::new(&[]);
        assert_eq!(none.push("x"), ("x".into(), false));
    }
}
