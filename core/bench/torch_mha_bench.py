#!/usr/bin/python3
"""PyTorch nn.MultiheadAttention on the shapes of attention-core-bench.

Runs self-attention (batch_first=True, need_weights=False) under
torch.inference_mode() with torch.set_num_threads(--threads), in float32 and,
when the CPU build supports it, bfloat16, and reports the median time per
forward and GFLOP/s with the FLOP count attention-core-bench uses:

    8*B*L*E^2 (projections) + 4*B*L^2*E (attention; half of it when causal)

With --core-json FILE (the output of
`attention-core-bench --benchmark_format=json`) it prints, per shape and
dtype: our GFLOP/s, our % of the same-run GEMM peak, torch's GFLOP/s and the
ratio ours/torch; torch then runs only the shapes found in FILE.

The (1, 16384, 1024, 16) causal case is skipped unless --include-huge:
PyTorch 1.13's MultiheadAttention materialises the [B*H, L, L] scores
(16 GiB in float32 here).

Run it with Debian's interpreter, /usr/bin/python3 (python3-torch). Without
torch it prints "torch not available: skipping" (and, with --core-json, our
columns alone) and exits 0.
"""

import argparse
import json
import re
import statistics
import sys
import time

# (B, L, E, H, causal), in attention-core-bench's order.
BASE_SHAPES = [(1, 512, 768, 12), (8, 128, 768, 12), (32, 16, 256, 4), (1, 2048, 1024, 16)]
HUGE_SHAPE = (1, 16384, 1024, 16, True)
SHAPES = [s + (c,) for s in BASE_SHAPES for c in (False, True)] + [HUGE_SHAPE]
DTYPES = ("f32", "bf16")

NAME_RE = re.compile(r"^mha/(f32|bf16)/B(\d+)_L(\d+)_E(\d+)_H(\d+)(_causal)?(?:/.*)?$")


def shape_name(shape):
    b, l, e, h, causal = shape
    return f"B{b}_L{l}_E{e}_H{h}" + ("_causal" if causal else "")


def flops(shape):
    b, l, e, _, causal = shape
    attention = 4.0 * b * l * l * e
    return 8.0 * b * l * e * e + (attention / 2 if causal else attention)


def load_core_json(path):
    """{(dtype, shape): benchmark entry} and the gemm peaks {dtype: entry}."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    mha, peaks = {}, {}
    for bench in data.get("benchmarks", []):
        # With --benchmark_repetitions keep the median aggregate only.
        if bench.get("run_type") == "aggregate" and bench.get("aggregate_name") != "median":
            continue
        # Aggregates are named "<run_name>_median"; match on the run name.
        name = bench.get("run_name") or bench.get("name", "")
        m = NAME_RE.match(name)
        if m:
            dtype = m.group(1)
            shape = (int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)),
                     m.group(6) is not None)
            mha[(dtype, shape)] = bench
            continue
        p = re.match(r"^gemm/(f32|bf16)/peak(?:/.*)?$", name)
        if p:
            peaks[p.group(1)] = bench
    return data.get("context", {}), mha, peaks


def time_forward(torch, shape, dtype, min_time, min_reps, max_time):
    """Median seconds of one forward, after one warm-up call."""
    b, l, e, h, causal = shape
    torch_dtype = torch.float32 if dtype == "f32" else torch.bfloat16
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(e, h, batch_first=True).to(torch_dtype).eval()
    x = torch.rand(b, l, e).mul_(2).sub_(1).to(torch_dtype)
    kwargs = {"need_weights": False}
    if causal:
        # True = may not attend. is_causal (PyTorch >= 2.0) is only a hint
        # that comes with the mask.
        kwargs["attn_mask"] = torch.ones(l, l, dtype=torch.bool).triu_(1)
        if "is_causal" in _forward_params(torch):
            kwargs["is_causal"] = True
    times = []
    with torch.inference_mode():
        mha(x, x, x, **kwargs)  # warm-up
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            mha(x, x, x, **kwargs)
            times.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            if len(times) >= min_reps and elapsed >= min_time:
                break
            if elapsed >= max_time:
                break
    return statistics.median(times)


def torch_gemm_gflops(torch, dtype, n=2048, reps=3):
    """Best GFLOP/s of an n^3 torch.matmul: the ceiling of torch's own BLAS."""
    torch_dtype = torch.float32 if dtype == "f32" else torch.bfloat16
    a = torch.rand(n, n).to(torch_dtype)
    b = torch.rand(n, n).to(torch_dtype)
    best = 0.0
    with torch.inference_mode():
        a @ b  # warm-up
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def _forward_params(torch):
    import inspect
    return inspect.signature(torch.nn.MultiheadAttention.forward).parameters


def bf16_works(torch):
    try:
        mha = torch.nn.MultiheadAttention(16, 2, batch_first=True).to(torch.bfloat16).eval()
        x = torch.zeros(1, 4, 16, dtype=torch.bfloat16)
        with torch.inference_mode():
            mha(x, x, x, need_weights=False)
        return True
    except Exception as e:  # pylint: disable=broad-except
        print(f"torch bf16 not supported on this CPU build: {e}", file=sys.stderr)
        return False


def fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def print_core_table(context, mha, peaks, torch_results, threads):
    core_threads = context.get("omp_threads")
    if core_threads is not None and str(core_threads) != str(threads):
        print(f"warning: attention-core-bench ran with {core_threads} threads, torch with {threads}")
    for dtype in DTYPES:
        if dtype in peaks:
            p = peaks[dtype]
            if p.get("error_occurred"):
                print(f"gemm/{dtype}/peak: {p.get('error_message', 'error')}")
            else:
                print(f"gemm/{dtype}/peak: {p.get('gflops', 0):.1f} GFLOP/s ({p.get('label', '')})")
    header = (f"{'shape':<27} {'dtype':<5} {'ours GFLOP/s':>12} {'ours %peak':>10} "
              f"{'torch GFLOP/s':>13} {'ours/torch':>10}")
    print(header)
    print("-" * len(header))
    for dtype in DTYPES:
        for shape in SHAPES:
            bench = mha.get((dtype, shape))
            if bench is None:
                continue
            ours = pct = None
            note = ""
            if bench.get("error_occurred"):
                note = bench.get("error_message", "error")
            else:
                ours = bench.get("gflops")
                pct = bench.get("pct_peak")
            torch_gflops = torch_results.get((dtype, shape))
            if isinstance(torch_gflops, str):
                note = (note + "; " if note else "") + "torch: " + torch_gflops
                torch_gflops = None
            ratio = ours / torch_gflops if ours and torch_gflops else None
            line = (f"{shape_name(shape):<27} {dtype:<5} {fmt(ours, '12.1f'):>12} "
                    f"{fmt(pct, '9.1f') + ('%' if pct is not None else ''):>10} "
                    f"{fmt(torch_gflops, '13.1f'):>13} {fmt(ratio, '10.2f'):>10}")
            print(line + (f"  ({note})" if note else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--core-json", metavar="FILE",
                        help="attention-core-bench --benchmark_format=json output to compare with")
    parser.add_argument("--include-huge", action="store_true",
                        help="also run B1_L16384_E1024_H16_causal (needs ~20 GiB in PyTorch)")
    parser.add_argument("--dtypes", default="f32,bf16", help="comma-separated subset of f32,bf16")
    parser.add_argument("--min-time", type=float, default=0.5,
                        help="seconds of timed forwards per case, at least (default 0.5)")
    parser.add_argument("--min-reps", type=int, default=3,
                        help="timed forwards per case, at least (default 3)")
    parser.add_argument("--max-time", type=float, default=20.0,
                        help="stop timing a case after this many seconds (default 20)")
    args = parser.parse_args()
    if args.threads <= 0:
        parser.error("--threads: expected a positive integer")
    dtypes = [d for d in args.dtypes.split(",") if d]
    for d in dtypes:
        if d not in DTYPES:
            parser.error(f"--dtypes: expected f32 and/or bf16, got {d!r}")

    core = load_core_json(args.core_json) if args.core_json else None

    try:
        import torch  # pylint: disable=import-outside-toplevel
    except Exception:  # pylint: disable=broad-except
        print("torch not available: skipping")
        if core is not None:
            print_core_table(*core, torch_results={}, threads=args.threads)
        return 0

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    have_bf16 = "bf16" in dtypes and bf16_works(torch)

    results = {}
    for dtype in dtypes:
        if dtype == "bf16" and not have_bf16:
            continue
        if core is not None and not any(d == dtype for d, _ in core[1]):
            continue
        # Debian's torch multiplies through the system BLAS (OpenBLAS here),
        # not oneDNN: this line says how much of a ratio is the BLAS.
        print(f"torch matmul 2048x2048x2048 {dtype}: {torch_gemm_gflops(torch, dtype):.1f} GFLOP/s",
              flush=True)
    for dtype in dtypes:
        for shape in SHAPES:
            if core is not None and (dtype, shape) not in core[1]:
                continue
            key = (dtype, shape)
            skip = None
            if dtype == "bf16" and not have_bf16:
                skip = "bf16 unsupported"
            elif shape == HUGE_SHAPE and not args.include_huge:
                skip = "skipped (--include-huge runs it)"
            else:
                try:
                    seconds = time_forward(torch, shape, dtype, args.min_time, args.min_reps,
                                           args.max_time)
                except RuntimeError as e:  # e.g. out of memory
                    skip = f"failed: {e}".splitlines()[0][:80]
            if skip is not None:
                results[key] = skip
                if core is None:
                    print(f"torch {shape_name(shape):<27} {dtype:<5} {skip}", flush=True)
                continue
            gflops = flops(shape) / seconds / 1e9
            results[key] = gflops
            if core is None:
                print(f"torch {shape_name(shape):<27} {dtype:<5} {seconds * 1e3:10.3f} ms "
                      f"{gflops:8.1f} GFLOP/s", flush=True)
            else:
                print(f"  torch {dtype} {shape_name(shape)}: {gflops:.1f} GFLOP/s", flush=True)
    if core is not None:
        print()
        print_core_table(*core, torch_results=results, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
