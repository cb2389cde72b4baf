"""Live model lifecycle end to end, under load, against the real binary.

Run by lifecycle_test.sh, once per server it starts:

  lifecycle_test.py poll      a server in --model_control_mode=poll
                              (--repository_poll_interval=ATTN_POLL_MS):
                              model directories added (renamed into place,
                              and written in place), changed (reloads: in
                              place, by rename and by a ConfigMap-style
                              symlink swap; one broken) and removed while load
                              generator threads call model A throughout.
  lifecycle_test.py explicit  a server in --model_control_mode=explicit with
                              --auth_tokens_file: RepositoryModelLoad and
                              RepositoryModelUnload (admin token) under load,
                              and their refusals.

Environment: ATTN_TARGET (gRPC), ATTN_METRICS (the /metrics URL), ATTN_LOG
(the server's log file), ATTN_REPO (its --model_repository), ATTN_WORK (a
scratch directory on the same file system), and for explicit
ATTN_ADMIN_TOKEN and ATTN_INFER_TOKEN.

What holds throughout: no request to a model that serves fails (each
response code is counted and printed), and every response is the output of
exactly one version, the one serving when it was admitted: a response
received before a change was written is the old version's, one sent after
the new version was seen is the new one's, and in each load thread the
versions never go back. Expected outputs come from the server itself (one
request once a version is seen serving); two seeds differ by far more than
the tolerance, so matching one of them within it is unambiguous.

Timings are printed, not asserted tightly: the bounds are generous (the
machine may be busy with other work).
"""

import collections
import os
import random
import shutil
import statistics
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oip_test import attend_request, infer_request, output_of, wire_values  # noqa: E402

from attention.v1 import attention_pb2_grpc  # noqa: E402
from inference import grpc_service_pb2 as oip  # noqa: E402
from inference import grpc_service_pb2_grpc as oip_grpc  # noqa: E402

TARGET = os.environ.get("ATTN_TARGET", "")
METRICS = os.environ.get("ATTN_METRICS", "")
LOG = os.environ.get("ATTN_LOG", "")
REPO = os.environ.get("ATTN_REPO", "")
WORK = os.environ.get("ATTN_WORK", "")
POLL = int(os.environ.get("ATTN_POLL_MS", "200")) / 1000.0
TIMEOUT = 30
# What a load (read, build, warm up) of these tiny models may take on a busy
# machine, over and above the poll intervals: generous on purpose.
LOAD_SLACK = 15.0
# The settle rule: a change acts once two polls in a row saw it.
APPEAR_BOUND = 2 * POLL + LOAD_SLACK

E, HEADS, SEQ = 32, 4, 4
# lifecycle_test.sh writes model A with this seed (both servers).
SEED_A = {"poll": 11, "explicit": 21}

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
        print("FAIL:", message, flush=True)
    return condition


def config_text(seed, embed_dim=E):
    return (f"embed_dim: {embed_dim}\nnum_heads: {HEADS}\nrandom_weights_seed: {seed}\n"
            f"max_seq_len: 64\n")


BROKEN = config_text(99, embed_dim=30)  # 30 is not divisible by 4 heads


def write_in_place(model, text):
    os.makedirs(os.path.join(REPO, model), exist_ok=True)
    with open(os.path.join(REPO, model, "config.pbtxt"), "w") as f:
        f.write(text)
    return time.monotonic()


