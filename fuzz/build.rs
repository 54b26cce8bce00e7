// The rsalloc crate links libpython (PyO3); the fuzz binaries never call it,
// but the loader must find pyenv's copy, as for `cargo test` (see ../build.rs).
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
