//! The kernel command line's nexus-io parameters: `nexus.io=ADDR,SIZE` (the device's register
//! block) and `nexus.window=ADDR,SIZE` (the I/O window), which `nexus-vmm run --kernel
//! --backend` appends. Addresses and sizes are `0x`-prefixed hexadecimal or decimal.
//!
//! A parser of text the VMM wrote, but checked as if it were hostile: no `unsafe`, every
//! number range-checked, a parameter given twice refused.

use alloc::string::{String, ToString};

/// The command-line parameter naming the device's register block.
pub const IO_PARAM: &str = "nexus.io";
/// The command-line parameter naming the I/O window.
pub const WINDOW_PARAM: &str = "nexus.window";

/// A physical address range from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysRange {
    /// Physical base address.
    pub addr: u64,
    /// Size in bytes (never 0; `addr + size` does not overflow).
    pub size: u64,
}

/// Where the nexus-io device and its window are, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NexusParams {
    /// The register block (`nexus.io=`).
    pub io: PhysRange,
    /// The I/O window (`nexus.window=`).
    pub window: PhysRange,
}

/// Why the command line did not say where the device is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// The parameter is not on the command line (the VM was started without a backend).
    #[error("The kernel command line has no {0}= (was the VM started with a backend?)")]
    Missing(&'static str),
    /// The parameter is on the command line more than once.
    #[error("The kernel command line has {0}= more than once")]
    Duplicate(&'static str),
    /// The value is not `ADDR,SIZE` of two numbers.
    #[error("The kernel command line's {param}={value:?} is not ADDR,SIZE")]
    Malformed {
        /// The parameter.
        param: &'static str,
        /// Its value.
        value: String,
    },
    /// The range is empty or runs past the end of the address space.
    #[error("The kernel command line's {param}= range is empty or wraps around")]
    BadRange {
        /// The parameter.
        param: &'static str,
    },
}

/// A number: `0x`/`0X` hexadecimal or decimal, nothing else (no sign, no suffix).
fn number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
        None => None,
    }
}

/// `ADDR,SIZE` of `param`.
fn range(param: &'static str, value: &str) -> Result<PhysRange, CmdlineError> {
    let malformed = || CmdlineError::Malformed {
        param,
        value: value.to_string(),
    };
    let (addr, size) = value.split_once(',').ok_or_else(malformed)?;
    let (addr, size) = (
        number(addr).ok_or_else(malformed)?,
        number(size).ok_or_else(malformed)?,
    );
    if size == 0 || addr.checked_add(size).is_none() {
        return Err(CmdlineError::BadRange { param });
    }
    Ok(PhysRange { addr, size })
}

/// The nexus-io parameters of `cmdline` (the text of `/proc/cmdline`). Every other word is
/// ignored.
pub fn parse(cmdline: &str) -> Result<NexusParams, CmdlineError> {
    let mut io = None;
    let mut window = None;
    for word in cmdline.split_ascii_whitespace() {
        let Some((name, value)) = word.split_once('=') else {
            continue;
        };
        let (param, slot) = match name {
            IO_PARAM => (IO_PARAM, &mut io),
            WINDOW_PARAM => (WINDOW_PARAM, &mut window),
            _ => continue,
        };
        if slot.is_some() {
            return Err(CmdlineError::Duplicate(param));
        }
        *slot = Some(range(param, value)?);
    }
    Ok(NexusParams {
        io: io.ok_or(CmdlineError::Missing(IO_PARAM))?,
        window: window.ok_or(CmdlineError::Missing(WINDOW_PARAM))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_both_ranges_among_other_words() {
        let params = parse(
            "console=ttyS0 reboot=k panic=1 nexus.io=0xd0000000,0x1000 \
             nexus.window=3221225472,0x1000000 quiet\n",
        )
        .unwrap();
        assert_eq!(
            params,
            NexusParams {
                io: PhysRange {
                    addr: 0xD000_0000,
                    size: 0x1000
                },
                window: PhysRange {
                    addr: 0xC000_0000,
                    size: 16 << 20
                },
            }
        );
        // Upper-case hex digits and prefix; either order.
        let params = parse("nexus.window=0XC0000000,0X10000 nexus.io=0xD0000000,4096").unwrap();
        assert_eq!(params.io.size, 4096);
        assert_eq!(params.window.addr, 0xC000_0000);
    }

    #[test]
    fn a_missing_parameter_is_named() {
        assert_eq!(parse(""), Err(CmdlineError::Missing(IO_PARAM)));
        assert_eq!(
            parse("nexus.io=0x1000,0x1000"),
            Err(CmdlineError::Missing(WINDOW_PARAM))
        );
        assert_eq!(
            parse("nexus.window=0x1000,0x1000"),
            Err(CmdlineError::Missing(IO_PARAM))
        );
        // Look-alikes are not the parameters.
        assert_eq!(
            parse("xnexus.io=1,1 nexus.iox=1,1 nexus.io nexus.window=1,1"),
            Err(CmdlineError::Missing(IO_PARAM))
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for value in [
            "",
            ",",
            "0x1000",
            "0x1000,",
            ",0x1000",
            "0x,0x1000",
            "0x1000,0x",
            "0x1000,0x1000,0x1000",
            "-1,4096",
            "+1,4096",
            "0x1000,4k",
            "0xg000,0x1000",
            " 0x1000,0x1000",
            "0x10000000000000000,0x1000",
            "18446744073709551616,1",
            "0x1000;0x1000",
            "١٢,3",
        ] {
            let line = alloc::format!("nexus.io={value} nexus.window=0x1000,0x1000");
            assert!(
                matches!(
                    parse(&line),
                    Err(CmdlineError::Malformed {
                        param: IO_PARAM,
                        ..
                    })
                ),
                "{value:?}: {:?}",
                parse(&line)
            );
        }
    }

    #[test]
    fn empty_and_wrapping_ranges_are_refused() {
        assert_eq!(
            parse("nexus.io=0x1000,0 nexus.window=0x1000,0x1000"),
            Err(CmdlineError::BadRange { param: IO_PARAM })
        );
        assert_eq!(
            parse("nexus.io=0x1000,0x1000 nexus.window=0xffffffffffff0000,0x10000"),
            Err(CmdlineError::BadRange {
                param: WINDOW_PARAM
            })
        );
        // Up to the very end is fine.
        assert!(parse("nexus.io=0x1000,0x1000 nexus.window=0xffffffffffff0000,0xffff").is_ok());
    }

    #[test]
    fn a_parameter_given_twice_is_refused() {
        assert_eq!(
            parse("nexus.io=0x1000,0x1000 nexus.window=0x1,0x1 nexus.io=0x2000,0x1000"),
            Err(CmdlineError::Duplicate(IO_PARAM))
        );
    }
}
