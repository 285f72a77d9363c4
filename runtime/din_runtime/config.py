"""Every default of din_runtime, in one place: the predictor's, the batch command's and the server's limits, with
the measurements that chose them. The command line's options read them from here (`din-runtime serve --help` and
`din-runtime predict --help` show them)."""

from __future__ import annotations

from dataclasses import dataclass

SESSION_ROWS = 16_384  # Predictor: the most rows one session call takes; larger batches run in calls of this many
# rank scores candidates in blocks of at most this many candidate x behaviour pairs, which bounds the attention
# unit's activations (about 1 KiB per pair at hidden sizes 80-40: 128 MiB here). Measured at 1,000 candidates: blocks
# under 64 candidates cost up to 3x in per-call overhead; from about 50,000 pairs up, time was flat within noise.
RANK_BLOCK = 131_072
# Calls of up to this many rows go to a second, single-threaded session where the batch session has more threads:
# handing one row's small kernels to a worker thread costs more than they take. Measured on 2 cores (reference
# bundle, histories of 50, interleaved in one process): predict of 1 row 0.152 against 0.196 ms, 4 rows 0.290
# against 0.342, 16 rows 0.710 against 0.759; at 64 rows two threads win (2.15 against 2.58 ms). The serving race
# (benchmarks/test_serving_race.py) keeps the one-row case measured: "predict" against "predict, batch session".
SMALL_CALL_ROWS = 16
# ...where the graph file is at most this large: the second session holds its own copy of the weights.
SMALL_CALL_MAX_BYTES = 64 << 20
# `din-runtime predict`: rows read from the input (and scored) at a time.
READ_ROWS = 65_536
SERVE_HOST, SERVE_PORT = "127.0.0.1", 8000  # `din-runtime serve`: this machine only, unless told otherwise
# Measured on a 161,616-row Parquet file of the built-in data at the default --read-rows: the session fed 16,384
# rows at a time peaked at 2.36 GB resident, 4,096 at 0.84 GB, 1,024 at 0.50 GB, and 1,024 was also the fastest.
BATCH_SESSION_ROWS = 1024
# `serve --log-requests DIR`: a file per model version every this many rows or seconds, whichever comes first;
# rows beyond SERVED_LOG_QUEUE_ROWS waiting for the writer are dropped and counted (about 1 KiB a row at histories
# of 50: 100 MiB at most).
SERVED_LOG_MAX_ROWS = 100_000
SERVED_LOG_MAX_SECONDS = 60.0
SERVED_LOG_QUEUE_ROWS = 100_000


@dataclass(frozen=True)
class ServerLimits:
    """The server's limits and their defaults, the one place they are stated (`din-runtime serve` shows them):
    rows per session call (1: no batching), extra wait for a batch to fill, requests waiting before 503, and the
    largest request body before 413."""

    max_batch: int = 64
    max_delay_ms: float = 0.0
    max_queue: int = 1024
    max_body_mb: float = 64.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_delay_ms < 0 or self.max_body_mb <= 0:
            raise ValueError("max_batch and max_queue must be at least 1, max_delay_ms at least 0 and max_body_mb above 0")

    @property
    def max_body(self) -> int:
        """The body limit in bytes."""
        return int(self.max_body_mb * (1 << 20))
