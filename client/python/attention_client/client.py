"""AttentionClient: attention.v1.AttentionService from Python, numpy in and out."""

import dataclasses
import itertools
import time
from typing import Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Union

import grpc
import numpy as np

from attention.v1 import attention_pb2, attention_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import tensors

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_CLIENT_TIMEOUT = object()  # attend_stream's default: the client's timeout


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

    @classmethod
    def from_proto(cls, m: attention_pb2.ModelInfo) -> "ModelInfo":
        return cls(name=m.name, embed_dim=m.embed_dim, num_heads=m.num_heads,
                   num_kv_heads=m.num_kv_heads, kdim=m.kdim, vdim=m.vdim, head_dim=m.head_dim,
                   dtype=tensors.dtype_name(m.dtype), bias=m.bias, max_seq_len=m.max_seq_len,
                   max_request_tokens=m.max_request_tokens)


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


class AttentionClient:
    """A client of attention.v1.AttentionService (and grpc.health.v1.Health).

    target: "HOST:PORT"; timeout: deadline of each call in seconds (None: no
    deadline). Thread-safe: one client may serve many threads. Use it as a
    context manager, or call close().
    """

    def __init__(self, target: str = "localhost:50051", timeout: Optional[float] = 30.0,
                 max_message_bytes: int = 256 << 20, options: Sequence[tuple] = ()):
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", -1),  # attention probs can be large
            *options,
        ])
        self._stub = attention_pb2_grpc.AttentionServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "AttentionClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
