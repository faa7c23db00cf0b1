//! DICOM input: the real point-of-care files decode to the right size and pixel
//! size; written files of every supported photometric interpretation and bit depth
//! read back exactly; multi-frame timing; and bad files fail naming the file and the
//! cause.

use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgb, RgbImage};
use samus_data::dicom::{write_dicom, DicomCalibration, DicomFile, DicomPixels, PixelSizeSource};

fn pattern(w: u32, h: u32, shift: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| Luma([((x * 7 + y * 3 + shift) % 256) as u8]))
}

#[test]
fn the_real_sonoque_files_decode_with_their_calibration() {
    let Some(real) = samus_core::fixtures::realdata_or_skip(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let pocus = real.join("POCUS");
    let files: Vec<_> = std::fs::read_dir(&pocus)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    assert_eq!(files.len(), 2, "two Sonoque DICOMs in {}", pocus.display());
    for path in files {
        let file = DicomFile::open(&path).unwrap();
        assert_eq!(
            (file.width(), file.height(), file.frames()),
            (2083, 1455, 1)
        );
        let size = file
            .pixel_size()
            .expect("the ultrasound region calibrates it");
        assert_eq!(size.source, PixelSizeSource::UltrasoundRegion);
        assert!(
            (size.x_mm - 0.0291).abs() < 1e-6 && (size.y_mm - 0.0291).abs() < 1e-6,
            "{size:?}"
        );
        let frame = file.frame(0).unwrap();
        assert_eq!((frame.width(), frame.height()), (2083, 1455));
        assert_eq!(frame.color(), image::ColorType::Rgb8);
        // A phantom scan: not blank.
        let grey = frame.to_luma8();
        let bright = grey.pixels().filter(|p| p[0] > 40).count();
        assert!(bright > 10_000, "{} looks blank", path.display());
        // read_image gives the same first frame.
        let again = samus_data::io::read_image(&path).unwrap();
        assert!(again == frame);
        assert_eq!(
            samus_data::io::image_dimensions(&path).unwrap(),
            (2083, 1455)
        );
    }
}

#[test]
fn every_supported_layout_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let grey = pattern(37, 23, 0);
    let rgb: RgbImage = ImageBuffer::from_fn(37, 23, |x, y| {
        Rgb([(x * 5) as u8, (y * 9) as u8, ((x + y) * 3) as u8])
    });
    let grey16: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(37, 23, |x, y| Luma([(x * 1500 + y * 700) as u16]));
    let cases: [(DicomPixels, DynamicImage); 4] = [
        (DicomPixels::Grey8, DynamicImage::ImageLuma8(grey.clone())),
        (
            DicomPixels::Grey8Inverted,
            DynamicImage::ImageLuma8(grey.clone()),
        ),
        (DicomPixels::Rgb8, DynamicImage::ImageRgb8(rgb.clone())),
        (
            DicomPixels::Grey16,
            DynamicImage::ImageLuma16(grey16.clone()),
        ),
    ];
    for (pixels, image) in cases {
        let path = dir.path().join(format!("{pixels:?}.dcm"));
        write_dicom(
            &path,
            std::slice::from_ref(&image),
            pixels,
            &DicomCalibration::default(),
        )
        .unwrap();
        let read = DicomFile::open(&path).unwrap().frame(0).unwrap();
        match pixels {
            DicomPixels::Grey16 => assert!(read.to_luma16() == grey16, "{pixels:?}"),
            DicomPixels::Rgb8 => assert!(read.to_rgb8() == rgb, "{pixels:?}"),
            _ => assert!(read.to_luma8() == grey, "{pixels:?}"),
        }
    }
    // MONOCHROME1 of 12 bits stored in 16: inverted within the 12 bits, then scaled
    // to the full range (the 8-bit view matches the source's to within a level).
    let path = dir.path().join("mono1-12.dcm");
    let image = DynamicImage::ImageLuma16(grey16.clone());
    write_dicom(
        &path,
        std::slice::from_ref(&image),
        DicomPixels::Grey12Inverted,
        &DicomCalibration::default(),
    )
    .unwrap();
    let read = DicomFile::open(&path).unwrap().frame(0).unwrap().to_luma8();
    let worst = read
        .pixels()
        .zip(image.to_luma8().pixels())
        .map(|(a, b)| (i32::from(a[0]) - i32::from(b[0])).abs())
        .max()
        .unwrap();
    assert!(worst <= 1, "12-bit MONOCHROME1 differs by {worst} levels");
    // YBR_FULL is converted back to RGB (to within the transform's rounding).
    let path = dir.path().join("ybr.dcm");
    write_dicom(
        &path,
        &[DynamicImage::ImageRgb8(rgb.clone())],
        DicomPixels::YbrFull8,
        &DicomCalibration::default(),
    )
    .unwrap();
    let read = DicomFile::open(&path).unwrap().frame(0).unwrap().to_rgb8();
    let worst = read
        .pixels()
        .zip(rgb.pixels())
        .flat_map(|(a, b)| (0..3).map(move |c| (i32::from(a[c]) - i32::from(b[c])).abs()))
        .max()
        .unwrap();
    assert!(worst <= 2, "YBR_FULL differs by {worst}");
    // YBR_FULL_422 shares the colour of each pair of pixels: a pattern whose pairs
    // have one colour reads back within rounding.
    let paired: RgbImage = ImageBuffer::from_fn(36, 23, |x, y| {
        Rgb([(x / 2 * 10) as u8, (y * 9) as u8, 200 - (x / 2 * 5) as u8])
    });
    let path = dir.path().join("ybr422.dcm");
    write_dicom(
        &path,
        &[DynamicImage::ImageRgb8(paired.clone())],
        DicomPixels::YbrFull422,
        &DicomCalibration::default(),
    )
    .unwrap();
    let file = DicomFile::open(&path).unwrap();
    let read = file.frame(0).unwrap().to_rgb8();
    assert_eq!(read.dimensions(), (36, 23));
    let worst = read
        .pixels()
        .zip(paired.pixels())
        .flat_map(|(a, b)| (0..3).map(move |c| (i32::from(a[c]) - i32::from(b[c])).abs()))
        .max()
        .unwrap();
    assert!(worst <= 2, "YBR_FULL_422 differs by {worst}");
}

