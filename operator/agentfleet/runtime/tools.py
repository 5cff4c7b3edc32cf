"""The built-in tools other than `delegate` (which recurses into the agent loop and lives there): `calculator`,
safe arithmetic over Python's ast (no eval: only numbers, + - * / // % ** and a few functions, with bounds on
exponents and sizes), and `retrieve`, the ACL-filtered search. The retrieve tool takes the Principal from the
task context, set by authentication; its only argument is the query, so nothing a model writes can widen it."""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .actions import ToolSchema

__all__ = ["calculate", "CalculatorError", "CALCULATOR", "RETRIEVE", "Citation", "CitationBook",
           "format_hits"]

CALCULATOR = ToolSchema(
    "calculator", "Evaluate an arithmetic expression, e.g. (25 - 5) * 2 / 3 or sqrt(2) ** 2.",
    {"type": "object", "properties": {"expression": {"type": "string", "minLength": 1, "maxLength": 200}},
     "required": ["expression"], "additionalProperties": False})

RETRIEVE = ToolSchema(
    "retrieve", "Search the documents you may read. Returns numbered passages; cite them as [n].",
    {"type": "object", "properties": {"query": {"type": "string", "minLength": 1, "maxLength": 300}},
     "required": ["query"], "additionalProperties": False})

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
MAX_MAGNITUDE = 1e300

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS: dict[str, Callable[..., Any]] = {"sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max,
                                         "log": math.log, "exp": math.exp}
_CONSTS = {"pi": math.pi, "e": math.e}


class CalculatorError(ValueError):
    pass


def _check(x: Any) -> Any:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise CalculatorError("only numbers are allowed")
    if isinstance(x, float) and (math.isnan(x) or abs(x) > MAX_MAGNITUDE):
        raise CalculatorError("the result is out of range")
    if isinstance(x, int) and x.bit_length() > 4096:
        raise CalculatorError("the result is too large")
    return x


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        return _check(node.value)
    if isinstance(node, ast.Name) and node.id in _CONSTS:
        return _CONSTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or abs(left) > MAX_MAGNITUDE ** 0.5
                                             and abs(right) > 2):
            raise CalculatorError("the exponent is too large")
        try:
            return _check(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is out of range") from None
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
            and not node.keywords and len(node.args) <= 4):
        try:
            return _check(_FUNCS[node.func.id](*[_eval(a) for a in node.args]))
        except (ValueError, TypeError, OverflowError) as e:
            raise CalculatorError(f"{node.func.id}: {e}") from None
    raise CalculatorError(f"unsupported syntax: {type(node).__name__}")


def calculate(expression: str) -> int | float:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise CalculatorError("not an arithmetic expression") from None
    result = _eval(tree)
    if isinstance(result, float) and result.is_integer() and abs(result) < 2**53:
        return int(result)
    return result


@dataclass(frozen=True)
class Citation:
    n: int
    id: str
    source: str
    title: str
    headings: tuple[str, ...]
    score: float
    url: str | None = None  # a remote sub-agent's link to its source (a local one is linked when answered)

    def wire(self) -> dict[str, Any]:
        out = {"n": self.n, "id": self.id, "source": self.source, "title": self.title,
               "headings": list(self.headings), "score": round(self.score, 4)}
        if self.url is not None:
            out["url"] = self.url
        return out


@dataclass
class CitationBook:
    """One numbering for a whole task tree: a chunk keeps its number across steps and sub-agents."""

    by_id: dict[str, Citation] = field(default_factory=dict)

    def add(self, hit: Any) -> Citation:
        found = self.by_id.get(hit.id)
        if found is None:
            found = Citation(len(self.by_id) + 1, hit.id, hit.source, hit.title, tuple(hit.trail), hit.score,
                             getattr(hit, "url", None))
            self.by_id[hit.id] = found
        return found

    def wire(self) -> list[dict[str, Any]]:
        return [c.wire() for c in sorted(self.by_id.values(), key=lambda c: c.n)]


def format_hits(hits: list[Any], book: CitationBook, *, max_chars: int = 1200) -> tuple[str, list[Citation]]:
    """Numbered passages for the prompt, and the citations they add."""
    if not hits:
        return "No documents you may read match this query.", []
    lines, cites = [], []
    for h in hits:
        c = book.add(h)
        cites.append(c)
        where = " > ".join(h.trail) or h.title or h.source
        text = " ".join(h.text.split())[:max_chars]
        lines.append(f"[{c.n}] {where} ({h.source}): {text}")
    return "\n".join(lines), cites


def tool_descriptions(tools: list[ToolSchema]) -> Mapping[str, str]:
    return {t.name: t.description for t in tools}
