"""Where templates come from: the shipped folder and TEMPLATES_DIR, read once at start-up.

Both folders hold one folder per template, `<name>/`, with `subject.txt` (required) and
`body.txt` and/or `body.html`, in UTF-8. `read_templates()` gives every template's sources,
a TEMPLATES_DIR template replacing the shipped one of its name whole (its parts are never
mixed with the shipped one's). Hidden entries (`.git`, an editor's swap file) and plain files
beside the template folders (a README) are skipped; anything else that is not a template (a
folder whose name is not a template name, a stray file in a template folder, a missing
subject.txt, bad UTF-8, NUL) is a ConfigError naming the path, so that start-up stops with one
line rather than a template going missing without a word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mailservice.errors import ConfigError

SHIPPED = Path(__file__).parent / "templates" / "email"
# How errors name where a template came from.
SHIPPED_ORIGIN, DEPLOYMENT_ORIGIN = "shipped templates", "TEMPLATES_DIR"
TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# Each part and its file, in the order a message holds them.
PART_FILES = {"subject": "subject.txt", "text": "body.txt", "html": "body.html"}
MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TemplateSource:
    """One template's files as read: `parts` maps a part to its (source, file path)."""

    name: str
    origin: str  # SHIPPED_ORIGIN or DEPLOYMENT_ORIGIN
    parts: dict[str, tuple[str, str]]

    def key(self, part: str) -> str:
        """The name Jinja knows the part by, which `{% include %}` uses: `<name>/<file>`."""
        return f"{self.name}/{PART_FILES[part]}"


def check_template_name(value: str) -> str:
    """A template's name: 1 to 64 of a-z, 0-9, `_` and `-`, starting with a letter or digit."""
    if not TEMPLATE_NAME.fullmatch(value):
        raise ValueError(
            "must be a template name: 1 to 64 of a-z, 0-9, _ and -, starting with a letter or digit"
        )
    return value


def read_templates(templates_dir: str) -> dict[str, TemplateSource]:
    """The shipped templates and TEMPLATES_DIR's (empty: none), by name."""
    found = {
        name: _read_template(name, folder, SHIPPED_ORIGIN)
        for name, folder in _template_folders(SHIPPED, SHIPPED_ORIGIN).items()
    }
    if templates_dir:
        root = Path(templates_dir)
        if not root.is_dir():
            raise ConfigError(f"TEMPLATES_DIR={templates_dir!r} is not a folder")
        for name, folder in _template_folders(root, DEPLOYMENT_ORIGIN).items():
            found[name] = _read_template(name, folder, DEPLOYMENT_ORIGIN)
    return dict(sorted(found.items()))


def _entries(folder: Path, origin: str) -> list[Path]:
    try:
        return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read {folder}: {exc.strerror}") from exc


def _template_folders(root: Path, origin: str) -> dict[str, Path]:
    folders = {}
    for entry in _entries(root, origin):
        if not entry.is_dir():
            continue
        if not TEMPLATE_NAME.fullmatch(entry.name):
            raise ConfigError(
                f"{origin}: {entry} is not a template name (1 to 64 of a-z, 0-9, _ and -, "
                "starting with a letter or digit)"
            )
        folders[entry.name] = entry
    return folders


def _read_template(name: str, folder: Path, origin: str) -> TemplateSource:
    by_file = {file: part for part, file in PART_FILES.items()}
    found: dict[str, tuple[str, str]] = {}
    for entry in _entries(folder, origin):
        part = by_file.get(entry.name)
        if part is None or not entry.is_file():
            raise ConfigError(
                f"{origin}: {entry} is not a template part "
                "(a template folder holds subject.txt, body.txt and body.html)"
            )
        found[part] = (_read_part(entry, origin), str(entry))
    if "subject" not in found:
        raise ConfigError(f"{origin}: {folder / 'subject.txt'} is missing")
    if len(found) == 1:
        raise ConfigError(f"{origin}: {folder} has neither body.txt nor body.html")
    return TemplateSource(name, origin, {part: found[part] for part in PART_FILES if part in found})


def _read_part(path: Path, origin: str) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{origin}: {path} is larger than {MAX_FILE_BYTES} bytes")
        source = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{origin}: {path} is not UTF-8 (at byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read {path}: {exc.strerror}") from exc
    if "\0" in source:
        raise ConfigError(f"{origin}: {path} contains NUL (U+0000)")
    return source
