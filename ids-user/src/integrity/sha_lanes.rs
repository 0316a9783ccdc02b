//! SHA-256 of several independent messages on one core at once.
//!
//! One SHA-256 message is a chain of dependent rounds: with the x86 SHA extensions a core spends
//! most of each block waiting on the latency of `sha256rnds2`, not on its throughput. Running the
//! rounds of up to [`MAX_LANES`] independent messages interleaved fills those waits: on the AMD
//! Zen 4 cores this was measured on, four messages are compressed at about 1.7× the bytes per
//! second of one (`cargo xtask bench integrity` compares one `ids hash` thread, reading files too,
//! with OpenSSL and sha2 on one buffer). The blocks of each message are
//! still compressed in order, so every result is exactly the SHA-256 of its message; the tests
//! compare it with the `sha2` crate for every length around the block and padding boundaries.
//!
//! [`compress`] is the only entry point: it takes one state and one run of blocks per lane (all
//! runs of the same length). Without the SHA extensions (or on another architecture), and for a
//! single lane, it hands each lane to `sha2::block_api::compress256`, the `sha2` crate's own
//! (SHA-NI where present) compression function, so the crate stays the reference everywhere.

/// The most messages [`compress`] interleaves: four saturated the SHA unit of the cores measured
/// (three reach 96 % of four's throughput, eight no more than four).
pub const MAX_LANES: usize = 4;

/// A SHA-256 state: the eight working words, before the final byte order.
pub type State = [u32; 8];

/// The initial state of SHA-256 (FIPS 180-4, 5.3.3).
pub const INITIAL: State =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// Whether [`compress`] interleaves lanes on this CPU (SHA extensions and SSE4.1 present).
pub fn interleaves() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::arch::is_x86_feature_detected!("sha")
                && std::arch::is_x86_feature_detected!("sse2")
                && std::arch::is_x86_feature_detected!("ssse3")
                && std::arch::is_x86_feature_detected!("sse4.1")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Compresses `blocks[i]` into `states[i]` for every lane `i`.
///
/// # Panics
/// If the two slices differ in length, there are more than [`MAX_LANES`] lanes, or the runs of
/// blocks differ in length (callers hand equal runs; anything else is a bug of the caller).
pub fn compress(states: &mut [&mut State], blocks: &[&[[u8; 64]]]) {
    assert_eq!(states.len(), blocks.len(), "one run of blocks per state");
    assert!(states.len() <= MAX_LANES, "at most {MAX_LANES} lanes");
    let run = blocks.first().map_or(0, |first| first.len());
    assert!(blocks.iter().all(|b| b.len() == run), "runs of equal length");
    #[cfg(target_arch = "x86_64")]
    if states.len() > 1 && interleaves() {
        // SAFETY: the CPU has the features `x86::compress` is compiled for (checked just above).
        unsafe {
            match states {
                [a, b] => x86::compress::<2>([a, b], [blocks[0], blocks[1]]),
                [a, b, c] => x86::compress::<3>([a, b, c], [blocks[0], blocks[1], blocks[2]]),
                [a, b, c, d] => x86::compress::<4>([a, b, c, d], [blocks[0], blocks[1], blocks[2], blocks[3]]),
                _ => unreachable!("1 < lanes <= MAX_LANES"),
            }
        }
        return;
    }
    for (state, blocks) in states.iter_mut().zip(blocks) {
        sha2::block_api::compress256(state, blocks);
    }
}

/// The final blocks of a message whose `total` bytes end with `tail` (fewer than 64 bytes, the
/// rest already compressed): `tail`, the 0x80 byte, zeros and the message length in bits, big
/// endian. One block, or two when the tail leaves no room for the length.
pub fn final_blocks(tail: &[u8], total: u64) -> ([[u8; 64]; 2], usize) {
    assert!(tail.len() < 64, "a tail is shorter than one block");
    let mut blocks = [[0u8; 64]; 2];
    let count = if tail.len() + 9 <= 64 { 1 } else { 2 };
    let flat = blocks.as_flattened_mut();
    flat[..tail.len()].copy_from_slice(tail);
    flat[tail.len()] = 0x80;
    flat[count * 64 - 8..count * 64].copy_from_slice(&total.wrapping_mul(8).to_be_bytes());
    (blocks, count)
}

