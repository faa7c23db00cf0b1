//! Physical measurements of a mask where the pixel size is known: area, equivalent
//! diameter, perimeter and the circumference of the fitted ellipse (the fetal head
//! circumference of biometry is measured on such an ellipse).
//!
//! ```
//! use image::GrayImage;
//! use samus_data::measure::measure_mask;
//!
//! // A 40 x 20 pixel rectangle at 0.5 mm per pixel: 200 mm2.
//! let mask = GrayImage::from_fn(100, 60, |x, y| image::Luma([if x < 40 && y < 20 { 255 } else { 0 }]));
//! let m = measure_mask(&mask, (0.5, 0.5)).expect("a non-empty mask");
//! assert_eq!(m.area_mm2, 200.0);
//! ```

use image::GrayImage;
use imageproc::contours::{find_contours, BorderType};
use imageproc::point::Point;
use serde::Serialize;

/// What [`measure_mask`] finds, in millimetres.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measurements {
    /// Foreground pixels.
    pub area_px: usize,
    /// Their area in mm².
    pub area_mm2: f64,
    /// The diameter of the disk of that area, in mm.
    pub equivalent_diameter_mm: f64,
    /// The length of the outer boundaries, through the boundary pixels' centres
    /// (8-connected), in mm.
    pub perimeter_mm: f64,
    /// The circumference of the ellipse with the mask's second moments (Ramanujan's
    /// second approximation), in mm.
    pub ellipse_circumference_mm: f64,
    /// That ellipse's semi-axes (major, minor), in mm.
    pub ellipse_semi_axes_mm: (f64, f64),
}

/// Measures the foreground (pixels > 0) of `mask`, whose pixels are `pixel_mm`
/// (x, y) millimetres; `None` for an empty mask.
pub fn measure_mask(mask: &GrayImage, pixel_mm: (f64, f64)) -> Option<Measurements> {
    let (sx, sy) = pixel_mm;
    let mut n = 0usize;
    let (mut mx, mut my) = (0.0f64, 0.0f64);
    for (x, y, p) in mask.enumerate_pixels() {
        if p[0] > 0 {
            n += 1;
            mx += f64::from(x);
            my += f64::from(y);
        }
    }
    if n == 0 {
        return None;
    }
    let count = n as f64;
    let (mx, my) = (mx / count, my / count);
    // Second central moments in mm (a pixel is a square of side s: add s^2 / 12).
    let (mut cxx, mut cyy, mut cxy) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y, p) in mask.enumerate_pixels() {
        if p[0] > 0 {
            let dx = (f64::from(x) - mx) * sx;
            let dy = (f64::from(y) - my) * sy;
            cxx += dx * dx;
            cyy += dy * dy;
            cxy += dx * dy;
        }
    }
    let (cxx, cyy, cxy) = (
        cxx / count + sx * sx / 12.0,
        cyy / count + sy * sy / 12.0,
        cxy / count,
    );
    let mean = (cxx + cyy) / 2.0;
    let spread = (((cxx - cyy) / 2.0).powi(2) + cxy * cxy).sqrt();
    // A uniform ellipse of semi-axes a, b has variances a^2/4 and b^2/4.
    let a = 2.0 * (mean + spread).max(0.0).sqrt();
    let b = 2.0 * (mean - spread).max(0.0).sqrt();
    let h = if a + b > 0.0 {
        ((a - b) / (a + b)).powi(2)
    } else {
        0.0
    };
    let circumference =
        std::f64::consts::PI * (a + b) * (1.0 + 3.0 * h / (10.0 + (4.0 - 3.0 * h).sqrt()));

    let area_mm2 = count * sx * sy;
    let perimeter_mm = find_contours::<i32>(mask)
        .iter()
        .filter(|c| c.border_type == BorderType::Outer)
        .map(|c| {
            let points: Vec<Point<f64>> = c
                .points
                .iter()
                .map(|p| Point::new(f64::from(p.x) * sx, f64::from(p.y) * sy))
                .collect();
            if points.len() < 2 {
                0.0
            } else {
                imageproc::geometry::arc_length(&points, true)
            }
        })
        .sum();
    Some(Measurements {
        area_px: n,
        area_mm2,
        equivalent_diameter_mm: 2.0 * (area_mm2 / std::f64::consts::PI).sqrt(),
        perimeter_mm,
        ellipse_circumference_mm: circumference,
        ellipse_semi_axes_mm: (a, b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ellipse(w: u32, h: u32, (cx, cy): (f64, f64), (a, b): (f64, f64)) -> GrayImage {
        GrayImage::from_fn(w, h, |x, y| {
            let (dx, dy) = ((f64::from(x) - cx) / a, (f64::from(y) - cy) / b);
            image::Luma([if dx * dx + dy * dy <= 1.0 { 255 } else { 0 }])
        })
    }

    #[test]
    fn a_calibrated_disk_measures_to_one_percent() {
        // Radius 60 px at 0.2 mm: 12 mm, area 452.4 mm2, circumference 75.4 mm.
        let disk = ellipse(200, 180, (100.0, 90.0), (60.0, 60.0));
        let m = measure_mask(&disk, (0.2, 0.2)).unwrap();
        let r = 12.0f64;
        let close = |got: f64, want: f64, tol: f64| (got - want).abs() / want <= tol;
        assert!(
            close(m.area_mm2, std::f64::consts::PI * r * r, 0.01),
            "{m:?}"
        );
        assert!(close(m.equivalent_diameter_mm, 2.0 * r, 0.01), "{m:?}");
        assert!(
            close(
                m.ellipse_circumference_mm,
                2.0 * std::f64::consts::PI * r,
                0.01
            ),
            "{m:?}"
        );
        // The boundary through pixel centres runs half a pixel inside, in steps.
        assert!(
            close(m.perimeter_mm, 2.0 * std::f64::consts::PI * r, 0.05),
            "{m:?}"
        );
    }

    #[test]
    fn an_ellipse_with_anisotropic_pixels_gives_its_axes() {
        // 80 x 40 px semi-axes at 0.1 mm across and 0.2 mm down: 8 mm x 8 mm, a circle.
        let e = ellipse(220, 120, (110.0, 60.0), (80.0, 40.0));
        let m = measure_mask(&e, (0.1, 0.2)).unwrap();
        let (a, b) = m.ellipse_semi_axes_mm;
        assert!((a - 8.0).abs() < 0.08 && (b - 8.0).abs() < 0.08, "{m:?}");
        // A flat ellipse keeps its axes: 10 x 4 mm.
        let flat = ellipse(260, 120, (130.0, 60.0), (100.0, 40.0));
        let m = measure_mask(&flat, (0.1, 0.1)).unwrap();
        let (a, b) = m.ellipse_semi_axes_mm;
        assert!((a - 10.0).abs() < 0.1 && (b - 4.0).abs() < 0.05, "{m:?}");
        // Ramanujan for 10 x 4: 46.04 mm.
        assert!((m.ellipse_circumference_mm - 46.04).abs() < 0.5, "{m:?}");
        assert!(measure_mask(&GrayImage::new(4, 4), (1.0, 1.0)).is_none());
    }
}
