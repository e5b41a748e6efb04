//! A bad config is refused before anything starts: exit code 2 and a message
//! naming the file, the key and the problem.

mod common;
use common::*;

/// Run `applianced run` on `config` and return (exit code, stderr), checking
/// that nothing was started or created.
fn refuse(config: &str) -> (i32, String) {
    let a = Appliance::new(Some(config));
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(a.config.as_ref().unwrap())
        .arg("--data-dir")
        .arg(&a.data)
        .output()
        .unwrap();
    assert!(
        !a.data.exists(),
        "a refused config must not create the data dir"
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let file = a.config.as_ref().unwrap().display().to_string();
    assert!(
        err.contains(&file),
        "the error must name the file {file}: {err}"
    );
    (out.status.code().unwrap_or(-1), err)
}

const OK_UNIT: &str = "[instance.units.web]\ncommand = \"sleep\"\nargs = [\"1000\"]\n";

#[test]
fn an_unknown_key_is_refused_with_its_path() {
    let (code, err) = refuse(&format!(
        "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{OK_UNIT}restrat = \"always\"\n"
    ));
    assert_eq!(code, 2);
    assert!(err.contains("key `instance[0].units.web.restrat`"), "{err}");
    assert!(err.contains("unknown key `restrat`"), "{err}");
}

#[test]
fn a_wrong_type_is_refused_naming_both_types() {
    let (code, err) = refuse(&format!(
        "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{OK_UNIT}timeout_stop_sec = \"soon\"\n"
    ));
    assert_eq!(code, 2);
    assert!(
        err.contains("key `instance[0].units.web.timeout_stop_sec`"),
        "{err}"
    );
    assert!(err.contains("wrong type: found string \"soon\""), "{err}");
}

#[test]
fn a_missing_program_is_refused() {
    let (code, err) = refuse(&format!(
        "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}[instance.units.web]\ncommand = \"definitely-not-installed-xyz\"\n"
    ));
    assert_eq!(code, 2);
    assert!(err.contains("key `instance[0].units.web.command`"), "{err}");
    assert!(
        err.contains("program `definitely-not-installed-xyz` not found"),
        "{err}"
    );
}

#[test]
fn a_duplicate_instance_name_is_refused() {
    let one = format!("[[instance]]\nname = \"shop\"\n{NO_DEFAULT_UNITS}{OK_UNIT}");
    let (code, err) = refuse(&format!("{one}{one}"));
    assert_eq!(code, 2);
    assert!(err.contains("key `instance[1].name`"), "{err}");
    assert!(err.contains("duplicate instance name `shop`"), "{err}");
}

#[test]
fn a_dependency_cycle_is_refused_with_the_cycle() {
    let (code, err) = refuse(&format!(
        "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}\
         [instance.units.x]\ncommand = \"sleep\"\nrequires = [\"y\"]\n\
         [instance.units.y]\ncommand = \"sleep\"\nrequires = [\"z\"]\n\
         [instance.units.z]\ncommand = \"sleep\"\nafter = [\"x\"]\n"
    ));
    assert_eq!(code, 2);
    assert!(err.contains("dependency cycle: x -> y -> z -> x"), "{err}");
}

#[test]
fn malformed_toml_and_unknown_dependencies_are_refused() {
    let (code, err) = refuse("[[instance]\nname = \"a\"\n");
    assert_eq!(code, 2);
    assert!(err.contains("config error"), "{err}");
    let (code, err) = refuse(&format!(
        "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{OK_UNIT}requires = [\"db\"]\n"
    ));
    assert_eq!(code, 2);
    assert!(err.contains("unit `db` is not defined"), "{err}");
}

#[test]
fn check_config_validates_without_starting_anything() {
    let a = Appliance::new(Some(&format!(
        "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{OK_UNIT}"
    )));
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(a.config.as_ref().unwrap())
        .arg("--data-dir")
        .arg(&a.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("instance a"));
    assert!(!a.data.exists());
}

#[test]
fn bad_cron_entries_are_refused_naming_the_entry_key() {
    let entry = |body: &str| {
        refuse(&format!(
            "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}[instance.cron.nightly]\ncommand = \"true\"\n{body}"
        ))
    };
    let (code, err) = entry("schedule = \"* * *\"\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("key `instance[0].cron.nightly.schedule`"),
        "{err}"
    );
    assert!(err.contains("has 3 fields"), "{err}");
    let (_, err) = entry("schedule = \"0 61 * * *\"\n");
    assert!(err.contains("not a valid cron schedule"), "{err}");
    let (code, err) = entry("schedule = \"0 3 * * *\"\ntimeout = \"a while\"\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("key `instance[0].cron.nightly.timeout`"),
        "{err}"
    );
    assert!(err.contains("is not a duration"), "{err}");
    let (_, err) = entry("schedule = \"0 3 * * *\"\noverlap = \"queue\"\n");
    assert!(
        err.contains("key `instance[0].cron.nightly.overlap`"),
        "{err}"
    );
    assert!(err.contains("unknown value `queue`"), "{err}");
    let (_, err) = entry("");
    assert!(
        err.contains("cron entry `nightly` has no `schedule`"),
        "{err}"
    );
    let (_, err) = refuse(&format!(
        "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}[instance.cron.x]\ncommand = \"no-such-program-xyz\"\nschedule = \"* * * * *\"\n"
    ));
    assert!(err.contains("key `instance[0].cron.x.command`"), "{err}");
    // `cron` names the instance's cron log, so no unit may take it.
    let (_, err) = refuse(&format!(
        "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}[instance.units.cron]\ncommand = \"sleep\"\n"
    ));
    assert!(err.contains("key `instance[0].units.cron`"), "{err}");
    assert!(err.contains("reserved"), "{err}");
}

#[test]
fn a_static_network_without_an_address_is_refused_naming_system_address() {
    let (code, err) = refuse(&format!(
        "[system]\nnetwork = \"static\"\ngateway = \"192.0.2.1\"\n[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{OK_UNIT}"
    ));
    assert_eq!(code, 2);
    assert!(err.contains("key `system.address`"), "{err}");
    assert!(err.contains("needs `address`"), "{err}");
}

#[test]
fn an_unknown_system_key_and_a_bad_system_unit_override_name_their_keys() {
    let (code, err) = refuse(&format!(
        "[system]\nhostnme = \"x\"\n[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{OK_UNIT}"
    ));
    assert_eq!(code, 2);
    assert!(err.contains("key `system.hostnme`"), "{err}");
    let (code, err) = refuse(&format!(
        "[system]\nenabled = true\n[system.units.sshd]\ncommand = \"no-such-sshd\"\n[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{OK_UNIT}"
    ));
    assert_eq!(code, 2);
    assert!(err.contains("key `system.units.sshd.command`"), "{err}");
}

#[test]
fn a_bad_sysctl_name_or_value_and_an_unknown_huge_page_mode_name_their_keys() {
    for (system, key, problem) in [
        (
            "[system.sysctl]\n\"../../etc/passwd\" = \"1\"",
            "system.sysctl.../../etc/passwd",
            "not a kernel setting name",
        ),
        (
            "[system.sysctl]\n\"vm.swappiness\" = \" \"",
            "system.sysctl.vm.swappiness",
            "not a value",
        ),
        (
            "[system]\ntransparent_hugepages = \"sometimes\"",
            "system.transparent_hugepages",
            "not one of always, madvise, never, kernel",
        ),
    ] {
        let (code, err) = refuse(&format!(
            "{system}\n[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{OK_UNIT}"
        ));
        assert_eq!(code, 2, "{system}: {err}");
        assert!(err.contains(&format!("key `{key}`")), "{system}: {err}");
        assert!(err.contains(problem), "{system}: {err}");
    }
}

#[test]
fn an_instance_named_system_is_refused_as_reserved() {
    let (code, err) = refuse(&format!(
        "[[instance]]\nname = \"system\"\n{NO_DEFAULT_UNITS}{OK_UNIT}"
    ));
    assert_eq!(code, 2);
    assert!(err.contains("key `instance[0].name`"), "{err}");
    assert!(err.contains("reserved"), "{err}");
}

#[test]
fn a_warm_up_page_that_is_not_a_path_is_refused_naming_the_key() {
    for (line, key) in [
        ("warm_up = \"health\"", "warm_up"),
        ("warm_up_early = \"up\"", "warm_up_early"),
    ] {
        let (code, err) = refuse(&format!(
            "[[instance]]\nname = \"a\"\n[instance.web]\n{line}\n"
        ));
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!("key `instance[0].web.{key}`")),
            "{err}"
        );
        assert!(err.contains("must be a path starting with `/`"), "{err}");
    }
    // Neither a page nor the older flag.
    let (code, err) = refuse("[[instance]]\nname = \"a\"\n[instance.web]\nwarm_up_early = 3\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("instance[0].web.warm_up_early"), "{err}");
    assert!(err.contains("a page starting with `/`"), "{err}");
}

