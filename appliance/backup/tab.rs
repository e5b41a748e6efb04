//! Databases dumped by the server itself: each table's rows written by
//! mariadbd with `SELECT ... INTO OUTFILE` in one snapshot, packed with the
//! schema into one `db/NAME.tar.zst` per database, and loaded back with
//! `LOAD DATA LOCAL INFILE`.
//!
//! Why not `mariadb-dump` for the rows: its client formatting INSERT
//! statements was half of a backup's CPU (8-10 of 15.5-20 CPU seconds on
//! `bench/backup`'s data), where mariadbd writing tab-separated rows costs
//! about a third of client plus server for the same table. Loading the rows
//! with `LOAD DATA` is also faster than parsing INSERTs.
//!
//! The archive, in this order (a plain tar: `zstd -d | tar x` gives files an
//! operator can load by hand):
//! - `schema.sql`: `mariadb-dump --no-data --skip-triggers` (tables, views);
//! - per base table `data/T.load.sql`, the `LOAD DATA LOCAL INFILE
//!   '/dev/stdin'` statement for it (its column list leaves out generated
//!   columns), then `data/T.tsv`, the rows (`CHARACTER SET binary`,
//!   MariaDB's default escapes, `\N` for NULL);
//! - `post.sql`: triggers, routines and events, made after the rows are in,
//!   so no trigger fires on the load.
//!
//! Consistency: one session takes a consistent snapshot, sums the tables
//! (`CHECKSUM TABLE` reads through it) and exports every table in it, so
//! the rows and the recorded checksums are of the same instant. The schema
//! is read just before; DDL during a backup can make the two disagree, as
//! with `mariadb-dump`, and the test restore would find it.
//!
//! mariadbd writes the rows only into its `secure_file_priv` dir (applianced
//! sets it to the instance's `mariadb-files/`), one table at a time per
//! database, each file removed once packed: the staging space is the
//! largest table's rows, times the databases dumped at once. A server
//! without such a dir, a database with column types whose text form does
//! not load back byte for byte (BIT, spatial), or one whose largest table
//! the dir's free space cannot hold several times over, is dumped with
//! `mariadb-dump` instead ([`super::dump`]), which streams.
//!
//! Touches: the instance's MariaDB (sessions and clients), its
//! `secure_file_priv` dir (only files it names itself), and the backup dir.

use super::BackupError;
use super::dump::{DumpCtx, checksum_sql, parse_checksums};
use super::manifest::{Database, FileEntry};
use super::sql::{self, ident, literal};
use super::stream::{self, Key, Writer};
use crate::process::Launcher;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// The manifest's `format` of a database dumped here.
pub const FORMAT: &str = "tab";

/// Column types whose `INTO OUTFILE` text does not load back unchanged.
const UNSAFE_TYPES: [&str; 9] = [
    "bit",
    "geometry",
    "point",
    "linestring",
    "polygon",
    "multipoint",
    "multilinestring",
    "multipolygon",
    "geometrycollection",
];

/// One base table: its name and the columns that hold data.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<String>,
}

/// Where mariadbd may write files: `@@secure_file_priv`, if it names a dir.
/// `None` (no such dir, or no restriction at all, where we would have to
/// guess a dir mariadbd can write): dump with `mariadb-dump`. Rows staged
/// there by a backup that was killed are removed (one backup per instance
/// runs at a time, and each instance has its own mariadbd and dir).
pub async fn outfile_dir(launcher: &Launcher, socket: &Path) -> Option<PathBuf> {
    let rows = sql::query(launcher, socket, "SELECT HEX(@@secure_file_priv)")
        .await
        .ok()?;
    let hex = rows.into_iter().next()?.into_iter().next()?;
    let dir = PathBuf::from(String::from_utf8(unhex(&hex)?).ok()?);
    if !(dir.is_absolute() && dir.is_dir()) {
        return None;
    }
    for entry in std::fs::read_dir(&dir).ok()?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(STAGED_PREFIX) && name.ends_with(".tsv") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Some(dir)
}

