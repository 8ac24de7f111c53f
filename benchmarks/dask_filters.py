"""The Leung-Malik bank over an image larger than a chunk: in memory against fastconv.dask
on a dask.distributed LocalCluster of 1 and 2 worker processes, plus Dask's overhead
per chunk.

    python benchmarks/dask_filters.py [--size 640] [--chunk 160] [--lm-size 49] [--json FILE]

Each run computes the 48 full-size responses into this process (the Dask runs gather
them from the workers). Every configuration is warmed up first (numba's compiled
kernels load in each worker process) and then timed --repeat times, the fastest run
counting; the image and the bank are the same. Workers have one Dask thread each, and
numba's threads are shared out between them (NUMBA_NUM_THREADS = cores // workers), so
each configuration uses the whole machine. Overhead per chunk, two ways:
- scheduling: (1-worker time - the same blocks' in-memory calls, one after another in
  this process) / chunks: what Dask adds to each block (tasks, halo slices, transfers,
  concatenation), with the block sizes of the real run;
- tiny blocks: a 3x3 bank over many 32x32 chunks, where the filtering itself is
  negligible: time / chunks.
Ratios only mean something from one run on one machine; the script prints the CPU.
"""
import numpy as np  # noqa: F401  (NumPy before fastconv, as the benchmarks do)

import argparse
import json
import math
import os
import platform
import subprocess
import time


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--chunk", type=int, default=160)
    p.add_argument("--lm-size", type=int, default=49)
    p.add_argument("--repeat", type=int, default=2, help="timed runs of each; the fastest counts")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import dask.array as da
    import distributed

    import fastconv.dask as fcd
    from fastconv import filters

    cores = os.cpu_count()
    rng = np.random.default_rng(0)
    image = rng.random((args.size, args.size)).astype(np.float32)
    bank = filters.leung_malik(args.lm_size)[:, None].astype(np.float32)
    lazy = da.from_array(image, chunks=args.chunk)
    chunks = lazy.npartitions
    results = {"cpu": cpu_model(), "cores": cores, "size": args.size, "chunk": args.chunk,
               "lm_size": args.lm_size, "chunks": chunks}
    print(f"CPU: {results['cpu']} ({cores} cores); image {args.size}x{args.size} float32, "
          f"{chunks} chunks of up to {args.chunk}x{args.chunk}, LM bank 48 x "
          f"{args.lm_size}x{args.lm_size}")

    # in memory: one fastconv.conv2d call
    filters.apply_bank(image[:64, :64], bank)
    results["in_memory_s"] = math.inf
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        expected = filters.apply_bank(image, bank)
        results["in_memory_s"] = min(results["in_memory_s"], time.perf_counter() - t0)
    print(f"in memory:            {results['in_memory_s']:7.2f} s")

    # the same blocks, one in-memory call each, in this process
    results["blocks_in_process_s"], calls = _blocks_in_process(image, bank, lazy.chunks)
    print(f"its blocks in process:{results['blocks_in_process_s']:7.2f} s "
          f"({calls} in-memory calls on the exact windows)")

    tiny_image = rng.random((512, 512)).astype(np.float32)
    tiny_bank = filters.stack([filters.sobel_x()])
    for workers in (1, 2):
        env = {"NUMBA_NUM_THREADS": str(max(1, cores // workers))}
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=50,
                                      env=env) as cluster, distributed.Client(cluster) as client:
            warm = fcd.leung_malik(da.from_array(image[:96, :96], chunks=48), args.lm_size)
            client.compute(warm).result()
            seconds = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                got = client.compute(fcd.leung_malik(lazy, args.lm_size)).result()
                seconds.append(time.perf_counter() - t0)
            print(f"  (runs: {', '.join(f'{t:.2f}' for t in seconds)} s)")
            seconds = min(seconds)
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, rtol=1e-4,
                                       atol=1e-4 * float(np.abs(expected).max()))
            results[f"dask_{workers}_workers_s"] = seconds
            print(f"dask, {workers} worker{'s' if workers > 1 else ' '}:      {seconds:7.2f} s  "
                  f"(in memory / dask = {results['in_memory_s'] / seconds:.2f})")
            if workers == 1:
                tiny = fcd.apply_bank(da.from_array(tiny_image, chunks=32), tiny_bank)
                client.compute(tiny).result()
                tiny_s = math.inf
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    client.compute(tiny).result()
                    tiny_s = min(tiny_s, time.perf_counter() - t0)
                results["tiny_chunks"] = tiny.npartitions
                results["overhead_per_chunk_tiny_ms"] = 1e3 * tiny_s / tiny.npartitions
    per_chunk = (results["dask_1_workers_s"] - results["blocks_in_process_s"]) / chunks
    results["overhead_per_chunk_ms"] = 1e3 * per_chunk
    print(f"overhead per chunk:   {results['overhead_per_chunk_ms']:7.1f} ms  "
          f"((1 worker - blocks in process) / {chunks} chunks)")
    print(f"overhead per chunk:   {results['overhead_per_chunk_tiny_ms']:7.1f} ms  "
          f"({results['tiny_chunks']} 32x32 chunks, a 3x3 filter, 1 worker)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def _blocks_in_process(image, bank, chunks):
    """Time the in-memory calls of fastconv.dask's blocks on their exact windows
    ('same' padding, stride 1), one after another."""
    import fastconv as fc
    import fastconv.dask as fcd
    plans = []
    for axis in (0, 1):
        k = bank.shape[2 + axis]
        plans.append(fcd._axis_plan(chunks[axis], image.shape[axis], image.shape[axis], k,
                                    1, 1, (k - 1) // 2, k - 1 - (k - 1) // 2,
                                    zero_padding=True))
    windows = [(image[None, None, hp[1]:hp[2], wp[1]:wp[2]].copy(), fcd._padding(hp, wp))
               for hp in plans[0] for wp in plans[1]]
    t0 = time.perf_counter()
    for window, padding in windows:
        fc.conv2d(window, bank, padding=padding)
    return time.perf_counter() - t0, len(windows)


if __name__ == "__main__":
    main()
