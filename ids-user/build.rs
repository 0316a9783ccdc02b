//! Builds the eBPF programs (`ids-ebpf`) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker; the object lands in OUT_DIR/ids and is embedded in the binary.
fn main() -> aya_build::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../ids-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "ids-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
