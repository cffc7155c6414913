//! Loading the numbering table from CSV files, all or nothing.
//!
//! Prefix file: `prefix,network[,…]` (the shared table's extra columns,
//! `country_code,region`, are read past). Ported file: `msisdn,network`. An
//! optional header line (`prefix,…` / `msisdn,…`), blank lines and `#`
//! comments are skipped; `\r\n` endings and a UTF-8 byte-order mark are
//! accepted. Fields are plain: no quoting (a quoted field is an error, not a
//! guess). Any bad row fails the whole load with the file, the line number and
//! the reason, and nothing is published.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use presence_codec::{Msisdn, MsisdnError};

use super::ported::{DuplicateMsisdn, PortedMap};
use super::prefix::{Prefix, PrefixIndex};
use super::{NameError, NetworkId, NetworkNames};

/// What is wrong with one row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// Fewer columns than needed.
    #[error("missing column {0}")]
    MissingColumn(&'static str),
    /// The prefix is not 1 to 15 digits without a leading zero.
    #[error("bad prefix {text:?}: {reason}")]
    BadPrefix {
        /// The field.
        text: String,
        /// Why.
        reason: MsisdnError,
    },
    /// The MSISDN is not valid E.164.
    #[error("bad MSISDN {text:?}: {reason}")]
    BadMsisdn {
        /// The field.
        text: String,
        /// Why.
        reason: MsisdnError,
    },
    /// The network name is not usable.
    #[error("bad network {name:?}: {reason}")]
    BadNetwork {
        /// The field.
        name: String,
        /// Why.
        reason: NameError,
    },
    /// The same prefix twice.
    #[error("prefix {prefix} already given on line {first_line}")]
    DuplicatePrefix {
        /// The prefix.
        prefix: String,
        /// Where it first appeared.
        first_line: usize,
    },
    /// The same ported MSISDN twice.
    #[error("MSISDN {msisdn} already given on line {first_line}")]
    DuplicateMsisdn {
        /// The MSISDN.
        msisdn: String,
        /// Where it first appeared.
        first_line: usize,
    },
    /// A field in quotes: this format has no quoting.
    #[error("quoted field: fields are plain, without quotes")]
    Quoted,
    /// Not UTF-8 text.
    #[error("not UTF-8")]
    NotUtf8,
    /// Longer than any valid row.
    #[error("row longer than {ROW_LEN_MAX} bytes")]
    TooLong,
}

/// Longest row accepted: far above any valid one, so a file that is not a
/// table (or has no newlines) fails fast instead of filling memory.
pub const ROW_LEN_MAX: usize = 1024;

/// Why a table could not be loaded. The table in use, if any, is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A row is bad.
    #[error("{path}:{line}: {reason}")]
    Row {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: RowError,
    },
    /// The prefix file has no prefix.
    #[error("{path}: no prefixes")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// A whole table read from files, not yet published.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) prefixes: PrefixIndex,
    pub(crate) ported: PortedMap,
    pub(crate) names: NetworkNames,
}

/// Calls `row(line_number, fields)` for every data row of a CSV file.
fn for_each_row(
    path: &Path,
    header: &str,
    mut row: impl FnMut(usize, &mut std::str::Split<'_, char>) -> Result<(), RowError>,
) -> Result<(), LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path).map_err(io)?);
    let mut buf = Vec::with_capacity(256);
    let mut line = 0usize;
    let mut header_possible = true;
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(ROW_LEN_MAX as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(io)?;
        if read == 0 {
            return Ok(());
        }
        line += 1;
        if buf.len() > ROW_LEN_MAX {
            return Err(LoadError::Row {
                path: path.to_owned(),
                line,
                reason: RowError::TooLong,
            });
        }
        let fail = |reason| LoadError::Row {
            path: path.to_owned(),
            line,
            reason,
        };
        let mut text = std::str::from_utf8(&buf).map_err(|_| fail(RowError::NotUtf8))?;
        if line == 1 {
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        let text = text.trim_end_matches(['\n', '\r']).trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        // A header may stand on the first line that is not blank or a comment.
        if std::mem::take(&mut header_possible) && text.starts_with(header) {
            continue;
        }
        if text.contains('"') {
            return Err(fail(RowError::Quoted));
        }
        row(line, &mut text.split(',')).map_err(fail)?;
    }
}

