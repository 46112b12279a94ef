//! mm's tokenizer against ids recorded from HF `CLIPTokenizer` by scripts/make_tokenizer.py.

use mm_data::ClipTokenizer;

#[test]
fn ids_match_hf_clip_tokenizer() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/tokenizer_reference.json")).unwrap();
    let context_length = fixture["context_length"].as_u64().unwrap() as usize;
    let tokenizer = ClipTokenizer::openai();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        assert_eq!(
            tokenizer.encode(text, context_length).unwrap(),
            expected,
            "{text:?}"
        );
    }
}

#[test]
fn truncation_keeps_the_end_token_and_padding_uses_it() {
    let tokenizer = ClipTokenizer::openai();
    let eot = tokenizer.eot_id();
    let long = tokenizer.encode(&"word ".repeat(50), 8).unwrap();
    assert_eq!(long.len(), 8);
    assert_eq!(long[0], 49406);
    assert_eq!(long[7], eot);
    assert!(long[1..7].iter().all(|&id| id != eot));
    let short = tokenizer.encode("a red circle", 8).unwrap();
    assert_eq!(&short[4..], &[eot; 4]);
    assert_eq!(tokenizer.vocab_size(), 49408);
}

#[test]
fn round_trips_through_json() {
    let tokenizer = ClipTokenizer::openai();
    let dir = std::env::temp_dir().join(format!("mm-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tokenizer.to_json().unwrap()).unwrap();
    let reloaded = ClipTokenizer::from_file(&path).unwrap();
    let text = "A large Purple star on a beige background";
    assert_eq!(
        reloaded.encode(text, 77).unwrap(),
        tokenizer.encode(text, 77).unwrap()
    );
    std::fs::remove_dir_all(dir).unwrap();
    let missing = ClipTokenizer::from_file(std::path::Path::new("/nonexistent/tokenizer.json"));
    assert!(
        missing
            .err()
            .unwrap()
            .to_string()
            .contains("/nonexistent/tokenizer.json")
    );
}
