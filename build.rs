// `cargo test` links the test binaries against libpython; the rpath makes the
// loader pick the interpreter PyO3 was configured for (pyenv's), not the
// distribution's libpython that sits in the loader cache. A wheel's
// extension gets neither: maturin sets PYO3_BUILD_EXTENSION_MODULE, under
// which PyO3 links no libpython and this adds no rpath (scripts/build-wheels.sh
// checks the built extension with readelf and auditwheel). `use_pyo3_cfgs`
// gives this crate PyO3's cfgs (`Py_GIL_DISABLED` on a free-threaded
// interpreter). Without the `python` feature (the pure core) there is
// nothing to link.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(rsalloc_pin_access)");
    // PyO3's reference-pool switches (.cargo/config.toml): the CPython
    // fence (src/py/cpython/) compiles the tricks that skip PyO3's
    // trampoline only when both are set, so a build whose RUSTFLAGS drop
    // them falls back to PyO3's routes instead of changing behaviour.
    println!("cargo::rustc-check-cfg=cfg(pyo3_disable_reference_pool)");
    println!("cargo::rustc-check-cfg=cfg(pyo3_leak_on_drop_without_reference_pool)");
    if std::env::var_os("CARGO_FEATURE_PYTHON").is_some() {
        pyo3_build_config::use_pyo3_cfgs();
        pyo3_build_config::add_libpython_rpath_link_args();
    }
}
