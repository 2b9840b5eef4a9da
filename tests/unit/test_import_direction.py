"""
The import direction of the code map (README "Code map"): ``d2kd/layers`` and the math files of
``d2kd/methods/<method>/`` (every file but ``loss.py``, ``mask.py`` and ``__init__.py``) import no
Detectron2, directly or through another d2kd module, and ``d2kd/layers`` imports nothing of
``d2kd/methods``. Checked statically (every import statement, with its file and line) and by
importing those modules in a fresh interpreter where Detectron2 cannot be imported.
"""

import ast
import glob
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REGISTRATION_FILES = ("loss.py", "mask.py", "__init__.py")


def _rel(path):
    return os.path.relpath(path, REPO)


def _layers_files():
    return sorted(glob.glob(os.path.join(REPO, "d2kd", "layers", "**", "*.py"), recursive=True))


def _method_math_files():
    files = glob.glob(os.path.join(REPO, "d2kd", "methods", "*", "*.py"))
    return sorted(f for f in files if os.path.basename(f) not in REGISTRATION_FILES)


def _module_name(path):
    return _rel(path)[: -len(".py")].replace(os.sep, ".").removesuffix(".__init__")


def _imports(path):
    """(line, absolute module name) of every import in ``path``, relative ones resolved."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = _module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _violations(files, forbidden):
    return [
        f"{_rel(path)}:{line} imports {name}"
        for path in files
        for line, name in _imports(path)
        if any(name == p or name.startswith(p + ".") for p in forbidden)
    ]


def test_there_are_files_to_check():
    assert len(_layers_files()) >= 10
    names = {os.path.basename(f) for f in _method_math_files()}
    assert {"pgw.py", "terms.py", "vlr.py", "logits_distill.py"} <= names


def test_layers_import_neither_detectron2_nor_methods():
    assert _violations(_layers_files(), ("detectron2", "d2kd.methods")) == []


def test_method_math_files_import_no_detectron2_nor_the_framework():
    # d2kd.modeling (and d2kd.config, d2kd.data) import Detectron2 themselves.
    forbidden = ("detectron2", "d2kd.modeling", "d2kd.config", "d2kd.data", "d2kd.engine")
    assert _violations(_method_math_files(), forbidden) == []


def test_the_checker_sees_relative_and_absolute_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import detectron2.config\nfrom d2kd.methods.pgd import terms\n")
    assert _violations([str(bad)], ("detectron2",)) == [
        f"{_rel(str(bad))}:1 imports detectron2.config"
    ]
    assert len(_violations([str(bad)], ("d2kd.methods",))) == 2  # the module and the name
    relative = os.path.join(REPO, "d2kd", "layers", "detr", "criterion.py")
    assert any(name == "d2kd.layers.box_ops" for _, name in _imports(relative))


_BLOCKER = """
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "detectron2" or name.startswith("detectron2."):
            raise ImportError("detectron2 is blocked by test_import_direction")
sys.meta_path.insert(0, Block())
sys.path.insert(0, {repo!r})
for name in {modules!r}:
    importlib.import_module(name)
assert not any(
    (m == "detectron2" or m.startswith("detectron2.")) and sys.modules[m] is not None
    for m in sys.modules
)  # None entries: a blocker of the caller's own (sys.modules["detectron2"] = None)
print("imported", len({modules!r}))
"""


def test_pure_modules_import_with_detectron2_blocked():
    modules = [_module_name(f) for f in _layers_files() + _method_math_files()]
    code = _BLOCKER.format(repo=REPO, modules=modules)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"imported {len(modules)}" in run.stdout
