import pytest

from rig.kernel import patches
from rig.core.errors import BadInput

DIFF = b"""diff --git a/f.c b/f.c
--- a/f.c
+++ b/f.c
@@ -1,1 +1,1 @@
-a
+b
"""
MAIL = b"From 0123456789abcdef0123456789abcdef01234567 Mon Sep 17 00:00:00 2001\nFrom: A <a@b>\nSubject: [PATCH] ovl: fix\n the thing\n\n---\n" + DIFF


@pytest.mark.parametrize("content,message", [
    (None, "patch not found"),
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"\x7fELF\x00\x01binary", "binary file, not a patch"),
    (b"just some text\nno diff here\n", "is not a patch"),
    (b"diff --git a/f b/f\n--- a/f\n+++ b/f\n", "is not a patch"),   # header without hunks
])
def test_bad_patch_files_are_bad_input_naming_the_file(tmp_path, content, message):
    p = tmp_path / "x.patch"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(BadInput, match=message) as e:
        patches.load(p)
    assert "x.patch" in e.value.message
    assert e.value.exit_code == 2


def test_plain_diff_and_mail_forms(tmp_path):
    d = tmp_path / "a.diff"
    d.write_bytes(DIFF)
    m = tmp_path / "0001-fix.patch"
    m.write_bytes(MAIL)
    pd, pm = patches.load(d), patches.load(m)
    assert not pd.mail and pm.mail
    assert pm.subject == "[PATCH] ovl: fix the thing"
    assert len(pd.sha256) == 64 and pd.sha256 != pm.sha256


def test_directory_expands_in_order_and_skips_cover_letter(tmp_path):
    (tmp_path / "0000-cover-letter.patch").write_bytes(b"Subject: [PATCH 0/2] series\n\nblurb\n")
    (tmp_path / "0002-b.patch").write_bytes(MAIL)
    (tmp_path / "0001-a.patch").write_bytes(MAIL.replace(b"+b", b"+c"))
    (tmp_path / "notes.txt").write_text("ignored")
    series = patches.expand([tmp_path])
    assert [p.path.name for p in series] == ["0001-a.patch", "0002-b.patch"]
    assert patches.series_digest(series) != patches.series_digest(series[::-1])


def test_empty_directory_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="holds no"):
        patches.expand([tmp_path])
