"""The evaluation suite, pure: its schema (pydantic models, one source for validation and docs) and loading from
YAML (`tolerances` + `cases`) or JSONL (one case per line; a line holding only `tolerances` sets them). Every bad
case is reported, one line each: `suite.yaml: case 3 (id q7): relevant.faq/a.txt: grade must be 0-3`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["Suite", "Case", "Check", "SuiteError", "load_suite", "parse_suite", "read_suite", "METRICS"]

# Metrics a suite may set a regression tolerance for (report paths, as in the JSON report's top level).
METRICS = ("retrieval.recall_at_10", "retrieval.ndcg_at_10", "retrieval.mrr", "answers.correctness",
           "answers.faithfulness", "answers.citation_precision", "answers.refusal_accuracy", "tasks.success_rate",
           "tasks.cost_per_solved_task_usd", "tasks.steps_mean", "tasks.latency_p95_s", "security.leaks")


class SuiteError(ValueError):
    """A suite that cannot be used; `problems` holds one line per bad case or field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContainsCheck(_Model):
    type: Literal["contains"]
    value: str = Field(min_length=1)
    case_sensitive: bool = False


class RegexCheck(_Model):
    type: Literal["regex"]
    pattern: str = Field(min_length=1)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as err:
            raise ValueError(f"not a regular expression: {err}") from None
        return v


class JsonSchemaCheck(_Model):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class NumericCheck(_Model):
    type: Literal["numeric"]
    value: float
    tolerance: float = Field(default=0.0, ge=0)


class JudgeCheck(_Model):
    type: Literal["judge"]
    rubric: str = Field(min_length=1)


Check = Annotated[Union[ContainsCheck, RegexCheck, JsonSchemaCheck, NumericCheck, JudgeCheck],
                  Field(discriminator="type")]


class Case(_Model):
    id: str = Field(min_length=1)
    principal: str = Field(min_length=1, description="a user of the key store: the case runs with that user's key")
    question: str = Field(min_length=1)
    reference: str | None = None
    facts: tuple[str, ...] = ()
    relevant: dict[str, int] = Field(default_factory=dict,
                                     description="source path or document id -> grade 0-3 (a list means grade 1)")
    forbidden: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    expect_tools: tuple[str, ...] = ()
    expect_subagents: tuple[str, ...] = ()
    unanswerable: bool = False

    @field_validator("relevant", mode="before")
    @classmethod
    def _grades(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            if not all(isinstance(x, str) for x in v):
                raise ValueError("a list of relevant sources holds strings (or use a mapping source -> grade)")
            return {x: 1 for x in v}
        if isinstance(v, dict):
            for key, grade in v.items():
                if isinstance(grade, bool) or not isinstance(grade, int) or not 0 <= grade <= 3:
                    raise ValueError(f"{key}: grade must be an integer 0-3, got {grade!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Case":
        both = set(self.relevant) & set(self.forbidden)
        if both:
            raise ValueError(f"listed as both relevant and forbidden: {', '.join(sorted(both))}")
        if self.unanswerable and any(g > 0 for g in self.relevant.values()):
            raise ValueError("an unanswerable case has no relevant source with a grade above 0")
        return self


class Suite(_Model):
    tolerances: dict[str, float] = Field(default_factory=dict,
                                         description="metric (e.g. retrieval.ndcg_at_10) -> allowed regression")
    cases: tuple[Case, ...]

    @field_validator("tolerances")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        for name, tol in v.items():
            if name not in METRICS:
                raise ValueError(f"unknown metric {name!r} (one of {', '.join(METRICS)})")
            if tol < 0:
                raise ValueError(f"{name}: a tolerance is >= 0")
        return v


def _loc(loc: tuple[Any, ...]) -> str:
    # Drop pydantic's discriminator tags (`checks.0.contains.value` -> `checks.0.value`).
    parts = [str(p) for p in loc if p not in ("contains", "regex", "json_schema", "numeric", "judge")]
    return ".".join(parts)


def _case_problems(where: str, index: int, raw: Any) -> tuple[Case | None, list[str]]:
    cid = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    label = f"{where}: case {index}" + (f" (id {cid})" if cid else "")
    if not isinstance(raw, dict):
        return None, [f"{label}: a case is a mapping, got {type(raw).__name__}"]
    try:
        return Case.model_validate(raw), []
    except ValidationError as err:
        out = []
        for e in err.errors():
            msg = e["msg"].removeprefix("Value error, ")
            path = _loc(e["loc"])
            out.append(f"{label}: {path}: {msg}" if path else f"{label}: {msg}")
        return None, out


def parse_suite(data: Any, *, where: str = "suite") -> Suite:
    """A suite from already-decoded data: a mapping {tolerances, cases} or a list of records (JSONL)."""
    if isinstance(data, list):
        tolerances: dict[str, Any] = {}
        raws = []
        for rec in data:
            if isinstance(rec, dict) and set(rec) == {"tolerances"}:
                tolerances.update(rec["tolerances"] or {})
            else:
                raws.append(rec)
        data = {"tolerances": tolerances, "cases": raws}
    if not isinstance(data, dict):
        raise SuiteError([f"{where}: expected a mapping with `cases` (and optional `tolerances`)"])
    extra = set(data) - {"tolerances", "cases"}
    problems = [f"{where}: {key}: unknown top-level field" for key in sorted(extra)]
    raws = data.get("cases")
    if not isinstance(raws, list) or not raws:
        problems.append(f"{where}: cases: a non-empty list of cases is required")
        raws = []
    try:
        tolerances = Suite.model_validate({"tolerances": data.get("tolerances") or {}, "cases": []}).tolerances
    except ValidationError as err:
        tolerances = {}
        problems += [f"{where}: {_loc(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()]
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raws, start=1):
        case, bad = _case_problems(where, i, raw)
        problems += bad
        if case is not None:
            if case.id in seen:
                problems.append(f"{where}: case {i} (id {case.id}): id: the same id as case {seen[case.id]}")
            seen.setdefault(case.id, i)
            cases.append(case)
    if problems:
        raise SuiteError(problems)
    return Suite(tolerances=tolerances, cases=tuple(cases))


def load_suite(text: str, *, where: str = "suite.yaml") -> Suite:
    """YAML or, for *.jsonl / *.ndjson names, JSON Lines."""
    if where.endswith((".jsonl", ".ndjson")):
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as err:
                raise SuiteError([f"{where}: line {lineno}: not JSON: {err}"]) from None
        return parse_suite(records, where=where)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise SuiteError([f"{where}: {line}not valid YAML: {getattr(err, 'problem', None) or err}"]) from None
    return parse_suite(data, where=where)


def read_suite(path: str | Path) -> Suite:
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except OSError as err:
        raise SuiteError([f"{p}: cannot read: {err.strerror or err}"]) from None
    return load_suite(text, where=str(p))
