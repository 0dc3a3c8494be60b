// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Decoding straight from a `virtio_queue::DescriptorChain` (feature `virtio`).

use core::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::chain::{ChainDescriptor, Collected, Decoder, Rejection, Request};
use crate::error::Error;

impl Decoder {
    /// Decodes a request from a descriptor chain popped off the request queue.
    ///
    /// This is the decoder the device, the backend and the fuzzer share. The chain's memory is
    /// read only for the request header, after every descriptor has been checked against the
    /// window. The virtio-queue iterator itself reads the descriptor table (and any indirect
    /// table) and ends the chain early on a malformed link; such a truncated chain is refused
    /// with [`Error::BrokenChain`].
    pub fn decode_chain<M>(
        &self,
        chain: DescriptorChain<M>,
    ) -> core::result::Result<Request, Rejection>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let mut chain = chain;
        let mut collected = Collected::new();
        let mut links_on = false;
        collected.gather(chain.by_ref().map(|d| {
            links_on = d.has_next();
            ChainDescriptor {
                addr: d.addr().0,
                len: d.len(),
                writable: d.is_write_only(),
            }
        }));
        // The iterator ends early, silently, on a link it refuses (for example a chain of more
        // than 4 GiB in total): a chain whose last descriptor still links on is broken.
        if links_on && collected.error.is_none() {
            collected.error = Some(Error::BrokenChain);
        }
        let memory = chain.memory();
        self.finish(&collected, |segment, out| {
            memory
                .read_slice(out, GuestAddress(segment.addr))
                .map_err(|_| Error::GuestMemory { addr: segment.addr })
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use crate::mock::{
        ChainImage, MOCK_WINDOW_BASE, MockDescriptor, VIRTQ_DESC_F_WRITE, sample_requests,
    };
    use crate::{Error, Op};

    #[test]
    fn virtqueue_and_flat_decoding_agree_on_samples() {
        let samples = sample_requests();
        assert_eq!(samples.len(), 17);
        let mut ops = std::collections::BTreeSet::new();
        for (name, image) in samples {
            let flat = image.decode().unwrap().unwrap();
            let queued = image.decode_virtio().unwrap().unwrap();
            assert_eq!(flat, queued, "{name}");
            ops.insert(queued.op());
        }
        assert_eq!(ops.len(), Op::ALL.len());
    }

    #[test]
    fn a_chain_the_virtqueue_cuts_short_is_refused() {
        // More than 4 GiB in total: virtio-queue stops yielding descriptors at the one that
        // crosses the limit, although the previous one still links on.
        let (_, mut image) = sample_requests().swap_remove(3); // get
        assert!(image.decode_virtio().unwrap().is_ok());
        image.descriptors.push(MockDescriptor {
            addr: MOCK_WINDOW_BASE,
            len: u32::MAX,
            flags: VIRTQ_DESC_F_WRITE,
        });
        let rejection = image.decode_virtio().unwrap().unwrap_err();
        assert_eq!(rejection.error, Error::BrokenChain);
    }

    #[test]
    fn descriptors_in_memory_but_outside_the_window_are_refused() {
        let (_, mut image) = sample_requests().swap_remove(3); // get
        assert!(image.decode_virtio().unwrap().is_ok());
        let end = MOCK_WINDOW_BASE + image.image.len() as u64;
        // The mock maps a page past the window: only the window check stands in the way.
        image.descriptors.push(MockDescriptor {
            addr: end,
            len: 64,
            flags: VIRTQ_DESC_F_WRITE,
        });
        assert_eq!(
            image.decode_virtio().unwrap().unwrap_err().error,
            Error::OutsideWindow { addr: end, len: 64 }
        );
        // Below the window lies the virtqueue itself.
        image.descriptors.pop();
        image.descriptors[1].addr = 0;
        assert!(matches!(
            image.decode_virtio().unwrap().unwrap_err().error,
            Error::OutsideWindow { addr: 0, .. }
        ));
    }

    #[test]
    fn chain_image_bytes_round_trip() {
        for (_, image) in sample_requests() {
            assert_eq!(ChainImage::from_bytes(&image.to_bytes()), Some(image));
        }
        assert_eq!(ChainImage::from_bytes(&[]), None);
        assert_eq!(ChainImage::from_bytes(&[1, 0, 0]), None);
    }
}
