"""The one jinja2 environment: every template of kproto (kernel config fragment, guest boot files, reports,
cover letter) is looked up by name in the `templates/` folder of the package that owns it."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import jinja2

from rig.core.paths import RIG

# the packages that own templates, searched in this order (names are unique across them)
TEMPLATE_DIRS: tuple[Path, ...] = tuple(RIG / pkg / "templates" for pkg in ("kernel", "machine", "report", "check", "nightly", "suite"))


def _autoescape(name: str | None) -> bool:
    return bool(name) and ".html" in str(name)


ENV = jinja2.Environment(loader=jinja2.FileSystemLoader([str(d) for d in TEMPLATE_DIRS]),
                         undefined=jinja2.StrictUndefined, autoescape=_autoescape,
                         trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def path(name: str) -> Path:
    """The file behind template NAME (for files copied verbatim)."""
    for d in TEMPLATE_DIRS:
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"no template {name!r} in {', '.join(str(d) for d in TEMPLATE_DIRS)}")


@lru_cache(maxsize=None)
def _with_filters(filters: tuple[tuple[str, Callable[..., Any]], ...]) -> jinja2.Environment:
    env = ENV.overlay()
    env.filters.update(dict(filters))
    return env


def render(name: str, filters: dict[str, Callable[..., Any]] | None = None, **context: Any) -> str:
    """Render template NAME; FILTERS are the caller's own jinja2 filters (e.g. the cover letter's obsdiff)."""
    env = _with_filters(tuple(sorted(filters.items()))) if filters else ENV
    return env.get_template(name).render(**context)


def fingerprint_files() -> list[Path]:
    """Every template file (the result caches hash them: a changed boot template means a new analysis)."""
    return sorted(p for d in TEMPLATE_DIRS if d.is_dir() for p in d.iterdir() if p.is_file())
