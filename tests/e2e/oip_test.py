"""The Open Inference Protocol (inference.GRPCInferenceService) end to end,
from Python stubs generated at build time from proto/inference: every RPC;
ModelInfer against attention.v1 Attend on the same inputs (raw and typed
contents, FP32 and BF16, ragged lengths, causal, probabilities, the
`outputs` subset); ModelStreamInfer; and the error paths, each with its code
and a message naming the field.

Run by oip_test.sh with ATTN_TARGET set to a server started on the model
repository that script writes (models f32, bf16 and offload; their shapes
are the constants below). Run under /usr/bin/python3.

Both protocols share one codec, one batcher and one engine, and a lone
request computes alone (the executor is free, max_queue_delay 0), so a
sequential ModelInfer and Attend of the same inputs are bit-identical: the
comparisons below are exact, not within a tolerance.

`oip_test.py --latency` instead prints the median latency of ModelInfer and
Attend for one small request (informal; no assertion).
"""

import os
import statistics
import sys
import time
import unittest

import grpc
import numpy as np

from attention.v1 import attention_pb2, attention_pb2_grpc
from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from inference import model_config_pb2

TARGET = os.environ.get("ATTN_TARGET", "")
TIMEOUT = 30

# The repository oip_test.sh writes: f32, bf16 and cross have projections
# (cross has kdim and vdim of its own, so it does cross-attention only).
F32, BF16, CROSS, OFFLOAD = "f32", "bf16", "cross", "offload"
E, HEADS, KDIM, VDIM = 32, 4, 24, 40
OFF_HEADS, OFF_KV_HEADS, OFF_HEAD_DIM = 4, 2, 8  # offload: grouped-query
OFF_E, OFF_KV = OFF_HEADS * OFF_HEAD_DIM, OFF_KV_HEADS * OFF_HEAD_DIM
MODELS = (F32, BF16, CROSS, OFFLOAD)


def to_bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest, ties to even (finite x)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits += 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).astype(np.uint16)


