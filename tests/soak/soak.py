"""Soak driver for attention-server (run by soak_test.sh, under /usr/bin/python3).

Runs a mix of concurrent load against one server for --duration seconds,
after a warm-up with the same mix, and checks the server's health, resources
and counters against what the clients saw. Each case uses its own model of
the repository soak_test.sh writes, so the server's attn_requests_total{model,
code} can be compared case by case:

  load      unary Attend and AttendStream (up to STREAM_WINDOW in flight)
            -> OK or RESOURCE_EXHAUSTED (shed: the queue bound is small)
  cancel    unary calls and streams cancelled mid-call -> CANCELLED (or the
            answer, OK or RESOURCE_EXHAUSTED, when it came first)
  deadline  unary calls with 2..40 ms deadlines while the queue is busy
            -> DEADLINE_EXCEEDED or OK
  bad       malformed requests (shapes, lengths, NaN, dtype, payload size)
            -> INVALID_ARGUMENT; an unknown model -> NOT_FOUND (model "")
  big       a 17 MiB request, over --max_message_bytes -> RESOURCE_EXHAUSTED from
            gRPC itself (never reaches the service: no server count)
  probs     return_attention_probs whose response would exceed the message
            limit (batch=5 seq=4096 lengths=1 bfloat16: 2.5 GiB of probs; and
            one of 32 MiB) -> INVALID_ARGUMENT naming the size
  killed    child processes SIGKILLed while their stream has requests in
            flight -> the server answers OK, CANCELLED or RESOURCE_EXHAUSTED
  /metrics  scraped twice a second

Exit 0 when every check passes, 1 with the failed checks listed.
"""

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np

from attention.v1 import attention_pb2, attention_pb2_grpc
from attention_client.tensors import encode as tensor

E = 64  # embed_dim of every soak model (soak_test.sh writes them)
STREAM_WINDOW = 96  # requests in flight per load stream
OK, RE, IA, NF, DE, CA = ("OK", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "NOT_FOUND",
                          "DEADLINE_EXCEEDED", "CANCELLED")
# gRPC's timer manager starts a thread when all of its threads are running
# timers and never retires one until shutdown (grpc timer_manager.cc: "The
# number of timer threads is always increasing"), so those may stay above the
# start count by a few; every other thread must go.
GRPC_TIMER_THREAD = "grpc_global_tim"
MAX_TIMER_THREAD_GROWTH = 4
CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
                   ("grpc.enable_retries", 0)]


def request(model, batch, seq, rng, dtype="float32", **fields):
    q = rng.standard_normal((batch, seq, E), dtype=np.float32)
    return attention_pb2.AttendRequest(model_name=model, query=tensor(q, dtype), **fields)


def load_request(model, rng, request_id=""):
    """A small random request: batch 1-4, seq 4-192, fp32 or bf16, causal or not, ragged."""
    batch, seq = int(rng.integers(1, 5)), int(rng.integers(4, 193))
    r = request(model, batch, seq, rng, "bfloat16" if rng.random() < 0.3 else "float32",
                causal=bool(rng.random() < 0.5), request_id=request_id)
    if rng.random() < 0.3:
        r.query_lengths.extend(int(n) for n in rng.integers(1, seq + 1, batch))
    return r


