//! The nexus-io virtio device (VMM side) of the Nexus hypervisor.
//!
//! **Status: not implemented yet.** This crate will hold the device model over virtio-mmio,
//! its config space, the vhost-user frontend that hands the backend only the VM's I/O window,
//! ioeventfd doorbells, irqfd and wait-register completions, and the device state for
//! snapshots. It exports nothing today so that nothing can be mistaken for working code.

#![deny(missing_docs)]