/// The name prefix of the files mariadbd writes for us.
const STAGED_PREFIX: &str = "applianced-backup-";

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s == "NULL" || s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The query for `db`'s base tables and their stored columns, names in hex
/// (the `mariadb` client's batch output escapes tabs and backslashes).
fn columns_sql(db: &str) -> String {
    format!(
        "SELECT HEX(c.TABLE_NAME), HEX(c.COLUMN_NAME), c.IS_GENERATED, LOWER(c.DATA_TYPE) \
         FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
         ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
         WHERE c.TABLE_SCHEMA = {} AND t.TABLE_TYPE = 'BASE TABLE' \
         ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION;",
        literal(db)
    )
}

/// Rows of [`columns_sql`] -> tables, or `None` if a column's type is one
/// this format cannot carry.
pub fn parse_tables(rows: &[Vec<String>]) -> Result<Option<Vec<Table>>, BackupError> {
    let mut tables: Vec<Table> = Vec::new();
    for r in rows {
        let [table, column, generated, kind] = r.as_slice() else {
            return Err(BackupError::Sql(format!("unexpected column row {r:?}")));
        };
        let name = |h: &str| {
            unhex(h)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| BackupError::Sql(format!("bad name {h:?} in column row")))
        };
        let (table, column) = (name(table)?, name(column)?);
        if UNSAFE_TYPES.contains(&kind.as_str()) {
            return Ok(None);
        }
        if tables.last().is_none_or(|t| t.name != table) {
            tables.push(Table {
                name: table,
                columns: Vec::new(),
            });
        }
        if generated == "NEVER" {
            tables.last_mut().expect("pushed").columns.push(column);
        }
    }
    Ok(Some(tables))
}

/// The `LOAD DATA` statement for `t`, reading the rows from stdin.
pub fn load_sql(t: &Table) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| ident(c)).collect();
    format!(
        "LOAD DATA LOCAL INFILE '/dev/stdin' INTO TABLE {} CHARACTER SET binary ({});\n",
        ident(&t.name),
        cols.join(", ")
    )
}

/// The export of `t` of `db` into `file`.
fn outfile_sql(db: &str, t: &Table, file: &Path) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| ident(c)).collect();
    format!(
        "SELECT {} INTO OUTFILE {} CHARACTER SET binary FROM {}.{};",
        cols.join(", "),
        literal(&file.to_string_lossy()),
        ident(db),
        ident(&t.name)
    )
}

/// A part of the archive, in order.
enum Part {
    Bytes(String, Vec<u8>),
    /// A file mariadbd wrote; removed once packed.
    File(String, PathBuf),
}

/// The tables of `db` if it can be dumped here, else `None` (logged with
/// the reason): a column type this format cannot carry, or too little free
/// space in `outfiles` to stage its largest table.
pub async fn tables(
    ctx: &DumpCtx,
    db: &str,
    outfiles: &Path,
) -> Result<Option<Vec<Table>>, BackupError> {
    // One pooled session for both questions: a client process per query
    // was two more process starts per database.
    let mut session = ctx.session().await?;
    let rows = session.run(&columns_sql(db)).await?;
    let largest = session
        .run(&format!(
            "SELECT IFNULL(MAX(DATA_LENGTH), 0) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = {} AND TABLE_TYPE = 'BASE TABLE';",
            literal(db)
        ))
        .await?;
    ctx.give_back(session);
    let largest = largest
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let Some(tables) = parse_tables(&rows)? else {
        tracing::info!(database = %db, "BIT or spatial columns: dumped with mariadb-dump");
        return Ok(None);
    };
    let free = nix::sys::statvfs::statvfs(outfiles)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
        .unwrap_or(0);
    if !room_to_stage(largest, free) {
        tracing::warn!(
            database = %db, largest_table_bytes = largest, free_bytes = free,
            dir = %outfiles.display(),
            "too little free space to stage the largest table: dumped with mariadb-dump"
        );
        return Ok(None);
    }
    Ok(Some(tables))
}

