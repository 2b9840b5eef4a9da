"""
Reading YAML config files safely: the one place d2kd (``train_net.py``, the teacher's
``MODEL.KD.TEACHER.CONFIG_FILE``, the tools) reads a yacs/Detectron2 YAML config.

Detectron2's ``CfgNode.merge_from_file`` retries a file that ``yaml.safe_load`` refuses with
``yaml.unsafe_load`` by default, so a ``!!python/object/apply:os.system [...]`` tag in a config
(or in any file of its ``_BASE_`` chain) runs when the config is merged. Configs are shared as
freely as weights, so :func:`merge_config_file` reads every file of the chain with
``yaml.SafeLoader`` plus one constructor: ``!!python/object/apply:eval ["<expression>"]``, which
Detectron2's own model-zoo ``Base-RetinaNet.yaml`` uses for its anchor sizes, is evaluated by
:func:`safe_arithmetic_eval` (numbers, + - * / ** // %, lists, tuples and list comprehensions
over them; no name, call or attribute). Any other tag is refused with an error naming the file
and line, before anything in the file runs. ``_BASE_`` keeps Detectron2's meaning (a path relative
to the file, ``~``, an absolute path or URL; a list merges in order); a cycle is an error.
"""

import ast
import operator
import os
from typing import Any, Dict, Tuple

import yaml
from detectron2.config import CfgNode
from detectron2.utils.file_io import PathManager

__all__ = ["UnsafeConfigError", "merge_config_file", "load_yaml_with_base", "safe_arithmetic_eval"]

BASE_KEY = "_BASE_"
_EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_EXPONENT = 64  # 2 ** 64 is far beyond any config value; 9 ** 9 ** 9 would never finish
_MAX_ELEMENTS = 10_000  # of a list comprehension


class UnsafeConfigError(ValueError):
    """A config file holds a YAML tag that only an unsafe loader would construct (it could run
    code), an expression outside the arithmetic d2kd evaluates, or is not valid YAML."""


# ----------------------------------------------------------------------------- arithmetic
def _number(value: Any, expr: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{expr!r}: arithmetic on {type(value).__name__} is not evaluated")
    return value


def _binary(node: ast.BinOp, env: Dict[str, Any], expr: str) -> Any:
    op = _BINARY.get(type(node.op))
    if op is None:
        raise ValueError(f"{expr!r}: operator {type(node.op).__name__} is not evaluated")
    left = _number(_eval(node.left, env, expr), expr)
    right = _number(_eval(node.right, env, expr), expr)
    if op is operator.pow and (abs(right) > _MAX_EXPONENT or abs(left) > 2**_MAX_EXPONENT):
        raise ValueError(f"{expr!r}: a power beyond {_MAX_EXPONENT} is not evaluated")
    return op(left, right)


def _comprehension(node: ast.ListComp, env: Dict[str, Any], expr: str) -> list:
    if len(node.generators) != 1:
        raise ValueError(f"{expr!r}: only a single 'for' is evaluated")
    gen = node.generators[0]
    if gen.ifs or gen.is_async or not isinstance(gen.target, ast.Name):
        raise ValueError(f"{expr!r}: only '[... for NAME in LIST]' is evaluated")
    items = _eval(gen.iter, env, expr)
    if not isinstance(items, (list, tuple)) or len(items) > _MAX_ELEMENTS:
        raise ValueError(f"{expr!r}: a comprehension runs over a literal list only")
    return [_eval(node.elt, {**env, gen.target.id: item}, expr) for item in items]


def _eval(node: ast.AST, env: Dict[str, Any], expr: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        values = [_eval(e, env, expr) for e in node.elts]
        return values if isinstance(node, ast.List) else tuple(values)
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_number(_eval(node.operand, env, expr), expr))
    if isinstance(node, ast.BinOp):
        return _binary(node, env, expr)
    if isinstance(node, ast.ListComp):
        return _comprehension(node, env, expr)
    raise ValueError(f"{expr!r}: {type(node).__name__} is not evaluated")


def safe_arithmetic_eval(expr: str) -> Any:
    """
    Evaluate ``expr`` as Python arithmetic on literals: numbers, strings, lists, tuples, unary
    and binary + - * / // % ** (exponents up to 64), and ``[... for x in <literal list>]``.
    Names other than a comprehension's variable, calls, attributes and subscripts are refused.

    Raises:
        ValueError: anything else, with the expression named.
    """
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"{expr!r}: not a Python expression ({e.msg})") from None
    return _eval(tree.body, {}, expr)


