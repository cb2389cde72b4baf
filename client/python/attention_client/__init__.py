"""Python client of attention-server (attention.v1.AttentionService).

    from attention_client import AttentionClient
    with AttentionClient("localhost:50051") as client:
        output, probs, timing = client.attend(np.random.randn(1, 16, 512).astype(np.float32))
        with client.create_session(model="default") as session:   # KV-cache decoding
            session.prefill(prompt_rows)                            # [n, 512]
            out = session.step(next_row).output                     # [1, 512]

    # TLS, mutual TLS and a bearer token (default: $ATTN_TOKEN):
    AttentionClient("attention.example:443", tls_ca_file="ca.pem", tls_cert_file="client.pem",
                    tls_key_file="client.key")

Needs grpcio, protobuf and numpy (Debian: python3-grpcio python3-numpy), and
the stubs the build generates into <build>/python: put that directory on
PYTHONPATH along with client/python.
"""

try:
    from attention.v1 import attention_pb2 as _attention_pb2  # noqa: F401
    from grpc_health.v1 import health_pb2 as _health_pb2  # noqa: F401
except ImportError as _e:
    raise ImportError(
        "attention_client: cannot import the generated stubs (attention.v1.attention_pb2, "
        "grpc_health.v1.health_pb2): build the project (cmake --build build), then add "
        f"build/python to PYTHONPATH ({_e})") from _e

from .client import (TOKEN_ENV, AttendInput, AttendResult, AttentionClient, AttentionError,
                     ModelInfo, Session, SessionInfo, StepResult, StreamResult,
                     add_connection_flags, connection_options, new_session_id)
from .tensors import bfloat16_bits_to_float32, float32_to_bfloat16_bits

__all__ = [
    "AttendInput", "AttendResult", "AttentionClient", "AttentionError", "ModelInfo", "Session",
    "SessionInfo", "StepResult", "StreamResult", "TOKEN_ENV", "add_connection_flags",
    "connection_options", "new_session_id", "bfloat16_bits_to_float32", "float32_to_bfloat16_bits",
]
