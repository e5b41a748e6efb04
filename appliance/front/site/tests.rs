//! Tests for `site`: every route kind, both PHP modes, and the ways out of the
//! root a hostile path or symlink might try. Each test builds its own tree.

use super::*;
use std::os::unix::fs::symlink;
use tempfile::TempDir;

/// `DIR/app/public` with `index.php`, plus the given files (parents created).
fn app(files: &[&str]) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("app/public");
    fs::create_dir_all(&public).unwrap();
    fs::write(public.join("index.php"), "<?php echo 'front';").unwrap();
    add(&public, files);
    (dir, public)
}

fn add(public: &Path, files: &[&str]) {
    for f in files {
        let p = public.join(f);
        if f.ends_with('/') {
            fs::create_dir_all(&p).unwrap();
        } else {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, format!("content of {f}")).unwrap();
        }
    }
}

fn fc(public: &Path) -> Site {
    Site::new(public, PhpMode::FrontController).unwrap()
}

fn any(public: &Path) -> Site {
    Site::new(public, PhpMode::AnyScript).unwrap()
}

#[track_caller]
fn assert_static(site: &Site, path: &str, public: &Path, rel: &str) {
    match site.resolve(path, None) {
        Route::Static { file, meta } => {
            let want = fs::canonicalize(public.join(rel)).unwrap();
            assert_eq!(file, want);
            assert_eq!(meta.len(), fs::metadata(&want).unwrap().len());
        }
        other => panic!("expected static {rel}, got {other:?}"),
    }
}

#[track_caller]
fn assert_php(site: &Site, path: &str, public: &Path, name: &str, info: &str) {
    match site.resolve(path, None) {
        Route::Php {
            script_filename,
            script_name,
            path_info,
            document_uri,
        } => {
            assert_eq!(
                script_filename,
                fs::canonicalize(public).unwrap().join(&name[1..])
            );
            assert_eq!(script_name, name);
            assert_eq!(path_info, info);
            assert_eq!(document_uri, format!("{name}{info}"));
        }
        other => panic!("expected php {name}{info}, got {other:?}"),
    }
}

#[track_caller]
fn assert_404(site: &Site, path: &str) {
    let route = site.resolve(path, None);
    assert!(matches!(route, Route::NotFound), "{path}: {route:?}");
    assert_eq!(route.error_status(), Some(404));
}

#[track_caller]
fn assert_bad(route: Route) {
    assert!(
        matches!(route, Route::BadRequest(_)),
        "expected 400, got {route:?}"
    );
    assert_eq!(route.error_status(), Some(400));
}

#[test]
fn existing_file_is_static_with_its_metadata() {
    let (_d, public) = app(&["css/app.css"]);
    assert_static(&fc(&public), "/css/app.css", &public, "css/app.css");
}

#[test]
fn missing_path_runs_the_front_controller_without_path_info() {
    let (_d, public) = app(&[]);
    for site in [fc(&public), any(&public)] {
        assert_php(&site, "/users/5/edit", &public, "/index.php", "");
    }
}

#[test]
fn missing_path_without_front_controller_is_not_found() {
    let (_d, public) = app(&["robots.txt"]);
    fs::remove_file(public.join("index.php")).unwrap();
    assert_404(&fc(&public), "/users/5");
    assert_404(&any(&public), "/");
    assert_static(&fc(&public), "/robots.txt", &public, "robots.txt");
}

#[test]
fn root_and_index_php_run_the_front_controller() {
    let (_d, public) = app(&[]);
    for site in [fc(&public), any(&public)] {
        assert_php(&site, "/", &public, "/index.php", "");
        assert_php(&site, "/index.php", &public, "/index.php", "");
        assert_php(&site, "/index.php/api/x/", &public, "/index.php", "/api/x/");
    }
}

#[test]
fn other_existing_php_is_not_found_in_front_controller_mode_but_runs_in_any_script_mode() {
    let (_d, public) = app(&["other.php", "admin/tool.php"]);
    assert_404(&fc(&public), "/other.php");
    assert_404(&fc(&public), "/admin/tool.php");
    assert_php(&any(&public), "/other.php", &public, "/other.php", "");
    assert_php(
        &any(&public),
        "/admin/tool.php",
        &public,
        "/admin/tool.php",
        "",
    );
}

#[test]
fn missing_php_script_is_not_found_in_both_modes() {
    let (_d, public) = app(&[]);
    assert_404(&fc(&public), "/wp-login.php");
    assert_404(&any(&public), "/wp-login.php");
    assert_404(&any(&public), "/nope.php/x");
}

#[test]
fn path_info_is_split_at_the_first_php_segment_in_any_script_mode() {
    let (_d, public) = app(&["foo.php", "a/b.php/"]);
    assert_php(&any(&public), "/foo.php/bar", &public, "/foo.php", "/bar");
    assert_php(
        &any(&public),
        "/foo.php/x.php/y/",
        &public,
        "/foo.php",
        "/x.php/y/",
    );
    // A directory named like a script is not a script (try_files =404).
    assert_404(&any(&public), "/a/b.php/c");
}

