//! Stop strings over streamed text: text is released only once no stop string can still
//! begin inside it, and output ends right before the first stop string found.

#[derive(Debug, Clone)]
pub struct StopStrings {
    stops: Vec<String>,
    text: String,
    released: usize,
    stopped: bool,
}

impl StopStrings {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.to_vec(), text: String::new(), released: 0, stopped: false }
    }

    /// Adds a piece of text; returns what may be shown now, and whether a stop string hit.
    pub fn push(&mut self, piece: &str) -> (&str, bool) {
        let from = self.released;
        self.text.push_str(piece);
        let found = self.stops.iter().filter(|s| !s.is_empty()).filter_map(|s| self.text.find(s.as_str())).min();
        if let Some(cut) = found {
            self.text.truncate(cut);
            self.stopped = true;
            self.released = cut.max(from);
            return (&self.text[from.min(cut)..], true);
        }
        let held = self.longest_partial_stop();
        self.released = (self.text.len() - held).max(from);
        (&self.text[from..self.released], false)
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Releases text held back for a stop string that never completed.
    pub fn flush(&mut self) -> &str {
        let from = self.released;
        self.released = self.text.len();
        &self.text[from..]
    }

    pub fn into_text(self) -> String {
        self.text
    }

    /// Bytes at the end of the text that are a proper prefix of some stop string.
    fn longest_partial_stop(&self) -> usize {
        self.stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .rev()
                    .filter(|&n| stop.is_char_boundary(n))
                    .find(|&n| self.text.ends_with(&stop[..n]))
            })
            .max()
            .unwrap_or(0)
    }
}
