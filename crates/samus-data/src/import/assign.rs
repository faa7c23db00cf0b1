//! Putting samples into train, validation and test: by patient, never one patient on
//! two sides, seeded; the roles a release or a folds file fixes are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};

use super::item::{Role, SourceItem};
use crate::{Error, Result};

/// Fractions of the samples for validation and test, and the seed of the draw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SplitPlan {
    /// Validation fraction of all samples.
    pub val: f64,
    /// Test fraction of all samples.
    pub test: f64,
    /// Seed of the shuffle of patients.
    pub seed: u64,
}

/// Gives every item a role. Items of one patient (or, without one, each item on its
/// own) form a group; a group with a fixed role keeps it for all its items. The free
/// groups are shuffled with `plan.seed` and dealt one by one to the split furthest
/// below its share (`plan.test` and `plan.val` of all items, training the rest).
pub(crate) fn assign_roles(items: &mut [SourceItem], plan: SplitPlan) {
    let n = items.len();
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let key = match &item.patient {
            Some(p) => format!("patient {p}"),
            None => format!("sample {}", item.name),
        };
        groups.entry(key).or_default().push(i);
    }
    let mut counts: BTreeMap<Role, usize> = BTreeMap::new();
    let mut free: Vec<&Vec<usize>> = Vec::new();
    for members in groups.values() {
        // The strictest fixed role of the group (test over val over train) holds
        // for all of it, so that a patient never straddles two splits.
        match members.iter().filter_map(|&i| items[i].role).max() {
            Some(role) => {
                for &i in members {
                    items[i].role = Some(role);
                }
                *counts.entry(role).or_default() += members.len();
            }
            None => free.push(members),
        }
    }
    free.shuffle(&mut StdRng::seed_from_u64(plan.seed));
    let target = |fraction: f64| (fraction * n as f64).round() as usize;
    let (test_target, val_target) = (target(plan.test), target(plan.val));
    let targets = [
        (Role::Test, test_target),
        (Role::Val, val_target),
        (Role::Train, n.saturating_sub(test_target + val_target)),
    ];
    for members in free {
        // The split furthest below its share takes the group (ties: test, then
        // validation), so that a few large patients are dealt out evenly too.
        let deficit = |(role, goal): (Role, usize)| {
            goal as i64 - counts.get(&role).copied().unwrap_or(0) as i64
        };
        let mut best = targets[0];
        for t in &targets[1..] {
            if deficit(*t) > deficit(best) {
                best = *t;
            }
        }
        let role = best.0;
        for &i in members {
            items[i].role = Some(role);
        }
        *counts.entry(role).or_default() += members.len();
    }
}

