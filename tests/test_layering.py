"""The house's layering, read from the imports: the package never imports the root modules,
sub-packages import one way only, and the store backends import only the contract (with the
codec, the dashboard's listing types and the suppression list's) and their own helpers."""

from __future__ import annotations

import ast
from pathlib import Path

BACKENDS = ("memory_store", "sqlite_store", "redis_store")
# What a backend may import from the package; anything outside it is stdlib or third-party.
BACKEND_MAY_IMPORT = {
    "mailservice.stores.contract",
    "mailservice.stores.codec",
    "mailservice.stores.listing",
    "mailservice.stores.suppressions",
    "mailservice.errors",
}
# A backend's own helper modules, imported by that backend alone.
BACKEND_HELPERS = {
    "sqlite_schema": "sqlite_store",
    "sqlite_listing": "sqlite_store",
    "sqlite_writes": "sqlite_store",
    "redis_scripts": "redis_store",
    "redis_listing": "redis_store",
    "memory_suppressions": "memory_store",
    "sqlite_suppressions": "sqlite_store",
    "redis_suppressions": "redis_store",
}
PACKAGE = Path(__file__).parent.parent / "mailservice"


def package_imports(path: Path) -> set[str]:
    """The mailservice modules a file imports; `from mailservice.stores import x` counts as
    importing mailservice.stores.x when x is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / f"{submodule.replace('.', '/')}.py").exists():
                    found.add(submodule)
    return {name for name in found if name.split(".")[0] == "mailservice"}


def test_backends_import_only_the_contract_the_codec_and_errors() -> None:
    for module in (*BACKENDS, *BACKEND_HELPERS):
        own = {f"mailservice.stores.{h}" for h, user in BACKEND_HELPERS.items() if user == module}
        extra = package_imports(PACKAGE / "stores" / f"{module}.py") - BACKEND_MAY_IMPORT - own
        assert not extra, f"stores/{module}.py imports {sorted(extra)}"


def test_only_the_registry_imports_the_backends() -> None:
    for path in PACKAGE.rglob("*.py"):
        importer = path.relative_to(PACKAGE).with_suffix("").as_posix()
        for module in (*BACKENDS, *BACKEND_HELPERS):
            if f"mailservice.stores.{module}" in package_imports(path):
                allowed = BACKEND_HELPERS.get(module, "__init__")
                assert importer == f"stores/{allowed}", f"{importer} imports stores.{module}"


ROOT_MODULES = {"mail_server", "worker_pool", "status_store"}
# Sub-packages may import only those below them (docs/ARCHITECTURE.md): api -> delivery ->
# events -> stores; every one may import the shared top-level modules.
LAYERS = ["api", "delivery", "events", "stores"]
SHARED = {"config", "errors", "senders"}


def all_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_package_never_imports_the_root_modules() -> None:
    for path in PACKAGE.rglob("*.py"):
        roots = {name.split(".")[0] for name in all_imports(path)} & ROOT_MODULES
        assert not roots, f"{path.relative_to(PACKAGE)} imports {sorted(roots)}"


def test_sub_packages_import_only_downwards() -> None:
    for layer in LAYERS:
        below = set(LAYERS[LAYERS.index(layer) :]) | SHARED
        for path in (PACKAGE / layer).rglob("*.py"):
            for name in package_imports(path):
                part = name.split(".")[1] if name.count(".") else ""
                assert part in below or part not in LAYERS, (
                    f"{layer}/{path.name} imports {name}, above it"
                )
