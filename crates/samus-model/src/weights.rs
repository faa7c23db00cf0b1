//! Where model weights come from: a checkpoint's tensors, with a policy for the ones
//! it lacks.
//!
//! [`WeightStore`] implements candle's `SimpleBackend`, so every component is built
//! with an ordinary `VarBuilder` and asks for its tensors by their reference names.
//! A strict store fails on a missing or mis-shaped tensor with an error naming it and
//! the expected shape; an initialising store creates missing tensors from the
//! component's initialisation hint with a seeded generator (the reference's fresh
//! initialisation of the SAMUS-only parts when starting from SAM weights), and records
//! which names it made.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal, Uniform};
use rayon::prelude::*;

/// What to do when a component asks for a tensor the checkpoint lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingTensors {
    /// Fail with an error naming the tensor and its expected shape.
    Error,
    /// Create it from the component's initialisation hint, drawing random numbers
    /// from a generator seeded with this value.
    Initialise {
        /// Seed of the random generator.
        seed: u64,
    },
}

#[derive(Debug)]
struct StoreState {
    rng: StdRng,
    initialised: BTreeSet<String>,
    created: HashMap<String, Tensor>,
    vars: Vec<(String, Var)>,
    requested: BTreeSet<String>,
    problem: Option<TensorProblem>,
}

/// The first tensor a strict store could not hand out, kept so that loaders can
/// report it with typed fields (candle's backend interface carries only a message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorProblem {
    /// The checkpoint lacks the tensor.
    Missing {
        /// Its reference name.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// The checkpoint's values are NaN or infinite.
    NonFinite {
        /// Its reference name.
        name: String,
        /// How many values are not finite.
        count: usize,
        /// How many values it has.
        total: usize,
    },
    /// The checkpoint has it at another shape.
    Shape {
        /// Its reference name.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
    },
}

/// Decides which tensors are trainable, by name.
pub type TrainablePredicate = Box<dyn Fn(&str) -> bool + Send + Sync>;

struct StoreInner {
    tensors: HashMap<String, Tensor>,
    missing: MissingTensors,
    trainable: Option<TrainablePredicate>,
    state: Mutex<StoreState>,
}

impl std::fmt::Debug for StoreInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreInner")
            .field("tensors", &self.tensors.len())
            .field("missing", &self.missing)
            .field("trainable", &self.trainable.is_some())
            .finish()
    }
}

/// A named set of tensors that components load from (see the module docs).
#[derive(Debug, Clone)]
pub struct WeightStore {
    inner: Arc<StoreInner>,
}

impl WeightStore {
    /// A store over `tensors` with the given policy for missing names.
    pub fn new(tensors: HashMap<String, Tensor>, missing: MissingTensors) -> Self {
        Self::build(tensors, missing, None)
    }

    /// A store whose tensors named by `trainable` are handed out as variables (so
    /// that gradients are computed for them and an optimiser can update them in
    /// place); all others are plain tensors that cost nothing in the backward pass.
    pub fn with_trainable(
        tensors: HashMap<String, Tensor>,
        missing: MissingTensors,
        trainable: TrainablePredicate,
    ) -> Self {
        Self::build(tensors, missing, Some(trainable))
    }

    fn build(
        tensors: HashMap<String, Tensor>,
        missing: MissingTensors,
        trainable: Option<TrainablePredicate>,
    ) -> Self {
        let seed = match missing {
            MissingTensors::Initialise { seed } => seed,
            MissingTensors::Error => 0,
        };
        Self {
            inner: Arc::new(StoreInner {
                tensors,
                missing,
                trainable,
                state: Mutex::new(StoreState {
                    rng: StdRng::seed_from_u64(seed),
                    initialised: BTreeSet::new(),
                    created: HashMap::new(),
                    vars: Vec::new(),
                    requested: BTreeSet::new(),
                    problem: None,
                }),
            }),
        }
    }