/// Whether `free` bytes can hold the rows of a table of `largest` bytes
/// (InnoDB's size; the text form is about as big), for each of the
/// databases dumped at once (3 by default, counted as 4), with 512 MiB left.
fn room_to_stage(largest: u64, free: u64) -> bool {
    largest.saturating_mul(4).saturating_add(512 << 20) <= free
}

/// A unique name in `dir` for one table's rows.
fn staging_file(dir: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        "{STAGED_PREFIX}{}-{}.tsv",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Dump `db` (whose stored tables are `tables`) into `dir/db/NAME.tar.zst`,
/// mariadbd writing the rows into `outfiles`.
pub async fn dump_database(
    ctx: &DumpCtx,
    dir: &Path,
    db: &(String, String, String),
    tables: Vec<Table>,
    outfiles: &Path,
) -> Result<(FileEntry, Database), BackupError> {
    let (name, charset, collation) = db;
    let file = format!("db/{name}.tar.zst");
    let out = dir.join(&file);
    let mut base = super::dump::dump_args(&ctx.socket);
    base.retain(|a| !matches!(a.as_str(), "--routines" | "--events" | "--triggers"));
    base.push("--skip-comments".into());
    let mut schema_args = base.clone();
    schema_args.extend(["--no-data".into(), "--skip-triggers".into(), name.clone()]);
    let mut post_args = base;
    post_args.extend([
        "--no-data".into(),
        "--no-create-info".into(),
        "--triggers".into(),
        "--routines".into(),
        "--events".into(),
        name.clone(),
    ]);
    let what = format!("mariadb-dump --no-data {name}");

    let (tx, rx) = mpsc::channel::<Part>(2);
    let (level, key, path) = (ctx.level, ctx.key.clone(), out.clone());
    let packer = tokio::task::spawn_blocking(move || pack(&path, level, key.as_ref(), rx));
    let mut staged: Vec<PathBuf> = Vec::new();
    // The schema and the triggers and routines are read while mariadbd
    // writes the rows (the packer puts the schema first all the same): two
    // mariadb-dump starts per database were otherwise idle time.
    let schema = async {
        let (schema, post) = tokio::join!(
            super::dump::capture_dump(ctx, schema_args, &what),
            super::dump::capture_dump(ctx, post_args, &what)
        );
        let (schema, post) = (schema?, post?);
        match tx.send(Part::Bytes(SCHEMA.into(), schema)).await {
            Ok(()) => Ok(post),
            Err(_) => Err(BackupError::Io(format!(
                "packing the dump of {name} stopped"
            ))),
        }
    };
    let (exported, post) = tokio::join!(
        export(ctx, name, &tables, outfiles, &tx, &mut staged),
        schema
    );
    let exported = match (exported, post) {
        (Ok(sums), Ok(post)) => match tx.send(Part::Bytes("post.sql".into(), post)).await {
            Ok(()) => Ok(sums),
            Err(_) => Err(BackupError::Io(format!(
                "packing the dump of {name} stopped"
            ))),
        },
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    drop(tx);
    let packed = packer
        .await
        .map_err(|e| BackupError::Io(format!("packing {file}: {e}")));
    // Whatever the packer did not take (an error on either side).
    for f in staged {
        let _ = std::fs::remove_file(f);
    }
    let checksums = exported?;
    let (sha256, size, raw_size) =
        packed?.map_err(|e| BackupError::Io(format!("writing {}: {e}", out.display())))?;
    Ok((
        FileEntry {
            name: file.clone(),
            kind: "database".into(),
            size,
            sha256,
            raw_size,
        },
        Database {
            name: name.clone(),
            file,
            charset: charset.clone(),
            collation: collation.clone(),
            checksums,
            format: FORMAT.into(),
        },
    ))
}

/// The session's part: snapshot, checksums, one export per table handed to
/// the packer as it is written. Returns the checksums.
#[allow(clippy::too_many_arguments)]
async fn export(
    ctx: &DumpCtx,
    db: &str,
    tables: &[Table],
    outfiles: &Path,
    tx: &mpsc::Sender<Part>,
    staged: &mut Vec<PathBuf>,
) -> Result<std::collections::BTreeMap<String, Option<String>>, BackupError> {
    let gone = || BackupError::Io(format!("packing the dump of {db} stopped"));
    let send = |part: Part| async move { tx.send(part).await.is_ok() };
    let mut session = ctx.session().await?;
    // TIMESTAMP columns are written in UTC, as mariadb-dump does.
    session
        .run(
            "SET SESSION time_zone = '+00:00';\n\
             SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;\n\
             START TRANSACTION WITH CONSISTENT SNAPSHOT;",
        )
        .await?;
    let mut checksums = Default::default();
    let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
    if ctx.checksums && !names.is_empty() {
        let sums = session
            .run(&format!("{};", checksum_sql(db, &names)))
            .await?;
        checksums = parse_checksums(db, &sums);
    }
    for t in tables {
        let file = staging_file(outfiles);
        staged.push(file.clone());
        session.run(&outfile_sql(db, t, &file)).await?;
        let entry = format!("data/{}", t.name);
        if !send(Part::Bytes(
            format!("{entry}.load.sql"),
            load_sql(t).into_bytes(),
        ))
        .await
            || !send(Part::File(format!("{entry}.tsv"), file)).await
        {
            return Err(gone());
        }
    }
    session.run("COMMIT;").await?;
    ctx.give_back(session);
    Ok(checksums)
}

/// The packer: parts into a tar through zstd (and encryption) into `out`.
fn pack(
    out: &Path,
    level: i32,
    key: Option<&Key>,
    mut rx: mpsc::Receiver<Part>,
) -> std::io::Result<(String, u64, u64)> {
    let file = std::fs::File::create(out)?;
    let w = Writer::new(std::io::BufWriter::with_capacity(1 << 20, file), level, key)?;
    let mut tar = tar::Builder::new(w);
    // Rows that came before the schema wait (as files) until it is in.
    let mut early: Vec<Part> = Vec::new();
    let mut schema_in = false;
    while let Some(part) = rx.blocking_recv() {
        let is_schema = matches!(&part, Part::Bytes(name, _) if name == SCHEMA);
        if !schema_in && !is_schema {
            early.push(part);
            continue;
        }
        let parts = if is_schema {
            schema_in = true;
            std::iter::once(part).chain(early.drain(..)).collect()
        } else {
            vec![part]
        };
        for part in parts {
            append(&mut tar, part)?;
        }
    }
    if !schema_in {
        return Err(std::io::Error::other("the schema never came"));
    }
    let w = tar.into_inner()?;
    let (sha, stored, raw, buf) = w.finish()?;
    let mut file = buf.into_inner().map_err(|e| e.into_error())?;
    file.flush()?;
    file.sync_all()?;
    Ok((sha, stored, raw))
}

/// The archive entry name of the schema.
const SCHEMA: &str = "schema.sql";

/// One part into the tar (a staged file is removed once in).
fn append<W: Write>(tar: &mut tar::Builder<W>, part: Part) -> std::io::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = |size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o600);
        h.set_mtime(now);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    {
        match part {
            Part::Bytes(name, bytes) => {
                tar.append_data(&mut header(bytes.len() as u64), &name, bytes.as_slice())?
            }
            Part::File(name, path) => {
                let f = std::fs::File::open(&path)?;
                let size = f.metadata()?.len();
                // Read exactly `size`: the header already says so.
                tar.append_data(&mut header(size), &name, f.take(size))?;
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

/// Load a `tab` database file into database `db` (made and empty). Blocking:
/// run it on a blocking thread; `rt` runs the clients. Returns the bytes of
/// SQL and rows loaded.
pub fn load(
    rt: &tokio::runtime::Handle,
    launcher: &Launcher,
    socket: &Path,
    db: &str,
    path: &Path,
    key: Option<&Key>,
) -> Result<u64, BackupError> {
    let io = |e: std::io::Error| BackupError::Corrupt(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(io)?;
    let r = stream::reader(std::io::BufReader::with_capacity(1 << 20, file), key).map_err(io)?;
    let mut archive = tar::Archive::new(r);
    let mut loaded = 0u64;
    let mut statement: Option<String> = None;
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
        if name == SCHEMA || name == "post.sql" {
            loaded += sql::load_blocking(rt, launcher, socket, Some(db), &[], &mut entry)?;
        } else if name.starts_with("data/") && name.ends_with(".load.sql") {
            let mut s = String::new();
            entry.read_to_string(&mut s).map_err(io)?;
            statement = Some(s);
        } else if name.starts_with("data/") && name.ends_with(".tsv") {
            let load = statement.take().ok_or_else(|| {
                BackupError::Corrupt(format!(
                    "{}: {name} comes without its .load.sql",
                    path.display()
                ))
            })?;
            // As mariadb-dump's header does: no checks while loading, and a
            // 0 in an AUTO_INCREMENT column stays 0.
            let sql = format!(
                "SET SESSION foreign_key_checks = 0, unique_checks = 0, \
                 time_zone = '+00:00', sql_mode = 'NO_AUTO_VALUE_ON_ZERO';\n{load}"
            );
            let args = ["--local-infile=1".to_string(), "-e".into(), sql];
            loaded += sql::load_blocking(rt, launcher, socket, Some(db), &args, &mut entry)?;
        } else {
            return Err(BackupError::Corrupt(format!(
                "{}: unexpected entry {name}",
                path.display()
            )));
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: &str, c: &str, g: &str, k: &str) -> Vec<String> {
        let hex = |s: &str| s.bytes().map(|b| format!("{b:02X}")).collect::<String>();
        vec![hex(t), hex(c), g.into(), k.into()]
    }

    #[test]
    fn generated_columns_are_left_out_of_export_and_load() {
        let rows = vec![
            row("g", "a", "NEVER", "int"),
            row("g", "b", "ALWAYS", "int"),
            row("t\tab", "x`y", "NEVER", "mediumtext"),
        ];
        let tables = parse_tables(&rows).unwrap().unwrap();
        assert_eq!(
            tables,
            vec![
                Table {
                    name: "g".into(),
                    columns: vec!["a".into()]
                },
                Table {
                    name: "t\tab".into(),
                    columns: vec!["x`y".into()]
                },
            ]
        );
        assert_eq!(
            load_sql(&tables[1]),
            "LOAD DATA LOCAL INFILE '/dev/stdin' INTO TABLE `t\tab` CHARACTER SET binary (`x``y`);\n"
        );
        assert_eq!(
            outfile_sql("d", &tables[0], Path::new("/f/x.tsv")),
            "SELECT `a` INTO OUTFILE '/f/x.tsv' CHARACTER SET binary FROM `d`.`g`;"
        );
    }

    #[test]
    fn a_database_with_bit_or_spatial_columns_is_left_to_mariadb_dump() {
        let rows = vec![row("t", "a", "NEVER", "int"), row("t", "f", "NEVER", "bit")];
        assert_eq!(parse_tables(&rows).unwrap(), None);
        let rows = vec![row("t", "p", "NEVER", "point")];
        assert_eq!(parse_tables(&rows).unwrap(), None);
    }

    #[test]
    fn a_database_is_staged_only_with_room_for_its_largest_table_several_times_over() {
        assert!(room_to_stage(100 << 20, 1 << 30));
        assert!(!room_to_stage(200 << 20, 1 << 30));
        assert!(!room_to_stage(u64::MAX, u64::MAX - 1));
    }

    #[test]
    fn secure_file_priv_is_read_from_hex_and_null_means_none() {
        assert_eq!(unhex("2F746D70"), Some(b"/tmp".to_vec()));
        assert_eq!(unhex("NULL"), None);
        assert_eq!(unhex("2F7"), None);
    }
}