#[test]
fn multi_frame_files_give_each_frame_its_time_and_the_calibration() {
    let dir = tempfile::tempdir().unwrap();
    let frames: Vec<DynamicImage> = (0..4)
        .map(|k| DynamicImage::ImageLuma8(pattern(20, 16, k * 40)))
        .collect();
    let path = dir.path().join("cine.dcm");
    let calibration = DicomCalibration {
        region_mm: Some((0.2, 0.25)),
        pixel_spacing_mm: Some((0.5, 0.5)),
        frame_time_ms: Some(33.5),
    };
    write_dicom(&path, &frames, DicomPixels::Grey8, &calibration).unwrap();
    let file = DicomFile::open(&path).unwrap();
    assert_eq!(file.frames(), 4);
    for (k, frame) in frames.iter().enumerate() {
        assert!(
            file.frame(k as u32).unwrap().to_luma8() == frame.to_luma8(),
            "frame {k}"
        );
        let t = file.frame_time_s(k as u32).unwrap();
        assert!((t - k as f64 * 0.0335).abs() < 1e-9, "frame {k} at {t}");
    }
    let err = file.frame(4).unwrap_err().to_string();
    assert!(err.contains("cine.dcm") && err.contains("frame 4"), "{err}");
    // The ultrasound region wins over Pixel Spacing; without it, Pixel Spacing.
    let size = file.pixel_size_at(5.0, 5.0).unwrap();
    assert_eq!(
        (size.x_mm, size.y_mm, size.source),
        (0.2, 0.25, PixelSizeSource::UltrasoundRegion)
    );
    let spaced = dir.path().join("spaced.dcm");
    let only_spacing = DicomCalibration {
        pixel_spacing_mm: Some((0.3, 0.4)),
        ..DicomCalibration::default()
    };
    write_dicom(&spaced, &frames[..1], DicomPixels::Grey8, &only_spacing).unwrap();
    let size = DicomFile::open(&spaced).unwrap().pixel_size().unwrap();
    assert_eq!(
        (size.x_mm, size.y_mm, size.source),
        (0.3, 0.4, PixelSizeSource::PixelSpacing)
    );
    let plain = dir.path().join("plain.dcm");
    write_dicom(
        &plain,
        &frames[..1],
        DicomPixels::Grey8,
        &DicomCalibration::default(),
    )
    .unwrap();
    assert!(DicomFile::open(&plain).unwrap().pixel_size().is_none());
}

