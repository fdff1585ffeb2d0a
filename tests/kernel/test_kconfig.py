
import pytest

from rig.kernel import kconfig
from rig.core.errors import BadInput, ConfigError


def test_fragment_has_the_debug_options_kproto_relies_on():
    cfg = kconfig.requested()
    for name in ("CONFIG_OVERLAY_FS", "CONFIG_FUSE_FS", "CONFIG_VIRTIO_FS", "CONFIG_PROVE_LOCKING",
                 "CONFIG_DEBUG_ATOMIC_SLEEP", "CONFIG_DETECT_HUNG_TASK", "CONFIG_MAGIC_SYSRQ", "CONFIG_KALLSYMS"):
        assert cfg.value(name) == "y", name
    assert cfg.value("CONFIG_MODULES") == "n"
    assert cfg.value("CONFIG_NET") == "n"           # no sockets in the guest: virtio-fs and virtio-serial
    assert cfg.value("CONFIG_DEFAULT_HUNG_TASK_TIMEOUT") == "10"


def test_parse_reads_values_and_not_set_lines():
    cfg = kconfig.parse("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n# comment\n")
    assert cfg.entries == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"x"'}
    assert cfg.value("CONFIG_UNSEEN") == "n"


def test_parse_rejects_a_typo_with_file_and_line():
    with pytest.raises(BadInput, match=r"frag:2: not a Kconfig line"):
        kconfig.parse("CONFIG_A=y\nOVERLAY_FS=y\n", "frag")


def test_user_fragment_overrides_and_missing_fragment_is_bad_input(tmp_path):
    frag = tmp_path / "extra.config"
    frag.write_text("# CONFIG_PROVE_LOCKING is not set\nCONFIG_KASAN=y\n")
    cfg = kconfig.requested([frag])
    assert cfg.value("CONFIG_PROVE_LOCKING") == "n" and cfg.value("CONFIG_KASAN") == "y"
    with pytest.raises(BadInput, match="config fragment not found"):
        kconfig.requested([tmp_path / "nope.config"])


def test_check_landed_names_every_dropped_option(tmp_path):
    want = kconfig.parse("CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=5\n")
    got = tmp_path / ".config"
    got.write_text("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=7\n")
    with pytest.raises(ConfigError) as e:
        kconfig.check_landed(want, got)
    assert "CONFIG_B=y (got n)" in e.value.message and "CONFIG_D=5 (got 7)" in e.value.message
    assert "CONFIG_A" not in e.value.message and "CONFIG_C" not in e.value.message


def test_digest_changes_with_content():
    a, b = kconfig.parse("CONFIG_A=y\n"), kconfig.parse("CONFIG_A=n\n")
    assert a.digest() != b.digest() and a.digest() == kconfig.parse("CONFIG_A=y").digest()


def test_fragment_turns_warn_and_bug_support_back_on():
    # tinyconfig sets "# CONFIG_BUG is not set": WARN_ON()/BUG_ON() would print nothing at all
    cfg = kconfig.requested()
    assert cfg.value("CONFIG_BUG") == "y" and cfg.value("CONFIG_DEBUG_BUGVERBOSE") == "y"
    assert cfg.value("CONFIG_UNWINDER_ORC") == "y"


def _recipe_tree(tmp_path, makefile: str | None = None, fragments=("kernel", "x86")):
    """A kernel tree layout with FAKE_KERNEL's scripts/kconfig/Makefile (or MAKEFILE) and tiny.config in
    kernel/configs and/or arch/x86/configs."""
    import shutil
    from kproto_helpers import FAKE_KERNEL
    t = tmp_path / "tree"
    (t / "scripts/kconfig").mkdir(parents=True)
    text = (FAKE_KERNEL / "scripts/kconfig/Makefile").read_text() if makefile is None else makefile
    (t / "scripts/kconfig/Makefile").write_text(text)
    (t / "kernel/configs").mkdir(parents=True)
    shutil.copy(FAKE_KERNEL / "kernel/configs/tiny-base.config", t / "kernel/configs")
    for where in fragments:
        d = t / ("kernel/configs" if where == "kernel" else f"arch/{where}/configs")
        d.mkdir(parents=True, exist_ok=True)
        (d / "tiny.config").write_text(f"# {where}\n")
    return t


def test_tinyconfig_recipe_reads_the_base_and_the_fragments_in_kbuilds_order(tmp_path):
    t = _recipe_tree(tmp_path)
    r = kconfig.tinyconfig_recipe(t, "x86")
    assert r == kconfig.BaseRecipe(t / "kernel/configs/tiny-base.config",
                                   (t / "kernel/configs/tiny.config", t / "arch/x86/configs/tiny.config"))
    # another architecture's tiny.config is not this one's (kbuild's $(SRCARCH))
    assert kconfig.tinyconfig_recipe(t, "arm64").fragments == (t / "kernel/configs/tiny.config",)


def test_a_tinyconfig_recipe_kproto_does_not_know_is_none(tmp_path):
    # before tiny-base.config: `allnoconfig tiny.config` in one make
    old = "configfiles = $(wildcard $(srctree)/kernel/configs/$(1) $(srctree)/arch/$(SRCARCH)/configs/$(1))\n" \
          "tinyconfig:\n\t$(Q)$(MAKE) -f $(srctree)/Makefile allnoconfig tiny.config\n"
    assert kconfig.tinyconfig_recipe(_recipe_tree(tmp_path / "a", old), "x86") is None
    # fragments looked up elsewhere than kproto would look
    from kproto_helpers import FAKE_KERNEL
    known = kconfig._CONFIGFILES
    moved = (FAKE_KERNEL / "scripts/kconfig/Makefile").read_text().replace(known, known.replace("configs", "cfg"))
    assert kconfig.tinyconfig_recipe(_recipe_tree(tmp_path / "b", moved), "x86") is None
    # no tiny.config anywhere (make tiny.config would fail), no Makefile at all
    assert kconfig.tinyconfig_recipe(_recipe_tree(tmp_path / "c", fragments=()), "x86") is None
    assert kconfig.tinyconfig_recipe(tmp_path / "nothing", "x86") is None
