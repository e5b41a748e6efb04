//! Backups end to end: the real daemon with a real MariaDB, a real
//! S3-compatible server (moto's, installed by scripts/setup.sh), driven
//! through `applianced backup ...` as an operator would.

mod common;
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(120);
const BUCKET: &str = "backups";

/// A moto S3 server on a free loopback port, killed on drop.
struct S3 {
    child: Child,
    port: u16,
    /// The python beside moto_server (it has boto3): an S3 client for checks.
    python: PathBuf,
}

impl S3 {
    fn start() -> S3 {
        let program = [
            std::env::var("MOTO_SERVER").unwrap_or_default(),
            "/opt/applianced-test/moto/bin/moto_server".into(),
        ]
        .into_iter()
        .find(|p| !p.is_empty() && Path::new(p).is_file())
        .or_else(|| appliance::plan::find_program("moto_server").map(|p| p.display().to_string()))
        .expect("moto_server (the S3 server of these tests) is missing: run `bash scripts/setup.sh`, which installs moto[server] into /opt/applianced-test/moto");
        let port = free_port();
        let python = Path::new(&program)
            .parent()
            .map(|d| d.join("python"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("python3"));
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let s3 = S3 {
            child,
            port,
            python,
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "moto_server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (code, _) = sh(&format!("curl -sf -X PUT http://127.0.0.1:{port}/{BUCKET}"));
        assert_eq!(code, 0, "cannot create the test bucket");
        s3
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Run python with boto3's client `s3` (signed, as the backups' owner).
    fn boto(&self, code: &str) -> (i32, String) {
        let script = format!(
            "import boto3, sys\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='testing', \
             aws_secret_access_key='testing', region_name='us-east-1')\n{code}\n",
            self.endpoint()
        );
        let out = Command::new(&self.python)
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn exists(&self, key: &str) -> bool {
        let (code, out) = self.boto(&format!(
            "try:\n    s3.head_object(Bucket='{BUCKET}', Key='{key}')\nexcept Exception:\n    sys.exit(3)"
        ));
        assert!(code == 0 || code == 3, "boto3 failed: {out}");
        code == 0
    }

    fn overwrite(&self, key: &str, body: &str) {
        let (code, out) = self.boto(&format!(
            "s3.put_object(Bucket='{BUCKET}', Key='{key}', Body=b'{body}')"
        ));
        assert_eq!(code, 0, "{out}");
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An appliance with instance `shop`: MariaDB only, an app dir with
/// `storage/`, backups to `endpoint` (S3) with `extra` backup keys.
fn shop(endpoint: &str, extra: &str) -> Appliance {
    require_programs(&["mariadbd", "mariadb", "mariadb-dump", "mariadb-install-db"]);
    let cfg = format!(
        "[http]\nenabled = false\n[[instance]]\nname = \"shop\"\napp_dir = \"@DIR@/app\"\n\
         [instance.units.redis]\nenabled = false\n[instance.units.php-fpm]\nenabled = false\n\
         [instance.units.queue-worker]\nenabled = false\n\
         [instance.backup]\ntest_restore_schedule = \"off\"\n{extra}\n\
         [instance.backup.s3]\nendpoint = \"{endpoint}\"\nbucket = \"{BUCKET}\"\nprefix = \"ci\"\nretries = 2\npart_size_mb = 5\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    let app = a.dir.path().join("app");
    std::fs::create_dir_all(app.join("public")).unwrap();
    std::fs::create_dir_all(app.join("storage/app/invoices")).unwrap();
    std::fs::create_dir_all(app.join("storage/logs")).unwrap();
    std::fs::write(app.join("VERSION"), "2.4.1\n").unwrap();
    for i in 0..20 {
        std::fs::write(
            app.join(format!("storage/app/invoices/F001-{i:04}.xml")),
            format!(
                "<Invoice><ID>F001-{i}</ID><Total>{}</Total></Invoice>",
                i * 118
            )
            .repeat(50),
        )
        .unwrap();
    }
    // Larger than one multipart part (5 MiB) once compressed: random bytes.
    let big: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(app.join("storage/app/scan.pdf"), big).unwrap();
    write_mode(
        &app.join("storage/logs/laravel.log"),
        "[2026-11-26] local.INFO: hello\n",
        0o640,
    );
    // S3 credentials go through the backup secrets file (0600, root only).
    let secrets = a.data.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    write_mode(
        &secrets.join("backup.env"),
        "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n",
        0o600,
    );
    a.start();
    a.wait_all_ready(READY);
    a
}

/// Write `text` to `path` and give it `mode`.
fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn app_dir(a: &Appliance) -> PathBuf {
    a.dir.path().join("app")
}

/// Run SQL as root over the instance's socket; stdout (tab-separated).
fn sql(a: &Appliance, text: &str) -> String {
    let sock = a.data.join("instances/shop/run/mariadb.sock");
    let out = Command::new("mariadb")
        .args(["--no-defaults", "-uroot", "-N", "-B"])
        .arg(format!("--socket={}", sock.display()))
        .arg(format!("--execute={text}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "SQL failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const TENANT_SCHEMA: &str = "
CREATE TABLE invoices (id INT AUTO_INCREMENT PRIMARY KEY, customer VARCHAR(80) NOT NULL,
  amount DECIMAL(12,2) NOT NULL, signed_xml MEDIUMBLOB, created TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB;
CREATE TABLE invoice_items (id INT AUTO_INCREMENT PRIMARY KEY, invoice_id INT NOT NULL,
  description VARCHAR(200), amount DECIMAL(12,2) NOT NULL, KEY (invoice_id)) ENGINE=InnoDB;
CREATE TABLE totals (id INT PRIMARY KEY, n INT NOT NULL, amount DECIMAL(14,2) NOT NULL) ENGINE=InnoDB;
INSERT INTO totals VALUES (1, 0, 0);
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(50)) ENGINE=InnoDB;
CREATE TRIGGER invoices_audit AFTER INSERT ON invoices FOR EACH ROW INSERT INTO audit (what) VALUES (CONCAT('invoice ', NEW.id));
CREATE VIEW big_invoices AS SELECT id, amount FROM invoices WHERE amount > 100;
CREATE PROCEDURE invoice_count(OUT c INT) SELECT COUNT(*) INTO c FROM invoices;
CREATE EVENT purge_audit ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM audit WHERE id < 0;
";

/// One invoice with two items and the running totals, in one transaction.
fn invoice_txn(customer: &str, cents: u64) -> String {
    let a = cents as f64 / 100.0;
    format!(
        "START TRANSACTION;\
         INSERT INTO invoices (customer, amount, signed_xml) VALUES ('{customer}', {a:.2}, REPEAT('<x/>', 50));\
         SET @i = LAST_INSERT_ID();\
         INSERT INTO invoice_items (invoice_id, description, amount) VALUES (@i, 'item 1', {:.2}), (@i, 'item 2', {:.2});\
         UPDATE totals SET n = n + 1, amount = amount + {a:.2} WHERE id = 1;\
         COMMIT;\n",
        a / 2.0,
        a - a / 2.0
    )
}

/// Tenants `tenancy_a` and `tenancy_b` with invoices, plus rows in the
/// central database `shop`.
fn seed(a: &Appliance) {
    for t in ["tenancy_a", "tenancy_b"] {
        sql(a, &format!("CREATE DATABASE {t}"));
        sql(a, &format!("USE {t}; {TENANT_SCHEMA}"));
        let mut txns = String::new();
        for i in 0..200 {
            txns.push_str(&invoice_txn(&format!("{t}-customer-{i}"), 1000 + i * 37));
        }
        sql(a, &format!("USE {t}; {txns}"));
    }
    sql(
        a,
        "USE shop; CREATE TABLE tenants (id VARCHAR(40) PRIMARY KEY, db VARCHAR(64)) ENGINE=InnoDB;
         INSERT INTO tenants VALUES ('a', 'tenancy_a'), ('b', 'tenancy_b');",
    );
    sql(
        a,
        "CREATE USER 'reporter'@'localhost' IDENTIFIED BY 'r3p0rt'; GRANT SELECT ON `tenancy\\_%`.* TO 'reporter'@'localhost'",
    );
}

/// Rows that only load back if every byte does: NULLs, tabs, newlines,
/// backslashes and NUL in text and blobs, a generated column, an id of 0,
/// a TIMESTAMP away from UTC, a table whose rows span several 8 MiB
/// chunks; and a database with a BIT column, left to mariadb-dump.
fn seed_awkward(a: &Appliance) {
    sql(
        a,
        "USE tenancy_a; SET SESSION time_zone = '-05:00', sql_mode = 'NO_AUTO_VALUE_ON_ZERO';
         CREATE TABLE odd (id INT AUTO_INCREMENT PRIMARY KEY, t TEXT, b BLOB, n INT,
           twice INT AS (n * 2) VIRTUAL, at TIMESTAMP NULL, f DOUBLE) ENGINE=InnoDB;
         INSERT INTO odd (id, t, b, n, at, f) VALUES
           (0, 'zero id', NULL, NULL, NULL, NULL),
           (7, 'tab\there\nnewline \\\\ backslash \\\\N', UNHEX('00090A5C4E0D'), 3, '2026-03-08 01:30:00', 0.1),
           (8, 'NULL', '', -1, '2026-11-01 01:30:00', -1.5e300),
           (9, '\u{f1}and\u{fa} \u{20ac}', UNHEX('FF'), 0, '1970-01-02 00:00:00', 1e-300);
         CREATE TABLE big (id INT PRIMARY KEY, body LONGBLOB) ENGINE=InnoDB;
         INSERT INTO big WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 100)
           SELECT n, REPEAT(CONCAT(CHAR(n), '\t\\\\'), 50000) FROM s;
         CREATE DATABASE legacy; USE legacy;
         CREATE TABLE flags (id INT PRIMARY KEY, f BIT(5)) ENGINE=InnoDB;
         INSERT INTO flags VALUES (1, b'10101'), (2, NULL);",
    );
}

/// `CHECKSUM TABLE` of every base table of the instance's databases.
fn checksums(a: &Appliance) -> BTreeMap<String, String> {
    let tables = sql(
        a,
        "SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) FROM information_schema.TABLES \
         WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ('mysql','sys','performance_schema','information_schema')",
    );
    let list: Vec<String> = tables
        .lines()
        .map(|t| {
            let (d, n) = t.split_once('.').unwrap();
            format!("`{d}`.`{n}`")
        })
        .collect();
    assert!(!list.is_empty());
    sql(a, &format!("CHECKSUM TABLE {}", list.join(", ")))
        .lines()
        .map(|l| {
            let (t, c) = l.split_once('\t').unwrap();
            (t.to_string(), c.to_string())
        })
        .collect()
}

/// `relative path -> (sha256, mode)` of every file under `dir`.
fn file_hashes(dir: &Path) -> BTreeMap<String, (String, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (String, u32)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let sum = hex::encode(Sha256::digest(std::fs::read(&p).unwrap()));
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
                out.insert(
                    p.strip_prefix(root).unwrap().display().to_string(),
                    (sum, mode),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// `applianced --json backup ARGS...`: (exit code, parsed stdout, stderr).
fn backup(a: &Appliance, args: &[&str]) -> (i32, Value, String) {
    let mut argv = vec!["--json", "backup"];
    argv.extend_from_slice(args);
    let out = a.cli(&argv);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, stderr)
}

/// A backup that must succeed; returns its id.
fn backup_ok(a: &Appliance) -> String {
    let (code, rec, err) = backup(a, &["run", "shop"]);
    assert_eq!(code, 0, "backup failed: {err}\n{}", a.diagnostics());
    assert_eq!(rec["status"], "ok", "{rec}");
    rec["backup_id"].as_str().unwrap().to_string()
}

fn local_backup(a: &Appliance, id: &str) -> PathBuf {
    a.data.join("backups/shop").join(id)
}

#[test]
fn a_full_restore_from_s3_brings_back_identical_checksums_users_and_storage_files() {
    let s3 = S3::start();
    let a = shop(&s3.endpoint(), "encrypt = true\n");
    seed(&a);
    seed_awkward(&a);
    let before = checksums(&a);
    let odd_before = sql(
        &a,
        "SELECT id, HEX(t), HEX(b), n, twice, at, f FROM tenancy_a.odd ORDER BY id",
    );
    let files_before = file_hashes(&app_dir(&a).join("storage"));

    let (code, rec, err) = backup(&a, &["run", "shop"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["local"], "ok", "{rec}");
    assert_eq!(rec["remote"], "ok", "{rec}");
    assert!(
        err.contains("[4/4]") && err.contains("uploaded"),
        "progress is shown: {err}"
    );
    let id = rec["backup_id"].as_str().unwrap().to_string();
    let local = local_backup(&a, &id);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(local.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["instance"], "shop");
    assert_eq!(manifest["app_version"], "2.4.1");
    assert!(
        manifest["server_version"]
            .as_str()
            .unwrap()
            .contains("MariaDB"),
        "{manifest}"
    );
    assert_eq!(manifest["encryption"], "xchacha20poly1305-stream");
    let dbs: Vec<&str> = manifest["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(dbs, ["legacy", "shop", "tenancy_a", "tenancy_b"]);
    let formats: Vec<&str> = manifest["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["format"].as_str().unwrap())
        .collect();
    assert_eq!(
        formats,
        ["sql", "tab", "tab", "tab"],
        "rows written by the server, except where a BIT column needs mariadb-dump"
    );
    let tenant_a = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "db/tenancy_a.tar.zst")
        .unwrap();
    assert!(
        tenant_a["raw_size"].as_u64().unwrap() > 8 << 20,
        "more rows than one 8 MiB chunk: {tenant_a}"
    );
    assert!(
        manifest["databases"][2]["checksums"]["invoices"].is_string(),
        "checksums recorded at dump time: {manifest}"
    );
    for f in manifest["files"].as_array().unwrap() {
        assert!(
            s3.exists(&format!("ci/shop/{id}/{}", f["name"].as_str().unwrap())),
            "{f} uploaded"
        );
        assert_eq!(f["sha256"].as_str().unwrap().len(), 64);
    }
    // The encryption key was generated into the backup secrets file.
    let secrets = std::fs::read_to_string(a.data.join("secrets/backup.env")).unwrap();
    assert!(secrets.contains("BACKUP_ENCRYPTION_KEY="), "{secrets}");
    // Encrypted: the SQL is not readable in the stored file.
    let stored = std::fs::read(local.join("db/tenancy_a.tar.zst")).unwrap();
    assert!(stored.starts_with(b"ADBKENC1"));

    let (code, list, _) = backup(&a, &["list", "shop"]);
    assert_eq!(code, 0);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|r| r["backup_id"] == id.as_str() && r["kind"] == "backup"),
        "{list}"
    );

    // Disaster: databases dropped, storage deleted, the local copy gone too.
    sql(
        &a,
        "DROP DATABASE tenancy_a; DROP DATABASE tenancy_b; DROP DATABASE legacy; DROP TABLE shop.tenants; DROP USER 'reporter'@'localhost'",
    );
    std::fs::remove_dir_all(app_dir(&a).join("storage")).unwrap();
    std::fs::remove_dir_all(&local).unwrap();

    let (code, rec, err) = backup(&a, &["restore", "shop", &id]);
    assert_eq!(code, 0, "restore failed: {err}\n{}", a.diagnostics());
    assert_eq!(rec["status"], "ok", "{rec}");
    assert!(
        err.contains("downloading") && err.contains("restored"),
        "progress: {err}"
    );
    assert_eq!(checksums(&a), before, "every table's checksum is back");
    assert_eq!(
        sql(
            &a,
            "SELECT id, HEX(t), HEX(b), n, twice, at, f FROM tenancy_a.odd ORDER BY id"
        ),
        odd_before,
        "every byte, NULL and timestamp of the awkward rows is back"
    );
    assert_eq!(
        file_hashes(&app_dir(&a).join("storage")),
        files_before,
        "every file is back"
    );
    // Triggers, views, routines, events and users came back too.
    assert_eq!(
        sql(
            &a,
            "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='tenancy_a'"
        )
        .trim(),
        "1"
    );
    assert_eq!(
        sql(&a, "SELECT COUNT(*) FROM tenancy_b.big_invoices").trim(),
        sql(
            &a,
            "SELECT COUNT(*) FROM tenancy_b.invoices WHERE amount > 100"
        )
        .trim()
    );
    assert_eq!(
        sql(
            &a,
            "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='tenancy_a'"
        )
        .trim(),
        "1"
    );
    assert_eq!(
        sql(
            &a,
            "SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA='tenancy_a'"
        )
        .trim(),
        "1"
    );
    assert_eq!(
        sql(&a, "SELECT COUNT(*) FROM mysql.user WHERE user='reporter'").trim(),
        "1"
    );
    // The app's own user still logs in with this machine's password.
    let secrets = std::fs::read_to_string(a.data.join("secrets/shop.env")).unwrap();
    let pw = secrets
        .lines()
        .find_map(|l| l.strip_prefix("DB_PASSWORD="))
        .unwrap();
    let (code, _) = sh(&format!(
        "mariadb --no-defaults -ushop -p'{pw}' --socket={} -e 'SELECT COUNT(*) FROM tenancy_a.invoices'",
        a.data.join("instances/shop/run/mariadb.sock").display()
    ));
    assert_eq!(code, 0, "the app user can read a tenant after the restore");
}

#[test]
fn a_single_tenant_restore_restores_that_tenant_only_with_workers_paused_meanwhile() {
    let s3 = S3::start();
    // A stand-in worker unit: stopped for the restore, started again after.
    let a = shop(
        &s3.endpoint(),
        "[instance.units.worker]\ncommand = \"sleep\"\nargs = [\"3600\"]\nafter = [\"mariadb\"]\n",
    );
    let worker_pid = a.unit("shop", "worker")["pid"].as_i64().unwrap();
    seed(&a);
    let before = checksums(&a);
    let id = backup_ok(&a);
    sql(
        &a,
        &format!("USE tenancy_a; {}", invoice_txn("late-a", 999)),
    );
    sql(
        &a,
        &format!("USE tenancy_b; {}", invoice_txn("late-b", 555)),
    );
    sql(&a, "INSERT INTO shop.tenants VALUES ('c', 'tenancy_c')");
    let after_writes = checksums(&a);

    let (code, _, err) = backup(&a, &["restore", "shop", &id, "--db", "tenancy_nope"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no database `tenancy_nope`") && err.contains("tenancy_a"),
        "{err}"
    );

    let (code, rec, err) = backup(&a, &["restore", "shop", &id, "--db", "tenancy_a"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rec["detail"], "database tenancy_a", "{rec}");
    assert!(
        err.contains("paused (cron held, units stopped): worker")
            && err.contains("started again: worker"),
        "{err}"
    );
    let events: Vec<String> = a.events("worker").into_iter().map(|e| e.0).collect();
    assert!(
        events.iter().any(|e| e == "stopped"),
        "the worker was stopped: {events:?}"
    );
    let st = a.wait_unit("shop", "worker", Duration::from_secs(30), |s| {
        s["state"] == "running"
    });
    assert_ne!(st["pid"].as_i64().unwrap(), worker_pid, "and started again");
    let now = checksums(&a);
    for (table, sum) in &now {
        let expect = if table.starts_with("tenancy_a.") {
            &before[table]
        } else {
            &after_writes[table]
        };
        assert_eq!(
            sum, expect,
            "{table}: only tenancy_a goes back to the backup"
        );
    }
    assert_eq!(
        sql(
            &a,
            "SELECT COUNT(*) FROM tenancy_a.invoices WHERE customer = 'late-a'"
        )
        .trim(),
        "0"
    );
    assert_eq!(
        sql(
            &a,
            "SELECT COUNT(*) FROM tenancy_b.invoices WHERE customer = 'late-b'"
        )
        .trim(),
        "1"
    );
    // A backup of another instance's name is refused, not restored.
    let (code, _, err) = backup(&a, &["restore", "shop", "demo-20261126T030000Z"]);
    assert_ne!(code, 0);
    assert!(err.contains("belongs to instance `demo`"), "{err}");
}

#[test]
fn verify_detects_a_corrupted_object_in_s3_and_a_corrupted_local_file() {
    let s3 = S3::start();
    let a = shop(&s3.endpoint(), "");
    seed(&a);
    let id = backup_ok(&a);
    let (code, rec, err) = backup(&a, &["verify", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (rec["local"].as_str(), rec["remote"].as_str()),
        (Some("ok"), Some("ok")),
        "{rec}"
    );

    // Replace one stored object in the bucket with other bytes.
    let key = format!("ci/shop/{id}/db/tenancy_b.tar.zst");
    s3.overwrite(&key, "not a dump");
    let (code, _, err) = backup(&a, &["verify", &id]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&key) && err.contains("sha256"),
        "names the object: {err}"
    );

    // Flip one byte of the local copy.
    let f = local_backup(&a, &id).join("db/tenancy_a.tar.zst");
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&f, bytes).unwrap();
    let (code, _, err) = backup(&a, &["verify", &id]);
    assert_eq!(code, 1);
    assert!(
        err.contains("tenancy_a.tar.zst"),
        "names the local file: {err}"
    );
    // A restore refuses a corrupt backup before touching anything.
    let before = checksums(&a);
    let (code, _, err) = backup(&a, &["restore", "shop", &id]);
    assert_ne!(code, 0);
    assert!(err.contains("corrupt backup"), "{err}");
    assert_eq!(checksums(&a), before);
    let (code, _, err) = backup(&a, &["verify", "shop-20200101T000000Z"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn with_s3_unreachable_the_upload_is_retried_the_failure_reported_and_the_local_copy_kept() {
    // Nothing listens on this port.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let a = shop(&dead, "");
    seed(&a);
    let (code, _, err) = backup(&a, &["run", "shop"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("attempt 1/3") && err.contains("attempt 2/3"),
        "retried: {err}"
    );
    assert!(err.contains("failed after 3 attempts"), "{err}");
    assert!(err.contains("local copy is kept"), "{err}");
    let (_, list, _) = backup(&a, &["list", "shop"]);
    let rec = &list[0];
    assert_eq!(rec["status"], "failed", "{rec}");
    assert_eq!(rec["local"], "ok", "{rec}");
    assert_eq!(rec["remote"], "failed", "{rec}");
    assert!(
        rec["duration_ms"].as_i64().unwrap() > 0 && rec["size_bytes"].as_i64().unwrap() > 0,
        "{rec}"
    );
    let id = rec["backup_id"].as_str().unwrap();
    assert!(
        local_backup(&a, id).join("manifest.json").is_file(),
        "the local copy is kept"
    );
    // `status` shows the failure.
    let row = a.unit("shop", "backup");
    assert_eq!(row["state"], "failed", "{row}");
    assert!(
        row["message"].as_str().unwrap().contains("S3 upload"),
        "{row}"
    );
    let table = String::from_utf8_lossy(&a.cli(&["status"]).stdout).into_owned();
    assert!(
        table.contains("backup") && table.contains("failed"),
        "{table}"
    );
}

#[test]
fn retention_prunes_older_backups_locally_and_in_s3_once_a_newer_one_is_read_back() {
    let s3 = S3::start();
    let a = shop(&s3.endpoint(), "keep_daily = 1\n");
    seed(&a);
    let first = backup_ok(&a);
    std::thread::sleep(Duration::from_millis(1100));
    let second = backup_ok(&a);
    assert_ne!(first, second);
    // keep_daily = 1: both are from today, so the older one goes, in both targets.
    assert!(!local_backup(&a, &first).exists());
    assert!(local_backup(&a, &second).join("manifest.json").is_file());
    assert!(!s3.exists(&format!("ci/shop/{first}/manifest.json")));
    assert!(s3.exists(&format!("ci/shop/{second}/manifest.json")));
    let (_, list, _) = backup(&a, &["list", "shop"]);
    let old = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["backup_id"] == first.as_str() && r["kind"] == "backup")
        .unwrap();
    assert_eq!(
        (old["local"].as_str(), old["remote"].as_str()),
        (Some("pruned"), Some("pruned")),
        "{old}"
    );
}

#[test]
fn a_backup_taken_while_invoices_are_written_is_consistent_and_its_test_restore_matches() {
    let s3 = S3::start();
    let a = shop(&s3.endpoint(), "parallel = 2\n");
    seed(&a);
    // A client writing invoices (each one transaction: invoice, two items,
    // running totals) as fast as it can while the backup runs.
    let mut script = String::from("USE tenancy_a;\n");
    for i in 0..30_000 {
        script.push_str(&invoice_txn(&format!("busy-{i}"), 500 + i % 1000));
    }
    let sock = a.data.join("instances/shop/run/mariadb.sock");
    let mut writer = Command::new("mariadb")
        .args(["--no-defaults", "-uroot"])
        .arg(format!("--socket={}", sock.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(script.as_bytes());
    });
    // Let it get going.
    let t0 = Instant::now();
    while sql(&a, "SELECT n FROM tenancy_a.totals")
        .trim()
        .parse::<u64>()
        .unwrap()
        < 300
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the writer did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = backup_ok(&a);
    let written_during = sql(&a, "SELECT n FROM tenancy_a.totals")
        .trim()
        .parse::<u64>()
        .unwrap();
    let _ = writer.kill();
    let _ = writer.wait();
    let _ = feeder.join();
    assert!(
        written_during > 300,
        "invoices were being written during the backup"
    );

    // The dump's checksums match a restore of it into a throwaway mariadbd.
    let (code, rec, err) = backup(&a, &["test-restore", "shop", &id]);
    assert_eq!(code, 0, "test restore failed: {err}");
    assert!(
        rec["detail"].as_str().unwrap().contains("0 mismatches"),
        "{rec}"
    );

    // Restored, the tenant is a state that existed: every committed invoice
    // whole, and the totals agree with the rows.
    let (code, _, err) = backup(&a, &["restore", "shop", &id, "--db", "tenancy_a"]);
    assert_eq!(code, 0, "{err}");
    let n: u64 = sql(&a, "SELECT n FROM tenancy_a.totals")
        .trim()
        .parse()
        .unwrap();
    assert!(n > 300 && n < 30_200, "a mid-write snapshot: {n}");
    assert_eq!(
        sql(&a, "SELECT COUNT(*) FROM tenancy_a.invoices").trim(),
        n.to_string()
    );
    assert_eq!(
        sql(&a, "SELECT COUNT(*) FROM tenancy_a.audit").trim(),
        n.to_string()
    );
    assert_eq!(
        sql(&a, "SELECT COUNT(*) FROM tenancy_a.invoices i WHERE (SELECT COUNT(*) FROM tenancy_a.invoice_items t WHERE t.invoice_id = i.id) <> 2").trim(),
        "0"
    );
    assert_eq!(
        sql(&a, "SELECT (SELECT amount FROM tenancy_a.totals) = (SELECT SUM(amount) FROM tenancy_a.invoices)").trim(),
        "1"
    );
    // The test restore is recorded.
    let (_, list, _) = backup(&a, &["list", "shop"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "test-restore" && r["status"] == "ok"),
        "{list}"
    );
}

#[test]
fn bad_backup_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[instance.backup]\nparallel = 0\n",
            "instance[0].backup.parallel",
        ),
        (
            "[instance.backup]\nkep_daily = 3\n",
            "instance[0].backup.kep_daily",
        ),
        (
            "[instance.backup]\nschedule = \"every day\"\n",
            "instance[0].backup.schedule",
        ),
        (
            "[instance.backup.s3]\nbucket = \"b\"\nendpoint = \"s3.local\"\n",
            "instance[0].backup.s3.endpoint",
        ),
    ];
    for (extra, key) in cases {
        let p = dir.path().join("appliance.toml");
        std::fs::write(&p, format!("[[instance]]\nname = \"shop\"\n{extra}")).unwrap();
        let out = Command::new(BIN)
            .arg("check-config")
            .arg("--config")
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra}: {err}");
        assert!(err.contains(key), "{extra}: names `{key}`: {err}");
    }
    let p = dir.path().join("appliance.toml");
    std::fs::write(
        &p,
        "[backup]\nkeep_daily = 0\n[[instance]]\nname = \"shop\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backup.keep_daily"));
}
