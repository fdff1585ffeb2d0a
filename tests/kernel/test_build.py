import shutil
from pathlib import Path

import pytest

from kproto_helpers import FAKE_KERNEL, make_patch
from rig.kernel import build
from rig.kernel import patches
from rig.kernel import tree
from rig.core.errors import BuildError, ConfigError


@pytest.fixture
def src(kcache, fake_tarball):
    return tree.open_source(str(fake_tarball))


def _patch(tmp_path, name, new):
    def edit(work: Path):
        f = work / "fs/overlayfs/file.c"
        f.write_text(f.read_text().replace("return 0;", new))
    return patches.load(make_patch(FAKE_KERNEL, edit, f"ovl: {name}", tmp_path / f"{name}.patch"))


def test_baseline_build_is_cached_and_config_checked(src, kcache):
    k = build.build(src, [], progress=lambda m: None)
    assert k.bzimage.is_file() and not k.cached and k.version == "6.12.0-fake"
    assert (k.bzimage.parent / "meta.json").is_file()
    assert "CONFIG_OVERLAY_FS=y" in k.config.read_text()
    again = build.build(src, [], progress=lambda m: None)
    assert again.cached and again.bzimage == k.bzimage


@pytest.mark.skipif(shutil.which("ccache") is None, reason="ccache is not installed (setup.sh installs it)")
def test_a_ccache_miss_compiles_once_without_a_preprocessor_pass(src, kcache):
    """ccache in depend mode: a cold build's misses are keyed on the .d file gcc writes while compiling,
    so no file goes through cpp a second time (preprocessor mode counts a preprocessed miss for each);
    the same objects in a second object tree are then hits."""
    build.build(src, [], progress=lambda m: None)
    stats = build.ccache_stats(kcache / "ccache")
    assert stats["direct_cache_miss"] == 2 and stats["preprocessed_cache_miss"] == 0, stats
    from rig.kernel import kconfig
    shutil.rmtree(build.objdir_for(src, kconfig.requested()))
    shutil.rmtree(kcache / "kernels")
    build.build(src, [], progress=lambda m: None)
    stats = build.ccache_stats(kcache / "ccache")
    assert stats["direct_cache_hit"] == 2 and stats["preprocessed_cache_miss"] == 0, stats


def test_patched_build_is_incremental_in_the_baseline_object_tree(src, tmp_path):
    base = build.build(src, [], progress=lambda m: None)
    p = _patch(tmp_path, "one", "return 1;")
    patched = build.build(src, [p], progress=lambda m: None)
    assert patched.key != base.key and patched.bzimage.read_bytes() != base.bzimage.read_bytes()
    from rig.kernel import kconfig
    objdir = build.objdir_for(src, kconfig.requested())
    log = (objdir.parent / f"{objdir.name}.log").read_text()
    # the patched build reused the configured object tree: not reconfigured, only the patched file rebuilt
    assert "tinyconfig" not in log and "olddefconfig" not in log
    assert "CC      fs/overlayfs/file.o" in log and "copy_up.o" not in log
    assert src.is_at_base()


def test_build_error_is_exit_3_with_compiler_lines_and_no_cache_entry(src, tmp_path, kcache):
    p = _patch(tmp_path, "broken", "return undeclared_thing;")
    with pytest.raises(BuildError) as e:
        build.build(src, [p], progress=lambda m: None)
    assert e.value.exit_code == 3
    assert "undeclared_thing" in e.value.detail and "error" in e.value.detail
    kernels = kcache / "kernels"
    assert not kernels.exists() or all(not d.name.startswith(".tmp") and (d / "bzImage").is_file()
                                       for d in kernels.iterdir())
    assert build.lookup(build.cache_key(src, [p], __import__("rig.kernel.kconfig").kernel.kconfig.requested())) is None
    assert src.is_at_base()


def test_option_that_does_not_land_is_named(src, tmp_path):
    frag = tmp_path / "extra.config"
    frag.write_text("CONFIG_NOT_IN_THIS_TREE=y\n")
    with pytest.raises(ConfigError, match="CONFIG_NOT_IN_THIS_TREE=y"):
        build.build(src, [], (frag,), progress=lambda m: None)


def test_half_written_cache_entries_are_never_used(src, kcache):
    from rig.kernel import kconfig
    key = build.cache_key(src, [], kconfig.requested())
    partial = kcache / "kernels" / key
    partial.mkdir(parents=True)
    (partial / "bzImage").write_bytes(b"half")      # no meta.json: an interrupted copy
    assert build.lookup(key) is None
