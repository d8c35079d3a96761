//! Decoding the standard base64 of a resource's `data` at memory speed. The `base64` crate
//! stays the rule: it decodes short texts, the last group of a long one (where padding and
//! trailing bits are checked) and anything irregular (line breaks, a stray byte), and its
//! errors are the ones clients see. What this adds is the bulk of a long text, eight
//! characters at a time through a table of character pairs, written straight into the
//! output: about twice the crate's speed in the release build (6 MiB: ~2.6-3.6 ms against
//! ~5.4-6 ms), and no zero-filling of the output first. A text of a MiB or more is decoded in
//! two halves at once, the second on a scoped thread (~1 ms less for 6 MiB on two cores).

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use base64::Engine as _;

const STANDARD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Texts shorter than this go to the crate whole: the pair table is not worth building.
const BULK_FROM: usize = 64 << 10;

/// Set in a pair's entry when either byte is outside the alphabet.
const INVALID: u16 = 0xF000;

/// For each pair of bytes (first byte high), the 12 bits the two characters stand for, or
/// [`INVALID`]. 128 KiB, built at the first long text.
fn pairs() -> &'static [u16; 1 << 16] {
    static PAIRS: OnceLock<Box<[u16; 1 << 16]>> = OnceLock::new();
    PAIRS.get_or_init(|| {
        let mut sextet = [None; 256];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for (value, &c) in (0u16..).zip(alphabet) {
            sextet[usize::from(c)] = Some(value);
        }
        let mut table = Box::new([INVALID; 1 << 16]);
        for (i, entry) in table.iter_mut().enumerate() {
            if let (Some(hi), Some(lo)) = (sextet[i >> 8], sextet[i & 0xff]) {
                *entry = hi << 6 | lo;
            }
        }
        table
    })
}

/// Decodes `text` as the crate's `STANDARD` engine does (padding required, canonical
/// trailing bits), with its errors.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    if text.len() < BULK_FROM || text.len() % 4 != 0 {
        return STANDARD.decode(text);
    }
    // Whole groups of eight before the last (non-empty) group of four or eight, which may
    // hold padding: that one is the crate's.
    let bulk = (text.len() - 1) / 8 * 8;
    let (head, tail) = text.split_at(bulk);
    let groups = bulk / 8;
    // Room for the last group too, so the crate's decoding of it does not move the bulk.
    let mut out = Vec::with_capacity(groups * 6 + 16);
    let dst = &mut out.spare_capacity_mut()[..groups * 6];
    if !decode_bulk(pairs(), head, dst) {
        return STANDARD.decode(text);
    }
    // SAFETY: `decode_bulk` wrote every byte of the first `groups * 6`.
    unsafe { out.set_len(groups * 6) };
    if STANDARD.decode_vec(tail, &mut out).is_err() {
        // Something irregular: the crate decides, and names the offset in the whole text.
        return STANDARD.decode(text);
    }
    Ok(out)
}

/// Texts from this long are decoded in two halves at once, the second on a thread of its own.
const SPLIT_FROM: usize = 1 << 20;

/// Writes the bytes of `text` (a multiple of eight alphabet characters, no padding) to all
/// of `dst` (six for each eight characters). False when a byte is outside the alphabet.
fn decode_bulk(pairs: &[u16; 1 << 16], text: &[u8], dst: &mut [MaybeUninit<u8>]) -> bool {
    if text.len() >= SPLIT_FROM {
        let half = text.len() / 16 * 8;
        let (t1, t2) = text.split_at(half);
        let (d1, d2) = dst.split_at_mut(half / 8 * 6);
        return std::thread::scope(|s| {
            let second = std::thread::Builder::new().spawn_scoped(s, || decode_run(pairs, t2, d2));
            let first = decode_run(pairs, t1, d1);
            match second {
                Ok(second) => first & second.join().unwrap_or(false),
                // No thread to be had: the crate decodes the whole text instead.
                Err(_) => false,
            }
        });
    }
    decode_run(pairs, text, dst)
}

