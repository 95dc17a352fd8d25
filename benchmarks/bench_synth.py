"""Time ``alzaudit data synth`` at its target size: 100 subjects x 8 slices should take under 60 s on 2 cores.

A plain script (``.venv/bin/python benchmarks/bench_synth.py [--subjects N] [--workers W]``); it prints the
wall time of the whole generation (template loading included) and of one worker against two.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _time(subjects: int, slices: int, workers: int) -> float:
    from model.synth import synthesize_cohort

    with tempfile.TemporaryDirectory(prefix="alzaudit-bench-synth-") as tmp:
        start = time.perf_counter()
        manifest = synthesize_cohort(Path(tmp) / "cohort", subjects=subjects, slices_per_subject=slices,
                                     progress=False, workers=workers)
        elapsed = time.perf_counter() - start
        assert len(manifest) == subjects * slices
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compare-serial", action="store_true", help="also time one worker")
    args = parser.parse_args()
    start = time.perf_counter()
    from model.synth_template import load_template

    load_template()
    loaded = time.perf_counter() - start
    print(f"template load (nilearn MNI152 + derived fields, once per run): {loaded:.1f} s")
    parallel = _time(args.subjects, args.slices, args.workers)
    n = args.subjects * args.slices
    verdict = "OK" if loaded + parallel < 60 else "SLOW"
    print(f"synth {args.subjects} subjects x {args.slices} slices = {n} images, {args.workers} worker(s): "
          f"{parallel:.1f} s ({1000 * parallel / n:.1f} ms/image), {loaded + parallel:.1f} s with the template load "
          f"[{verdict}: target < 60 s]")
    if args.compare_serial and args.workers != 1:
        serial = _time(args.subjects, args.slices, 1)
        print(f"1 worker: {serial:.1f} s; speed-up x{serial / parallel:.2f}")


if __name__ == "__main__":
    main()
