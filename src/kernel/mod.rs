//! The kernel layer: the eBPF gate, its pinned maps, and sockets destroyed from outside.

pub mod abi;
pub mod destroy;
pub mod gate;
