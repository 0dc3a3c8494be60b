//! Micro-guest: a hostile driver. Sends deliberately malformed and out-of-window requests and
//! checks that each one is refused — an `INVALID_REQUEST` (or `UNSUPPORTED_VERSION`) response,
//! the chain returned with used length 0, or, for a chain that breaks a ring rule (too many
//! descriptors), the queue broken and the device asking for a reset — without the device or
//! backend touching guest RAM, and that a well-formed request still works afterwards.
//!
//! Prints `hostile: <case>: ok (…)` or `hostile: <case>: FAILED (…)` per case, then
//! `hostile: <passed>/<total> cases behaved`. Exits 0 only if every case behaved; 1 otherwise.
//!
//! With an argument `KEY`, also PUTs and GETs `KEY` at the end (the tenant must allow it).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use nexus_guest::mmio::MmioRegisters;
use nexus_guest::nexus_ring::{
    ChainDescriptor, PROTOCOL_VERSION, REQUEST_HEADER_SIZE, REQUEST_MAGIC, RESPONSE_HEADER_SIZE,
    ResponseHeader, SegmentRef, Status,
};
use nexus_guest::{BootInfo, Error, LogLevel, Nexus, WindowBuf, println};

nexus_guest::entry!(main);

type Client = Nexus<MmioRegisters>;

/// Op codes (docs/protocol.md §5).
const OP_GET: u16 = 3;
const OP_PUT: u16 = 4;
const OP_DELETE: u16 = 6;

/// Fill byte of every buffer the device must not write.
const UNTOUCHED: u8 = 0x5A;

/// The 48 bytes of a request header, any field any value.
#[derive(Clone, Copy)]
struct RawHeader {
    magic: u32,
    version: u16,
    op: u16,
    id: u64,
    flags: u32,
    key_len: u32,
    meta_len: u32,
    payload_len: u32,
    arg0: u64,
    arg1: u64,
}

impl RawHeader {
    fn new(op: u16, id: u64, key_len: u32) -> Self {
        Self {
            magic: REQUEST_MAGIC,
            version: PROTOCOL_VERSION,
            op,
            id,
            flags: 0,
            key_len,
            meta_len: 0,
            payload_len: 0,
            arg0: 0,
            arg1: 0,
        }
    }

    fn bytes(&self) -> [u8; REQUEST_HEADER_SIZE] {
        let mut out = [0u8; REQUEST_HEADER_SIZE];
        out[0..4].copy_from_slice(&self.magic.to_le_bytes());
        out[4..6].copy_from_slice(&self.version.to_le_bytes());
        out[6..8].copy_from_slice(&self.op.to_le_bytes());
        out[8..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..20].copy_from_slice(&self.flags.to_le_bytes());
        out[20..24].copy_from_slice(&self.key_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.meta_len.to_le_bytes());
        out[28..32].copy_from_slice(&self.payload_len.to_le_bytes());
        out[32..40].copy_from_slice(&self.arg0.to_le_bytes());
        out[40..48].copy_from_slice(&self.arg1.to_le_bytes());
        out
    }
}

/// What a case sends and where the answer may land.
struct Case {
    name: &'static str,
    chain: Vec<ChainDescriptor>,
    /// The response head, if it is a window buffer we can read back.
    head: Option<WindowBuf>,
    /// The id a response must echo, if the header was readable with the right magic.
    id: Option<u64>,
    /// Window buffers the chain points at (kept alive until the request is done).
    keep: Vec<WindowBuf>,
    /// The chain breaks a ring rule: the backend stops serving the queue and the device
    /// asks for a reset (the driver's [`Error::QueueBroken`]) instead of answering.
    breaks_queue: bool,
}

/// The bytes of a case that lives in guest RAM (outside the window); checked afterwards.
struct RamTarget {
    bytes: Vec<u8>,
}

impl RamTarget {
    fn new(len: usize) -> Self {
        Self {
            bytes: vec![UNTOUCHED; len],
        }
    }

    /// Guest-physical address (identity mapped).
    fn addr(&self) -> u64 {
        self.bytes.as_ptr().addr() as u64
    }

