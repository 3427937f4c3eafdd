//! Helpers for Tern end-to-end tests live in tests/support.
