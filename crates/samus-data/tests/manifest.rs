//! `datasets/us30k.toml` lists the seven public sources of US30K, completely.

#[test]
fn manifest_lists_the_seven_sources() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/us30k.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    let sources = manifest["source"].as_array().unwrap();
    let names: Vec<&str> = sources
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["TN3K", "DDTI", "TG3K", "BUSI", "UDIAT", "CAMUS", "HMC-QU"]
    );
    let mut total = 0;
    for s in sources {
        for key in ["folder", "organ", "target", "licence", "obtain"] {
            assert!(
                !s[key].as_str().unwrap().is_empty(),
                "{key} of {}",
                s["name"]
            );
        }
        let classes = s["classes"].as_integer().unwrap();
        assert!(classes == 2 || classes == 4);
        total += s["images"].as_integer().unwrap();
    }
    // "About 30k images" in all.
    assert!((29_000..=31_000).contains(&total), "{total}");
}
