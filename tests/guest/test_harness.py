"""rig/guest/ harness (spec.py, observe.py, layers.py, run.py through harness.py): spec loading, observation
parsing, layer building, real host overlay runs, and the staged package tree the guest runs."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rig.guest import programs as guest_build
from rig.core import paths
from rig.guest import harness
from rig.guest.harness import Entry, Spec, SpecError

DATA = Path(__file__).parent.parent / "data" / "harness"
GUEST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}     # no PYTHONPATH to the checkout
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, trusted.* xattrs, chown)")


# ---------------------------------------------------------------- observations

@pytest.mark.parametrize("stdout, obs, diags", [
    ("a=1\nb=two words\n", {"a": "1", "b": "two words"}, []),
    ("k=v=w\n", {"k": "v=w"}, []),
    ("k=\n", {"k": ""}, []),
    ("# hello\n\n  \nx=1\r\n", {"x": "1"}, ["hello"]),
    ("no equals here\nx=1\nbad key=3\n", {"_stray.1": "no equals here", "x": "1", "_stray.2": "bad key=3"}, []),
    ("x=1\nx=2\n", {"x": "2", "_dup.x": "2"}, []),
    ("upper:a.b-c=ok", {"upper:a.b-c": "ok"}, []),
    ("", {}, []),
])
def test_parse_observations(stdout, obs, diags):
    assert harness.parse_observations(stdout) == (obs, diags)


# ---------------------------------------------------------------- specs

def test_all_repo_specs_load_and_have_programs():
    specs = harness.load_specs(paths.GUEST_TESTS)
    names = {s.name for s in specs}
    progs = {p.stem for p in paths.GUEST_TESTS.glob("*.c")}
    assert names == progs
    assert "rfc_read_ro_fd_after_copyup" in names
    for s in specs:
        assert s.description and s.lower and s.timeout > 0


def test_fixture_is_merged_and_overridden():
    s = harness.load_spec(DATA / "specs" / "uses_fixture.toml")
    assert s.name == "uses_fixture" and s.tags == ["meta"]
    assert s.mount_options == ["redirect_dir=on"]
    assert [e.path for e in s.lower[0]] == ["from_fixture"]
    o = harness.load_spec(DATA / "specs" / "overrides_fixture.toml")
    assert o.mount_options == [] and [e.path for e in o.lower[0]] == ["own"]


@pytest.mark.parametrize("body, msg", [
    ('description = "x"\n', "at least one [[lower]]"),
    ('bogus = 1\n[[lower]]\n', "unknown key"),
    ('[[lower]]\n[[lower.entries]]\npath = "/abs"\n', "relative 'path'"),
    ('[[lower]]\n[[lower.entries]]\npath = "../up"\n', "relative 'path'"),
    ('[[lower]]\n[[lower.entries]]\npath = "a"\ntype = "socket"\n', "type must be one of"),
    ('[[lower]]\n[[lower.entries]]\npath = "a"\ntype = "symlink"\n', "needs a 'target'"),
    ('[[lower]]\n[[lower.entries]]\npath = "a"\ntype = "hardlink"\ntarget = "b"\n', "earlier entry"),
    ('[[lower]]\n[[lower.entries]]\npath = "a"\nopaque = true\n', "opaque only applies to dirs"),
    ('[[lower]]\n[[lower.entries]]\npath = "a"\ncolour = "red"\n', "unknown entry field"),
    ('[[lower]]\n[[lower.entries]]\npath = "a"\nmode = "0644"\n', "mode must be"),
    ('timeout = 0\n[[lower]]\n', "timeout must be"),
    ('mount_options = ["lowerdir=/x"]\n[[lower]]\n', "layers come from the spec"),
    ('fixture = "nope"\n[[lower]]\n', "not found"),
    ('[[lower]\n', "bad.toml"),
])
def test_bad_specs_name_the_file(tmp_path, body, msg):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(SpecError) as ei:
        harness.load_spec(p)
    assert msg in str(ei.value) and "bad.toml" in str(ei.value)


def _copy_suite(dst: Path) -> Path:
    dst.mkdir()
    for p in paths.GUEST_TESTS.glob("*.toml"):
        (dst / p.name).write_bytes(p.read_bytes())
    (dst / "fixtures").mkdir()
    for p in (paths.GUEST_TESTS / "fixtures").glob("*.toml"):
        (dst / "fixtures" / p.name).write_bytes(p.read_bytes())
    return dst


def test_bundle_loads_the_same_specs_as_the_toml_files(tmp_path):
    """specs.json (what a staged dir carries for the guest) gives exactly the specs the TOML files give,
    fixtures merged; once it is there, the TOML files are not read."""
    d = _copy_suite(tmp_path / "t")
    from_toml = harness.load_specs(d)
    out = harness.write_bundle(d)
    assert out == d / "specs.json"
    tables = json.loads(out.read_text())
    assert "known_divergences.toml" not in tables and any(k.startswith("fixtures/") for k in tables)
    for p in [*d.glob("*.toml"), *(d / "fixtures").glob("*.toml")]:
        p.write_text("this = is not [valid toml")
    from_bundle = harness.load_specs(d)
    assert [(s.name, s.lower, s.upper, s.mount_options, s.timeout, s.phase, s.order, s.concurrent, s.tags)
            for s in from_bundle] == \
        [(s.name, s.lower, s.upper, s.mount_options, s.timeout, s.phase, s.order, s.concurrent, s.tags)
         for s in from_toml]
    assert len(from_bundle) == len(list(paths.GUEST_TESTS.glob("*.c")))


def test_bundle_keeps_every_check_and_names_the_file(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    (d / "bad.toml").write_text('fixture = "nope"\n[[lower]]\n')
    harness.write_bundle(d)
    with pytest.raises(SpecError, match=r"bad.toml: fixture 'nope' not found"):
        harness.load_specs(d)
    (d / "specs.json").write_text("{not json")
    with pytest.raises(SpecError, match=r"specs.json: unreadable .*stage the tests again"):
        harness.load_specs(d)
    (d / "specs.json").write_text('{"a.toml": 3}')
    with pytest.raises(SpecError, match=r"specs.json: not a table per spec file"):
        harness.load_specs(d)


def test_a_date_in_a_spec_leaves_no_bundle(tmp_path):
    """JSON has no dates: such a suite is read from its TOML files (the check reports the bad key)."""
    d = tmp_path / "t"
    d.mkdir()
    (d / "dated.toml").write_text("description = 1979-05-27\n[[lower]]\n")
    (d / "specs.json").write_text("{}")                  # a stale bundle goes
    assert harness.write_bundle(d) is None and not (d / "specs.json").exists()
    assert harness.load_specs(d)[0].name == "dated"


def test_select_by_glob_substring_tag_and_names():
    specs = [Spec(name=n, path=Path(n), tags=t) for n, t in
             [("mmap_a", ["mmap"]), ("rfc_read", ["rfc"]), ("b_mmap", []), ("z", ["x"])]]
    names = lambda sel: [s.name for s in sel]  # noqa: E731
    assert names(harness.select(specs, "mmap")) == ["b_mmap", "mmap_a"]
    assert names(harness.select(specs, "mmap_*")) == ["mmap_a"]
    assert names(harness.select(specs, "rfc,x")) == ["rfc_read", "z"]
    assert names(harness.select(specs, None, ["z", "mmap_a"])) == ["mmap_a", "z"]
    assert names(harness.select(specs)) == ["b_mmap", "mmap_a", "rfc_read", "z"]


def test_entry_size_fill():
    assert Entry(path="f", size=5, fill="ab").data() == b"ababa"
    assert Entry(path="f", content=b"x", size=9).data() == b"x"
    assert len(Entry(path="f", size=100).data()) == 100


# ---------------------------------------------------------------- layers

@root_only
def test_build_layer_all_types(tmp_path):
    spec = Spec(name="t", path=tmp_path / "t.toml")
    (tmp_path / "bins").mkdir()
    (tmp_path / "bins" / "t").write_bytes(b"\x7fELF-fake")
    ents = [
        Entry(path="d/f", content=b"hello", mode=0o600, uid=1000, gid=2000, mtime=946684800,
              xattrs={"user.a": b"1", "trusted.b": b"\x00\xff"}),
        Entry(path="d/big", size=30),
        Entry(path="d/link", type="hardlink", target="d/f"),
        Entry(path="sym", type="symlink", target="d/f", uid=5, gid=6),
        Entry(path="wh", type="whiteout"),
        Entry(path="chr", type="char", major=1, minor=3),
        Entry(path="fifo", type="fifo", mode=0o600),
        Entry(path="op", type="dir", opaque=True, mode=0o555),
        Entry(path="op/inside", content=b"x"),
        Entry(path="prog", source="@bin"),
        Entry(path="d", type="dir", mode=0o700, mtime=946684800),
    ]
    root = tmp_path / "layer"
    root.mkdir()
    harness.build_layer(root, ents, spec, tmp_path / "bins")
    st = os.lstat(root / "d/f")
    assert (root / "d/f").read_bytes() == b"hello"
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (1000, 2000)
    assert st.st_mtime == 946684800 and st.st_nlink == 2
    assert os.getxattr(root / "d/f", "trusted.b") == b"\x00\xff"
    assert os.getxattr(root / "d/f", "user.a") == b"1"
    assert os.lstat(root / "d/link").st_ino == st.st_ino
    assert (root / "d/big").read_bytes() == b"abcdefghijklmnopqrstuvwxyz\nabc"
    assert os.readlink(root / "sym") == "d/f" and os.lstat(root / "sym").st_uid == 5
    w = os.lstat(root / "wh")
    assert stat.S_ISCHR(w.st_mode) and w.st_rdev == os.makedev(0, 0)
    assert os.lstat(root / "chr").st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    assert os.getxattr(root / "op", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE(os.lstat(root / "op").st_mode) == 0o555 and (root / "op/inside").exists()
    assert stat.S_IMODE(os.lstat(root / "d").st_mode) == 0o700 and os.lstat(root / "d").st_mtime == 946684800
    assert (root / "prog").read_bytes() == b"\x7fELF-fake" and os.access(root / "prog", os.X_OK)

    up = harness.upper_state(root, [root])
    assert up["wh"]["whiteout"] is True and up["wh"]["type"] == "char"
    digests = {"user.a": hashlib.sha256(b"1").hexdigest()}      # trusted.b: not a user./security. xattr
    hello = hashlib.sha256(b"hello").hexdigest()
    assert up["d/f"] == {"type": "file", "mode": "0600", "uid": 1000, "gid": 2000, "size": 5,
                         "xattrs": {}, "in_lower": True, "whiteout": False, "sha256": hello,
                         "xattr_sha256": digests,
                         "lower": {"layer": 0, "type": "file", "mode": "0600", "uid": 1000, "gid": 2000, "size": 5,
                                   "sha256": hello, "xattr_sha256": digests}}
    assert up["op"]["xattrs"] == {"trusted.overlay.opaque": "y"}
    assert up["sym"]["target"] == "d/f"

    before = harness.checksum_tree(root)
    os.utime(root / "d/f", (0, 946684800))            # atime only: not a modification
    assert harness.checksum_tree(root) == before
    (root / "d/big").write_bytes(b"changed")
    assert harness.checksum_tree(root) != before


def _user_xattrs_supported(d: Path) -> bool:
    probe = d / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def test_upper_state_records_data_digest_and_the_lower_file(tmp_path):
    """Runs anywhere (no mount): the upper copy's sha256 and xattrs, and the topmost lower file's record."""
    top, bottom, upper = tmp_path / "lower0", tmp_path / "lower1", tmp_path / "upper"
    for d in (top, bottom, upper, top / "d", upper / "d"):
        d.mkdir()
    xattrs = _user_xattrs_supported(tmp_path)
    (bottom / "f").write_bytes(b"bottom")           # shadowed by the top lower layer's f
    (bottom / "only_bottom").write_bytes(b"b")
    (top / "f").write_bytes(b"hello")
    (top / "g").write_bytes(b"data")
    os.symlink("f", top / "sym")
    os.chmod(top / "f", 0o644)
    os.chmod(top / "g", 0o600)
    (upper / "f").write_bytes(b"hello")             # an exact copy-up
    (upper / "g").write_bytes(b"DATA")              # a copy-up that got written to and chmod'ed
    (upper / "only_bottom").write_bytes(b"b")
    (upper / "new").write_bytes(b"n")               # not in any lower layer
    os.symlink("f", upper / "sym")
    os.chmod(upper / "f", 0o644)
    os.chmod(upper / "g", 0o640)
    if xattrs:
        os.setxattr(top / "f", "user.a", b"1")
        os.setxattr(upper / "f", "user.a", b"1")
        os.setxattr(upper / "f", "user.overlay.origin", b"x")    # overlay-private: not in xattr_sha256
    os.utime(top / "f", (0, 946684800))              # an old atime: relatime would move it on a read
    before = os.stat(top / "f").st_atime_ns

    up = harness.upper_state(upper, [top, bottom])
    json.dumps(up)                                   # stays JSON-serialisable
    assert os.stat(top / "f").st_atime_ns == before  # read with O_NOATIME (we own the file)

    sha = lambda b: hashlib.sha256(b).hexdigest()    # noqa: E731
    uid, gid = os.getuid(), os.getgid()
    f = up["f"]
    assert {k: f[k] for k in ("type", "mode", "uid", "gid", "size", "in_lower", "whiteout")} == {
        "type": "file", "mode": "0644", "uid": uid, "gid": gid, "size": 5, "in_lower": True, "whiteout": False}
    assert f["sha256"] == sha(b"hello")
    want_x = {"user.a": sha(b"1")} if xattrs else {}
    assert f["xattr_sha256"] == want_x
    if xattrs:
        assert f["xattrs"] == {"user.overlay.origin": None}
    assert f["lower"] == {"layer": 0, "type": "file", "mode": "0644", "uid": uid, "gid": gid, "size": 5,
                          "sha256": sha(b"hello"), "xattr_sha256": want_x}
    g = up["g"]
    assert g["sha256"] == sha(b"DATA") and g["mode"] == "0640"
    assert (g["lower"]["sha256"], g["lower"]["mode"]) == (sha(b"data"), "0600")
    assert up["only_bottom"]["lower"]["layer"] == 1
    assert "lower" not in up["new"] and up["new"]["in_lower"] is False and up["new"]["sha256"] == sha(b"n")
    assert up["d"]["lower"] == {"layer": 0, "type": "dir", "mode": up["d"]["lower"]["mode"], "uid": uid,
                                "gid": gid, "xattr_sha256": {}}
    assert "sha256" not in up["d"] and "sha256" not in up["sym"]
    assert up["sym"]["lower"]["type"] == "symlink" and "sha256" not in up["sym"]["lower"]


@root_only
def test_userxattr_opaque_uses_user_namespace(tmp_path):
    spec = Spec(name="t", path=tmp_path / "t.toml", mount_options=["userxattr"])
    harness.build_layer(tmp_path, [Entry(path="o", type="dir", opaque=True)], spec, None)
    assert os.getxattr(tmp_path / "o", "user.overlay.opaque") == b"y"


# ---------------------------------------------------------------- real runs (host kernel overlayfs)

@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    return guest_build.build(paths.GUEST_TESTS, cache=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def data_bins(tmp_path_factory):
    return guest_build.build(DATA / "tests", cache=tmp_path_factory.mktemp("cache"))


def _mounts_under(p: Path) -> list[str]:
    return [ln for ln in Path("/proc/self/mounts").read_text().splitlines() if str(p) in ln]


@root_only
def test_run_on_host_overlay_rfc_and_mmap(bins, tmp_path):
    events = []
    res = harness.run_tests(bins, paths.GUEST_TESTS, tmp_path / "work", "overlay",
                            "rfc_read_ro_fd_after_copyup,mmap_shared_ro_after_copyup,readdir_after_whiteout",
                            emit=events.append)
    assert [e["event"] for e in events] == ["start", "result"] * 3 + ["done"]
    by = {r["name"]: r for r in res}
    rfc = by["rfc_read_ro_fd_after_copyup"]
    assert rfc["status"] == "ok" and rfc["exit_code"] == 0 and rfc["signal"] is None
    assert rfc["observations"]["read_data"] == "bar"       # fixed upstream in 4.19
    assert rfc["upper"]["foo"]["type"] == "file" and rfc["upper"]["foo"]["in_lower"] is True
    assert "trusted.overlay.origin" in rfc["upper"]["foo"]["xattrs"]
    assert rfc["lower_modified"] is False
    # docs/design.md §2 case 4: a MAP_SHARED mapping made after copy-up still shows the lower data
    assert by["mmap_shared_ro_after_copyup"]["observations"]["map_after_copyup"] == "foo-low"
    wh = by["readdir_after_whiteout"]
    assert wh["observations"]["listing_initial"] == "a,b"
    assert wh["upper"]["d/c"]["whiteout"] is True
    assert not _mounts_under(tmp_path) and list((tmp_path / "work").iterdir()) == []


@root_only
def test_timeout_crash_exit_code_and_lower_modified(data_bins, tmp_path):
    res = {r["name"]: r for r in harness.run_tests(data_bins, DATA / "tests", tmp_path / "w", "overlay",
                                                   emit=None)}
    s = res["sleeper"]
    assert s["status"] == "timeout" and s["observations"] == {"before": "sleep"} and "timed out" in s["error"]
    c = res["crashes"]
    assert c["status"] == "ok" and c["signal"] == 11 and c["exit_code"] is None
    w = res["writes_lower"]
    assert w["exit_code"] == 7 and w["lower_modified"] is True
    assert w["observations"] == {"tampered": "yes", "_stray.1": "stray line"}
    assert w["diagnostics"] == ["a diagnostic"]
    assert not _mounts_under(tmp_path)


@root_only
def test_missing_binary_is_an_error_result(tmp_path):
    (tmp_path / "bins").mkdir()
    res = harness.run_tests(tmp_path / "bins", DATA / "tests", tmp_path / "w", "overlay", "crashes", emit=None)
    assert res[0]["status"] == "error" and "no binary" in res[0]["error"]


@root_only
def test_cli_stdlib_only_json_lines(bins, tmp_path):
    """As the guest runs it: PYTHONPATH=guest/harness.zip python3 -S -m rig.guest.harness, from the staged
    package zip only (cwd /, no checkout on the path), JSON lines, --names file."""
    names = tmp_path / "names.txt"
    names.write_text("rfc_read_ro_fd_after_copyup\n")
    py = guest_build.stage_harness(tmp_path / "harness.zip")
    p = subprocess.run(["/usr/bin/python3", "-S", "-m", "rig.guest.harness", "--bins", str(bins),
                        "--tests", str(paths.GUEST_TESTS), "--work", str(tmp_path / "w"), "--target", "overlay",
                        "--names", str(names)], capture_output=True, text=True, cwd="/", timeout=120,
                       env={**GUEST_ENV, "PYTHONPATH": str(py)})
    assert p.returncode == 0, p.stderr
    evs = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert [e["event"] for e in evs] == ["start", "result", "done"]
    r = evs[1]
    assert set(r) >= {"event", "name", "status", "observations", "exit_code", "signal", "upper", "stderr",
                      "duration_s", "error", "lower_modified"}
    assert r["observations"]["read_data"] == "bar"


def test_harness_imports_only_stdlib(tmp_path):
    """From the staged zip, importing the harness loads rig.guest modules and the stdlib, nothing else (not
    even tomllib: the guest reads the specs' JSON bundle)."""
    py = guest_build.stage_harness(tmp_path / "harness.zip")
    p = subprocess.run([sys.executable, "-S", "-c",
                        "import sys, sysconfig; import rig.guest.harness; "
                        "std = sysconfig.get_paths()['stdlib']; "
                        "rig = sorted(m for m in sys.modules if m.split('.')[0] == 'rig'); print(' '.join(rig)); "
                        "bad = [m for m, mod in sys.modules.items() if m.split('.')[0] != 'rig' and "
                        "getattr(mod, '__file__', None) and not mod.__file__.startswith(std)]; "
                        "assert not bad, bad; assert 'tomllib' not in sys.modules; "
                        f"assert all(m.__file__.startswith({str(py)!r}) for n, m in sys.modules.items() "
                        "if n.split('.')[0] == 'rig'), 'rig imported from outside the staged zip'"],
                       capture_output=True, text=True, cwd="/", env={**GUEST_ENV, "PYTHONPATH": str(py)})
    assert p.returncode == 0, p.stderr
    loaded = set(p.stdout.split())
    assert loaded <= {"rig", "rig.guest", *(f"rig.guest.{Path(m).stem}" for m in guest_build.HARNESS_MODULES)}
    assert {"rig.guest.spec", "rig.guest.layers", "rig.guest.mount", "rig.guest.run"} <= loaded


def test_host_module_cli_help():
    """On the host: python -m rig.guest.harness from the checkout (what kproto's docs show)."""
    p = subprocess.run([sys.executable, "-m", "rig.guest.harness", "--help"], capture_output=True, text=True,
                       cwd=paths.REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "--target" in p.stdout and "rig.guest.harness" in p.stdout


def test_file_invocation_still_works():
    """python3 -S rig/guest/harness.py (guest_tests/README.md's form) finds its package from the file."""
    p = subprocess.run(["/usr/bin/python3", "-S", str(Path(harness.__file__)), "--help"], capture_output=True,
                       text=True, cwd="/", env=GUEST_ENV, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "--target" in p.stdout


def test_host_names_stay_reachable_as_harness_attributes():
    """rig/suite, rig/analysis and rig/nightly use these as harness.X."""
    for name in ("load_spec", "load_specs", "select", "run_order", "run_tests", "run_one", "SpecError", "Entry",
                 "Spec", "upper_state", "checksum_tree", "build_layer", "parse_observations", "Mounter",
                 "is_mounted", "kernel_state", "kmsg", "main"):
        assert hasattr(harness, name), name


# ---------------------------------------------------------------- the reference (FUSE)

@root_only
@pytest.mark.fuse
def test_run_on_reference(bins, tmp_path):
    pytest.importorskip("overlay_ref")
    res = {r["name"]: r for r in harness.run_tests(
        bins, paths.GUEST_TESTS, tmp_path / "w", "ref",
        "rfc_read_ro_fd_after_copyup,mmap_shared_ro_after_copyup,mmap_shared_ro_before_copyup",
        emit=None, ref_python=sys.executable)}
    for r in res.values():
        assert r["status"] == "ok", r["error"]
    assert res["rfc_read_ro_fd_after_copyup"]["observations"]["read_data"] == "bar"
    assert res["mmap_shared_ro_after_copyup"]["observations"]["map_after_copyup"] == "NEWDATA"
    assert res["mmap_shared_ro_before_copyup"]["observations"]["map_after_write"] == "NEWDATA"
    assert not _mounts_under(tmp_path)
