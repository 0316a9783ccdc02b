//! The sensor's eBPF programs. One module per hook family; maps and the kernel-layout helpers in
//! their own modules. Each program is a thin entry that calls `try_<name>` and turns an error into
//! the safe verdict (0, XDP_PASS).
#![no_std]
#![no_main]
// Map keys and values go by reference: passed by value, LLVM copies them onto the 512-byte BPF
// stack (a FileEvent in file_sys_enter exceeded it).
#![allow(clippy::needless_borrows_for_generic_args)]

mod arch;
mod exec;
mod file;
mod floor;
mod guard;
mod kernel;
mod maps;
mod module;
mod net;
mod process;
mod syscall;
mod tc;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
