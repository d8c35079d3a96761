//! A JSON string encoder fed arbitrary byte chunks: lossy UTF-8 decoding across chunk
//! boundaries and JSON escaping, so a command's output can be written into a result file
//! without ever holding it whole. Pure: no I/O, it appends to the caller's buffer.
//!
//! The output is byte-for-byte what `serde_json::to_vec(&String::from_utf8_lossy(all))` gives
//! for the concatenation of the chunks: a sequence split across chunks decodes as if whole, and
//! each invalid sequence becomes one U+FFFD exactly where `from_utf8_lossy` puts one. Decoding
//! leans on `std::str::from_utf8`'s own error positions (the rule `from_utf8_lossy` follows),
//! so the only state carried between chunks is an incomplete sequence of at most 3 bytes.

/// The replacement character as UTF-8.
const REPLACEMENT: &str = "\u{FFFD}";
/// serde_json's escape alphabet for `\u00XX`.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Encodes one JSON string, quotes included, from the chunks it is fed.
#[derive(Debug, Clone, Default)]
pub struct JsonString {
    /// The opening quote is written.
    started: bool,
    /// The start of a multi-byte sequence the last chunk ended in (valid so far).
    pending: [u8; 4],
    /// How many bytes of `pending` are in use; 0 to 3.
    pending_len: usize,
}

impl JsonString {
    pub fn new() -> JsonString {
        JsonString::default()
    }

