//! What the programs take from the machine's ABI: syscall numbers, the saved-register layout and the
//! tracepoint record layouts, which differ between architectures. The object is built for x86_64
//! hosts; another architecture would get a sibling module with the same names.
pub mod x86_64;
