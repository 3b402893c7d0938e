// Make the binary really link libtorch_cuda (when present) and find libtorch at run time without
// LD_LIBRARY_PATH. Without `--no-as-needed` the linker drops libtorch_cuda.so because no symbol of it
// is referenced directly, and `tch::Cuda::is_available()` then reports false even on a GPU machine.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        let cuda = std::path::Path::new(&lib).join("libtorch_cuda.so");
        if cuda.exists() {
            println!("cargo:rustc-link-arg=-ltorch_cuda");
        }
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
