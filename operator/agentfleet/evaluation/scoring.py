"""Scoring one agent run of one suite case, pure: the trace the runner recorded from `POST /v1/runs` (answer,
steps, the `agentfleet` summary) is turned into retrieval, answer, check, task and leak results. The judge, when
given, is the only I/O; without one every score is deterministic.

How the numbers are made:
- Retrieved passages are read back from the retrieve steps' observations (runtime.tools.format_hits writes
  `[n] heading > trail (source): text`, one hit a line) across the whole step tree, sub-agents included; the
  citation number maps to the task's citation list for the source and chunk id. Sources are ranked by first
  appearance (the citation list's order when no observation parses) and named as judged: the chunk id or source
  when the suite judges it, else the file (`f.jsonl#3` counts for `f.jsonl`).
- Context precision: distinct retrieved sources that are relevant (grade > 0) / distinct retrieved sources.
  Citation precision and recall use the cited sources: the [n] markers of the answer mapped through the citation
  list, or the whole citation list when the answer has no marker. Each is None when undefined (no relevant source
  judged; nothing retrieved or cited for precision).
- Correctness: the judge's 0..1 grade against the reference (or the facts joined) when a judge is given, else
  facts recall (share of `facts` found in the SQuAD-normalised answer) when the case lists facts, else token F1
  against the reference; None when the case has neither.
- Faithfulness, lexical method (no judge, or a judge reply that cannot be parsed): the answer, citation markers
  removed, is split into claims (sentences and lines); refusals and claims with fewer than 3 content words and no
  number are dropped. A claim is supported when every number in it occurs in the retrieved context and at least 60%
  of its distinct content words (lower case, stopwords removed, crude suffix stemming) occur in one retrieved
  passage. Faithfulness is supported / claims; None for an empty answer or one with no claim. It rewards copying
  and misses paraphrase: read it as a lower bound and prefer the judge's RAGAS-style score.
- Refusal: an empty answer, or one matching REFUSAL_PATTERNS (cannot answer, not in the documents, ...).
- Leaks: a retrieved or cited source that the case forbids or that `permitted` says the principal may not read, and
  `quoted`: an 8-word shingle of a forbidden text (normalised) found in the answer that no document the principal
  may read contains as well (boilerplate shared with a permitted page is not a leak). One entry per source, the most
  telling way it leaked (quoted > cited > retrieved > direct, where `direct` is the runner's search of the index as
  the case's principal: the index itself returned it, whatever the agent did).
- A case passes when the task completed, every check that ran passed, every one of its `facts` is stated (the
  suite's "strings the answer must state": the same normalised match as facts recall), nothing leaked, an
  unanswerable case was refused, and the expected tools and sub-agents were used. A judge check without a judge is skipped (passed None):
  it neither passes nor fails the case, and the report counts it. Beyond facts, correctness (F1, the judge) does
  not gate a case: suites gate answers through checks."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from .judge import Judge, JudgeError
from .metrics import exact_match, ndcg_at, normalise_answer, recall_at, reciprocal_rank, token_f1
from .suite import Case

__all__ = ["score_case", "Passage", "iter_steps", "retrieved_passages", "cited_numbers", "is_refusal",
           "lexical_faithfulness", "numbers", "CAPS", "REFUSAL_PATTERNS", "RECALL_KS", "SHINGLE_WORDS",
           "SUPPORT_SHARE"]

# Stop reasons that are a cap of the task (runtime/agent.py StopReason); the others are answered or a failure.
CAPS = ("max_steps", "max_tokens", "deadline", "budget_exhausted")
RECALL_KS = (1, 3, 5, 10)
SHINGLE_WORDS = 8
SUPPORT_SHARE = 0.6
MIN_CLAIM_WORDS = 3
FINAL_ACTION = "final_answer"  # runtime/actions.py FINAL: the answer, not a tool

# An answer that says it cannot answer. Matched on the lower-cased answer with typographic apostrophes
# straightened; phrased narrowly so an answer that merely mentions a missing detail is not a refusal.
REFUSAL_PATTERNS = tuple(re.compile(p) for p in (
    r"\b(?:i|we) (?:cannot|can't|can not|could not|couldn't|am unable to|am not able to|was unable to) "
    r"(?:answer|find|determine|tell|say|help with|locate|provide)",
    r"\b(?:i|we) (?:do not|don't) (?:know|have (?:any |enough |that |this )?(?:information|details|data|access))",
    r"\bunable to (?:answer|find|determine|locate)",
    r"\bno (?:relevant |such )?(?:information|documents?|passages?|mention|details?|answer) "
    r"(?:about|on|regarding|for|in|was|were|is|are|that|could|can)\b",
    r"\b(?:not|isn't|is not|aren't|are not|wasn't|was not) (?:mentioned|covered|stated|specified|described|found|"
    r"available|addressed|included|contained) in (?:the|any|my|your|these|those)? ?(?:provided |available |given |"
    r"retrieved )?(?:documents?|passages?|context|sources?|sources|information|knowledge base|texts?)",
    r"\b(?:the|these|those) (?:provided |available |given |retrieved )?(?:documents?|passages?|context|sources?) "
    r"(?:do not|don't|does not|doesn't) (?:contain|mention|say|cover|include|provide|specify|address)",
    r"\b(?:not enough|insufficient) (?:information|context|data)",
    r"\bno documents you may read match",  # runtime/tools.py: the retrieve tool's empty result, echoed
))

_STOPWORDS = frozenset("""a about above after again against all also am an and any are aren't as at be because been
before being below between both but by can cannot could did do does doing don't down during each either else etc
few for from further had has have having he her here hers herself him himself his how i if in into is isn't it its
itself just let me more most my myself no nor not of off on once only or other our ours ourselves out over own per
same she should so some such than that the their theirs them themselves then there these they this those through
to too under until up upon very via was we were what when where which while who whom why will with would yes yet you
your yours yourself yourselves may might must shall one""".split())

_CITATION_MARK = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_SPACED_MARK = re.compile(r"\s*\[\d+(?:\s*[,;]\s*\d+)*\]")
_HIT_LINE = re.compile(r"^\[(\d+)\] ")
_HIT_FALLBACK = re.compile(r"^\[(\d+)\] (.*?) \(([^()]*)\): (.*)$", re.S)
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")


@dataclass(frozen=True)
class Passage:
    """One retrieved hit as the agent saw it."""
    n: int | None
    id: str
    source: str
    heading: str
    text: str
    agent: str
    step: int


# --- reading the trace ------------------------------------------------------------------------------------------
def iter_steps(steps: Sequence[Mapping[str, Any]] | None) -> Iterator[Mapping[str, Any]]:
    """Every step of a step tree, depth first: a delegate step, then its sub-agents' steps."""
    for st in steps or ():
        yield st
        for sub in st.get("sub_agents") or ():
            yield from iter_steps(sub.get("steps"))


