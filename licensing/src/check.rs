//! The three check characters that end every key: they catch typing mistakes and say where they are. They protect against accidents only; they must not be relied on against forgery, which is the signature's job.
//!
//! # The code
//!
//! A key is [`LEN`] symbols `x_0 .. x_135`, each a 5-bit value. Every position
//! `i` has a distinct non-zero weight `w_i` in the field GF(2^10), and a key is
//! intact when both syndromes are zero:
//!
//! ```text
//! S0 = x_0 ⊕ x_1 ⊕ … ⊕ x_135                (5 bits)
//! S1 = x_0·w_0 ⊕ x_1·w_1 ⊕ … ⊕ x_135·w_135  (10 bits, field product)
//! ```
//!
//! The last three symbols are chosen by [`seal`] to make both zero (15 bits of
//! check for 15 bits of syndrome). Because everything is linear, a damaged key
//! has the syndromes of the damage alone:
//!
//! - one symbol changed by `e ≠ 0` at position `p` gives `S0 = e`,
//!   `S1 = e·w_p`, so `w_p = S1 / S0` names the position exactly. Every single
//!   changed character is therefore detected and located, check characters
//!   included.
//! - two neighbours swapped gives `S0 = 0`, `S1 = e·(w_p ⊕ w_{p+1}) ≠ 0`: always
//!   detected; the position is found by trying each neighbour pair against the
//!   characters actually typed, and named only when exactly one pair fits.
//!
//! Several mistakes at once are detected with probability 1 − 2⁻¹⁵ and may be
//! reported at a wrong position; the signature still rejects the key.

/// Number of symbols a key has, check symbols included.
pub(crate) const LEN: usize = 136;

/// Number of symbols before the check symbols.
const DATA: usize = LEN - 3;

/// `x^10 + x^3 + 1`, a primitive polynomial: its root generates all 1023
/// non-zero elements of GF(2^10), so data weights `α^0 .. α^132` are distinct.
const POLY: u16 = 0x409;
const ORDER: usize = 1023;

/// Weight of the first check symbol. The three check weights are `A`, `A ⊕ 1`
/// and `A ⊕ 32`: with that choice the check equations solve by plain bit
/// slicing (see [`seal`]). `A = 10` is the smallest value for which none of the
/// three collides with a data weight; a test keeps that true.
const A: u16 = 10;
const CHECK_WEIGHTS: [u16; 3] = [A, A ^ 1, A ^ 32];

static EXP: [u16; ORDER] = exp_table();
static LOG: [u16; 1024] = log_table();

const fn exp_table() -> [u16; ORDER] {
    let mut table = [0u16; ORDER];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < ORDER {
        table[i] = x;
        x <<= 1;
        if x & 0x400 != 0 {
            x ^= POLY;
        }
        i += 1;
    }
    table
}

const fn log_table() -> [u16; 1024] {
    let exp = exp_table();
    let mut table = [0u16; 1024];
    let mut i = 0;
    while i < ORDER {
        table[exp[i] as usize] = i as u16;
        i += 1;
    }
    table
}

fn mul(a: u16, b: u16) -> u16 {
    if a == 0 || b == 0 {
        return 0;
    }
    EXP[(usize::from(LOG[usize::from(a)]) + usize::from(LOG[usize::from(b)])) % ORDER]
}

/// `a / b`; `b` must not be zero (callers only divide by weights and by
/// non-zero syndromes).
fn div(a: u16, b: u16) -> u16 {
    if a == 0 {
        return 0;
    }
    let la = usize::from(LOG[usize::from(a)]);
    let lb = usize::from(LOG[usize::from(b)]);
    EXP[(la + ORDER - lb) % ORDER]
}

fn weight(position: usize) -> u16 {
    if position < DATA {
        EXP[position]
    } else {
        CHECK_WEIGHTS[position - DATA]
    }
}

fn position_of(weight: u16) -> Option<usize> {
    if let Some(k) = CHECK_WEIGHTS.iter().position(|&w| w == weight) {
        return Some(DATA + k);
    }
    let log = usize::from(LOG[usize::from(weight)]);
    (weight != 0 && log < DATA).then_some(log)
}

fn syndromes(symbols: &[u8; LEN]) -> (u16, u16) {
    symbols
        .iter()
        .enumerate()
        .fold((0, 0), |(s0, s1), (i, &x)| {
            let x = u16::from(x);
            (s0 ^ x, s1 ^ mul(x, weight(i)))
        })
}

