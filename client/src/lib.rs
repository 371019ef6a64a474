//! `shoal-client`: the Rust SDK (routing to preference lists, retries, typed CRDT handles).
//!
//! Not built yet: this crate is the subject of issue 4. It exports nothing so far.
