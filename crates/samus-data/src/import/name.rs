//! Safe, stable sample names: what a source file's stem becomes in the US30K layout.

/// Digits a number in a name is padded to, so that names sort in numeric order.
const NUMBER_WIDTH: usize = 4;

/// The US30K name of a source stem: letters, digits and `-` are kept; every other run
/// of characters (spaces, brackets, dots, underscores, anything non-ASCII) becomes
/// one `_`; a number standing on its own (not touching a letter) is zero-padded to
/// four digits. The same stem always gives the
/// same name, and the name is a plain file stem on every operating system.
///
/// ```
/// use samus_data::import::safe_name;
///
/// assert_eq!(safe_name("benign (12)"), "benign_0012");
/// assert_eq!(safe_name("bus_0001-l"), "bus_0001-l");
/// assert_eq!(safe_name("007_HC"), "0007_HC");
/// ```
pub fn safe_name(stem: &str) -> String {
    let mut out = String::with_capacity(stem.len() + 4);
    let mut chars = stem.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_digit() {
            let mut digits = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(d);
                chars.next();
            }
            let after_letter = out.ends_with(|p: char| p.is_ascii_alphabetic());
            let before_letter = chars.peek().is_some_and(|n| n.is_ascii_alphabetic());
            if !after_letter && !before_letter {
                for _ in digits.len()..NUMBER_WIDTH {
                    out.push('0');
                }
            }
            out.push_str(&digits);
        } else if c.is_ascii_alphabetic() || c == '-' {
            out.push(c);
            chars.next();
        } else {
            while chars
                .peek()
                .is_some_and(|d| !(d.is_ascii_alphanumeric() || *d == '-'))
            {
                chars.next();
            }
            if !out.is_empty() && chars.peek().is_some() {
                out.push('_');
            }
        }
    }
    if out.is_empty() {
        out.push_str("unnamed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_of_the_public_releases() {
        assert_eq!(safe_name("malignant (1)"), "malignant_0001");
        assert_eq!(safe_name("normal (133)"), "normal_0133");
        assert_eq!(safe_name("12345"), "12345");
        assert_eq!(safe_name("patient0001_2CH_ED"), "patient0001_2CH_ED");
        assert_eq!(safe_name("  (3) "), "0003");
        assert_eq!(safe_name("çà"), "unnamed");
        assert_eq!(safe_name("a..b"), "a_b");
        assert_eq!(safe_name("001_2HC"), "0001_2HC");
        assert_eq!(safe_name("patient1"), "patient1");
    }

    proptest! {
        /// Every name is a non-empty plain stem of safe characters, and naming a name
        /// again changes nothing (the import is idempotent).
        #[test]
        fn names_are_plain_and_stable(stem in "\\PC{0,24}") {
            let name = safe_name(&stem);
            prop_assert!(!name.is_empty());
            prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{name}");
            prop_assert!(!name.starts_with('_') && !name.ends_with('_'), "{name}");
            prop_assert_eq!(safe_name(&name), name.clone());
        }
    }
}
