"""Benchmark synthetic galaxy generation: images/s on one core.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 0 python tools/bench_synthetic.py [--out bench.json]

Pins itself to one core (thread env vars must be set before NumPy loads, hence the command above;
the script also sets them when they are absent and re-executes).
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import time

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
if any(os.environ.get(v) != "1" for v in _THREAD_VARS):
    os.environ.update({v: "1" for v in _THREAD_VARS})
    os.execv(sys.executable, [sys.executable, *sys.argv])
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_tl.data import synthetic  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="images per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--survey", default="decals")
    parser.add_argument("--output", default="uint8", choices=synthetic.OUTPUTS)
    parser.add_argument("--out", type=pathlib.Path, help="write the result as JSON here")
    args = parser.parse_args(argv)

    synthetic.generate(range(100), seed=0, image_size=args.image_size, survey=args.survey, output=args.output)
    wall, cpu = [], []
    for r in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        synthetic.generate(
            range(r * args.count, (r + 1) * args.count), seed=1, image_size=args.image_size,
            survey=args.survey, output=args.output,
        )  # fmt: skip
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    result = {
        "images_per_s": round(args.count / min(wall), 1),
        "images_per_s_median": round(args.count / float(np.median(wall)), 1),
        # Per CPU-second: what one uncontended core does even when other jobs share it.
        "images_per_cpu_s": round(args.count / min(cpu), 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "count": args.count,
        "repeats": args.repeats,
        "image_size": args.image_size,
        "survey": args.survey,
        "output": args.output,
        "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }
    print(f"{result['images_per_s']:.0f} images/s wall (best of {args.repeats}; median "
          f"{result['images_per_s_median']:.0f}), {result['images_per_cpu_s']:.0f} images per CPU-second, "
          f"at {args.image_size} px, output={args.output}, survey={args.survey}, 1 core, "
          f"load average {result['load_average_1min']}")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
