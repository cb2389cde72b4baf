#!/usr/bin/python3
"""Incremental decoding with a KV-cache Session: prefill, steps, and a check.

Prefills random tokens, runs one-token steps (every layer of an offload
model), prints each step's length and latency and the session's info, then
compares every output row with a one-shot causal attend of the whole
sequence (per layer) and exits 1 past the tolerance (1e-4 relative for
float32, 3e-2 when bfloat16 is involved).

    PYTHONPATH=build/python:client/python /usr/bin/python3 client/python/session_example.py \
        --target=localhost:50051 --model=default --prefill=16 --steps=8
"""

import argparse
import sys
import time

import numpy as np

from attention_client import (AttentionClient, AttentionError, add_connection_flags,
                              connection_options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_connection_flags(parser)  # --target, --tls_ca_file, ..., --token (or $ATTN_TOKEN)
    parser.add_argument("--model", default="default")
    parser.add_argument("--prefill", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    try:
        client = AttentionClient(timeout=30, **connection_options(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with client:
        try:
            with client.create_session(model=args.model, dtype=args.dtype) as session:
                m = session.model
                print(f"session {session.id}: model={m.name} layers={m.num_layers} "
                      f"projections={m.projections} kv_cache_dtype={m.kv_cache_dtype}")
                q_width = m.embed_dim if m.projections else m.num_heads * m.head_dim
                kv_width = m.num_kv_heads * m.head_dim
                sent = [{"q": [], "k": [], "v": [], "out": []} for _ in range(m.num_layers)]

                def append(n):
                    start = time.monotonic()
                    for layer, rows in enumerate(sent):
                        q = rng.standard_normal((n, q_width), dtype=np.float32)
                        if m.projections:
                            result = session.step(q)
                        else:
                            k = rng.standard_normal((n, kv_width), dtype=np.float32)
                            v = rng.standard_normal((n, kv_width), dtype=np.float32)
                            result = session.step(q, k, v, layer=layer)
                            rows["k"].append(k)
                            rows["v"].append(v)
                        rows["q"].append(q)
                        rows["out"].append(result.output)
                    return int((time.monotonic() - start) * 1e6)

                if args.prefill > 0:
                    us = append(args.prefill)
                    print(f"prefill: tokens={args.prefill} length={session.length} latency_us={us}")
                for i in range(1, args.steps + 1):
                    us = append(1)
                    print(f"step {i}: length={session.length} latency_us={us}")
                info = session.info()
                print(f"info: length={info.length} layer_lengths={info.layer_lengths} "
                      f"max_tokens={info.max_tokens} bytes={info.bytes}")

                bf16 = "bfloat16" in (m.dtype, m.kv_cache_dtype, args.dtype)
                tolerance = 3e-2 if bf16 else 1e-4
                failed = False
                for layer, rows in enumerate(sent):
                    q = np.concatenate(rows["q"])[None]
                    if m.projections:
                        want = client.attend(q, model=m.name, causal=True, dtype=args.dtype).output
                    else:
                        want = client.attend(q, model=m.name, key=np.concatenate(rows["k"])[None],
                                             value=np.concatenate(rows["v"])[None], causal=True,
                                             dtype=args.dtype).output
                    got = np.concatenate(rows["out"])
                    diff = float(np.max(np.abs(got - want[0])))
                    rel = diff / max(float(np.max(np.abs(want))), 1e-6)
                    ok = rel <= tolerance
                    failed |= not ok
                    print(f"check: layer={layer} rows={got.shape[0]} max_abs_diff={diff:.3g} "
                          f"relative={rel:.3g} {'ok' if ok else 'MISMATCH'}")
            print(f"closed: {session.id}")
        except AttentionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
