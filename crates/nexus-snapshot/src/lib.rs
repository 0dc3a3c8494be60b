//! Snapshot and restore of Nexus VMs.
//!
//! **Status: not implemented yet.** This crate will hold the versioned, checksummed state
//! file, the sparse memory file, and the eager, lazy, userfaultfd and working-set-prefetch
//! restore modes. It exports nothing today so that nothing can be mistaken for working code.

#![deny(missing_docs)]