#[test]
fn a_nice_value_outside_0_to_19_is_refused_naming_the_key() {
    for bad in ["-5", "20"] {
        let (code, err) = refuse(&format!(
            "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{OK_UNIT}nice = {bad}\n"
        ));
        assert_eq!(code, 2, "nice = {bad}: {err}");
        assert!(err.contains("instance[0].units.web.nice"), "{err}");
        assert!(err.contains("0 (default) to 19"), "{err}");
    }
}

#[test]
fn a_unit_cpu_weight_outside_1_to_10000_is_refused_naming_the_key() {
    for bad in ["0", "10001"] {
        let (code, err) = refuse(&format!(
            "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{OK_UNIT}cpu_weight = {bad}\n"
        ));
        assert_eq!(code, 2, "cpu_weight = {bad}: {err}");
        assert!(err.contains("instance[0].units.web.cpu_weight"), "{err}");
        assert!(err.contains("out of range 1..=10000"), "{err}");
    }
}

#[test]
fn a_negative_or_overflowing_unit_duration_is_refused_naming_the_key_not_a_panic() {
    for (line, key) in [
        ("start_idle_sec = -1", "start_idle_sec"),
        // Finite, but past what a Duration holds: this used to panic.
        ("restart_sec = 1e30", "restart_sec"),
        ("timeout_stop_sec = 1e300", "timeout_stop_sec"),
    ] {
        let (code, err) = refuse(&format!(
            "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{OK_UNIT}{line}\n"
        ));
        assert_eq!(code, 2, "{line}: {err}");
        assert!(
            err.contains(&format!("instance[0].units.web.{key}")),
            "{err}"
        );
        assert!(err.contains("is not a duration in seconds"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn instance_limits_out_of_range_or_malformed_are_refused_naming_the_key() {
    for (line, key, problem) in [
        (
            "cpu_weight = 0",
            "instance[0].limits.cpu_weight",
            "out of range 1..=10000",
        ),
        (
            "io_weight = 20000",
            "instance[0].limits.io_weight",
            "out of range 1..=10000",
        ),
        (
            "memory_max = \"12X\"",
            "instance[0].limits.memory_max",
            "unknown unit `X`",
        ),
        (
            "memory_max = \"lots\"",
            "instance[0].limits.memory_max",
            "not a size",
        ),
        (
            "pids_max = \"many\"",
            "instance[0].limits.pids_max",
            "not a number or `max`",
        ),
        (
            "pids_max = 0",
            "instance[0].limits.pids_max",
            "use `max` for no limit",
        ),
        (
            "memroy_max = \"1G\"",
            "instance[0].limits.memroy_max",
            "unknown key",
        ),
    ] {
        let (code, err) = refuse(&format!(
            "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{OK_UNIT}[instance.limits]\n{line}\n"
        ));
        assert_eq!(code, 2, "{line}: {err}");
        assert!(err.contains(&format!("key `{key}`")), "{line}: {err}");
        assert!(err.contains(problem), "{line}: {err}");
    }
}
