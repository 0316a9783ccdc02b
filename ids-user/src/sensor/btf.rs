//! Reads the running kernel's BTF (`/sys/kernel/btf/vmlinux`) to find the offsets of the structure
//! members the programs follow. Only what is needed is parsed: types, names, struct members and
//! function prototypes.
use std::collections::HashMap;

use ids_common::KernelOffsets;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("BTF data is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no {0}")]
    Missing(String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// Referenced type (ptr, typedef, func, modifiers).
    type_id: u32,
    members: Vec<Member>,
}

pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<(String, u32), u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read { path: path.into(), source })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic (only little-endian BTF is read)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of range"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of range"))?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type { name: 0, kind: 0, type_id: 0, members: vec![] }];
        let mut at = 0;
        while at < types_data.len() {
            let name = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let size_or_type = u32_at(types_data, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(types_data, m + 8)?;
                        members.push(Member {
                            name: u32_at(types_data, m)?,
                            type_id: u32_at(types_data, m + 4)?,
                            bit_offset: if kind_flag { offset & 0xff_ffff } else { offset },
                        });
                    }
                    at += vlen * 12;
                }
                KIND_ENUM => at += vlen * 8,
                KIND_FUNC_PROTO => {
                    for i in 0..vlen {
                        let m = at + i * 8;
                        members.push(Member {
                            name: u32_at(types_data, m)?,
                            type_id: u32_at(types_data, m + 4)?,
                            bit_offset: 0,
                        });
                    }
                    at += vlen * 8;
                }
                KIND_DATASEC | KIND_ENUM64 => at += vlen * 12,
                _ => {}
            }
            types.push(Type { name, kind, type_id: size_or_type, members });
        }
        let mut btf = Self { types, strings, by_name: HashMap::new() };
        for (id, t) in btf.types.iter().enumerate() {
            if t.name != 0 && matches!(t.kind, KIND_STRUCT | KIND_UNION | KIND_FUNC) {
                let name = btf.name(t.name).to_string();
                btf.by_name.entry((name, t.kind)).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Skips typedefs and modifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = t.type_id,
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `member` in `t`, looking through anonymous structs and unions.
    fn find_member(&self, t: &Type, member: &str) -> Option<(u32, u32)> {
        for m in &t.members {
            if m.name == 0 {
                if let Some(inner) = self.resolve(m.type_id)
                    && let Some((bits, ty)) = self.find_member(inner, member)
                {
                    return Some((m.bit_offset + bits, ty));
                }
            } else if self.name(m.name) == member {
                return Some((m.bit_offset, m.type_id));
            }
        }
        None
    }

    /// Offset in bytes of a dotted member path such as `f_path.dentry` in `struct file`.
    pub fn offset_of(&self, structure: &str, path: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("struct {structure} member {path}"));
        let id = *self.by_name.get(&(structure.to_string(), KIND_STRUCT)).ok_or_else(missing)?;
        let mut t = self.resolve(id).ok_or_else(missing)?;
        let mut bits = 0;
        for part in path.split('.') {
            let (off, ty) = self.find_member(t, part).ok_or_else(missing)?;
            bits += off;
            t = self.resolve(ty).ok_or_else(missing)?;
        }
        Ok(bits / 8)
    }

    /// Index of the parameter named `param` of kernel function `func` (e.g. `bpf_lsm_inode_setattr`).
    pub fn param_index(&self, func: &str, param: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("function {func} parameter {param}"));
        let id = *self.by_name.get(&(func.to_string(), KIND_FUNC)).ok_or_else(missing)?;
        let proto = self.types.get(self.types[id as usize].type_id as usize).ok_or_else(missing)?;
        proto.members.iter().position(|m| self.name(m.name) == param).map(|i| i as u32).ok_or_else(missing)
    }

    /// The offsets of `KernelOffsets`, all found or an error naming the first missing one.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let path_dentry = self.offset_of("path", "dentry")?;
        Ok(KernelOffsets {
            task_real_parent: self.offset_of("task_struct", "real_parent")?,
            task_tgid: self.offset_of("task_struct", "tgid")?,
            task_files: self.offset_of("task_struct", "files")?,
            task_fs: self.offset_of("task_struct", "fs")?,
            task_mm: self.offset_of("task_struct", "mm")?,
            files_fdt: self.offset_of("files_struct", "fdt")?,
            fdt_fd: self.offset_of("fdtable", "fd")?,
            fdt_max_fds: self.offset_of("fdtable", "max_fds")?,
            fs_pwd_dentry: self.offset_of("fs_struct", "pwd")? + path_dentry,
            file_dentry: self.offset_of("file", "f_path")? + path_dentry,
            file_inode: self.offset_of("file", "f_inode")?,
            file_mode: self.offset_of("file", "f_mode")?,
            file_flags: self.offset_of("file", "f_flags")?,
            file_private_data: self.offset_of("file", "private_data")?,
            dentry_parent: self.offset_of("dentry", "d_parent")?,
            dentry_inode: self.offset_of("dentry", "d_inode")?,
            dentry_name: self.offset_of("dentry", "d_name.name")?,
            dentry_sb: self.offset_of("dentry", "d_sb")?,
            inode_ino: self.offset_of("inode", "i_ino")?,
            inode_mode: self.offset_of("inode", "i_mode")?,
            inode_sb: self.offset_of("inode", "i_sb")?,
            sb_dev: self.offset_of("super_block", "s_dev")?,
            mm_arg_start: self.offset_of("mm_struct", "arg_start")?,
            mm_arg_end: self.offset_of("mm_struct", "arg_end")?,
            socket_type: self.offset_of("socket", "type")?,
            iattr_valid: self.offset_of("iattr", "ia_valid")?,
            // Only LSM programs use it; kernels without BPF LSM may lack the function.
            setattr_dentry_arg: self.param_index("bpf_lsm_inode_setattr", "dentry").unwrap_or(0),
            binprm_filename: self.offset_of("linux_binprm", "filename")?,
            binprm_p: self.offset_of("linux_binprm", "p")?,
            binprm_argc: self.offset_of("linux_binprm", "argc")?,
            task_pid: self.offset_of("task_struct", "pid")?,
            // Only kernels built with audit have them; without, the login is reported unknown.
            task_loginuid: self.offset_of("task_struct", "loginuid").unwrap_or(0),
            task_sessionid: self.offset_of("task_struct", "sessionid").unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_the_running_kernel_are_found() {
        let btf = Btf::from_sys_fs().expect("this kernel has BTF at /sys/kernel/btf/vmlinux");
        let offsets = btf.kernel_offsets().unwrap();
        // d_name.name sits behind the 8-byte hash/len word of struct qstr.
        assert_eq!(offsets.dentry_name, btf.offset_of("dentry", "d_name").unwrap() + 8);
        assert_ne!(offsets.task_files, 0);
        assert!(btf.offset_of("task_struct", "no_such_member").is_err());
    }

    #[test]
    fn truncated_btf_is_an_error_not_a_panic() {
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0]).is_err());
        assert!(Btf::parse(b"not btf at all, not btf at all").is_err());
    }
}