    fn segment(&self) -> SegmentRef {
        SegmentRef::new(self.addr(), self.bytes.len() as u32)
    }

    fn untouched(&self) -> bool {
        // Volatile: the compiler must not assume the bytes unchanged across the request.
        self.bytes.iter().all(|b| {
            // SAFETY: `b` is a valid reference to a live byte.
            unsafe { core::ptr::read_volatile(b) == UNTOUCHED }
        })
    }
}

/// The builder of the cases' buffers.
struct Lab<'a> {
    nexus: &'a Client,
    next_id: u64,
}

impl Lab<'_> {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A window buffer holding `data`.
    fn buf(&self, data: &[u8]) -> Result<WindowBuf, Error> {
        self.nexus.copy_to_window(data)
    }

    /// A response head of `len` bytes, filled with [`UNTOUCHED`].
    fn head(&self, len: usize) -> Result<WindowBuf, Error> {
        let mut head = self.nexus.alloc(len)?;
        head.full_mut()[..len].fill(UNTOUCHED);
        head.set_len(len);
        Ok(head)
    }
}

fn readable(buf: &WindowBuf) -> ChainDescriptor {
    ChainDescriptor::readable(SegmentRef::new(buf.gpa(), buf.len() as u32))
}

fn writable(buf: &WindowBuf) -> ChainDescriptor {
    ChainDescriptor::writable(SegmentRef::new(buf.gpa(), buf.len() as u32))
}

fn raw(addr: u64, len: u32, writable: bool) -> ChainDescriptor {
    ChainDescriptor {
        addr,
        len,
        writable,
    }
}

/// A GET-shaped case: header, key `k`, response head of 40 bytes; `tweak` spoils it.
fn get_case(
    lab: &mut Lab<'_>,
    name: &'static str,
    tweak: impl FnOnce(&mut RawHeader),
) -> Result<Case, Error> {
    let id = lab.id();
    let mut header = RawHeader::new(OP_GET, id, 1);
    tweak(&mut header);
    let header_buf = lab.buf(&header.bytes())?;
    let key = lab.buf(b"k")?;
    let head = lab.head(RESPONSE_HEADER_SIZE)?;
    let expect_id = (header.magic == REQUEST_MAGIC).then_some(id);
    Ok(Case {
        name,
        chain: vec![readable(&header_buf), readable(&key), writable(&head)],
        head: Some(head),
        id: expect_id,
        keep: vec![header_buf, key],
        breaks_queue: false,
    })
}

