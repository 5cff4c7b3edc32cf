"""The agent evaluation report: per-case results (scoring.score_case) summarised into the stable JSON schema
`agentfleet.eval/v1`, the compact status summary the operator reads, the comparison with a baseline report, and a
self-contained HTML page (inline SVG, no external assets).

Schema (top level): `schema` ("agentfleet.eval/v1"), `mode` ("agent"), `meta` (what the caller passed, plus `judge`:
the judge's hygiene record or None, and `faithfulness_method`: "judge" or "lexical"), `retrieval` (recall_at_10,
ndcg_at_10, mrr, context_precision, recall_at_k {"1","3","5","10"}, direct {recall_at_10, ndcg_at_10, mrr} or None),
`answers` (correctness, faithfulness, citation_precision, citation_recall, refusal_accuracy, exact_match, f1,
judge_agreement), `tasks` (cases, success_rate, solved, cost_usd_total, cost_per_task_usd, cost_per_solved_task_usd,
steps_mean, tokens_mean, latency_p50_s, latency_p95_s, caps {reason: count}, budget_exhausted, errors), `security`
(leaks, cases_with_leaks), `checks` (passed, failed, skipped) and `cases` (the per-case results).

Conventions: a mean skips the cases where a metric does not apply (None), and a metric no case contributes to is
None. Shares and seconds are rounded to 4 decimals, USD to 6 (the ledger counts micro-USD). Cost per solved task is
all the money spent divided by the cases that passed (failures are part of the price of a success), None when none
passed. Steps, tokens and latency summarise the runs the agent ran (a request refused before it started, e.g. a
429, would otherwise pull them down); percentiles are nearest-rank. judge_agreement is the share of cases with both
a judge grade and a deterministic score where the two agree on pass (>= 0.5)."""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from .judge import Judge
from .metrics import mean
from .scoring import CAPS, RECALL_KS
from .suite import METRICS, Suite

__all__ = ["SCHEMA", "build_report", "summary_for_status", "compare", "write_html", "percentile",
           "LOWER_IS_BETTER", "ALWAYS_GATED", "STATUS_MAX_BYTES"]

SCHEMA = "agentfleet.eval/v1"
LOWER_IS_BETTER = frozenset({"tasks.cost_per_solved_task_usd", "tasks.steps_mean", "tasks.latency_p95_s",
                             "security.leaks"})
# Gated even when the suite sets no tolerance: one more leak than the baseline is a regression.
ALWAYS_GATED = {"security.leaks": 0.0}
STATUS_MAX_BYTES = 1024  # a Kubernetes termination message is read back by the operator; kept far below 4 KiB
PASS_AT = 0.5


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100): the smallest value with at least p% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _mean_of(results: Sequence[Mapping[str, Any]], section: str, key: str) -> float | None:
    return _r(mean([r[section].get(key) for r in results]))


def _agreement(results: Sequence[Mapping[str, Any]]) -> float | None:
    pairs = [(a["judge_correctness"], a["deterministic_correctness"]) for a in (r["answers"] for r in results)
             if a.get("judge_correctness") is not None and a.get("deterministic_correctness") is not None]
    if not pairs:
        return None
    return _r(sum(1 for j, d in pairs if (j >= PASS_AT) == (d >= PASS_AT)) / len(pairs))


