//! Micro-guest: brings the network up and exits (a link check of the `net` feature).
//!
//! With a virtio-net device and `net.ip=…` among its arguments: sets the device up (queues,
//! receive buffers posted), starts the TCP/IP stack, polls it once, prints
//! `netcheck: up <mac> mtu <mtu> <address>/<prefix>` and exits 0. Without a device: prints
//! `netcheck: no network device` and exits 0. Any other failure is printed; exit code 1.

#![no_std]
#![no_main]

use nexus_guest::net::NetError;
use nexus_guest::{BootInfo, println};

nexus_guest::entry!(main);

fn main(_boot: &BootInfo) -> u32 {
    let (net, config) = match nexus_guest::rt::net() {
        Ok(up) => up,
        Err(NetError::NoDevice) => {
            println!("netcheck: no network device");
            return 0;
        }
        Err(error) => {
            println!("netcheck: {error}");
            return 1;
        }
    };
    if let Err(error) = net.poll() {
        println!("netcheck: poll: {error}");
        return 1;
    }
    let info = net.with(|stack| stack.link().info());
    let m = info.mac;
    println!(
        "netcheck: up {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} mtu {} {}/{}",
        m[0], m[1], m[2], m[3], m[4], m[5], info.mtu, config.net.address, config.net.prefix_len
    );
    0
}
