//! The shared I/O backend of the Nexus hypervisor.
//!
//! **Status: not implemented yet.** This crate will hold the always-on vhost-user backend
//! that serves every VM on a host through one I/O engine (object storage, HTTP), reading and
//! writing payloads directly in each VM's I/O window. It exports nothing today so that
//! nothing can be mistaken for working code.

#![deny(missing_docs)]
