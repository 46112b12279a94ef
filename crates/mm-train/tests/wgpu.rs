//! The wgpu path against Flex from the same weights: both encoders and the loss (<= 1e-4),
//! every parameter's gradient (<= 1e-3), and AdamW training steps (losses <= 1e-3, weights
//! within a fraction of one step's size).
//!
//! Needs `--features wgpu` and a Vulkan/Metal/DX12 device; on machines without a GPU, lavapipe
//! (Debian's `mesa-vulkan-drivers`) provides one, and `.ci/run` installs it.
//!
//! `cargo test --release -p mm-train --features wgpu --test wgpu`
#![cfg(feature = "wgpu")]

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use mm_contrastive::clip_loss;
use mm_encoders::{ClipConfig, ClipModel};
use mm_train::Learner;

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let a = a.into_data().try_into_vec_as::<f32>().unwrap();
    let b = b.into_data().try_into_vec_as::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `model`'s weights in a model built on `device`, by the route a user takes (safetensors).
fn copy_onto(config: &ClipConfig, model: &ClipModel, device: &Device) -> ClipModel {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    mm_encoders::hf::save_weights(model, &path).unwrap();
    let mut copy = config.init(device);
    mm_encoders::hf::load_weights(&mut copy, &path).unwrap();
    copy
}

/// Every float parameter of `model` (module order) as host vectors; with `grads`, their
/// gradients instead (parameters without one are skipped).
fn flat(model: &ClipModel, grads: Option<&GradientsParams>) -> Vec<(String, Vec<f32>)> {
    struct Collect<'a> {
        grads: Option<&'a GradientsParams>,
        out: Vec<(String, Vec<f32>)>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let tensor = match self.grads {
                Some(grads) => match grads.get::<D>(param.id) {
                    Some(grad) => grad,
                    None => return,
                },
                None => param.val(),
            };
            let shape = format!("{:?}", tensor.dims());
            let values = tensor.into_data().try_into_vec_as::<f32>().unwrap();
            self.out.push((shape, values));
        }
    }
    let mut collect = Collect {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut collect);
    collect.out
}

/// Largest elementwise difference over all tensors, and the largest magnitude in `a`.
fn compare(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "different numbers of tensors");
    let mut diff: f32 = 0.0;
    let mut largest: f32 = 0.0;
    for ((shape_a, a), (shape_b, b)) in a.iter().zip(b) {
        assert_eq!(shape_a, shape_b);
        for (x, y) in a.iter().zip(b) {
            diff = diff.max((x - y).abs());
            largest = largest.max(x.abs());
        }
    }
    (diff, largest)
}

#[test]
fn wgpu_matches_flex() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(dir.path(), 3);
    config.optim.warmup_steps = 0;
    let model_config = config.model.as_ref().unwrap().resolve().unwrap();
    let batches = common::shapes_batches(&model_config, 3);
    let (flex, wgpu) = (Device::flex(), Device::wgpu(Default::default()));

    // Forward: encoders and loss.
    let cpu = model_config.init_seeded(&flex, 7);
    let gpu = copy_onto(&model_config, &cpu, &wgpu);
    let features = |model: &ClipModel, device: &Device| {
        (
            model.image_features(batches[0].pixels_tensor(device)),
            model.text_features(batches[0].input_ids_tensor(device)),
        )
    };
    let (ci, ct) = features(&cpu, &flex);
    let (gi, gt) = features(&gpu, &wgpu);
    let loss_cpu = clip_loss(ci.clone(), ct.clone(), cpu.logit_scale.val()).into_scalar::<f32>();
    let loss_gpu = clip_loss(gi.clone(), gt.clone(), gpu.logit_scale.val()).into_scalar::<f32>();
    let (image_err, text_err) = (
        max_diff(ci, gi.to_device(&flex)),
        max_diff(ct, gt.to_device(&flex)),
    );
    println!("forward: image {image_err:.2e}, text {text_err:.2e}, loss {loss_cpu} vs {loss_gpu}");
    assert!(image_err <= 1e-4 && text_err <= 1e-4);
    assert!((loss_cpu - loss_gpu).abs() <= 1e-4);

    // Gradients of every parameter.
    let mut on_cpu = Learner::from_model(&config, copy_onto(&model_config, &cpu, &flex.autodiff()));
    let mut on_gpu = Learner::from_model(
        &config,
        copy_onto(&model_config, &cpu, &wgpu.clone().autodiff()),
    );
    let (loss_cpu, grads_cpu) = on_cpu.gradients(&batches[..1]).unwrap();
    let (loss_gpu, grads_gpu) = on_gpu.gradients(&batches[..1]).unwrap();
    let grads_cpu = flat(&on_cpu.model, Some(&grads_cpu));
    let grads_gpu = flat(&on_gpu.model, Some(&grads_gpu));
    assert_eq!(grads_cpu.len(), flat(&on_cpu.model, None).len());
    let (grad_err, largest_grad) = compare(&grads_cpu, &grads_gpu);
    println!(
        "gradients ({} tensors): max diff {grad_err:.2e}, largest gradient {largest_grad:.2e}",
        grads_cpu.len()
    );
    assert!((loss_cpu - loss_gpu).abs() <= 1e-4);
    assert!(grad_err <= 1e-3);

    // Activation checkpointing recomputes on wgpu too, to the same gradients.
    assert!(mm_kernels::checkpointing_on(&wgpu));
    let mut checkpointed = config.clone();
    checkpointed.train.grad_checkpointing = true;
    let gpu_checkpointed = Learner::from_model(
        &checkpointed,
        copy_onto(&model_config, &cpu, &wgpu.autodiff()),
    );
    let (loss_ckpt, grads_ckpt) = gpu_checkpointed.gradients(&batches[..1]).unwrap();
    let (ckpt_err, _) = compare(
        &grads_gpu,
        &flat(&gpu_checkpointed.model, Some(&grads_ckpt)),
    );
    println!("wgpu, checkpointed blocks: loss {loss_ckpt} vs {loss_gpu}, gradients {ckpt_err:.2e}");
    assert!((loss_ckpt - loss_gpu).abs() <= 1e-5);
    assert!(ckpt_err <= 1e-4);

    // Three AdamW steps (with clipping and the LR schedule) on each backend.
    let before = flat(&on_cpu.model, None);
    for (step, batch) in batches.iter().enumerate() {
        let cpu_step = on_cpu.step(batch, step).unwrap();
        let gpu_step = on_gpu.step(batch, step).unwrap();
        println!("step {step}: loss {} vs {}", cpu_step.loss, gpu_step.loss);
        assert!((cpu_step.loss - gpu_step.loss).abs() <= 1e-3);
    }
    let after_cpu = flat(&on_cpu.model, None);
    let (moved, _) = compare(&before, &after_cpu);
    let (weight_err, _) = compare(&after_cpu, &flat(&on_gpu.model, None));
    println!("weights after 3 steps: max diff {weight_err:.2e} (largest move {moved:.2e})");
    // AdamW moves each weight by about lr per step whatever the gradient's size, so a wrong
    // or missing update shows at that scale.
    assert!(moved > config.optim.lr as f32);
    assert!(weight_err <= 0.05 * config.optim.lr as f32);
}

