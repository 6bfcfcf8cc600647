//! The search for card-number candidates: runs of at least 13 ASCII digits, with single spaces or
//! dashes allowed between two digits. [`runs`] yields exactly the matches of
//! `Regex::new(REGEX).find_iter(body)` (the regex it replaces, kept for the tests and the docs),
//! without the regex crate's prefilter, which fires on every pair of digits in digit-heavy bodies.
//!
//! Two facts make a plain scan equal to the regex's leftmost-first, greedy search:
//! - from a digit, the greedy match grows one step at a time (a digit, or a separator followed by
//!   a digit) and stops at the first byte where neither fits, so it is the whole run;
//! - a run too short to match has no suffix that matches either, so the search resumes after it.

use std::ops::Range;

/// The regex whose matches [`runs`] yields.
pub(super) const REGEX: &str = r"[0-9](?:[ -]?[0-9]){12,}";

/// Fewest digits in a run, and so fewest bytes.
const MIN_DIGITS: usize = 13;

/// The runs in `body`, in order: each is maximal, starts and ends with a digit, and holds at least
/// 13 digits.
pub(super) fn runs(body: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || loop {
        // A run starting anywhere in `pos..=probe` covers `probe` (it is at least 13 bytes long),
        // so when the byte there cannot be part of a run, none starts before `probe + 1`.
        let probe = pos + MIN_DIGITS - 1;
        if !in_run(*body.get(probe)?) {
            pos = probe + 1;
            continue;
        }
        // Walk back over the bytes before `probe` that could be in a run: a run starting before
        // them would cover the byte that stopped the walk, so none does.
        let mut start = probe;
        while start > pos && in_run(body[start - 1]) {
            start -= 1;
        }
        // A run starts with a digit.
        if !body[start].is_ascii_digit() {
            pos = start + 1;
            continue;
        }
        let (end, digits) = run_from(body, start);
        pos = end;
        if digits >= MIN_DIGITS {
            return Some(start..end);
        }
    })
}

/// Whether a byte can be part of a run.
fn in_run(b: u8) -> bool {
    b.is_ascii_digit() || b == b' ' || b == b'-'
}

/// The end of the run starting at the digit `body[start]`, and its number of digits.
fn run_from(body: &[u8], start: usize) -> (usize, usize) {
    let (mut end, mut digits) = (start + 1, 1);
    loop {
        match body.get(end..) {
            Some([d, ..]) if d.is_ascii_digit() => end += 1,
            Some([b' ' | b'-', d, ..]) if d.is_ascii_digit() => end += 2,
            _ => return (end, digits),
        }
        digits += 1;
    }
}
