use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use samus_model::image_encoder::{CnnEmbed, EncoderBlock, Neck, PatchEmbed};
use samus_model::SamusConfig;
use std::time::Instant;

fn time<F: FnMut() -> candle_core::Result<Tensor>>(
    name: &str,
    mut f: F,
) -> candle_core::Result<()> {
    for i in 0..3 {
        let t0 = Instant::now();
        let out = f()?;
        let t1 = Instant::now();
        let r = out.ones_like()?;
        let g = (out * r)?.sum_all()?.backward()?;
        let t2 = Instant::now();
        drop(g);
        if i == 2 {
            println!(
                "{name}: fwd {:.3} s, bwd {:.3} s",
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64()
            );
        }
    }
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let cfg = SamusConfig::tiny();
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let cnn = CnnEmbed::load(vb.pp("cnn_embed"), &cfg)?;
    let pe = PatchEmbed::load(vb.pp("patch_embed"), &cfg)?;
    let b0 = EncoderBlock::load(vb.pp("blocks").pp(0), &cfg, 0)?;
    let b1 = EncoderBlock::load(vb.pp("blocks").pp(1), &cfg, 1)?;
    let neck = Neck::load(vb.pp("neck"), 128, 256)?;
    let image = Tensor::rand(0f32, 1.0, (4, 3, 256, 256), &dev)?;
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 32, 32, 128), &dev)?)?;
    let c = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 32, 32, 128), &dev)?)?;
    time("cnn_embed", || cnn.forward(&image))?;
    if std::env::var("ONLY_CNN").is_ok() {
        return Ok(());
    }
    time("patch_embed", || pe.forward(&image))?;
    time("window block", || {
        Ok(b0.forward(x.as_tensor(), c.as_tensor())?.0)
    })?;
    time("global block", || {
        let (a, b) = b1.forward(x.as_tensor(), c.as_tensor())?;
        a.add(&b)
    })?;
    time("neck", || {
        neck.forward(&x.as_tensor().permute((0, 3, 1, 2))?)
    })?;
    Ok(())
}
