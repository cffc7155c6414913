//! The OGPS numbering table as a specification: the shared real-world table,
//! nested prefixes, ported numbers, all-or-nothing loading, a model-based
//! property test, and readers running while a writer publishes versions.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use presence_codec::Msisdn;
use presence_engine::table::{
    LoadError, NetworkId, NetworkNames, NumberingTable, PortedMap, Prefix, PrefixIndex, RowError,
};
use proptest::prelude::*;

fn shared_table_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv")
}

fn m(text: &str) -> Msisdn {
    text.parse().unwrap()
}

/// A scratch file holding `contents`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("presence-gw-test-{}-{name}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(contents.as_bytes())
            .unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The shared table's rows: (prefix digits, network name).
fn shared_rows() -> Vec<(String, String)> {
    std::fs::read_to_string(shared_table_path())
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            let mut fields = line.split(',');
            (
                fields.next().unwrap().to_owned(),
                fields.next().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn every_row_of_the_shared_table_resolves_to_its_own_network() {
    let table = NumberingTable::load(&shared_table_path(), None).unwrap();
    let v = table.snapshot();
    let rows = shared_rows();
    assert_eq!(rows.len(), 29_244);
    assert_eq!(v.prefixes().len(), 29_244);
    assert_eq!(v.names().len(), 1_546);
    for (prefix, network) in &rows {
        // The prefix itself as a number: no longer prefix can match it.
        let got = v.lookup(m(prefix)).map(|id| v.network_name(id));
        assert_eq!(got, Some(network.as_str()), "prefix {prefix}");
        // Extended with digits up to 15, it matches this prefix or a longer
        // one of the table.
        let long = format!("{prefix:0<15}");
        let expected = rows
            .iter()
            .filter(|(p, _)| long.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, n)| n.as_str());
        assert_eq!(
            v.lookup(m(&long)).map(|id| v.network_name(id)),
            expected,
            "number {long}"
        );
    }
}

#[test]
fn numbers_outside_every_prefix_have_no_network() {
    let table = NumberingTable::load(&shared_table_path(), None).unwrap();
    let v = table.snapshot();
    // Short numbers shorter than any prefix of the table (3+ digits).
    assert_eq!(v.lookup(m("1")), None);
    assert_eq!(v.lookup(m("44")), None);
}

#[test]
fn ported_file_overrides_prefixes() {
    let ported = TempFile::new(
        "ported.csv",
        "msisdn,network\n447700900123,ported-net.gb\n12025550143,vodafone.gb\n",
    );
    let table = NumberingTable::load(&shared_table_path(), Some(&ported.0)).unwrap();
    let v = table.snapshot();
    assert_eq!(v.ported().len(), 2);
    assert_eq!(
        v.network_name(v.lookup(m("447700900123")).unwrap()),
        "ported-net.gb"
    );
    assert_eq!(
        v.network_name(v.lookup(m("12025550143")).unwrap()),
        "vodafone.gb"
    );
}

fn load_error(prefixes: &str, ported: Option<&str>) -> (usize, RowError) {
    let p = TempFile::new("prefixes-bad.csv", prefixes);
    let q = ported.map(|text| TempFile::new("ported-bad.csv", text));
    match NumberingTable::load(&p.0, q.as_ref().map(|f| f.0.as_path())) {
        Err(LoadError::Row { line, reason, .. }) => (line, reason),
        other => panic!("expected a row error, got {other:?}"),
    }
}

#[test]
fn a_bad_row_fails_the_load_with_its_line_and_reason() {
    let (line, reason) = load_error("prefix,network\n44,a.gb\n4x7,b.gb\n", None);
    assert_eq!(line, 3);
    assert!(matches!(reason, RowError::BadPrefix { .. }), "{reason:?}");
    let (line, reason) = load_error("44,a.gb\n33\n", None);
    assert_eq!((line, reason), (2, RowError::MissingColumn("network")));
    let (line, reason) = load_error("44,a.gb\n# comment\n\n44,b.gb\n", None);
    assert_eq!(
        (line, reason),
        (
            4,
            RowError::DuplicatePrefix {
                prefix: "44".into(),
                first_line: 1
            }
        )
    );
    let (line, reason) = load_error("44,\"a.gb\"\n", None);
    assert_eq!((line, reason), (1, RowError::Quoted));
    let (line, reason) = load_error("44,a b\n", None);
    assert_eq!(line, 1);
    assert!(matches!(reason, RowError::BadNetwork { .. }));
    let (line, reason) = load_error(
        "44,a.gb\n",
        Some("msisdn,network\n447700900123,b.gb\n447700900124,b.gb\n447700900123,c.gb\n"),
    );
    assert_eq!(
        (line, reason),
        (
            4,
            RowError::DuplicateMsisdn {
                msisdn: "447700900123".into(),
                first_line: 2
            }
        )
    );
    let (line, reason) = load_error("44,a.gb\n", Some("0447,b.gb\n"));
    assert_eq!(line, 1);
    assert!(matches!(reason, RowError::BadMsisdn { .. }));
}

#[test]
fn a_failed_reload_never_replaces_a_good_table() {
    let good = TempFile::new("good.csv", "44,a.gb\n447,b.gb\n");
    let bad = TempFile::new("bad.csv", "44,a.gb\n447,b.gb\n4478,c.gb\n0,d.gb\n");
    let table = NumberingTable::load(&good.0, None).unwrap();
    assert!(table.reload(&bad.0, None).is_err());
    let v = table.snapshot();
    assert_eq!(v.version(), 1);
    assert_eq!(v.network_name(v.lookup(m("447812345678")).unwrap()), "b.gb");
    // A good reload is the next version, with ids kept.
    let better = TempFile::new("better.csv", "447,b.gb\n4478,c.gb\n");
    let b_before = v.names().id("b.gb");
    assert_eq!(table.reload(&better.0, None).unwrap(), 2);
    let v = table.snapshot();
    assert_eq!(v.network_name(v.lookup(m("447812345678")).unwrap()), "c.gb");
    assert_eq!(v.lookup(m("441234567890")), None);
    assert_eq!(v.names().id("b.gb"), b_before);
}

/// The reference model: a map of prefixes searched naively, and a map of
/// ported numbers.
#[derive(Debug, Default, Clone)]
struct Model {
    prefixes: BTreeMap<String, u16>,
    ported: BTreeMap<u64, u16>,
}

impl Model {
    fn lookup(&self, msisdn: Msisdn) -> Option<u16> {
        if let Some(n) = self.ported.get(&msisdn.as_u64()) {
            return Some(*n);
        }
        let digits = msisdn.to_string();
        self.prefixes
            .iter()
            .filter(|(p, _)| digits.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, n)| *n)
    }
}

