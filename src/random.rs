//! The crate's one source of randomness: the system's, through aws-lc (the
//! library that already signs and hashes here), for everything that must not be
//! guessed (secrets, codes, PKCE verifiers, `state`s, temp-file names) and for
//! what merely must not repeat (jitter, ids). One generator, so there is one
//! thing to trust and to audit.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// `N` random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    fill(&mut buf);
    buf
}

/// Fill `buf` with random bytes. Without system randomness nothing this crate
/// makes is safe to hand out, so its failure is not an error to handle.
pub fn fill(buf: &mut [u8]) {
    aws_lc_rs::rand::fill(buf).expect("the system's randomness");
}

/// A secret of `len` random bytes as base64url without padding (`len * 4 / 3`
/// characters, safe in URLs, forms and file names).
pub fn secret(len: usize) -> String {
    let mut buf = vec![0u8; len];
    fill(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A random `u64`.
pub fn u64() -> u64 {
    u64::from_ne_bytes(bytes())
}

/// A uniformly random index below `n` (`n > 0`): rejection sampling, so no
/// value is likelier than another.
pub fn below(n: usize) -> usize {
    assert!(n > 0, "below(0)");
    let n = n as u64;
    // The largest multiple of n that fits: draws at or above it are redrawn.
    let zone = u64::MAX - u64::MAX % n;
    loop {
        let draw = u64();
        if draw < zone {
            return (draw % n) as usize;
        }
    }
}

/// A uniformly random `f64` in `[0, 1)`, from 53 random bits.
pub fn unit() -> f64 {
    (u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_base64url_of_the_length_asked_and_differ() {
        let a = secret(32);
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, secret(32));
        assert_eq!(secret(24).len(), 32);
    }

    #[test]
    fn below_and_unit_stay_in_range_and_reach_every_value() {
        let mut seen = [false; 20];
        for _ in 0..2000 {
            let i = below(20);
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
        for _ in 0..1000 {
            let u = unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
        assert_eq!(below(1), 0);
        assert_ne!(bytes::<16>(), bytes::<16>());
    }
}
