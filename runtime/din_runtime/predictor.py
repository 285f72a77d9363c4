"""Predictor: load a bundle, encode raw feature values with its manifest, return click probabilities."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from . import thread_pool
from .completion import complete, complete_user
from .config import RANK_BLOCK, SESSION_ROWS, SMALL_CALL_MAX_BYTES, SMALL_CALL_ROWS
from .encoding import FeatureEncoder, to_ragged
from .errors import BundleError, InputError, ProviderError, first_line
from .manifest import OUTPUT_NAME, WEIGHTS_NAME, read_manifest, schema_of, verify_model_file
from .providers import ProviderChoice, create_session, preferred
from .stores import BehaviourStore

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options_for(threads: int | None = None, optimization: str | None = None) -> ort.SessionOptions:
    """ONNX Runtime session options from the two settings that matter most for latency.

    Worker threads stop spinning when a call ends (session.force_spinning_stop): left spinning, one session's idle
    pool competes with the next call's encoding and with the predictor's other session for the cores. Measured
    on 2 cores: rank of 1,000 candidates right after predict calls 25.2 ms spinning, 10.0 ms stopped; predict at
    batch 256 x 50 alone 4.6 ms against 4.8 ms, within noise."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimization is not None:
        if optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization must be one of {sorted(OPTIMIZATION_LEVELS)}, not {optimization!r}")
        options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    return options


@dataclass(frozen=True)
class Explanation:
    """Per row its click probability and, in `weights`, one attention weight per behaviour the model used (the
    most recent max_len of the history, in the order given): how much each behaviour counted toward the score."""

    probabilities: np.ndarray
    weights: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.probabilities)


@dataclass(frozen=True)
class Ranking:
    """Candidates best first: `order` holds their positions in the candidates given, `probabilities` their click
    probabilities, and `candidates` their columns in the same order; with explain=True, `weights` holds each
    ranked candidate's attention weights over the history (as Explanation.weights). `scores` holds every
    candidate's probability in the order given (top_k or not)."""

    order: np.ndarray
    probabilities: np.ndarray
    candidates: dict[str, Any]
    weights: list[np.ndarray] | None = None
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.order)


