"""A trading engine's model loop: load one symbol's model from model-manager, check that its
dimension→factor mapping is the one this engine computes, keep it in an `xgboost.Booster`, and follow
changes by long poll. Runnable, and short enough to read as documentation.

    pip install httpx xgboost numpy    # httpx is this example's own dependency
    export MODEL_MANAGER_KEY=...       # a read key, or a token from POST /api/auth/login
    python examples/engine.py http://127.0.0.1:6300 demo SOLUSDT --factors-file my_factors.txt

It prints one line per model it loads (and, with --row, a prediction on that input row).

How it follows changes: every request sends the ETag of the model it holds (`If-None-Match`) and asks
the server to hold the request until that changes (`Prefer: wait=30`). A 304 means "still current":
ask again at once. A 200 brings the new model. A server (or proxy) that does not hold requests
answers a 304 without `Preference-Applied`; then the engine polls every --interval seconds instead.
On errors it keeps the model it has and retries with a growing delay.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import httpx
import numpy as np
import xgboost as xgb


class ModelFollower:
    def __init__(self, client: httpx.Client, path: str, factors: list[str], row: list[float] | None):
        self.client, self.path, self.factors, self.row = client, path, factors, row
        self.etag: str | None = None        # the ETag of the last payload seen (loaded or refused)
        self.booster: xgb.Booster | None = None

    def fetch(self, wait: int | None) -> httpx.Response:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
            if wait:
                headers["Prefer"] = f"wait={wait}"
        return self.client.get(self.path, headers=headers)

    def load(self, response: httpx.Response) -> None:
        """Adopt a payload, unless its mapping differs from ours: then keep the model we have."""
        self.etag = response.headers.get("etag")
        payload = response.json()["payload"]
        meta = payload["metadata"]
        mapping = [d["factor_name"] for d in sorted(payload["dim_factors"], key=lambda d: d["dim"])]
        if mapping != self.factors:
            differ = next((i for i, (a, b) in enumerate(zip(mapping, self.factors)) if a != b), min(len(mapping), len(self.factors)))
            print(f"refused version={meta.get('version')} etag={self.etag}: its factors differ from ours at dim {differ} "
                  f"({len(mapping)} factors vs {len(self.factors)}); keeping the current model", flush=True)
            return
        booster = xgb.Booster()
        booster.load_model(bytearray(payload["model_json"].encode()))
        if booster.num_features() != len(self.factors):
            print(f"refused version={meta.get('version')}: the model takes {booster.num_features()} features", flush=True)
            return
        self.booster = booster
        line = f"loaded {meta['symbol']} version={meta.get('version')} etag={self.etag} dim={meta['dim']}"
        if self.row is not None:
            line += f" prediction={self.predict(self.row):.9g}"
        print(line, flush=True)

    def predict(self, row: list[float]) -> float:
        matrix = xgb.DMatrix(np.array([row], dtype=np.float32), feature_names=self.booster.feature_names)
        return float(self.booster.predict(matrix)[0])


def run(follower: ModelFollower, wait: int, interval: float) -> None:
    long_poll, delay = wait > 0, 1.0
    while True:
        try:
            response = follower.fetch(wait if long_poll else None)
        except httpx.HTTPError as exc:
            print(f"request failed ({exc.__class__.__name__}: {exc}); retrying in {delay:.0f} s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 60)
            continue
        if response.status_code in (401, 403) and follower.booster is None:
            sys.exit(f"the server refused the key ({response.status_code}): {response.text}")
        if response.status_code == 200:
            follower.load(response)
        elif response.status_code != 304:
            print(f"HTTP {response.status_code}: {response.text}; retrying in {delay:.0f} s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 60)
            continue
        delay = 1.0
        # a 304 to a long poll that was not held: this server (or a proxy) does not wait; poll instead
        if long_poll and response.status_code == 304 and "preference-applied" not in response.headers:
            print(f"the server does not hold requests: polling every {interval:g} s", file=sys.stderr, flush=True)
            long_poll = False
        if not long_poll:
            time.sleep(interval)


def main() -> None:
    parser = argparse.ArgumentParser(description="Follow one symbol's model on a model-manager server.")
    parser.add_argument("url", help="e.g. http://127.0.0.1:6300")
    parser.add_argument("model", help="registered model name")
    parser.add_argument("symbol", help="e.g. SOLUSDT")
    factors = parser.add_mutually_exclusive_group(required=True)
    factors.add_argument("--factors", help="the factors this engine computes, in its order, comma-separated")
    factors.add_argument("--factors-file", help="the same, one per line")
    parser.add_argument("--key", default=os.environ.get("MODEL_MANAGER_KEY"), help="API key or token [env MODEL_MANAGER_KEY]")
    parser.add_argument("--wait", type=int, default=30, help="long-poll seconds (0: plain polling)")
    parser.add_argument("--interval", type=float, default=5.0, help="polling period when the server does not hold requests")
    parser.add_argument("--row", help="comma-separated feature values to predict on after each load")
    args = parser.parse_args()
    if not args.key:
        parser.error("give --key or set MODEL_MANAGER_KEY")
    names = args.factors.split(",") if args.factors else open(args.factors_file, encoding="utf-8").read().split()
    row = [float(v) for v in args.row.split(",")] if args.row else None
    client = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.key}"},
                          timeout=httpx.Timeout(10, read=args.wait + 15))
    path = f"/api/models/{args.model}/model/{args.symbol}"
    try:
        run(ModelFollower(client, path, [n.strip() for n in names if n.strip()], row), args.wait, args.interval)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
