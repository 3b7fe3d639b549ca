//! Crockford base32: the alphabet license keys are typed in, the normalisation of what a person types, and byte encoding. Knows nothing of what the bytes mean.
//!
//! Crockford's alphabet leaves out `I`, `L`, `O` and `U` so that no two
//! symbols look alike; when reading, `O` is taken as `0` and `I`/`L` as `1`,
//! because those are the mistakes people make when copying a key by hand.

/// The 32 symbols, in value order.
pub(crate) const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// What one typed character means once normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Typed {
    /// A separator a person may type or paste for readability: dropped.
    Separator,
    /// A symbol of the alphabet, by value (0..32).
    Symbol(u8),
    /// Anything else; the key cannot contain it.
    Invalid,
}

/// Normalises one typed character: case-insensitive, confusables mapped.
pub(crate) fn classify(c: char) -> Typed {
    if c == '-' || c == '_' || c.is_whitespace() {
        return Typed::Separator;
    }
    let upper = match c.to_ascii_uppercase() {
        'O' => '0',
        'I' | 'L' => '1',
        other => other,
    };
    if !upper.is_ascii() {
        return Typed::Invalid;
    }
    match ALPHABET.iter().position(|&a| a == upper as u8) {
        Some(value) => Typed::Symbol(value as u8),
        None => Typed::Invalid,
    }
}

/// The character of a symbol value. Values are always below 32 here because
/// they come from 5-bit slices or from [`classify`].
pub(crate) fn symbol_char(value: u8) -> char {
    ALPHABET[usize::from(value & 31)] as char
}

/// How many symbols `byte_len` bytes take: 5 bits per symbol, rounded up.
pub(crate) const fn encoded_len(byte_len: usize) -> usize {
    (byte_len * 8).div_ceil(5)
}

/// Encodes bytes as symbol values, most significant bit first. The last
/// symbol is padded with zero bits.
pub(crate) fn encode(bytes: &[u8]) -> Vec<u8> {
    let mut symbols = Vec::with_capacity(encoded_len(bytes.len()));
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            symbols.push(((buffer >> bits) & 31) as u8);
        }
    }
    if bits > 0 {
        symbols.push(((buffer << (5 - bits)) & 31) as u8);
    }
    symbols
}

/// Decodes symbol values back into bytes.
///
/// Returns `None` when the padding bits of the last symbol are not zero:
/// accepting them would give one key several spellings, and the canonical
/// text of a key must be unique.
pub(crate) fn decode(symbols: &[u8]) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(symbols.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &symbol in symbols {
        buffer = (buffer << 5) | u32::from(symbol & 31);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buffer >> bits) as u8);
        }
    }
    let padding = buffer & ((1 << bits) - 1);
    (padding == 0).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_returns_the_bytes_for_every_length() {
        let data: Vec<u8> = (0..=255u8).rev().collect();
        for len in 0..40 {
            let symbols = encode(&data[..len]);
            assert_eq!(symbols.len(), encoded_len(len));
            assert_eq!(decode(&symbols).as_deref(), Some(&data[..len]));
        }
    }

    #[test]
    fn encoding_matches_the_crockford_reference() {
        // "f" is 0x66 = 01100 110(00): symbols 12 ('C') and 24 ('R').
        let text: String = encode(b"f").into_iter().map(symbol_char).collect();
        assert_eq!(text, "CR");
        let text: String = encode(&[0xff, 0x00]).into_iter().map(symbol_char).collect();
        assert_eq!(text, "ZW00");
    }

    #[test]
    fn non_zero_padding_bits_are_refused() {
        // One byte takes two symbols and leaves two padding bits.
        assert_eq!(decode(&[12, 24]), Some(vec![0x66]));
        assert_eq!(decode(&[12, 25]), None);
    }

    #[test]
    fn typed_characters_are_normalised() {
        assert_eq!(classify('a'), Typed::Symbol(10));
        assert_eq!(classify('A'), Typed::Symbol(10));
        assert_eq!(classify('o'), Typed::Symbol(0));
        assert_eq!(classify('O'), Typed::Symbol(0));
        assert_eq!(classify('i'), Typed::Symbol(1));
        assert_eq!(classify('L'), Typed::Symbol(1));
        assert_eq!(classify('-'), Typed::Separator);
        assert_eq!(classify('_'), Typed::Separator);
        assert_eq!(classify(' '), Typed::Separator);
        assert_eq!(classify('U'), Typed::Invalid);
        assert_eq!(classify('#'), Typed::Invalid);
        assert_eq!(classify('é'), Typed::Invalid);
        // Unicode letters that upper-case to ASCII must not sneak in.
        assert_eq!(classify('ı'), Typed::Invalid);
    }
}
