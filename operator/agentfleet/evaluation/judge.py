"""The LLM judge: one client for any OpenAI-compatible chat completions endpoint, and the prompts it is asked
(module constants, hashed into the report so two runs can show they were judged alike). It grades correctness
against a reference, faithfulness RAGAS-style (the judge lists the answer's claims, then gives a verdict per claim
against the retrieved context: supported claims / claims), a suite's rubric checks, and pairwise preference asked
in both orders, where a verdict that flips with the order is a tie (position bias, Zheng et al. 2023, "Judging
LLM-as-a-Judge with MT-Bench and Chatbot Arena", section 3.3). Sampling is greedy (temperature 0) unless told.
Synchronous on purpose: `agentfleet eval` calls it from worker threads, never from an event loop. Output that cannot
be parsed is never guessed at: `faithfulness` returns None (the scorer falls back to the lexical method and says
so), the other methods raise JudgeError."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
from string import Template
from typing import Any

__all__ = ["Judge", "JudgeError", "PROMPTS", "SYSTEM_PROMPT", "CORRECTNESS_PROMPT", "CLAIMS_PROMPT",
           "VERDICTS_PROMPT", "RUBRIC_PROMPT", "PAIRWISE_PROMPT", "chat_completions_url", "parse_json", "prompt_sha256"]

SYSTEM_PROMPT = ("You are a strict, impartial evaluator of answers written by an AI assistant. Judge only what is "
                 "asked, and reply with exactly one JSON object and nothing else.")

CORRECTNESS_PROMPT = Template("""Grade how correct the ANSWER is with respect to the REFERENCE for the QUESTION.
Score 1.0 when the answer states everything the reference states and nothing that contradicts it, 0.0 when it is
wrong, missing or a refusal, and a value in between for a partially correct answer. Wording and extra detail that
does not contradict the reference do not lower the score.

QUESTION: $question
REFERENCE: $reference
ANSWER: $answer

Reply as {"score": <number from 0.0 to 1.0>, "reason": "<one sentence>"}""")

CLAIMS_PROMPT = Template("""Break the ANSWER into the factual claims it makes: short, self-contained statements, one
fact each, with pronouns replaced by what they refer to. Leave out greetings, refusals and statements about the
answer itself. An answer that makes no factual claim has an empty list.

ANSWER: $answer

Reply as {"claims": ["<claim>", ...]}""")

VERDICTS_PROMPT = Template("""For each numbered CLAIM decide whether the CONTEXT supports it: supported means the
claim can be inferred from the context alone; a claim the context does not mention, or contradicts, is not
supported. Use no outside knowledge.

CONTEXT:
$context

CLAIMS:
$claims

Reply as {"verdicts": [{"claim": <number>, "supported": true|false, "reason": "<short>"}, ...]} with one verdict
per claim.""")

RUBRIC_PROMPT = Template("""Decide whether the ANSWER to the QUESTION meets the RUBRIC. Meet it only when every
requirement of the rubric holds.

QUESTION: $question
RUBRIC: $rubric
ANSWER: $answer

Reply as {"pass": true|false, "reason": "<one sentence>"}""")

PAIRWISE_PROMPT = Template("""Two assistants answered the same QUESTION. Decide which answer is better: more
correct, more helpful and better supported. Do not let the order of the answers, their length or their style
influence you. Say "tie" when neither is better.

QUESTION: $question

[ANSWER A]
$answer_a
[END OF ANSWER A]

[ANSWER B]
$answer_b
[END OF ANSWER B]

Reply as {"winner": "A"|"B"|"tie", "reason": "<one sentence>"}""")

PROMPTS: dict[str, str] = {"system": SYSTEM_PROMPT, "correctness": CORRECTNESS_PROMPT.template,
                           "claims": CLAIMS_PROMPT.template, "verdicts": VERDICTS_PROMPT.template,
                           "rubric": RUBRIC_PROMPT.template, "pairwise": PAIRWISE_PROMPT.template}
MAX_TOKENS = 1024
CONTEXT_MAX_CHARS = 24_000  # what the verdict prompt shows of the retrieved passages (the answer step saw fewer)

_THINK = re.compile(r"<think>.*?</think>", re.S)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


class JudgeError(RuntimeError):
    """The judge did not answer, or answered something that is not the JSON its prompt asks for."""


def chat_completions_url(url: str) -> str:
    """`http://h:8000`, `http://h:8000/v1` and the full `.../v1/chat/completions` all name the same endpoint."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def parse_json(text: str) -> Any:
    """The first JSON object or array in a model's reply: reasoning (<think>) and Markdown fences are skipped;
    None when there is none."""
    text = _THINK.sub("", text).strip()
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1).strip()] if fenced else []
    candidates.append(text)
    decoder = json.JSONDecoder()
    for cand in candidates:
        for i, ch in enumerate(cand):
            if ch in "{[":
                try:
                    return decoder.raw_decode(cand, i)[0]
                except ValueError:
                    continue
    return None


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "pass", "supported", "1"):
        return True
    if isinstance(v, str) and v.strip().lower() in ("false", "no", "fail", "unsupported", "not supported", "0"):
        return False
    return None


