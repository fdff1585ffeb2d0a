"""Mount configuration of the reference overlay: layers, options, validation."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from .errors import BadInput

#: options understood by the reference (value None = flag)
KNOWN_OPTIONS = {
    "redirect_dir",      # on | off | follow | nofollow; bare flag = on
    "userxattr",         # private xattrs in user.overlay.* instead of trusted.overlay.*
    "allow_other",       # default on when root
    "noallow_other",
    "attr_timeout",      # seconds the kernel may cache attributes/entries (default 1.0)
    "log",               # daemon log file (default: none)
    "debug",             # log every request to the log file
    "inline",            # on (default): cheap metadata ops on the event loop; off: all in threads
    "dirfd_cache",       # how many O_PATH directory fds the daemon keeps (default 256)
    "read_ahead_kb",     # the FUSE mount's readahead (default 1024; "kernel": leave it)
}

#: options of kernel overlayfs / mount(8) accepted and ignored (they do not change the
#: reference's semantics, or are handled by the FUSE mount itself)
OVERLAYFS_IGNORED = {"index", "xino", "metacopy", "nfs_export", "volatile", "uuid", "verity", "redirect_always_follow"}
IGNORED_OPTIONS = OVERLAYFS_IGNORED | {
    "default_permissions",
    "rw", "defaults", "auto", "noauto", "user", "nouser", "relatime", "norelatime",
    "noatime", "atime", "strictatime", "lazytime", "nolazytime", "_netdev", "nofail",
    "diratime", "nodiratime", "exec", "suid", "dev", "sync", "async", "loop",
}

#: passed through to the FUSE mount
FUSE_PASSTHROUGH = {"ro", "nosuid", "nodev", "noexec"}


def parse_option_string(s: str | None) -> dict:
    """Parse ``a,b=c,...`` (as given to ``-o``) into a dict (flags map to True)."""
    out: dict = {}
    if not s:
        return out
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v
        else:
            out[part] = True
    return out


def _truthy(v, name: str) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).lower()
    if s in ("1", "on", "yes", "true", "y"):
        return True
    if s in ("0", "off", "no", "false", "n"):
        return False
    raise BadInput(f"bad value for option {name}: {v!r}")


@dataclass
class OverlayConfig:
    lowers: list[str]
    upper: str
    work: str
    mountpoint: str
    redirect_dir: bool = False          # create redirects on rename of merged/lower dirs
    follow_redirects: bool = True
    userxattr: bool = False
    allow_other: bool = field(default_factory=lambda: os.geteuid() == 0)
    attr_timeout: float = 1.0
    log: str | None = None
    debug: bool = False
    inline: bool = True
    dirfd_cache: int = 256              # O_PATH directory fds kept by the daemon
    read_ahead_kb: int | None = 1024    # readahead of the FUSE mount (None: the kernel's)
    fuse_extra: list[str] = field(default_factory=list)

    @property
    def xattr_prefix(self) -> str:
        return "user.overlay." if self.userxattr else "trusted.overlay."

    @classmethod
    def build(cls, lowers, upper, work, mountpoint, options: dict | None = None) -> "OverlayConfig":
        if isinstance(lowers, str):
            lowers = [x for x in lowers.split(":") if x]
        lowers = [str(x) for x in lowers]
        if not lowers:
            raise BadInput("at least one lower layer is needed")
        cfg = cls(lowers=[os.path.abspath(x) for x in lowers], upper=os.path.abspath(upper),
                  work=os.path.abspath(work), mountpoint=os.path.abspath(mountpoint))
        for k, v in (options or {}).items():
            if v is None:
                v = True
            if k == "redirect_dir":
                s = "on" if v is True else str(v).lower()
                if s in ("on", "1", "yes", "true"):
                    cfg.redirect_dir, cfg.follow_redirects = True, True
                elif s in ("off", "follow", "0", "no", "false"):
                    cfg.redirect_dir, cfg.follow_redirects = False, True
                elif s == "nofollow":
                    cfg.redirect_dir, cfg.follow_redirects = False, False
                else:
                    raise BadInput(f"bad value for option redirect_dir: {v!r}")
            elif k == "userxattr":
                cfg.userxattr = _truthy(v, k)
            elif k == "allow_other":
                cfg.allow_other = _truthy(v, k)
            elif k == "noallow_other":
                cfg.allow_other = not _truthy(v, k)
            elif k == "attr_timeout":
                try:
                    cfg.attr_timeout = float(v)
                except ValueError:
                    raise BadInput(f"bad value for option attr_timeout: {v!r}") from None
            elif k == "log":
                cfg.log = os.path.abspath(str(v))
            elif k == "inline":
                cfg.inline = _truthy(v, k)
            elif k == "dirfd_cache":
                try:
                    cfg.dirfd_cache = int(v)
                except ValueError:
                    cfg.dirfd_cache = 0
                if cfg.dirfd_cache < 1:
                    raise BadInput(f"bad value for option dirfd_cache: {v!r}")
            elif k == "read_ahead_kb":
                if str(v).lower() in ("kernel", "default"):
                    cfg.read_ahead_kb = None
                else:
                    try:
                        cfg.read_ahead_kb = int(v)
                    except ValueError:
                        cfg.read_ahead_kb = -1
                    if cfg.read_ahead_kb < 0:
                        raise BadInput(f"bad value for option read_ahead_kb: {v!r}")
            elif k == "debug":
                cfg.debug = _truthy(v, k)
            elif k in FUSE_PASSTHROUGH:
                if _truthy(v, k):
                    cfg.fuse_extra.append(k)
            elif k in IGNORED_OPTIONS:
                pass
            else:
                raise BadInput(f"unknown option: {k} (the reference understands "
                               f"{', '.join(sorted(KNOWN_OPTIONS | FUSE_PASSTHROUGH))}; it accepts and ignores "
                               f"overlayfs's {', '.join(sorted(OVERLAYFS_IGNORED))})")
        return cfg

    def validate(self) -> None:
        """Raise BadInput if the layers cannot form an overlay."""
        def isdir(p, what):
            try:
                st = os.stat(p)
            except FileNotFoundError:
                raise BadInput(f"{what} does not exist: {p}") from None
            except OSError as e:
                raise BadInput(f"{what} is not accessible: {p}: {e.strerror}") from None
            if not stat.S_ISDIR(st.st_mode):
                raise BadInput(f"{what} is not a directory: {p}")
            return st

        for lo in self.lowers:
            isdir(lo, "lower dir")
        ust = isdir(self.upper, "upper dir")
        wst = isdir(self.work, "work dir")
        isdir(self.mountpoint, "mountpoint")
        if ust.st_dev != wst.st_dev:
            raise BadInput("upper and work dir must be on the same filesystem")
        up, wk = self.upper.rstrip("/") + "/", self.work.rstrip("/") + "/"
        if wk.startswith(up) or up.startswith(wk):
            raise BadInput("upper and work dir must not contain each other")
        for lo in self.lowers:
            lo_ = lo.rstrip("/") + "/"
            if lo_.startswith(up) or up.startswith(lo_):
                raise BadInput(f"lower dir and upper dir overlap: {lo}")