# ----------------------------------------------------------------------------- YAML
class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` + Detectron2's arithmetic ``!!python/object/apply:eval`` tag."""


def _construct_eval(loader: _ConfigLoader, node: yaml.Node) -> Any:
    args = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else None
    if not args or len(args) != 1 or not isinstance(args[0], str):
        raise yaml.constructor.ConstructorError(
            None, None, "!!python/object/apply:eval takes one string", node.start_mark
        )
    try:
        return safe_arithmetic_eval(args[0])
    except ValueError as e:
        raise yaml.constructor.ConstructorError(
            None, None, f"!!python/object/apply:eval of {e}", node.start_mark
        ) from None


_ConfigLoader.add_constructor(_EVAL_TAG, _construct_eval)


def _where(err: yaml.MarkedYAMLError, path: str) -> str:
    mark = err.problem_mark or err.context_mark
    if mark is None:
        return path
    # The mark names the file of the _BASE_ chain that holds the tag (line is 0-based).
    name = mark.name if mark.name and not mark.name.startswith("<") else path
    return f"{name}, line {mark.line + 1}"


def _read_yaml(path: str) -> Dict[str, Any]:
    from d2kd.utils.checkpoint import DEFAULT_DOWNLOAD_TIMEOUT, _socket_timeout

    try:
        with _socket_timeout(DEFAULT_DOWNLOAD_TIMEOUT), PathManager.open(path, "r") as f:
            data = yaml.load(f, Loader=_ConfigLoader)
    except yaml.constructor.ConstructorError as e:
        raise UnsafeConfigError(
            f"config file {_where(e, path)}: refused: {e.problem}. d2kd reads configs with "
            "yaml.safe_load only (a !!python/... tag could run code when the config is loaded), "
            "plus Detectron2's arithmetic !!python/object/apply:eval; write the value as a plain "
            "string, number, list or mapping"
        ) from None
    except yaml.MarkedYAMLError as e:
        raise UnsafeConfigError(
            f"config file {_where(e, path)}: not valid YAML: {e.problem or e}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UnsafeConfigError(f"config file {path} holds a {type(data).__name__}, not a mapping")
    return data


def _merge_into(src: Dict[str, Any], dst: Dict[str, Any], path: str) -> None:
    """Merge ``src`` into ``dst`` in place: mappings key by key, anything else replaced."""
    for key, value in src.items():
        if isinstance(value, dict) and key in dst:
            if not isinstance(dst[key], dict):
                raise UnsafeConfigError(
                    f"config file {path}: cannot merge mapping {key} into a value"
                )
            _merge_into(value, dst[key], path)
        else:
            dst[key] = value


def _base_path(base: str, path: str) -> str:
    base = os.path.expanduser(base)
    if base.startswith(("/", "https://", "http://")):
        return base
    return os.path.join(os.path.dirname(path), base)


def load_yaml_with_base(path: str, _chain: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """The mapping of the YAML config ``path`` with its ``_BASE_`` files merged under it,
    every file read by the safe loader (see the module docstring)."""
    if path in _chain:
        raise UnsafeConfigError(
            f"config file {path}: _BASE_ cycle: {' -> '.join(_chain + (path,))}"
        )
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    merged: Dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        _merge_into(load_yaml_with_base(_base_path(base, path), _chain + (path,)), merged, path)
    _merge_into(data, merged, path)
    return merged


def merge_config_file(cfg: CfgNode, path: str) -> CfgNode:
    """
    Merge the YAML config ``path`` (with its ``_BASE_`` chain) into ``cfg`` in place, reading
    every file safely; an older config ``VERSION`` is upgraded as Detectron2 does.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeConfigError: a ``!!python/...`` tag (other than arithmetic ``eval``), invalid YAML
            or a ``_BASE_`` cycle, naming the file and line; nothing in the file runs.
    Returns:
        ``cfg``
    """
    from detectron2.config.compat import downgrade_config, guess_version, upgrade_config

    if not PathManager.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    loaded = type(cfg)(load_yaml_with_base(path))
    version = loaded.get("VERSION", None) or guess_version(loaded, path)
    if version > cfg.VERSION:
        raise UnsafeConfigError(
            f"config file {path}: VERSION {version} is newer than {cfg.VERSION}"
        )
    if version == cfg.VERSION:
        cfg.merge_from_other_cfg(loaded)
        return cfg
    old = downgrade_config(cfg, to_version=version)
    old.merge_from_other_cfg(loaded)
    cfg.clear()
    cfg.update(upgrade_config(old))
    return cfg