fn network_field(
    fields: &mut std::str::Split<'_, char>,
    names: &mut NetworkNames,
) -> Result<NetworkId, RowError> {
    let name = fields
        .next()
        .ok_or(RowError::MissingColumn("network"))?
        .trim();
    names.intern(name).map_err(|reason| RowError::BadNetwork {
        name: name.to_owned(),
        reason,
    })
}

/// Reads both files into a table. `base` keeps earlier network ids stable
/// across a reload.
pub(crate) fn load_files(
    prefixes_csv: &Path,
    ported_csv: Option<&Path>,
    base: Option<&NetworkNames>,
) -> Result<Loaded, LoadError> {
    let mut names = base.cloned().unwrap_or_default();
    let mut prefixes: Vec<(Prefix, NetworkId)> = Vec::new();
    let mut first_seen: HashMap<Prefix, usize> = HashMap::new();
    for_each_row(prefixes_csv, "prefix", |line, fields| {
        let text = fields
            .next()
            .ok_or(RowError::MissingColumn("prefix"))?
            .trim();
        let msisdn: Msisdn = text.parse().map_err(|reason| RowError::BadPrefix {
            text: text.to_owned(),
            reason,
        })?;
        let prefix = Prefix::of(msisdn);
        let network = network_field(fields, &mut names)?;
        if let Some(&first_line) = first_seen.get(&prefix) {
            return Err(RowError::DuplicatePrefix {
                prefix: text.to_owned(),
                first_line,
            });
        }
        first_seen.insert(prefix, line);
        prefixes.push((prefix, network));
        Ok(())
    })?;
    if prefixes.is_empty() {
        return Err(LoadError::Empty {
            path: prefixes_csv.to_owned(),
        });
    }
    let seed = hash_seed();
    let ported = match ported_csv {
        None => PortedMap::empty(seed),
        Some(path) => {
            let entries = read_ported(path, &mut names)?;
            match PortedMap::build(&entries, seed) {
                Ok(map) => map,
                Err(DuplicateMsisdn(msisdn)) => return Err(duplicate_ported(path, msisdn)),
            }
        }
    };
    Ok(Loaded {
        prefixes: PrefixIndex::build(&prefixes),
        ported,
        names,
    })
}

/// Reads a ported-numbers CSV into entries, interning network names.
pub(crate) fn read_ported(
    path: &Path,
    names: &mut NetworkNames,
) -> Result<Vec<(Msisdn, NetworkId)>, LoadError> {
    let mut entries = Vec::new();
    for_each_row(path, "msisdn", |_, fields| {
        let msisdn = msisdn_field(fields)?;
        let network = network_field(fields, names)?;
        entries.push((msisdn, network));
        Ok(())
    })?;
    Ok(entries)
}

fn msisdn_field(fields: &mut std::str::Split<'_, char>) -> Result<Msisdn, RowError> {
    let text = fields
        .next()
        .ok_or(RowError::MissingColumn("msisdn"))?
        .trim();
    text.parse().map_err(|reason| RowError::BadMsisdn {
        text: text.to_owned(),
        reason,
    })
}

/// Finds the two lines of a duplicate (the error path only: a second pass
/// costs nothing when the file is good, unlike a map of ten million lines).
fn duplicate_ported(path: &Path, duplicate: Msisdn) -> LoadError {
    let mut first_line = None;
    let found = for_each_row(path, "msisdn", |line, fields| {
        if msisdn_field(fields)? == duplicate {
            match first_line {
                None => first_line = Some(line),
                Some(first_line) => {
                    return Err(RowError::DuplicateMsisdn {
                        msisdn: duplicate.to_string(),
                        first_line,
                    })
                }
            }
        }
        Ok(())
    });
    found.err().unwrap_or_else(|| LoadError::Row {
        path: path.to_owned(),
        line: 0,
        reason: RowError::DuplicateMsisdn {
            msisdn: duplicate.to_string(),
            first_line: first_line.unwrap_or(0),
        },
    })
}

/// A per-process hash seed for the ported map.
fn hash_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x7072_6573_656e_6365);
    hasher.finish()
}
