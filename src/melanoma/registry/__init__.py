"""MLflow Model Registry: register the best candidate, move ``champion`` only by the rule.

The rule (``register``):

- the candidate is the model with the best **validation** ROC AUC (test never chooses);
- it becomes a new version of the registered model (unless a version with the same content
  fingerprint exists: a rerun registers nothing) and gets the alias ``challenger``;
- it gets ``champion`` only when its test ROC AUC beats the champion's on the **same** test split by
  at least ``margin``. A champion scored on another split is re-scored today by loading its model
  URI; when that fails (artifacts gone) nothing is promoted unless ``allow_unscored_champion``.

Each version carries its lineage and scores as tags; the decision is returned as a JSON-able
record (for ``reports/registry.json``, so no timings or run ids) and put on the version's
description. Manual operations: ``list_versions``, ``promote`` (reason required) and ``rollback``
(champion back to the one before, from the registered model's ``champion_history`` tag).
"""

from melanoma.registry.manual import list_versions, promote, rollback
from melanoma.registry.promotion import Candidate, Decision, Scorer, make_scorer, register, split_hash_of
from melanoma.registry.store import (
    CHALLENGER,
    CHAMPION,
    TAG_DECISION,
    TAG_HISTORY,
    TAG_ROLLED_BACK,
    TAG_SCORE,
    TAG_SPLIT,
    RegistryError,
)

__all__ = [
    "CHALLENGER", "CHAMPION", "TAG_DECISION", "TAG_HISTORY", "TAG_ROLLED_BACK", "TAG_SCORE", "TAG_SPLIT",
    "Candidate", "Decision", "RegistryError", "Scorer",
    "list_versions", "make_scorer", "promote", "register", "rollback", "split_hash_of",
]  # fmt: skip