def from_bf16_bits(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


# An input as a test writes it: name, datatype, values (float32 for FP32,
# bfloat16 bits as uint16 for BF16, int32 for INT32).
NUMPY_OF = {"FP32": "<f4", "BF16": "<u2", "INT32": "<i4"}


def infer_request(model, inputs, raw, params=None, outputs=(), request_id=""):
    req = oip.ModelInferRequest(model_name=model, id=request_id)
    for name, datatype, values in inputs:
        t = req.inputs.add(name=name, datatype=datatype, shape=list(values.shape))
        if raw:
            req.raw_input_contents.append(values.astype(NUMPY_OF[datatype]).tobytes())
        elif datatype == "FP32":
            t.contents.fp32_contents.extend(values.ravel().tolist())
        elif datatype == "INT32":
            t.contents.int_contents.extend(values.ravel().tolist())
        else:
            raise ValueError(f"{datatype} has no typed contents")
    for key, value in (params or {}).items():
        p = req.parameters[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        else:
            p.string_param = value
    for name in outputs:
        req.outputs.add(name=name)
    return req


def output_of(response, name):
    """(datatype, shape, values) of output `name`: float32 for FP32, bf16 bits
    for BF16; None when absent."""
    for i, o in enumerate(response.outputs):
        if o.name != name:
            continue
        if response.raw_output_contents:
            values = np.frombuffer(response.raw_output_contents[i], NUMPY_OF[o.datatype])
        else:
            values = np.array(o.contents.fp32_contents, np.float32)
        return o.datatype, list(o.shape), values.reshape(list(o.shape))
    return None


def wire_tensor(datatype, values):
    dtype = attention_pb2.BFLOAT16 if datatype == "BF16" else attention_pb2.FLOAT32
    return attention_pb2.Tensor(dtype=dtype, shape=list(values.shape),
                                raw_data=values.astype(NUMPY_OF[datatype]).tobytes())


def attend_request(model, inputs, causal=False, probs=False, layout=None):
    """The attention.v1 request meaning the same as `inputs` (as above)."""
    req = attention_pb2.AttendRequest(model_name=model, causal=causal,
                                      return_attention_probs=probs)
    if layout is not None:
        req.attention_probs_layout = attention_pb2.ProbsLayout.Value(layout)
    for name, datatype, values in inputs:
        if name in ("query", "key", "value"):
            getattr(req, name).CopyFrom(wire_tensor(datatype, values))
        else:
            getattr(req, name).extend(values.tolist())
    return req


def wire_values(t):
    """An attention.v1 tensor's values as float32, or bf16 bits."""
    if t.dtype == attention_pb2.BFLOAT16:
        return np.frombuffer(t.raw_data, "<u2").reshape(list(t.shape))
    if t.raw_data:
        return np.frombuffer(t.raw_data, "<f4").reshape(list(t.shape))
    return np.array(t.float_data, np.float32).reshape(list(t.shape))


def bits_of(values):
    """Bit patterns, so that equality is exact (and -0.0 differs from 0.0)."""
    return values.view(np.uint32) if values.dtype == np.float32 else values


def sdpa_reference(q, k, v, q_lens, k_lens, causal):
    """Offload model reference in float64: per-head softmax(q k^T / sqrt(d)) v,
    query head h reading kv head h // (heads / kv_heads), causal bottom-right
    aligned, rows past a query length zero. Returns (output, padded probs)."""
    b_n, l_n, _ = q.shape
    s_n = k.shape[1]
    group = OFF_HEADS // OFF_KV_HEADS
    out = np.zeros((b_n, l_n, OFF_E))
    probs = np.zeros((b_n, OFF_HEADS, l_n, s_n))
    d = OFF_HEAD_DIM
    for b in range(b_n):
        lq, lk = q_lens[b], k_lens[b]
        for h in range(OFF_HEADS):
            kv = h // group
            qh = q[b, :lq, h * d:(h + 1) * d].astype(np.float64)
            kh = k[b, :lk, kv * d:(kv + 1) * d].astype(np.float64)
            vh = v[b, :lk, kv * d:(kv + 1) * d].astype(np.float64)
            scores = qh @ kh.T / np.sqrt(d)
            if causal:
                i = np.arange(lq)[:, None]
                j = np.arange(lk)[None, :]
                scores = np.where(j <= i + (lk - lq), scores, -np.inf)
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            probs[b, h, :lq, :lk] = p
            out[b, :lq, h * d:(h + 1) * d] = p @ vh
    return out, probs


def channel():
    return grpc.insecure_channel(TARGET, options=[("grpc.max_receive_message_length", 64 << 20)])


@unittest.skipUnless(TARGET, "needs ATTN_TARGET (see oip_test.sh)")
class OipTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.channel = channel()
        cls.oip = oip_grpc.GRPCInferenceServiceStub(cls.channel)
        cls.attn = attention_pb2_grpc.AttentionServiceStub(cls.channel)
        cls.rng = np.random.default_rng(20)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()

    def infer(self, req):
        return self.oip.ModelInfer(req, timeout=TIMEOUT)

    def attend(self, req):
        return self.attn.Attend(req, timeout=TIMEOUT)

    def assertRpcError(self, code, pattern, call, *args):
        with self.assertRaises(grpc.RpcError) as caught:
            call(*args, timeout=TIMEOUT)
        self.assertEqual(caught.exception.code(), code, caught.exception.details())
        self.assertRegex(caught.exception.details(), pattern)
        return caught.exception.details()

    def floats(self, *shape):
        return self.rng.standard_normal(shape).astype(np.float32)


class RpcTest(OipTestCase):
    """Every RPC of the service answers as the protocol says."""

    def test_server_live_and_ready(self):
        self.assertTrue(self.oip.ServerLive(oip.ServerLiveRequest(), timeout=TIMEOUT).live)
        self.assertTrue(self.oip.ServerReady(oip.ServerReadyRequest(), timeout=TIMEOUT).ready)

    def test_model_ready_for_every_model_and_not_found_for_an_unknown_one(self):
        for model in MODELS:
            for version in ("", "1"):
                r = self.oip.ModelReady(oip.ModelReadyRequest(name=model, version=version),
                                        timeout=TIMEOUT)
                self.assertTrue(r.ready, (model, version))
        details = self.assertRpcError(grpc.StatusCode.NOT_FOUND, r"^name: no model 'nope'",
                                      self.oip.ModelReady, oip.ModelReadyRequest(name="nope"))
        for model in MODELS:
            self.assertIn(model, details)  # names what exists
        self.assertRpcError(grpc.StatusCode.NOT_FOUND, r"^version: model 'f32' serves version 1",
                            self.oip.ModelReady, oip.ModelReadyRequest(name=F32, version="2"))

    def test_server_metadata(self):
        m = self.oip.ServerMetadata(oip.ServerMetadataRequest(), timeout=TIMEOUT)
        self.assertEqual(m.name, "attention-server")
        self.assertRegex(m.version, r"^\d+\.\d+\.\d+")
        self.assertTrue(m.extensions)
        self.assertTrue(all(m.extensions), list(m.extensions))

    def test_model_metadata_lists_inputs_and_outputs_with_variable_dims(self):
        widths = {F32: (E, E, E), BF16: (E, E, E), CROSS: (E, KDIM, VDIM),
                  OFFLOAD: (OFF_E, OFF_KV, OFF_KV)}
        for model, (e, kdim, vdim) in widths.items():
            m = self.oip.ModelMetadata(oip.ModelMetadataRequest(name=model), timeout=TIMEOUT)
            self.assertEqual(m.name, model)
            self.assertEqual(list(m.versions), ["1"])
            self.assertTrue(m.platform)
            inputs = {t.name: (t.datatype, list(t.shape)) for t in m.inputs}
            self.assertEqual(inputs, {"query": ("FP32", [-1, -1, e]),
                                      "key": ("FP32", [-1, -1, kdim]),
                                      "value": ("FP32", [-1, -1, vdim]),
                                      "query_lengths": ("INT32", [-1]),
                                      "key_lengths": ("INT32", [-1])}, model)
            outputs = {t.name: (t.datatype, list(t.shape)) for t in m.outputs}
            self.assertEqual(outputs, {"output": ("FP32", [-1, -1, e]),
                                       "attention_probs": ("FP32", [-1, -1, -1, -1])}, model)
        self.assertRpcError(grpc.StatusCode.NOT_FOUND, r"^name: no model 'nope'",
                            self.oip.ModelMetadata, oip.ModelMetadataRequest(name="nope"))

    def test_model_config(self):
        c = self.oip.ModelConfig(oip.ModelConfigRequest(name=OFFLOAD), timeout=TIMEOUT).config
        self.assertEqual(c.name, OFFLOAD)
        self.assertEqual(c.max_batch_size, 0)
        inputs = {i.name: (i.data_type, list(i.dims), i.optional) for i in c.input}
        self.assertEqual(inputs, {
            "query": (model_config_pb2.TYPE_FP32, [-1, -1, OFF_E], False),
            "key": (model_config_pb2.TYPE_FP32, [-1, -1, OFF_KV], True),
            "value": (model_config_pb2.TYPE_FP32, [-1, -1, OFF_KV], True),
            "query_lengths": (model_config_pb2.TYPE_INT32, [-1], True),
            "key_lengths": (model_config_pb2.TYPE_INT32, [-1], True)})
        self.assertEqual({o.name: list(o.dims) for o in c.output},
                         {"output": [-1, -1, OFF_E], "attention_probs": [-1, -1, -1, -1]})
        self.assertTrue(c.HasField("dynamic_batching"))
        self.assertEqual(len(c.instance_group), 1)
        self.assertRpcError(grpc.StatusCode.NOT_FOUND, r"^name: no model 'nope'",
                            self.oip.ModelConfig, oip.ModelConfigRequest(name="nope"))

    def test_repository_index_lists_every_model_ready(self):
        r = self.oip.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=TIMEOUT)
        self.assertEqual(sorted((m.name, m.version, m.state) for m in r.models),
                         sorted((m, "1", "READY") for m in MODELS))

    def test_repository_load_and_unload_answer(self):
        # Only that each answers with a status rather than hanging: model
        # control (load/unload and their effect on the other RPCs) is tested
        # with its implementation. An unknown model name keeps this
        # server's models as they are whatever that implementation does.
        for call, req in ((self.oip.RepositoryModelLoad,
                           oip.RepositoryModelLoadRequest(model_name="no_such_model")),
                          (self.oip.RepositoryModelUnload,
                           oip.RepositoryModelUnloadRequest(model_name="no_such_model"))):
            try:
                call(req, timeout=10)
            except grpc.RpcError as e:
                self.assertNotIn(e.code(), (grpc.StatusCode.DEADLINE_EXCEEDED,
                                            grpc.StatusCode.UNAVAILABLE), e.details())
        r = self.oip.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=TIMEOUT)
        self.assertEqual(sorted(m.name for m in r.models), sorted(MODELS))


