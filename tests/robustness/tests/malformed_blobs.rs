//! Every malformed blob in tests/robustness/malformed/ is rejected with a clear error, by the schema
//! reader and by delegate init; the valid base parses and runs.

use mobilemoe_executorch::ErrorCode;
use mobilemoe_fuzz_harness::delegate::Delegate;
use mobilemoe_robustness::{base, cases};
use std::path::Path;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("malformed")
}

#[test]
fn base_is_valid_and_runs() {
    let b = base().to_bytes();
    let g = mobilemoe_schema::parse(&b).expect("base blob");
    let d = Delegate::from_vec(b.clone()).unwrap();
    mobilemoe_fuzz_harness::blob::run_delegate(&d, &g, 1);
}

/// The generator's cases (rebuilt in memory from the current writer/quantizer) are rejected with the
/// expected message; `REGEN_MALFORMED=1` rewrites the checked-in files and EXPECTED.tsv from them.
#[test]
fn generator_cases_are_rejected() {
    let regen = std::env::var_os("REGEN_MALFORMED").is_some();
    let mut expected = String::new();
    for (name, bytes, msg) in cases() {
        let e = mobilemoe_schema::parse(&bytes).err().unwrap_or_else(|| panic!("{name}: accepted")).to_string();
        assert!(e.contains(msg), "{name}: {e:?} does not mention {msg:?}");
        if regen {
            std::fs::write(dir().join(format!("{name}.mmoe")), &bytes).unwrap();
        }
        expected.push_str(&format!("{name}.mmoe\t{msg}\n"));
    }
    if regen {
        std::fs::write(dir().join("EXPECTED.tsv"), &expected).unwrap();
    }
}

#[test]
fn every_malformed_blob_is_rejected_with_a_clear_error() {
    let table = std::fs::read_to_string(dir().join("EXPECTED.tsv")).expect("EXPECTED.tsv (REGEN_MALFORMED=1)");
    let mut n = 0;
    let mut codes = [0usize; 2]; // InvalidProgram, NotSupported
    for line in table.lines() {
        let (file, msg) = line.split_once('\t').unwrap();
        let bytes = std::fs::read(dir().join(file)).unwrap();
        let err = mobilemoe_schema::parse(&bytes).err().unwrap_or_else(|| panic!("{file}: accepted"));
        let text = err.to_string();
        assert!(text.contains(msg), "{file}: error {text:?} does not mention {msg:?}");
        let derr = Delegate::from_vec(bytes).err().unwrap_or_else(|| panic!("{file}: delegate init accepted it"));
        assert!(derr.contains(msg), "{file}: delegate error {derr:?}");
        // The code ExecuTorch gets: a version this build does not read is NotSupported, anything
        // else about the blob InvalidProgram.
        let want =
            if matches!(err, mobilemoe_schema::BlobError::BadVersion { .. }) { ErrorCode::NotSupported } else { ErrorCode::InvalidProgram };
        assert_eq!(derr.code, want, "{file}: {derr}");
        codes[(want == ErrorCode::NotSupported) as usize] += 1;
        println!("{file:45} -> {text}");
        n += 1;
    }
    assert!(n >= 40, "only {n} cases");
    assert!(codes[0] >= 40 && codes[1] >= 2, "{codes:?}");
    // The documents quote the number of malformed blobs: keep them true.
    let count = std::fs::read_dir(dir()).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "mmoe")).count();
    assert_eq!(count, n, "EXPECTED.tsv lists {n} blobs, the directory holds {count}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for doc in ["README.md", "docs/robustness.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (i, _) in text.match_indices(" malformed") {
            let before = text[..i].trim_end();
            let num: String = before.chars().rev().take_while(|c| c.is_ascii_digit()).collect::<Vec<_>>().into_iter().rev().collect();
            if let Ok(v) = num.parse::<usize>() {
                assert_eq!(v, n, "{doc} says {v} malformed blobs, there are {n}");
            }
        }
        for (i, m) in text.match_indices("Malformed blobs (") {
            let num: String = text[i + m.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
            assert_eq!(num.parse::<usize>().ok(), Some(n), "{doc} says Malformed blobs ({num}), there are {n}");
        }
    }
}
