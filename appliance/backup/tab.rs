//! Databases dumped with their rows read straight off the wire: one
//! `db/NAME.tar.zst` per database with the schema, each table's rows in
//! `LOAD DATA`'s tab-separated form, and the triggers and routines; loaded
//! back with `LOAD DATA LOCAL INFILE`.
//!
//! Why not `mariadb-dump` for the rows: its client formatting INSERT
//! statements was half of a backup's CPU (8-10 of 15.5-20 CPU seconds on
//! `bench/backup`'s data). Here the rows come over the protocol
//! ([`super::wire`]) and are escaped in Rust. `SELECT ... INTO OUTFILE` was
//! tried first: it made mariadbd escape every byte and copy the rows into a
//! staged file, and cost it twice what sending them does. Loading rows with
//! `LOAD DATA` is also faster than parsing INSERTs.
//!
//! The archive, in this order (a plain tar: `zstd -d | tar x` gives files an
//! operator can load by hand):
//! - `schema.sql`: `mariadb-dump --no-data --skip-triggers` (tables, views);
//! - per base table `data/T.load.sql`, the `LOAD DATA LOCAL INFILE
//!   '/dev/stdin'` statement for it (its column list leaves out generated
//!   columns), then its rows in `data/T.NNNNNN.tsv` chunks of about 8 MiB
//!   (`\N` for NULL; backslash, tab, newline and NUL escaped; bytes as
//!   stored), which concatenated are one `LOAD DATA` input;
//! - `post.sql`: triggers, routines and events, made after the rows are in,
//!   so no trigger fires on the load.
//!
//! Consistency: one connection takes a consistent snapshot, then sums each
//! table (`CHECKSUM TABLE` reads through it) and reads its rows, so the
//! rows and the recorded checksums are of the same instant, and no lock is
//! taken. The schema is read beside it; DDL during a backup can make the
//! two disagree, as with `mariadb-dump`, and the test restore would find it.
//!
//! A database with column types whose text form does not load back byte for
//! byte (BIT, spatial) is dumped with `mariadb-dump` instead
//! ([`super::dump`]).
//!
//! Touches: the instance's MariaDB (its socket, sessions and clients) and
//! the backup dir.

use super::BackupError;
use super::dump::{DumpCtx, checksum_sql, parse_checksums};
use super::manifest::{Database, FileEntry};
use super::sql::{self, ident, literal};
use super::stream::{self, Key, Writer};
use super::wire;
use crate::process::Launcher;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;

/// The manifest's `format` of a database dumped here.
pub const FORMAT: &str = "tab";

/// Column types whose text form does not load back unchanged.
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

/// The archive entry name of the schema, and of what comes after the rows.
const SCHEMA: &str = "schema.sql";
const POST: &str = "post.sql";

/// Rows per archive entry: about this many bytes (a row is never split).
const CHUNK: usize = 8 << 20;

/// How long a read from mariadbd may take (a `CHECKSUM TABLE` of a large
/// table sends nothing until it is done).
const READ_TIMEOUT: Duration = Duration::from_secs(3600);

/// One base table: its name and the columns that hold data.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<String>,
}

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

/// Rows of `columns_sql` -> tables, or `None` if a column's type is one
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

/// The query that reads `t` of `db`.
fn select_sql(db: &str, t: &Table) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| ident(c)).collect();
    format!(
        "SELECT {} FROM {}.{}",
        cols.join(", "),
        ident(db),
        ident(&t.name)
    )
}

/// The tables of `db` if it can be dumped here, else `None` (logged): a
/// column type this format cannot carry.
pub async fn tables(ctx: &DumpCtx, db: &str) -> Result<Option<Vec<Table>>, BackupError> {
    // A pooled session: a client process per query was one more process
    // start per database.
    let mut session = ctx.session().await?;
    let rows = session.run(&columns_sql(db)).await?;
    ctx.give_back(session);
    let tables = parse_tables(&rows)?;
    if tables.is_none() {
        tracing::info!(database = %db, "BIT or spatial columns: dumped with mariadb-dump");
    }
    Ok(tables)
}

