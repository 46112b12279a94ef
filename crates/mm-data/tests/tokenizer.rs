//! mm's tokenizer against HF `CLIPTokenizer` ids recorded by scripts/make_hf_fixtures.py, and
//! the ways an HF directory can ship its tokenizer.

use std::path::{Path, PathBuf};

use mm_data::{ClipTokenizer, hf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf")
}

/// (caption, ids) pairs of the 600-caption corpus, at its context length.
fn corpus() -> (usize, Vec<(String, Vec<u32>)>) {
    let text = std::fs::read_to_string(fixtures().join("tokenizer_corpus.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let ids = serde_json::from_value(case["input_ids"].clone()).unwrap();
            (case["text"].as_str().unwrap().to_string(), ids)
        })
        .collect();
    (fixture["context_length"].as_u64().unwrap() as usize, cases)
}

fn assert_matches_corpus(tokenizer: &ClipTokenizer) {
    let (context_length, cases) = corpus();
    assert!(cases.len() >= 500);
    let mismatched: Vec<&String> = cases
        .iter()
        .filter(|(text, ids)| &tokenizer.encode(text, context_length).unwrap() != ids)
        .map(|(text, _)| text)
        .collect();
    assert!(
        mismatched.is_empty(),
        "ids differ from HF for {mismatched:?}"
    );
}

#[test]
fn ids_match_hf_clip_tokenizer_on_the_corpus() {
    assert_matches_corpus(&ClipTokenizer::openai());
}

#[test]
fn corpus_covers_the_hard_cases() {
    let (context_length, cases) = corpus();
    let any = |f: &dyn Fn(&str) -> bool| cases.iter().any(|(t, _)| f(t));
    assert!(any(&|t| t.chars().any(|c| c.is_ascii_punctuation())));
    assert!(any(&|t| t.chars().any(|c| c.is_ascii_digit())));
    assert!(any(&|t| t.contains('é')));
    assert!(any(&|t| t.contains('🐱')));
    assert!(any(&|t| t.contains('猫')));
    // Over-long captions are truncated with the end token kept.
    let truncated = cases
        .iter()
        .filter(|(_, ids)| ids[context_length - 1] == 49407 && ids[context_length - 2] != 49407)
        .count();
    assert!(truncated >= 10, "only {truncated} truncated captions");
}

#[test]
fn hf_directory_tokenizer_json_matches_hf() {
    // The fixture's tokenizer.json was saved by transformers with padding and truncation
    // switched on at 77; mm must ignore that state and still pad/truncate at any length.
    let tokenizer = hf::load_tokenizer(&fixtures().join("quick_gelu_legacy_eos")).unwrap();
    assert_matches_corpus(&tokenizer);
    assert_eq!(
        tokenizer.encode("a cat", 6).unwrap(),
        [49406, 320, 2368, 49407, 49407, 49407]
    );
}

/// An HF directory with only `vocab.json` + `merges.txt` (older exports), made from the
/// fixture's tokenizer.json.
fn vocab_merges_dir() -> tempfile::TempDir {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("quick_gelu_legacy_eos/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vocab.json"),
        json["model"]["vocab"].to_string(),
    )
    .unwrap();
    let merges: Vec<String> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::Array(pair) => format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            ),
            other => other.as_str().unwrap().to_string(),
        })
        .collect();
    std::fs::write(
        dir.path().join("merges.txt"),
        format!("#version: 0.2\n{}\n", merges.join("\n")),
    )
    .unwrap();
    dir
}

#[test]
fn vocab_and_merges_build_the_same_tokenizer() {
    let dir = vocab_merges_dir();
    assert_matches_corpus(&hf::load_tokenizer(dir.path()).unwrap());
}

#[test]
fn pad_token_comes_from_the_tokenizer_config() {
    let dir = vocab_merges_dir();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"pad_token": {"content": "!"}}"#,
    )
    .unwrap();
    let tokenizer = hf::load_tokenizer(dir.path()).unwrap();
    assert_eq!(tokenizer.pad_id(), 0);
    assert_eq!(
        tokenizer.encode("a cat", 6).unwrap(),
        [49406, 320, 2368, 49407, 0, 0]
    );

    // mm's own tokenizer.json keeps the pad token.
    let json = dir.path().join("tokenizer.json");
    std::fs::write(&json, tokenizer.to_json().unwrap()).unwrap();
    assert_eq!(ClipTokenizer::from_file(&json).unwrap().pad_id(), 0);

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"pad_token": "<pad>"}"#,
    )
    .unwrap();
    let error = hf::load_tokenizer(dir.path()).err().unwrap().to_string();
    assert!(
        error.contains("pad token `<pad>` is not in the vocabulary"),
        "{error}"
    );
}