    /// Appends the encoding of `bytes` (those after what came before) to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        self.start(out);
        if self.pending_len > 0 {
            // Complete the pending sequence with at most 3 more bytes, decoded as a whole.
            let take = bytes.len().min(4 - self.pending_len);
            let mut joined = [0u8; 4];
            joined[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
            joined[self.pending_len..self.pending_len + take].copy_from_slice(&bytes[..take]);
            let joined = &joined[..self.pending_len + take];
            match std::str::from_utf8(joined) {
                // Cannot happen with a pending lead byte and no more than one char's room,
                // but a whole valid run is written as one.
                Ok(s) => {
                    escape(s, out);
                    self.pending_len = 0;
                    bytes = &bytes[take..];
                }
                Err(e) if e.valid_up_to() > 0 => {
                    let n = e.valid_up_to();
                    escape(
                        std::str::from_utf8(&joined[..n]).unwrap_or(REPLACEMENT),
                        out,
                    );
                    bytes = &bytes[n - self.pending_len..];
                    self.pending_len = 0;
                }
                Err(e) => match e.error_len() {
                    Some(n) => {
                        // The pending bytes and `n - pending` of this chunk are one bad sequence.
                        out.extend_from_slice(REPLACEMENT.as_bytes());
                        bytes = &bytes[n - self.pending_len..];
                        self.pending_len = 0;
                    }
                    None => {
                        // Still incomplete: this chunk was too short to finish it.
                        self.pending[self.pending_len..self.pending_len + take]
                            .copy_from_slice(&bytes[..take]);
                        self.pending_len += take;
                        return;
                    }
                },
            }
        }
        loop {
            match std::str::from_utf8(bytes) {
                Ok(s) => {
                    escape(s, out);
                    return;
                }
                Err(e) => {
                    let (valid, rest) = bytes.split_at(e.valid_up_to());
                    escape(std::str::from_utf8(valid).unwrap_or(REPLACEMENT), out);
                    match e.error_len() {
                        Some(n) => {
                            out.extend_from_slice(REPLACEMENT.as_bytes());
                            bytes = &rest[n..];
                        }
                        None => {
                            // An incomplete sequence ends the chunk: the next may finish it.
                            self.pending[..rest.len()].copy_from_slice(rest);
                            self.pending_len = rest.len();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Appends the end of the string: a sequence left incomplete is one U+FFFD, as
    /// `from_utf8_lossy` makes of an incomplete end.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.start(out);
        if self.pending_len > 0 {
            out.extend_from_slice(REPLACEMENT.as_bytes());
        }
        out.push(b'"');
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            out.push(b'"');
            self.started = true;
        }
    }
}

/// What each byte becomes inside a JSON string: 0 for itself, `u` for `\u00xx`, else the
/// letter after the backslash.
const ESCAPES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Input bytes escaped at once into a stack buffer (at most 6 bytes out for each).
const BLOCK: usize = 2048;

/// Appends `s` escaped as serde_json escapes string contents: `"` and `\`, the short forms
/// `\b \t \n \f \r`, other control characters as `\u00xx`; everything else as is.
/// Output full of newlines is the common case: an escape every other byte must not cost a
/// `memcpy` call (or a capacity check) each, so blocks are escaped into a stack buffer and
/// appended with one copy; eight bytes that need no escape (most text) are copied as one word.
fn escape(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    if bytes.len() < 64 {
        // Ids, short values: not worth a block buffer.
        let mut buf = [0u8; 64 * 6];
        let w = escape_block(bytes, &mut buf);
        out.extend_from_slice(&buf[..w]);
        return;
    }
    out.reserve(bytes.len() + bytes.len() / 2);
    let mut buf = [0u8; BLOCK * 6];
    for block in bytes.chunks(BLOCK) {
        let w = escape_block(block, &mut buf);
        out.extend_from_slice(&buf[..w]);
    }
}

/// Escapes `block` into `buf` (at least 6 bytes per input byte); returns the length written.
fn escape_block(block: &[u8], buf: &mut [u8]) -> usize {
    let buf = &mut buf[..block.len() * 6];
    let mut w = 0;
    let mut words = block.chunks_exact(8);
    for word in &mut words {
        let eight: [u8; 8] = word.try_into().expect("chunks of 8");
        if !needs_escape(u64::from_le_bytes(eight)) {
            buf[w..w + 8].copy_from_slice(&eight);
            w += 8;
            continue;
        }
        for b in eight {
            w = escape_byte(b, buf, w);
        }
    }
    for &b in words.remainder() {
        w = escape_byte(b, buf, w);
    }
    w
}

/// Whether any of the eight bytes of `word` needs an escape: below 0x20, `"` or `\`. The
/// classic zero-byte test (exact for presence) on the word and on it xor each quote.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    below(word, 0x20) | below(quote, 1) | below(backslash, 1) != 0
}

/// Each byte's escape as two bytes to store (the second unused by a byte that stands for
/// itself), and how many of them count; 6 for `\u00xx`, written apart.
const PAIRS: [([u8; 2], u8); 256] = {
    let mut t = [([0u8; 2], 1u8); 256];
    let mut b = 0;
    while b < 256 {
        t[b] = match ESCAPES[b] {
            0 => ([b as u8, 0], 1),
            b'u' => ([0, 0], 6),
            short => ([b'\\', short], 2),
        };
        b += 1;
    }
    t
};

/// Writes the escape of one byte at `buf[w..]` (which has room for 6); returns where the
/// next goes. Branch-free but for `\u00xx`: two bytes are stored whatever the length.
#[inline(always)]
fn escape_byte(b: u8, buf: &mut [u8], w: usize) -> usize {
    let (pair, len) = PAIRS[usize::from(b)];
    if len == 6 {
        buf[w..w + 6].copy_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]);
        return w + 6;
    }
    buf[w..w + 2].copy_from_slice(&pair);
    w + usize::from(len)
}

/// Appends `s` as a JSON string, quotes included: what `serde_json` writes for it, at the cost
/// of [`escape`] (for text full of escapes, such as output of short lines).
pub fn quote(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    escape(s, out);
    out.push(b'"');
}

/// Encodes `chunks` in one go: for tests and small values.
pub fn encode<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = JsonString::new();
    for c in chunks {
        enc.feed(c, &mut out);
    }
    enc.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json makes of the same bytes decoded whole.
    fn reference(bytes: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&String::from_utf8_lossy(bytes)).unwrap()
    }

    /// Every way of cutting `bytes` in two, and in three, encodes as the whole does.
    fn check_every_split(bytes: &[u8]) {
        let want = reference(bytes);
        assert_eq!(encode([bytes]), want, "whole {bytes:02x?}");
        for i in 0..=bytes.len() {
            assert_eq!(
                encode([&bytes[..i], &bytes[i..]]),
                want,
                "{bytes:02x?} split at {i}"
            );
            for j in i..=bytes.len() {
                assert_eq!(
                    encode([&bytes[..i], &bytes[i..j], &bytes[j..]]),
                    want,
                    "{bytes:02x?} split at {i} and {j}"
                );
            }
        }
        // One byte at a time, with empty chunks between.
        let mut ones: Vec<&[u8]> = Vec::new();
        for b in bytes.chunks(1) {
            ones.push(b);
            ones.push(&[]);
        }
        assert_eq!(encode(ones), want, "{bytes:02x?} byte by byte");
    }

    #[test]
    fn escapes_like_serde_json() {
        let all: Vec<u8> = (0u8..0x80).collect();
        check_every_split(&all);
        assert_eq!(
            encode([&b"a\"b\\c\n\x01\x08\x0c\x7f"[..]]),
            b"\"a\\\"b\\\\c\\n\\u0001\\b\\f\x7f\""
        );
    }

    #[test]
    fn multi_byte_sequences_split_anywhere_decode_whole() {
        for s in [
            "é",
            "€",
            "𝄞",
            "aé€𝄞z",
            "\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}",
        ] {
            check_every_split(s.as_bytes());
        }
    }

    #[test]
    fn invalid_bytes_become_replacements_where_from_utf8_lossy_puts_them() {
        let cases: &[&[u8]] = &[
            b"\xff",
            b"\x80",
            b"a\xc3",
            b"\xc3a",
            b"\xe2\x82",
            b"\xe2\x82a",
            b"\xe2\x82\xe2\x82\xac",
            b"\xf0\x9d\x84",
            b"\xf0\x9d\x84\x9e\xf0",
            b"\xe0\x80\x80",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\xf5\x80",
            b"\xc0\xaf",
            b"\xc2\xc2\xa9",
            b"\xf0\x80\x80\x80\x80",
            b"\"\xff\\\n\xe2\x82\x00",
        ];
        for c in cases {
            check_every_split(c);
        }
    }

    #[test]
    fn empty_string() {
        assert_eq!(encode([]), b"\"\"");
        assert_eq!(encode([&b""[..], &b""[..]]), b"\"\"");
    }

    /// xorshift: random inputs without a dependency, reproducible from the seed.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_inputs_in_random_chunks_match_serde_json() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        // Bytes drawn mostly from the interesting ones: ASCII controls, quotes, leads,
        // continuations, and the bytes UTF-8 never uses.
        let palette: Vec<u8> = [
            &b"a \"\\\n\t\x00\x1f\x7f"[..],
            &[0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf],
            &[0xe0, 0xe1, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf4, 0xf5, 0xff],
        ]
        .concat();
        for _ in 0..3000 {
            let len = (next(&mut seed) % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next(&mut seed);
                    if r % 4 == 0 {
                        (r >> 8) as u8
                    } else {
                        palette[(r >> 8) as usize % palette.len()]
                    }
                })
                .collect();
            let mut chunks = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let n = (next(&mut seed) % 5) as usize;
                let end = (at + n).min(bytes.len());
                chunks.push(&bytes[at..end]);
                at = end;
            }
            assert_eq!(encode(chunks), reference(&bytes), "{bytes:02x?}");
        }
        // And valid text of every width, in random chunks.
        let text: String = (0..2000)
            .filter_map(|_| char::from_u32((next(&mut seed) % 0x11_0000) as u32))
            .collect();
        let bytes = text.as_bytes();
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let end = (at + 1 + (next(&mut seed) % 7) as usize).min(bytes.len());
            chunks.push(&bytes[at..end]);
            at = end;
        }
        assert_eq!(encode(chunks), reference(bytes));
    }
}
