"""AttentionClient: attention.v1.AttentionService from Python, numpy in and out."""

import argparse
import dataclasses
import itertools
import os
import secrets
import time
from typing import Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Union

import grpc
import numpy as np

from attention.v1 import attention_pb2, attention_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import tensors

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_CLIENT_TIMEOUT = object()  # attend_stream's default: the client's timeout
_ENV_TOKEN = object()  # AttentionClient's default token: $ATTN_TOKEN

TOKEN_ENV = "ATTN_TOKEN"


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call's metadata (works on
    plaintext channels too, unlike call credentials)."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = list(details.metadata or ()) + [self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression




def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{option}: cannot read {path!r}: {e.strerror}") from None


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --target and the connection flags (--tls_ca_file, --tls_cert_file,
    --tls_key_file, --tls_server_name, --token) to an argparse parser; see
    connection_options()."""
    parser.add_argument("--target", default="localhost:50051", help="server HOST:PORT")
    parser.add_argument("--tls_ca_file", default="",
                        help="TLS: PEM CA certificates the server's must chain to (empty: the "
                             "system roots); any --tls_* flag turns TLS on")
    parser.add_argument("--tls_cert_file", default="",
                        help="mutual TLS: PEM client certificate (with --tls_key_file)")
    parser.add_argument("--tls_key_file", default="", help="mutual TLS: its PEM private key")
    parser.add_argument("--tls_server_name", default="",
                        help="TLS: the name checked against the server's certificate")
    parser.add_argument("--token", default="",
                        help=f"bearer token (empty: ${TOKEN_ENV}); a token on the command line "
                             f"is visible in ps: prefer ${TOKEN_ENV}")


def connection_options(args: argparse.Namespace) -> dict:
    """AttentionClient's keyword arguments from add_connection_flags' flags (an
    empty --token falls back to $ATTN_TOKEN)."""
    return {"target": args.target, "tls_ca_file": args.tls_ca_file or None,
            "tls_cert_file": args.tls_cert_file or None,
            "tls_key_file": args.tls_key_file or None,
            "tls_server_name": args.tls_server_name or None,
            "token": args.token or _ENV_TOKEN}


class AttentionError(Exception):
    """A failed call or streamed request.

    `code` is a grpc.StatusCode, `message` the server's message (it names the
    offending field), `request_id` the failed request's id on AttendStream.
    """

    def __init__(self, code: grpc.StatusCode, message: str, request_id: Optional[str] = None):
        self.code = code
        self.message = message
        self.request_id = request_id
        where = f" (request_id={request_id!r})" if request_id is not None else ""
        super().__init__(f"{code.name}: {message}{where}")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "AttentionError":
        return cls(error.code(), error.details() or "")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """One served model (attention.v1.ModelInfo); dtype is 'float32' or 'bfloat16'."""
    name: str
    embed_dim: int
    num_heads: int
    num_kv_heads: int
    kdim: int
    vdim: int
    head_dim: int
    dtype: str
    bias: bool
    max_seq_len: int
    max_request_tokens: int
    # Sessions: False for an offload model (q, k, v in; no projections). A
    # server older than these fields reports projections and num_layers 0:
    # its models all have projections.
    projections: bool = True
    num_layers: int = 1
    kv_cache_dtype: str = "unspecified"
    kv_cache_bytes: int = 0
    session_idle_timeout_ms: int = 0

    @classmethod
    def from_proto(cls, m: attention_pb2.ModelInfo) -> "ModelInfo":
        return cls(name=m.name, embed_dim=m.embed_dim, num_heads=m.num_heads,
                   num_kv_heads=m.num_kv_heads, kdim=m.kdim, vdim=m.vdim, head_dim=m.head_dim,
                   dtype=tensors.dtype_name(m.dtype), bias=m.bias, max_seq_len=m.max_seq_len,
                   max_request_tokens=m.max_request_tokens,
                   projections=m.projections or m.num_layers == 0,
                   num_layers=max(1, m.num_layers),
                   kv_cache_dtype=tensors.dtype_name(m.kv_cache_dtype),
                   kv_cache_bytes=m.kv_cache_bytes,
                   session_idle_timeout_ms=m.session_idle_timeout_ms)


@dataclasses.dataclass
class AttendInput:
    """One request for attend_stream; the fields are attend()'s arguments.

    An empty request_id is replaced by the request's position in the stream
    ("0", "1", ...).
    """
    query: np.ndarray
    model: str = "default"
    key: Optional[np.ndarray] = None
    value: Optional[np.ndarray] = None
    causal: bool = False
    return_probs: bool = False
    lengths: Optional[Sequence[int]] = None
    key_lengths: Optional[Sequence[int]] = None
    dtype: str = "float32"
    request_id: str = ""


class AttendResult(NamedTuple):
    """attend()'s result; unpacks as (output, probs, timing)."""
    output: np.ndarray
    probs: Optional[np.ndarray]
    timing: dict


