
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
