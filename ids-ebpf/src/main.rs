//! The sensor's eBPF programs. One module per hook family; maps and the kernel-layout helpers in
//! their own modules. Each program is a thin entry that calls `try_<name>` and turns an error into
//! the safe verdict (0, XDP_PASS).
#![no_std]
#![no_main]

mod arch;
mod exec;
mod file;
mod kernel;
mod maps;
mod module;
mod net;
mod syscall;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