class StatisticsTest(OipTestCase):
    def stats(self, model):
        r = self.oip.ModelStatistics(oip.ModelStatisticsRequest(name=model), timeout=TIMEOUT)
        self.assertEqual(len(r.model_stats), 1)
        self.assertEqual((r.model_stats[0].name, r.model_stats[0].version), (model, "1"))
        return r.model_stats[0]

    def test_counts_go_up_with_inferences_of_both_protocols(self):
        before = self.stats(OFFLOAD)
        q, kv = self.floats(1, 3, OFF_E), self.floats(1, 5, OFF_KV)
        inputs = [("query", "FP32", q), ("key", "FP32", kv), ("value", "FP32", kv)]
        for _ in range(3):
            self.infer(infer_request(OFFLOAD, inputs, raw=True))
        self.attend(attend_request(OFFLOAD, inputs))
        # success is counted when the response has been sent: it may trail
        # the client's return by a moment.
        deadline = time.monotonic() + 10
        while True:
            after = self.stats(OFFLOAD)
            if after.inference_stats.success.count >= before.inference_stats.success.count + 4:
                break
            self.assertLess(time.monotonic(), deadline, str(after))
            time.sleep(0.05)
        s0, s1 = before.inference_stats, after.inference_stats
        self.assertGreaterEqual(after.inference_count, before.inference_count + 4)
        self.assertGreater(after.execution_count, before.execution_count)
        self.assertGreater(after.last_inference, 0)
        self.assertGreater(s1.success.ns, s0.success.ns)
        self.assertGreaterEqual(s1.queue.count, s0.queue.count + 4)
        self.assertTrue(after.inference_stats.HasField("queue"))
        self.assertGreater(s1.queue.ns, s0.queue.ns)
        self.assertGreaterEqual(s1.compute_infer.count, s0.compute_infer.count + 4)
        self.assertGreater(s1.compute_infer.ns, s0.compute_infer.ns)

    def test_a_failed_request_counts_as_a_failure(self):
        before = self.stats(F32).inference_stats.fail.count
        with self.assertRaises(grpc.RpcError):
            self.infer(infer_request(F32, [("query", "FP32", self.floats(1, 2, E + 1))], raw=True))
        deadline = time.monotonic() + 10
        while self.stats(F32).inference_stats.fail.count < before + 1:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)

    def test_every_model_without_a_name_and_not_found_for_an_unknown_one(self):
        r = self.oip.ModelStatistics(oip.ModelStatisticsRequest(), timeout=TIMEOUT)
        self.assertEqual(sorted(m.name for m in r.model_stats), sorted(MODELS))
        self.assertRpcError(grpc.StatusCode.NOT_FOUND, r"^name: no model 'nope'",
                            self.oip.ModelStatistics, oip.ModelStatisticsRequest(name="nope"))