class Predictor:
    """Serves one model bundle. Construct with Predictor.load.

    Safe to call from many threads at once: encoding keeps no state between calls and ONNX Runtime's
    InferenceSession.run is thread-safe (tested with 8 threads against sequential calls).
    """

    def __init__(self, bundle: Path, manifest: dict[str, Any], session: ort.InferenceSession,
                 session_rows: int = SESSION_ROWS, ranking_session: ort.InferenceSession | None = None,
                 rank_block: int = RANK_BLOCK, session_options: ort.SessionOptions | None = None,
                 small_call_options: ort.SessionOptions | None = None) -> None:
        for name, value in (("session_rows", session_rows), ("rank_block", rank_block)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self.bundle = bundle
        self.manifest = manifest
        self.session = session
        self.ranking_session = ranking_session
        self.session_rows = session_rows
        self.rank_block = rank_block
        self.schema = schema_of(manifest)
        self.encoder = FeatureEncoder(self.schema)
        self.output_name = manifest["onnx"]["outputs"][0]["name"]
        self.sequences = self.schema.history_names  # one entry per behaviour: sent once per ranked user, padded when batched
        self.row_times = [t.at for t in self.schema.times]  # each row's own time, read by the encoder, no graph input
        self.shared = sorted(set(self.schema.shared))
        self._options = session_options or ort.SessionOptions()  # the explain graph's: the batch graph's, from load()
        self._small_call_options = small_call_options  # None: small calls use the batch session
        self._opened: dict[str, ort.InferenceSession] = {}  # sessions opened on first use (_lazy_session)
        self._opening = threading.Lock()
        for graph in (g for g in (session, ranking_session) if g is not None):
            graph_inputs = sorted(i.name for i in graph.get_inputs())
            if graph_inputs != sorted(self.encoder.names):
                raise BundleError(f"{bundle}: model inputs {graph_inputs} do not match the manifest's features {sorted(self.encoder.names)}")

    @classmethod
    def load(cls, bundle: str | Path, providers: ProviderChoice = "auto", session_options: ort.SessionOptions | None = None,
             threads: int | None = None, optimization: str | None = None, session_rows: int = SESSION_ROWS,
             fallback: bool = False, provider_options: list[dict[str, Any]] | None = None,
             rank_block: int = RANK_BLOCK, chunk_rows: int | None = None) -> Predictor:
        """Check the manifest and the graphs' sha256, then open ONNX Runtime sessions (the ranking graph's too,
        where the bundle has one).

        providers: "auto" (CUDA where usable, else CPU), "cpu", "cuda" (raises if CUDA is not in use, or warns with
        fallback=True), or an explicit list of ONNX Runtime provider names (the first must end up in use).
        provider_options: passed through to ONNX Runtime, one dict per requested provider.
        threads, optimization ("disable", "basic", "extended", "all"): session settings, unless session_options is given
        (threads counts for nothing in a process that shares one pool: thread_pool.share).
        session_rows: larger batches are run in session calls of this many rows, bounding the session's memory
        (`chunk_rows`, its name in 0.1.0, is accepted with a DeprecationWarning for one release).
        rank_block: rank scores its candidates in blocks of at most this many candidate x behaviour pairs.
        """
        if chunk_rows is not None:
            warnings.warn("Predictor.load(chunk_rows=...) is now session_rows=...; chunk_rows goes in the next release",
                          DeprecationWarning, stacklevel=2)
            session_rows = chunk_rows
        bundle = Path(bundle)
        manifest = read_manifest(bundle)
        options = session_options or session_options_for(threads, optimization)
        model_path = verify_model_file(bundle, manifest, "onnx")
        session = _open_session(model_path, providers, options, fallback, provider_options)
        sessions = [session]
        if manifest.get("ranking") is not None:
            # The ranking graph goes where the batch graph went: after a fallback its warning is not repeated.
            fell_back = session.get_providers()[0] != preferred(providers)
            sessions.append(_open_session(verify_model_file(bundle, manifest, "ranking"), session.get_providers() if fell_back else providers,
                                          options, fallback, None if fell_back else provider_options))
        # A single-threaded session for small calls: only where the settings are ours (not the caller's own options),
        # on the CPU, with more than one thread for the batch session and a graph small enough to hold twice; never in a
        # process that shares one pool (every session runs on it).
        small = (session_options is None and (threads or os.cpu_count() or 1) > 1 and model_path.stat().st_size <= SMALL_CALL_MAX_BYTES
                 and session.get_providers()[0] == "CPUExecutionProvider" and not thread_pool.shared())
        return cls(bundle, manifest, sessions[0], session_rows, sessions[1] if len(sessions) > 1 else None, rank_block, options,
                   session_options_for(1, optimization) if small else None)

    @property
    def providers(self) -> list[str]:
        """The providers ONNX Runtime is actually using, first one preferred."""
        return self.session.get_providers()

    @property
    def feature_names(self) -> list[str]:
        return self.encoder.names

    @property
    def request_names(self) -> list[str]:
        """Every column a request carries: the features and, where the model reads the behaviours' times, each row's
        own time (no graph input: the encoder takes the behaviours' ages from it)."""
        return [*self.encoder.names, *self.row_times]

    def encode(self, features: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The exact feed predict hands to ONNX Runtime: ONNX input name to numpy array."""
        return self.encoder.encode(features)

    def predict(self, features: Mapping[str, Any], store: BehaviourStore | None = None, as_of: Any = None) -> np.ndarray:
        """Click probability per row, float32 of shape (n,), from raw values as they appear in the training table.
        store: a behaviour store (din_runtime.stores) that fills the histories (and user attributes) the rows leave
        out, for each row's user, as of `as_of` (one time, one per row, or None: everything stored)."""
        return self.run_encoded(self.encode(self._completed(features, store, as_of)))

    def _completed(self, features: Mapping[str, Any], store: BehaviourStore | None, as_of: Any) -> Mapping[str, Any]:
        _check_as_of(store, as_of)
        return features if store is None else complete(features, self.schema, store, as_of)

    def run_encoded(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """Probabilities for a feed as encode() returns it (what a server that encodes each request and batches
        many into one call uses)."""
        rows = len(next(iter(feed.values())))
        return self._run(self._session_for(rows), dict(feed), rows, self.session_rows)

    def _session_for(self, rows: int) -> ort.InferenceSession:
        """The single-threaded session (opened on first use) for a small call where there is one, else the batch one."""
        if rows > SMALL_CALL_ROWS or self._small_call_options is None:
            return self.session
        return self._lazy_session("small", self._open_small)

    def _open_small(self) -> ort.InferenceSession:
        path = verify_model_file(self.bundle, self.manifest, "onnx")
        return _open_session(path, ["CPUExecutionProvider"], self._small_call_options, False, None)

    def _lazy_session(self, name: str, open_session: Callable[[], ort.InferenceSession]) -> ort.InferenceSession:
        """A session opened on its first use only (most servers never explain), once however many threads ask: the
        lock guards the first open, an opened session is returned without it (it is on every small call's path)."""
        session = self._opened.get(name)
        if session is not None:
            return session
        with self._opening:
            if name not in self._opened:
                self._opened[name] = open_session()
            return self._opened[name]

    def explain(self, features: Mapping[str, Any], store: BehaviourStore | None = None, as_of: Any = None) -> Explanation:
        """Probabilities and each row's weight of each behaviour (explain.onnx: every model but base: DIN's attention,
        DIEN's AUGRU gate, BST's candidate attention);
        `store` and `as_of` as for predict."""
        features = self._completed(features, store, as_of)
        feed = self.encode(features)
        rows = len(next(iter(feed.values())))
        probabilities, weights = self._explained(feed, rows)
        kept = self._kept_lengths(features, rows)
        return Explanation(probabilities, [weights[i, :kept[i]].copy() for i in range(rows)])

    def _open_explainer(self) -> ort.InferenceSession:
        """explain.onnx's session, where the batch graph runs."""
        if self.manifest.get("explain") is None:
            raise BundleError(f"{self.bundle}: no explain graph: the {self.manifest['model']['variant']} model pools its "
                              "behaviours without attention (or the bundle predates explain.onnx); explain needs din, din-seq, dien or bst")
        path = verify_model_file(self.bundle, self.manifest, "explain")
        return _open_session(path, self.session.get_providers(), self._options, False, None)

    def _explained(self, feed: dict[str, np.ndarray], rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, attention weights padded to the widest chunk's histories) of every row."""
        session = self._lazy_session("explain", self._open_explainer)
        if rows == 0:
            return np.zeros(0, dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
        parts = self._chunks(session, [OUTPUT_NAME, WEIGHTS_NAME], feed, rows, self.session_rows)
        weights = np.zeros((rows, max(weight.shape[1] for _, weight in parts)), dtype=np.float32)
        start = 0
        for _, weight in parts:
            weights[start:start + len(weight), :weight.shape[1]] = weight
            start += len(weight)
        return np.concatenate([p.reshape(-1) for p, _ in parts]).astype(np.float32, copy=False), weights

    def _kept_lengths(self, columns: Mapping[str, Any], rows: int) -> np.ndarray:
        """How many behaviours of each row the model saw: its history's length, at most max_len."""
        given = next((s for s in self.schema.sequences if s.name in columns), None)
        if given is None:  # every history derived from another input: none given is impossible (encode checked)
            return np.zeros(rows, dtype=np.int64)
        return np.minimum(to_ragged(given.name, columns[given.name]).lengths, given.max_len)

    def rank(self, user_row: Mapping[str, Any], candidates: Mapping[str, Any], top_k: int | None = None,
             explain: bool = False, store: BehaviourStore | None = None, as_of: float | None = None) -> Ranking:
        """Score many candidates for one user and return them best first (the top_k best, if given).

        user_row: one value per user-side feature, the behaviour histories as lists, as in one row of the table.
        candidates: a list of values per candidate-side feature; it must hold the features the behaviours share
        (the candidate item itself) and may hold any other non-sequence feature (a price, a context).
        The history is encoded and sent once; with the bundle's ranking graph it is also embedded once and the
        attention unit's first layer becomes one large product. Probabilities equal predict's on the replicated rows.
        explain: also each ranked candidate's attention weights over the history (explain.onnx on the ranked rows).
        store, as_of: the user's histories (and attributes) the row leaves out, filled from a behaviour store as of a
        time (one read for the user).
        """
        _check_as_of(store, as_of)
        if store is not None:
            user_row = complete_user(user_row, self.schema, store, as_of, per_candidate=list(candidates))
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, not {top_k!r}")
        per_candidate, per_user = self._split_features(user_row, candidates)
        candidate_feed = self.encoder.encode(candidates, only=per_candidate)
        count = len(candidate_feed[per_candidate[0]])
        try:
            user_columns = {name: [user_row[name]] for name in [*per_user, *self.row_times] if name in user_row}
            user_feed = self.encoder.encode(user_columns, only=per_user)
        except InputError as error:
            raise InputError(error.feature, f"in user_row: {error.problem}") from None
        feed = dict(candidate_feed)
        for name in per_user:  # user-side scalars go with every candidate; histories stay one row (1, seq_len)
            feed[name] = user_feed[name] if name in self.sequences else np.repeat(user_feed[name], count)
        if self.ranking_session is not None:
            block = max(1, self.rank_block // feed[self.sequences[0]].shape[1])
            probabilities = self._run(self.ranking_session, feed, count, block, shared=self.sequences)
        else:  # a bundle without rank.onnx: the batch graph on the replicated rows
            replicated = {name: np.repeat(array, count, axis=0) if name in self.sequences else array for name, array in feed.items()}
            probabilities = self._run(self.session, replicated, count, self.session_rows)
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        reordered = {name: column[order] if isinstance(column, np.ndarray) else [column[i] for i in order]
                     for name, column in candidates.items()}
        weights = None
        if explain:
            ranked = {name: np.repeat(array, len(order), axis=0) if name in self.sequences else array[order] for name, array in feed.items()}
            kept = int(self._kept_lengths({n: [user_row[n]] for n in self.sequences if n in user_row}, 1)[0])
            weights = [row[:kept].copy() for row in self._explained(ranked, len(order))[1]]
        return Ranking(order, probabilities[order], reordered, weights, probabilities)

    def _split_features(self, user_row: Mapping[str, Any], candidates: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Which features come per candidate and which once from the user row; every feature from exactly one. An
        item attribute the bundle can look up (the candidate's category from its item ID, the history's categories
        from its items) may be left out of the side its item is on."""
        derived = self.encoder.derived

        def present(name: str, side: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
            return name in side or (name not in other and name in derived and derived[name][0] in side)

        for name in self.sequences:
            if name in candidates:
                raise InputError(name, "is a behaviour history: give it once, in user_row, not per candidate")
        for name in self.shared:
            if not present(name, candidates, user_row):
                raise InputError(name, "missing from candidates: the behaviours share it, so it is what a candidate is")
        per_candidate = [name for name in self.feature_names if present(name, candidates, user_row)]
        per_user = [name for name in self.feature_names if name not in per_candidate]
        for name in per_candidate:
            if name in user_row:
                raise InputError(name, "given in both user_row and candidates; give it in one")
        for name in per_user:
            if not present(name, user_row, candidates):
                raise InputError(name, "missing from user_row and from candidates")
        return per_candidate, per_user

    def _run(self, session: ort.InferenceSession, feed: dict[str, np.ndarray], rows: int, chunk: int,
             shared: Sequence[str] = ()) -> np.ndarray:
        """Probabilities for `rows` rows, in chunks of `chunk` rows; inputs named in `shared` go whole to every chunk."""
        if rows == 0:
            return np.zeros(0, dtype=np.float32)
        parts = self._chunks(session, [self.output_name], feed, rows, chunk, shared)
        if len(parts) == 1:
            return parts[0][0].reshape(rows).astype(np.float32, copy=False)
        return np.concatenate([part[0].reshape(-1) for part in parts]).astype(np.float32, copy=False)

    @staticmethod
    def _chunks(session: ort.InferenceSession, outputs: list[str], feed: dict[str, np.ndarray], rows: int, chunk: int,
                shared: Sequence[str] = ()) -> list[list[np.ndarray]]:
        """The session's outputs for every chunk of `chunk` rows, in order: the one loop that bounds a call's memory.
        Inputs named in `shared` (a ranked user's history) go whole to every chunk."""
        if rows <= chunk:
            return [session.run(outputs, feed)]
        return [session.run(outputs, {name: array if name in shared else array[start:start + chunk] for name, array in feed.items()})
                for start in range(0, rows, chunk)]


def _check_as_of(store: BehaviourStore | None, as_of: Any) -> None:
    """`as_of` picks which stored behaviours a history holds: without a store it has nothing to pick from."""
    if store is None and as_of is not None:
        raise InputError("as_of", "applies to histories filled from a store; give store= too")


def _open_session(model_path: Path, providers: ProviderChoice, options: ort.SessionOptions, fallback: bool,
                  provider_options: list[dict[str, Any]] | None) -> ort.InferenceSession:
    try:
        return create_session(str(model_path), providers, options, fallback=fallback, provider_options=provider_options)
    except (ProviderError, ValueError):
        raise
    except Exception as error:  # ONNX Runtime's own error types: a file it cannot load, e.g. missing external data
        raise BundleError(f"{model_path}: ONNX Runtime cannot load it ({first_line(error)[:300]})") from None