/// Dump `db` (whose stored tables are `tables`) into `dir/db/NAME.tar.zst`.
pub async fn dump_database(
    ctx: &DumpCtx,
    dir: &Path,
    db: &(String, String, String),
    tables: Vec<Table>,
) -> Result<(FileEntry, Database), BackupError> {
    let name = &db.0;
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

    let (schema_tx, schema_rx) = oneshot::channel();
    let (post_tx, post_rx) = oneshot::channel();
    let job = Rows {
        socket: ctx.socket.clone(),
        db: name.clone(),
        tables,
        checksums: ctx.checksums,
        level: ctx.level,
        key: ctx.key.clone(),
        out: out.clone(),
    };
    let rows = tokio::task::spawn_blocking(move || job.run(schema_rx, post_rx));
    // The schema and the triggers and routines are read while the rows
    // stream (the rows wait for the schema only to be written after it).
    let meta = async {
        let (schema, post) = tokio::join!(
            super::dump::capture_dump(ctx, schema_args, &what),
            super::dump::capture_dump(ctx, post_args, &what)
        );
        let _ = schema_tx.send(schema?);
        let _ = post_tx.send(post?);
        Ok::<(), BackupError>(())
    };
    let (rows, meta) = tokio::join!(rows, meta);
    // A failed schema read ends the rows too: its error is the one to show.
    meta?;
    let (checksums, stored) =
        rows.map_err(|e| BackupError::Io(format!("dumping {name}: {e}")))??;
    Ok(super::dump::records(db, file, FORMAT, stored, checksums))
}

/// The blocking half of a dump: the snapshot, the checksums and the rows,
/// packed as they arrive.
struct Rows {
    socket: PathBuf,
    db: String,
    tables: Vec<Table>,
    checksums: bool,
    level: i32,
    key: Option<Key>,
    out: PathBuf,
}

type Checksums = BTreeMap<String, Option<String>>;

impl Rows {
    fn run(
        self,
        schema: oneshot::Receiver<Vec<u8>>,
        post: oneshot::Receiver<Vec<u8>>,
    ) -> Result<(Checksums, (String, u64, u64)), BackupError> {
        let io =
            |e: std::io::Error| BackupError::Io(format!("writing {}: {e}", self.out.display()));
        let mut conn = wire::Conn::connect(&self.socket, READ_TIMEOUT)?;
        // TIMESTAMP columns are read in UTC, as mariadb-dump does.
        conn.execute("SET SESSION time_zone = '+00:00'")?;
        conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")?;
        conn.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")?;
        let mut checksums = Checksums::new();
        let file = std::fs::File::create(&self.out).map_err(io)?;
        let w = Writer::new(
            std::io::BufWriter::with_capacity(1 << 20, file),
            self.level,
            self.key.as_ref(),
        )
        .map_err(io)?;
        let mut tar = tar::Builder::new(w);
        let gone = || BackupError::Dump(format!("reading the schema of {} failed", self.db));
        let schema = schema.blocking_recv().map_err(|_| gone())?;
        append(&mut tar, SCHEMA, &schema).map_err(io)?;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + (1 << 20));
        for t in &self.tables {
            let entry = format!("data/{}", t.name);
            append(
                &mut tar,
                &format!("{entry}.load.sql"),
                load_sql(t).as_bytes(),
            )
            .map_err(io)?;
            if self.checksums {
                // Summed just before its rows are read: a table that fits
                // the buffer pool is then read from disk once, not twice
                // (InnoDB reads with O_DIRECT, so the page cache does not
                // help). On bench/backup's data the sum was 30% of
                // mariadbd's CPU when every table was summed first.
                checksums.extend(checksum(&mut conn, &self.db, &t.name)?);
            }
            let mut chunk = 0usize;
            let mut failed: Option<std::io::Error> = None;
            conn.query(&select_sql(&self.db, t), |row| {
                for (i, v) in row.iter().enumerate() {
                    if i > 0 {
                        buf.push(b'\t');
                    }
                    wire::push_tsv_field(&mut buf, *v);
                }
                buf.push(b'\n');
                if buf.len() >= CHUNK {
                    chunk += 1;
                    if let Err(e) = append(&mut tar, &format!("{entry}.{chunk:06}.tsv"), &buf) {
                        failed = Some(e);
                        return Err(BackupError::Io("packing rows".into()));
                    }
                    buf.clear();
                }
                Ok(())
            })
            .map_err(|e| match failed.take() {
                Some(io_err) => io(io_err),
                None => e,
            })?;
            if !buf.is_empty() {
                chunk += 1;
                append(&mut tar, &format!("{entry}.{chunk:06}.tsv"), &buf).map_err(io)?;
                buf.clear();
            }
        }
        conn.execute("COMMIT")?;
        drop(conn);
        let post = post.blocking_recv().map_err(|_| gone())?;
        append(&mut tar, POST, &post).map_err(io)?;
        let w = tar.into_inner().map_err(io)?;
        let (sha, stored, raw, buf) = w.finish().map_err(io)?;
        let mut file = buf.into_inner().map_err(|e| io(e.into_error()))?;
        file.flush().map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok((checksums, (sha, stored, raw)))
    }
}