/// Digit strings from a small alphabet so prefixes nest and collide often.
fn digits(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(prop_oneof![Just('1'), Just('4'), Just('0'), Just('9')], len)
        .prop_map(|mut d| {
            if d[0] == '0' {
                d[0] = '4';
            }
            d.into_iter().collect()
        })
}

#[derive(Debug, Clone)]
enum Op {
    Port(String, u16),
    Unport(String),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (digits(1..=15), 0u16..6).prop_map(|(d, n)| Op::Port(d, n)),
        digits(1..=15).prop_map(Op::Unport),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn table_agrees_with_a_naive_model(
        prefixes in proptest::collection::btree_map(digits(1..=15), 0u16..6, 0..60),
        ops in proptest::collection::vec(op(), 0..40),
        probes in proptest::collection::vec(digits(1..=15), 1..120),
    ) {
        let mut names = NetworkNames::default();
        for n in 0..6 {
            names.intern(&format!("net{n}")).unwrap();
        }
        let entries: Vec<(Prefix, NetworkId)> = prefixes
            .iter()
            .map(|(p, n)| (Prefix::parse(p).unwrap(), NetworkId(*n)))
            .collect();
        let table = NumberingTable::new(PrefixIndex::build(&entries), PortedMap::empty(5), names);
        let mut model = Model { prefixes, ported: BTreeMap::new() };
        let mut reader = table.reader();
        let check = |model: &Model, reader: &mut presence_engine::table::TableReader| {
            // Probe the given numbers, every op's number, and every prefix as a number.
            for probe in probes.iter().chain(model.prefixes.keys()) {
                let msisdn = m(probe);
                let got = reader.lookup(msisdn).map(|id| id.0);
                assert_eq!(got, model.lookup(msisdn), "number {probe}");
            }
        };
        check(&model, &mut reader);
        for op in &ops {
            match op {
                Op::Port(d, n) => {
                    table.set_ported(m(d), &format!("net{n}")).unwrap();
                    model.ported.insert(m(d).as_u64(), *n);
                }
                Op::Unport(d) => {
                    table.remove_ported(m(d)).unwrap();
                    model.ported.remove(&m(d).as_u64());
                }
            }
            let probe = match op { Op::Port(d, _) | Op::Unport(d) => m(d) };
            prop_assert_eq!(reader.lookup(probe).map(|id| id.0), model.lookup(probe));
        }
        check(&model, &mut reader);
        prop_assert_eq!(reader.current().ported().len(), model.ported.len());
        let mut batch_out = vec![None; probes.len()];
        let msisdns: Vec<Msisdn> = probes.iter().map(|p| m(p)).collect();
        reader.current().lookup_batch(&msisdns, &mut batch_out);
        for (msisdn, got) in msisdns.iter().zip(&batch_out) {
            prop_assert_eq!(got.map(|id| id.0), model.lookup(*msisdn));
        }
    }
}