def write_by_rename(model, text):
    """The config written beside, then renamed over the old one (a new
    inode, as an atomic deploy does)."""
    tmp = os.path.join(REPO, model, ".config.pbtxt.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(REPO, model, "config.pbtxt"))
    return time.monotonic()


def write_by_configmap_swap(model, text):
    """As the kubelet updates a mounted ConfigMap: the files go into a new
    hidden directory, the `..data` symlink is swapped to it, config.pbtxt is
    a symlink through `..data`, and the old directory is removed."""
    d = os.path.join(REPO, model)
    fresh = f"..{time.monotonic_ns()}"
    os.makedirs(os.path.join(d, fresh))
    with open(os.path.join(d, fresh, "config.pbtxt"), "w") as f:
        f.write(text)
    data = os.path.join(d, "..data")
    old = os.readlink(data) if os.path.islink(data) else None
    os.symlink(fresh, os.path.join(d, "..data_tmp"))
    os.replace(os.path.join(d, "..data_tmp"), data)
    if not os.path.islink(os.path.join(d, "config.pbtxt")):
        os.symlink("..data/config.pbtxt", os.path.join(d, ".config.pbtxt.link"))
        os.replace(os.path.join(d, ".config.pbtxt.link"), os.path.join(d, "config.pbtxt"))
    t = time.monotonic()
    if old:
        shutil.rmtree(os.path.join(d, old))
    return t


def add_by_rename(model, text):
    staged = os.path.join(WORK, "staging", model)
    os.makedirs(staged)
    with open(os.path.join(staged, "config.pbtxt"), "w") as f:
        f.write(text)
    os.rename(staged, os.path.join(REPO, model))
    return time.monotonic()


def remove_model_dir(model):
    gone = os.path.join(WORK, "removed-" + model)
    os.rename(os.path.join(REPO, model), gone)
    t = time.monotonic()
    shutil.rmtree(gone)
    return t


class Client:
    def __init__(self, token=None):
        self.channel = grpc.insecure_channel(TARGET)
        self.oip = oip_grpc.GRPCInferenceServiceStub(self.channel)
        self.attn = attention_pb2_grpc.AttentionServiceStub(self.channel)
        self.md = (("authorization", f"Bearer {token}"),) if token else ()

    def call(self, method, request, metadata=None, timeout=TIMEOUT):
        return method(request, timeout=timeout, metadata=self.md if metadata is None else metadata)

    def index(self):
        r = self.call(self.oip.RepositoryIndex, oip.RepositoryIndexRequest())
        return {m.name: m for m in r.models}

    def versions(self, model):
        try:
            r = self.call(self.oip.ModelMetadata, oip.ModelMetadataRequest(name=model))
            return list(r.versions)
        except grpc.RpcError as e:
            return e.code().name

    def ready(self, model):
        try:
            return self.call(self.oip.ModelReady, oip.ModelReadyRequest(name=model)).ready
        except grpc.RpcError as e:
            return e.code().name

    def infer(self, model):
        return output_of(self.call(self.oip.ModelInfer, infer_req(model)), "output")[2].copy()

    def attend(self, model):
        return wire_values(self.call(self.attn.Attend, attend_req(model)).output).copy()

    def code_of(self, method, request, metadata=None):
        """(code name, details) of a call."""
        try:
            self.call(method, request, metadata)
            return "OK", ""
        except grpc.RpcError as e:
            return e.code().name, e.details()


_phase = random.Random(5)
_rng = np.random.default_rng(7)
Q, K, V = (_rng.standard_normal((1, SEQ, E)).astype(np.float32) for _ in range(3))


def infer_req(model):
    return infer_request(model, [("query", "FP32", Q), ("key", "FP32", K), ("value", "FP32", V)],
                         raw=True)


def attend_req(model):
    return attend_request(model, [("query", "FP32", Q), ("key", "FP32", K), ("value", "FP32", V)])


def same(a, b):
    return a is not None and b is not None and a.shape == b.shape and np.allclose(
        a, b, rtol=1e-4, atol=1e-5)


class Load:
    """Threads calling one model in a loop (ModelInfer, and Attend), each
    recording (thread, send time, receive time, code, output)."""

    def __init__(self, client, model, n_infer=3, n_attend=1):
        self.client, self.model = client, model
        self.records = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i, i >= n_infer), daemon=True)
                        for i in range(n_infer + n_attend)]
        for t in self.threads:
            t.start()

    def run(self, tid, attend):
        c = self.client
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                out = c.attend(self.model) if attend else c.infer(self.model)
                code = "OK"
            except grpc.RpcError as e:
                out, code = None, e.code().name
            t1 = time.monotonic()
            with self.lock:
                self.records.append((tid, t0, t1, code, out))

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(TIMEOUT + 5)
        return self.records

    def count(self):
        with self.lock:
            return len(self.records)

    def codes(self):
        return collections.Counter(r[3] for r in self.records)