class InferMatchesAttendTest(OipTestCase):
    """ModelInfer and Attend of the same inputs give the same bits."""

    def compare(self, model, inputs, params=None, outputs=(), layouts=(None,)):
        """Runs `inputs` raw and, when every input has a typed field, typed,
        as ModelInfer and as Attend, and asserts equal outputs. Returns the
        raw ModelInfer response."""
        params = dict(params or {})
        causal = bool(params.get("causal", False))
        want_probs = ("attention_probs" in outputs if outputs
                      else bool(params.get("return_attention_probs", False)))
        layout = params.get("attention_probs_layout")
        expected = self.attend(attend_request(model, inputs, causal, want_probs, layout))
        typed_ok = all(dt != "BF16" for _, dt, _ in inputs)
        raw_response = None
        for raw in (True, False) if typed_ok else (True,):
            with self.subTest(model=model, raw=raw):
                req = infer_request(model, inputs, raw, params, outputs, request_id=f"id-{raw}")
                r = self.infer(req)
                if raw:
                    raw_response = r
                self.assertEqual((r.model_name, r.model_version, r.id), (model, "", f"id-{raw}"))
                # The response answers as the request asked: raw or typed.
                self.assertEqual(len(r.raw_output_contents), len(r.outputs) if raw else 0)
                names = [o.name for o in r.outputs]
                self.assertEqual(names, list(outputs) if outputs
                                 else ["output"] + (["attention_probs"] if want_probs else []))
                query_dt = next(dt for name, dt, _ in inputs if name == "query")
                if "output" in names:
                    dt, shape, got = output_of(r, "output")
                    self.assertEqual(dt, query_dt)
                    want = wire_values(expected.output)
                    self.assertEqual(shape, list(want.shape))
                    np.testing.assert_array_equal(bits_of(got), bits_of(want))
                if want_probs:
                    dt, shape, got = output_of(r, "attention_probs")
                    self.assertEqual(dt, "FP32")
                    want = wire_values(expected.attention_probs)
                    self.assertEqual(shape, list(want.shape))
                    np.testing.assert_array_equal(bits_of(got), bits_of(want))
                else:
                    self.assertIsNone(output_of(r, "attention_probs"))
                    self.assertFalse(expected.HasField("attention_probs"))
        return raw_response

    def test_f32_self_attention_ragged_causal_with_probs(self):
        q = self.floats(3, 6, E)
        lens = np.array([6, 2, 4], np.int32)
        r = self.compare(F32, [("query", "FP32", q), ("query_lengths", "INT32", lens)],
                         {"causal": True, "return_attention_probs": True})
        _, _, out = output_of(r, "output")
        _, shape, probs = output_of(r, "attention_probs")
        self.assertEqual(shape, [3, HEADS, 6, 6])
        for b, n in enumerate(lens):
            self.assertFalse(out[b, n:].any())            # rows past a length are zero
            self.assertTrue(out[b, :n].any())
            self.assertFalse(probs[b, :, n:, :].any())
            self.assertFalse(probs[b, :, :, n:].any())
            np.testing.assert_allclose(probs[b, :, :n, :n].sum(-1), 1, rtol=1e-5)
            # causal: no weight above the diagonal
            self.assertFalse(np.triu(probs[b, 0, :n, :n], 1).any())

    def test_f32_without_lengths_or_probs(self):
        self.compare(F32, [("query", "FP32", self.floats(2, 5, E))])
        self.compare(F32, [("query", "FP32", self.floats(5, E))])  # [L, E], batch of one

    def test_f32_cross_attention_with_key_lengths(self):
        inputs = [("key_lengths", "INT32", np.array([7, 3], np.int32)),
                  ("query", "FP32", self.floats(2, 4, E)),
                  ("value", "FP32", self.floats(2, 7, VDIM)),
                  ("query_lengths", "INT32", np.array([1, 4], np.int32)),
                  ("key", "FP32", self.floats(2, 7, KDIM))]  # any order
        r = self.compare(CROSS, inputs, {"return_attention_probs": True, "causal": True})
        _, _, probs = output_of(r, "attention_probs")
        self.assertFalse(probs[1, :, :, 3:].any())
        self.assertTrue(probs[0, :, 0, :7].all())  # bottom-right causal: row 0 of 1 sees all 7

    def test_f32_packed_probs_layout(self):
        inputs = [("query", "FP32", self.floats(2, 5, E)),
                  ("query_lengths", "INT32", np.array([5, 2], np.int32))]
        r = self.compare(F32, inputs, {"return_attention_probs": True,
                                       "attention_probs_layout": "PROBS_LAYOUT_PACKED"})
        self.assertEqual(output_of(r, "attention_probs")[1], [HEADS * (25 + 4)])

    def test_bf16_model_ragged_causal_with_probs(self):
        q = self.floats(2, 5, E)
        inputs = [("query", "BF16", to_bf16_bits(q)),
                  ("query_lengths", "INT32", np.array([3, 5], np.int32))]
        r = self.compare(BF16, inputs, {"causal": True, "return_attention_probs": True})
        _, _, out = output_of(r, "output")
        self.assertEqual(out.dtype, np.uint16)
        self.assertFalse(out[0, 3:].any())
        self.assertTrue(np.isfinite(from_bf16_bits(out)).all())

    def test_bf16_cross_attention_with_key_lengths(self):
        inputs = [("query", "BF16", to_bf16_bits(self.floats(2, 3, E))),
                  ("key", "BF16", to_bf16_bits(self.floats(2, 6, E))),
                  ("value", "BF16", to_bf16_bits(self.floats(2, 6, E))),
                  ("key_lengths", "INT32", np.array([6, 1], np.int32))]
        self.compare(BF16, inputs, {"return_attention_probs": True})

    def test_fp32_request_to_the_bf16_model_answers_fp32(self):
        # The model computes in bf16; the output takes the query's datatype.
        self.compare(BF16, [("query", "FP32", self.floats(1, 4, E))])

    def test_bf16_request_to_the_f32_model(self):
        self.compare(F32, [("query", "BF16", to_bf16_bits(self.floats(2, 3, E)))],
                     {"return_attention_probs": True})

    def test_offload_matches_attend_and_a_float64_reference(self):
        q, k, v = self.floats(3, 5, OFF_E), self.floats(3, 7, OFF_KV), self.floats(3, 7, OFF_KV)
        q_lens, k_lens = np.array([5, 1, 3], np.int32), np.array([7, 2, 6], np.int32)
        inputs = [("query", "FP32", q), ("key", "FP32", k), ("value", "FP32", v),
                  ("query_lengths", "INT32", q_lens), ("key_lengths", "INT32", k_lens)]
        for causal in (False, True):
            r = self.compare(OFFLOAD, inputs,
                             {"causal": causal, "return_attention_probs": True})
            want_out, want_probs = sdpa_reference(q, k, v, q_lens, k_lens, causal)
            np.testing.assert_allclose(output_of(r, "output")[2], want_out, atol=1e-5)
            np.testing.assert_allclose(output_of(r, "attention_probs")[2], want_probs,
                                       atol=1e-6)

    def test_offload_bf16_inputs(self):
        inputs = [("query", "BF16", to_bf16_bits(self.floats(2, 4, OFF_E))),
                  ("key", "BF16", to_bf16_bits(self.floats(2, 4, OFF_KV))),
                  ("value", "BF16", to_bf16_bits(self.floats(2, 4, OFF_KV))),
                  ("query_lengths", "INT32", np.array([4, 2], np.int32)),
                  ("key_lengths", "INT32", np.array([3, 4], np.int32))]
        self.compare(OFFLOAD, inputs, {"causal": True, "return_attention_probs": True})

    def test_outputs_subset_is_honoured(self):
        inputs = [("query", "FP32", self.floats(2, 4, E)),
                  ("query_lengths", "INT32", np.array([4, 3], np.int32))]
        # Only `output`: no probabilities, even though the server could.
        self.compare(F32, inputs, outputs=("output",))
        # Only the probabilities: naming them implies return_attention_probs.
        self.compare(F32, inputs, outputs=("attention_probs",))
        # Both, in the order asked.
        self.compare(F32, inputs, {"return_attention_probs": True},
                     outputs=("attention_probs", "output"))

    def test_outputs_contradicting_return_attention_probs_is_refused(self):
        q = [("query", "FP32", self.floats(1, 2, E))]
        self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT,
                            r"^parameters\[return_attention_probs\]: true, but outputs",
                            self.oip.ModelInfer,
                            infer_request(F32, q, True, {"return_attention_probs": True},
                                          ("output",)))
        self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT,
                            r"^outputs\[0\]: unknown output 'probs'",
                            self.oip.ModelInfer, infer_request(F32, q, True, outputs=("probs",)))


