"""Tests of attention_client.Session: against an in-process fake session
server (the lengths sent, x-session-id metadata on every call, recovery of a
retried step whose first attempt landed, offload layers) and, when
ATTN_TARGET is set, against a live attention-server (a prefill and steps give
the rows of a one-shot causal attend).

Run by session_test.sh under /usr/bin/python3; the fake-server tests need
no server.
"""

import concurrent.futures
import os
import threading
import unittest

import grpc
import numpy as np

from attention.v1 import attention_pb2, attention_pb2_grpc
from attention_client import AttentionClient, AttentionError, new_session_id
from attention_client import tensors

TARGET = os.environ.get("ATTN_TARGET", "")
LIVE_MODEL = os.environ.get("ATTN_SESSION_MODEL", "default")
WIDTH = 4


class FakeSessionService(attention_pb2_grpc.AttentionServiceServicer):
    """Sessions whose "attention" is a causal running sum of the key rows (the
    query rows, or k for offload models). drop_after_append: append, then
    fail UNAVAILABLE (a lost response)."""

    def __init__(self, projections=True, num_layers=1):
        self.projections = projections
        self.num_layers = num_layers
        self.sessions = {}
        self.metadata = []  # (method, x-session-id or None)
        self.requests = []
        self.drop_after_append = 0
        self.truncates = 0
        self.lock = threading.Lock()

    def _note(self, method, context):
        md = dict(context.invocation_metadata())
        self.metadata.append((method, md.get("x-session-id")))

    def _info(self, sid):
        layers = self.sessions[sid]
        return attention_pb2.SessionInfo(session_id=sid, model_name="m",
                                         length=min(len(l) for l in layers),
                                         layer_lengths=[len(l) for l in layers])

    def GetModel(self, request, context):
        return attention_pb2.ModelInfo(name="m", embed_dim=WIDTH, num_heads=2, num_kv_heads=2,
                                       head_dim=WIDTH // 2, projections=self.projections,
                                       num_layers=self.num_layers, max_seq_len=64)

    def CreateSession(self, request, context):
        with self.lock:
            self._note("CreateSession", context)
            sid = request.session_id or "server-picked"
            self.sessions[sid] = [[] for _ in range(self.num_layers)]
            return self._info(sid)

    def Attend(self, request, context):
        with self.lock:
            self._note("Attend", context)
            self.requests.append(request)
            rows = self.sessions[request.session_id][request.layer]
            if request.expected_length != len(rows):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"expected_length: the session has {len(rows)} tokens, the "
                              f"request expected {request.expected_length}")
            keys = tensors.decode(request.key if request.HasField("key") else request.query)[0]
            out = []
            for row in keys:
                rows.append(row)
                out.append(np.sum(rows, axis=0))
            response = attention_pb2.AttendResponse(
                output=tensors.encode(np.array(out, np.float32)[None]),
                session_length=len(rows))
            if self.drop_after_append > 0:
                self.drop_after_append -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "response lost")
            return response

    def GetSession(self, request, context):
        with self.lock:
            self._note("GetSession", context)
            return self._info(request.session_id)

    def TruncateSession(self, request, context):
        with self.lock:
            self._note("TruncateSession", context)
            self.truncates += 1
            for layer in self.sessions[request.session_id]:
                del layer[request.length:]
            return self._info(request.session_id)

    def CloseSession(self, request, context):
        with self.lock:
            self._note("CloseSession", context)
            if self.sessions.pop(request.session_id, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "unknown session")
            return attention_pb2.CloseSessionResponse()


