//! CUDA C++ for every kernel variant, generated through CubeCL's C++ compiler with no GPU,
//! driver or toolkit present, so a kernel that stops compiling fails CI.