/// Sets the last three symbols so that the key is intact.
///
/// With the data's syndromes `(a, b)` the check symbols `c0, c1, c2` must
/// satisfy `c0 ⊕ c1 ⊕ c2 = a` and `c0·A ⊕ c1·(A⊕1) ⊕ c2·(A⊕32) = b`.
/// Substituting the first into the second leaves `c1 ⊕ c2·32 = b ⊕ a·A`, and
/// multiplying a 5-bit value by 32 (= x^5) is a shift with no reduction, so
/// `c1` is the low five bits of the right-hand side and `c2` the high five.
pub(crate) fn seal(symbols: &mut [u8; LEN]) {
    symbols[DATA..].fill(0);
    let (a, b) = syndromes(symbols);
    let rest = b ^ mul(a, A);
    let c1 = (rest & 31) as u8;
    let c2 = (rest >> 5) as u8;
    symbols[DATA] = (a as u8) ^ c1 ^ c2;
    symbols[DATA + 1] = c1;
    symbols[DATA + 2] = c2;
}

/// What the check symbols say about a key as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No mistake detected.
    Intact,
    /// The symbol at this position (0-based) was changed.
    Changed(usize),
    /// The symbols at this position and the next were swapped.
    Swapped(usize),
    /// Damaged in a way that cannot be located (several mistakes).
    Damaged,
}

/// Checks a key and locates a single mistake.
pub(crate) fn diagnose(symbols: &[u8; LEN]) -> Verdict {
    match syndromes(symbols) {
        (0, 0) => Verdict::Intact,
        (0, s1) => {
            // A swap of neighbours `p, p+1` whose symbols differ by `e` leaves
            // `s1 = e·(w_p ⊕ w_{p+1})`. Only pairs whose typed symbols really
            // differ by that `e` can be the culprit.
            let mut fitting = (0..LEN - 1).filter(|&p| {
                let e = div(s1, weight(p) ^ weight(p + 1));
                e != 0 && e < 32 && u16::from(symbols[p] ^ symbols[p + 1]) == e
            });
            match (fitting.next(), fitting.next()) {
                (Some(p), None) => Verdict::Swapped(p),
                _ => Verdict::Damaged,
            }
        }
        (s0, s1) => match position_of(div(s1, s0)) {
            Some(p) if s1 != 0 => Verdict::Changed(p),
            _ => Verdict::Damaged,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn sample(seed: u32) -> [u8; LEN] {
        // A fixed pseudo-random word; the code must work for any content.
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        let mut symbols = [0u8; LEN];
        for s in &mut symbols {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *s = (state % 32) as u8;
        }
        seal(&mut symbols);
        symbols
    }

    #[test]
    fn the_field_tables_cover_every_non_zero_element_once() {
        let elements: HashSet<u16> = EXP.iter().copied().collect();
        assert_eq!(elements.len(), ORDER);
        assert!(!elements.contains(&0));
        for a in 1..1024u16 {
            assert_eq!(mul(div(a, 7), 7), a);
        }
    }

    #[test]
    fn every_position_has_a_distinct_non_zero_weight() {
        let weights: HashSet<u16> = (0..LEN).map(weight).collect();
        assert_eq!(weights.len(), LEN);
        assert!(!weights.contains(&0));
        for p in 0..LEN {
            assert_eq!(position_of(weight(p)), Some(p));
        }
    }

    #[test]
    fn a_sealed_word_is_intact() {
        for seed in 0..50 {
            assert_eq!(diagnose(&sample(seed)), Verdict::Intact);
        }
    }

    #[test]
    fn every_single_change_anywhere_is_located_exactly() {
        for seed in 0..3 {
            let word = sample(seed);
            for p in 0..LEN {
                for value in 0..32u8 {
                    if value == word[p] {
                        continue;
                    }
                    let mut typed = word;
                    typed[p] = value;
                    assert_eq!(diagnose(&typed), Verdict::Changed(p), "position {p}");
                }
            }
        }
    }

    #[test]
    fn every_swap_of_different_neighbours_is_detected_and_usually_located() {
        let (mut located, mut total) = (0, 0);
        for seed in 0..20 {
            let word = sample(seed);
            for p in 0..LEN - 1 {
                if word[p] == word[p + 1] {
                    continue;
                }
                let mut typed = word;
                typed.swap(p, p + 1);
                let verdict = diagnose(&typed);
                total += 1;
                match verdict {
                    Verdict::Swapped(q) => {
                        assert_eq!(q, p);
                        located += 1;
                    }
                    Verdict::Damaged => {}
                    other => panic!("swap at {p} gave {other:?}"),
                }
            }
        }
        // Locating is best effort, but it must work for most swaps to be of
        // any use to the person typing.
        assert!(located * 10 >= total * 8, "{located} of {total} located");
    }
}