/// `CHECKSUM TABLE` of one table, in the connection's snapshot.
fn checksum(conn: &mut wire::Conn, db: &str, table: &str) -> Result<Checksums, BackupError> {
    let mut rows = Vec::new();
    conn.query(&checksum_sql(db, &[table.to_string()]), |r| {
        let text = |v: wire::Value| {
            v.map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_else(|| "NULL".into())
        };
        rows.push(r.iter().map(|&v| text(v)).collect::<Vec<String>>());
        Ok(())
    })?;
    Ok(parse_checksums(db, &rows))
}

/// One entry into the tar.
fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, bytes)
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
    let mut entries = archive.entries().map_err(io)?.peekable();
    let is_rows = |e: &tar::Entry<'_, _>| {
        e.path()
            .map(|p| p.to_string_lossy().ends_with(".tsv"))
            .unwrap_or(false)
    };
    while let Some(entry) = entries.next() {
        let mut entry = entry.map_err(io)?;
        let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
        if name == SCHEMA || name == POST {
            let mut feed = |w: &mut std::fs::File| std::io::copy(&mut entry, w);
            loaded += sql::load_blocking(rt, launcher, socket, Some(db), &[], &mut feed)?;
        } else if name.starts_with("data/") && name.ends_with(".load.sql") {
            let mut load = String::new();
            entry.read_to_string(&mut load).map_err(io)?;
            // As mariadb-dump's header does: no checks while loading, and a
            // 0 in an AUTO_INCREMENT column stays 0.
            let sql = format!(
                "SET SESSION foreign_key_checks = 0, unique_checks = 0, \
                 time_zone = '+00:00', sql_mode = 'NO_AUTO_VALUE_ON_ZERO';\n{load}"
            );
            let args = ["--local-infile=1".to_string(), "-e".into(), sql];
            // The table's row chunks that follow, as one input.
            let mut feed = |w: &mut std::fs::File| {
                let mut n = 0;
                while entries
                    .peek()
                    .is_some_and(|e| e.as_ref().is_ok_and(is_rows))
                {
                    let mut rows = entries.next().expect("peeked")?;
                    n += std::io::copy(&mut rows, w)?;
                }
                Ok(n)
            };
            loaded += sql::load_blocking(rt, launcher, socket, Some(db), &args, &mut feed)?;
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
        assert_eq!(select_sql("d", &tables[0]), "SELECT `a` FROM `d`.`g`");
    }

    #[test]
    fn a_database_with_bit_or_spatial_columns_is_left_to_mariadb_dump() {
        let rows = vec![row("t", "a", "NEVER", "int"), row("t", "f", "NEVER", "bit")];
        assert_eq!(parse_tables(&rows).unwrap(), None);
        let rows = vec![row("t", "p", "NEVER", "point")];
        assert_eq!(parse_tables(&rows).unwrap(), None);
    }

    #[test]
    fn hex_names_are_decoded_and_null_or_odd_lengths_refused() {
        assert_eq!(unhex("2F746D70"), Some(b"/tmp".to_vec()));
        assert_eq!(unhex("NULL"), None);
        assert_eq!(unhex("2F7"), None);
    }
}