#[test]
fn php_with_path_info_falls_through_to_front_controller_in_front_controller_mode() {
    let (_d, public) = app(&["foo.php"]);
    assert_php(&fc(&public), "/foo.php/bar", &public, "/index.php", "");
}

#[test]
fn php_source_in_other_case_is_never_served() {
    let (_d, public) = app(&["Secret.PHP", "x.Php"]);
    for site in [fc(&public), any(&public)] {
        assert_404(&site, "/Secret.PHP");
        assert_404(&site, "/x.Php");
    }
}

#[test]
fn directory_without_slash_redirects_with_308_keeping_the_query() {
    let (_d, public) = app(&["docs/", "my dir/"]);
    match fc(&public).resolve("/docs", Some("page=2&x=%20")) {
        Route::Redirect { location, status } => {
            assert_eq!(status, 308);
            assert_eq!(location, "/docs/?page=2&x=%20");
        }
        other => panic!("{other:?}"),
    }
    match fc(&public).resolve("//./my%20dir", Some("")) {
        Route::Redirect { location, .. } => assert_eq!(location, "/my%20dir/"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn redirect_location_cannot_inject_headers_or_leave_the_host() {
    let (_d, public) = app(&["docs/"]);
    match fc(&public).resolve("//docs", Some("a\r\nSet-Cookie: x#y")) {
        Route::Redirect { location, .. } => {
            assert_eq!(location, "/docs/?a%0D%0ASet-Cookie:%20x%23y")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn file_with_trailing_slash_is_not_the_file() {
    let (_d, public) = app(&["app.txt"]);
    assert_php(&fc(&public), "/app.txt/", &public, "/index.php", "");
}

#[test]
fn nested_index_php_falls_through_in_front_controller_mode_and_runs_in_any_script_mode() {
    let (_d, public) = app(&["blog/index.php", "empty/"]);
    assert_php(&fc(&public), "/blog/", &public, "/index.php", "");
    assert_php(&any(&public), "/blog/", &public, "/blog/index.php", "");
    // A directory with no index.php gets the front controller in both modes.
    assert_php(&any(&public), "/empty/", &public, "/index.php", "");
}

#[test]
fn storage_php_and_html_are_denied_even_when_missing() {
    let (_d, public) = app(&["storage/x.php", "storage/a/b.html", "storage/x.css"]);
    for site in [fc(&public), any(&public)] {
        for path in [
            "/storage/x.php",
            "/storage/a/b.html",
            "/storage/X.HTML",
            "/storage/gone.php",
            "/storage/x.php/y",
        ] {
            let route = site.resolve(path, None);
            assert!(matches!(route, Route::Deny), "{path}: {route:?}");
            assert_eq!(route.error_status(), Some(403));
        }
        assert_static(&site, "/storage/x.css", &public, "storage/x.css");
    }
}

#[test]
fn dotfiles_are_not_found_even_when_they_exist() {
    let (_d, public) = app(&[".env", ".git/config", "a/.hidden"]);
    for path in [
        "/.env",
        "/.git/config",
        "/.git/",
        "/a/.hidden",
        "/a/%2ehidden",
    ] {
        assert_404(&fc(&public), path);
    }
}

#[test]
fn well_known_is_served_but_dotfiles_below_it_are_not() {
    let (_d, public) = app(&[".well-known/acme-challenge/t", ".well-known/.secret"]);
    assert_static(
        &fc(&public),
        "/.well-known/acme-challenge/t",
        &public,
        ".well-known/acme-challenge/t",
    );
    assert_404(&fc(&public), "/.well-known/.secret");
}

#[test]
fn dot_dot_above_the_root_is_a_bad_request() {
    let (_d, public) = app(&[]);
    let site = fc(&public);
    for path in ["/../etc/passwd", "/a/../../etc/passwd", "/.."] {
        assert_bad(site.resolve(path, None));
    }
}

#[test]
fn encoded_dot_dot_cannot_escape_the_root() {
    let (_d, public) = app(&[]);
    let site = fc(&public);
    for path in [
        "/%2e%2e/etc/passwd",
        "/%2E%2E/etc/passwd",
        "/.%2e/etc/passwd",
    ] {
        assert_bad(site.resolve(path, None));
    }
}

#[test]
fn encoded_slash_is_a_separator_so_it_cannot_hide_dot_dot() {
    let (_d, public) = app(&["css/site.css"]);
    let site = fc(&public);
    for path in [
        "/%2e%2e%2fetc/passwd",
        "/..%2f..%2fetc/passwd",
        "/css%2f..%2f..%2fetc",
    ] {
        assert_bad(site.resolve(path, None));
    }
    assert_static(&site, "/css%2Fsite.css", &public, "css/site.css");
}

#[test]
fn backslashes_raw_or_encoded_are_a_bad_request() {
    let (_d, public) = app(&[]);
    let site = fc(&public);
    assert_bad(site.resolve("/a/..\\..\\x", None));
    assert_bad(site.resolve("/x%5c..%5c", None));
    assert_bad(site.resolve("/x%5C..%5Cetc", None));
}

#[test]
fn nul_control_chars_bad_escapes_and_non_utf8_are_a_bad_request() {
    let (_d, public) = app(&[]);
    let site = fc(&public);
    for path in [
        "/%00",
        "/a%00.txt",
        "/a\0b",
        "/a%0d%0ab",
        "/a\tb",
        "/%7f",
        "/%zz",
        "/%2",
        "/%",
        "/a%g1",
        "/%c0%ae%c0%ae/etc",
        "/%ff",
        "",
        "relative/path",
        "*",
    ] {
        assert_bad(site.resolve(path, None));
    }
}

#[test]
fn dot_segments_and_double_slashes_inside_the_root_are_resolved() {
    let (_d, public) = app(&["app.txt", "css/site.css"]);
    let site = fc(&public);
    assert_static(&site, "/css/../app.txt", &public, "app.txt");
    assert_static(&site, "//css///./site.css", &public, "css/site.css");
    assert_static(&site, "/x/y/../../css/site.css", &public, "css/site.css");
    assert_static(&site, "/caf%C3%A9/../app.txt", &public, "app.txt");
}

#[test]
fn symlink_out_of_the_root_is_not_found_and_never_serves_etc() {
    let (_d, public) = app(&[]);
    symlink("/etc", public.join("etc")).unwrap();
    symlink("/etc/hostname", public.join("hostname.txt")).unwrap();
    let site = fc(&public);
    for path in [
        "/etc/hostname",
        "/etc/",
        "/etc",
        "/hostname.txt",
        "/etc/nope",
    ] {
        assert_404(&site, path);
    }
}

#[test]
fn symlink_to_the_app_dir_above_public_is_not_found() {
    let (dir, public) = app(&[]);
    fs::write(dir.path().join("app/.env"), "APP_KEY=secret").unwrap();
    fs::write(dir.path().join("app/composer.json"), "{}").unwrap();
    symlink("..", public.join("up")).unwrap();
    assert_404(&fc(&public), "/up/composer.json");
    assert_404(&fc(&public), "/up/public/up/composer.json");
}

#[test]
fn symlinks_to_files_and_dirs_inside_the_root_work() {
    let (_d, public) = app(&["build/assets/app-1.js"]);
    symlink("build/assets/app-1.js", public.join("app.js")).unwrap();
    symlink("build/assets", public.join("assets")).unwrap();
    let site = fc(&public);
    assert_static(&site, "/app.js", &public, "build/assets/app-1.js");
    assert_static(&site, "/assets/app-1.js", &public, "build/assets/app-1.js");
    // A symlinked dir still gets the slash redirect, and a miss through it the
    // front controller.
    assert!(matches!(
        site.resolve("/assets", None),
        Route::Redirect { .. }
    ));
    assert_php(&site, "/assets/missing.js", &public, "/index.php", "");
}

#[test]
fn symlink_onto_a_hidden_file_inside_the_root_is_not_found() {
    let (_d, public) = app(&[".env"]);
    symlink(".env", public.join("env.txt")).unwrap();
    assert_404(&fc(&public), "/env.txt");
}

#[test]
fn laravel_storage_link_works_only_when_its_target_is_allowed() {
    let (dir, public) = app(&[]);
    let target = dir.path().join("app/storage/app/public");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("avatar.png"), "png").unwrap();
    symlink(&target, public.join("storage")).unwrap();

    assert_404(&fc(&public), "/storage/avatar.png");
    let site = fc(&public).allow_symlinks_into(&target).unwrap();
    match site.resolve("/storage/avatar.png", None) {
        Route::Static { file, .. } => {
            assert_eq!(file, fs::canonicalize(target.join("avatar.png")).unwrap())
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        site.resolve("/storage/evil.php", None),
        Route::Deny
    ));
}

#[test]
fn special_files_are_not_found() {
    let (_d, public) = app(&[]);
    nix::unistd::mkfifo(
        &public.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert_404(&fc(&public), "/pipe");
}

#[test]
fn site_root_must_be_an_existing_directory() {
    let (dir, public) = app(&[]);
    assert!(matches!(
        Site::new(public.join("index.php"), PhpMode::FrontController),
        Err(SiteError::NotADirectory(_))
    ));
    assert!(matches!(
        Site::new(dir.path().join("nope"), PhpMode::AnyScript),
        Err(SiteError::Io { .. })
    ));
    let site = any(&public);
    assert_eq!(site.root(), fs::canonicalize(&public).unwrap());
    assert_eq!(site.mode(), PhpMode::AnyScript);
}
