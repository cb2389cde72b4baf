"""Sessions behind a consistent-hash balancer (session_affinity_test.sh).

30 concurrent sessions go through nginx (hash $http_x_session_id consistent)
to three replicas. Each session picks its id, sends it as x-session-id on
every call (CreateSession included), prefills and steps. Checks:
  1. every session lives on exactly one replica (GetSession on each replica
     directly: one answers with the full length, the others NOT_FOUND),
     and no replica saw a session it did not hold
     (attn_session_not_found_total is 0 everywhere);
  2. each session's last step equals a one-shot causal Attend of its whole
     sequence on a single replica (the same built-in weights everywhere);
  3. after one replica is SIGKILLed, its sessions' steps get NOT_FOUND and
     every other session goes on to the right result.

Environment: ATTN_LB (nginx), ATTN_REPLICAS (comma-separated gRPC targets),
ATTN_METRICS (comma-separated /metrics URLs, same order), ATTN_PIDS (the
replicas' pids, same order). Runs under /usr/bin/python3.
"""

import concurrent.futures
import os
import secrets
import signal
import sys
import time
import urllib.request

import grpc
import numpy as np

from attention.v1 import attention_pb2, attention_pb2_grpc

LB = os.environ["ATTN_LB"]
REPLICAS = os.environ["ATTN_REPLICAS"].split(",")
METRICS = os.environ["ATTN_METRICS"].split(",")
PIDS = [int(p) for p in os.environ["ATTN_PIDS"].split(",")]
SESSIONS, PREFILL, STEPS, EMBED = 30, 12, 6, 512
TIMEOUT = 30


def tensor(x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    return attention_pb2.Tensor(dtype=attention_pb2.FLOAT32, shape=list(x.shape),
                                raw_data=x.tobytes())


def output(response):
    t = response.output
    return np.frombuffer(t.raw_data, dtype=np.float32).reshape(list(t.shape))


def stub(target):
    return attention_pb2_grpc.AttentionServiceStub(grpc.insecure_channel(target))


class Session:
    def __init__(self, lb, index):
        self.lb = lb
        self.id = "t-%02d-%s" % (index, secrets.token_hex(16))
        self.meta = (("x-session-id", self.id),)
        rng = np.random.default_rng(1000 + index)
        self.tokens = rng.uniform(-1, 1, (PREFILL + 2 * STEPS, EMBED)).astype(np.float32)
        self.length = 0
        self.last = None

    def create(self):
        self.lb.CreateSession(attention_pb2.CreateSessionRequest(
            model_name="default", session_id=self.id), metadata=self.meta, timeout=TIMEOUT)

    def attend(self, rows):
        response = self.lb.Attend(attention_pb2.AttendRequest(
            model_name="default", query=tensor(rows), causal=True, session_id=self.id,
            expected_length=self.length), metadata=self.meta, timeout=TIMEOUT)
        self.length += rows.shape[0]
        assert response.session_length == self.length, (response.session_length, self.length)
        self.last = output(response)[-1]

    def prefill(self):
        self.attend(self.tokens[:PREFILL])

    def step(self):
        self.attend(self.tokens[self.length:self.length + 1])


def metric(url, name):
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def check_matches_one_shot(direct, s):
    """The session's last output row equals a causal Attend of its whole sequence."""
    full = direct.Attend(attention_pb2.AttendRequest(
        model_name="default", query=tensor(s.tokens[:s.length]), causal=True), timeout=TIMEOUT)
    want = output(full)[-1]
    err = float(np.max(np.abs(s.last - want)) / max(1e-6, float(np.max(np.abs(want)))))
    assert err < 1e-4, "session %s: last step differs from the one-shot result by %g" % (s.id, err)


def owners(s):
    """Indices of the replicas that hold session s, with its length there."""
    found = []
    for i, target in enumerate(REPLICAS):
        try:
            info = stub(target).GetSession(attention_pb2.GetSessionRequest(session_id=s.id),
                                           timeout=TIMEOUT)
            found.append((i, info.length))
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), e
    return found


def main():
    lb = stub(LB)
    sessions = [Session(lb, i) for i in range(SESSIONS)]
    with concurrent.futures.ThreadPoolExecutor(SESSIONS) as pool:
        list(pool.map(lambda s: (s.create(), s.prefill()), sessions))
        for _ in range(STEPS):
            list(pool.map(Session.step, sessions))

    # 1. One replica per session, and every step found its session. The
    # metrics first: the GetSession probes below count as not-found calls on
    # the replicas that do not hold the session.
    active = []
    for i, url in enumerate(METRICS):
        assert metric(url, "attn_session_not_found_total") == 0, "replica %d saw a stranger" % i
        active.append(metric(url, "attn_sessions_active"))
    where = {}
    for s in sessions:
        found = owners(s)
        assert len(found) == 1, "session %s is on replicas %s" % (s.id, found)
        assert found[0][1] == s.length, (s.id, found, s.length)
        where[s.id] = found[0][0]
    per_replica = [sum(1 for r in where.values() if r == i) for i in range(len(REPLICAS))]
    print("sessions per replica:", per_replica)
    assert sum(1 for n in per_replica if n > 0) >= 2, "the balancer used one replica only"
    assert active == per_replica, (active, per_replica)
    print("every session's steps landed on one replica")

    # 2. Equal to a single-server run.
    direct = stub(REPLICAS[0])
    for s in sessions:
        check_matches_one_shot(direct, s)
    print("every session equals the one-shot causal result")

    # 3. Kill the replica with the most sessions.
    victim = max(range(len(REPLICAS)), key=lambda i: per_replica[i])
    os.kill(PIDS[victim], signal.SIGKILL)
    time.sleep(0.5)  # the process is gone; nothing here waits on a timing
    lost = [s for s in sessions if where[s.id] == victim]
    kept = [s for s in sessions if where[s.id] != victim]
    print("killed replica %d holding %d sessions" % (victim, len(lost)))
    for s in lost:
        try:
            s.step()
            raise AssertionError("session %s survived its replica" % s.id)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, (s.id, e.code(), e.details())
            assert "unknown session" in e.details(), e.details()
    with concurrent.futures.ThreadPoolExecutor(len(kept)) as pool:
        for _ in range(STEPS):
            list(pool.map(Session.step, kept))
    survivor = stub(REPLICAS[next(i for i in range(len(REPLICAS)) if i != victim)])
    for s in kept:
        check_matches_one_shot(survivor, s)
    print("the %d sessions of the killed replica got NOT_FOUND; the other %d went on"
          % (len(lost), len(kept)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
