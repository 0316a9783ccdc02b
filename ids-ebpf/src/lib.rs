//! Empty library target: lets `ids-user`'s build script name this crate as a build dependency
//! so cargo rebuilds the programs when their sources change.
#![no_std]