def _sub_agents(steps: Sequence[Mapping[str, Any]] | None) -> Iterator[Mapping[str, Any]]:
    for st in steps or ():
        for sub in st.get("sub_agents") or ():
            yield sub
            yield from _sub_agents(sub.get("steps"))


def _citations(trace: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    cites = (trace.get("agentfleet") or {}).get("citations") or ()
    return {int(c["n"]): c for c in cites if isinstance(c, Mapping) and isinstance(c.get("n"), int)}


def _parse_hit(line: str, citations: Mapping[int, Mapping[str, Any]]) -> tuple[int, str, str, str, str] | None:
    """(n, id, source, heading, text) of one `format_hits` line. The citation's source locates the ` (source): `
    separator exactly; without it the last parenthesis-free group before `: ` is taken. The format is copied from
    runtime/tools.py rather than imported: scoring reads traces, it does not run the agent."""
    m = _HIT_LINE.match(line)
    if not m:
        return None
    n = int(m.group(1))
    cite = citations.get(n)
    if cite is not None and cite.get("source"):
        marker = f" ({cite['source']}): "
        at = line.find(marker)
        if at >= 0:
            return n, str(cite.get("id", "")), str(cite["source"]), line[m.end():at], line[at + len(marker):]
    fb = _HIT_FALLBACK.match(line)
    if not fb:
        return None
    return n, str(cite.get("id", "")) if cite else "", fb.group(3), fb.group(2), fb.group(4)


def retrieved_passages(trace: Mapping[str, Any]) -> list[Passage]:
    """The passages the retrieve steps returned, in the order the agents saw them (sub-agents included)."""
    citations = _citations(trace)
    out: list[Passage] = []
    for st in iter_steps(trace.get("steps")):
        if st.get("action") != "retrieve" or st.get("error") or not st.get("observation"):
            continue
        for line in str(st["observation"]).split("\n"):
            hit = _parse_hit(line, citations)
            if hit is not None:
                n, cid, source, heading, text = hit
                out.append(Passage(n, cid, source, heading, text, str(st.get("agent", "")), int(st.get("n", 0))))
    return out


def cited_numbers(answer: str) -> list[int]:
    """The citation numbers an answer's [n] / [n, m] markers name, in order, once each."""
    out: list[int] = []
    for m in _CITATION_MARK.finditer(answer):
        for part in re.split(r"\s*[,;]\s*", m.group(1)):
            if int(part) not in out:
                out.append(int(part))
    return out


def _judged_name(source: str, chunk_id: str, judged: Mapping[str, Any] | Sequence[str]) -> str:
    """The name a hit answers to in the judgements: its chunk id or source when judged, else the file."""
    for name in (chunk_id, source, source.split("#", 1)[0]):
        if name and name in judged:
            return name
    return source


def _ranking(hits: Sequence[tuple[str, str]], judged: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for source, cid in hits:
        name = _judged_name(source, cid, judged)
        if name not in out:
            out.append(name)
    return out


# --- text measures ----------------------------------------------------------------------------------------------
def _plain(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


def is_refusal(answer: str) -> bool:
    text = " ".join(_plain(answer).split())
    return not text or any(p.search(text) for p in REFUSAL_PATTERNS)


def numbers(text: str) -> list[float]:
    """The numbers written in a text: thousands separators (2,000) and currency signs or codes ($, USD) allowed."""
    out = []
    for m in _NUMBER.finditer(_CITATION_MARK.sub(" ", text)):
        try:
            out.append(float(m.group(0).replace(",", "")))
        except ValueError:
            continue
    return out


def _stem(word: str) -> str:
    for suffix, repl, min_len in (("ies", "y", 5), ("sses", "ss", 5), ("ing", "", 6), ("ed", "", 5),
                                  ("ly", "", 5), ("es", "", 5), ("s", "", 4)):
        if word.endswith(suffix) and len(word) >= min_len and not (suffix == "s" and word.endswith("ss")):
            return word[: len(word) - len(suffix)] + repl
    return word


def _content_words(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(_plain(text)) if w not in _STOPWORDS and len(w) > 1}


def _claims(answer: str) -> list[str]:
    text = _SPACED_MARK.sub("", answer)
    out = []
    for part in _SENTENCE.split(text):
        claim = " ".join(_BULLET.sub("", part).split())
        if not claim or is_refusal(claim):
            continue
        if len(_content_words(claim)) >= MIN_CLAIM_WORDS or numbers(claim):
            out.append(claim)
    return out


def lexical_faithfulness(answer: str, contexts: Sequence[str]) -> tuple[float | None, list[dict[str, Any]]]:
    """(supported claims / claims, [{claim, supported}]) by the lexical method of the module docstring."""
    if not answer.strip():
        return None, []
    claims = _claims(answer)
    if not claims:
        return None, []
    context_numbers = set(numbers("\n".join(contexts)))
    passage_words = [_content_words(c) for c in contexts]
    out = []
    for claim in claims:
        words = _content_words(claim)
        has_numbers = all(x in context_numbers for x in numbers(claim))
        overlap = max((len(words & pw) / len(words) for pw in passage_words), default=0.0) if words else 1.0
        out.append({"claim": claim, "supported": has_numbers and overlap >= SUPPORT_SHARE})
    return sum(1 for o in out if o["supported"]) / len(out), out


def _stated(answer: str, fact: str) -> bool:
    """A fact is stated when its SQuAD-normalised words occur, as whole words, in the normalised answer."""
    norm = normalise_answer(fact)
    return bool(norm) and f" {norm} " in f" {normalise_answer(answer)} "


def _facts_recall(answer: str, facts: Sequence[str]) -> float | None:
    if not facts:
        return None
    return sum(1 for f in facts if _stated(answer, f)) / len(facts)


def _missing_facts(case: Case, answer: str) -> list[str]:
    return [f for f in case.facts if not _stated(answer, f)]


def _shingles(text: str, size: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    words = normalise_answer(text).split()
    return {tuple(words[i:i + size]) for i in range(len(words) - size + 1)}


# --- checks -----------------------------------------------------------------------------------------------------
def _json_in(answer: str) -> Any:
    text = answer.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text, i)[0]
            except ValueError:
                continue
    raise ValueError("no JSON object or array in the answer")


def _check(check: Any, case: Case, answer: str, judge: Judge | None) -> dict[str, Any]:
    kind = check.type
    passed: bool | None
    if kind == "contains":
        hay, needle = (answer, check.value) if check.case_sensitive else (answer.casefold(), check.value.casefold())
        passed = needle in hay
        detail = f"{'found' if passed else 'missing'}: {check.value!r}"
    elif kind == "regex":
        passed = re.search(check.pattern, answer) is not None
        detail = f"{'matches' if passed else 'no match for'} /{check.pattern}/"
    elif kind == "numeric":
        got = numbers(answer)
        slack = check.tolerance + 1e-9 * max(1.0, abs(check.value))
        passed = any(abs(x - check.value) <= slack for x in got)
        detail = (f"{check.value:g} ± {check.tolerance:g} " + ("found" if passed else "not found") +
                  f" among {[round(x, 6) for x in got][:10]}")
    elif kind == "json_schema":
        try:
            import jsonschema
        except ImportError:  # a declared dependency; kept soft so a trimmed install still scores the rest
            return {"type": kind, "passed": None, "detail": "skipped: jsonschema is not installed"}
        try:
            doc = _json_in(answer)
            jsonschema.validate(doc, check.schema_)
            passed, detail = True, "valid against the schema"
        except ValueError as e:
            passed, detail = False, str(e)
        except jsonschema.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "(root)"
            passed, detail = False, f"{where}: {e.message}"
        except jsonschema.SchemaError as e:
            passed, detail = False, f"the suite's schema is invalid: {e.message}"
    elif kind == "judge":
        if judge is None:
            return {"type": kind, "passed": None, "detail": "skipped: no judge configured"}
        try:
            passed, reason = judge.rubric(case.question, answer, check.rubric)
        except JudgeError as e:
            return {"type": kind, "passed": None, "detail": f"skipped: {e}"}
        detail = f"{check.rubric}: {reason}" if reason else check.rubric
    else:  # a check type the suite schema added later
        return {"type": kind, "passed": None, "detail": "skipped: unknown check type"}
    return {"type": kind, "passed": passed, "detail": detail}


# --- the case ---------------------------------------------------------------------------------------------------
def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _leaks(case: Case, hits: Sequence[tuple[str, str]], cited_hits: Sequence[tuple[str, str]],
           citations: Mapping[int, Mapping[str, Any]], answer: str, *, permitted: Callable[[str], bool] | None,
           forbidden_texts: Mapping[str, str] | None, readable: Callable[[str], bool] | None = None,
           direct: Sequence[Mapping[str, Any]] = ()) -> dict[str, str]:
    """source -> how it leaked, the most telling way only (quoted > cited > retrieved > direct: the direct search
    of the index as the case's principal returned it, whatever the agent did with it). A shingle that a document
    the principal may read also contains (`readable(phrase)`) is no quote of the forbidden one."""
    how_rank = {"direct": -1, "retrieved": 0, "cited": 1, "quoted": 2}
    leaks: dict[str, str] = {}

    def leak(source: str, how: str) -> None:
        if how_rank[how] > how_rank.get(leaks.get(source, ""), -2):
            leaks[source] = how

    cited = {s for s, _ in cited_hits}
    for source, cid in [*hits, *((str(c.get("source", "")), str(c.get("id", ""))) for c in citations.values())]:
        if source and (_judged_name(source, cid, case.forbidden) in case.forbidden
                       or (permitted is not None and not permitted(source))):
            leak(source, "cited" if source in cited else "retrieved")
    for d in direct:
        source, cid = str(d.get("source", "")), str(d.get("id", ""))
        if source and (_judged_name(source, cid, case.forbidden) in case.forbidden
                       or (permitted is not None and not permitted(source))):
            leak(source, "direct")
    said = _shingles(answer)
    for source, text in (forbidden_texts or {}).items():
        quoted = said & _shingles(text)
        if quoted and readable is not None:
            quoted = {q for q in quoted if not readable(" ".join(q))}
        if quoted:
            leak(source, "quoted")
    return leaks


def _task(trace: Mapping[str, Any], all_steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the task cost and how it ended; the summary's figures, the steps' sums where it has none."""
    af: Mapping[str, Any] = trace.get("agentfleet") or {}
    error = trace.get("error")
    stop_reason = af.get("stop_reason")
    code = error.get("code") if isinstance(error, Mapping) else None
    sub_stops = [sub.get("stop_reason") for sub in _sub_agents(trace.get("steps"))]
    tokens = (af.get("usage") or {}).get("total_tokens")
    if not isinstance(tokens, int):
        tokens = sum(int(s.get("prompt_tokens") or 0) + int(s.get("completion_tokens") or 0) for s in all_steps)
    cost = af.get("cost_usd")
    if not isinstance(cost, (int, float)):
        cost = sum(float(s.get("cost_usd") or 0.0) for s in all_steps)
    latency = trace.get("latency_s")
    return {"ran": bool(af), "steps": af.get("steps") if isinstance(af.get("steps"), int) else len(all_steps),
            "tokens": tokens, "cost_usd": round(float(cost), 6),
            "latency_s": _r(latency) if isinstance(latency, (int, float)) else None,
            "stop_reason": stop_reason,
            "cap": stop_reason if stop_reason in CAPS else ("budget_exhausted" if code == "budget_exhausted" else None),
            "budget_exhausted": "budget_exhausted" in (stop_reason, code, *sub_stops),
            "degraded": bool(af.get("degraded"))}


def score_case(case: Case, trace: dict[str, Any], *, judge: Judge | None = None,
               permitted: Callable[[str], bool] | None = None, forbidden_texts: Mapping[str, str] | None = None,
               readable: Callable[[str], bool] | None = None, k: int = 10) -> dict[str, Any]:
    """The per-case result (the module docstring says how each number is made). `permitted(source)`: whether the
    case's principal may read a source (None: unknown, only `case.forbidden` applies); `forbidden_texts`: source ->
    text of documents the answer must not quote; `readable(phrase)`: whether a document the principal may read
    states this normalised phrase too (then quoting it is no leak)."""
    af: Mapping[str, Any] = trace.get("agentfleet") or {}
    answer = str(trace.get("answer") or "")
    status = str(trace.get("status") or "error")
    error = trace.get("error") or None
    steps = list(trace.get("steps") or ())
    citations = _citations(trace)
    passages = retrieved_passages(trace)
    notes: list[str] = []

    # Retrieval: the agent's own, and the same question searched directly (when the runner did).
    judged = {**case.relevant, **{f: 0 for f in case.forbidden}}
    relevant = {d for d, g in case.relevant.items() if g > 0}
    hits = [(p.source, p.id) for p in passages] or [(str(c.get("source", "")), str(c.get("id", "")))
                                                     for _, c in sorted(citations.items())]
    ranking = _ranking(hits, judged)
    cut = ranking[:max(k, 10)]
    direct_rows = trace.get("direct")
    direct = None
    if direct_rows is not None:
        dr = _ranking([(str(d.get("source", "")), str(d.get("id", ""))) for d in direct_rows], judged)[:max(k, 10)]
        direct = {"recall_at_10": _r(recall_at(dr, case.relevant, 10)), "ndcg_at_10": _r(ndcg_at(dr, case.relevant)),
                  "mrr": _r(reciprocal_rank(dr, case.relevant))}
    retrieval = {
        "retrieved": ranking,
        "recall_at_10": _r(recall_at(cut, case.relevant, 10)),
        "ndcg_at_10": _r(ndcg_at(cut, case.relevant, 10)),
        "mrr": _r(reciprocal_rank(cut, case.relevant)),
        "recall_at_k": {str(n): _r(recall_at(cut, case.relevant, n)) for n in sorted({*RECALL_KS, k})},
        "context_precision": _r(_share(sum(1 for d in ranking if d in relevant), len(ranking))) if relevant else None,
        "direct": direct,
    }

    # Citations: the answer's markers, else everything the task cited.
    marks = cited_numbers(answer)
    unknown = [n for n in marks if n not in citations]
    cited_hits = ([(str(citations[n].get("source", "")), str(citations[n].get("id", ""))) for n in marks
                   if n in citations] if marks else
                  [(str(c.get("source", "")), str(c.get("id", ""))) for _, c in sorted(citations.items())])
    cited = _ranking(cited_hits, judged)
    if unknown:
        notes.append(f"the answer cites {', '.join(f'[{n}]' for n in unknown)}, which no retrieved passage has")

    # Answers.
    refused = is_refusal(answer)
    bare = _SPACED_MARK.sub("", answer)  # citation markers are not words of the answer
    reference_f1 = token_f1(bare, case.reference) if case.reference else None
    facts_f1 = token_f1(bare, " ".join(case.facts)) if case.facts else None
    f1s = [x for x in (reference_f1, facts_f1) if x is not None]
    facts_recall = _facts_recall(bare, case.facts)
    deterministic = facts_recall if case.facts else reference_f1
    target = case.reference or (" ".join(case.facts) if case.facts else None)
    judge_correctness = None
    if judge is not None and target is not None and answer.strip():
        try:
            judge_correctness = judge.correctness(case.question, target, answer)
        except JudgeError as e:
            notes.append(f"judge correctness unavailable, deterministic score used: {e}")
    contexts = list(dict.fromkeys(f"{p.heading}: {p.text}" if p.heading else p.text for p in passages))
    faithfulness, claims, method = None, [], "lexical"
    if judge is not None and answer.strip():
        try:
            faithfulness, claims = judge.faithfulness(answer, contexts)
        except JudgeError as e:
            faithfulness, claims = None, [{"error": str(e)}]
        if faithfulness is not None or not claims:
            method = "judge"
        else:
            notes.append(f"judge faithfulness unusable ({claims[0].get('error', 'unparsable')}): lexical fallback")
    if method == "lexical":
        faithfulness, claims = lexical_faithfulness(answer, contexts)
    answers = {
        "exact_match": exact_match(bare, case.reference) if case.reference else None,
        "f1": _r(max(f1s)) if f1s else None,
        "facts_recall": _r(facts_recall),
        "deterministic_correctness": _r(deterministic),
        "correctness": _r(judge_correctness if judge_correctness is not None else deterministic),
        "judge_correctness": _r(judge_correctness),
        "faithfulness": _r(faithfulness),
        "faithfulness_method": method,
        "claims": claims,
        "citation_precision": _r(_share(sum(1 for d in cited if d in relevant), len(cited))) if relevant else None,
        "citation_recall": _r(_share(sum(1 for d in relevant if d in cited), len(relevant))),
        "cited": cited,
        "unknown_citations": unknown,
        "refused": refused,
        "refusal_correct": refused if case.unanswerable else not refused,
    }

    leaks = _leaks(case, hits, cited_hits, citations, bare, permitted=permitted, forbidden_texts=forbidden_texts,
                   readable=readable, direct=direct_rows or ())

    # Checks.
    checks = [_check(c, case, answer, judge) for c in case.checks]

    # The task.
    stop_reason = af.get("stop_reason")
    all_steps = list(iter_steps(steps))
    task = _task(trace, all_steps)
    tools_used = list(dict.fromkeys(str(s["action"]) for s in all_steps
                                    if s.get("action") and s.get("action") != FINAL_ACTION))
    subagents_used = list(dict.fromkeys(str(s.get("agent")) for s in _sub_agents(steps)))

    failures: list[str] = []
    if status != "completed":
        why = stop_reason or (error.get("message") if isinstance(error, Mapping) else None) or "no result"
        detail = af.get("detail")
        failures.append(f"task {status}: {why}" + (f" ({detail})" if detail else ""))
    failures += [f"leak: {source} ({how})" for source, how in leaks.items()]
    failures += [f"check {c['type']} failed: {c['detail']}" for c in checks if c["passed"] is False]
    if case.unanswerable and not refused:
        failures.append("unanswerable: the answer does not refuse")
    missing = _missing_facts(case, bare)
    if missing:
        failures.append(f"facts not stated: {'; '.join(missing)}")
    failures += [f"expected tool {t} was not used (used: {', '.join(tools_used) or 'none'})"
                 for t in case.expect_tools if t not in tools_used]
    failures += [f"expected sub-agent {a} was not used (used: {', '.join(subagents_used) or 'none'})"
                 for a in case.expect_subagents if a not in subagents_used]

    return {
        "id": case.id, "principal": case.principal, "question": case.question, "unanswerable": case.unanswerable,
        "status": status, "http_status": trace.get("http_status"), "stop_reason": stop_reason,
        "passed": not failures, "failures": failures, "notes": notes,
        "retrieval": retrieval, "answers": answers, "checks": checks, "task": task,
        "tools_used": tools_used, "subagents_used": subagents_used,
        "leaks": [{"source": source, "how": how} for source, how in leaks.items()],
        "answer": answer, "error": error, "citations": [dict(c) for _, c in sorted(citations.items())],
        "steps": steps,
    }