/// The digest of a finished state: its words, big endian.
pub fn digest(state: &State) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// The whole blocks at the start of `bytes` (a trailing partial block is left out).
pub fn as_blocks(bytes: &[u8]) -> &[[u8; 64]] {
    let count = bytes.len() / 64;
    // SAFETY: `[u8; 64]` has the size of 64 bytes and the alignment of `u8`; the first
    // `count * 64` bytes of `bytes` are in bounds and borrowed for the returned lifetime.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<[u8; 64]>(), count) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::State;

    /// The round constants (FIPS 180-4, 4.2.2).
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    /// The state as `sha256rnds2` wants it: (A B E F, C D G H), A and C in the highest word.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn load(state: &State) -> (__m128i, __m128i) {
        // SAFETY: both loads read 16 bytes inside the 32 of `state`; the features are the caller's.
        unsafe {
            let abcd = _mm_loadu_si128(state.as_ptr().cast());
            let efgh = _mm_loadu_si128(state.as_ptr().add(4).cast());
            let badc = _mm_shuffle_epi32(abcd, 0b10_11_00_01);
            let hgfe = _mm_shuffle_epi32(efgh, 0b00_01_10_11);
            (_mm_alignr_epi8(badc, hgfe, 8), _mm_blend_epi16(hgfe, badc, 0xF0))
        }
    }

    /// The inverse of [`load`].
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn store(abef: __m128i, cdgh: __m128i, state: &mut State) {
        // SAFETY: both stores write 16 bytes inside the 32 of `state`; the features are the caller's.
        unsafe {
            let feba = _mm_shuffle_epi32(abef, 0b00_01_10_11);
            let dchg = _mm_shuffle_epi32(cdgh, 0b10_11_00_01);
            _mm_storeu_si128(state.as_mut_ptr().cast(), _mm_blend_epi16(feba, dchg, 0xF0));
            _mm_storeu_si128(state.as_mut_ptr().add(4).cast(), _mm_alignr_epi8(dchg, feba, 8));
        }
    }

    /// `N` lanes, their rounds interleaved; every run of blocks has the same length.
    ///
    /// # Safety
    /// The CPU must have the SHA extensions, SSE2, SSSE3 and SSE4.1.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn compress<const N: usize>(states: [&mut State; N], blocks: [&[[u8; 64]]; N]) {
        // SAFETY: every load reads 16 bytes inside a 64-byte block or the constants (4 * group + 3
        // < 64); the features are the caller's.
        unsafe {
            // Byte order of each 32-bit word reversed: message words are big endian.
            let swap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
            let mut abef = [_mm_setzero_si128(); N];
            let mut cdgh = [_mm_setzero_si128(); N];
            for lane in 0..N {
                (abef[lane], cdgh[lane]) = load(states[lane]);
            }
            #[allow(clippy::needless_range_loop)] // one index into N runs of blocks
            for index in 0..blocks[0].len() {
                let (abef_in, cdgh_in) = (abef, cdgh);
                // w[lane][j]: four consecutive message words W[4g..4g+4] of group g = j (mod 4).
                let mut w = [[_mm_setzero_si128(); 4]; N];
                for lane in 0..N {
                    let block = blocks[lane][index].as_ptr().cast::<__m128i>();
                    for (j, words) in w[lane].iter_mut().enumerate() {
                        *words = _mm_shuffle_epi8(_mm_loadu_si128(block.add(j)), swap);
                    }
                }
                for group in 0..16 {
                    let k = _mm_loadu_si128(K.as_ptr().add(4 * group).cast());
                    for lane in 0..N {
                        let w = &mut w[lane];
                        if group >= 4 {
                            // W[t] = σ1(W[t-2]) + W[t-7] + σ0(W[t-15]) + W[t-16] for the four t of
                            // this group: msg1 gives W[t-16] + σ0(W[t-15]), alignr the W[t-7],
                            // msg2 adds σ1(W[t-2]) (including those of this very group).
                            let (oldest, older, old, last) =
                                (group % 4, (group + 1) % 4, (group + 2) % 4, (group + 3) % 4);
                            let partial = _mm_add_epi32(
                                _mm_sha256msg1_epu32(w[oldest], w[older]),
                                _mm_alignr_epi8(w[last], w[old], 4),
                            );
                            w[oldest] = _mm_sha256msg2_epu32(partial, w[last]);
                        }
                        let words = _mm_add_epi32(w[group % 4], k);
                        cdgh[lane] = _mm_sha256rnds2_epu32(cdgh[lane], abef[lane], words);
                        abef[lane] =
                            _mm_sha256rnds2_epu32(abef[lane], cdgh[lane], _mm_shuffle_epi32(words, 0b00_00_11_10));
                    }
                }
                for lane in 0..N {
                    abef[lane] = _mm_add_epi32(abef[lane], abef_in[lane]);
                    cdgh[lane] = _mm_add_epi32(cdgh[lane], cdgh_in[lane]);
                }
            }
            for (lane, state) in states.into_iter().enumerate() {
                store(abef[lane], cdgh[lane], state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    /// Deterministic bytes, different for every `seed`.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// SHA-256 of `message` through the lanes: its whole blocks by [`compress`] beside the
    /// other lanes' messages (cut to the same run), then the rest one lane at a time.
    fn lanes_digests(messages: &[Vec<u8>]) -> Vec<[u8; 32]> {
        let mut states = vec![INITIAL; messages.len()];
        let run = messages.iter().map(|m| m.len() / 64).min().unwrap_or(0);
        {
            let mut refs: Vec<&mut State> = states.iter_mut().collect();
            let blocks: Vec<&[[u8; 64]]> = messages.iter().map(|m| &as_blocks(m)[..run]).collect();
            compress(&mut refs, &blocks);
        }
        messages
            .iter()
            .zip(&mut states)
            .map(|(message, state)| {
                let rest = &message[run * 64..];
                compress(&mut [state], &[as_blocks(rest)]);
                let whole = rest.len() / 64 * 64;
                let (last, count) = final_blocks(&rest[whole..], message.len() as u64);
                compress(&mut [state], &[&last[..count]]);
                digest(state)
            })
            .collect()
    }

    #[test]
    fn every_lane_count_and_length_near_block_boundaries_is_sha256() {
        let lengths = [0usize, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096, 65_599];
        for lanes in 1..=MAX_LANES {
            for (i, &len) in lengths.iter().enumerate() {
                // Lanes of different lengths: the longest ones finish on their own.
                let messages: Vec<Vec<u8>> =
                    (0..lanes).map(|lane| bytes((i * 10 + lane) as u64, len + lane * 70)).collect();
                let expected: Vec<[u8; 32]> = messages.iter().map(|m| sha2::Sha256::digest(m).into()).collect();
                assert_eq!(lanes_digests(&messages), expected, "{lanes} lanes, length {len}");
            }
        }
    }

    #[test]
    fn known_answers() {
        // FIPS 180-4 examples: "abc" and the 448-bit message.
        let abc =
            lanes_digests(&[b"abc".to_vec(), b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".to_vec()]);
        assert_eq!(crate::integrity::hex(&abc[0]), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(crate::integrity::hex(&abc[1]), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    }

    #[test]
    #[should_panic(expected = "runs of equal length")]
    fn unequal_runs_are_refused() {
        let (a, b) = (vec![0u8; 128], vec![0u8; 64]);
        let (mut s, mut t) = (INITIAL, INITIAL);
        compress(&mut [&mut s, &mut t], &[as_blocks(&a), as_blocks(&b)]);
    }
}
