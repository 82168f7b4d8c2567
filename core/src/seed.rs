//! SplitMix64 (Steele, Lea, Flood 2014; Vigna's reference `splitmix64.c`), the one generator behind every seed in
//! Orchard: sample seeds, dropout masks, task and tree seeds, shuffles. A stream's k-th output is a pure function
//! of (seed, k), so draws never depend on thread timing or evaluation order.

/// The golden-ratio increment of SplitMix64's state.
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective mix of 64 bits.
pub fn fmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `k`-th output (from 1) of the SplitMix64 stream started at `seed`: `fmix64(seed + k·γ)`.
pub fn splitmix64_at(seed: u64, k: u64) -> u64 {
    fmix64(seed.wrapping_add(k.wrapping_mul(GAMMA)))
}

/// The next output of the SplitMix64 stream whose state is `state` (advanced by one step).
pub fn splitmix64_next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GAMMA);
    fmix64(*state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference implementation's first outputs for state 0 (Vigna's `splitmix64.c`; the same values as
    /// Python: `s = (s + 0x9E3779B97F4A7C15) % 2**64; z = s; z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64;
    /// z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64; z ^ (z >> 31)`).
    #[test]
    fn outputs_match_the_reference_stream() {
        let mut s = 0;
        let got: Vec<u64> = (0..3).map(|_| splitmix64_next(&mut s)).collect();
        assert_eq!(got, [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F]);
    }

    #[test]
    fn the_kth_output_is_a_pure_function_of_seed_and_k() {
        for seed in [0u64, 1, 42, u64::MAX - 3] {
            let mut s = seed;
            for k in 1..=100 {
                assert_eq!(splitmix64_next(&mut s), splitmix64_at(seed, k));
            }
        }
    }
}
