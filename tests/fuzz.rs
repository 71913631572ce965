//! Fuzzing of every parser of upstream (untrusted) input, on stable Rust.
//!
//! Each target first replays its checked-in seed corpus
//! (`tests/fuzz_corpus/<target>/`: real Keycloak and Entra answers, AADSTS
//! errors, truncated JSON, huge numbers, hostile JWTs, …), then runs proptest
//! cases generated from structure-aware strategies, from byte-level mutations
//! of the corpus and from plain random bytes.
//!
//! Bounded time: `TOKENFS_FUZZ_CASES` generated cases per target (default
//! 2,000, so `cargo test` stays fast). CI can raise it for a longer run, e.g.
//! `TOKENFS_FUZZ_CASES=200000 cargo test --release --test fuzz`. Each target
//! prints how many corpus files and cases it ran (to stderr, which the test
//! harness does not capture).
//!
//! A failure prints the shrunk input; add it to the target's corpus directory
//! once the parser is fixed, so every later run replays it.
//!
//! Properties checked everywhere: no panic; no `Ok` for input that lacks what
//! the parser requires; error texts never carry a token or secret from the
//! input (only the OAuth `error`/`error_description` and Keycloak's
//! `account-link-url` are passed on by design, sanitized).
//!
//! One module per target under `tests/fuzz/`, over the shared harness in
//! `tests/fuzz/common.rs`; one test binary, so `--test fuzz` runs them all.

#[path = "fuzz/common.rs"]
mod common;
#[path = "fuzz/config.rs"]
mod config;
#[path = "fuzz/error_body.rs"]
mod error_body;
#[path = "fuzz/get_body.rs"]
mod get_body;
#[path = "fuzz/jwks.rs"]
mod jwks;
#[path = "fuzz/jwt_expiry.rs"]
mod jwt_expiry;
#[path = "fuzz/token_response.rs"]
mod token_response;
