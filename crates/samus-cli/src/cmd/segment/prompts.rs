//! Parsing prompts given on the command line.

use samus_model::{Label, PointPrompt};

fn numbers(text: &str, what: &str) -> Result<Vec<f32>, String> {
    text.split(',')
        .map(|part| {
            let part = part.trim();
            part.parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("`{part}` in {what} `{text}` is not a number"))
        })
        .collect()
}

/// `x,y` or `x,y,label` (label 1 foreground, default; 0 background).
pub fn parse_point(text: &str) -> Result<PointPrompt, String> {
    let v = numbers(text, "point")?;
    let label = match v.len() {
        2 => Label::Foreground,
        3 if v[2] == 1.0 => Label::Foreground,
        3 if v[2] == 0.0 => Label::Background,
        3 => {
            return Err(format!(
                "point label must be 1 (foreground) or 0 (background), got {}",
                v[2]
            ))
        }
        _ => return Err(format!("a point is `x,y` or `x,y,label`, got `{text}`")),
    };
    Ok(PointPrompt::new(v[0], v[1], label))
}

/// `x0,y0,x1,y1`.
pub fn parse_box(text: &str) -> Result<[f32; 4], String> {
    let v = numbers(text, "box")?;
    match v.as_slice() {
        [x0, y0, x1, y1] => Ok([*x0, *y0, *x1, *y1]),
        _ => Err(format!("a box is `x0,y0,x1,y1`, got `{text}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_and_boxes() {
        assert_eq!(
            parse_point("10,20").unwrap(),
            PointPrompt::new(10.0, 20.0, Label::Foreground)
        );
        assert_eq!(parse_point("1.5, 2,0").unwrap().label, Label::Background);
        assert!(parse_point("1,2,5").unwrap_err().contains("label"));
        assert!(parse_point("1").is_err());
        assert!(parse_point("a,b").unwrap_err().contains("`a`"));
        assert_eq!(parse_box("1,2,3,4").unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert!(parse_box("1,2,3").is_err());
        assert!(parse_point("nan,1").is_err());
    }
}
