import hashlib
import subprocess
from pathlib import Path

import pytest

from kproto_helpers import FAKE_KERNEL, make_patch
from rig.kernel import patches
from rig.kernel import tree
from rig.core.errors import BadInput, PatchError


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if ".git" in p.relative_to(root).parts:
            continue
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _edit(text_from, text_to, path="fs/overlayfs/file.c"):
    def edit(work: Path):
        f = work / path
        f.write_text(f.read_text().replace(text_from, text_to))
    return edit


@pytest.fixture
def src(kcache, fake_tarball):
    return tree.open_source(str(fake_tarball))


def test_tarball_becomes_a_git_tree_at_a_base(src):
    assert (src.path / ".git").is_dir()
    assert src.is_at_base()
    assert src.version() == "6.12.0"
    # a second open reuses the unpacked tree
    assert tree.open_source(src.origin).path == src.path


def test_applied_patch_is_in_place_and_tree_restored_after(src, tmp_path):
    before = _digest(src.path)
    p = patches.load(make_patch(FAKE_KERNEL, _edit("return 0;", "return 1;"), "ovl: one", tmp_path / "one.patch"))
    with src.applied([p]):
        assert "return 1;" in (src.path / "fs/overlayfs/file.c").read_text()
        (src.path / "stray.o").write_text("build droppings")
    assert _digest(src.path) == before and src.is_at_base()


def test_plain_diff_applies_with_git_apply(src, tmp_path):
    d = tmp_path / "plain.diff"
    d.write_text("--- a/fs/overlayfs/file.c\n+++ b/fs/overlayfs/file.c\n@@ -1,3 +1,3 @@\n"
                 "-/* fake fs/overlayfs/file.c */\n+/* patched */\n int ovl_mmap(void)\n {\n")
    with src.applied([patches.load(d)]):
        assert (src.path / "fs/overlayfs/file.c").read_text().startswith("/* patched */")
    assert src.is_at_base()


def test_patch_that_does_not_apply_names_hunk_and_leaves_tree_identical(src, tmp_path):
    before = _digest(src.path)
    good = patches.load(make_patch(FAKE_KERNEL, _edit("return 0;", "return 1;"), "ovl: one", tmp_path / "a.patch"))
    bad_src = make_patch(FAKE_KERNEL, _edit("return 0;", "return 2;"), "ovl: two", tmp_path / "b.patch")
    bad_src.write_text(bad_src.read_text().replace("-\treturn 0;", "-\treturn 42;"))
    bad = patches.load(bad_src)
    with pytest.raises(PatchError) as e:
        src.check_applies([good, bad])
    msg = e.value.message
    assert "b.patch" in msg and "fs/overlayfs/file.c:" in msg and "ovl: two" in msg
    assert e.value.exit_code == 2
    assert _digest(src.path) == before and src.is_at_base()


def test_user_git_tree_is_used_through_a_worktree_and_never_modified(kcache, tmp_path):
    user = tmp_path / "linux"
    subprocess.run(["cp", "-a", str(FAKE_KERNEL), str(user)], check=True)
    g = lambda *a: subprocess.run(["git", "-C", str(user), *a], check=True, capture_output=True, text=True).stdout
    g("init", "-q"); g("add", "-A"); g("-c", "user.name=u", "-c", "user.email=u@u", "commit", "-q", "-m", "mine")
    (user / "local-edit.txt").write_text("uncommitted work of the user")
    head = g("rev-parse", "HEAD").strip()
    src = tree.open_source(str(user))
    assert src.path != user and src.base == head
    p = patches.load(make_patch(FAKE_KERNEL, _edit("return 0;", "return 1;"), "x", tmp_path / "x.patch"))
    with src.applied([p]):
        assert "return 1;" in (src.path / "fs/overlayfs/file.c").read_text()
    assert "return 0;" in (user / "fs/overlayfs/file.c").read_text()
    assert (user / "local-edit.txt").read_text() == "uncommitted work of the user"
    assert g("rev-parse", "HEAD").strip() == head


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "missing", "no such file"),
    (lambda d: (d / "t.txt").write_text("x") and d / "t.txt", "not a tarball"),
    (lambda d: d, "not a kernel tree"),
])
def test_bad_kernel_src_is_bad_input(kcache, tmp_path, make, message):
    with pytest.raises(BadInput, match=message):
        tree.open_source(str(make(tmp_path)))
