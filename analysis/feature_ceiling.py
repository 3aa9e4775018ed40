#!/usr/bin/env python3
"""How well could any linear indexer rank a synthetic `diffuse` set? A Monte Carlo check of the
generator's feature model (traces/synthetic.cpp, build_features and query), used by
experiments/lsa/README.md ("Generator").

It draws projections the way the generator builds W_q and W_k (a shared part plus 0.8 of each
one's own, 64-d latents), places a diffuse set among the remote candidates of a 128K request
(3-8% of them, alignment 0.6-0.8 with the request's topic, 16 weaker distractors), adds the
generator's feature noise, and scores every candidate with the projections it drew, inverted by
a regularised least-squares (Wiener) map: the ranking a perfectly trained bilinear indexer would
produce. It prints the fraction of the set in the top K for a single-step query and for the mean
of P steps' queries (whose noise falls by sqrt(P)).

usage: python3 analysis/feature_ceiling.py [--trials N] [--top K] [--seed S]   (needs numpy)
"""
import argparse
import sys

try:
    import numpy as np
except ImportError:
    sys.exit("feature_ceiling.py: needs numpy (pip install numpy)")

LATENT = 64        # kLatentDim
FEATURES = 64      # d_query = d_key (trace gen defaults)
OWN = 0.8          # kOwnProjection
SEGMENT = 16       # kSegmentChunks
CANDIDATES = 1920  # remote candidates of a 128K request outside an 8K window
DISTRACTORS = 16   # per diffuse set


def unit_rows(rng, n):
    v = rng.normal(size=(n, LATENT))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def projections(rng):
    def draw():
        return rng.normal(size=(FEATURES, LATENT)) / np.sqrt(LATENT)
    shared = draw()
    norm = 1.0 / np.sqrt(1 + OWN * OWN)
    return norm * (shared + OWN * draw()), norm * (shared + OWN * draw())


def observe(rng, w, latents, noise):
    """W·z plus noise of norm ≈ noise × the signal's norm, as `project` does."""
    signal = latents @ w.T
    scale = noise / np.sqrt(LATENT) * np.linalg.norm(signal, axis=1, keepdims=True)
    return signal + rng.normal(size=signal.shape) * scale


def wiener(w, lam):
    return w.T @ np.linalg.inv(w @ w.T + lam * np.eye(w.shape[0]))


def one_request(rng):
    topic = unit_rows(rng, 1)[0]
    segments = unit_rows(rng, CANDIDATES // SEGMENT + 1)
    latents = 0.6 * segments[np.arange(CANDIDATES) // SEGMENT] + 0.8 * unit_rows(rng, CANDIDATES)
    m = int(rng.uniform(0.03, 0.08) * CANDIDATES)
    chosen = rng.choice(CANDIDATES, m + DISTRACTORS, replace=False)
    members, distractors = chosen[:m], chosen[m:]
    align = rng.uniform(0.6, 0.8)
    latents[members] = align * topic + np.sqrt(1 - align * align) * unit_rows(rng, m)
    latents[distractors] = 0.5 * topic + np.sqrt(0.75) * unit_rows(rng, DISTRACTORS)
    latents /= np.linalg.norm(latents, axis=1, keepdims=True)
    query = 0.6 * unit_rows(rng, 1)[0] + 0.8 * topic  # current segment + the set's topic (a = 0.8)
    query /= np.linalg.norm(query)
    is_member = np.zeros(CANDIDATES, bool)
    is_member[members] = True
    return latents, query, is_member


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--top", type=int, default=150, help="selection size (about what 15%% of 128K leaves)")
    ap.add_argument("--noise", type=float, default=0.6, help="trace gen --feature-noise")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    w_query, w_key = projections(rng)
    requests = [one_request(rng) for _ in range(args.trials)]
    keys = [observe(rng, w_key, lat, args.noise) for lat, _, _ in requests]
    print(f"fraction of a diffuse set in the top {args.top} of {CANDIDATES} candidates "
          f"({args.trials} requests, feature noise {args.noise}), best regularisation of the true projections")
    for pool in (1, 2, 4, 8, 16):
        best = 0.0
        for lam in (0.1, 0.3, 1.0):
            key_map, query_map = wiener(w_key, lam), wiener(w_query, lam)
            hits = total = 0
            for (lat, query, is_member), k in zip(requests, keys):
                q = observe(rng, w_query, np.repeat(query[None], pool, 0), args.noise).mean(0)
                scores = (k @ key_map.T) @ (query_map @ q)
                top = np.argsort(-scores)[:args.top]
                hits += is_member[top].sum()
                total += is_member.sum()
            best = max(best, hits / total)
        print(f"  query pooled over {pool:2d} step(s): {best:.3f}")


if __name__ == "__main__":
    main()