@dataclasses.dataclass
class StreamResult:
    """One attend_stream response: a result, or `error` when that request failed."""
    request_id: str
    output: Optional[np.ndarray] = None
    probs: Optional[np.ndarray] = None
    timing: Optional[dict] = None
    error: Optional[AttentionError] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _timing(t: attention_pb2.Timing) -> dict:
    return {"queue_us": t.queue_us, "compute_us": t.compute_us, "batch_size": t.batch_size,
            "batch_tokens": t.batch_tokens}


def _build_request(x: AttendInput) -> attention_pb2.AttendRequest:
    request = attention_pb2.AttendRequest(
        model_name=x.model, request_id=x.request_id, query=tensors.encode(x.query, x.dtype),
        causal=x.causal, return_attention_probs=x.return_probs)
    if x.key is not None:
        request.key.CopyFrom(tensors.encode(x.key, x.dtype))
    if x.value is not None:
        request.value.CopyFrom(tensors.encode(x.value, x.dtype))
    if x.lengths is not None:
        request.query_lengths.extend(int(n) for n in x.lengths)
    if x.key_lengths is not None:
        request.key_lengths.extend(int(n) for n in x.key_lengths)
    return request


def _decode_response(response: attention_pb2.AttendResponse):
    try:
        output = tensors.decode(response.output, "output")
        probs = (tensors.decode(response.attention_probs, "attention_probs")
                 if response.HasField("attention_probs") else None)
    except ValueError as e:
        raise AttentionError(grpc.StatusCode.DATA_LOSS, str(e), response.request_id or None)
    return output, probs


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    """A session as the server sees it (attention.v1.SessionInfo)."""
    session_id: str
    model_name: str
    length: int
    layer_lengths: List[int]
    max_tokens: int
    idle_timeout_ms: int
    bytes: int
    last_used_unix_ms: int

    @classmethod
    def from_proto(cls, s: attention_pb2.SessionInfo) -> "SessionInfo":
        return cls(session_id=s.session_id, model_name=s.model_name, length=s.length,
                   layer_lengths=list(s.layer_lengths), max_tokens=s.max_tokens,
                   idle_timeout_ms=s.idle_timeout_ms, bytes=s.bytes,
                   last_used_unix_ms=s.last_used_unix_ms)


class StepResult(NamedTuple):
    """Session.prefill()/step()'s result: the new rows' output [n, width] (float32),
    the layer's length after the call, the server's timing and whether the call
    recovered a lost earlier attempt (see Session)."""
    output: np.ndarray
    session_length: int
    timing: dict
    recovered: bool = False


def new_session_id() -> str:
    """A client-chosen session id: 's-' and 128 random bits in hex."""
    return "s-" + secrets.token_hex(16)


# Codes after which the server may have appended a step's rows (the call ended
# without a verdict); every other code is a refusal before anything was appended.
_MAYBE_APPLIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                            grpc.StatusCode.INTERNAL})


