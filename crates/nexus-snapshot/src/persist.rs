//! Device state: the opaque, named sections ([`DeviceState`]) the state file stores, each
//! produced by a device's [`Persist`] implementation (the trait is `nexus-kvm`'s, so that a
//! device implements it in its own crate) under the device's [`Persist::SECTION`].

use crate::{Error, Result};

/// Save and restore of one device's state; defined in `nexus-kvm` so that every device
/// crate can implement it, re-exported here.
pub use nexus_kvm::persist::Persist;

/// One device's section of a snapshot: a name unique within the snapshot, the device's
/// format version, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// The device's name: its [`Persist::SECTION`] (for example `"serial"`, `"nexus-io"`).
    pub name: String,
    /// The device's state format version.
    pub version: u32,
    /// The state, in the device's format.
    pub data: Vec<u8>,
}

impl DeviceState {
    /// Saves `device` in its section ([`Persist::SECTION`]).
    pub fn save<P: Persist>(device: &P) -> Self {
        DeviceState {
            name: P::SECTION.into(),
            version: P::STATE_VERSION,
            data: device.save_state(),
        }
    }

    /// Restores a device from this section.
    pub fn restore<P: Persist>(&self, args: P::RestoreArgs) -> Result<P> {
        P::restore_state(args, self.version, &self.data).map_err(|e| Error::Device {
            name: self.name.clone(),
            source: Box::new(e),
        })
    }

    /// Restores device `P` from its section ([`Persist::SECTION`]) in `devices`.
    pub fn restore_from<P: Persist>(devices: &[DeviceState], args: P::RestoreArgs) -> Result<P> {
        Self::find(devices, P::SECTION)?.restore(args)
    }

    /// The section named `name` in `devices`.
    pub fn find<'a>(devices: &'a [DeviceState], name: &str) -> Result<&'a DeviceState> {
        devices
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| Error::MissingDevice(name.to_string()))
    }
}

/// Fails on duplicate names.
pub(crate) fn check_unique(devices: &[DeviceState]) -> Result<()> {
    for (i, d) in devices.iter().enumerate() {
        if devices[..i].iter().any(|o| o.name == d.name) {
            return Err(Error::DuplicateDevice(d.name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Counter(u32);

    impl Persist for Counter {
        const SECTION: &'static str = "counter";
        const STATE_VERSION: u32 = 3;
        type RestoreArgs = u32;
        type Error = std::io::Error;

        fn save_state(&self) -> Vec<u8> {
            self.0.to_le_bytes().to_vec()
        }

        fn restore_state(offset: u32, version: u32, bytes: &[u8]) -> std::io::Result<Self> {
            if version != 3 {
                return Err(std::io::Error::other("unknown version"));
            }
            let b: [u8; 4] = bytes
                .try_into()
                .map_err(|_| std::io::Error::other("bad length"))?;
            Ok(Counter(u32::from_le_bytes(b) + offset))
        }
    }

    #[test]
    fn sections_round_trip_and_refusals_name_the_device() {
        let s = DeviceState::save(&Counter(5));
        assert_eq!((s.name.as_str(), s.version), ("counter", 3));
        assert_eq!(s.restore::<Counter>(1).unwrap(), Counter(6));
        let bad = DeviceState {
            version: 4,
            ..s.clone()
        };
        let err = bad.restore::<Counter>(0).unwrap_err();
        assert!(err.to_string().contains("counter"), "{err}");
        let list = vec![s.clone(), bad];
        assert!(matches!(
            check_unique(&list),
            Err(Error::DuplicateDevice(_))
        ));
        assert!(DeviceState::find(&list, "counter").is_ok());
        assert_eq!(
            DeviceState::restore_from::<Counter>(&list[..1], 2).unwrap(),
            Counter(7)
        );
        assert!(matches!(
            DeviceState::restore_from::<Counter>(&[], 2),
            Err(Error::MissingDevice(name)) if name == "counter"
        ));
        assert!(matches!(
            DeviceState::find(&list, "nope"),
            Err(Error::MissingDevice(_))
        ));
    }
}
