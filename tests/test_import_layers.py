"""Every import arrow points down the layers, and no module imports itself round a cycle.

Read statically (`ast`), so imports inside functions count too: a lazy import that points
up the layers is still an upward dependency. Layers, lowest first:

- jax_sft: models, sharding and huge_pages (the process's memory); checkpoints, core
  (tree helpers, loss, forward, the training-mode protocol, optimizer and jitted steps)
  and generate; sparse, lora and prune (training modes); train (setup, engine, runs) and
  serve (answering prompts); bench; commands; cli and the package root. A package
  imports only from lower layers (never a peer), and no command imports another.
- torch_ref: one layer per module (see TORCH_LAYERS).
- interop: imports neither backend.
"""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jax_sft", "torch_ref", "interop")

JAX_LAYERS = {
    "models": 0,
    "sharding": 0,
    "huge_pages": 0,
    "checkpoints": 1,
    "core": 1,
    "generate": 1,
    "sparse": 2,
    "lora": 2,
    "prune": 2,
    "train": 3,
    "serve": 3,
    "bench": 4,
    "commands": 5,
    "cli": 6,
    "": 6,  # jax_sft/__init__.py
}
TORCH_LAYERS = {
    "train.distributed": 0,
    "train.loss": 0,
    "train.data": 0,
    "train.ds_config": 0,
    "train.model": 0,
    "train.refusals": 0,
    "logits": 0,
    "accelerator": 0,
    "bench_generate": 0,
    "train.sparse": 1,
    "train.lora": 1,
    "train.prune": 1,
    "train.distill": 1,
    "train.optimizer": 2,
    "train.build": 3,
    "train.trainer": 4,
    "train.export": 5,
    "train.api": 5,
    "train.run": 6,
    "train": 6,
    "cli": 7,
    "": 7,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {
        module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
    }


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Our modules that `path` (module `name`) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imported(path, name, known) for name, path in modules.items()}


def _tail(module: str, package: str) -> str:
    return module[len(package) + 1 :] if module != package else ""


def jax_layer(module: str) -> tuple[str, int]:
    sub = _tail(module, "jax_sft").split(".")[0]
    return sub, JAX_LAYERS[sub]


def torch_layer(module: str) -> int:
    tail = _tail(module, "torch_ref")
    while tail not in TORCH_LAYERS:
        tail = tail.rpartition(".")[0]
    return TORCH_LAYERS[tail]


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(edges.items()):
        top = src.split(".")[0]
        for dst in sorted(targets):
            if dst.split(".")[0] != top:
                if top == "interop" or dst.split(".")[0] != "interop":
                    bad.append(f"{src} -> {dst} (another backend)")
                continue
            if top == "jax_sft":
                (s_pkg, s_rank), (d_pkg, d_rank) = jax_layer(src), jax_layer(dst)
                if s_pkg == d_pkg:
                    if s_pkg == "commands" and "jax_sft.commands" not in (src, dst):
                        bad.append(f"{src} -> {dst} (a command used as a library)")
                elif d_rank >= s_rank:
                    bad.append(f"{src} -> {dst} (layer {s_pkg} {s_rank} -> {d_pkg} {d_rank})")
            elif top == "torch_ref" and src != "torch_ref.train" and dst != "torch_ref.train":
                if torch_layer(dst) >= torch_layer(src) and not src.startswith(dst + "."):
                    bad.append(f"{src} -> {dst} (layer {torch_layer(src)} -> {torch_layer(dst)})")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for name in all_modules():
        if name.startswith("jax_sft"):
            jax_layer(name)
        elif name.startswith("torch_ref"):
            torch_layer(name)


def test_no_import_points_up_the_layers():
    bad = upward_imports(graph())
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, found


def test_the_checks_see_real_violations():
    edges = defaultdict(set)
    edges["jax_sft.sparse.spiel"].add("jax_sft.train.step")
    edges["jax_sft.commands.parity"].add("jax_sft.commands.compare")
    edges["jax_sft.lora.training"].add("jax_sft.sparse.select")
    edges["interop.config"].add("jax_sft.models")
    edges["torch_ref.train.model"].add("torch_ref.train.build")
    assert len(upward_imports(edges)) == 5
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