class Session:
    """A KV-cache session (incremental decoding) on one server.

        with client.create_session(model="default") as session:
            session.prefill(prompt)        # [n, embed_dim] token rows
            out = session.step(token).output  # [1, embed_dim]

    Each call appends its rows and attends causally over the cache plus the new
    rows, so a prefill and one-token steps give the rows of a one-shot causal
    attend of the whole sequence. Offload models (ModelInfo.projections False)
    take projected q [n, num_heads*head_dim] and new k, v [n,
    num_kv_heads*head_dim] per layer: step(q, k, v, layer=l).

    The session tracks every layer's length and sends it as expected_length, so
    the server never appends a call twice. A call that failed with a transport
    error (UNAVAILABLE, DEADLINE_EXCEEDED, ...) may have been appended: retry
    it with the same rows; if the server then reports a length mismatch and
    the layer holds exactly the lost call's rows (and no other layer would be
    cut), the session truncates them and resends, so the retry returns the
    step's output and the cache holds it once. sync() adopts the server's
    lengths. Every call, create included, carries the id as x-session-id
    metadata for session-affine balancers; the client chooses the id.

    One call at a time (the server allows one request per session in flight).
    Errors raise AttentionError (server's code and message) or ValueError for
    rows of the wrong shape.
    """

    def __init__(self, client: "AttentionClient", model: ModelInfo, info: SessionInfo,
                 dtype: str, timeout: Optional[float]):
        self._client = client
        self.model = model
        self.id = info.session_id
        self.dtype = dtype
        self.timeout = timeout
        self._metadata = (("x-session-id", self.id),)
        self.lengths = [0] * model.num_layers
        self._uncertain: List[Optional[int]] = [None] * model.num_layers  # rows of a lost call
        self.closed = False
        self._adopt(info)

    @classmethod
    def create(cls, client: "AttentionClient", model: str = "default", max_tokens: int = 0,
               idle_timeout: float = 0.0, session_id: Optional[str] = None,
               dtype: str = "float32", timeout: Optional[float] = None) -> "Session":
        """CreateSession: max_tokens 0 and idle_timeout 0 (seconds) take the model's
        limits; session_id None picks a random one; dtype is the wire type of the
        rows; timeout (seconds) of each call, None: the client's."""
        info = client.get_model(model)
        sid = session_id if session_id is not None else new_session_id()
        request = attention_pb2.CreateSessionRequest(
            model_name=model, max_tokens=int(max_tokens),
            idle_timeout_ms=int(round(idle_timeout * 1000)), session_id=sid)
        created = client._call(client._stub.CreateSession, request,
                               metadata=(("x-session-id", sid),))
        return cls(client, info, SessionInfo.from_proto(created), dtype,
                   client.timeout if timeout is None else timeout)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        if not self.closed:
            try:
                self.close()
            except AttentionError:
                if exc[0] is None:
                    raise

    @property
    def length(self) -> int:
        """The smallest layer length this session expects."""
        return min(self.lengths)

    def prefill(self, q, k=None, v=None, layer: int = 0) -> StepResult:
        """Appends rows (see the class comment); same as step()."""
        return self.step(q, k, v, layer)

    def step(self, q, k=None, v=None, layer: int = 0) -> StepResult:
        """Appends q's rows (the tokens, for models with projections; with k and v
        for offload models) to `layer` and returns their output. A single row may
        be given as a 1-D array."""
        request, rows = self._request(q, k, v, layer)
        try:
            return self._finish(layer, self._attend(request))
        except AttentionError as e:
            if e.code in _MAYBE_APPLIED:
                self._uncertain[layer] = rows
                raise
            if e.code != grpc.StatusCode.FAILED_PRECONDITION or self._uncertain[layer] is None:
                raise
            return self._recover(layer, rows, request, e)

    def truncate(self, length: int) -> SessionInfo:
        """Every layer keeps its first min(length, its length) tokens."""
        info = SessionInfo.from_proto(self._client._call(
            self._client._stub.TruncateSession,
            attention_pb2.TruncateSessionRequest(session_id=self.id, length=int(length)),
            metadata=self._metadata))
        self._adopt(info)
        return info

    def info(self) -> SessionInfo:
        return SessionInfo.from_proto(self._client._call(
            self._client._stub.GetSession, attention_pb2.GetSessionRequest(session_id=self.id),
            metadata=self._metadata))

    def sync(self) -> SessionInfo:
        """info(), adopting the server's layer lengths."""
        info = self.info()
        self._adopt(info)
        return info

    def close(self) -> None:
        """CloseSession; NOT_FOUND (already gone) also marks it closed, and raises."""
        if self.closed:
            return
        try:
            self._client._call(self._client._stub.CloseSession,
                               attention_pb2.CloseSessionRequest(session_id=self.id),
                               metadata=self._metadata)
        except AttentionError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                self.closed = True
            raise
        self.closed = True

    def _adopt(self, info: SessionInfo) -> None:
        for layer in range(len(self.lengths)):
            self.lengths[layer] = (info.layer_lengths[layer] if layer < len(info.layer_lengths)
                                   else info.length)
            self._uncertain[layer] = None

    def _request(self, q, k, v, layer):
        if self.closed:
            raise AttentionError(grpc.StatusCode.FAILED_PRECONDITION, f"session {self.id}: closed")
        if not 0 <= layer < len(self.lengths):
            raise ValueError(f"layer: expected 0..{len(self.lengths) - 1}, got {layer}")
        m = self.model
        q_width = m.embed_dim if m.projections else m.num_heads * m.head_dim
        kv_width = m.num_kv_heads * m.head_dim

        def rows_of(x, name, width):
            a = np.asarray(x, dtype=np.float32)
            if a.ndim == 1:
                a = a[None, :]
            if a.ndim != 2 or a.shape[1] != width or a.shape[0] < 1:
                raise ValueError(f"{name}: expected [n, {width}] with n >= 1, got {list(a.shape)}")
            return a[None]  # [1, n, width]

        query = rows_of(q, "tokens" if m.projections else "q", q_width)
        request = attention_pb2.AttendRequest(
            model_name=m.name, session_id=self.id, expected_length=self.lengths[layer],
            layer=layer, causal=True, query=tensors.encode(query, self.dtype))
        if m.projections:
            if k is not None or v is not None:
                raise ValueError(f"model {m.name!r} has projections: k and v come from the tokens")
        else:
            if k is None or v is None:
                raise ValueError(f"model {m.name!r} is an offload model: pass q, k and v")
            key, value = rows_of(k, "k", kv_width), rows_of(v, "v", kv_width)
            if key.shape[1] != query.shape[1] or value.shape[1] != query.shape[1]:
                raise ValueError(f"k and v: expected {query.shape[1]} rows (as q)")
            request.key.CopyFrom(tensors.encode(key, self.dtype))
            request.value.CopyFrom(tensors.encode(value, self.dtype))
        return request, query.shape[1]

    def _attend(self, request):
        return self._client._call(self._client._stub.Attend, request, metadata=self._metadata,
                                  timeout=self.timeout)

    def _finish(self, layer, response, recovered=False) -> StepResult:
        self.lengths[layer] = response.session_length  # appended, whatever the output
        self._uncertain[layer] = None
        output, _ = _decode_response(response)
        return StepResult(output.reshape(-1, output.shape[-1]), response.session_length,
                          _timing(response.timing), recovered)

    def _recover(self, layer, rows, request, error) -> StepResult:
        info = self.info()
        lengths = [info.layer_lengths[l] if l < len(info.layer_lengths) else info.length
                   for l in range(len(self.lengths))]
        expected = self.lengths[layer]
        if lengths[layer] == expected:
            raise error  # the lost call did not land; this mismatch is something else
        if self._uncertain[layer] != rows or lengths[layer] != expected + rows:
            raise AttentionError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"session {self.id} layer {layer}: the server holds "
                                 f"{lengths[layer]} tokens, this session expected {expected}: "
                                 "changed elsewhere, or the retry differs from the lost call; "
                                 "sync() adopts the server's lengths")
        for other, n in enumerate(lengths):
            if other != layer and n > expected:
                raise AttentionError(grpc.StatusCode.FAILED_PRECONDITION,
                                     f"session {self.id} layer {layer}: the lost call was "
                                     f"appended, but truncating back to {expected} would also cut "
                                     f"layer {other} ({n} tokens); sync() adopts the server's "
                                     "lengths")
        self._client._call(self._client._stub.TruncateSession,
                           attention_pb2.TruncateSessionRequest(session_id=self.id,
                                                                length=expected),
                           metadata=self._metadata)
        return self._finish(layer, self._attend(request), recovered=True)