def wait_for(what, predicate, bound, step=0.01):
    """Polls predicate() every `step` until true; the seconds it took, or
    None (a failure recorded) after `bound`."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > bound:
            check(False, f"{what}: not within {bound:.1f} s")
            return None
        time.sleep(step)


def log_events(event, model):
    with open(LOG) as f:
        return [line for line in f if f" event={event} " in line and f"model={model}" in line]


def metric_samples(name):
    """{labels text: value} of every sample of `name` on /metrics."""
    text = urllib.request.urlopen(METRICS, timeout=TIMEOUT).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            out[key[len(name):]] = float(value)
    return out


def metric(name, **labels):
    total = 0.0
    for key, value in metric_samples(name).items():
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


class Versions:
    """The versions of one model seen serving: expected output and the
    window each could answer in."""

    def __init__(self):
        self.out = {}      # version -> output
        self.change = {}   # version -> when its files were written (monotonic)
        self.seen = {}     # version -> when it was first seen serving

    def add(self, version, out, changed, seen):
        for v, o in self.out.items():
            check(not same(o, out), f"version {version}'s output equals version {v}'s")
        self.out[version], self.change[version], self.seen[version] = out, changed, seen

    def which(self, out):
        return [v for v, o in self.out.items() if same(o, out)]

    def verify(self, records, label):
        """Every OK response is one version's, inside that version's window,
        and no thread's versions go back. Returns per-version counts."""
        counts = collections.Counter()
        last = {}
        bad = 0
        for tid, t0, t1, code, out in sorted(records, key=lambda r: r[1]):
            if code != "OK":
                continue
            match = self.which(out)
            if len(match) != 1:
                bad += 1
                if bad <= 3:
                    check(False, f"{label}: a response matches versions {match} (sent at {t0:.3f})")
                continue
            v = match[0]
            counts[v] += 1
            later = [w for w in self.seen if w > v]
            if t1 < self.change[v] and v != min(self.out):
                check(False, f"{label}: version {v} answered before its files were written")
            if later and t0 > self.seen[min(later)]:
                check(False, f"{label}: sent after version {min(later)} was seen serving, answered "
                             f"by version {v}")
            if last.get(tid, 0) > v:
                check(False, f"{label}: thread {tid} went back from version {last[tid]} to {v}")
            last[tid] = v
        check(bad == 0, f"{label}: {bad} responses match no single version")
        return counts


def latency_report(records, windows, label):
    def pct(xs, p):
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else float("nan")
    during, steady = [], []
    for _, t0, t1, code, _ in records:
        if code != "OK":
            continue
        (during if any(a <= t0 <= b for a, b in windows) else steady).append(t1 - t0)
    print(f"{label} request latency (informal): steady n={len(steady)} "
          f"p50={pct(steady, .5):.2f} ms p99={pct(steady, .99):.2f} ms; during reloads "
          f"n={len(during)} p50={pct(during, .5):.2f} ms p99={pct(during, .99):.2f} ms")


def summary(label, values):
    if not values:
        return f"{label}: none"
    return (f"{label}: n={len(values)} min={min(values) * 1000:.0f} ms "
            f"median={statistics.median(values) * 1000:.0f} ms max={max(values) * 1000:.0f} ms")


def print_load_durations():
    s = metric_samples("attn_model_load_duration_seconds_sum")
    n = metric_samples("attn_model_load_duration_seconds_count")
    for key in sorted(s):
        count = n.get(key, 0)
        mean = s[key] / count * 1000 if count else float("nan")
        print(f"server attn_model_load_duration_seconds{key}: sum={s[key]:.4f} s count={count:.0f} "
              f"mean={mean:.1f} ms")


def finish_load(load, versions, label):
    """Stops `load` (after a last half second on the latest version) and
    checks it: no failed request, every response one version's."""
    time.sleep(0.5)
    records = load.stop()
    codes = load.codes()
    print(f"{label} load: {len(records)} requests, codes {dict(codes)}")
    check(set(codes) == {"OK"}, f"{label}: failed requests under load: {dict(codes)}")
    counts = versions.verify(records, label)
    print(f"{label} responses by version: {dict(sorted(counts.items()))}")
    return records


def reload_and_wait(c, model, versions, version, writer, text):
    """Writes `text` for `model` with `writer`, waits for `version` to serve;
    returns (seconds from the write to the new version answering, window)."""
    changed = writer(model, text)
    took = wait_for(f"{model} version {version} serving",
                    lambda: c.versions(model) == [str(version)], APPEAR_BOUND)
    seen = time.monotonic()
    out = c.infer(model)
    check(same(c.attend(model), out), f"{model} v{version}: Attend and ModelInfer differ")
    versions.add(version, out, changed, seen)
    return (seen - changed if took is not None else None), (changed, seen + 0.2)


