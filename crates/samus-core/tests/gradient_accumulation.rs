//! The workspace builds candle-core with a patched backward pass (vendor/README.md):
//! a gradient's first contribution is stored as it is instead of being added into a
//! zero-filled buffer. These tests pin what that must keep: gradients equal to central
//! finite differences where a tensor receives several contributions, where the first
//! one is a broadcast view, an offset view, a transposed view or a reshaped view of
//! another gradient, and where a later contribution needs a contiguous buffer
//! (`index_add`, the backward pass of `flip` and `index_select`).

use candle_core::{DType, Device, Result, Tensor, Var, D};

/// A loss built from `x` whose gradient is checked.
type Loss = fn(&Tensor) -> Result<Tensor>;

/// Central finite differences of `loss` at `x0`, in f64.
fn numeric_gradient(loss: Loss, x0: &[f64], shape: &[usize]) -> Result<Vec<f64>> {
    let h = 1e-6;
    let mut out = Vec::with_capacity(x0.len());
    for i in 0..x0.len() {
        let mut plus = x0.to_vec();
        let mut minus = x0.to_vec();
        plus[i] += h;
        minus[i] -= h;
        let at = |v: Vec<f64>| -> Result<f64> {
            loss(&Tensor::from_vec(v, shape, &Device::Cpu)?)?.to_scalar::<f64>()
        };
        out.push((at(plus)? - at(minus)?) / (2.0 * h));
    }
    Ok(out)
}

fn check(name: &str, loss: Loss, shape: &[usize]) -> Result<()> {
    let n: usize = shape.iter().product();
    let x0: Vec<f64> = (0..n).map(|i| ((i * 7 % 11) as f64 - 5.0) / 4.0).collect();
    let x = Var::from_tensor(&Tensor::from_vec(x0.clone(), shape, &Device::Cpu)?)?;
    let grads = loss(x.as_tensor())?.backward()?;
    let grad = grads
        .get(x.as_tensor())
        .unwrap_or_else(|| panic!("{name}: no gradient for x"));
    assert_eq!(grad.dims(), shape, "{name}: gradient shape");
    assert!(
        grad.is_contiguous() && grad.layout().start_offset() == 0,
        "{name}: the stored gradient is a view ({:?})",
        grad.layout()
    );
    let analytic = grad.flatten_all()?.to_vec1::<f64>()?;
    let numeric = numeric_gradient(loss, &x0, shape)?;
    for (i, (a, b)) in analytic.iter().zip(&numeric).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
            "{name}: d loss / d x[{i}] = {a}, finite differences {b}"
        );
    }
    Ok(())
}

#[test]
fn a_tensor_used_several_times_sums_its_contributions() -> Result<()> {
    // x reaches the loss through a product, an addition to itself and an exp.
    check(
        "several uses",
        |x| ((x * x)? + x)?.add(&x.exp()?)?.sum_all(),
        &[3, 4],
    )
}

#[test]
fn a_broadcast_first_contribution_is_stored_contiguous() -> Result<()> {
    // The sum's gradient reaches x as a broadcast view; a product with a non-uniform
    // weight follows, so a wrongly strided store shows in the values.
    check(
        "broadcast",
        |x| {
            let w = Tensor::arange(0f64, 12.0, &Device::Cpu)?.reshape((3, 4))?;
            let s = x.sum_keepdim(1)?; // 3 x 1
            s.broadcast_mul(&w)?.sum_all()?.add(&x.sqr()?.mean_all()?)
        },
        &[3, 4],
    )
}

#[test]
fn a_view_as_the_only_contribution_is_stored_contiguous() -> Result<()> {
    // The optimiser and the fused kernels read a parameter's gradient as one
    // contiguous buffer: a lone broadcast or transposed contribution is copied.
    check("sum only", |x| x.sum_all(), &[3, 4])?;
    check(
        "transpose only",
        |x| {
            let w = Tensor::arange(0f64, 12.0, &Device::Cpu)?.reshape((4, 3))?;
            x.t()?.mul(&w)?.sum_all()
        },
        &[3, 4],
    )
}

#[test]
fn offset_and_transposed_views_keep_their_place() -> Result<()> {
    check(
        "narrow and transpose",
        |x| {
            let first = x.narrow(0, 1, 2)?; // an offset view
            let t = x.t()?.matmul(x)?; // transposed operand
            let w = Tensor::arange(1f64, 9.0, &Device::Cpu)?.reshape((2, 4))?;
            (first.mul(&w)?.sum_all()? + t.sum_all()?)?.add(&x.reshape(12)?.max(D::Minus1)?)
        },
        &[3, 4],
    )
}

#[test]
fn flip_and_index_select_accumulate_into_contiguous_buffers() -> Result<()> {
    check(
        "flip",
        |x| {
            let w = Tensor::arange(0f64, 12.0, &Device::Cpu)?.reshape((3, 4))?;
            let ids = Tensor::new(&[2u32, 0, 2], &Device::Cpu)?;
            let picked = x.index_select(&ids, 0)?.sum_all()?;
            (x.flip(&[1])?.mul(&w)?.sum_all()? + picked)?.add(&x.sum_all()?)
        },
        &[3, 4],
    )
}

#[test]
fn gradients_of_f32_products_match_f64_ones() -> Result<()> {
    // The training path runs in f32: the same graph in both types gives the same
    // gradient to f32 precision.
    let values: Vec<f64> = (0..24).map(|i| ((i * 5 % 13) as f64 - 6.0) / 5.0).collect();
    let mut grads = Vec::new();
    for dtype in [DType::F64, DType::F32] {
        let x = Var::from_tensor(
            &Tensor::from_vec(values.clone(), (4, 6), &Device::Cpu)?.to_dtype(dtype)?,
        )?;
        let y = x.as_tensor();
        let loss = (y.matmul(&y.t()?)?.tanh()?.sum_all()? + y.sqr()?.sum_all()?)?;
        let g = loss.backward()?;
        grads.push(
            g.get(y)
                .expect("gradient of x")
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?,
        );
    }
    for (a, b) in grads[0].iter().zip(&grads[1]) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{a} against {b}");
    }
    Ok(())
}