class AttentionClient:
    """A client of attention.v1.AttentionService (and grpc.health.v1.Health).

    target: "HOST:PORT"; timeout: deadline of each call in seconds (None: no
    deadline). Thread-safe: one client may serve many threads. Use it as a
    context manager, or call close().

    TLS: any of tls_ca_file (PEM CA certificates; None: the system roots),
    tls_cert_file and tls_key_file (both or neither: a client certificate for
    mutual TLS) or tls_server_name (the name checked against the server's
    certificate) makes the channel secure; otherwise it is plaintext.
    token: sent as `authorization: Bearer <token>` metadata on every call
    (sessions and health included, over TLS or plaintext); default: the
    ATTN_TOKEN environment variable; None or "": no token. The token is never
    put in an error or a repr. ValueError names an option it cannot use.
    """

    def __init__(self, target: str = "localhost:50051", timeout: Optional[float] = 30.0,
                 max_message_bytes: int = 256 << 20, options: Sequence[tuple] = (),
                 tls_ca_file: Optional[str] = None, tls_cert_file: Optional[str] = None,
                 tls_key_file: Optional[str] = None, tls_server_name: Optional[str] = None,
                 token=_ENV_TOKEN):
        self.target = target
        self.timeout = timeout
        if token is _ENV_TOKEN:
            token = os.environ.get(TOKEN_ENV, "")
        if token and not all(0x20 < ord(c) < 0x7f for c in token):
            raise ValueError("token: expected the bare token (printable ASCII, no spaces; the "
                             "client adds 'Bearer ')")
        if bool(tls_cert_file) != bool(tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file: both or neither")
        channel_options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", -1),  # attention probs can be large
        ]
        if tls_ca_file or tls_cert_file or tls_server_name:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca_file, "tls_ca_file") if tls_ca_file else None,
                private_key=_read(tls_key_file, "tls_key_file") if tls_key_file else None,
                certificate_chain=_read(tls_cert_file, "tls_cert_file") if tls_cert_file else None)
            if tls_server_name:
                channel_options.append(("grpc.ssl_target_name_override", tls_server_name))
            self._channel = grpc.secure_channel(target, credentials,
                                                options=[*channel_options, *options])
        else:
            self._channel = grpc.insecure_channel(target, options=[*channel_options, *options])
        self._raw_channel = self._channel
        if token:
            self._channel = grpc.intercept_channel(self._channel, _TokenInterceptor(token))
        self._stub = attention_pb2_grpc.AttentionServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> "AttentionClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, metadata=(), timeout=_CLIENT_TIMEOUT):
        """One unary call with the client's timeout; RpcError becomes AttentionError."""
        try:
            return method(request, metadata=metadata,
                          timeout=self.timeout if timeout is _CLIENT_TIMEOUT else timeout)
        except grpc.RpcError as e:
            raise AttentionError.from_rpc_error(e) from None

    def create_session(self, model: str = "default", max_tokens: int = 0,
                       idle_timeout: float = 0.0, session_id: Optional[str] = None,
                       dtype: str = "float32") -> "Session":
        """A new KV-cache Session of `model` (see Session.create); a context manager
        that closes it."""
        return Session.create(self, model=model, max_tokens=max_tokens,
                              idle_timeout=idle_timeout, session_id=session_id, dtype=dtype)

    def list_models(self) -> List[ModelInfo]:
        try:
            response = self._stub.ListModels(attention_pb2.ListModelsRequest(),
                                             timeout=self.timeout)
        except grpc.RpcError as e:
            raise AttentionError.from_rpc_error(e) from None
        return [ModelInfo.from_proto(m) for m in response.models]

    def get_model(self, name: str) -> ModelInfo:
        """The model `name`; AttentionError NOT_FOUND (listing the models) if it is not served."""
        try:
            info = self._stub.GetModel(attention_pb2.GetModelRequest(name=name),
                                       timeout=self.timeout)
        except grpc.RpcError as e:
            raise AttentionError.from_rpc_error(e) from None
        return ModelInfo.from_proto(info)

    def health(self, service: str = "") -> str:
        """grpc.health.v1 status of `service` ("" = the whole server, or a model name):
        'SERVING', 'NOT_SERVING', or 'SERVICE_UNKNOWN' for a service the server does not know.
        """
        try:
            response = self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                          timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise AttentionError.from_rpc_error(e) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def attend(self, query, model: str = "default", key=None, value=None, causal: bool = False,
               return_probs: bool = False, lengths: Optional[Sequence[int]] = None,
               key_lengths: Optional[Sequence[int]] = None, dtype: str = "float32",
               request_id: str = "") -> AttendResult:
        """Runs the model on one request.

        query: [batch, seq, embed_dim] or [seq, embed_dim]; key and value (both
        or neither) make it cross-attention. dtype is the wire type of the
        inputs and the output: 'float32', 'bfloat16' (rounded to nearest even
        here) or 'float16'. Returns (output, probs, timing): output float32 of
        the query's shape, probs float32 [batch, heads, seq_q, seq_k] or None,
        timing {'queue_us', 'compute_us', 'batch_size', 'batch_tokens',
        'round_trip_us'}. Raises AttentionError with the server's code and
        message, ValueError/TypeError for a dtype or array it cannot encode.
        """
        request = _build_request(AttendInput(
            query=query, model=model, key=key, value=value, causal=causal,
            return_probs=return_probs, lengths=lengths, key_lengths=key_lengths, dtype=dtype,
            request_id=request_id))
        start = time.monotonic()
        try:
            response = self._stub.Attend(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise AttentionError.from_rpc_error(e) from None
        round_trip_us = int((time.monotonic() - start) * 1e6)
        output, probs = _decode_response(response)
        timing = _timing(response.timing)
        timing["round_trip_us"] = round_trip_us
        return AttendResult(output, probs, timing)

    def attend_stream(self, requests: Iterable[Union[AttendInput, Mapping]],
                      raise_on_error: bool = False,
                      timeout=_CLIENT_TIMEOUT) -> Iterator[StreamResult]:
        """Sends `requests` on one AttendStream call and yields a StreamResult per response.

        Each request is an AttendInput or a dict of its fields; requests are
        encoded and sent as the iterable yields them (it may be a generator).
        Responses come in completion order, not request order: match them by
        request_id. A request that fails gives a StreamResult whose `error` is
        an AttentionError (code and message from the response's status); the
        other requests go on. With raise_on_error, the first failure raises
        instead (and cancels the stream). A failure of the whole call, or a
        request that cannot be encoded, raises AttentionError / ValueError.
        timeout: deadline of the whole stream in seconds (None: none); default
        the client's.
        """
        encode_error = []  # an exception raised while encoding, for the consumer side
        counter = itertools.count()

        def outgoing():
            try:
                for item in requests:
                    index = next(counter)
                    x = item if isinstance(item, AttendInput) else AttendInput(**item)
                    request = _build_request(x)
                    if not request.request_id:
                        request.request_id = str(index)
                    yield request
            except Exception as e:  # re-raised to the caller by the loop below
                encode_error.append(e)

        call = self._stub.AttendStream(outgoing(),
                                       timeout=self.timeout if timeout is _CLIENT_TIMEOUT else timeout)
        try:
            for response in call:
                if encode_error:
                    raise encode_error[0]
                rid = response.request_id
                if response.HasField("status") and response.status.code != 0:
                    code = _CODES.get(response.status.code, grpc.StatusCode.UNKNOWN)
                    error = AttentionError(code, response.status.message, rid)
                    if raise_on_error:
                        raise error
                    yield StreamResult(request_id=rid, error=error)
                    continue
                output, probs = _decode_response(response)
                yield StreamResult(request_id=rid, output=output, probs=probs,
                                   timing=_timing(response.timing))
        except grpc.RpcError as e:
            if encode_error:
                raise encode_error[0] from None
            raise AttentionError.from_rpc_error(e) from None
        finally:
            call.cancel()  # no-op once the call has finished
        if encode_error:
            raise encode_error[0]
