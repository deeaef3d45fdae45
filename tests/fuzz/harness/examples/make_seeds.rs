//! Writes the seed corpora: valid blobs from the schema crate's writer (tests/fuzz/corpus/blob_parse),
//! and any .pte files given on the command line (tests/fuzz/corpus/pte_inspect).
//! `cargo run --example make_seeds [--] [file.pte ...]`

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let dir = root.join("blob_parse");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, g) in mobilemoe_fuzz_harness::blob::seed_graphs() {
        let bytes = g.to_bytes();
        mobilemoe_schema::parse(&bytes).expect("seed blob must be valid");
        std::fs::write(dir.join(format!("{name}.mmoe")), &bytes).unwrap();
        println!("{name}: {} bytes", bytes.len());
    }
    let pdir = root.join("pte_inspect");
    std::fs::create_dir_all(&pdir).unwrap();
    for p in std::env::args().skip(1) {
        let p = Path::new(&p);
        let bytes = std::fs::read(p).unwrap();
        std::fs::write(pdir.join(p.file_name().unwrap()), &bytes).unwrap();
        println!("{}: {} bytes", p.display(), bytes.len());
    }
}