def poll_phase():
    c = Client()
    a, a_versions = "A", Versions()
    idx = c.index()
    check(idx.get(a) is not None and idx[a].state == "READY" and idx[a].version == "1",
          f"A at start: {idx.get(a)}")
    a_versions.add(1, c.infer(a), 0.0, time.monotonic())

    # 3. The repository RPCs are refused in poll mode, naming the mode that allows them.
    for rpc, req in ((c.oip.RepositoryModelLoad, oip.RepositoryModelLoadRequest(model_name=a)),
                     (c.oip.RepositoryModelUnload, oip.RepositoryModelUnloadRequest(model_name=a))):
        code, details = c.code_of(rpc, req)
        check(code == "FAILED_PRECONDITION" and "--model_control_mode=explicit" in details,
              f"poll mode {rpc._method}: {code} {details!r}")

    load = Load(Client(), a)
    time.sleep(1.0)  # steady state before any change
    windows, reloads = [], []

    # Add B, renamed into place.
    t = add_by_rename("B", config_text(31))
    took = wait_for("B ready after rename into place",
                    lambda: c.ready("B") is True
                    and getattr(c.index().get("B"), "state", "") == "READY",
                    APPEAR_BOUND)
    print(f"B (renamed into place) ready {took and took * 1000:.0f} ms after the rename "
          f"(bound {APPEAR_BOUND:.1f} s: 2 x {POLL * 1000:.0f} ms + {LOAD_SLACK:.0f} s slack)")
    windows.append((t, time.monotonic()))
    b = c.index()["B"]
    check(b.version == "1" and b.reason == "", f"B in RepositoryIndex: {b}")
    b_out = c.infer("B")
    check(same(c.attend("B"), b_out) and not same(b_out, a_versions.out[1]),
          "B serves its own weights")
    load_b = Load(Client(), "B", n_infer=1, n_attend=0)

    # Add B2 written in place, its config in two writes: the half-written file
    # lasts less than a poll interval, so no two polls in a row see it and it
    # must never be loaded (no failed load).
    os.makedirs(os.path.join(REPO, "B2"))
    text = config_text(32)
    with open(os.path.join(REPO, "B2", "config.pbtxt"), "w") as f:
        f.write(text[:20])
        f.flush()
        half = time.monotonic()
        time.sleep(POLL / 8)
        f.write(text[20:])
    t = time.monotonic()
    # Stalled for a whole interval (a busy machine): two polls may have seen it.
    half_seen_once = t - half < POLL
    took = wait_for("B2 ready after writing in place", lambda: c.ready("B2") is True, APPEAR_BOUND)
    print(f"B2 (written in place) ready {took and took * 1000:.0f} ms after the write")
    windows.append((t, time.monotonic()))
    b2 = c.index().get("B2")
    check(b2 is not None and b2.state == "READY" and b2.version == "1", f"B2: {b2}")
    if half_seen_once:
        check(not log_events("model_load_failed", "B2"), "B2's half-written config was loaded")
    else:
        print(f"note: B2's half-written config lasted {(t - half) * 1000:.0f} ms, not checked")
    check(same(c.infer("B2"), c.attend("B2")), "B2 serves")

    # Reloads of A: seeds change (in place and by rename), one broken config between.
    version = 1
    plan = [(write_in_place, 12), (write_by_rename, 13), ("broken", None),
            (write_in_place, 14), (write_by_rename, 15),
            # The first swap turns config.pbtxt into a symlink, the second only swaps ..data.
            (write_by_configmap_swap, 16), (write_by_configmap_swap, 17)]
    for writer, seed in plan:
        if writer == "broken":
            before = a_versions.out[version]
            t = write_in_place(a, BROKEN)
            took = wait_for("A's broken reload logged",
                            lambda: len(log_events("model_load_failed", a)) == 1, APPEAR_BOUND)
            print(f"A broken config: event=model_load_failed {took and took * 1000:.0f} ms "
                  "after the write")
            windows.append((t, time.monotonic() + 0.2))
            line = log_events("model_load_failed", a)
            check(line and "kind=reload" in line[0], f"model_load_failed line: {line}")
            entry = c.index()[a]
            check(entry.state == "READY" and entry.version == str(version) and
                  "reload failed" in entry.reason and "config.pbtxt" in entry.reason and
                  "embed_dim" in entry.reason, f"A after a broken reload: {entry}")
            print(f"RepositoryIndex A: {entry.state} v{entry.version} reason={entry.reason!r}")
            check(c.versions(a) == [str(version)],
                  f"A versions after a broken reload: {c.versions(a)}")
            check(same(c.infer(a), before), "A's output changed after a broken reload")
            failed = metric("attn_model_loads_total", model=a, kind="reload", result="failed")
            check(failed == 1,
                  f'attn_model_loads_total{{model="A",kind="reload",result="failed"}} = {failed}')
            continue
        version += 1
        took, window = reload_and_wait(c, a, a_versions, version, writer, config_text(seed))
        windows.append(window)
        if took is not None:
            reloads.append(took)
            print(f"A v{version - 1} -> v{version} ({writer.__name__}): serving "
                  f"{took * 1000:.0f} ms after the write")
        entry = c.index()[a]
        check(entry.state == "READY" and entry.version == str(version) and entry.reason == "",
              f"A after reload to v{version}: {entry}")
        # Requests on the new version, then a random phase against the poll
        # schedule, so the timings sample it rather than repeat one offset.
        time.sleep(0.3 + _phase.uniform(0, POLL))

    # Remove B: it unloads; its requests then get NOT_FOUND.
    t = remove_model_dir("B")
    took = wait_for("B unloaded after its directory was removed", lambda: c.ready("B") is False,
                    APPEAR_BOUND)
    print(f"B unloaded (ModelReady false) {took and took * 1000:.0f} ms after its directory "
          "was removed")
    windows.append((t, time.monotonic()))
    time.sleep(0.3)
    b_records = load_b.stop()
    entry = c.index().get("B")
    check(entry is not None and entry.state == "UNAVAILABLE" and "removed" in entry.reason,
          f"B after removal: {entry}")
    print(f"RepositoryIndex B: {entry.state} v{entry.version} reason={entry.reason!r}")
    for call in (c.oip.ModelInfer, c.attn.Attend):
        req = infer_req("B") if call == c.oip.ModelInfer else attend_req("B")
        code, details = c.code_of(call, req)
        check(code == "NOT_FOUND", f"{call._method} to a removed model: {code} {details!r}")
    unloads = metric("attn_model_unloads_total", model="B")
    check(unloads == 1, f'attn_model_unloads_total{{model="B"}} = {unloads}')
    b_codes = collections.Counter(r[3] for r in b_records)
    print(f"B load thread: {dict(b_codes)}")
    check(set(b_codes) <= {"OK", "NOT_FOUND"},
          f"B: codes other than OK and NOT_FOUND: {dict(b_codes)}")
    seen_nf = False
    for _, _, _, code, out in sorted(b_records, key=lambda r: r[1]):
        if code == "NOT_FOUND":
            seen_nf = True
        elif seen_nf:
            check(False, "B answered OK after a NOT_FOUND")
            break
        elif not same(out, b_out):
            check(False, "B answered with other weights")
            break
    check(b_codes["NOT_FOUND"] > 0, "B's load thread never saw NOT_FOUND")

    records = finish_load(load, a_versions, "A")
    check(len(reloads) >= 5, f"only {len(reloads)} reloads measured")
    print(summary("A reload (file written -> new version answering, poll mode, "
                  f"{POLL * 1000:.0f} ms interval)", reloads))
    loads_ok = metric("attn_model_loads_total", model=a, kind="reload", result="ok")
    check(loads_ok == len(reloads), f"attn_model_loads_total A reload ok = {loads_ok}")
    print_load_durations()
    latency_report(records, windows, "A")


