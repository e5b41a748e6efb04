//! The plan's tests: config in, plan or keyed error out.

use super::*;

fn plan(toml_text: &str) -> Result<Plan, ConfigError> {
    let config = toml::from_str(toml_text).unwrap();
    let loaded = Loaded {
        config,
        source: "test.toml".into(),
        path: None,
    };
    build(&loaded, Some(Path::new("/tmp/applianced-plan-test")))
}

const BASE: &str = "[[instance]]\nname = \"a\"\n[instance.units.mariadb]\nenabled = false\n[instance.units.redis]\nenabled = false\n[instance.units.php-fpm]\nenabled = false\n[instance.units.queue-worker]\nenabled = false\n";

#[test]
fn an_exec_start_pre_step_runs_only_when_its_condition_exists_and_its_skip_path_does_not() {
    let dir = std::env::temp_dir().join(format!("applianced-pre-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let there = Some(dir.clone());
    let missing = Some(dir.join("missing"));
    let step = |condition: &Option<PathBuf>, skip: &Option<PathBuf>| RenderedPre {
        program: "true".into(),
        args: vec![],
        skip_if_exists: skip.clone(),
        condition_path_exists: condition.clone(),
    };
    assert!(step(&None, &None).applies());
    assert!(step(&there, &None).applies());
    assert!(step(&there, &missing).applies());
    assert!(!step(&missing, &None).applies(), "missing condition path");
    assert!(!step(&there, &there).applies(), "skip path exists");
    assert!(!step(&None, &there).applies(), "skip path exists");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn after_a_disabled_shipped_unit_is_ordering_only_but_after_a_typo_is_refused() {
    let p = plan(&format!(
        "{BASE}[instance.units.w]\ncommand = \"sleep\"\nafter = [\"mariadb\"]\n"
    ))
    .unwrap();
    assert!(p.instances[0].units[0].after.is_empty());
    let e = plan(&format!(
        "{BASE}[instance.units.w]\ncommand = \"sleep\"\nafter = [\"mariabd\"]\n"
    ))
    .unwrap_err();
    assert_eq!(e.key, "instance[0].units.w.after");
    assert!(e.problem.contains("`mariabd` is not defined"), "{e}");
}

#[test]
fn units_are_ordered_after_their_dependencies() {
    let p = plan(&format!(
        "{BASE}[instance.units.web]\ncommand = \"sleep\"\nrequires = [\"db\"]\n[instance.units.db]\ncommand = \"sleep\"\n"
    ))
    .unwrap();
    let names: Vec<_> = p.instances[0]
        .units
        .iter()
        .map(|u| u.name.as_str())
        .collect();
    assert_eq!(names, ["db", "web"]);
}

#[test]
fn cycle_is_refused_with_the_path() {
    let e = plan(&format!(
        "{BASE}[instance.units.x]\ncommand = \"sleep\"\nrequires = [\"y\"]\n[instance.units.y]\ncommand = \"sleep\"\nafter = [\"x\"]\n"
    ))
    .unwrap_err();
    assert!(e.problem.contains("dependency cycle"), "{e}");
    assert!(
        e.problem.contains("x -> y -> x") || e.problem.contains("y -> x -> y"),
        "{e}"
    );
}

#[test]
fn missing_program_names_the_command_key() {
    let e = plan(&format!(
        "{BASE}[instance.units.x]\ncommand = \"no-such-program-xyz\"\n"
    ))
    .unwrap_err();
    assert_eq!(e.key, "instance[0].units.x.command");
    assert!(e.problem.contains("not found"), "{e}");
}

#[test]
fn duplicate_instance_names_are_refused() {
    let e = plan(&format!("{BASE}{}", BASE)).unwrap_err();
    assert_eq!(e.key, "instance[1].name");
    assert!(e.problem.contains("duplicate instance name `a`"), "{e}");
}

#[test]
fn requiring_a_disabled_shipped_unit_is_refused() {
    let e = plan("[[instance]]\nname = \"a\"\n[instance.units.mariadb]\nenabled = false\n")
        .unwrap_err();
    assert_eq!(e.key, "instance[0].units.php-fpm.requires");
    assert!(e.problem.contains("`mariadb` is disabled"), "{e}");
}

#[test]
fn template_typo_is_a_config_error() {
    let e = plan(&format!(
        "{BASE}[instance.units.x]\ncommand = \"sleep\"\nargs = [\"{{{{ run_dri }}}}\"]\n"
    ))
    .unwrap_err();
    assert_eq!(e.key, "instance[0].units.x.args");
}
