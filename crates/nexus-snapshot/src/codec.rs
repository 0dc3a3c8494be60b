//! Little-endian encoding helpers and the record (tag, length, payload) framing shared by the
//! state file's body and its nested vCPU and VM records.

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Why a body could not be decoded; turned into [`crate::Error::Malformed`] with the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub String);

pub(crate) type DecodeResult<T> = std::result::Result<T, DecodeError>;

fn err<T>(msg: impl Into<String>) -> DecodeResult<T> {
    Err(DecodeError(msg.into()))
}

/// Appends little-endian values to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    pub(crate) buf: Vec<u8>,
}

impl Encoder {
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// A kernel ABI structure, as its x86-64 in-memory bytes (little endian).
    pub(crate) fn raw<T: IntoBytes + Immutable + ?Sized>(&mut self, v: &T) {
        self.buf.extend_from_slice(v.as_bytes());
    }

    /// A record: `tag: u32`, `length: u32`, then the payload `f` writes.
    pub(crate) fn record(&mut self, tag: u32, f: impl FnOnce(&mut Encoder)) {
        self.u32(tag);
        let len_at = self.buf.len();
        self.u32(0);
        let start = self.buf.len();
        f(self);
        let len = u32::try_from(self.buf.len() - start).expect("a record is below 4 GiB");
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Reads little-endian values from a byte slice, refusing to read past its end.
#[derive(Debug)]
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Decoder<'a> {
    /// A decoder over `buf`; `what` names it in errors.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Decoder { buf, pos: 0, what }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        match self.pos.checked_add(n).filter(|&end| end <= self.buf.len()) {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => err(format!(
                "{} ends after {} bytes; {} more were needed at offset {}",
                self.what,
                self.buf.len(),
                n,
                self.pos
            )),
        }
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub(crate) fn u16(&mut self) -> DecodeResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> DecodeResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> DecodeResult<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// The next record: its tag and payload.
    pub(crate) fn record(&mut self) -> DecodeResult<(u32, &'a [u8])> {
        let tag = self.u32()?;
        let len = self.u32()? as usize;
        let payload = self.take(len)?;
        Ok((tag, payload))
    }

    /// Fails unless everything was read.
    pub(crate) fn finish(&self) -> DecodeResult<()> {
        if self.is_empty() {
            Ok(())
        } else {
            err(format!(
                "{} has {} unexpected trailing bytes",
                self.what,
                self.buf.len() - self.pos
            ))
        }
    }
}

/// A kernel ABI structure from exactly `size_of::<T>()` bytes.
pub(crate) fn raw_from<T: FromBytes>(bytes: &[u8], what: &str) -> DecodeResult<T> {
    T::read_from_bytes(bytes).map_err(|_| {
        DecodeError(format!(
            "{what} is {} bytes; {} were expected",
            bytes.len(),
            std::mem::size_of::<T>()
        ))
    })
}

/// A list of `count: u32`, `reserved: u32`, then `count` raw kernel structures; more than
/// `max` entries are refused before anything is allocated.
pub(crate) fn raw_list_from<T: FromBytes>(
    bytes: &[u8],
    what: &str,
    max: usize,
) -> DecodeResult<Vec<T>> {
    let mut d = Decoder::new(bytes, "a list");
    let count = d.u32()? as usize;
    let _reserved = d.u32()?;
    if count > max {
        return err(format!("{what} has {count} entries (at most {max})"));
    }
    let size = std::mem::size_of::<T>();
    let body = d.rest();
    if count.checked_mul(size) != Some(body.len()) {
        return err(format!(
            "{what} holds {} bytes for {count} entries of {size} bytes",
            body.len()
        ));
    }
    body.chunks_exact(size).map(|c| raw_from(c, what)).collect()
}

/// Encodes a list as [`raw_list_from`] reads it.
pub(crate) fn raw_list<T: IntoBytes + Immutable>(e: &mut Encoder, items: &[T]) {
    e.u32(u32::try_from(items.len()).expect("fewer than 2^32 entries"));
    e.u32(0);
    for item in items {
        e.raw(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_truncation_is_refused() {
        let mut e = Encoder::default();
        e.record(7, |e| {
            e.u16(1);
            e.u64(u64::MAX);
        });
        e.record(9, |_| {});
        let mut d = Decoder::new(&e.buf, "body");
        let (tag, payload) = d.record().unwrap();
        assert_eq!((tag, payload.len()), (7, 10));
        let mut p = Decoder::new(payload, "payload");
        assert_eq!(p.u16().unwrap(), 1);
        assert_eq!(p.u64().unwrap(), u64::MAX);
        p.finish().unwrap();
        assert_eq!(d.record().unwrap(), (9, &[][..]));
        d.finish().unwrap();

        let mut short = Decoder::new(&e.buf[..e.buf.len() - 1], "body");
        short.record().unwrap();
        assert!(short.record().is_err());
        assert!(Decoder::new(&[1, 2], "x").u32().is_err());
    }

    #[test]
    fn raw_lists_check_their_length() {
        let entries = [kvm_bindings::kvm_msr_entry {
            index: 0x10,
            data: 5,
            ..Default::default()
        }; 3];
        let mut e = Encoder::default();
        raw_list(&mut e, &entries);
        let back: Vec<kvm_bindings::kvm_msr_entry> = raw_list_from(&e.buf, "MSRs", 3).unwrap();
        assert_eq!(back, entries);
        assert!(
            raw_list_from::<kvm_bindings::kvm_msr_entry>(&e.buf[..e.buf.len() - 1], "MSRs", 3)
                .is_err()
        );
        // A count above the bound is refused from the count alone.
        let err = raw_list_from::<kvm_bindings::kvm_msr_entry>(&e.buf, "MSRs", 2).unwrap_err();
        assert!(err.0.contains("3 entries (at most 2)"), "{}", err.0);
        let mut huge = Encoder::default();
        huge.u32(u32::MAX);
        huge.u32(0);
        assert!(raw_list_from::<kvm_bindings::kvm_msr_entry>(&huge.buf, "MSRs", 256).is_err());
    }
}