/// The cases whose buffers are all in the window (or point outside it on purpose, with no
/// RAM to check).
fn window_cases(lab: &mut Lab<'_>, window: (u64, u64)) -> Result<Vec<Case>, Error> {
    let (base, size) = window;
    let end = base + size;
    let mut cases = vec![
        get_case(lab, "bad magic", |h| h.magic = 0xDEAD_BEEF)?,
        get_case(lab, "unsupported version", |h| h.version = 2)?,
        get_case(lab, "unknown op", |h| h.op = 99)?,
        get_case(lab, "undefined flag", |h| h.flags = 1)?,
        get_case(lab, "key length mismatch", |h| h.key_len = 5)?,
        get_case(lab, "payload length overflowing", |h| {
            h.payload_len = u32::MAX;
        })?,
    ];

    // A PUT whose payload lengths add up past u32 (descriptors at the window base).
    let id = lab.id();
    let mut header = RawHeader::new(OP_PUT, id, 1);
    header.payload_len = 16;
    let header_buf = lab.buf(&header.bytes())?;
    let key = lab.buf(b"k")?;
    let head = lab.head(RESPONSE_HEADER_SIZE)?;
    cases.push(Case {
        name: "payload segments overflowing",
        chain: vec![
            readable(&header_buf),
            readable(&key),
            raw(base, 0x8000_0000, false),
            raw(base, 0x8000_0010, false),
            writable(&head),
        ],
        head: Some(head),
        // Refused on the window check, before the header is read: no id to echo.
        id: None,
        keep: vec![header_buf, key],
        breaks_queue: false,
    });

    // Key descriptors outside the window, in several ways.
    for (name, addr, len) in [
        ("key past the window end", end - 8, 64u32),
        ("key address wrapping", u64::MAX - 7, 16),
        ("key below the window", base - 4096, 1),
        ("descriptor longer than the window", base, u32::MAX),
    ] {
        let id = lab.id();
        let header_buf = lab.buf(&RawHeader::new(OP_GET, id, len).bytes())?;
        let head = lab.head(RESPONSE_HEADER_SIZE)?;
        cases.push(Case {
            name,
            chain: vec![
                readable(&header_buf),
                raw(addr, len, false),
                writable(&head),
            ],
            head: Some(head),
            id: None,
            keep: vec![header_buf],
            breaks_queue: false,
        });
    }

    // An oversize key: 1025 bytes, well described.
    let id = lab.id();
    let header_buf = lab.buf(&RawHeader::new(OP_GET, id, 1025).bytes())?;
    let key = lab.buf(&[b'x'; 1025])?;
    let head = lab.head(RESPONSE_HEADER_SIZE)?;
    cases.push(Case {
        name: "oversize key",
        chain: vec![readable(&header_buf), readable(&key), writable(&head)],
        head: Some(head),
        id: Some(id),
        keep: vec![header_buf, key],
        breaks_queue: false,
    });

    // A zero-length key descriptor.
    let id = lab.id();
    let header_buf = lab.buf(&RawHeader::new(OP_DELETE, id, 1).bytes())?;
    let key = lab.buf(b"k")?;
    let head = lab.head(RESPONSE_HEADER_SIZE)?;
    cases.push(Case {
        name: "zero-length descriptor",
        chain: vec![
            readable(&header_buf),
            raw(key.gpa(), 0, false),
            writable(&head),
        ],
        head: Some(head),
        id: None,
        keep: vec![header_buf, key],
        breaks_queue: false,
    });

    // The key after the response head.
    let id = lab.id();
    let header_buf = lab.buf(&RawHeader::new(OP_DELETE, id, 1).bytes())?;
    let key = lab.buf(b"k")?;
    let head = lab.head(RESPONSE_HEADER_SIZE)?;
    cases.push(Case {
        name: "readable after writable",
        chain: vec![readable(&header_buf), writable(&head), readable(&key)],
        head: Some(head),
        id: Some(id),
        keep: vec![header_buf, key],
        breaks_queue: false,
    });

    // 40 descriptors: longer than any valid request.
    let id = lab.id();
    let mut header = RawHeader::new(OP_PUT, id, 1);
    header.payload_len = 38;
    let header_buf = lab.buf(&header.bytes())?;
    let key = lab.buf(b"k")?;
    let payload = lab.buf(&[1; 38])?;
    let head = lab.head(RESPONSE_HEADER_SIZE)?;
    let mut chain = vec![readable(&header_buf), readable(&key)];
    chain.extend((0..38).map(|i| raw(payload.gpa() + i, 1, false)));
    chain.push(writable(&head));
    cases.push(Case {
        name: "chain too long",
        chain,
        head: Some(head),
        id: Some(id),
        keep: vec![header_buf, key, payload],
        breaks_queue: true,
    });

    // A response head too small for a response header: nowhere to answer.
    let id = lab.id();
    let header_buf = lab.buf(&RawHeader::new(OP_DELETE, id, 1).bytes())?;
    let key = lab.buf(b"k")?;
    let mut small = lab.head(64)?;
    small.set_len(20);
    cases.push(Case {
        name: "response head too small",
        chain: vec![readable(&header_buf), readable(&key), writable(&small)],
        head: Some(small),
        id: Some(id),
        keep: vec![header_buf, key],
        breaks_queue: false,
    });

    // No writable descriptor at all.
    let id = lab.id();
    let header_buf = lab.buf(&RawHeader::new(OP_DELETE, id, 1).bytes())?;
    let key = lab.buf(b"k")?;
    cases.push(Case {
        name: "no response head",
        chain: vec![readable(&header_buf), readable(&key)],
        head: None,
        id: Some(id),
        keep: vec![header_buf, key],
        breaks_queue: false,
    });
    Ok(cases)
}

