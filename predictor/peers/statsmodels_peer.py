"""Forecasting peers for `predictor backtest --peers statsmodels`.

Reads one JSON request on stdin:

    {"values": [y0, y1, null, ...], "origins": [t, ...], "horizon": H,
     "seasons": [m1, m2, ...], "window": W, "workers": N}

and writes one JSON answer on stdout:

    {"models": [{"model": "...", "forecasts": [[ŷ(t+1) .. ŷ(t+H)] per origin]}], "errors": n}

At each origin t every model is refitted on the last W values up to and including y_t
(missing values interpolated), then forecasts H steps — the same origins and horizons the
Rust models are scored on.

* statsmodels Holt-Winters: `ExponentialSmoothing`, additive damped trend, additive
  season m1, parameters by statsmodels' optimiser (`fit()`), refitted at every origin.
* statsmodels MSTL: `MSTL` with every season, the seasonally adjusted series forecast by
  `ExponentialSmoothing` (additive damped trend), each seasonal component continued by its
  last cycle — the `stlf`/`mstl` recipe.

A fit that fails falls back to the seasonal naive of m1 for that origin and is counted in
"errors" (so a comparison never silently loses origins).
"""

import json
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from statsmodels.tsa.holtwinters import ExponentialSmoothing
from statsmodels.tsa.seasonal import MSTL

MODELS = ["statsmodels Holt-Winters", "statsmodels MSTL"]


def interpolate(y):
    y = np.asarray(y, dtype=float)
    bad = np.isnan(y)
    if bad.all():
        return np.zeros_like(y)
    if bad.any():
        idx = np.arange(len(y))
        y[bad] = np.interp(idx[bad], idx[~bad], y[~bad])
    return y


def snaive(y, m, h):
    last = y[-m:] if len(y) >= m else np.resize(y, m)
    return np.array([last[i % m] for i in range(h)])


def holt_winters(y, m, h):
    fit = ExponentialSmoothing(
        y,
        trend="add",
        damped_trend=True,
        seasonal="add",
        seasonal_periods=m,
        initialization_method="estimated",
    ).fit()
    return np.asarray(fit.forecast(h))


def mstl(y, seasons, h):
    usable = [m for m in seasons if len(y) >= 2 * m]
    res = MSTL(y, periods=usable).fit()
    seasonal = np.asarray(res.seasonal).reshape(len(y), -1)
    adjusted = y - seasonal.sum(axis=1)
    trend = ExponentialSmoothing(
        adjusted, trend="add", damped_trend=True, initialization_method="estimated"
    ).fit()
    out = np.asarray(trend.forecast(h))
    for j, m in enumerate(usable):
        out = out + snaive(seasonal[:, j], m, h)
    return out


def one_origin(args):
    y, seasons, h = args
    m = seasons[0]
    out, errors = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model in (lambda: holt_winters(y, m, h), lambda: mstl(y, seasons, h)):
            try:
                fc = model()
                if not np.all(np.isfinite(fc)):
                    raise ValueError("non-finite forecast")
            except Exception:  # noqa: BLE001 — counted, and replaced by seasonal naive
                fc, errors = snaive(y, m, h), errors + 1
            out.append([float(v) for v in fc])
    return out, errors


def main():
    req = json.load(sys.stdin)
    values = np.array([np.nan if v is None else v for v in req["values"]], dtype=float)
    h, seasons, window = int(req["horizon"]), [int(s) for s in req["seasons"]], int(req["window"])
    jobs = []
    for t in req["origins"]:
        start = max(0, t + 1 - window)
        jobs.append((interpolate(values[start : t + 1]), seasons, h))
    forecasts = [[] for _ in MODELS]
    errors = 0
    with ProcessPoolExecutor(max_workers=max(1, int(req.get("workers", 2)))) as pool:
        for done, (per_model, e) in enumerate(pool.map(one_origin, jobs, chunksize=4), 1):
            errors += e
            for i, fc in enumerate(per_model):
                forecasts[i].append(fc)
            if done % 50 == 0:
                print(f"[peers] {done}/{len(jobs)} origins", file=sys.stderr, flush=True)
    json.dump(
        {
            "models": [{"model": name, "forecasts": fc} for name, fc in zip(MODELS, forecasts)],
            "errors": errors,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