def explicit_phase():
    admin = Client(os.environ["ATTN_ADMIN_TOKEN"])
    infer_only = Client(os.environ["ATTN_INFER_TOKEN"])
    c = admin
    a, a_versions = "A", Versions()
    check(c.ready(a) is True, f"A ready at start: {c.ready(a)}")
    a_versions.add(1, c.infer(a), 0.0, time.monotonic())
    load = Load(infer_only, a)
    time.sleep(1.0)
    windows, reloads = [], []

    def load_rpc(model, client=c, metadata=None):
        t = time.monotonic()
        code, details = client.code_of(client.oip.RepositoryModelLoad,
                                       oip.RepositoryModelLoadRequest(model_name=model), metadata)
        windows.append((t, time.monotonic() + 0.2))
        return code, details, time.monotonic() - t

    def unload_rpc(model):
        return c.code_of(c.oip.RepositoryModelUnload,
                         oip.RepositoryModelUnloadRequest(model_name=model))

    # A directory added after start is not served until loaded.
    add_by_rename("C", config_text(41))
    time.sleep(2 * POLL)
    check(c.ready("C") != True, f"C served before RepositoryModelLoad: {c.ready('C')}")
    code, details = infer_only.code_of(infer_only.oip.RepositoryModelLoad,
                                       oip.RepositoryModelLoadRequest(model_name="C"))
    check(code == "PERMISSION_DENIED",
          f"RepositoryModelLoad with an infer token: {code} {details!r}")
    code, details = c.code_of(c.oip.RepositoryModelLoad,
                              oip.RepositoryModelLoadRequest(model_name="C"), metadata=())
    check(code == "UNAUTHENTICATED", f"RepositoryModelLoad without a token: {code} {details!r}")
    check(c.ready("C") != True, "C served after refused loads")
    code, details, took = load_rpc("C")
    check(code == "OK", f"RepositoryModelLoad C: {code} {details!r}")
    print(f"RepositoryModelLoad C (first load): {took * 1000:.0f} ms")
    check(c.ready("C") is True, f"C ready after its load: {c.ready('C')}")
    entry = c.index().get("C")
    check(entry is not None and entry.state == "READY" and entry.version == "1", f"C: {entry}")
    c_out = infer_only.infer("C")
    check(same(infer_only.attend("C"), c_out) and not same(c_out, a_versions.out[1]), "C serves")

    # Reloads of A by RPC: the reply comes once the new version serves.
    version = 1
    for seed in (22, 23, "broken", 24):
        if seed == "broken":
            before = a_versions.out[version]
            write_in_place(a, BROKEN)
            code, details, took = load_rpc(a)
            check(code == "INVALID_ARGUMENT" and "config.pbtxt" in details,
                  f"RepositoryModelLoad of a broken A: {code} {details!r}")
            print(f"RepositoryModelLoad A (broken): {code} in {took * 1000:.0f} ms: {details}")
            check(c.versions(a) == [str(version)],
                  f"A versions after a broken load: {c.versions(a)}")
            check(same(c.infer(a), before), "A's output changed after a broken load")
            entry = c.index()[a]
            check(entry.state == "READY" and "reload failed" in entry.reason, f"A: {entry}")
            continue
        changed = write_by_rename(a, config_text(seed))
        code, details, took = load_rpc(a)
        version += 1
        check(code == "OK", f"RepositoryModelLoad A (reload to v{version}): {code} {details!r}")
        seen = time.monotonic()
        check(c.versions(a) == [str(version)],
              f"A versions right after its RepositoryModelLoad returned: {c.versions(a)}")
        a_versions.add(version, c.infer(a), changed, seen)
        reloads.append(took)
        print(f"RepositoryModelLoad A v{version - 1} -> v{version}: {took * 1000:.0f} ms")
        time.sleep(0.3)

    # Unload C; then the refusals.
    code, details = unload_rpc("C")
    check(code == "OK", f"RepositoryModelUnload C: {code} {details!r}")
    check(c.ready("C") is False, f"ModelReady C after unload: {c.ready('C')}")
    code, details = infer_only.code_of(infer_only.oip.ModelInfer, infer_req("C"))
    check(code == "NOT_FOUND", f"ModelInfer C after unload: {code} {details!r}")
    entry = c.index().get("C")
    check(entry is not None and entry.state == "UNAVAILABLE" and "unloaded" in entry.reason,
          f"C after unload: {entry}")
    print(f"RepositoryIndex C: {entry.state} v{entry.version} reason={entry.reason!r}")
    code, details = unload_rpc("C")
    check(code == "NOT_FOUND", f"RepositoryModelUnload of an unloaded model: {code} {details!r}")
    code, details, _ = load_rpc("nope")
    check(code == "NOT_FOUND", f"RepositoryModelLoad of a nonexistent name: {code} {details!r}")
    code, details, _ = load_rpc("../x")
    check(code == "INVALID_ARGUMENT", f"RepositoryModelLoad '../x': {code} {details!r}")
    # C loads again, as the version after the one unloaded.
    code, details, _ = load_rpc("C")
    entry = c.index().get("C")
    check(code == "OK" and entry.state == "READY" and entry.version == "2" and
          same(infer_only.infer("C"), c_out), f"C loaded again: {code} {details!r} {entry}")

    records = finish_load(load, a_versions, "A")
    print(summary("A reload (RepositoryModelLoad call, explicit mode)", reloads))
    print_load_durations()
    latency_report(records, windows, "A")


def main():
    mode = sys.argv[1]
    print(f"--- {mode} mode, server at {TARGET}", flush=True)
    {"poll": poll_phase, "explicit": explicit_phase}[mode]()
    if failures:
        print(f"{len(failures)} check(s) failed in {mode} mode:")
        for f in failures:
            print("  -", f)
        return 1
    print(f"{mode} mode: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
