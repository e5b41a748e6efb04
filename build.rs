//! Rebuild when anything under `assets/` or `units/` changes: both trees are
//! embedded with `include_dir!`, which cargo cannot see into on stable Rust,
//! so without this a new or edited asset would ship only after an unrelated
//! source edit.
fn main() {
    println!("cargo:rerun-if-changed=assets");
    println!("cargo:rerun-if-changed=units");
}
