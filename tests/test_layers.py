"""The dependency direction of DESIGN.md, checked on the source: every import of every module,
including imports inside functions, read with `ast` (nothing is imported to check it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "hierfl": ROOT / "hierfl",
    "hierfl.kernels": ROOT / "kernels",
    "hierfl.topology": ROOT / "topology",
}

# A layer may import none of the layers listed against it.
FORBIDDEN = {
    "hierfl.kernels": ["hierfl"],
    "hierfl.topology": ["hierfl"],
    "hierfl.core": [
        "hierfl.data",
        "hierfl.sim",
        "hierfl.runtime",
        "hierfl.runs",
        "hierfl.inference",
        "hierfl.cli",
        "hierfl.studies",
    ],
    "hierfl.privacy": [
        "hierfl.sim",
        "hierfl.runtime",
        "hierfl.inference",
        "hierfl.cli",
        "hierfl.studies",
    ],
    "hierfl.data": [
        "hierfl.sim",
        "hierfl.runtime",
        "hierfl.inference",
        "hierfl.cli",
        "hierfl.studies",
    ],
    "hierfl.runs": ["hierfl.sim", "hierfl.runtime", "hierfl.cli", "hierfl.studies"],
    "hierfl.sim": ["hierfl.runtime", "hierfl.inference", "hierfl.cli", "hierfl.studies"],
    "hierfl.runtime": ["hierfl.sim", "hierfl.cli", "hierfl.studies"],
    "hierfl.inference": ["hierfl.sim", "hierfl.runtime", "hierfl.cli", "hierfl.studies"],
    # A pure reader of run directories: never a node, a socket or JAX.
    "hierfl.dashboard": [
        "hierfl.core",
        "hierfl.data",
        "hierfl.privacy",
        "hierfl.sim",
        "hierfl.runtime",
        "hierfl.inference",
        "hierfl.cli",
        "hierfl.studies",
        "jax",
        "zmq",
    ],
    "hierfl.starters": [
        "hierfl.sim",
        "hierfl.runtime",
        "hierfl.inference",
        "hierfl.cli",
        "hierfl.studies",
    ],
}
# Layers whose own imports may do no input/output: pure functions over arrays.
NO_IO = {"hierfl.kernels", "hierfl.core"}
IO_MODULES = (
    "zmq",
    "msgpack",
    "orbax",
    "socket",
    "subprocess",
    "pyarrow",
    "PIL",
    "rich",
    "matplotlib",
)
OUTSIDE = ("examples", "benchmarks", "tests", "conftest")


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The absolute names a module imports, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def within(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def layer_of(name: str) -> str | None:
    matches = [layer for layer in FORBIDDEN if within(name, layer)]
    return max(matches, key=len) if matches else None


SOURCES = modules()


def test_the_package_is_found():
    assert {
        "hierfl.core.steps",
        "hierfl.sim.round",
        "hierfl.kernels",
        "hierfl.topology.schema",
    } <= set(SOURCES)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_each_module_imports_only_what_its_layer_may(name):
    layer = layer_of(name)
    imported = imports(name, SOURCES[name])
    problems = []
    if layer is not None:
        for target in sorted(imported):
            for forbidden in FORBIDDEN[layer]:
                if within(target, forbidden) and not within(target, layer):
                    problems.append(f"{name} ({layer}) imports {target}")
    if layer in NO_IO:
        problems += [
            f"{name} ({layer}) imports {t}" for t in imported if t.split(".")[0] in IO_MODULES
        ]
    problems += [f"{name} imports {t}" for t in imported if t.split(".")[0] in OUTSIDE]
    assert not problems, "\n".join(problems)


def test_nothing_below_the_command_line_imports_it_or_the_studies():
    for name, path in SOURCES.items():
        if (
            within(name, "hierfl.cli")
            or within(name, "hierfl.studies")
            or name == "hierfl.__main__"
        ):
            continue
        wrong = [
            t for t in imports(name, path) if within(t, "hierfl.cli") or within(t, "hierfl.studies")
        ]
        assert not wrong, f"{name} imports {wrong}"


def test_the_check_sees_a_violation(tmp_path):
    # The checker itself must be able to fail: a core module importing the runtime is caught.
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..runtime import protocol\n", encoding="utf-8")
    found = imports("hierfl.core.probe", probe)
    assert "hierfl.runtime.protocol" in found
    assert layer_of("hierfl.core.probe") == "hierfl.core"
    assert any(within(t, "hierfl.runtime") for t in found)
