// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Gives the shared object its versioned soname, `libnexus.so.0`: programs linked against it
//! (as `-lnexus`) record that name, whatever file name cargo gave the library.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnexus.so.0");
    }
}
