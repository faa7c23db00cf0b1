//! `samus segment --prompts FILE.json`: several prompt sets for one image, each
//! giving its own mask, optionally with a class id for a combined label map.
//!
//! The file holds a list of entries (or an object with the list under `"prompts"`):
//!
//! ```json
//! [
//!   {"name": "lv", "class_id": 1, "points": [[120, 88], [60, 40, 0]]},
//!   {"name": "la", "class_id": 3, "box": [30, 100, 90, 160]}
//! ]
//! ```
//!
//! A point is `[x, y]` or `[x, y, label]` in image pixels (label 1 foreground, the
//! default, 0 background); `box` is `[x0, y0, x1, y1]`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use samus_model::{Label, PointPrompt, Prompts};
use serde::Deserialize;

/// Largest class id a label map can hold (8-bit PNG).
pub const MAX_CLASS_ID: u64 = 255;

/// One prompt set of a prompts file.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptEntry {
    /// A name for the output file and the report (default: the entry's index).
    pub name: String,
    /// The class id painted into the label map, if any.
    pub class_id: Option<u8>,
    /// The prompts.
    pub points: Vec<PointPrompt>,
    /// The box, if any.
    pub bbox: Option<[f32; 4]>,
}

impl PromptEntry {
    /// The entry's prompts.
    pub fn prompts(&self, multimask: bool) -> Prompts {
        Prompts::new()
            .points(self.points.iter().copied())
            .maybe_bbox(self.bbox)
            .multimask(multimask)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Option<String>,
    class_id: Option<u64>,
    #[serde(default)]
    points: Vec<Vec<f32>>,
    #[serde(rename = "box")]
    bbox: Option<[f32; 4]>,
}

/// Parses the text of a prompts file; errors name the entry.
pub fn parse_prompts(text: &str) -> Result<Vec<PromptEntry>> {
    const EXPECTED: &str =
        "expected a JSON list of {\"name\", \"class_id\", \"points\", \"box\"} entries, or {\"prompts\": [...]}";
    let value: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
    let list = match value {
        serde_json::Value::Array(list) => list,
        serde_json::Value::Object(mut object) => match object.remove("prompts") {
            Some(serde_json::Value::Array(list)) if object.is_empty() => list,
            _ => bail!("{EXPECTED}; got an object with the keys {:?}", {
                let mut keys: Vec<&String> = object.keys().collect();
                keys.sort();
                keys
            }),
        },
        other => bail!("{EXPECTED}; got {}", json_kind(&other)),
    };
    // Each entry on its own, so that an error names the entry and the field.
    let entries = list
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let name = entry
                .get("name")
                .and_then(|n| n.as_str())
                .map_or_else(String::new, |n| format!(" (`{n}`)"));
            serde_json::from_value::<RawEntry>(entry).with_context(|| format!("entry {i}{name}"))
        })
        .collect::<Result<Vec<_>>>()?;
    if entries.is_empty() {
        bail!("the file holds no prompt entries");
    }
    let mut names = std::collections::HashSet::new();
    entries
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let name = raw.name.unwrap_or_else(|| i.to_string());
            let what = format!("entry {i} (`{name}`)");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                bail!("{what}: a name may hold only letters, digits, `-`, `_` and `.`");
            }
            if !names.insert(name.clone()) {
                bail!("{what}: the name is used twice");
            }
            let class_id = match raw.class_id {
                Some(0) => bail!("{what}: class_id 0 is the background; use 1 to {MAX_CLASS_ID}"),
                Some(c) if c > MAX_CLASS_ID => {
                    bail!("{what}: class_id {c} does not fit an 8-bit label map (1 to {MAX_CLASS_ID})")
                }
                Some(c) => Some(c as u8),
                None => None,
            };
            // JSON numbers beyond f32 (1e300) arrive as infinities.
            if let Some(p) = raw.points.iter().find(|p| p.iter().any(|v| !v.is_finite())) {
                bail!("{what}: point {p:?} has a coordinate beyond what a pixel position can be");
            }
            if let Some(b) = raw.bbox.filter(|b| b.iter().any(|v| !v.is_finite())) {
                bail!("{what}: box {b:?} has a coordinate beyond what a pixel position can be");
            }
            let points = raw
                .points
                .iter()
                .map(|p| match p.as_slice() {
                    [x, y] => Ok(PointPrompt::foreground(*x, *y)),
                    [x, y, label] if *label == 1.0 => Ok(PointPrompt::foreground(*x, *y)),
                    [x, y, label] if *label == 0.0 => {
                        Ok(PointPrompt::new(*x, *y, Label::Background))
                    }
                    _ => bail!("{what}: point {p:?} is not [x, y] or [x, y, label] with label 0 or 1"),
                })
                .collect::<Result<Vec<_>>>()?;
            if points.is_empty() && raw.bbox.is_none() {
                bail!("{what}: give at least one point or a box");
            }
            Ok(PromptEntry {
                name,
                class_id,
                points,
                bbox: raw.bbox,
            })
        })
        .collect()
}

/// What kind of JSON value this is, in words.
fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Reads and parses a prompts file; errors name the file.
pub fn read_prompts(path: &Path) -> Result<Vec<PromptEntry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the prompts file {}", path.display()))?;
    parse_prompts(&text).with_context(|| format!("prompts file {}", path.display()))
}