/// Sends one case; `ram` are guest-RAM buffers the chain points at, which must stay intact.
fn check(nexus: &mut Client, case: Case, ram: &[&RamTarget]) -> bool {
    // SAFETY: every writable descriptor inside the window points into the case's response
    // head (held in `case.head`, no reference alive during the call); the others lie
    // outside the window, where the device can reach nothing.
    let result = unsafe { nexus.request_raw(&case.chain) };
    let ram_ok = ram.iter().all(|target| target.untouched());
    let verdict: Result<String, String> = match result {
        Err(Error::QueueBroken) if case.breaks_queue => {
            Ok(String::from("the queue was broken and the device reset"))
        }
        Err(error) => Err(format!("driver error: {}", error.report())),
        Ok(_) if case.breaks_queue => Err(String::from("answered a chain that breaks the ring")),
        Ok(0) => Ok(String::from("used length 0")),
        Ok(used) => match case.head.as_ref() {
            None => Err(format!("used length {used} with no response head")),
            Some(head) if head.len() < RESPONSE_HEADER_SIZE => {
                Err(format!("used length {used} for a {}-byte head", head.len()))
            }
            Some(head) => match ResponseHeader::decode(&head[..RESPONSE_HEADER_SIZE]) {
                Err(error) => Err(format!("used length {used}, undecodable response: {error}")),
                Ok(response) => {
                    let refused = matches!(
                        response.status,
                        Status::InvalidRequest | Status::UnsupportedVersion
                    );
                    let id_ok = response.id == case.id.unwrap_or(response.id)
                        || (case.id.is_none() && response.id == 0);
                    if refused && id_ok {
                        Ok(format!("{}, id {:#x}", response.status, response.id))
                    } else {
                        Err(format!(
                            "status {} id {:#x} (expected a refusal echoing id {:x?})",
                            response.status, response.id, case.id
                        ))
                    }
                }
            },
        },
    };
    let verdict = match (verdict, ram_ok) {
        (Ok(how), true) => Ok(how),
        (Ok(how), false) => Err(format!("{how}, but guest RAM was written")),
        (Err(why), _) => Err(why),
    };
    drop(case.keep);
    match verdict {
        Ok(how) => {
            println!("hostile: {}: ok ({how})", case.name);
            true
        }
        Err(why) => {
            println!("hostile: {}: FAILED ({why})", case.name);
            false
        }
    }
}

