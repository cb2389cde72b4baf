"""Tests of client/python/attention_client: the tensor codec, the client
against a live attention-server (compared with attention-cli on the same
input), and attend_stream, the bearer token and TLS against in-process fake
servers.

Run by python_client_test.sh with ATTN_TARGET (the live server) and ATTN_BIN
(the directory of attention-cli) set; run under /usr/bin/python3.
"""

import argparse
import concurrent.futures
import os
import subprocess
import tempfile
import unittest

import grpc
import numpy as np

from attention.v1 import attention_pb2, attention_pb2_grpc
from attention_client import (AttendInput, AttentionClient, AttentionError, add_connection_flags,
                              bfloat16_bits_to_float32, connection_options,
                              float32_to_bfloat16_bits)
from attention_client import tensors
from grpc_health.v1 import health_pb2, health_pb2_grpc

TARGET = os.environ.get("ATTN_TARGET", "")
BIN = os.environ.get("ATTN_BIN", "")


def nearest_even_bfloat16(x: float) -> int:
    """Reference: the bfloat16 bits nearest to finite float32 `x`, ties to even,
    by comparing the two neighbouring bfloat16 values in float64."""
    bits = int(np.float32(x).view(np.uint32))
    down = bits >> 16
    up = down + 1
    lo = float(bfloat16_bits_to_float32(np.array([down], np.uint16))[0])
    hi = float(bfloat16_bits_to_float32(np.array([up & 0xFFFF], np.uint16))[0]) \
        if (up & 0x7F80) != 0x7F80 else float(np.sign(x)) * 2.0 ** 128
    d_lo, d_hi = abs(float(x) - lo), abs(hi - float(x))
    if d_lo < d_hi or (d_lo == d_hi and down % 2 == 0):
        return down
    return up


class TensorCodecTest(unittest.TestCase):
    def test_bfloat16_rounds_to_nearest_even(self):
        cases = {
            0x3F800000: 0x3F80,  # 1.0
            0x3F808000: 0x3F80,  # tie, kept bit even: down
            0x3F818000: 0x3F82,  # tie, kept bit odd: up
            0x3F808001: 0x3F81,  # above the tie: up
            0x3F807FFF: 0x3F80,  # below the tie: down
            0x80000000: 0x8000,  # -0.0
            0x7F7FFFFF: 0x7F80,  # largest float32 rounds to +inf
            0x7F800000: 0x7F80,  # +inf
            0xFF800000: 0xFF80,  # -inf
            0x00000001: 0x0000,  # smallest subnormal rounds to 0
        }
        src = np.array(list(cases), dtype=np.uint32).view(np.float32)
        got = float32_to_bfloat16_bits(src)
        self.assertEqual(got.dtype, np.uint16)
        self.assertEqual([hex(v) for v in got], [hex(v) for v in cases.values()])

    def test_bfloat16_matches_a_float64_reference_on_random_values(self):
        rng = np.random.default_rng(7)
        x = np.concatenate([rng.standard_normal(2000).astype(np.float32),
                            (rng.standard_normal(500) * 1e30).astype(np.float32),
                            (rng.standard_normal(500) * 1e-39).astype(np.float32)])
        got = float32_to_bfloat16_bits(x)
        want = [nearest_even_bfloat16(v) for v in x]
        self.assertEqual(got.tolist(), want)

    def test_bfloat16_nan_stays_nan_and_values_round_trip(self):
        nan_bits = np.array([0x7FC00000, 0x7F800001, 0xFFFFFFFF], dtype=np.uint32)
        back = bfloat16_bits_to_float32(float32_to_bfloat16_bits(nan_bits.view(np.float32)))
        self.assertTrue(np.isnan(back).all())
        self.assertEqual(np.signbit(back).tolist(), [False, False, True])
        exact = bfloat16_bits_to_float32(np.arange(0, 0x7F80, 7, dtype=np.uint16))
        np.testing.assert_array_equal(
            bfloat16_bits_to_float32(float32_to_bfloat16_bits(exact)), exact)

    def test_encode_decode_round_trip(self):
        x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
        t = tensors.encode(x, "float32")
        self.assertEqual(t.dtype, attention_pb2.FLOAT32)
        self.assertEqual(list(t.shape), [2, 3, 4])
        self.assertEqual(t.raw_data, x.astype("<f4").tobytes())
        np.testing.assert_array_equal(tensors.decode(t), x)
        t16 = tensors.encode(x, "float16")
        self.assertEqual(len(t16.raw_data), 2 * x.size)
        np.testing.assert_array_equal(tensors.decode(t16), x.astype(np.float16).astype(np.float32))
        tb = tensors.encode(x, "bfloat16")
        self.assertEqual(tb.dtype, attention_pb2.BFLOAT16)
        np.testing.assert_allclose(tensors.decode(tb), x, rtol=2 ** -8)
        packed = attention_pb2.Tensor(dtype=attention_pb2.FLOAT32, shape=[2, 2],
                                      float_data=[1, 2, 3, 4])
        np.testing.assert_array_equal(tensors.decode(packed), [[1, 2], [3, 4]])

    def test_decode_rejects_a_size_that_disagrees_with_the_shape(self):
        bad = attention_pb2.Tensor(dtype=attention_pb2.FLOAT32, shape=[2, 3], raw_data=b"\0" * 20)
        with self.assertRaisesRegex(ValueError, r"output.raw_data: expected 24 bytes"):
            tensors.decode(bad, "output")

    def test_encode_rejects_unknown_dtype(self):
        with self.assertRaisesRegex(ValueError, "dtype: expected one of"):
            tensors.encode(np.zeros((1, 4)), "float64")