    /// A `VarBuilder` reading from this store (f32 on `device`).
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, device.clone())
    }

    fn state(&self) -> MutexGuard<'_, StoreState> {
        // A poisoned lock only means another thread panicked while holding it; the
        // bookkeeping inside is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Names that were created fresh because the checkpoint lacked them, sorted.
    pub fn initialised(&self) -> Vec<String> {
        self.state().initialised.iter().cloned().collect()
    }

    /// Every tensor a component asked for, by name: the checkpoint's own and the
    /// freshly initialised ones (what a converted checkpoint must hold), trainable
    /// ones at their current values.
    pub fn requested_tensors(&self) -> HashMap<String, Tensor> {
        let state = self.state();
        let mut out = state.created.clone();
        for name in &state.requested {
            if let Some(t) = self.inner.tensors.get(name) {
                out.insert(name.clone(), t.clone());
            }
        }
        for (name, var) in &state.vars {
            out.insert(name.clone(), var.as_tensor().detach());
        }
        out
    }

    /// The trainable variables handed out so far, in the order they were requested.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.state().vars.clone()
    }

    /// Checkpoint tensors that no component asked for, sorted.
    pub fn unused(&self) -> Vec<String> {
        let state = self.state();
        let mut unused: Vec<String> = self
            .inner
            .tensors
            .keys()
            .filter(|k| !state.requested.contains(*k))
            .cloned()
            .collect();
        unused.sort();
        unused
    }

    fn sample(&self, shape: &Shape, init: Init, device: &Device) -> Result<Tensor> {
        let n = shape.elem_count();
        let mut state = self.state();
        let rng = &mut state.rng;
        let values: Vec<f32> = match init {
            Init::Const(v) => vec![v as f32; n],
            Init::Uniform { lo, up } => {
                let dist = Uniform::new(lo, up).map_err(candle_core::Error::wrap)?;
                (0..n).map(|_| dist.sample(rng) as f32).collect()
            }
            Init::Randn { mean, stdev } => {
                let dist = Normal::new(mean, stdev).map_err(candle_core::Error::wrap)?;
                (0..n).map(|_| dist.sample(rng) as f32).collect()
            }
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
                match dist {
                    candle_nn::init::NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        let dist = Uniform::new(-bound, bound).map_err(candle_core::Error::wrap)?;
                        (0..n).map(|_| dist.sample(rng) as f32).collect()
                    }
                    candle_nn::init::NormalOrUniform::Normal => {
                        let dist = Normal::new(0.0, std).map_err(candle_core::Error::wrap)?;
                        (0..n).map(|_| dist.sample(rng) as f32).collect()
                    }
                }
            }
        };
        Tensor::from_vec(values, shape.clone(), device)
    }
}

/// How many values of a float tensor are NaN or infinite (0 for integer tensors).
/// Reads a contiguous CPU tensor in place (a ViT-B checkpoint takes a few tens of
/// milliseconds); anything else through a copy.
pub fn non_finite_count(tensor: &Tensor) -> Result<usize> {
    if !tensor.dtype().is_float() {
        return Ok(0);
    }
    let t = tensor.to_dtype(DType::F32)?;
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            let values = &cpu.as_slice::<f32>()?[start..end];
            // In parallel, and as a sum that vectorises: every tensor of a
            // checkpoint is checked at load time (533 MB for ViT-B).
            return Ok(samus_core::parallel::run_in_pool(|| {
                values
                    .par_chunks(1 << 16)
                    .map(|chunk| {
                        chunk
                            .iter()
                            .map(|v| usize::from(!v.is_finite()))
                            .sum::<usize>()
                    })
                    .sum()
            }));
        }
    }
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .filter(|v| !v.is_finite())
        .count())
}

/// An error with just a message: candle's `bail!` appends a backtrace to the message
/// when `RUST_BACKTRACE` is set, which users should not see for a bad checkpoint.
fn plain_error(message: String) -> candle_core::Error {
    candle_core::Error::Msg(message)
}

impl WeightStore {
    /// The first tensor that could not be handed out, if any.
    pub fn problem(&self) -> Option<TensorProblem> {
        self.state().problem.clone()
    }

    fn record(&self, problem: TensorProblem) {
        self.state().problem.get_or_insert(problem);
    }