class StreamTest(OipTestCase):
    def test_several_requests_on_one_stream_with_an_error_in_the_middle(self):
        def request(i, raw=True):
            inputs = [("query", "FP32", self.floats(2, 3 + i, E)),
                      ("query_lengths", "INT32", np.array([3 + i, 1], np.int32))]
            return inputs, infer_request(F32, inputs, raw, {"return_attention_probs": True},
                                         request_id=f"r{i}")
        sent = [request(i, raw=i % 2 == 0) for i in range(5)]
        bad = infer_request(F32, [("query", "FP32", self.floats(1, 2, E))], True,
                            {"casual": True}, request_id="bad")
        messages = [r for _, r in sent[:2]] + [bad] + [r for _, r in sent[2:]]
        responses = list(self.oip.ModelStreamInfer(iter(messages), timeout=TIMEOUT))
        by_id = {m.infer_response.id: m for m in responses}
        self.assertEqual(len(responses), len(messages))
        self.assertEqual(sorted(by_id), sorted(["bad"] + [f"r{i}" for i in range(5)]))
        self.assertRegex(by_id["bad"].error_message,
                         r"^INVALID_ARGUMENT: parameters: unknown casual")
        self.assertEqual(by_id["bad"].infer_response.model_name, F32)
        for i, (inputs, _) in enumerate(sent):
            m = by_id[f"r{i}"]
            self.assertEqual(m.error_message, "", f"r{i}")
            # The same as the unary call of the same request (on a stream,
            # requests may share a batch: the result does not depend on it).
            unary = self.infer(infer_request(F32, inputs, True, {"return_attention_probs": True}))
            for name in ("output", "attention_probs"):
                np.testing.assert_array_equal(bits_of(output_of(m.infer_response, name)[2]),
                                              bits_of(output_of(unary, name)[2]))
            self.assertEqual(len(m.infer_response.raw_output_contents), 2 if i % 2 == 0 else 0)

    def test_a_stream_of_only_errors_still_answers_each(self):
        msgs = [infer_request("nope", [("query", "FP32", self.floats(1, 2, E))], True,
                              request_id="a"),
                infer_request(F32, [], True, request_id="b")]
        responses = list(self.oip.ModelStreamInfer(iter(msgs), timeout=TIMEOUT))
        got = {m.infer_response.id: m.error_message for m in responses}
        self.assertRegex(got["a"], r"^NOT_FOUND: model_name: no model 'nope'")
        self.assertRegex(got["b"], r"^INVALID_ARGUMENT: inputs: expected an input named query")