/// Fixes roles from a folds file, keyed by the items' release ids:
/// - a CSV in BUS-BRA's form (`ID`, then `valid_1` ... `valid_K` columns; `NaN` in
///   column `valid_<fold>` marks the test fold): the fold's test samples become
///   test; validation is drawn later by patient, because the release's 0/1
///   validation flags divide some cases between training and validation;
/// - a JSON object with `train`, `val` and/or `test` lists (TN3K's and TG3K's
///   `*-trainval*.json`): file stems, or numbers, which are 0-based positions in the
///   release's numerically sorted image list.
///
/// Returns the release ids the file names that no item has.
pub(crate) fn apply_folds(
    items: &mut [SourceItem],
    file: &Path,
    fold: Option<u32>,
) -> Result<Vec<String>> {
    let bad = |reason: String| Error::Source {
        path: file.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(file).map_err(|source| Error::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let mut roles: BTreeMap<String, Role> = BTreeMap::new();
    let is_json = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("is not JSON: {e}")))?;
        let by_index: BTreeMap<usize, &str> = items
            .iter()
            .filter_map(|it| it.release_index.map(|i| (i, it.release_id.as_str())))
            .collect();
        let mut found = false;
        for (key, role) in [
            ("train", Role::Train),
            ("val", Role::Val),
            ("test", Role::Test),
        ] {
            let Some(list) = value.get(key) else { continue };
            found = true;
            let list = list
                .as_array()
                .ok_or_else(|| bad(format!("`{key}` is not a list")))?;
            for entry in list {
                let id = match entry {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => {
                        let i = n
                            .as_u64()
                            .ok_or_else(|| bad(format!("`{key}` entry {n} is not a position")))?;
                        match by_index.get(&(i as usize)) {
                            Some(id) => id.to_string(),
                            None => format!("#{i}"),
                        }
                    }
                    other => {
                        return Err(bad(format!(
                            "`{key}` entry {other} is neither a name nor a position"
                        )))
                    }
                };
                roles.insert(id, role);
            }
        }
        if !found {
            return Err(bad("has none of the lists `train`, `val`, `test`".into()));
        }
    } else {
        let fold =
            fold.ok_or_else(|| bad("is a folds CSV: choose the test fold with --fold K".into()))?;
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let headers = reader
            .headers()
            .map_err(|e| bad(format!("has no readable header: {e}")))?
            .clone();
        let column = |name: &str| headers.iter().position(|h| h.trim() == name);
        let id_col = column("ID").ok_or_else(|| bad("has no `ID` column".into()))?;
        let fold_name = format!("valid_{fold}");
        let folds = headers.iter().filter(|h| h.starts_with("valid_")).count();
        let fold_col = column(&fold_name).ok_or_else(|| {
            bad(format!(
                "has no `{fold_name}` column (it has {folds} folds)"
            ))
        })?;
        for (line, record) in reader.records().enumerate() {
            let record = record.map_err(|e| bad(format!("line {}: {e}", line + 2)))?;
            let (Some(id), Some(flag)) = (record.get(id_col), record.get(fold_col)) else {
                return Err(bad(format!("line {}: too few columns", line + 2)));
            };
            if flag.trim().eq_ignore_ascii_case("nan") {
                roles.insert(id.trim().to_string(), Role::Test);
            } else if !matches!(flag.trim(), "0" | "1") {
                return Err(bad(format!(
                    "line {}: `{fold_name}` is `{flag}`, not 0, 1 or NaN",
                    line + 2
                )));
            }
        }
    }
    let known: BTreeSet<&str> = items.iter().map(|it| it.release_id.as_str()).collect();
    let unknown: Vec<String> = roles
        .keys()
        .filter(|id| !known.contains(id.as_str()))
        .cloned()
        .collect();
    for item in items.iter_mut() {
        if let Some(&role) = roles.get(&item.release_id) {
            item.role = Some(role);
        }
    }
    Ok(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn items(patients: &[&str]) -> Vec<SourceItem> {
        patients
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut it =
                    SourceItem::with_masks(&format!("img{i}"), PathBuf::from("x.png"), vec![]);
                it.patient = (!p.is_empty()).then(|| p.to_string());
                it.release_index = Some(i);
                it
            })
            .collect()
    }

    #[test]
    fn patients_never_straddle_splits_and_fractions_hold() {
        let patients: Vec<String> = (0..200).map(|i| format!("p{}", i / 3)).collect();
        let refs: Vec<&str> = patients.iter().map(String::as_str).collect();
        let mut a = items(&refs);
        a[5].role = Some(Role::Test);
        assign_roles(
            &mut a,
            SplitPlan {
                val: 0.1,
                test: 0.2,
                seed: 7,
            },
        );
        let mut sides: BTreeMap<&str, BTreeSet<Role>> = BTreeMap::new();
        for it in &a {
            sides
                .entry(it.patient.as_deref().unwrap())
                .or_default()
                .insert(it.role.unwrap());
        }
        assert!(sides.values().all(|s| s.len() == 1));
        // Item 5's patient (items 3, 4, 5) follows its fixed test role.
        assert!((3..6).all(|i| a[i].role == Some(Role::Test)));
        let count = |r| a.iter().filter(|it| it.role == Some(r)).count();
        // Within one patient (3 images) of the share.
        assert!(count(Role::Test).abs_diff(40) <= 3, "{}", count(Role::Test));
        assert!(count(Role::Val).abs_diff(20) <= 3, "{}", count(Role::Val));
        // The same seed gives the same split; another seed another.
        let mut b = items(&refs);
        b[5].role = Some(Role::Test);
        assign_roles(
            &mut b,
            SplitPlan {
                val: 0.1,
                test: 0.2,
                seed: 7,
            },
        );
        assert!(a.iter().zip(&b).all(|(x, y)| x.role == y.role));
        let mut c = items(&refs);
        assign_roles(
            &mut c,
            SplitPlan {
                val: 0.1,
                test: 0.2,
                seed: 8,
            },
        );
        assert!(a.iter().zip(&c).any(|(x, y)| x.role != y.role));
    }

    #[test]
    fn a_few_large_patients_still_leave_training_samples() {
        let mut a = items(&["a", "a", "a", "a", "b", "b", "b"]);
        assign_roles(
            &mut a,
            SplitPlan {
                val: 0.1,
                test: 0.2,
                seed: 1,
            },
        );
        assert!(a.iter().any(|it| it.role == Some(Role::Train)));
    }

    #[test]
    fn folds_files_fix_roles() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("5-fold-cv.csv");
        std::fs::write(&csv, "ID,Pathology,kFold,valid_1,valid_2\nimg0,benign,1,NaN,1\nimg1,benign,2,0,NaN\nimg9,x,1,NaN,1\n").unwrap();
        let mut a = items(&["", "", ""]);
        let unknown = apply_folds(&mut a, &csv, Some(2)).unwrap();
        assert!(unknown.is_empty());
        assert_eq!(
            [a[0].role, a[1].role, a[2].role],
            [None, Some(Role::Test), None]
        );
        assert_eq!(
            apply_folds(&mut a, &csv, Some(1)).unwrap(),
            vec!["img9".to_string()]
        );
        let err = apply_folds(&mut a, &csv, Some(3)).unwrap_err().to_string();
        assert!(
            err.contains("5-fold-cv.csv") && err.contains("valid_3") && err.contains("2 folds"),
            "{err}"
        );
        assert!(apply_folds(&mut a, &csv, None)
            .unwrap_err()
            .to_string()
            .contains("--fold"));

        let json = dir.path().join("trainval.json");
        std::fs::write(&json, r#"{"train": [0, "img2"], "val": [1]}"#).unwrap();
        let mut b = items(&["", "", ""]);
        apply_folds(&mut b, &json, None).unwrap();
        assert_eq!(
            [b[0].role, b[1].role, b[2].role],
            [Some(Role::Train), Some(Role::Val), Some(Role::Train)]
        );
        std::fs::write(&json, r#"{"train": {"a": 1}}"#).unwrap();
        assert!(apply_folds(&mut b, &json, None)
            .unwrap_err()
            .to_string()
            .contains("not a list"));
    }
}
