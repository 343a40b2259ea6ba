//! Build script. Without the `cuda` feature it does nothing: the CPU build needs only cargo.
//!
//! With `--features cuda` it compiles every `kernels/*.cu` with nvcc (-O3) into a fatbin holding
//! SASS for each target architecture (default sm_80 and sm_90) plus PTX for the newest one, and
//! embeds the fatbins as byte constants (no runtime compilation). It also runs bindgen on
//! `kernels/dpsgd.h`, the one header whose structs and constants the kernels and Rust share.
//!
//! Environment:
//! - `NVCC` or `CUDA_HOME` (`$CUDA_HOME/bin/nvcc`) or `nvcc` on PATH — see
//!   `scripts/install-cuda-toolchain`.
//! - `DPSGD_CUDA_ARCHS` (or `CUDA_COMPUTE_CAP`): comma-separated compute capabilities, e.g.
//!   `80,90`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const HINT: &str = "the `cuda` feature needs nvcc 13.0: run `scripts/install-cuda-toolchain` \
         and export what it prints (CUDA_HOME and PATH), or set NVCC to the nvcc binary";

    fn fail(msg: &str) -> ! {
        eprintln!("\nerror: {msg}\n{HINT}\n");
        panic!("{msg}; {HINT}");
    }

    fn find_nvcc() -> (PathBuf, Option<PathBuf>) {
        println!("cargo:rerun-if-env-changed=NVCC");
        println!("cargo:rerun-if-env-changed=CUDA_HOME");
        println!("cargo:rerun-if-env-changed=PATH");
        if let Ok(p) = std::env::var("NVCC") {
            let p = PathBuf::from(p);
            let home = p.parent().and_then(|b| b.parent()).map(Path::to_path_buf);
            return (p, home);
        }
        if let Ok(h) = std::env::var("CUDA_HOME") {
            let p = Path::new(&h).join("bin").join("nvcc");
            if p.exists() {
                return (p, Some(PathBuf::from(h)));
            }
        }
        let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cuda/nvidia/cu13");
        if local.join("bin/nvcc").exists() {
            return (local.join("bin/nvcc"), Some(local));
        }
        if let Ok(path) = std::env::var("PATH") {
            for dir in std::env::split_paths(&path) {
                let p = dir.join("nvcc");
                if p.exists() {
                    let home = dir.parent().map(Path::to_path_buf);
                    return (p, home);
                }
            }
        }
        fail("nvcc was not found (looked at $NVCC, $CUDA_HOME/bin, ./.cuda and PATH)");
    }

    fn archs() -> Vec<u32> {
        println!("cargo:rerun-if-env-changed=DPSGD_CUDA_ARCHS");
        println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
        let spec = std::env::var("DPSGD_CUDA_ARCHS")
            .or_else(|_| std::env::var("CUDA_COMPUTE_CAP"))
            .unwrap_or_else(|_| "80,90".to_string());
        let mut v: Vec<u32> = spec
            .split(',')
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim_start_matches("sm_").parse().unwrap_or_else(|_| {
                    fail(&format!("bad compute capability `{s}` in DPSGD_CUDA_ARCHS"))
                })
            })
            .collect();
        if v.is_empty() {
            fail("DPSGD_CUDA_ARCHS lists no architecture");
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn build() {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let kernels = manifest.join("kernels");
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        println!("cargo:rerun-if-changed=kernels");
        let (nvcc, home) = find_nvcc();
        let archs = archs();

        // bindgen on the shared header.
        let header = kernels.join("dpsgd.h");
        println!("cargo:rerun-if-changed={}", header.display());
        let bindings = bindgen::Builder::default()
            .header(header.to_string_lossy())
            .allowlist_type("Dpsgd.*")
            .allowlist_var("DPSGD_.*")
            .derive_default(true)
            .derive_debug(true)
            .layout_tests(true)
            .generate()
            .unwrap_or_else(|e| fail(&format!("bindgen failed on kernels/dpsgd.h: {e} (is libclang installed? apt-get install libclang-dev)")));
        bindings
            .write_to_file(out.join("ffi.rs"))
            .unwrap_or_else(|e| fail(&format!("writing ffi.rs: {e}")));

        let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
            .unwrap_or_else(|e| fail(&format!("reading kernels/: {e}")))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        sources.sort();
        let mut consts = String::new();
        for src in &sources {
            println!("cargo:rerun-if-changed={}", src.display());
            let stem = src.file_stem().unwrap().to_string_lossy().to_string();
            let fatbin = out.join(format!("{stem}.fatbin"));
            let mut cmd = Command::new(&nvcc);
            cmd.arg("--fatbin")
                .arg("-O3")
                .arg("-std=c++17")
                .arg("-lineinfo");
            cmd.arg("-I").arg(&kernels);
            if let Some(h) = &home {
                cmd.arg("-I").arg(h.join("include"));
            }
            for a in &archs {
                cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
            }
            let newest = archs.last().unwrap();
            cmd.arg(format!(
                "-gencode=arch=compute_{newest},code=compute_{newest}"
            ));
            cmd.arg("-o").arg(&fatbin).arg(src);
            let output = cmd
                .output()
                .unwrap_or_else(|e| fail(&format!("running {}: {e}", nvcc.display())));
            if !output.status.success() {
                fail(&format!(
                    "nvcc failed on {}:\n{}{}",
                    src.display(),
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            consts.push_str(&format!(
                "/// Fatbin of `kernels/{stem}.cu`.\npub const {}: &[u8] = include_bytes!({:?});\n",
                stem.to_uppercase(),
                fatbin.display().to_string()
            ));
        }
        std::fs::write(out.join("kernels.rs"), consts)
            .unwrap_or_else(|e| fail(&format!("writing kernels.rs: {e}")));
    }
}
