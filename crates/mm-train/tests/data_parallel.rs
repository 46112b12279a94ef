//! Data parallelism without MPI: N ranks simulated on threads (`ThreadRank`) give the
//! gradients of one process on the N x B global batch, for CLIP and SigLIP, with and without
//! `local_loss`, with `accum_freq`, and train to the same weights.

mod common;

use std::rc::Rc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use mm_contrastive::dist::{Communicator, ThreadRank};
use mm_data::ClipBatch;
use mm_encoders::ClipModel;
use mm_train::task::{Objective, Trainee};
use mm_train::{Learner, TrainConfig};

/// Runs `work` as each of `world` ranks on its own thread, its learner a copy of `model`
/// (same parameter ids, so gradients compare by id); results in rank order.
fn on_ranks<M: Trainee, T: Send>(
    world: usize,
    config: &TrainConfig,
    model: &M,
    work: impl Fn(usize, &mut Learner<M>) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadRank::group(world)
            .into_iter()
            .map(|comm| {
                let (work, model) = (&work, model.clone());
                scope.spawn(move || {
                    let rank = comm.rank();
                    let comm: Rc<dyn Communicator> = Rc::new(comm);
                    let mut learner = Learner::from_model(config, model)
                        .with_communicator(comm)
                        .unwrap();
                    work(rank, &mut learner)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn assert_same_gradients(
    model: &impl Module,
    want: &GradientsParams,
    got: &GradientsParams,
    what: &str,
) {
    let (worst, scale) = common::compare_grads(model, want, got);
    println!("{what}: max |difference| {worst:.2e}, largest gradient {scale:.2e}");
    assert!(
        worst <= 1e-5 * scale,
        "{what}: gradients differ by {worst} (relative {:.2e})",
        worst / scale
    );
}

/// Every rank's summed gradients equal one process's gradients on the global batch.
fn ranks_match_one_process(objective: Objective, local_loss: bool, world: usize, accum: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(dir.path(), 1);
    config.objective = objective;
    config.train.local_loss = local_loss;
    let model_config = config.model.as_ref().unwrap().resolve().unwrap();
    let learner = Learner::new(&config, &model_config).unwrap();
    // 16 samples: `world` ranks x `accum` micro-batches of 16 / (world * accum).
    let global = common::shapes_batches(&model_config, 1).remove(0);
    let (want_loss, want) = learner.gradients(std::slice::from_ref(&global)).unwrap();
    let per_rank = 16 / world;
    let micro = per_rank / accum;
    let results = on_ranks(world, &config, &learner.model, |rank, learner| {
        let batches: Vec<ClipBatch> = (0..accum)
            .map(|j| {
                let first = rank * per_rank + j * micro;
                common::rows_of(&global, first..first + micro)
            })
            .collect();
        learner.gradients(&batches).unwrap()
    });
    let what = format!("{objective:?} local_loss={local_loss} {world} ranks x {accum}");
    for (rank, (loss, grads)) in results.iter().enumerate() {
        assert!(
            (loss - want_loss).abs() <= 1e-5 * want_loss.abs(),
            "{what}: rank {rank} loss {loss} vs {want_loss}"
        );
        assert_same_gradients(&learner.model, &want, grads, &format!("{what} rank {rank}"));
    }
}

#[test]
fn clip_ranks_give_the_global_batch_gradients() {
    ranks_match_one_process(Objective::Clip, false, 2, 1);
    ranks_match_one_process(Objective::Clip, false, 4, 1);
    ranks_match_one_process(Objective::Clip, true, 4, 1);
    ranks_match_one_process(Objective::Clip, true, 2, 2);
}

#[test]
fn siglip_ranks_give_the_global_batch_gradients() {
    ranks_match_one_process(Objective::Siglip, false, 2, 1);
    ranks_match_one_process(Objective::Siglip, true, 4, 1);
    ranks_match_one_process(Objective::Siglip, false, 2, 2);
}

/// A fusion classifier's cross-entropy averaged over the global batch: ranks (and their
/// micro-batches) give one process's gradients on all the rows.
#[test]
fn classifier_ranks_give_the_global_batch_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(dir.path(), 1);
    config.objective = Objective::Classify;
    let model_config = config.model.as_ref().unwrap().resolve().unwrap();
    let device = burn::tensor::Device::flex().autodiff();
    let clip = model_config.init_seeded(&device, 5);
    let classes = mm_data::ShapesDataset::class_names();
    let fusion = mm_encoders::FusionConfig::new(classes.len())
        .with_operator(mm_encoders::FusionOperator::Gated)
        .with_head_hidden(16)
        .with_class_names(classes)
        .init(clip, &device);
    let learner = Learner::from_model(&config, fusion);
    let global = common::shapes_batches(&model_config, 1).remove(0);
    let (want_loss, want) = learner.gradients(std::slice::from_ref(&global)).unwrap();
    for (world, accum) in [(2, 1), (2, 2), (4, 1)] {
        let (per_rank, micro) = (16 / world, 16 / world / accum);
        let results = on_ranks(world, &config, &learner.model, |rank, learner| {
            let batches: Vec<ClipBatch> = (0..accum)
                .map(|j| {
                    common::rows_of(
                        &global,
                        rank * per_rank + j * micro..rank * per_rank + (j + 1) * micro,
                    )
                })
                .collect();
            learner.gradients(&batches).unwrap()
        });
        for (rank, (loss, grads)) in results.iter().enumerate() {
            let what = format!("classifier, {world} ranks x {accum}, rank {rank}");
            assert!(
                (loss - want_loss).abs() <= 1e-5 * want_loss.abs(),
                "{what}: {loss} vs {want_loss}"
            );
            assert_same_gradients(&learner.model, &want, grads, &what);
        }
    }
}

/// Gradients of `local` alone (its own rows' loss, no other rank's) differ from the global
/// batch's: the comparison above can fail.
#[test]
fn one_ranks_own_batch_is_not_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::tiny_config(dir.path(), 1);
    let model_config = config.model.as_ref().unwrap().resolve().unwrap();
    let learner = Learner::new(&config, &model_config).unwrap();
    let global = common::shapes_batches(&model_config, 1).remove(0);
    let (_, want) = learner.gradients(std::slice::from_ref(&global)).unwrap();
    let mut sum = burn::optim::GradientsAccumulator::<ClipModel>::new();
    for half in [0..8, 8..16] {
        let batch = common::rows_of(&global, half);
        sum.accumulate(&learner.model, learner.gradients(&[batch]).unwrap().1);
    }
    let (worst, scale) = common::compare_grads(&learner.model, &want, &sum.grads());
    assert!(worst > 1e-3 * scale, "{worst} vs {scale}");
}

/// Flat parameter values in visiting order.
fn weights(model: &ClipModel) -> Vec<f32> {
    struct Flat(Vec<f32>);
    impl ModuleVisitor for Flat {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0
                .extend(param.val().into_data().try_into_vec_as::<f32>().unwrap());
        }
    }
    let mut flat = Flat(Vec::new());
    model.visit(&mut flat);
    flat.0
}

#[test]
fn ranks_train_to_the_weights_of_one_process_and_start_from_rank_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(dir.path(), 3);
    config.train.local_loss = true;
    let model_config = config.model.as_ref().unwrap().resolve().unwrap();
    let mut single = Learner::new(&config, &model_config).unwrap();
    let start = single.model.clone();
    let batches = common::shapes_batches(&model_config, 3);
    for (step, batch) in batches.iter().enumerate() {
        single.step(batch, step).unwrap();
    }
    let want = weights(&single.model);
    let results = on_ranks(2, &config, &start, |rank, learner| {
        if rank == 1 {
            // A rank that initialised differently still starts from rank 0's weights.
            let other = config.clone();
            let mut other_config = other.clone();
            other_config.seed += 1;
            let fresh = Learner::new(&other_config, &model_config).unwrap();
            assert_ne!(weights(&fresh.model), weights(&learner.model));
        }
        for (step, batch) in batches.iter().enumerate() {
            let mine = common::rows_of(batch, rank * 8..(rank + 1) * 8);
            learner.step(&mine, step).unwrap();
        }
        mm_train::replicas::check_replicas_agree(&learner.model, 3, learner.comm()).unwrap();
        let trained = weights(&learner.model);
        // A replica that drifts is caught, and the error names the tensor.
        let mut drifted = learner.model.clone();
        if rank == 1 {
            let scale = drifted.logit_scale.val().add_scalar(1e-3).detach();
            drifted.logit_scale = Param::from_tensor(scale);
        }
        let error = mm_train::replicas::check_replicas_agree(&drifted, 4, learner.comm())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("diverged at step 4: rank 1 differs from rank 0 in logit_scale"),
            "{error}"
        );
        trained
    });
    for (rank, got) in results.iter().enumerate() {
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("rank {rank}: max |w - w_single| after 3 steps = {worst:.2e}");
        assert!(worst <= 1e-5, "rank {rank}: weights differ by {worst}");
    }
    assert_eq!(results[0], results[1], "the replicas are bit-identical");
}
