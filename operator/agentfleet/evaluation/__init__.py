"""Evaluation: the suite schema, metric functions, public evaluation sets (pyfaq) and the retrieval-only runner
behind `agentfleet eval`."""

from .metrics import exact_match, mean, ndcg_at, normalise_answer, recall_at, reciprocal_rank, token_f1
from .suite import Case, Suite, SuiteError, load_suite, parse_suite, read_suite

__all__ = ["exact_match", "mean", "ndcg_at", "normalise_answer", "recall_at", "reciprocal_rank", "token_f1",
           "Case", "Suite", "SuiteError", "load_suite", "parse_suite", "read_suite"]
