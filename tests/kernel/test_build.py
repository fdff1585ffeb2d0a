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


def _make_lines(src) -> list[str]:
    from rig.kernel import kconfig
    objdir = build.objdir_for(src, kconfig.requested())
    return [l for l in (objdir.parent / f"{objdir.name}.log").read_text().splitlines() if l.startswith("$ ")]


def test_configure_runs_tinyconfigs_steps_itself_with_one_merge_and_one_olddefconfig(src, kcache):
    """The tree has 6.12's tinyconfig recipe: allnoconfig with tiny-base.config, then tiny.config (both
    kernel/ and arch/x86/) and kproto's fragment merged in one go, later files winning, then one
    olddefconfig: Kconfig runs twice, not three times."""
    k = build.build(src, [], progress=lambda m: None)
    runs = _make_lines(src)
    assert [l.split()[-1] for l in runs] == ["allnoconfig", "olddefconfig", "bzImage"]
    assert runs[0].startswith(f"$ KCONFIG_ALLCONFIG={src.path}/kernel/configs/tiny-base.config make ")
    config = k.config.read_text().splitlines()
    assert "CONFIG_EXPERT=y" in config                # tiny-base.config
    assert "CONFIG_NOHIGHMEM=y" in config             # arch/x86/configs/tiny.config
    assert "CONFIG_SMP=y" in config and "# CONFIG_SMP is not set" not in config   # the fragment wins


def test_a_tree_with_another_tinyconfig_recipe_gets_make_tinyconfig(kcache, tmp_path):
    import tarfile
    from kproto_helpers import FAKE_KERNEL
    copy = tmp_path / "linux-other"
    shutil.copytree(FAKE_KERNEL, copy)
    mk = copy / "scripts/kconfig/Makefile"
    mk.write_text(mk.read_text().replace("allnoconfig\n\t$(Q)$(MAKE) -f $(srctree)/Makefile tiny.config",
                                         "allnoconfig tiny.config"))
    tb = tmp_path / "linux-other.tar.gz"
    with tarfile.open(tb, "w:gz") as tf:
        tf.add(copy, arcname="linux-other")
    other = tree.open_source(str(tb))
    k = build.build(other, [], progress=lambda m: None)
    assert [l.split()[-1] for l in _make_lines(other)] == ["tinyconfig", "olddefconfig", "bzImage"]
    config = k.config.read_text().splitlines()
    assert "CONFIG_EXPERT=y" not in config and "CONFIG_SMP=y" in config
