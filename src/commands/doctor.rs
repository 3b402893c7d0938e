//! `imgcot-train doctor`: what libtorch this binary runs on.
use anyhow::Result;

pub fn run() -> Result<()> {
    let v = tch::utils::version_cudnn();
    println!("imgcot {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch: {} (tch 0.24 expects 2.11.0)", libtorch_version());
    println!("cuda available: {}", tch::Cuda::is_available());
    println!(
        "cudnn available: {} (version {v})",
        tch::Cuda::cudnn_is_available()
    );
    let n = tch::Cuda::device_count();
    println!("gpus: {n}");
    for i in 0..n {
        println!("  cuda:{i}");
    }
    println!(
        "default dtype: {:?}",
        tch::Tensor::zeros([1], tch::kind::FLOAT_CPU).kind()
    );
    println!("cpu threads: {}", tch::get_num_threads());
    println!(
        "cpu native bf16: {} (dtype auto runs on the CPU in {:?})",
        crate::util::cpu_has_native_bf16(),
        crate::util::parse_dtype_on("auto", tch::Device::Cpu)?
    );
    Ok(())
}

/// The version of the libtorch the binary is linked against, from the Python package that
/// supplied it at build time (torch-sys checks it is exactly 2.11.0).
fn libtorch_version() -> String {
    option_env!("IMGCOT_LIBTORCH_VERSION")
        .unwrap_or("2.11.0")
        .to_string()
}
