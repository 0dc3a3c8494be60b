//! Links the micro-guest binaries as the micro-guest ABI requires: a static, non-PIE
//! `ET_EXEC` at `IMAGE_BASE` (0x10_0000), without the C runtime, laid out by the linker
//! script `nexus-guest` carries (feature `build`).

fn main() {
    nexus_guest::build::link_micro_guest();
}
