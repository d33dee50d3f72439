//! Test support for kvsync integration tests.