class FakeServerTest(unittest.TestCase):
    def start(self, **kwargs):
        self.service = FakeSessionService(**kwargs)
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        attention_pb2_grpc.add_AttentionServiceServicer_to_server(self.service, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.client = AttentionClient(f"127.0.0.1:{port}", timeout=10)
        self.addCleanup(self.server.stop, None)
        self.addCleanup(self.client.close)

    def test_lengths_causal_and_metadata_on_every_call(self):
        self.start()
        rows = np.arange(3 * WIDTH, dtype=np.float32).reshape(3, WIDTH)
        with self.client.create_session(model="m", max_tokens=16) as s:
            self.assertTrue(s.id.startswith("s-"))
            r = s.prefill(rows)
            self.assertEqual(r.output.shape, (3, WIDTH))
            self.assertEqual(r.session_length, 3)
            step = s.step(np.ones(WIDTH, np.float32))  # one row as a 1-D array
            np.testing.assert_array_equal(step.output[0], rows.sum(axis=0) + 1)
            self.assertEqual(s.length, 4)
            self.assertEqual(s.truncate(2).length, 2)
            self.assertEqual(s.lengths, [2])
            self.assertEqual(s.info().layer_lengths, [2])
            sid = s.id
        self.assertTrue(s.closed)
        self.assertEqual([r.expected_length for r in self.service.requests], [0, 3])
        self.assertTrue(all(r.causal and r.session_id == sid for r in self.service.requests))
        methods = [m for m, _ in self.service.metadata]
        self.assertEqual(methods, ["CreateSession", "Attend", "Attend", "TruncateSession",
                                   "GetSession", "CloseSession"])
        self.assertEqual({v for _, v in self.service.metadata}, {sid})

    def test_a_retried_step_whose_first_attempt_landed_is_appended_once(self):
        self.start()
        with self.client.create_session(model="m") as s:
            s.prefill(np.ones((2, WIDTH), np.float32))
            self.service.drop_after_append = 1
            with self.assertRaises(AttentionError) as ctx:
                s.step(np.full(WIDTH, 5, np.float32))
            self.assertEqual(ctx.exception.code, grpc.StatusCode.UNAVAILABLE)
            self.assertEqual(s.lengths, [2])
            r = s.step(np.full(WIDTH, 5, np.float32))
            self.assertTrue(r.recovered)
            self.assertEqual(r.session_length, 3)
            np.testing.assert_array_equal(r.output[0], np.full(WIDTH, 7, np.float32))
            self.assertEqual(len(self.service.sessions[s.id][0]), 3)
            self.assertEqual(self.service.truncates, 1)

    def test_offload_layers_and_bad_rows(self):
        self.start(projections=False, num_layers=2)
        with self.client.create_session(model="m", session_id="chosen-1") as s:
            self.assertEqual(s.id, "chosen-1")
            q = np.ones((2, WIDTH), np.float32)
            for layer in range(2):
                r = s.prefill(q, 2 * q, 3 * q, layer=layer)
                np.testing.assert_array_equal(r.output[1], np.full(WIDTH, 4, np.float32))
            self.assertEqual(s.lengths, [2, 2])
            with self.assertRaisesRegex(ValueError, "offload model"):
                s.step(q)
            with self.assertRaisesRegex(ValueError, "layer: expected 0..1"):
                s.step(q, q, q, layer=2)
            with self.assertRaisesRegex(ValueError, r"k: expected \[n, 4\]"):
                s.step(q, np.ones((2, 3)), q)
        self.assertEqual(len(self.service.requests), 2)
        self.assertNotEqual(new_session_id(), new_session_id())


@unittest.skipUnless(TARGET, "ATTN_TARGET (a live attention-server) not set")
class LiveServerTest(unittest.TestCase):
    def test_prefill_and_steps_match_a_one_shot_causal_attend(self):
        rng = np.random.default_rng(3)
        with AttentionClient(TARGET, timeout=30) as client:
            info = client.get_model(LIVE_MODEL)
            self.assertTrue(info.projections)
            tokens = rng.standard_normal((12, info.embed_dim), dtype=np.float32)
            with client.create_session(model=LIVE_MODEL) as s:
                outs = [s.prefill(tokens[:8]).output]
                outs += [s.step(tokens[i]).output for i in range(8, 12)]
                self.assertEqual(s.info().length, 12)
                self.assertEqual(s.truncate(10).length, 10)
                again = s.step(tokens[10]).output  # the rolled-back token, recomputed
            want = client.attend(tokens[None], model=LIVE_MODEL, causal=True).output[0]
            got = np.concatenate(outs)
            scale = float(np.max(np.abs(want)))
            np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=0)
            np.testing.assert_allclose(again[0], want[10], atol=1e-4 * scale, rtol=0)
            with self.assertRaises(AttentionError) as ctx:
                s.step(tokens[0])
            self.assertEqual(ctx.exception.code, grpc.StatusCode.FAILED_PRECONDITION)


if __name__ == "__main__":
    unittest.main(verbosity=2)
