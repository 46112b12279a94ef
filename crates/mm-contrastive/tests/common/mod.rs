//! Helpers of the loss tests: f64 rows to unit vectors and to burn tensors.

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
