//! All integration tests in one binary: every test binary links LLVM statically, so
//! fewer binaries means much faster builds.

mod common;

mod activations;
mod attention;
mod byte_host_kernels;
mod byte_kernels;
mod checkpoint;
mod cli;
mod config;
mod custom_method;
mod ct_variants;
mod engine;
mod errors;
mod float_models;
mod gptq_variants;
mod hardening;
mod int_host_kernels;
mod kernels;
mod layer_rules;
mod llmc_export;
mod online_quant;
mod quant_errors;
mod quant_repr;
mod quantized_models;
mod server;
mod tokenizer;
mod torchao_variants;
