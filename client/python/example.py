#!/usr/bin/python3
"""Lists the served models and runs one Attend on random data.

    PYTHONPATH=build/python /usr/bin/python3 client/python/example.py --target=localhost:50051
    ATTN_TOKEN=... example.py --target=HOST:PORT --tls_ca_file=ca.pem \
        [--tls_cert_file=client.pem --tls_key_file=client.key]
"""

import argparse
import sys

import numpy as np

from attention_client import (AttentionClient, AttentionError, add_connection_flags,
                              connection_options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_connection_flags(parser)  # --target, --tls_ca_file, ..., --token (or $ATTN_TOKEN)
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq_len", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()

    try:
        client = AttentionClient(timeout=10, **connection_options(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with client:
        try:
            for m in client.list_models():
                print(f"model {m.name}: embed_dim={m.embed_dim} num_heads={m.num_heads} "
                      f"num_kv_heads={m.num_kv_heads} dtype={m.dtype}")
            info = client.get_model(args.model)
            query = np.random.default_rng(0).standard_normal(
                (args.batch, args.seq_len, info.embed_dim), dtype=np.float32)
            output, _, timing = client.attend(query, model=args.model, dtype=args.dtype)
        except AttentionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(f"output shape: {list(output.shape)}")
    print(f"output[0, 0, :8]: {np.array2string(output[0, 0, :8], precision=5)}")
    print(f"timing: {timing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
