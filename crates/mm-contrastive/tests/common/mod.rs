//! Helpers of the loss tests: f64 rows to unit vectors and to burn tensors, and back.
#![allow(dead_code)] // Each test binary uses some of them.

use burn::tensor::{Device, Tensor, TensorData};

/// `v / |v|`, in f64.
pub fn unit(v: &[f64; 3]) -> [f64; 3] {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.map(|x| x / n)
}

/// Rows of three as an f32 tensor `[rows, 3]`.
pub fn tensor(rows: &[[f64; 3]], device: &Device) -> Tensor<2> {
    let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), 3]), device)
}

/// A tensor's values as f64.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}
