//! `embed-app CHECKPOINT IMAGE X Y OUT.png`: loads a SAMUS checkpoint, embeds the
//! image once, predicts the point twice (the second time refined by the first
//! prediction) and writes the first best mask to OUT.png.

use samus_model::{Label, Prompts, Samus};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [checkpoint, image, x, y, out] = args.as_slice() else {
        return Err("usage: embed-app CHECKPOINT IMAGE X Y OUT.png".into());
    };
    let (x, y): (f32, f32) = (x.parse()?, y.parse()?);
    let model = Samus::load(checkpoint)?;
    let embedding = model.embed(&image::open(image)?)?;
    let prediction = model.predict(&embedding, &Prompts::new().point(x, y, Label::Foreground))?;
    let best = prediction.best();
    let again = model.predict(
        &embedding,
        &Prompts::new()
            .point(x, y, Label::Foreground)
            .refine(&prediction),
    )?;
    best.image.save(out)?;
    println!(
        "mask {} (predicted IoU {:.4}, {} px) written to {out}; refined: IoU {:.4}, {} px",
        best.index,
        best.iou,
        best.area(),
        again.best().iou,
        again.best().area()
    );
    Ok(())
}
