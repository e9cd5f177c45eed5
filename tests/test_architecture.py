"""The house's rules, read from the code: every import of every module, checked against the
rooms and the way their doors open (docs/ARCHITECTURE.md), and the modules that must load
without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

#: Installed package -> folder of the repository (pyproject's package-dir).
PACKAGES = {
    "carn_stream.model": "model",
    "carn_stream.pipeline": "pipeline",
    "carn_stream.server": "server",
    "carn_stream": "carn_stream",
}
BOTTOM = ("carn_stream", "carn_stream.settings", "carn_stream.precisions",
          "carn_stream.progress_rate")  # fmt: skip
#: Rooms from the bottom up: a module may import its own room and rooms ranked below it.
#: Rooms of one rank are siblings and never import each other.
RANKS: list[list[str]] = [
    ["bottom"],
    ["model"],
    ["pipeline.base"],
    ["pipeline.media", "pipeline.engine"],
    ["pipeline.run"],
    ["pipeline.execution"],
    ["server.base"],
    ["server.jobs", "server.vod", "server.live", "server.workers"],
    ["server.deps"],
    ["server.api"],
    ["server.app"],
    ["top"],
]
PIPELINE_BASE = {"errors", "frames", "colour", "priorities", "waiting", "__init__"}
PIPELINE_RUN = {"run", "sampling", "calibration", "title_frames", "title_model", "title_report"}
SERVER_BASE = {"limits", "metrics", "speed", "pages", "media_links", "database", "blocking",
               "disconnect", "streaming", "connections", "disk", "player_library",
               "__init__"}  # fmt: skip
SERVER_SERVICES = {"live": "server.live", "offers": "server.live", "live_bitrate": "server.live",
                   "workers": "server.workers"}  # fmt: skip
SERVER_DEPS = {"deps", "admission"}
SERVER_APP = {"app", "middleware"}


def room(module: str) -> str:
    """The room a module of the package lives in."""
    if module in BOTTOM:
        return "bottom"
    parts = module.split(".")
    if parts[1] == "model":
        return "model"
    if parts[1] == "pipeline":
        if len(parts) == 2 or parts[2] in PIPELINE_BASE:
            return "pipeline.base"
        if parts[2] in PIPELINE_RUN:
            return "pipeline.run"
        return f"pipeline.{parts[2]}"  # media, engine, execution
    if parts[1] == "server":
        if len(parts) == 2 or parts[2] in SERVER_BASE or parts[2] == "inputs":
            return "server.base"
        if parts[2] in SERVER_SERVICES:
            return SERVER_SERVICES[parts[2]]
        if parts[2] in SERVER_DEPS:
            return "server.deps"
        if parts[2] in SERVER_APP:
            return "server.app"
        return f"server.{parts[2]}"  # jobs, vod, api
    return "top"  # the command line and what it wires


RANK = {name: rank for rank, names in enumerate(RANKS) for name in names}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            relative = path.relative_to(REPO_ROOT / folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            name = ".".join([package, *parts])
            found.setdefault(name, path)
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path) -> Iterator[tuple[str, bool]]:
    """(imported module, imported when the module loads) for every import in ``path``:
    functions' own imports and type-only ones happen later or never."""

    def walk(nodes, at_load: bool) -> Iterator[tuple[str, bool]]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, at_load
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                yield node.module, at_load
                for alias in node.names:  # ``from package import module``
                    yield f"{node.module}.{alias.name}", at_load
            elif isinstance(node, ast.If) and _type_checking(node):
                yield from walk(node.body, False)
                yield from walk(node.orelse, at_load)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                yield from walk(node.body, False if not isinstance(node, ast.ClassDef) else at_load)
            elif hasattr(node, "body") and isinstance(node.body, list):
                yield from walk(node.body, at_load)
                for extra in ("orelse", "finalbody", "handlers"):
                    yield from walk(getattr(node, extra, []) or [], at_load)

    yield from walk(ast.parse(path.read_text()).body, True)


def graph() -> dict[str, set[tuple[str, bool]]]:
    known = modules()
    edges: dict[str, set[tuple[str, bool]]] = {}
    for name, path in known.items():
        edges[name] = {
            (target, at_load)
            for target, at_load in imports(path)
            if target in known and target != name and not name.startswith(f"{target}.")
        }
    return edges


def test_imports_point_down_and_never_between_siblings():
    wrong = []
    for module, targets in graph().items():
        for target, _ in targets:
            a, b = room(module), room(target)
            if a == b:
                continue
            if RANK[b] > RANK[a]:
                wrong.append(f"{module} ({a}) imports {target} ({b}): upwards")
            elif RANK[b] == RANK[a]:
                wrong.append(f"{module} ({a}) imports {target} ({b}): siblings")
    assert not wrong, "\n".join(sorted(wrong))


def test_settings_are_read_at_the_edge_only():
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target, _ in targets
        if (target == "carn_stream.settings" and room(module) in ("model", "pipeline.base"))
        or (target == "carn_stream.settings" and module.startswith("carn_stream.pipeline"))
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_imports_itself_back_when_loading():
    edges = {m: {t for t, at_load in ts if at_load} for m, ts in graph().items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_media_modules_import_no_torch():
    wrong = [
        str(path.relative_to(REPO_ROOT))
        for name, path in modules().items()
        if room(name) == "pipeline.media"
        for target, _ in imports(path)
        if target == "torch" or target.startswith("torch.")
    ]
    assert not wrong


@pytest.mark.parametrize(
    "module",
    [
        "carn_stream.pipeline.media.decode",  # probing
        "carn_stream.pipeline.execution.executors",  # planning (the head of a cluster)
        "carn_stream.pipeline.media.remux",  # the original rendition of a video
        "carn_stream.pipeline.media.join",  # finishing a file output
        "carn_stream.pipeline.execution.segmented",
        "carn_stream.server.vod.store",
    ],
)
def test_probing_planning_and_remuxing_load_no_torch(module):
    code = f"import {module}, sys; assert 'torch' not in sys.modules, 'torch was loaded'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_rules_see_the_rooms():
    # A rule that sees no modules cannot fail: the walk must find every room.
    rooms = {room(m) for m in modules()}
    assert rooms == set(RANK), set(RANK) - rooms
    edges = sum(len(t) for t in graph().values())
    assert edges > 250  # imports between the package's own modules
