"""Write a synthetic, skewed expert-routing trace for Mixtral-8x7B (32 MoE layers, 8 experts, top-2).

Usage::

    python scenarios/traces/make_skewed_trace.py [--tokens 2000] [--seed 2026] [--out PATH]

The default output is ``mixtral_skewed.jsonl`` next to this script, in the
compact JSONL form read by ``model.routing.load_trace``: one line per token,
``{"token": i, "experts": [[a, b], ...]}`` with 32 pairs, one per layer in
layer order (compact separators, no spaces).

Distribution.  Every layer uses the same weight profile over its 8 experts,

    PROFILE = [0.150, 0.145, 0.140, 0.135, 0.130, 0.130, 0.130, 0.040]  (sums to 1)

-- the busiest expert gets 15% and the rarest 4% of the weight, against 12.5%
for uniform routing, in line with public Mixtral-8x7B routing analyses where
the busiest expert per layer is near 15% of selections and the rarest near
3-10%.  The profile is assigned to the experts of each layer by a per-layer
random permutation: expert ``perm[l][i]`` of layer ``l`` gets ``PROFILE[i]``.
Each token at each layer draws 2 distinct experts without replacement with
probabilities proportional to the weights: draw one, remove it, renormalize
the remaining weights, draw the second.

Because the second draw is renormalized, the expected *selection* shares are
slightly flatter than the weights: (P(first = e) + P(second = e)) / 2 gives
0.1484, 0.1439, 0.1394, 0.1349, 0.1304 (x3), 0.0423 -- printed by this script.

Randomness.  One ``random.Random(seed)`` drives everything, in this order:
first ``rng.shuffle(list(range(8)))`` for layers 0..31 (the permutations), then
for token 0..tokens-1, for layer 0..31, two draws, each one ``rng.random()``
``u`` mapped to the first expert (in index order) whose cumulative remaining
weight exceeds ``u * total remaining weight``.  Same seed and token count, same
file, byte for byte.  Standard library only.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NUM_LAYERS = 32
NUM_EXPERTS = 8
TOP_K = 2
PROFILE = (0.150, 0.145, 0.140, 0.135, 0.130, 0.130, 0.130, 0.040)
DEFAULT_TOKENS = 2000
DEFAULT_SEED = 2026
DEFAULT_OUT = Path(__file__).resolve().parent / "mixtral_skewed.jsonl"


def layer_weights(rng: random.Random) -> list[list[float]]:
    """weights[l][e]: PROFILE assigned to layer l's experts by a random permutation."""
    weights = []
    for _ in range(NUM_LAYERS):
        perm = list(range(NUM_EXPERTS))
        rng.shuffle(perm)
        w = [0.0] * NUM_EXPERTS
        for i, e in enumerate(perm):
            w[e] = PROFILE[i]
        weights.append(w)
    return weights


def draw(rng: random.Random, weights: list[float], exclude: set[int]) -> int:
    """One expert, with probability proportional to its weight among those not excluded."""
    items = [(e, w) for e, w in enumerate(weights) if e not in exclude]
    target = rng.random() * sum(w for _, w in items)
    acc = 0.0
    for e, w in items:
        acc += w
        if target < acc:
            return e
    return items[-1][0]  # target rounded up to the total


def expected_shares(weights: list[float]) -> list[float]:
    """Expected share of selections per expert under the two-draw scheme: (P(first) + P(second)) / 2."""
    out = []
    for e, we in enumerate(weights):
        second = sum(wj * we / (1.0 - wj) for j, wj in enumerate(weights) if j != e)
        out.append((we + second) / 2)
    return out


def generate(tokens: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    weights = layer_weights(rng)
    lines = []
    for tok in range(tokens):
        per_layer = []
        for layer in range(NUM_LAYERS):
            first = draw(rng, weights[layer], set())
            second = draw(rng, weights[layer], {first})
            per_layer.append([first, second])
        lines.append({"token": tok, "experts": per_layer})
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="tokens to write (default %(default)s)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .jsonl (default: mixtral_skewed.jsonl here)")
    args = ap.parse_args(argv)
    if args.tokens < 1:
        ap.error("--tokens must be at least 1")

    lines = generate(args.tokens, args.seed)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for obj in lines:
            f.write(json.dumps(obj, separators=(",", ":")) + "\n")

    counts = [[0] * NUM_EXPERTS for _ in range(NUM_LAYERS)]
    for obj in lines:
        for layer, pair in enumerate(obj["experts"]):
            for e in pair:
                counts[layer][e] += 1
    shares = [[c / (TOP_K * args.tokens) for c in row] for row in counts]
    busiest = [max(r) for r in shares]
    rarest = [min(r) for r in shares]
    exp = sorted(expected_shares(list(PROFILE)), reverse=True)
    print(f"wrote {args.out} ({args.tokens} tokens, seed {args.seed}, {args.out.stat().st_size} bytes)")
    print("expected selection shares: " + ", ".join(f"{s:.4f}" for s in exp))
    print(f"busiest share per layer: min {min(busiest):.4f}, max {max(busiest):.4f}")
    print(f"rarest share per layer:  min {min(rarest):.4f}, max {max(rarest):.4f}")


if __name__ == "__main__":
    main()