fn decode_run(pairs: &[u16; 1 << 16], text: &[u8], dst: &mut [MaybeUninit<u8>]) -> bool {
    let groups = text.len() / 8;
    assert!(text.len() % 8 == 0 && dst.len() == groups * 6 && groups > 0);
    let out = dst.as_mut_ptr().cast::<u8>();
    let mut invalid = 0u16;
    let bytes_of = |group: &[u8], invalid: &mut u16| {
        let w = u64::from_be_bytes(group.try_into().expect("groups of eight"));
        let a = pairs[(w >> 48) as usize];
        let b = pairs[(w >> 32) as usize & 0xffff];
        let c = pairs[(w >> 16) as usize & 0xffff];
        let d = pairs[w as usize & 0xffff];
        *invalid |= a | b | c | d;
        let bits = u64::from(a) << 36 | u64::from(b) << 24 | u64::from(c) << 12 | u64::from(d);
        (bits << 16).to_be_bytes()
    };
    let (body, last) = text.split_at(text.len() - 8);
    for (i, group) in body.chunks_exact(8).enumerate() {
        let bytes = bytes_of(group, &mut invalid);
        // SAFETY: `i * 6 + 8 <= (groups - 2) * 6 + 8 < dst.len()`: eight bytes (six that
        // count, two the next group overwrites) written unaligned within `dst`.
        unsafe { out.add(i * 6).cast::<[u8; 8]>().write_unaligned(bytes) };
    }
    let bytes = bytes_of(last, &mut invalid);
    for (slot, byte) in dst[(groups - 1) * 6..].iter_mut().zip(bytes) {
        slot.write(byte);
    }
    invalid & INVALID == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that cover every value in every position of a group.
    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
            .collect()
    }

    #[test]
    fn long_texts_decode_as_the_crate_does_for_every_tail() {
        for n in (BULK_FROM / 4 * 3 - 8)..(BULK_FROM / 4 * 3 + 16) {
            let bytes = sample(n);
            let text = STANDARD.encode(&bytes);
            assert_eq!(decode(text.as_bytes()).unwrap(), bytes, "{n} bytes");
        }
        let bytes = sample(3 << 20);
        assert_eq!(decode(STANDARD.encode(&bytes).as_bytes()).unwrap(), bytes);
    }

    #[test]
    fn irregular_long_texts_get_the_crates_answer() {
        let text = STANDARD.encode(sample(BULK_FROM));
        let at = |i: usize, b: u8| {
            let mut t = text.clone().into_bytes();
            t[i] = b;
            t
        };
        let wrapped: Vec<u8> = text
            .as_bytes()
            .chunks(76)
            .flat_map(|l| l.iter().copied().chain(*b"\n"))
            .collect();
        let cases = [
            at(10, b'*'),                        // outside the alphabet, in the bulk
            at(text.len() - 3, b'-'),            // in the last group
            at(100, b'='),                       // padding inside
            at(text.len() - 3, b'B'),            // trailing bits not canonical
            text.as_bytes()[1..].to_vec(),       // not a multiple of four
            wrapped,                             // line breaks
            [text.as_bytes(), b"===="].concat(), // a group of padding
        ];
        for case in cases {
            let ours = decode(&case).map_err(|e| e.to_string());
            let crates = STANDARD.decode(&case).map_err(|e| e.to_string());
            assert_eq!(ours, crates);
            // Every one of them is an error: the cases are what they claim to be.
            assert!(ours.is_err());
        }
        // Long enough to be decoded in two halves at once: a stray byte in either.
        let long = STANDARD.encode(sample(SPLIT_FROM));
        for i in [7, long.len() / 2 - 1, long.len() / 2 + 1, long.len() - 9] {
            let mut t = long.clone().into_bytes();
            t[i] = b'.';
            let ours = decode(&t).map_err(|e| e.to_string());
            assert_eq!(ours, STANDARD.decode(&t).map_err(|e| e.to_string()), "{i}");
            assert!(ours.is_err());
        }
    }

    #[test]
    fn every_pair_of_bytes_has_its_entry() {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let table = pairs();
        for hi in 0..=255u8 {
            for lo in 0..=255u8 {
                let pos = |c: u8| alphabet.iter().position(|&a| a == c).map(|p| p as u16);
                let want = match (pos(hi), pos(lo)) {
                    (Some(h), Some(l)) => h << 6 | l,
                    _ => INVALID,
                };
                assert_eq!(table[usize::from(hi) << 8 | usize::from(lo)], want);
            }
        }
    }
}
