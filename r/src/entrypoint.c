// The package's init routine calls the Rust one (src/rust/src/native.rs),
// which registers extendr's routines and the hot-path routine kiln_call.
void R_init_kiln_native(void *dll);

void R_init_kiln(void *dll) {
    R_init_kiln_native(dll);
}
