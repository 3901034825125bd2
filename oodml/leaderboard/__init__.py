"""The leaderboard: entries re-scored from their submitted embeddings, and the board rendered from them.

* :func:`submit` packages ``oodml evaluate --save-embeddings`` runs as an entry
  (format: :mod:`oodml.leaderboard.submission`);
* :func:`verify` checks an entry and recomputes all its numbers;
* :func:`build` renders ``leaderboard/README.md`` and ``leaderboard/index.html``.
"""

from .board import build, rank_entries
from .submission import SCHEMA_VERSION, Submission, read_submission
from .submit import EntryInfo, entry_path, submit
from .verify import Scores, Verification, iter_entries, verify, verify_entries

__all__ = ["SCHEMA_VERSION", "EntryInfo", "Scores", "Submission", "Verification", "build", "entry_path", "iter_entries",
           "rank_entries", "read_submission", "submit", "verify", "verify_entries"]
