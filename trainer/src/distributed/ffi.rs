//! The C interface of `csrc/c10d.cpp` (libtorch's torch.distributed), bound by
//! [`super::process_group`]. Every function reports a C++ exception as a `malloc`'d message in
//! `*err` (freed with `st_free_string`) and returns -1 or a null pointer.

use std::os::raw::{c_char, c_int};

use torch_sys::C_tensor;

/// Opaque `c10d::Store` handle.
#[repr(C)]
pub struct StStore {
    _private: [u8; 0],
}

/// Opaque `c10d::Backend` handle.
#[repr(C)]
pub struct StGroup {
    _private: [u8; 0],
}

extern "C" {
    pub fn st_free_string(s: *mut c_char);
    pub fn st_has_nccl() -> c_int;
    pub fn st_store_new(
        host: *const c_char,
        port: c_int,
        is_server: c_int,
        world: c_int,
        join: c_int,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut StStore;
    pub fn st_store_free(s: *mut StStore);
    pub fn st_store_add(
        s: *mut StStore,
        key: *const c_char,
        delta: i64,
        value: *mut i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn st_store_set(
        s: *mut StStore,
        key: *const c_char,
        data: *const u8,
        len: usize,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn st_store_try_get(
        s: *mut StStore,
        key: *const c_char,
        data: *mut *mut u8,
        len: *mut usize,
        found: *mut c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn st_group_new(
        s: *mut StStore,
        backend: c_int,
        rank: c_int,
        world: c_int,
        hostname: *const c_char,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut StGroup;
    pub fn st_group_free(g: *mut StGroup);
    pub fn st_all_reduce(
        g: *mut StGroup,
        t: *mut C_tensor,
        op: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn st_broadcast(
        g: *mut StGroup,
        t: *mut C_tensor,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn st_all_gather(
        g: *mut StGroup,
        output: *mut C_tensor,
        input: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn st_reduce_scatter(
        g: *mut StGroup,
        output: *mut C_tensor,
        input: *mut C_tensor,
        op: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn st_barrier(g: *mut StGroup, err: *mut *mut c_char) -> c_int;
}