class ErrorTest(OipTestCase):
    """Each refusal has its code and a message naming the field."""

    def refused(self, req, pattern, code=grpc.StatusCode.INVALID_ARGUMENT):
        self.assertRpcError(code, pattern, self.oip.ModelInfer, req)

    def q(self, *shape):
        return self.floats(*(shape or (2, 3, E)))

    def test_unknown_model(self):
        self.refused(infer_request("nope", [("query", "FP32", self.q())], True),
                     r"^model_name: no model 'nope'; available: .*f32", grpc.StatusCode.NOT_FOUND)

    def test_unknown_input_name(self):
        self.refused(infer_request(F32, [("query", "FP32", self.q()),
                                         ("keys", "FP32", self.q())], True),
                     r"^inputs\[1\]: unknown input 'keys'; expected query, key, value")

    def test_duplicate_input(self):
        self.refused(infer_request(F32, [("query", "FP32", self.q()),
                                         ("query", "FP32", self.q())], True),
                     r"^inputs\[1\] \(query\): duplicate input \(also inputs\[0\]\)")

    def test_wrong_datatype(self):
        req = infer_request(F32, [("query", "FP32", self.q())], True)
        req.inputs[0].datatype = "FP64"
        self.refused(req, r"^inputs\[0\] \(query\)\.datatype: expected FP32 or BF16, got FP64")
        self.refused(infer_request(F32, [("query", "FP32", self.q()),
                                         ("query_lengths", "FP32", np.ones(2, np.float32))],
                                   True),
                     r"^inputs\[1\] \(query_lengths\)\.datatype: expected INT32, got FP32")
        self.refused(infer_request(BF16, [("query", "BF16", to_bf16_bits(self.q())),
                                          ("key", "FP32", self.q()),
                                          ("value", "FP32", self.q())], True),
                     r"^inputs\[1\] \(key\)\.datatype: expected BF16 \(the query's\), got FP32")

    def test_wrong_shape(self):
        self.refused(infer_request(F32, [("query", "FP32", self.q(2, 3, E + 1))], True),
                     rf"^query\.shape\[2\]: expected {E} \(embed_dim\), got {E + 1}")
        self.refused(infer_request(F32, [("query", "FP32", self.q(1, 2, 3, E))], True),
                     r"^query\.shape: expected \[batch, seq, 32\]")
        self.refused(infer_request(F32, [("query", "FP32", self.q()),
                                         ("query_lengths", "INT32", np.ones((2, 1), np.int32))],
                                   True),
                     r"^inputs\[1\] \(query_lengths\)\.shape: expected \[batch\] \(rank 1\)")
        self.refused(infer_request(F32, [("query", "FP32", self.q()),
                                         ("query_lengths", "INT32", np.array([9, 1], np.int32))],
                                   False),
                     r"^query_lengths\[0\]: expected 0\.\.3")

    def test_bf16_in_typed_contents(self):
        req = infer_request(BF16, [("query", "FP32", self.q())], False)
        req.inputs[0].datatype = "BF16"
        self.refused(req, r"^inputs\[0\] \(query\)\.contents: BF16 has no typed field")

    def test_typed_contents_in_the_wrong_field(self):
        req = infer_request(F32, [("query", "FP32", self.q(1, 1, E))], False)
        req.inputs[0].contents.int_contents.extend([1] * E)
        self.refused(req, r"^inputs\[0\] \(query\)\.contents: FP32 values go in fp32_contents, "
                          r"got int_contents")

    def test_typed_count_mismatch(self):
        req = infer_request(F32, [("query", "FP32", self.q())], False)
        req.inputs[0].contents.fp32_contents.append(1.0)
        self.refused(req, rf"^inputs\[0\] \(query\)\.contents\.fp32_contents: expected {6 * E} "
                          rf"values for shape \[2, 3, {E}\], got {6 * E + 1}")

    def test_mixed_raw_and_typed(self):
        req = infer_request(F32, [("query", "FP32", self.q()),
                                  ("query_lengths", "INT32", np.array([3, 1], np.int32))], True)
        req.inputs[1].contents.int_contents.extend([3, 1])
        self.refused(req, r"^inputs\[1\] \(query_lengths\)\.contents: int_contents set, but the "
                          r"request uses raw_input_contents")
        req = infer_request(F32, [("query", "FP32", self.q()),
                                  ("query_lengths", "INT32", np.array([3, 1], np.int32))], True)
        del req.raw_input_contents[1]
        self.refused(req, r"^raw_input_contents: expected 2 entries \(one per input")

    def test_raw_size_mismatch(self):
        req = infer_request(F32, [("query", "FP32", self.q())], True)
        req.raw_input_contents[0] = req.raw_input_contents[0][:-1]
        self.refused(req, rf"^raw_input_contents\[0\] \(query\): expected {24 * E} bytes "
                          rf"\(shape \[2, 3, {E}\] x 4-byte FP32\), got {24 * E - 1}")

    def test_unknown_parameter(self):
        self.refused(infer_request(F32, [("query", "FP32", self.q())], True,
                                   {"casual": True, "causal": True}),
                     r"^parameters: unknown casual \(this server knows .*causal")
        self.refused(infer_request(F32, [("query", "FP32", self.q())], True, {"causal": "yes"}),
                     r"^parameters\[causal\]: expected bool_param, got string_param")
        req = infer_request(F32, [("query", "FP32", self.q())], True)
        req.inputs[0].parameters["shared_memory_region"].string_param = "r"
        self.refused(req, r"^inputs\[0\] \(query\)\.parameters: unknown shared_memory_region")

    def test_missing_query(self):
        self.refused(infer_request(OFFLOAD, [("key", "FP32", self.q(1, 2, OFF_KV)),
                                             ("value", "FP32", self.q(1, 2, OFF_KV))], True),
                     r"^inputs: expected an input named query, got key, value")
        self.refused(infer_request(F32, [], True), r"^inputs: expected an input named query, "
                                                   r"got none")

    def test_key_without_value_and_key_lengths_past_the_keys(self):
        self.refused(infer_request(OFFLOAD, [("query", "FP32", self.q(1, 2, OFF_E)),
                                             ("key", "FP32", self.q(1, 2, OFF_KV))], True),
                     r"^value: required when key")
        # attention.v1's own checks, reached through the mapping: the batch of key_lengths.
        self.refused(infer_request(OFFLOAD, [("query", "FP32", self.q(2, 2, OFF_E)),
                                             ("key", "FP32", self.q(2, 3, OFF_KV)),
                                             ("value", "FP32", self.q(2, 3, OFF_KV)),
                                             ("key_lengths", "INT32", np.array([4, 1], np.int32))],
                                   True),
                     r"^key_lengths\[0\]: expected 0\.\.3")


def latency(n=200):
    """Median ModelInfer and Attend latency (us) of one small request."""
    ch = channel()
    oip_stub = oip_grpc.GRPCInferenceServiceStub(ch)
    attn_stub = attention_pb2_grpc.AttentionServiceStub(ch)
    q = np.random.default_rng(0).standard_normal((1, 8, E)).astype(np.float32)
    infer_req = infer_request(F32, [("query", "FP32", q)], True)
    attend_req = attend_request(F32, [("query", "FP32", q)])
    results = {}
    for name, call, req in (("ModelInfer", oip_stub.ModelInfer, infer_req),
                            ("Attend", attn_stub.Attend, attend_req)) * 2:
        for _ in range(20):  # warm-up
            call(req, timeout=TIMEOUT)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            call(req, timeout=TIMEOUT)
            times.append(time.perf_counter() - t0)
        results[name] = statistics.median(times) * 1e6  # the second round counts
    ch.close()
    for name, us in results.items():
        print(f"{name}: median {us:.0f} us over {n} calls ([1, 8, {E}] FP32, model {F32})")


if __name__ == "__main__":
    if sys.argv[1:] == ["--latency"]:
        latency()
    else:
        unittest.main()