#[test]
fn a_directory_without_a_tokenizer_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let error = hf::load_tokenizer(dir.path()).err().unwrap().to_string();
    assert!(error.contains(&dir.path().display().to_string()), "{error}");
    assert!(error.contains("vocab.json + merges.txt"), "{error}");
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, tokenizer.to_json().unwrap()).unwrap();
    let reloaded = ClipTokenizer::from_file(&path).unwrap();
    let text = "A large Purple star on a beige background";
    assert_eq!(
        reloaded.encode(text, 77).unwrap(),
        tokenizer.encode(text, 77).unwrap()
    );
    let missing = ClipTokenizer::from_file(Path::new("/nonexistent/tokenizer.json"));
    assert!(
        missing
            .err()
            .unwrap()
            .to_string()
            .contains("/nonexistent/tokenizer.json")
    );
}

#[test]
fn an_endless_caption_is_cut_before_tokenising_with_the_same_ids() {
    let tokenizer = ClipTokenizer::openai();
    let words: Vec<String> = (0..200).map(|i| format!("word{i}")).collect();
    let start = words.join(" ");
    let expected = tokenizer.encode(&start, 77).unwrap();
    // 20 MB more words, a huge whitespace run, and one enormous word: a text tokenised whole
    // would take gigabytes; cut first it is cheap and gives the same first 77 ids.
    for tail in [
        " more".repeat(4 << 20),
        format!("{}x", " \t\n".repeat(1 << 20)),
        "y".repeat(20 << 20),
    ] {
        let long = format!("{start}{tail}");
        let started = std::time::Instant::now();
        assert_eq!(tokenizer.encode(&long, 77).unwrap(), expected);
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    }
    // Short texts are untouched: a caption within the bound is tokenised as it is, and the
    // whitespace the cut collapses produces no tokens anyway.
    assert_eq!(
        tokenizer.encode("a   red\n\tcircle", 77).unwrap(),
        tokenizer.encode("a red circle", 77).unwrap()
    );
}

#[test]
fn decoding_gives_back_the_normalised_text() {
    let tokenizer = ClipTokenizer::openai();
    let (_, cases) = corpus();
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    let mut checked = 0;
    for (text, _) in &cases {
        let ids = tokenizer.encode(text, 1000).unwrap();
        let decoded = tokenizer.decode(&ids).unwrap();
        // Tokens are words and runs of punctuation: spacing between them is not kept, and
        // the tokenizer lowercases (NFC first).
        let want: String = text.to_lowercase();
        // Special tokens written in a text are dropped like the real ones.
        if want.is_ascii() && !want.contains("<|") {
            assert_eq!(squeeze(&decoded), squeeze(&want), "{text:?}");
            checked += 1;
        }
    }
    assert!(checked > 200, "{checked} ASCII captions");
    assert_eq!(
        tokenizer
            .decode(&tokenizer.encode("A red  Circle, left!", 16).unwrap())
            .unwrap(),
        "a red circle , left !"
    );
    // Non-ASCII text comes back whole (the byte-level mapping undone).
    assert_eq!(
        squeeze(
            &tokenizer
                .decode(&tokenizer.encode("café 東京", 16).unwrap())
                .unwrap()
        ),
        "café東京"
    );
}

#[test]
fn prompts_and_pad_ids() {
    let tokenizer = ClipTokenizer::openai().with_pad_id(0).unwrap();
    assert_eq!(tokenizer.pad_id(), 0);
    let ids = tokenizer.encode("a red circle", 8).unwrap();
    assert_eq!(&ids[5..], &[0, 0, 0], "padded with id 0");
    let prompt = tokenizer
        .encode_prompt("question: what colour?", 24)
        .unwrap();
    assert_eq!(prompt[0], tokenizer.sot_id());
    assert!(!prompt.contains(&tokenizer.eot_id()));
    assert_eq!(
        &prompt[1..],
        &ids_between(&tokenizer, "question: what colour?")
    );
    let err = tokenizer
        .encode_prompt("one two three four", 4)
        .unwrap_err();
    assert!(
        err.to_string().contains("nothing is left to generate"),
        "{err}"
    );
    assert!(tokenizer.encode_prompt("one two", 4).is_ok());
    let err = ClipTokenizer::openai()
        .with_pad_id(10_000_000)
        .err()
        .unwrap();
    assert!(err.to_string().contains("not in the vocabulary"), "{err}");
}

/// The ids of `text` between its start and end tokens.
fn ids_between(tokenizer: &ClipTokenizer, text: &str) -> Vec<u32> {
    let ids = tokenizer.encode(text, 77).unwrap();
    let end = ids.iter().position(|&id| id == tokenizer.eot_id()).unwrap();
    ids[1..end].to_vec()
}