class Judge:
    """A judge model behind an OpenAI-compatible endpoint. `url` may be the server, its /v1 or the full chat
    completions URL. The API key is sent as a bearer token and never recorded."""

    def __init__(self, url: str, model: str, *, api_key: str | None = None, temperature: float = 0.0,
                 timeout_s: float = 120) -> None:
        self.url, self.model, self.temperature, self.timeout_s = url, model, temperature, timeout_s
        self.endpoint = chat_completions_url(url)
        self._api_key = api_key

    # --- the one I/O method ---------------------------------------------------------------------------------
    def complete(self, prompt: str) -> str:
        """The judge's reply to one prompt (under SYSTEM_PROMPT); JudgeError when it does not answer."""
        body = {"model": self.model, "temperature": self.temperature, "max_tokens": MAX_TOKENS,
                "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]}
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            raise JudgeError(f"judge {self.endpoint}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise JudgeError(f"judge {self.endpoint}: {getattr(e, 'reason', None) or e}") from None
        except ValueError:
            raise JudgeError(f"judge {self.endpoint}: the reply is not JSON") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge {self.endpoint}: not a chat completion (no choices[0].message)") from None
        return content if isinstance(content, str) else ""

    def _ask(self, template: Template, **fields: str) -> Any:
        return parse_json(self.complete(template.substitute(**fields)))

    # --- the questions --------------------------------------------------------------------------------------
    def correctness(self, question: str, reference: str, answer: str) -> float:
        """0..1: how correct `answer` is against `reference`."""
        got = self._ask(CORRECTNESS_PROMPT, question=question, reference=reference, answer=answer)
        score = got.get("score") if isinstance(got, dict) else None
        try:
            value = float(score)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise JudgeError(f"judge {self.model}: correctness reply has no numeric score") from None
        if value > 1.0 and value <= 10.0:  # a model that grades out of 10 anyway
            value /= 10.0
        return min(max(value, 0.0), 1.0)

    def faithfulness(self, answer: str, contexts: list[str]) -> tuple[float | None, list[dict[str, Any]]]:
        """(supported claims / claims, [{claim, supported, reason}]). (None, []) when the judge finds no claim;
        (None, [{"error": ...}]) when a reply cannot be parsed: the caller falls back to the lexical method."""
        listed = self._ask(CLAIMS_PROMPT, answer=answer)
        claims = listed.get("claims") if isinstance(listed, dict) else listed
        if not isinstance(claims, list) or not all(isinstance(c, str) for c in claims):
            return None, [{"error": "the claims reply is not {\"claims\": [strings]}"}]
        claims = [c.strip() for c in claims if c.strip()]
        if not claims:
            return None, []
        context = "\n\n".join(contexts)[:CONTEXT_MAX_CHARS] or "(no context was retrieved)"
        numbered = "\n".join(f"{i}. {c}" for i, c in enumerate(claims, 1))
        got = self._ask(VERDICTS_PROMPT, context=context, claims=numbered)
        verdicts = got.get("verdicts") if isinstance(got, dict) else got
        if not isinstance(verdicts, list):
            return None, [{"error": "the verdicts reply is not {\"verdicts\": [...]}"}]
        by_claim: dict[int, tuple[bool, str]] = {}
        for pos, v in enumerate(verdicts, 1):
            if not isinstance(v, dict):
                continue
            supported = _as_bool(v.get("supported", v.get("verdict")))
            n = v.get("claim", pos)
            if isinstance(n, str) and n.strip().isdigit():
                n = int(n)
            if supported is None or not isinstance(n, int) or isinstance(n, bool):
                continue
            by_claim.setdefault(n, (supported, str(v.get("reason", ""))))
        if set(by_claim) != set(range(1, len(claims) + 1)):
            return None, [{"error": f"{len(by_claim)} usable verdicts for {len(claims)} claims"}]
        out = [{"claim": c, "supported": by_claim[i][0], "reason": by_claim[i][1]} for i, c in enumerate(claims, 1)]
        return sum(1 for o in out if o["supported"]) / len(out), out

    def rubric(self, question: str, answer: str, rubric: str) -> tuple[bool, str]:
        got = self._ask(RUBRIC_PROMPT, question=question, answer=answer, rubric=rubric)
        verdict = _as_bool(got.get("pass")) if isinstance(got, dict) else None
        if verdict is None:
            raise JudgeError(f"judge {self.model}: rubric reply has no boolean `pass`")
        return verdict, str(got.get("reason", ""))

    def _prefer(self, question: str, first: str, second: str) -> tuple[str | None, str]:
        """'first' | 'second' | 'tie' as the judge sees them in this order; None when unparsable."""
        got = self._ask(PAIRWISE_PROMPT, question=question, answer_a=first, answer_b=second)
        raw = str(got.get("winner", "")).strip().lower() if isinstance(got, dict) else ""
        pick = {"a": "first", "b": "second", "tie": "tie"}.get(raw)
        return pick, (str(got.get("reason", "")) if isinstance(got, dict) else "")

    def pairwise(self, question: str, answer_a: str, answer_b: str) -> dict[str, Any]:
        """Asked as (A, B) and as (B, A): a winner only when both orders name it, otherwise a tie."""
        orders = []
        for label, first, second in (("ab", answer_a, answer_b), ("ba", answer_b, answer_a)):
            pick, reason = self._prefer(question, first, second)
            winner = None if pick is None else ("tie" if pick == "tie" else
                                                 {"first": label[0], "second": label[1]}[pick])
            orders.append({"order": label, "winner": winner, "reason": reason})
        w1, w2 = orders[0]["winner"], orders[1]["winner"]
        consistent = w1 is not None and w1 == w2
        return {"winner": w1 if consistent else "tie", "consistent": consistent, "orders": orders}

    def hygiene(self) -> dict[str, Any]:
        """What a report records about its judge, so two runs can be checked for being judged alike."""
        return {"model": self.model, "url": self.endpoint, "temperature": self.temperature,
                "prompts": dict(PROMPTS), "prompt_sha256": prompt_sha256()}


def prompt_sha256(prompts: dict[str, str] | None = None) -> str:
    return hashlib.sha256(json.dumps(prompts or PROMPTS, sort_keys=True).encode()).hexdigest()