/// Cases that point the device at guest RAM: the header, the response head, the response
/// payload buffer.
fn ram_cases(nexus: &mut Client, lab_id: &mut u64) -> Result<Vec<bool>, Error> {
    let mut results = Vec::new();

    // The whole request header in guest RAM.
    *lab_id += 1;
    let header = RawHeader::new(OP_DELETE, *lab_id, 1).bytes();
    let header_ram = RamTarget {
        bytes: header.to_vec(),
    };
    let key = nexus.copy_to_window(b"k")?;
    let mut head = nexus.alloc(RESPONSE_HEADER_SIZE)?;
    head.full_mut()[..RESPONSE_HEADER_SIZE].fill(UNTOUCHED);
    head.set_len(RESPONSE_HEADER_SIZE);
    let case = Case {
        name: "header in guest RAM",
        chain: vec![
            ChainDescriptor::readable(header_ram.segment()),
            readable(&key),
            writable(&head),
        ],
        head: Some(head),
        id: None,
        keep: vec![key],
        breaks_queue: false,
    };
    results.push(check(nexus, case, &[]));

    // A GET whose response head is in guest RAM (and its payload buffer too).
    *lab_id += 1;
    let header = nexus.copy_to_window(&RawHeader::new(OP_GET, *lab_id, 1).bytes())?;
    let key = nexus.copy_to_window(b"k")?;
    let head_ram = RamTarget::new(RESPONSE_HEADER_SIZE + 64);
    let payload_ram = RamTarget::new(4096);
    let case = Case {
        name: "response head in guest RAM",
        chain: vec![
            readable(&header),
            readable(&key),
            ChainDescriptor::writable(head_ram.segment()),
            ChainDescriptor::writable(payload_ram.segment()),
        ],
        head: None,
        id: Some(*lab_id),
        keep: vec![header, key],
        breaks_queue: false,
    };
    results.push(check(nexus, case, &[&head_ram, &payload_ram]));

    // A GET with its head in the window but its payload buffer in guest RAM.
    *lab_id += 1;
    let header = nexus.copy_to_window(&RawHeader::new(OP_GET, *lab_id, 1).bytes())?;
    let key = nexus.copy_to_window(b"k")?;
    let mut head = nexus.alloc(RESPONSE_HEADER_SIZE)?;
    head.full_mut()[..RESPONSE_HEADER_SIZE].fill(UNTOUCHED);
    head.set_len(RESPONSE_HEADER_SIZE);
    let payload_ram = RamTarget::new(4096);
    let case = Case {
        name: "response buffer in guest RAM",
        chain: vec![
            readable(&header),
            readable(&key),
            writable(&head),
            ChainDescriptor::writable(payload_ram.segment()),
        ],
        head: Some(head),
        id: None,
        keep: vec![header, key],
        breaks_queue: false,
    };
    results.push(check(nexus, case, &[&payload_ram]));
    Ok(results)
}

fn main(boot: &BootInfo) -> u32 {
    let mut nexus = match nexus_guest::rt::nexus() {
        Ok(nexus) => nexus,
        Err(error) => {
            println!("hostile: {}", error.report());
            return 1;
        }
    };
    let window = nexus.window_range();
    let mut results: Vec<bool> = Vec::new();
    let mut next_id = 0x4057_0000;

    let cases = {
        let mut lab = Lab {
            nexus: &nexus,
            next_id,
        };
        let cases = window_cases(&mut lab, window);
        next_id = lab.next_id;
        cases
    };
    match cases {
        Ok(cases) => {
            for case in cases {
                results.push(check(&mut nexus, case, &[]));
            }
        }
        Err(error) => {
            println!("hostile: building the cases: {}", error.report());
            return 1;
        }
    }
    match ram_cases(&mut nexus, &mut next_id) {
        Ok(more) => results.extend(more),
        Err(error) => {
            println!("hostile: building the RAM cases: {}", error.report());
            return 1;
        }
    }

    // A well-formed request still works.
    let well_formed = nexus
        .log(
            LogLevel::Info,
            "hostile: every malformed request was answered",
        )
        .and_then(|()| nexus.flush());
    match &well_formed {
        Ok(()) => println!("hostile: well-formed LOG and FLUSH: ok"),
        Err(error) => println!(
            "hostile: well-formed LOG and FLUSH: FAILED ({})",
            error.report()
        ),
    }
    results.push(well_formed.is_ok());
    if let Some(key) = boot.arg(0) {
        let round_trip = nexus
            .put(key, b"hostile was here")
            .and_then(|()| nexus.get(key))
            .map(|data| &data[..] == b"hostile was here");
        match round_trip {
            Ok(true) => println!("hostile: well-formed PUT and GET of {key}: ok"),
            Ok(false) => {
                println!("hostile: well-formed PUT and GET of {key}: FAILED (wrong bytes)")
            }
            Err(ref error) => {
                println!(
                    "hostile: well-formed PUT and GET of {key}: FAILED ({})",
                    error.report()
                )
            }
        }
        results.push(matches!(round_trip, Ok(true)));
    }

    let passed = results.iter().filter(|&&ok| ok).count();
    println!("hostile: {passed}/{} cases behaved", results.len());
    let stats = nexus.device().stats();
    println!(
        "hostile: {} requests, {} doorbells, {} WAIT reads, {} resets",
        stats.submitted, stats.notifies, stats.wait_reads, stats.resets
    );
    if passed == results.len() { 0 } else { 1 }
}
