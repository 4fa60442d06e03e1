//! The key file watcher against real files, changed the ways they change in production.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use wpex::watch::{self, KeyWatcher, Update};
use wpex_proto::keys::PublicKey;

const K1: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
const K2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const K3: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

/// The bound: a change takes effect within 2 s.
const WITHIN: Duration = Duration::from_secs(2);

fn keys(list: &[&str]) -> Vec<PublicKey> {
    list.iter().map(|k| k.parse().expect("test key")).collect()
}

fn file_text(list: &[&str]) -> String {
    let mut text = String::from("# allowed peers\n");
    for k in list {
        text.push_str(k);
        text.push('\n');
    }
    text
}

/// What kubelet's AtomicWriter does to a ConfigMap (or projected) volume, step by step.
struct KubeletVolume {
    dir: PathBuf,
    /// The files of the payload: one ConfigMap key each.
    files: Vec<&'static str>,
    generation: u32,
}

impl KubeletVolume {
    fn new(dir: &Path, file: &'static str, content: &str) -> Self {
        Self::with_files(dir, &[(file, content)])
    }

    fn with_files(dir: &Path, payload: &[(&'static str, &str)]) -> Self {
        let mut volume = Self {
            dir: dir.to_owned(),
            files: payload.iter().map(|(file, _)| *file).collect(),
            generation: 0,
        };
        let first = volume.write_payload(payload);
        symlink(&first, dir.join("..data")).expect("..data symlink");
        for file in &volume.files {
            symlink(Path::new("..data").join(file), dir.join(file)).expect("file symlink");
        }
        volume
    }

    /// Writes the payload into a fresh `..<timestamp>` directory; returns its name.
    fn write_payload(&mut self, payload: &[(&'static str, &str)]) -> PathBuf {
        self.generation += 1;
        let name = PathBuf::from(format!(
            "..2026_11_25_04_00_{:02}.{}",
            self.generation,
            1000 + self.generation
        ));
        fs::create_dir(self.dir.join(&name)).expect("timestamped dir");
        for (file, content) in payload {
            fs::write(self.dir.join(&name).join(file), content).expect("payload");
        }
        name
    }

    /// New timestamped dir, `..data_tmp` symlink, rename over `..data`, old dir removed.
    fn update(&mut self, content: &str) {
        self.update_files(&[(self.files[0], content)]);
    }

    /// As [`KubeletVolume::update`], with every file of the payload; the set of files stays.
    fn update_files(&mut self, payload: &[(&'static str, &str)]) {
        let old = fs::read_link(self.dir.join("..data")).expect("current ..data");
        let new = self.write_payload(payload);
        symlink(&new, self.dir.join("..data_tmp")).expect("..data_tmp");
        fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).expect("swap ..data");
        fs::remove_dir_all(self.dir.join(old)).expect("remove old payload");
    }

    fn path(&self) -> PathBuf {
        self.dir.join(self.files[0])
    }
}

struct Watched {
    updates: mpsc::Receiver<Update>,
    _watcher: KeyWatcher,
    _runtime: tokio::runtime::Runtime,
}

impl Watched {
    fn start(path: PathBuf) -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let _context = runtime.enter();
        // As the relay starts: what it loaded is what the watcher compares with.
        let current = wpex_proto::keyfile::read(&path).ok().map(|(raw, _)| raw);
        let (tx, updates) = mpsc::channel();
        let watcher = watch::watch(path, current, watch::DEFAULT_POLL, move |u| {
            let _ = tx.send(u);
        })
        .expect("watch");
        Self {
            updates,
            _watcher: watcher,
            _runtime: runtime,
        }
    }

    fn next(&self) -> Update {
        self.updates
            .recv_timeout(WITHIN)
            .expect("the change was noticed within 2 s")
    }

    fn expect_keys(&self, expected: &[&str]) {
        match self.next() {
            Update::Loaded(got) => assert_eq!(got, keys(expected)),
            Update::Rejected(e) => panic!("expected keys {expected:?}, got rejection: {e}"),
        }
    }
}

#[test]
fn follows_kubelets_atomic_symlink_swap() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut volume = KubeletVolume::new(tmp.path(), "allowed-keys", &file_text(&[K1]));
    let watched = Watched::start(volume.path());

    volume.update(&file_text(&[K1, K2]));
    watched.expect_keys(&[K1, K2]);

    // A bad update is reported, naming the line, and changes nothing else.
    volume.update(&format!("{K1}\nnot-a-key\n"));
    match watched.next() {
        Update::Rejected(e) => assert!(e.to_string().contains("line 2"), "{e}"),
        Update::Loaded(k) => panic!("garbage accepted as {k:?}"),
    }

    // Re-publishing identical content is not a change; the next real change is what arrives.
    volume.update(&file_text(&[K2]));
    watched.expect_keys(&[K2]);
    volume.update(&file_text(&[K2]));
    volume.update(&file_text(&[K2, K3]));
    watched.expect_keys(&[K2, K3]);

    // An emptied ConfigMap means nobody, reported as an empty set (never open mode).
    volume.update("");
    watched.expect_keys(&[]);
}

#[test]
fn follows_an_editors_write_to_temp_and_rename() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("keys");
    fs::write(&path, file_text(&[K1])).expect("initial file");
    let watched = Watched::start(path.clone());

    let temp = tmp.path().join(".keys.swp");
    fs::write(&temp, file_text(&[K1, K3])).expect("temp file");
    fs::rename(&temp, &path).expect("rename over");
    watched.expect_keys(&[K1, K3]);

    fs::write(&temp, file_text(&[K3])).expect("temp file");
    fs::rename(&temp, &path).expect("rename over");
    watched.expect_keys(&[K3]);
}

#[test]
fn follows_a_write_in_place() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("keys");
    fs::write(&path, file_text(&[K1])).expect("initial file");
    let watched = Watched::start(path.clone());

    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("open in place");
    f.write_all(file_text(&[K2, K1]).as_bytes())
        .expect("write in place");
    drop(f);
    watched.expect_keys(&[K2, K1]);

    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("append");
    f.write_all(format!("{K3}\n").as_bytes())
        .expect("append key");
    drop(f);
    watched.expect_keys(&[K2, K1, K3]);
}

#[test]
fn a_deleted_file_is_reported_and_its_return_picked_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("keys");
    fs::write(&path, file_text(&[K1])).expect("initial file");
    let watched = Watched::start(path.clone());