#[test]
fn readers_never_see_a_torn_version_while_thousands_are_published() {
    // Invariant of every published version v: the two "twin" numbers are
    // ported to the same network, named `twin-<v>`, set in one batch.
    const VERSIONS: u64 = 3_000;
    let table = Arc::new(NumberingTable::load(&shared_table_path(), None).unwrap());
    let twin_a = m("447700900001");
    let twin_b = m("33612345678");
    table
        .update_ported(&[(twin_a, Some("twin-1")), (twin_b, Some("twin-1"))])
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let table = table.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut reader = table.reader();
                let mut last_version = 0;
                let mut checks = 0u64;
                while !done.load(Ordering::Relaxed) || checks == 0 {
                    let v = reader.current();
                    assert!(v.version() >= last_version, "versions only move forward");
                    last_version = v.version();
                    let a = v.lookup(twin_a).map(|id| v.network_name(id).to_owned());
                    let b = v.lookup(twin_b).map(|id| v.network_name(id).to_owned());
                    assert_eq!(a, b, "torn read in version {}", v.version());
                    assert!(a.unwrap().starts_with("twin-"));
                    // A prefix lookup in the same version is unaffected.
                    assert!(v.lookup(m("4915112345678")).is_some());
                    checks += 1;
                }
                (checks, last_version)
            })
        })
        .collect();
    for i in 0..VERSIONS {
        let name = format!("twin-{}", i % 50);
        table
            .update_ported(&[(twin_a, Some(&name)), (twin_b, Some(&name))])
            .unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        let (checks, last_version) = reader.join().unwrap();
        assert!(checks > 0);
        assert!(last_version <= VERSIONS + 2);
    }
    assert_eq!(table.snapshot().version(), VERSIONS + 2);
}

#[test]
fn old_versions_are_reclaimed_once_no_reader_holds_them() {
    let table = NumberingTable::load(&shared_table_path(), None).unwrap();
    let held = table.snapshot();
    let weak = Arc::downgrade(&held);
    table.set_ported(m("447700900001"), "x.gb").unwrap();
    assert!(weak.upgrade().is_some(), "a holder keeps version 1 alive");
    drop(held);
    // The writer frees it (never the reader that let it go): on the next
    // update, or when asked.
    table.reclaim();
    assert!(weak.upgrade().is_none(), "and nothing else does");
}