def malformed_requests(rng):
    """(name, request, expected code) for each malformed kind."""
    good = request("bad", 2, 8, rng)
    out = []

    def variant(name, change, code=IA):
        r = attention_pb2.AttendRequest()
        r.CopyFrom(good)
        change(r)
        out.append((name, r, code))

    variant("embed_dim", lambda r: r.query.CopyFrom(tensor(np.zeros((2, 8, E // 2), np.float32))))
    variant("rank", lambda r: r.query.CopyFrom(tensor(np.zeros((2, 2, 8, E), np.float32))))
    variant("zero_dim", lambda r: r.query.CopyFrom(tensor(np.zeros((0, 8, E), np.float32))))
    variant("raw_size", lambda r: setattr(r.query, "raw_data", r.query.raw_data[:-4]))
    variant("length_too_big", lambda r: r.query_lengths.extend([8, 9]))
    variant("length_count", lambda r: r.query_lengths.extend([8]))
    variant("length_negative", lambda r: r.query_lengths.extend([-1, 8]))
    variant("dtype_unspecified", lambda r: setattr(r.query, "dtype", attention_pb2.DATA_TYPE_UNSPECIFIED))
    variant("dtype_float16", lambda r: setattr(r.query, "dtype", attention_pb2.FLOAT16))
    variant("no_query", lambda r: r.ClearField("query"))
    variant("key_without_value", lambda r: r.key.CopyFrom(r.query))
    nan = rng.standard_normal((2, 8, E), dtype=np.float32)
    nan[1, 3, 5] = np.nan
    variant("nan", lambda r: r.query.CopyFrom(tensor(nan)))
    inf = rng.standard_normal((2, 8, E), dtype=np.float32)
    inf[0, 0, 0] = np.inf
    variant("inf_bf16", lambda r: r.query.CopyFrom(tensor(inf, "bfloat16")))
    variant("seq_over_max", lambda r: r.query.CopyFrom(tensor(np.zeros((1, 4097, E), np.float32))))
    variant("unknown_model", lambda r: setattr(r, "model_name", "no_such_model"), NF)
    return out


def code_of(error):
    return error.code().name if isinstance(error, grpc.RpcError) else "EXCEPTION"


class Tally:
    """What the clients saw, per model (the server's label) and per case.

    definite[model][code]: requests the server counted under the code the
    client saw. uncertain[model][frozenset]: requests whose server outcome
    the client cannot know (it cancelled, its deadline passed, it was
    killed), with the codes the server may have counted for them (or none:
    gRPC may end a call before it reaches the service).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.definite = collections.defaultdict(collections.Counter)
        self.uncertain = collections.defaultdict(collections.Counter)
        self.by_case = collections.defaultdict(collections.Counter)
        self.latency_ok = []
        self.unexpected = []  # (case, code, detail)
        self.notes = collections.Counter()

    def saw(self, case, model, code, expected, server=None, latency=None, detail=""):
        """One request of `case` ended with `code` at the client. server: None when the
        server counted `code` too, else the codes it may have counted (empty: none)."""
        with self.lock:
            self.by_case[case][code] += 1
            if code not in expected:
                if len(self.unexpected) < 50:
                    self.unexpected.append((case, code, detail[:200]))
                self.notes["unexpected"] += 1
            if server is not None:
                self.uncertain[model][frozenset(server)] += 1
            else:
                self.definite[model][code] += 1
            if latency is not None and code == OK:
                self.latency_ok.append(latency)


class Driver:
    def __init__(self, args):
        self.args = args
        self.tally = Tally()
        self.stop = threading.Event()
        self.failed = threading.Event()  # the server died
        self.channels = []
        self.children = []
        self.children_lock = threading.Lock()

    def stub(self):
        ch = grpc.insecure_channel(self.args.target, options=CHANNEL_OPTIONS)
        self.channels.append(ch)
        return attention_pb2_grpc.AttentionServiceStub(ch)

    def running(self, deadline, i, limit):
        return not self.stop.is_set() and time.monotonic() < deadline and i < limit

    # --- workers: each loops until its phase ends, bounded in count too ---

    def unary_load(self, stub, seed, deadline):
        rng = np.random.default_rng(seed)
        for i in range(10 ** 7):
            if not self.running(deadline, i, 10 ** 7):
                return
            r = load_request("load", rng)
            t0 = time.monotonic()
            try:
                stub.Attend(r, timeout=30)
                code = OK
            except grpc.RpcError as e:
                code = code_of(e)
            self.tally.saw("unary", "load", code, {OK, RE}, latency=time.monotonic() - t0)

    def stream_once(self, stub, rng, model, case, count, window, cancel_after=None):
        """One AttendStream of `count` requests with up to `window` in flight.
        cancel_after: cancel the call once that many responses have arrived."""
        sent = {}
        slots = threading.Semaphore(window)
        lock = threading.Lock()
        done = threading.Event()

        def outgoing():
            for n in range(count):
                while not slots.acquire(timeout=0.1):
                    if done.is_set() or self.stop.is_set():
                        return
                if done.is_set():
                    return
                rid = f"{case}-{n}"
                r = load_request(model, rng, rid)
                with lock:
                    sent[rid] = time.monotonic()
                yield r

        call = stub.AttendStream(outgoing(), timeout=60)
        received = 0
        expected = {OK, RE}
        try:
            for response in call:
                now = time.monotonic()
                with lock:
                    t0 = sent.pop(response.request_id, None)
                code = CODE_NAMES.get(response.status.code, str(response.status.code))
                if t0 is None:
                    self.tally.saw(case, model, "UNKNOWN_ID", set(), detail=response.request_id)
                else:
                    self.tally.saw(case, model, code, expected, latency=now - t0,
                                   detail=response.status.message)
                received += 1
                slots.release()
                if cancel_after is not None and received >= cancel_after:
                    call.cancel()
                    break
        except grpc.RpcError as e:
            if not (cancel_after is not None and e.code() == grpc.StatusCode.CANCELLED):
                self.tally.saw(case, model, "STREAM_" + code_of(e), set(), detail=str(e.details()))
        finally:
            done.set()
        with lock:
            pending = len(sent)
            sent.clear()
        for _ in range(pending):  # cancelled with these in flight: the server may have
            self.tally.saw(case, model, CA, {CA}, server={OK, RE, CA})  # answered any
        return received

    def stream_load(self, stub, seed, deadline):
        rng = np.random.default_rng(seed)
        for i in range(10 ** 6):
            if not self.running(deadline, i, 10 ** 6):
                return
            self.stream_once(stub, rng, "load", "stream", 300, STREAM_WINDOW)

    def cancels(self, stub, seed, deadline):
        rng = np.random.default_rng(seed)
        for i in range(10 ** 6):
            if not self.running(deadline, i, 10 ** 6):
                return
            if i % 4 == 3:
                self.stream_once(stub, rng, "cancel", "cancel_stream", 200, 64,
                                 cancel_after=int(rng.integers(1, 20)))
                continue
            future = stub.Attend.future(load_request("cancel", rng), timeout=30)
            time.sleep(float(rng.uniform(0, 0.004)))  # cancel while queued or computing
            if future.cancel():
                self.tally.saw("cancel_unary", "cancel", CA, {CA}, server={OK, RE, CA})
                continue
            try:
                future.result()
                code = OK
            except grpc.RpcError as e:
                code = code_of(e)
            self.tally.saw("cancel_unary", "cancel", code, {OK, RE})

    def deadlines(self, stub, seed, deadline):
        rng = np.random.default_rng(seed)
        for i in range(10 ** 6):
            if not self.running(deadline, i, 10 ** 6):
                return
            r = request("deadline", int(rng.integers(1, 3)), int(rng.integers(64, 513)), rng)
            timeout = float(rng.uniform(0.002, 0.040))
            try:
                stub.Attend(r, timeout=timeout)
                self.tally.saw("deadline", "deadline", OK, {OK, DE, RE})
            except grpc.RpcError as e:
                code = code_of(e)
                if code == DE:
                    # The server may have dropped it (DEADLINE_EXCEEDED), answered or shed it
                    # too late, or never seen it. Not CANCELLED: at its deadline the client's
                    # gRPC resets the stream, which can reach the server before the server's
                    # copy of the deadline (from grpc-timeout on arrival, so later by the
                    # transit time) has passed; the server takes such a cancel as the deadline.
                    self.tally.saw("deadline", "deadline", DE, {OK, DE, RE}, server={OK, DE, RE})
                else:
                    self.tally.saw("deadline", "deadline", code, {OK, DE, RE}, detail=str(e.details()))

    def malformed(self, stub, seed, deadline):
        rng = np.random.default_rng(seed)
        cases = malformed_requests(rng)
        for i in range(10 ** 6):
            if not self.running(deadline, i, 10 ** 6):
                return
            name, r, want = cases[i % len(cases)]
            model = "" if want == NF else "bad"
            try:
                stub.Attend(r, timeout=30)
                code, detail = OK, ""
            except grpc.RpcError as e:
                code, detail = code_of(e), e.details() or ""
            if code == want and not detail:
                code = code + "_NO_MESSAGE"
            self.tally.saw("malformed", model, code, {want}, detail=f"{name}: {detail}")
            time.sleep(0.01)  # pacing, not a timing assertion

    def oversize(self, stub, seed, deadline):
        rng = np.random.default_rng(seed)
        # Over --max_message_bytes (soak_test.sh sets 16 MiB): 17 x 4096 x 64 fp32 = 17 MiB.
        too_big = request("big", 17, 4096, rng)
        # Probabilities [5, 8, 4096, 4096] fp32 = 2.5 GiB although every length is 1.
        huge_probs = request("probs", 5, 4096, rng, "bfloat16", return_attention_probs=True)
        huge_probs.query_lengths.extend([1] * 5)
        # Probabilities [1, 8, 1024, 1024] fp32 = 32 MiB: over the message limit, under 2 GB.
        big_probs = request("probs", 1, 1024, rng, "bfloat16", return_attention_probs=True)
        cases = [("over_max_message", "big", too_big, {RE}),
                 ("huge_probs", "probs", huge_probs, {IA}),
                 ("big_probs", "probs", big_probs, {IA})]
        cases = [c for c in cases if c[0] not in self.args.skip]
        for i in range(10 ** 5):
            if not cases or not self.running(deadline, i, 10 ** 5):
                return
            name, model, r, want = cases[i % len(cases)]
            try:
                stub.Attend(r, timeout=60)
                code, detail = OK, ""
            except grpc.RpcError as e:
                code, detail = code_of(e), e.details() or ""
            if model == "probs" and code == IA and not re.search(r"\d{6} bytes", detail):
                code = IA + "_NO_SIZE"  # the message must name the response size
            # gRPC refuses a message over the limit before the service sees it.
            self.tally.saw(name, model, code, want, detail=detail,
                           server=set() if name == "over_max_message" else None)
            if i < len(cases):
                print(f"  {name}: {code} {detail[:150]}", flush=True)
            self.stop.wait(0.5)

    def killer(self, seed, deadline):
        rng = np.random.default_rng(seed)
        for i in range(10 ** 4):
            if not self.running(deadline, i, 10 ** 4):
                return
            child = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--child", f"--target={self.args.target}",
                 f"--seed={int(rng.integers(1 << 30))}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            with self.children_lock:
                self.children.append(child)
            sent = answered = 0
            answers = collections.Counter()
            kill_after = int(rng.integers(5, 150))
            # At the phase's end at the latest, however few responses it got.
            backstop = threading.Timer(max(0.0, deadline - time.monotonic()) + 5, child.kill)
            backstop.start()
            # The child writes 's' per request handed to gRPC, a code letter per response.
            while True:
                ch = child.stdout.read(1)
                if not ch:
                    break
                if ch == b"s":
                    sent += 1
                else:
                    answered += 1
                    answers[{b"o": OK, b"r": RE}.get(ch, "OTHER")] += 1
                    if answered == kill_after:
                        child.send_signal(signal.SIGKILL)
            child.wait()
            backstop.cancel()
            with self.children_lock:
                self.children.remove(child)
            for code, n in answers.items():
                for _ in range(n):
                    self.tally.saw("killed", "killed", code, {OK, RE})
            for _ in range(sent - answered):
                self.tally.saw("killed", "killed", "KILLED", {"KILLED"}, server={OK, RE, CA})
            if child.returncode != -signal.SIGKILL:
                self.tally.saw("killed", "killed", f"CHILD_EXIT_{child.returncode}", set())

    def scraper(self, deadline):
        for i in range(10 ** 6):
            if not self.running(deadline, i, 10 ** 6):
                return
            try:
                body = urllib.request.urlopen(self.args.metrics_url, timeout=10).read().decode()
                code = OK if "attn_requests_total" in body else "NO_COUNTERS"
            except Exception as e:  # noqa: BLE001 - any failure is a failed scrape
                code = f"SCRAPE_ERROR {type(e).__name__}"
            self.tally.saw("metrics_scrape", "/metrics", code, {OK}, server=set())
            self.stop.wait(0.5)

    # --- phases ---

    def run_mix(self, seconds, seed):
        deadline = time.monotonic() + seconds
        stubs = self.mix_stubs
        workers = [
            (self.unary_load, (stubs[0], seed + 1, deadline)),
            (self.unary_load, (stubs[1], seed + 2, deadline)),
            (self.stream_load, (stubs[2], seed + 3, deadline)),
            (self.stream_load, (stubs[3], seed + 4, deadline)),
            (self.cancels, (stubs[4], seed + 5, deadline)),
            (self.deadlines, (stubs[5], seed + 6, deadline)),
            (self.malformed, (stubs[6], seed + 7, deadline)),
            (self.oversize, (stubs[7], seed + 8, deadline)),
            (self.killer, (seed + 9, deadline)),
            (self.scraper, (deadline,)),
        ]
        if self.args.only:
            workers = [(f, a) for f, a in workers if f.__name__ in self.args.only]
        threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, deadline - time.monotonic()) + 120)
            if t.is_alive():
                self.stop.set()
                self.kill_children()
                raise RuntimeError(f"a worker did not finish within 120 s of the phase's end: {t}")

    def kill_children(self):
        with self.children_lock:
            for c in self.children:
                c.kill()


class ProcStats:
    """RSS, open fds and threads of a process from /proc, and their peaks."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = {"rss_mib": 0.0, "fds": 0, "threads": 0}
        self.lock = threading.Lock()

    def read(self):
        with open(f"/proc/{self.pid}/status") as f:
            status = f.read()
        rss_kib = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
        threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
        fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        now = {"rss_mib": rss_kib / 1024, "fds": fds, "threads": threads}
        with self.lock:
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
        return now

    def thread_names(self):
        """Counter of the process's thread names (for a failure message)."""
        names = collections.Counter()
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/comm") as f:
                    names[f.read().strip()] += 1
            except FileNotFoundError:
                continue
        return dict(names)

    def fd_targets(self):
        """Counter of what the process's fds point at, by kind (socket, pipe, anon_inode:...)."""
        kinds = collections.Counter()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            kinds[re.sub(r"[:\[].*", "", target) if not target.startswith("/") else target] += 1
        return dict(kinds)

    def alive(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().split(") ", 1)[1][0] != "Z"
        except FileNotFoundError:
            return False


def server_counts(metrics_url):
    """attn_requests_total as {model: Counter(code)}."""
    body = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    counts = collections.defaultdict(collections.Counter)
    for m in re.finditer(r'^attn_requests_total\{([^}]*)\} (\S+)$', body, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        counts[labels.get("model", "")][labels["code"]] += int(float(m.group(2)))
    inflight = re.search(r"^attn_inflight_requests(?:\{[^}]*\})? (\S+)$", body, re.M)
    return counts, float(inflight.group(1)) if inflight else -1


def reconcile(tally, server):
    """Per model and code: definite <= server <= definite + uncertain that allow the code;
    no server code outside what the model's cases may produce."""
    problems = []
    rows = []
    models = sorted((set(tally.definite) | set(tally.uncertain) | set(server)) - {"/metrics"})
    for model in models:
        definite = tally.definite.get(model, collections.Counter())
        uncertain = tally.uncertain.get(model, collections.Counter())
        got = server.get(model, collections.Counter())
        codes = sorted(set(definite) | set(got) | {c for s in uncertain for c in s})
        for code in codes:
            lo = definite[code]
            slack = sum(n for s, n in uncertain.items() if code in s)
            n = got[code]
            if not (lo or slack or n):
                continue  # a series the server exports at 0
            ok = lo <= n <= lo + slack
            rows.append((model or '""', code, lo, slack, n, "ok" if ok else "MISMATCH"))
            if not ok:
                problems.append(f"model {model or '<unknown>'} code {code}: server counted {n}, "
                                f"clients saw {lo} (+ up to {slack} they could not know)")
        known, unknowable, total = sum(definite.values()), sum(uncertain.values()), sum(got.values())
        if not known <= total <= known + unknowable:
            problems.append(f"model {model or '<unknown>'}: server counted {total} requests, clients "
                            f"saw {known} (+ up to {unknowable} they could not know)")
    return rows, problems


def percentile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def one_normal_request(target):
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as ch:
        stub = attention_pb2_grpc.AttentionServiceStub(ch)
        r = request("load", 2, 16, np.random.default_rng(0))
        out = stub.Attend(r, timeout=30)
        return list(out.output.shape) == [2, 16, E] and len(out.output.raw_data) == 2 * 16 * E * 4


def child_main(args):
    """A stream on model `killed` that sends until its parent SIGKILLs it."""
    rng = np.random.default_rng(args.seed)
    out = sys.stdout.buffer
    slots = threading.Semaphore(64)

    def outgoing():
        for n in range(100000):
            slots.acquire()
            out.write(b"s")
            out.flush()
            yield load_request("killed", rng, str(n))

    with grpc.insecure_channel(args.target, options=CHANNEL_OPTIONS) as ch:
        stub = attention_pb2_grpc.AttentionServiceStub(ch)
        for response in stub.AttendStream(outgoing(), timeout=120):
            code = response.status.code
            out.write(b"o" if code == 0 else b"r" if code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] else b"x")
            out.flush()
            slots.release()
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--metrics_url")
    p.add_argument("--pid", type=int)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--warmup", type=float, default=0, help="seconds of warm-up (default: duration/6, 10..30)")
    p.add_argument("--rss_growth_mib", type=float, default=64)
    p.add_argument("--settle_s", type=float, default=60)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--progress_s", type=float, default=10)
    p.add_argument("--skip", type=lambda v: set(filter(None, v.split(","))), default=set(),
                   help="oversize cases to leave out (over_max_message, huge_probs, big_probs)")
    p.add_argument("--only", type=lambda v: set(filter(None, v.split(","))), default=set(),
                   help="run only these workers (unary_load, stream_load, cancels, deadlines, "
                        "malformed, oversize, killer, scraper): to find which case a problem needs")
    p.add_argument("--child", action="store_true")
    args = p.parse_args()
    if args.child:
        return child_main(args)

    warmup = args.warmup or min(30.0, max(10.0, args.duration / 6))
    driver = Driver(args)
    driver.mix_stubs = [driver.stub() for _ in range(8)]
    proc = ProcStats(args.pid)
    failures = []

    sampling = threading.Event()

    def sampler():
        """Peaks every 0.2 s, a progress line every args.progress_s; stops everything
        if the server dies."""
        t0 = last = time.monotonic()
        for _ in range(10 ** 8):
            if sampling.is_set():
                return
            if not proc.alive():
                driver.failed.set()
                driver.stop.set()
                driver.kill_children()
                return
            try:
                now = proc.read()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if time.monotonic() - last >= args.progress_s:
                last = time.monotonic()
                with driver.tally.lock:
                    n = sum(sum(c.values()) for c in driver.tally.by_case.values())
                print(f"  t={last - t0:.0f}s rss={now['rss_mib']:.1f}MiB fds={now['fds']} "
                      f"threads={now['threads']} requests={n}", flush=True)
            sampling.wait(0.2)

    threading.Thread(target=sampler, daemon=True).start()

    def quiet(bound_s):
        """Polls until the server has nothing in flight (bounded)."""
        end = time.monotonic() + bound_s
        while time.monotonic() < end:
            if server_counts(args.metrics_url)[1] == 0:
                return True
            time.sleep(0.1)
        return False

    print(f"warm-up: {warmup:.0f} s of the mix", flush=True)
    t_start = time.monotonic()
    driver.run_mix(warmup, args.seed * 100)
    if driver.failed.is_set():
        failures.append("the server died during warm-up")
    elif not quiet(30):
        failures.append("requests still in flight 30 s after the warm-up")
    start = proc.read() if not driver.failed.is_set() else None
    start_names = proc.thread_names() if start else {}
    start_fds = proc.fd_targets() if start else {}
    with proc.lock:
        proc.peak = dict(start or proc.peak)
    print(f"start (after warm-up): {start}", flush=True)

    if not failures:
        print(f"soak: {args.duration:.0f} s of the mix", flush=True)
        driver.run_mix(args.duration, args.seed * 100 + 50)
    elapsed = time.monotonic() - t_start
    if driver.failed.is_set():
        failures.append("the server died under load (see its log)")

    end = None
    settle_s = float("nan")
    if not driver.failed.is_set() and start is not None:
        if not quiet(30):
            failures.append("requests still in flight 30 s after the load stopped")
        t0 = time.monotonic()
        while True:  # fds and threads back to their start values (poll, bounded)
            end = proc.read()
            settle_s = time.monotonic() - t0
            timers = proc.thread_names().get(GRPC_TIMER_THREAD, 0) - start_names.get(GRPC_TIMER_THREAD, 0)
            if (end["fds"] <= start["fds"] and end["threads"] - max(timers, 0) <= start["threads"]
                    and timers <= MAX_TIMER_THREAD_GROWTH):
                break
            if settle_s > args.settle_s:
                failures.append(f"fds/threads not back to start within {args.settle_s:.0f} s: "
                                f"start {start}, now {end}; threads by name: start {start_names}, "
                                f"now {proc.thread_names()}; fds: start {start_fds}, "
                                f"now {proc.fd_targets()}")
                break
            time.sleep(0.2)
        growth = end["rss_mib"] - start["rss_mib"]
        if growth > args.rss_growth_mib:
            failures.append(f"RSS grew {growth:.1f} MiB after warm-up (bound {args.rss_growth_mib:.0f} MiB)")
    sampling.set()

    t = driver.tally
    # Summary: requests by case and code.
    print("\n== requests by case and code (client side, warm-up included)")
    codes = sorted({c for cnt in t.by_case.values() for c in cnt})
    print(f"{'case':<18}" + "".join(f"{c:>20}" for c in codes) + f"{'total':>10}")
    for case in sorted(t.by_case):
        cnt = t.by_case[case]
        print(f"{case:<18}" + "".join(f"{cnt[c]:>20}" for c in codes) + f"{sum(cnt.values()):>10}")
    total = sum(sum(c.values()) for c in t.by_case.values())
    print(f"total {total} requests/scrapes in {elapsed:.0f} s")
    if t.unexpected:
        failures.append(f"{t.notes['unexpected']} responses with an unexpected code, e.g. {t.unexpected[:5]}")

    p50, p99 = percentile(t.latency_ok, 50), percentile(t.latency_ok, 99)
    print(f"\n== latency of OK load requests (unary and streamed): n={len(t.latency_ok)} "
          f"p50={p50 * 1e3:.1f} ms p99={p99 * 1e3:.1f} ms")

    print("\n== server process (/proc)")
    print(f"{'':<10}{'rss_mib':>10}{'fds':>8}{'threads':>10}")
    for name, s in (("start", start), ("peak", proc.peak), ("end", end)):
        if s:
            print(f"{name:<10}{s['rss_mib']:>10.1f}{s['fds']:>8}{s['threads']:>10}")
    if end:
        print(f"settled in {settle_s:.1f} s; RSS growth {end['rss_mib'] - start['rss_mib']:.1f} MiB "
              f"(bound {args.rss_growth_mib:.0f} MiB)")

    if not driver.failed.is_set():
        server, _ = server_counts(args.metrics_url)
        rows, problems = reconcile(t, server)
        print("\n== attn_requests_total vs clients (client_known <= server <= client_known + unknowable)")
        print(f"{'model':<10}{'code':<22}{'client_known':>13}{'unknowable':>11}{'server':>9}  check")
        for r in rows:
            print(f"{r[0]:<10}{r[1]:<22}{r[2]:>13}{r[3]:>11}{r[4]:>9}  {r[5]}")
        failures += problems
        try:
            if not one_normal_request(args.target):
                failures.append("the final normal request returned a wrong output")
        except grpc.RpcError as e:
            failures.append(f"the final normal request failed: {code_of(e)} {e.details()}")

    for ch in driver.channels:
        ch.close()
    print()
    if failures:
        for f in failures:
            print(f"FAIL: {f}")
        return 1
    print("soak: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