@unittest.skipUnless(TARGET and BIN, "needs ATTN_TARGET and ATTN_BIN (see python_client_test.sh)")
class LiveServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = AttentionClient(TARGET, timeout=60)
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.tmp.cleanup()

    def cli_attend(self, query, *flags):
        """attention-cli's output for `query` (written as .npy) with extra flags."""
        in_path = os.path.join(self.tmp.name, "query.npy")
        out_path = os.path.join(self.tmp.name, "cli_out.npy")
        np.save(in_path, query)
        subprocess.run([os.path.join(BIN, "attention-cli"), "attend", f"--target={TARGET}",
                        f"--input={in_path}", f"--output={out_path}", *flags],
                       check=True, stdout=subprocess.DEVNULL)
        return np.load(out_path)

    def test_lists_and_gets_the_built_in_model(self):
        models = self.client.list_models()
        self.assertEqual([m.name for m in models], ["default"])
        m = models[0]
        self.assertEqual((m.embed_dim, m.num_heads, m.head_dim, m.dtype), (512, 8, 64, "float32"))
        self.assertEqual(self.client.get_model("default"), m)

    def test_health(self):
        self.assertEqual(self.client.health(), "SERVING")
        self.assertEqual(self.client.health("default"), "SERVING")
        self.assertEqual(self.client.health("attention.v1.AttentionService"), "SERVING")
        self.assertEqual(self.client.health("no_such_model"), "SERVICE_UNKNOWN")

    def test_attend_matches_the_cpp_client(self):
        query = np.random.default_rng(3).standard_normal((2, 8, 512)).astype(np.float32)
        output, probs, timing = self.client.attend(query)
        self.assertEqual(output.shape, (2, 8, 512))
        self.assertEqual(output.dtype, np.float32)
        self.assertIsNone(probs)
        self.assertEqual(set(timing),
                         {"queue_us", "compute_us", "batch_size", "batch_tokens", "round_trip_us"})
        self.assertGreaterEqual(timing["batch_size"], 1)
        expected = self.cli_attend(query)
        np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-6)

    def test_causal_with_lengths_and_probs_matches_the_cpp_client(self):
        query = np.random.default_rng(4).standard_normal((2, 8, 512)).astype(np.float32)
        output, probs, _ = self.client.attend(query, causal=True, lengths=[8, 5],
                                              return_probs=True)
        expected = self.cli_attend(query, "--causal", "--lengths=8,5")
        np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(output[1, 5:], 0)  # padding comes back as zeros
        self.assertEqual(probs.shape, (2, 8, 8, 8))
        np.testing.assert_allclose(probs[0].sum(-1), 1, atol=1e-5)
        np.testing.assert_array_equal(np.triu(probs[0, 0], 1), 0)  # causal: no future keys
        np.testing.assert_allclose(probs[1, :, :5].sum(-1), 1, atol=1e-5)

    def test_bfloat16_matches_the_cpp_client(self):
        # Both clients round the same float32 input to bfloat16 (nearest even).
        query = np.random.default_rng(5).standard_normal((1, 6, 512)).astype(np.float32)
        output, _, _ = self.client.attend(query, dtype="bfloat16")
        expected = self.cli_attend(query, "--dtype=bfloat16")
        np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-6)
        full, _, _ = self.client.attend(query)
        np.testing.assert_allclose(output, full, rtol=5e-2, atol=5e-2)

    def test_cross_attention_shapes(self):
        rng = np.random.default_rng(6)
        query = rng.standard_normal((2, 3, 512)).astype(np.float32)
        kv = rng.standard_normal((2, 7, 512)).astype(np.float32)
        output, probs, _ = self.client.attend(query, key=kv, value=kv, return_probs=True)
        self.assertEqual(output.shape, (2, 3, 512))
        self.assertEqual(probs.shape, (2, 8, 3, 7))
        # One query of a batch, two dims: same numbers as inside the batch.
        single, _, _ = self.client.attend(query[1], key=kv[1], value=kv[1])
        np.testing.assert_allclose(single, output[1], rtol=1e-5, atol=1e-5)

    def test_unknown_model_is_not_found_and_lists_the_models(self):
        with self.assertRaises(AttentionError) as ctx:
            self.client.attend(np.zeros((1, 4, 512), np.float32), model="no_such_model")
        self.assertEqual(ctx.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("no_such_model", ctx.exception.message)
        self.assertIn("default", ctx.exception.message)
        with self.assertRaises(AttentionError) as ctx:
            self.client.get_model("no_such_model")
        self.assertEqual(ctx.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("default", ctx.exception.message)

    def test_wrong_embed_dim_is_invalid_argument_naming_the_field(self):
        with self.assertRaises(AttentionError) as ctx:
            self.client.attend(np.zeros((1, 4, 256), np.float32))
        e = ctx.exception
        self.assertEqual(e.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertRegex(e.message, r"query.*512.*256")
        self.assertTrue(str(e).startswith("INVALID_ARGUMENT: "), str(e))

    def test_attend_stream(self):
        rng = np.random.default_rng(8)
        queries = {f"r{i}": rng.standard_normal((1 + i % 2, 2 + i, 512)).astype(np.float32)
                   for i in range(6)}
        requests = [AttendInput(query=q, request_id=rid) for rid, q in queries.items()]
        requests.insert(2, AttendInput(query=np.zeros((1, 4, 256), np.float32),
                                       request_id="bad_shape"))
        requests.insert(4, {"query": queries["r0"], "model": "no_such_model",
                            "request_id": "bad_model"})
        results = {r.request_id: r for r in self.client.attend_stream(iter(requests))}
        self.assertEqual(set(results), set(queries) | {"bad_shape", "bad_model"})
        self.assertEqual(results["bad_shape"].error.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(results["bad_model"].error.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("default", results["bad_model"].error.message)
        for rid, query in queries.items():
            r = results[rid]
            self.assertTrue(r.ok, f"{rid}: {r.error}")
            expected, _, _ = self.client.attend(query)
            np.testing.assert_allclose(r.output, expected, rtol=1e-5, atol=1e-5, err_msg=rid)
            self.assertGreaterEqual(r.timing["batch_size"], 1)
        with self.assertRaises(AttentionError) as ctx:
            list(self.client.attend_stream(requests, raise_on_error=True))
        self.assertIn(ctx.exception.request_id, ("bad_shape", "bad_model"))


class FakeStreamService(attention_pb2_grpc.AttentionServiceServicer):
    """AttendStream that answers in reverse order: output = query, a request
    whose id starts with "bad" fails with INVALID_ARGUMENT in its status."""

    def AttendStream(self, request_iterator, context):
        requests = list(request_iterator)
        for request in reversed(requests):
            if request.request_id.startswith("bad"):
                yield attention_pb2.AttendResponse(
                    request_id=request.request_id,
                    status=attention_pb2.RequestStatus(
                        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                        message=f"query: bad request {request.request_id}"))
                continue
            yield attention_pb2.AttendResponse(
                request_id=request.request_id, model_name=request.model_name,
                output=request.query, timing=attention_pb2.Timing(batch_size=len(requests)))


class StreamClientTest(unittest.TestCase):
    """attend_stream's tagging and per-request errors, against a fake server."""

    @classmethod
    def setUpClass(cls):
        cls.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        attention_pb2_grpc.add_AttentionServiceServicer_to_server(FakeStreamService(), cls.server)
        port = cls.server.add_insecure_port("127.0.0.1:0")
        cls.server.start()
        cls.client = AttentionClient(f"127.0.0.1:{port}", timeout=30)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop(None)

    def test_results_are_tagged_and_failures_stay_per_request(self):
        qs = [np.full((1, 2, 4), i, np.float32) for i in range(4)]
        requests = ({"query": q} for q in qs[:3])  # a generator; ids default to positions
        items = list(requests) + [AttendInput(query=qs[3], request_id="bad_one"),
                                  AttendInput(query=qs[3], request_id="last", dtype="bfloat16")]
        results = list(self.client.attend_stream(items))
        self.assertEqual([r.request_id for r in results], ["last", "bad_one", "2", "1", "0"])
        for r in results[2:]:
            np.testing.assert_array_equal(r.output, qs[int(r.request_id)])
        np.testing.assert_array_equal(results[0].output, qs[3])  # 3.0 is exact in bfloat16
        self.assertFalse(results[1].ok)
        self.assertEqual(results[1].error.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(results[1].error.request_id, "bad_one")
        self.assertIn("bad request bad_one", str(results[1].error))
        self.assertEqual(results[0].timing["batch_size"], 5)

    def test_raise_on_error(self):
        items = [AttendInput(query=np.zeros((1, 4)), request_id="bad_x")]
        with self.assertRaises(AttentionError) as ctx:
            list(self.client.attend_stream(items, raise_on_error=True))
        self.assertEqual(ctx.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(ctx.exception.request_id, "bad_x")

    def test_a_request_that_cannot_be_encoded_raises(self):
        items = [AttendInput(query=np.zeros((1, 4))), AttendInput(query=np.zeros((1, 4)),
                                                                  dtype="float64")]
        with self.assertRaisesRegex(ValueError, "dtype: expected one of"):
            list(self.client.attend_stream(items))

    def test_unimplemented_rpc_raises_with_its_code(self):
        with self.assertRaises(AttentionError) as ctx:
            self.client.attend(np.zeros((1, 4), np.float32))
        self.assertEqual(ctx.exception.code, grpc.StatusCode.UNIMPLEMENTED)


class RecordingService(attention_pb2_grpc.AttentionServiceServicer, health_pb2_grpc.HealthServicer):
    """Answers every call it needs, recording (method, authorization metadata or None)."""

    def __init__(self):
        self.seen = []

    def _record(self, method, context):
        self.seen.append((method, dict(context.invocation_metadata()).get("authorization")))

    def GetModel(self, request, context):
        self._record("GetModel", context)
        return attention_pb2.ModelInfo(name="m", embed_dim=4, num_heads=1, num_kv_heads=1,
                                       head_dim=4, num_layers=1, projections=True)

    def ListModels(self, request, context):
        self._record("ListModels", context)
        return attention_pb2.ListModelsResponse()

    def Attend(self, request, context):
        self._record("Attend", context)
        return attention_pb2.AttendResponse(request_id=request.request_id, output=request.query,
                                            session_length=request.expected_length + 1)

    def AttendStream(self, request_iterator, context):
        self._record("AttendStream", context)
        for request in request_iterator:
            yield attention_pb2.AttendResponse(request_id=request.request_id, output=request.query)

    def CreateSession(self, request, context):
        self._record("CreateSession", context)
        return attention_pb2.SessionInfo(session_id=request.session_id, model_name="m",
                                         layer_lengths=[0])

    def GetSession(self, request, context):
        self._record("GetSession", context)
        return attention_pb2.SessionInfo(session_id=request.session_id, length=1,
                                         layer_lengths=[1])

    def TruncateSession(self, request, context):
        self._record("TruncateSession", context)
        return attention_pb2.SessionInfo(session_id=request.session_id, layer_lengths=[0])

    def CloseSession(self, request, context):
        self._record("CloseSession", context)
        return attention_pb2.CloseSessionResponse()

    def Check(self, request, context):
        self._record("Check", context)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def every_call(client):
    """One call of every kind the client makes; the methods called, sorted."""
    client.health()
    client.list_models()
    client.attend(np.zeros((1, 1, 4), np.float32), model="m")
    list(client.attend_stream([{"query": np.zeros((1, 1, 4), np.float32), "model": "m"}]))
    with client.create_session(model="m") as session:  # GetModel, CreateSession
        session.step(np.zeros((1, 4), np.float32))      # Attend
        session.sync()                                  # GetSession
        session.truncate(0)                             # TruncateSession
    return sorted(["Check", "ListModels", "Attend", "AttendStream", "GetModel", "CreateSession",
                   "Attend", "GetSession", "TruncateSession", "CloseSession"])


def fake_server(credentials=None):
    service = RecordingService()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    attention_pb2_grpc.add_AttentionServiceServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(service, server)
    port = (server.add_secure_port("127.0.0.1:0", credentials) if credentials
            else server.add_insecure_port("127.0.0.1:0"))
    server.start()
    return server, service, port


class ConnectionTest(unittest.TestCase):
    """The token on every call (plaintext and mutual TLS), ATTN_TOKEN, the connection flags."""

    def setUp(self):
        self.saved_env = os.environ.pop("ATTN_TOKEN", None)

    def tearDown(self):
        os.environ.pop("ATTN_TOKEN", None)
        if self.saved_env is not None:
            os.environ["ATTN_TOKEN"] = self.saved_env

    def test_every_call_carries_the_token_over_plaintext(self):
        server, service, port = fake_server()
        try:
            with AttentionClient(f"127.0.0.1:{port}", timeout=10, token="tok-1") as client:
                methods = every_call(client)
            self.assertEqual(sorted(m for m, _ in service.seen), methods)
            self.assertEqual({a for _, a in service.seen}, {"Bearer tok-1"})
            service.seen.clear()
            with AttentionClient(f"127.0.0.1:{port}", timeout=10) as client:  # no ATTN_TOKEN
                every_call(client)
            self.assertEqual({a for _, a in service.seen}, {None})
            service.seen.clear()
            os.environ["ATTN_TOKEN"] = "from-env"
            with AttentionClient(f"127.0.0.1:{port}", timeout=10) as client:
                client.health()
            with AttentionClient(f"127.0.0.1:{port}", timeout=10, token=None) as client:
                client.health()
            self.assertEqual(service.seen, [("Check", "Bearer from-env"), ("Check", None)])
        finally:
            server.stop(None)

    def test_mutual_tls_from_the_connection_flags(self):
        certs = tempfile.mkdtemp()
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testing",
                              "make_test_certs.sh")
        if subprocess.run([script, certs], capture_output=True).returncode != 0:
            self.skipTest("make_test_certs.sh (openssl) failed")

        def read(name):
            with open(os.path.join(certs, name), "rb") as f:
                return f.read()
        credentials = grpc.ssl_server_credentials([(read("server.key"), read("server.pem"))],
                                                  root_certificates=read("ca.pem"),
                                                  require_client_auth=True)
        server, service, port = fake_server(credentials)
        try:
            parser = argparse.ArgumentParser()
            add_connection_flags(parser)
            tls = [f"--tls_ca_file={certs}/ca.pem", f"--tls_cert_file={certs}/client.pem",
                   f"--tls_key_file={certs}/client.key"]
            os.environ["ATTN_TOKEN"] = "env-tok"
            args = parser.parse_args([f"--target=localhost:{port}", *tls,
                                      "--tls_server_name=attention-server"])
            with AttentionClient(timeout=10, **connection_options(args)) as client:
                methods = every_call(client)
            self.assertEqual(sorted(m for m, _ in service.seen), methods)
            self.assertEqual({a for _, a in service.seen}, {"Bearer env-tok"})
            # No client certificate: the handshake fails.
            args = parser.parse_args([f"--target=127.0.0.1:{port}", tls[0], "--token=t"])
            with AttentionClient(timeout=5, **connection_options(args)) as client:
                with self.assertRaises(AttentionError) as ctx:
                    client.health()
                self.assertEqual(ctx.exception.code, grpc.StatusCode.UNAVAILABLE)
        finally:
            server.stop(None)
            subprocess.run(["rm", "-rf", certs])

    def test_bad_options_raise_naming_them(self):
        with self.assertRaisesRegex(ValueError, "tls_ca_file: cannot read '/nonexistent/ca.pem'"):
            AttentionClient("x:1", tls_ca_file="/nonexistent/ca.pem")
        with self.assertRaisesRegex(ValueError, "tls_cert_file and tls_key_file: both or neither"):
            AttentionClient("x:1", tls_cert_file="c.pem")
        with self.assertRaises(ValueError) as ctx:
            AttentionClient("x:1", token="Bearer secret")
        self.assertNotIn("secret", str(ctx.exception))


if __name__ == "__main__":
    unittest.main(verbosity=2)