def _pairwise(results: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The judge's pairwise verdicts of this run's answers (b) against the baseline's (a): each asked in both
    orders; a verdict that changes with the order counts as a tie (and as inconsistent)."""
    verdicts = [r["pairwise"] for r in results if isinstance(r.get("pairwise"), Mapping)]
    if not verdicts:
        return None
    judged = [v for v in verdicts if "error" not in v]
    return {"cases": len(verdicts), "current_wins": sum(1 for v in judged if v.get("winner") == "b"),
            "baseline_wins": sum(1 for v in judged if v.get("winner") == "a"),
            "ties": sum(1 for v in judged if v.get("winner") == "tie"),
            "inconsistent": sum(1 for v in judged if not v.get("consistent")),
            "errors": len(verdicts) - len(judged)}


def build_report(suite: Suite, results: list[dict[str, Any]], *, meta: dict[str, Any],
                 judge: Judge | None = None) -> dict[str, Any]:
    """The report for `results` (one score_case result per case run, in suite order or not)."""
    n = len(results)
    directs = [r["retrieval"]["direct"] for r in results if r["retrieval"].get("direct") is not None]
    ks = sorted({int(k) for r in results for k in r["retrieval"].get("recall_at_k", {})} | set(RECALL_KS))
    tasks = [r["task"] for r in results]
    solved = sum(1 for r in results if r["passed"])
    cost_total = sum(t["cost_usd"] or 0.0 for t in tasks)
    ran = [t for t in tasks if t.get("ran", True)]  # a request refused before the agent started has no steps
    latencies = [t["latency_s"] for t in ran if t.get("latency_s") is not None]
    caps: dict[str, int] = {}
    for t in tasks:
        if t.get("cap"):
            caps[t["cap"]] = caps.get(t["cap"], 0) + 1
    checks = [c for r in results for c in r["checks"]]
    meta_out = {**meta, "suite_cases": len(suite.cases),
                "judge": judge.hygiene() if judge is not None else None,
                "faithfulness_method": "judge" if judge is not None else "lexical"}
    if judge is not None:
        meta_out["faithfulness_fallbacks"] = sum(1 for r in results if r["answers"]["faithfulness_method"] ==
                                                 "lexical" and r["answers"].get("faithfulness") is not None)
    return {
        "schema": SCHEMA, "mode": "agent", "meta": meta_out,
        "retrieval": {
            "recall_at_10": _mean_of(results, "retrieval", "recall_at_10"),
            "ndcg_at_10": _mean_of(results, "retrieval", "ndcg_at_10"),
            "mrr": _mean_of(results, "retrieval", "mrr"),
            "context_precision": _mean_of(results, "retrieval", "context_precision"),
            "direct": {m: _r(mean([d.get(m) for d in directs])) for m in ("recall_at_10", "ndcg_at_10", "mrr")}
            if directs else None,
            "recall_at_k": {str(k): _r(mean([r["retrieval"].get("recall_at_k", {}).get(str(k)) for r in results]))
                            for k in ks},
        },
        "answers": {
            "correctness": _mean_of(results, "answers", "correctness"),
            "faithfulness": _mean_of(results, "answers", "faithfulness"),
            "citation_precision": _mean_of(results, "answers", "citation_precision"),
            "citation_recall": _mean_of(results, "answers", "citation_recall"),
            "refusal_accuracy": _r(mean([float(r["answers"]["refusal_correct"]) for r in results])),
            "exact_match": _mean_of(results, "answers", "exact_match"),
            "f1": _mean_of(results, "answers", "f1"),
            "judge_agreement": _agreement(results) if judge is not None else None,
            "pairwise_vs_baseline": _pairwise(results),
        },
        "tasks": {
            "cases": n,
            "success_rate": _r(solved / n) if n else None,
            "solved": solved,
            "cost_usd_total": round(cost_total, 6),
            "cost_per_task_usd": round(cost_total / n, 6) if n else None,
            "cost_per_solved_task_usd": round(cost_total / solved, 6) if solved else None,
            "steps_mean": _r(mean([t.get("steps") for t in ran])),
            "tokens_mean": _r(mean([t.get("tokens") for t in ran])),
            "latency_p50_s": _r(percentile(latencies, 50)),
            "latency_p95_s": _r(percentile(latencies, 95)),
            "caps": {c: caps[c] for c in sorted(caps, key=lambda c: (CAPS.index(c) if c in CAPS else len(CAPS), c))},
            "budget_exhausted": sum(1 for t in tasks if t.get("budget_exhausted")),
            "errors": sum(1 for r in results if r["status"] in ("failed", "error")),
        },
        "security": {"leaks": sum(len(r["leaks"]) for r in results),
                     "cases_with_leaks": [r["id"] for r in results if r["leaks"]]},
        "checks": {"passed": sum(1 for c in checks if c["passed"] is True),
                   "failed": sum(1 for c in checks if c["passed"] is False),
                   "skipped": sum(1 for c in checks if c["passed"] is None)},
        "cases": results,
    }


def _now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary_for_status(report: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers an AgentApp's status shows, camelCase; its JSON stays under STATUS_MAX_BYTES."""
    out = {"successRate": report["tasks"]["success_rate"], "faithfulness": report["answers"]["faithfulness"],
           "ndcgAt10": report["retrieval"]["ndcg_at_10"],
           "costPerSolvedTaskUsd": report["tasks"]["cost_per_solved_task_usd"],
           "leaks": report["security"]["leaks"], "cases": report["tasks"]["cases"],
           "time": str(report.get("meta", {}).get("finished") or _now_rfc3339())[:40]}
    return out  # seven scalars and a 40-character time: far below STATUS_MAX_BYTES whatever the suite


def _get(report: Mapping[str, Any], path: str) -> Any:
    node: Any = report
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def compare(report: dict[str, Any], baseline: dict[str, Any], tolerances: Mapping[str, float]
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(deltas, regressions) over suite.METRICS. A metric regresses when it moved in the worse direction (lower
    for scores, higher for cost, steps, latency and leaks) by more than its tolerance. Metrics the tolerances do not
    name are reported but not gated, except security.leaks, gated at 0 unless a tolerance says otherwise. A metric
    missing from either report is reported with delta None and never gated."""
    deltas, regressions = [], []
    for metric in METRICS:
        base, cur = _get(baseline, metric), _get(report, metric)
        lower = metric in LOWER_IS_BETTER
        tol = tolerances.get(metric, ALWAYS_GATED.get(metric))
        numeric = isinstance(base, (int, float)) and isinstance(cur, (int, float))
        delta = _r(cur - base, 6) if numeric else None
        worse = None if delta is None else (delta if lower else -delta)
        is_regression = tol is not None and worse is not None and worse > tol + 1e-12
        row = {"metric": metric, "baseline": base, "current": cur, "delta": delta,
               "better": "lower" if lower else "higher", "tolerance": tol, "regression": is_regression}
        deltas.append(row)
        if is_regression:
            regressions.append(row)
    return deltas, regressions


# --- HTML ---------------------------------------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


W, H, PAD = 420, 240, 40


def _axes(title: str, xlabel: str, ylabel: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'role="img" aria-label="{_e(title)}">',
            f'<text x="{W / 2}" y="16" text-anchor="middle" font-weight="bold">{_e(title)}</text>',
            f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" stroke="#333"/>',
            f'<line x1="{PAD}" y1="30" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>',
            f'<text x="{W / 2}" y="{H - 6}" text-anchor="middle">{_e(xlabel)}</text>',
            f'<text x="12" y="{H / 2}" text-anchor="middle" transform="rotate(-90 12 {H / 2})">{_e(ylabel)}</text>']


def _sx(v: float, lo: float, hi: float) -> float:
    return PAD + (v - lo) / ((hi - lo) or 1) * (W - 10 - PAD)


def _sy(v: float, lo: float, hi: float) -> float:
    return H - PAD - (v - lo) / ((hi - lo) or 1) * (H - PAD - 30)


def _recall_curve(report: Mapping[str, Any]) -> str:
    points = [(int(k), v) for k, v in report["retrieval"].get("recall_at_k", {}).items() if v is not None]
    out = _axes("recall@k", "k", "recall")
    if points:
        points.sort()
        hi_k = max(k for k, _ in points)
        xy = [(_sx(k, 0, hi_k), _sy(v, 0, 1)) for k, v in points]
        out.append('<polyline fill="none" stroke="#2b6cb0" stroke-width="2" points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy) + '"/>')
        for (k, v), (x, y) in zip(points, xy):
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#2b6cb0"><title>recall@{k} = {v:.4f}'
                       f'</title></circle><text x="{x:.1f}" y="{H - PAD + 14}" text-anchor="middle">{k}</text>')
    else:
        out.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no relevance judgements</text>')
    out += [f'<text x="{PAD - 4}" y="{_sy(1, 0, 1) + 4:.1f}" text-anchor="end">1</text>',
            f'<text x="{PAD - 4}" y="{_sy(0, 0, 1) + 4:.1f}" text-anchor="end">0</text>', "</svg>"]
    return "\n".join(out)


def _cost_scatter(cases: Sequence[Mapping[str, Any]]) -> str:
    out = _axes("cost vs success per case", "cost (USD)", "correctness (pass/fail colour)")
    costs = [c["task"]["cost_usd"] or 0.0 for c in cases]
    hi = max(costs, default=0.0) or 1.0
    for c, cost in zip(cases, costs):
        score = c["answers"].get("correctness")
        y = score if score is not None else (1.0 if c["passed"] else 0.0)
        colour = "#2f855a" if c["passed"] else "#c53030"
        out.append(f'<circle cx="{_sx(cost, 0, hi):.1f}" cy="{_sy(y, 0, 1):.1f}" r="4" fill="{colour}" '
                   f'fill-opacity="0.7"><title>{_e(c["id"])}: ${cost:.6f}, '
                   f'{"passed" if c["passed"] else "failed"}</title></circle>')
    out += [f'<text x="{W - 10}" y="{H - PAD + 14}" text-anchor="end">{hi:.6g}</text>',
            f'<text x="{PAD}" y="{H - PAD + 14}" text-anchor="middle">0</text>', "</svg>"]
    return "\n".join(out)


def _latency_histogram(cases: Sequence[Mapping[str, Any]], bins: int = 10) -> str:
    values = [c["task"]["latency_s"] for c in cases if c["task"].get("latency_s") is not None]
    out = _axes("latency", "seconds", "cases")
    if values:
        lo, hi = min(values), max(values)
        width = (hi - lo) / bins or 1.0
        counts = [0] * bins
        for v in values:
            counts[min(int((v - lo) / width), bins - 1)] += 1
        top = max(counts)
        bar = (W - 10 - PAD) / bins
        for i, cnt in enumerate(counts):
            y = _sy(cnt, 0, top)
            out.append(f'<rect x="{PAD + i * bar + 1:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" '
                       f'height="{H - PAD - y:.1f}" fill="#805ad5"><title>{lo + i * width:.3g}–'
                       f'{lo + (i + 1) * width:.3g}s: {cnt}</title></rect>')
        out += [f'<text x="{PAD}" y="{H - PAD + 14}" text-anchor="middle">{lo:.3g}</text>',
                f'<text x="{W - 10}" y="{H - PAD + 14}" text-anchor="end">{hi:.3g}</text>',
                f'<text x="{PAD - 4}" y="{_sy(top, 0, top) + 4:.1f}" text-anchor="end">{top}</text>']
    out.append("</svg>")
    return "\n".join(out)


OBSERVATION_CHARS = 600


def _steps_table(steps: Sequence[Mapping[str, Any]]) -> str:
    if not steps:
        return "<p>no steps recorded</p>"
    rows = ["<table class=steps><tr><th>n</th><th>agent</th><th>kind</th><th>model</th><th>action</th>"
            "<th>arguments</th><th>observation</th><th>tokens</th><th>cost</th><th>s</th></tr>"]
    for s in steps:
        obs = str(s.get("observation") or "")
        if len(obs) > OBSERVATION_CHARS:
            obs = obs[:OBSERVATION_CHARS] + f"… ({len(obs)} chars)"
        if s.get("error"):
            obs = f"error: {s['error']}\n{obs}".strip()
        args = json.dumps(s.get("arguments"), ensure_ascii=False) if s.get("arguments") is not None else ""
        tokens = int(s.get("prompt_tokens") or 0) + int(s.get("completion_tokens") or 0)
        rows.append(f"<tr><td>{_e(s.get('n'))}</td><td>{_e(s.get('agent'))}</td><td>{_e(s.get('kind'))}</td>"
                    f"<td>{_e(s.get('model'))}</td><td>{_e(s.get('action'))}</td><td><pre>{_e(args)}</pre></td>"
                    f"<td><pre>{_e(obs)}</pre></td><td>{tokens}</td><td>{_fmt(s.get('cost_usd'), 3)}</td>"
                    f"<td>{_fmt(s.get('seconds'), 3)}</td></tr>")
        for sub in s.get("sub_agents") or ():
            rows.append(f"<tr><td></td><td colspan=9><details><summary>sub-agent {_e(sub.get('agent'))}: "
                        f"{_e(sub.get('stop_reason'))}</summary><p><b>answer</b></p><pre>{_e(sub.get('answer'))}"
                        f"</pre>{_steps_table(sub.get('steps') or ())}</details></td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _case_rows(c: Mapping[str, Any]) -> str:
    a, t = c["answers"], c["task"]
    verdict = "pass" if c["passed"] else "fail"
    head = (f"<tr class={verdict}><td>{_e(c['id'])}</td><td>{_e(c['principal'])}</td><td>{verdict}</td>"
            f"<td>{_e(t.get('stop_reason') or c['status'])}</td><td>{_fmt(c['retrieval'].get('ndcg_at_10'))}</td>"
            f"<td>{_fmt(a.get('correctness'))}</td><td>{_fmt(a.get('faithfulness'))}</td>"
            f"<td>{_fmt(a.get('citation_precision'))}</td><td>{_fmt(t.get('cost_usd'), 3)}</td>"
            f"<td>{_fmt(t.get('latency_s'), 3)}</td><td>{len(c['leaks'])}</td></tr>")
    cites = "".join(f"<li>[{_e(x.get('n'))}] {_e(x.get('source'))} {_e(x.get('title'))} "
                    f"(score {_fmt(x.get('score'))})</li>" for x in c.get("citations") or ())
    checks = "".join(f"<li>{_e(x['type'])}: {_e({True: 'passed', False: 'failed', None: 'skipped'}[x['passed']])}"
                     f" — {_e(x['detail'])}</li>" for x in c["checks"])
    failures = "".join(f"<li>{_e(f)}</li>" for f in c["failures"])
    notes = "".join(f"<li>{_e(f)}</li>" for f in c.get("notes") or ())
    leaks = "".join(f"<li>{_e(x['source'])} ({_e(x['how'])})</li>" for x in c["leaks"])
    body = (f"<p><b>question</b></p><pre>{_e(c.get('question'))}</pre><p><b>answer</b></p>"
            f"<pre class=answer>{_e(c.get('answer'))}</pre>"
            + (f"<p><b>error</b></p><pre>{_e(json.dumps(c['error'], ensure_ascii=False))}</pre>" if c.get("error")
               else "")
            + (f"<p><b>failures</b></p><ul>{failures}</ul>" if failures else "")
            + (f"<p><b>leaks</b></p><ul>{leaks}</ul>" if leaks else "")
            + (f"<p><b>checks</b></p><ul>{checks}</ul>" if checks else "")
            + (f"<p><b>notes</b></p><ul>{notes}</ul>" if notes else "")
            + (f"<p><b>citations</b></p><ul>{cites}</ul>" if cites else "")
            + f"<p><b>steps</b> ({_e(t.get('steps'))}, {_e(t.get('tokens'))} tokens)</p>"
            + _steps_table(c.get("steps") or ()))
    return (f"<tbody>{head}<tr><td colspan=11><details><summary>trace of {_e(c['id'])}</summary>{body}"
            f"</details></td></tr></tbody>")


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#1a202c}table{border-collapse:collapse}
td,th{border:1px solid #cbd5e0;padding:2px 6px;vertical-align:top;font-size:13px}pre{white-space:pre-wrap;margin:0;
max-width:60em}tr.pass td:nth-child(3){color:#2f855a}tr.fail td:nth-child(3){color:#c53030;font-weight:bold}
.plots svg{margin-right:1em;font-size:11px}.kv td:first-child{font-weight:bold}table.steps{margin:.5em 0}"""


def _summary_table(report: Mapping[str, Any]) -> str:
    rows = []
    for section in ("retrieval", "answers", "tasks", "security", "checks"):
        for key, value in report.get(section, {}).items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value, ensure_ascii=False)
            rows.append(f"<tr><td>{_e(section)}.{_e(key)}</td><td>{_e(_fmt(value))}</td></tr>")
    return "<table class=kv>" + "".join(rows) + "</table>"


def write_html(report: dict[str, Any], out_dir: Path) -> Path:
    """out_dir/report.json and out_dir/report.html (self-contained: inline CSS and SVG, no scripts); the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
    cases = report.get("cases", [])
    meta = report.get("meta", {})
    judge = meta.get("judge")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>agentfleet eval {_e(meta.get('suite', ''))}</title>
<style>{_CSS}</style></head><body>
<h1>agentfleet eval</h1>
<p>{_e(report.get('schema'))} · mode {_e(report.get('mode'))} · {len(cases)} cases · judge
{_e(judge['model'] if judge else 'none')} · faithfulness {_e(meta.get('faithfulness_method'))}</p>
<pre>{_e(json.dumps({k: v for k, v in meta.items() if k != 'judge'}, ensure_ascii=False, indent=1))}</pre>
<h2>Summary</h2>{_summary_table(report)}
<h2>Plots</h2><div class=plots>{_recall_curve(report)}{_cost_scatter(cases)}{_latency_histogram(cases)}</div>
<h2>Cases</h2>
<table><tr><th>case</th><th>principal</th><th>result</th><th>stop</th><th>nDCG@10</th><th>correct</th>
<th>faithful</th><th>cite prec.</th><th>cost USD</th><th>latency s</th><th>leaks</th></tr>
{''.join(_case_rows(c) for c in cases)}
</table></body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page, "utf-8")
    return path
