//! The one door from model code to mm-kernels: each op runs a fused Flex kernel or burn's
//! composite op, chosen by the tensor's device and dtype inside mm-kernels. Models call these,
//! never a kernel, so a new kernel (or a new backend's) changes this file and nothing above.

pub use mm_kernels::{attention, layer_norm, linear, linear_layer, quick_gelu};