#[test]
fn every_command_runs_on_wgpu_as_on_flex() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    mm_train::train(&common::tiny_config(&run, 4), false).unwrap();
    let image = dir.path().join("x.png");
    common::save_shape(&image, 40);
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (run_s, image_s) = (path(&run), path(&image));

    let zero_shot = |device: &str| {
        let (ok, stdout, stderr) = common::mm_train(&[
            "zero-shot",
            "--checkpoint",
            &run_s,
            "--classes",
            "red circle,blue square,green star",
            "--device",
            device,
            &image_s,
        ]);
        assert!(ok, "{stderr}");
        common::printed_probabilities(&stdout)
    };
    let (flex, wgpu) = (zero_shot("flex"), zero_shot("wgpu"));
    assert_eq!(flex.len(), 3);
    for (a, b) in flex.iter().zip(&wgpu) {
        assert!((a - b).abs() < 0.01, "flex {flex:?} vs wgpu {wgpu:?}");
    }

    let eval = |device: &str| {
        let out = dir.path().join(format!("eval-{device}.json"));
        let (ok, _, stderr) = common::mm_train(&[
            "eval",
            "--checkpoint",
            &run_s,
            "--samples",
            "96",
            "--device",
            device,
            "--out",
            &path(&out),
        ]);
        assert!(ok, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(out).unwrap()).unwrap()
    };
    let (flex, wgpu) = (eval("flex"), eval("wgpu"));
    let top1 = |v: &serde_json::Value| v["zero_shot"]["top1"].as_f64().unwrap();
    // 96 images: one image changing its class would move top-1 by 1.04 points.
    assert!(
        (top1(&flex) - top1(&wgpu)).abs() < 0.011,
        "{flex} vs {wgpu}"
    );

    // Export and import through the GPU keep the weights bit for bit.
    let hf = dir.path().join("hf");
    let back = dir.path().join("back");
    for args in [
        vec![
            "export-hf",
            &run_s,
            "--out",
            hf.to_str().unwrap(),
            "--device",
            "wgpu",
        ],
        vec![
            "import-hf",
            hf.to_str().unwrap(),
            "--out",
            back.to_str().unwrap(),
            "--device",
            "wgpu",
        ],
        vec!["report", &run_s, "--device", "wgpu"],
    ] {
        let (ok, _, stderr) = common::mm_train(&args);
        assert!(ok, "{args:?}: {stderr}");
    }
    let tensors = |file: std::path::PathBuf| common::safetensors_tensors(&file);
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert_eq!(
        tensors(
            run.join("checkpoints")
                .join(latest.trim())
                .join("model.safetensors")
        ),
        tensors(back.join("model.safetensors"))
    );
}
