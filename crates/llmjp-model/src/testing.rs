//! Helpers for the unit tests.

pub use llmjp_testdata::uniform;
