// The package's init routine calls the one that extendr generates, which
// registers the Rust functions with R.
void R_init_kiln_extendr(void *dll);

void R_init_kiln(void *dll) {
    R_init_kiln_extendr(dll);
}