#[test]
fn bad_files_name_the_file_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.dcm");
    write_dicom(
        &good,
        &[DynamicImage::ImageLuma8(pattern(64, 64, 1))],
        DicomPixels::Grey8,
        &DicomCalibration::default(),
    )
    .unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let cut = dir.path().join("cut.dcm");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = samus_data::io::read_image(&cut).unwrap_err().to_string();
    assert!(err.contains("cut.dcm"), "{err}");

    let junk = dir.path().join("junk.dcm");
    std::fs::write(&junk, [0u8; 300]).unwrap();
    let err = DicomFile::open(&junk).unwrap_err().to_string();
    assert!(
        err.contains("junk.dcm") && err.contains("not a readable DICOM"),
        "{err}"
    );

    // A header without pixel data: everything up to the Pixel Data element.
    let tag = [0xe0u8, 0x7f, 0x10, 0x00];
    let at = bytes
        .windows(4)
        .rposition(|w| w == tag)
        .expect("a pixel data element");
    let empty = dir.path().join("no_pixels.dcm");
    std::fs::write(&empty, &bytes[..at]).unwrap();
    let err = DicomFile::open(&empty).unwrap_err().to_string();
    assert!(
        err.contains("no_pixels.dcm") && err.contains("no pixel data"),
        "{err}"
    );

    // JPEG 2000: named by its UID, with the way to convert it.
    let j2k = dir.path().join("j2k.dcm");
    let mut changed = bytes.clone();
    let ts = b"1.2.840.10008.1.2.1\0";
    let pos = changed
        .windows(ts.len())
        .position(|w| w == ts)
        .expect("the transfer syntax");
    let replacement = b"1.2.840.10008.1.2.4.90";
    // The UID element keeps its length: write the new UID (22 bytes, even) into a
    // header rebuilt with the right length.
    let len_pos = pos - 2;
    changed[len_pos] = replacement.len() as u8;
    changed.splice(pos..pos + ts.len(), replacement.iter().copied());
    // The group length of the meta header (its first element) grows by 2.
    let group = 128 + 4 + 8;
    let n = u32::from_le_bytes(changed[group..group + 4].try_into().unwrap()) + 2;
    changed[group..group + 4].copy_from_slice(&n.to_le_bytes());
    std::fs::write(&j2k, &changed).unwrap();
    let err = DicomFile::open(&j2k).unwrap_err().to_string();
    assert!(
        err.contains("j2k.dcm") && err.contains("1.2.840.10008.1.2.4.90"),
        "{err}"
    );
    assert!(err.contains("gdcmconv"), "{err}");

    // A Number of Frames the pixel data cannot hold is refused before anything is
    // sized by it.
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let mut object = dicom_object::open_file(&good).unwrap();
    object.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from("2000000000"),
    ));
    let lying = dir.path().join("lying.dcm");
    object.write_to_file(&lying).unwrap();
    let err = DicomFile::open(&lying).unwrap_err().to_string();
    assert!(
        err.contains("lying.dcm") && err.contains("2000000000 frames"),
        "{err}"
    );
}

/// PackBits of one byte plane, literal runs only (what an RLE Lossless segment may be).
fn packbits_literal(plane: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in plane.chunks(128) {
        out.push((chunk.len() - 1) as u8);
        out.extend_from_slice(chunk);
    }
    if out.len() % 2 == 1 {
        out.push(0x80); // a no-op byte pads the segment to even length
    }
    out
}

#[test]
fn rle_lossless_frames_decode() {
    use dicom_core::value::PixelFragmentSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::meta::FileMetaTableBuilder;
    use dicom_object::InMemDicomObject;

    let grey = pattern(30, 20, 5);
    // One segment: a 64-byte header (segment count, then 15 offsets), then the data.
    let segment = packbits_literal(grey.as_raw());
    let mut fragment = vec![0u8; 64];
    fragment[0..4].copy_from_slice(&1u32.to_le_bytes());
    fragment[4..8].copy_from_slice(&64u32.to_le_bytes());
    fragment.extend(segment);
    let uid = "1.2.840.10008.5.1.4.1.1.6.1";
    let object = InMemDicomObject::from_element_iter([
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uid)),
        DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("2.25.42"),
        ),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("MONOCHROME2"),
        ),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(20u16)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(30u16)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PixelFragmentSequence::new(Vec::<u32>::new(), vec![fragment]),
        ),
    ])
    .with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax("1.2.840.10008.1.2.5")
            .media_storage_sop_class_uid(uid)
            .media_storage_sop_instance_uid("2.25.42"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rle.dcm");
    object.write_to_file(&path).unwrap();
    let read = DicomFile::open(&path).unwrap().frame(0).unwrap();
    assert!(read.to_luma8() == grey, "the RLE frame reads back exactly");
}