/// Paints a label map: each pixel gets the class id of the entry with the highest
/// positive logit there (0 where no entry with a class id claims it).
///
/// `logits[i]` are entry `i`'s logits at the image size, row-major.
pub fn label_map(entries: &[PromptEntry], logits: &[Vec<f32>]) -> Vec<u8> {
    let len = logits.first().map_or(0, Vec::len);
    (0..len)
        .map(|px| {
            entries
                .iter()
                .zip(logits)
                .filter_map(|(e, l)| Some((e.class_id?, l[px])))
                .filter(|(_, logit)| *logit > 0.0)
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(0, |(class, _)| class)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// JSON values built from the prompt schema's own keys and odd numbers, so that
    /// most cases reach the field checks rather than the JSON parser.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::{json, Value};
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            prop_oneof![
                Just(-1.0f64),
                Just(0.0),
                Just(1.0),
                Just(1e300),
                Just(0.5),
                any::<f64>()
            ]
            .prop_map(|v| json!(v)),
            any::<i64>().prop_map(|v| json!(v)),
            "[a-z./ ]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            let key = prop_oneof![
                Just("name".to_string()),
                Just("class_id".to_string()),
                Just("points".to_string()),
                Just("box".to_string()),
                Just("prompts".to_string()),
                "[a-z]{1,4}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map(key, inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Any JSON is parsed into valid entries or refused with one line naming
        /// what is wrong; never a panic.
        #[test]
        fn any_json_parses_or_is_refused_in_one_line(value in json_value()) {
            match parse_prompts(&value.to_string()) {
                Ok(entries) => {
                    for e in entries {
                        prop_assert!(!e.name.is_empty());
                        prop_assert!(e.points.iter().all(|p| p.x.is_finite() && p.y.is_finite()));
                        prop_assert!(e.bbox.is_none_or(|b| b.iter().all(|v| v.is_finite())));
                    }
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    prop_assert!(!message.is_empty() && !message.contains('\n'), "{}", message);
                }
            }
        }
    }

    #[test]
    fn parses_lists_and_objects() {
        let text = r#"[{"name": "lv", "class_id": 1, "points": [[10, 20], [5, 6, 0]]},
                       {"box": [1, 2, 30, 40]}]"#;
        let e = parse_prompts(text).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].class_id, Some(1));
        assert_eq!(e[0].points[1].label, Label::Background);
        assert_eq!(e[1].name, "1");
        assert_eq!(e[1].bbox, Some([1.0, 2.0, 30.0, 40.0]));
        let wrapped = parse_prompts(r#"{"prompts": [{"points": [[1, 1]]}]}"#).unwrap();
        assert_eq!(wrapped.len(), 1);
    }

    #[test]
    fn bad_entries_are_named() {
        for (text, needle) in [
            ("[]", "no prompt entries"),
            (r#"[{"name": "a"}]"#, "entry 0 (`a`)"),
            (r#"[{"points": [[1, 2, 5]]}]"#, "label 0 or 1"),
            (r#"[{"points": [[1]]}]"#, "[x, y]"),
            (r#"[{"class_id": 0, "points": [[1, 2]]}]"#, "background"),
            (r#"[{"class_id": 300, "points": [[1, 2]]}]"#, "8-bit"),
            (r#"[{"name": "../x", "points": [[1, 2]]}]"#, "letters"),
            (
                r#"[{"name": "a", "points": [[1, 2]]}, {"name": "a", "box": [0, 0, 1, 1]}]"#,
                "twice",
            ),
            (r#"[{"pints": [[1, 2]]}]"#, "entry 0: unknown field `pints`"),
        ] {
            let err = format!("{:#}", parse_prompts(text).unwrap_err());
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn wrong_fields_and_types_name_the_entry_and_what_was_expected() {
        for (text, needles) in [
            (
                r#"[{"name": "lv", "points": [[1, 2]], "colour": 3}]"#,
                &["entry 0 (`lv`)", "unknown field `colour`"][..],
            ),
            (
                r#"[{"points": [[1, 2]]}, {"class_id": -1, "points": [[1, 2]]}]"#,
                &["entry 1", "-1"][..],
            ),
            (
                r#"[{"points": [["a", 2]]}]"#,
                &["entry 0", "string \"a\""][..],
            ),
            (r#""points""#, &["got a string"][..]),
            (r#"{"entries": []}"#, &["\"entries\""][..]),
        ] {
            let err = format!("{:#}", parse_prompts(text).unwrap_err());
            for needle in needles {
                assert!(err.contains(needle), "{text}: `{err}` lacks `{needle}`");
            }
            assert!(!err.contains("untagged"), "{err}");
        }
    }

    #[test]
    fn label_map_takes_the_most_confident_class() {
        let entries = parse_prompts(
            r#"[{"class_id": 1, "points": [[0, 0]]}, {"class_id": 2, "points": [[0, 0]]},
                {"points": [[0, 0]]}]"#,
        )
        .unwrap();
        let logits = vec![
            vec![2.0, -1.0, 0.5, -3.0],
            vec![1.0, 3.0, 0.7, -2.0],
            vec![9.0, 9.0, 9.0, 9.0], // no class id: never painted
        ];
        assert_eq!(label_map(&entries, &logits), vec![1, 2, 2, 0]);
    }
}
