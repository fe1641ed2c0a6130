//! Build script: find the libtorch that `torch-sys` links against, embed an rpath to it so the
//! binary runs without `LD_LIBRARY_PATH`, and keep `libtorch_cuda` linked so that CUDA works
//! when the machine has a GPU (the linker's `--as-needed` would otherwise drop it, and
//! `tch::Cuda::is_available()` would be false even on a GPU box).
//!
//! libtorch is found the same way `torch-sys` finds it: `LIBTORCH` if set, otherwise the
//! `torch` package of the `python3` on `PATH` when `LIBTORCH_USE_PYTORCH=1` (our scripts put the
//! project venv first on `PATH`).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn libtorch_lib_dir() -> Option<PathBuf> {
    if let Ok(dir) = env::var("LIBTORCH_LIB") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    if let Ok(dir) = env::var("LIBTORCH") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    let python = env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(python)
        .args([
            "-c",
            "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The operator counter (src/ocr/opcount): one C++ file against libtorch's headers, which sit
/// beside its `lib` folder (`include/`), with the C++ ABI libtorch 2.x is built with.
fn compile_opcount(lib: &std::path::Path) {
    let include = lib.parent().map(|p| p.join("include")).unwrap_or_default();
    if !include.join("ATen/record_function.h").is_file() {
        panic!(
            "dsocr: libtorch's headers are not in {} (LIBTORCH must hold lib/ and include/)",
            include.display()
        );
    }
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/ocr/opcount/opcount.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("NDEBUG", None)
        .warnings(false)
        .compile("dsocr_opcount");
}

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=PYTHON_SYS_EXECUTABLE");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/ocr/opcount/opcount.cpp");

    let Some(lib) = libtorch_lib_dir() else {
        println!(
            "cargo:warning=dsocr: libtorch not found (set LIBTORCH, or use scripts/env.sh); no rpath embedded"
        );
        return;
    };
    compile_opcount(&lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-env=DSOCR_LIBTORCH_LIB={}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