    fs::remove_file(&path).expect("delete");
    match watched.next() {
        Update::Rejected(e) => assert!(e.to_string().contains("cannot read"), "{e}"),
        Update::Loaded(k) => panic!("a missing file loaded as {k:?}"),
    }
    fs::write(&path, file_text(&[K1])).expect("restore");
    watched.expect_keys(&[K1]);
}

#[test]
fn follows_a_directory_of_key_files_swapped_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The operator's layout past one ConfigMap: a projected volume, one file per ConfigMap.
    let (k1, k2, k3) = (file_text(&[K1]), file_text(&[K2]), file_text(&[K3]));
    let mut volume = KubeletVolume::with_files(tmp.path(), &[("keys-0", &k1), ("keys-1", &k2)]);
    let watched = Watched::start(tmp.path().to_owned());

    // One swap changes two files: the list arrives whole, never half old and half new.
    volume.update_files(&[("keys-0", &file_text(&[K1, K3])), ("keys-1", "")]);
    watched.expect_keys(&[K1, K3]);

    // A key removed from one file is gone; the other file's keys stay.
    volume.update_files(&[("keys-0", &k3), ("keys-1", "")]);
    watched.expect_keys(&[K3]);

    // A bad line in either file rejects the whole list.
    volume.update_files(&[("keys-0", &k3), ("keys-1", "not-a-key\n")]);
    match watched.next() {
        Update::Rejected(e) => assert!(e.to_string().contains("keys-1"), "{e}"),
        Update::Loaded(k) => panic!("garbage accepted as {k:?}"),
    }
    volume.update_files(&[("keys-0", &k3), ("keys-1", &k1)]);
    watched.expect_keys(&[K3, K1]);
}
