//! Links the micro-guest binaries as the micro-guest ABI requires: a static, non-PIE
//! `ET_EXEC` at `IMAGE_BASE` (0x10_0000), without the C runtime, laid out by `link.ld`.

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let script = manifest_dir.join("link.ld");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    let args = [
        // No crt*.o, no libc, no libgcc: the guest is self-contained.
        "-nostdlib".to_owned(),
        // A static ET_EXEC at a fixed address; rustc asks for `-pie` on this target, and the
        // last of `-pie`/`-no-pie` wins.
        "-static".to_owned(),
        "-no-pie".to_owned(),
        "-Wl,--build-id=none".to_owned(),
        "-Wl,-z,max-page-size=4096".to_owned(),
        "-Wl,-z,norelro".to_owned(),
        format!("-T{}", script.display()),
    ];
    for arg in args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
