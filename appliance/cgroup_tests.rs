//! Unit tests of `cgroup.rs` (split out to keep that file to its job).

use super::*;

#[test]
fn byte_sizes_take_binary_suffixes_and_max() {
    assert_eq!(parse_bytes("512M"), Ok(Max::Value(512 << 20)));
    assert_eq!(parse_bytes("2g"), Ok(Max::Value(2 << 30)));
    assert_eq!(parse_bytes("4096"), Ok(Max::Value(4096)));
    assert_eq!(parse_bytes("max"), Ok(Max::Unlimited));
    assert!(parse_bytes("12X").unwrap_err().contains("unknown unit"));
    assert!(parse_bytes("lots").unwrap_err().contains("not a size"));
    assert!(
        parse_bytes("99999999999T")
            .unwrap_err()
            .contains("too large")
    );
}

#[test]
fn limits_render_to_the_cgroup_files_and_values() {
    let l = Limits {
        memory_max: Some(Max::Value(1 << 30)),
        cpu_weight: Some(50),
        pids_max: Some(Max::Unlimited),
        io_weight: Some(200),
    };
    assert_eq!(
        l.files(),
        vec![
            ("memory", "memory.max", "1073741824".to_string()),
            ("cpu", "cpu.weight", "50".to_string()),
            ("pids", "pids.max", "max".to_string()),
            ("io", "io.weight", "default 200".to_string()),
        ]
    );
}

/// A plain directory stands in for the cgroup tree: the kernel makes
/// `cpu.weight` in a leaf when the cpu controller is on, which this
/// host's hybrid v1/v2 tree does not offer (the VM test checks the real
/// one, tests/vm_isolation.rs).
#[test]
fn a_unit_leaf_gets_its_cpu_weight_and_a_removed_weight_returns_to_the_default() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = InstanceCgroup {
        dir: tmp.path().to_path_buf(),
        not_enforced: Vec::new(),
    };
    std::fs::create_dir(tmp.path().join("queue-worker")).unwrap();
    let weight = tmp.path().join("queue-worker/cpu.weight");
    std::fs::write(&weight, "100\n").unwrap();
    let leaf = cg.leaf("queue-worker", Some(20)).unwrap();
    assert_eq!(leaf, tmp.path().join("queue-worker"));
    assert_eq!(std::fs::read_to_string(&weight).unwrap(), "20");
    cg.leaf("queue-worker", None).unwrap();
    assert_eq!(std::fs::read_to_string(&weight).unwrap(), "100");
    // No cpu controller: the leaf is made, no weight file invented.
    let bare = cg.leaf("php-fpm", Some(50)).unwrap();
    assert!(bare.is_dir());
    assert!(!bare.join("cpu.weight").exists());
}

#[test]
fn cpu_stat_usage_is_read_by_key() {
    let s = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
    assert_eq!(keyed(s, "usage_usec"), Some(1234));
    assert_eq!(keyed(s, "user_usec"), Some(1000));
    assert_eq!(keyed(s, "nope"), None);
}

#[test]
fn root_names_differ_per_data_dir_and_are_plain_for_the_default() {
    let d = Path::new("/var/lib/applianced");
    assert_eq!(root_name(d, d), "applianced");
    let a = root_name(Path::new("/tmp/a"), d);
    let b = root_name(Path::new("/tmp/b"), d);
    assert!(a.starts_with("applianced-") && a != b, "{a} {b}");
}
