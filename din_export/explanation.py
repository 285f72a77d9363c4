"""`din-export report --explain`: the DIN paper's picture of a score, a user's behaviours with the activation
unit's weight on each, for a few candidates: which past behaviours drove each candidate's probability."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .evaluation import candidate_features, item_feature, row_value
from .files import write_atomic
from .scoring import bundle_table


def draw_explanation(bundle: Path, table_path: Path, rows: int, out: Path) -> int:
    """The first row's user (history and user-side values) against the candidates of the table's first `rows`
    distinct items, ranked; one heat-map line per candidate over the behaviours the model used. Returns how many
    candidates it drew."""

    from .training.plots import plt

    scored = bundle_table(bundle, table_path)
    if scored.rows == 0:
        raise ValueError(f"{table_path}: no rows to explain")
    table, columns, predictor = scored.table, scored.columns, scored.predictor
    item, per_candidate = item_feature(predictor), candidate_features(predictor)
    given = [name for name in per_candidate if name in columns]
    chosen, seen = [], set()
    for row in range(table.num_rows):
        key = str(row_value(columns[item], row))
        if key not in seen:
            seen.add(key)
            chosen.append(row)
        if len(chosen) == rows:
            break
    candidates = {name: [row_value(columns[name], r) for r in chosen] for name in given}
    user_row = {name: row_value(columns[name], 0) for name in predictor.request_names if name not in per_candidate and name in columns}
    ranking = predictor.rank(user_row, candidates, explain=True)
    history = next(s for s in predictor.schema.sequences if s.shares == item)
    behaviours = user_row[history.name][-history.max_len:]
    weights = np.array(ranking.weights) if behaviours else np.zeros((len(chosen), 1))
    labels = [f"{item} {candidate}  p={probability:.3f}"
              for candidate, probability in zip(ranking.candidates[item], ranking.probabilities, strict=True)]

    width = max(4.0, 0.28 * max(1, len(behaviours)) + 3.0)
    figure, axis = plt.subplots(figsize=(min(width, 18.0), 1.0 + 0.45 * len(chosen)))
    limit = float(np.max(np.abs(weights))) or 1.0
    image = axis.imshow(weights, aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit)
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.set_xticks(range(len(behaviours)), [str(b) for b in behaviours], rotation=90, fontsize=6)
    axis.set_xlabel(f"the user's behaviours ({history.name}, oldest to newest, the {len(behaviours)} the model used)")
    axis.set_title(f"{Path(bundle).name}: attention weight per behaviour, candidates ranked", fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.03, pad=0.02)
    figure.tight_layout()
    write_atomic(Path(out), lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
    plt.close(figure)
    return len(chosen)