    /// Hands out `tensor` for `name`: as a variable (the same one on every request)
    /// when `name` is trainable.
    fn hand_out(&self, name: &str, tensor: Tensor) -> Result<Tensor> {
        let Some(trainable) = &self.inner.trainable else {
            return Ok(tensor);
        };
        if !trainable(name) {
            return Ok(tensor);
        }
        let mut state = self.state();
        if let Some((_, var)) = state.vars.iter().find(|(n, _)| n == name) {
            return Ok(var.as_tensor().clone());
        }
        let var = Var::from_tensor(&tensor)?;
        state.vars.push((name.to_string(), var.clone()));
        Ok(var.as_tensor().clone())
    }

    fn lookup(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        self.state().requested.insert(name.to_string());
        match self.inner.tensors.get(name) {
            Some(t) => {
                if t.shape() != &shape {
                    self.record(TensorProblem::Shape {
                        name: name.to_string(),
                        expected: shape.dims().to_vec(),
                        found: t.dims().to_vec(),
                    });
                    return Err(plain_error(format!(
                        "tensor `{name}` has shape {:?}, expected {:?}",
                        t.dims(),
                        shape.dims()
                    )));
                }
                let count = non_finite_count(t)?;
                if count > 0 {
                    self.record(TensorProblem::NonFinite {
                        name: name.to_string(),
                        count,
                        total: t.elem_count(),
                    });
                    return Err(plain_error(format!(
                        "tensor `{name}` holds {count} NaN or infinite values"
                    )));
                }
                t.to_dtype(dtype)?.to_device(dev)
            }
            None => match self.inner.missing {
                MissingTensors::Error => {
                    self.record(TensorProblem::Missing {
                        name: name.to_string(),
                        expected: shape.dims().to_vec(),
                    });
                    Err(plain_error(format!(
                        "missing tensor `{name}` (expected shape {:?})",
                        shape.dims()
                    )))
                }
                MissingTensors::Initialise { .. } => {
                    if let Some(t) = self.state().created.get(name) {
                        return Ok(t.clone());
                    }
                    let t = self.sample(&shape, init, dev)?.to_dtype(dtype)?;
                    let mut state = self.state();
                    state.initialised.insert(name.to_string());
                    state.created.insert(name.to_string(), t.clone());
                    Ok(t)
                }
            },
        }
    }
}

impl SimpleBackend for WeightStore {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let tensor = self.lookup(shape, name, init, dtype, dev)?;
        self.hand_out(name, tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.state().requested.insert(name.to_string());
        match self.inner.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => Err(plain_error(format!("missing tensor `{name}`"))),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_store_names_missing_and_misshaped_tensors() {
        let mut map = HashMap::new();
        map.insert(
            "a.weight".to_string(),
            Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
        );
        let store = WeightStore::new(map, MissingTensors::Error);
        let vb = store.var_builder(&Device::Cpu);
        let err = vb.pp("a").get((3, 2), "weight").unwrap_err().to_string();
        assert!(err.contains("a.weight") && err.contains("[3, 2]"), "{err}");
        let err = vb.pp("b").get(4, "bias").unwrap_err().to_string();
        assert!(
            err.contains("missing tensor `b.bias`") && err.contains("[4]"),
            "{err}"
        );
    }

    #[test]
    fn initialising_store_is_seeded_and_records_names() {
        let make = || {
            let store = WeightStore::new(HashMap::new(), MissingTensors::Initialise { seed: 9 });
            let vb = store.var_builder(&Device::Cpu);
            let t = vb
                .get_with_hints(5, "w", Init::Uniform { lo: -0.5, up: 0.5 })
                .unwrap();
            (store.initialised(), t.to_vec1::<f32>().unwrap())
        };
        let (names, a) = make();
        let (_, b) = make();
        assert_eq!(names, vec!["w".to_string()]);
        assert_eq!(a, b);
        assert!(a.iter().all(|v| (-0.5..0.5).contains(v)));
        assert!(a.windows(2).any(|w| w[0] != w[1]));
    }
}
