#include "server/attend_call.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/status_util.h"

namespace attn::server {

std::string BatchKey(const Model& model, const DecodedRequest& request) {
  if (request.session()) {
    return absl::StrCat(model.name, "|v", model.version, "|session|causal=", request.causal,
                        "|probs=", request.need_probs);
  }
  return absl::StrCat(model.name, "|v", model.version, "|causal=", request.causal,
                      "|cross=", request.cross, "|probs=", request.need_probs);
}

namespace {

// Client mistakes: logged at info, not warning. A session step with a stale
// expected_length (a retry that already went through) and a second request
// of a session in flight are the client's too.
bool IsClientError(absl::StatusCode code) {
  return code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kNotFound ||
         code == absl::StatusCode::kCancelled || code == absl::StatusCode::kFailedPrecondition ||
         code == absl::StatusCode::kAborted;
}

}  // namespace

void CallOutcome::Record(bool delivered) const {
  // Given back before the call is counted: whoever sees the count may rely
  // on them.
  if (budget != nullptr) budget->Release(budget_bytes);
  if (admitted) observer->OnInflightChanged(-1);
  absl::Status final_status = status;
  if (!delivered) {
    // A client whose deadline passes cancels the stream (HTTP/2 has no
    // deadline code), and the server's deadline is the client's timeout
    // counted from arrival, so later than the client's by the transit time:
    // a cancel within kDeadlineSlack of the deadline is taken as the
    // deadline's.
    constexpr absl::Duration kDeadlineSlack = absl::Milliseconds(100);
    final_status = env->clock->Now() + kDeadlineSlack >= deadline_at
                       ? absl::DeadlineExceededError(absl::StrCat(
                             "deadline passed before the response was sent (server status: ",
                             absl::StatusCodeToString(status.code()), ")"))
                       : absl::CancelledError(
                             absl::StrCat("cancelled before the response was sent (server status: ",
                                          absl::StatusCodeToString(status.code()), ")"));
  }
  core::RequestObservation seen;
  seen.code = final_status.code();
  if (final_status.ok()) {
    seen.server_time = server_time;
    seen.queue_time = absl::Microseconds(timing.queue_us());
    seen.tokens = tokens;
  }
  observer->OnRequest(seen);
  env->protocols->OnProtocolRequest(protocol, final_status.code());

  Logger& log = *env->logger;
  if (final_status.ok()) {
    if (!log.access_log()) return;
    log.Log(LogLevel::kInfo, "request",
            {{"model", model},
             {"request_id", request_id},
             {"code", "OK"},
             {"tokens", absl::StrCat(tokens)},
             {"duration_us", absl::StrCat(absl::ToInt64Microseconds(server_time))},
             {"queue_us", absl::StrCat(timing.queue_us())},
             {"compute_us", absl::StrCat(timing.compute_us())},
             {"batch_size", absl::StrCat(timing.batch_size())}});
    return;
  }
  const LogLevel level = IsClientError(final_status.code()) ? LogLevel::kInfo : LogLevel::kWarning;
  if (!log.Enabled(level)) return;
  log.Log(level, "request_failed",
          {{"model", model},
           {"request_id", request_id},
           {"code", absl::StatusCodeToString(final_status.code())},
           {"message", std::string(final_status.message())}});
}

AttendUnaryReactor::AttendUnaryReactor(AttendBatcher* batcher, Completion completion)
    : completion_(std::move(completion)) {
  MutexLock lock(&mu_);
  batcher_ = batcher;
}

void AttendUnaryReactor::FinishCall(CallOutcome outcome) {
  if (completion_) outcome.status = completion_(outcome.status, attend_response_);
  const grpc::Status status = ToGrpcStatus(outcome.status);
  {
    MutexLock lock(&mu_);
    outcome_ = std::move(outcome);
  }
  Finish(status);
}

void AttendUnaryReactor::OnCancel() {
  AttendBatcher* batcher;
  {
    MutexLock lock(&mu_);
    cancelled_ = true;
    batcher = batcher_;
  }
  batcher->Sweep();  // may finish this very call: not under mu_
}

bool AttendUnaryReactor::cancelled() const {
  MutexLock lock(&mu_);
  return cancelled_;
}

void AttendUnaryReactor::OnDone() {
  {
    MutexLock lock(&mu_);
    // gRPC calls OnCancel (before OnDone) when the call was cancelled
    // before its status went out: the status never reached the client.
    // (context->IsCancelled() read here can still be false then.)
    outcome_.Record(/*delivered=*/!cancelled_);
  }
  delete this;
}

void LeftQueue(const AttendCall& call) {
  call.observer->OnQueueChanged(-1, -call.request.num_tokens());
}

void FinishAttendCall(std::unique_ptr<AttendCall> call, const absl::Status& status) {
  // Before anyone can hear back: a client's next step on the session must
  // find it free.
  call->lease.Release();
  CallOutcome outcome;
  outcome.env = call->env;
  outcome.observer = call->observer;
  outcome.admitted = call->admitted;
  outcome.budget = call->budget;
  outcome.budget_bytes = call->budget_bytes;
  outcome.status = status;
  outcome.deadline_at = call->deadline_at;
  outcome.model = call->model != nullptr ? call->model->name : "";
  outcome.request_id = call->response->request_id();
  outcome.protocol = call->protocol;
  if (status.ok()) {
    outcome.server_time = call->env->clock->Now() - call->enqueued;
    outcome.timing = call->response->timing();
    outcome.tokens = call->request.num_tokens();
  }
  if (call->responder != nullptr) {
    AttendResponder* responder = call->responder;
    responder->Respond(std::move(call), status, std::move(outcome));
    return;
  }
  if (status.code() == absl::StatusCode::kResourceExhausted) {
    // gRPC's retry policy honours this hint.
    call->context->AddTrailingMetadata("grpc-retry-pushback-ms",
                                       absl::StrCat(call->env->retry_pushback_ms));
  }
  AttendUnaryReactor* reactor = call->reactor;
  call.reset();  // before Finish: OnDone may follow at once
  reactor->FinishCall(std::move(outcome));
}

namespace {

struct BatchRun {
  absl::Time start, end;
  int size;
  int64_t tokens;
};

// This call's part of a batch's result: its output rows, and its
// probabilities with per-sequence offsets relative to `probs`.
struct CallResult {
  absl::Span<const float> output;
  absl::Span<const float> probs;
  absl::Span<const int64_t> probs_offsets;
};

// Writes the call's response with timings and finishes the call.
void Respond(std::unique_ptr<AttendCall> call, const absl::Status& status, const CallResult& result,
             const BatchRun& run) {
  if (status.ok()) {
    EncodeAttendResponse(call->request, result.output, result.probs, result.probs_offsets,
                         *call->model, call->response);
    attention::v1::Timing* timing = call->response->mutable_timing();
    timing->set_queue_us(absl::ToInt64Microseconds(run.start - call->enqueued));
    timing->set_compute_us(absl::ToInt64Microseconds(run.end - run.start));
    timing->set_batch_size(run.size);
    timing->set_batch_tokens(run.tokens);
    if (call->request.session()) {
      // Prepare found expected_length cached tokens; this call appended its own.
      call->response->set_session_length(call->request.cached + call->request.num_tokens());
    }
  }
  FinishAttendCall(std::move(call), status);
}

// (query, key) pairs the mask lets through, bottom-right aligned.
double VisiblePairs(int64_t lq, int64_t lk, bool causal) {
  if (!causal) return static_cast<double>(lq) * static_cast<double>(lk);
  double pairs = 0;
  for (int64_t i = 0; i < lq; ++i) {
    pairs += static_cast<double>(std::clamp<int64_t>(i + lk - lq + 1, 0, lk));
  }
  return pairs;
}

// FLOPs of one call's sequences: the projections of its new rows (none for
// an offload model) and QKᵀ and PV, 4 * num_heads * head_dim per visible
// pair, over cached and new keys.
double CallFlops(const AttendCall& call) {
  const DecodedRequest& r = call.request;
  const core::AttentionConfig& c = call.model->config;
  const std::vector<int64_t>& ko = r.cross ? r.kv_offsets : r.q_offsets;
  const double width = static_cast<double>(c.num_heads) * c.head_dim();
  double flops = 0;
  for (size_t s = 1; s < r.q_offsets.size(); ++s) {
    const int64_t lq = r.q_offsets[s] - r.q_offsets[s - 1];
    const int64_t new_keys = ko[s] - ko[s - 1];
    if (call.model->projections && !r.session()) {
      flops += core::ForwardFlops(c, lq, new_keys, r.causal);
      continue;
    }
    if (call.model->projections) {
      // ForwardFlops without its attention term: the new rows' projections.
      flops += core::ForwardFlops(c, lq, new_keys, /*causal=*/false) -
               4.0 * VisiblePairs(lq, new_keys, false) * width;
    }
    flops += 4.0 * VisiblePairs(lq, r.key_length(s - 1), r.causal) * width;
  }
  return flops;
}

void RecordBatch(const std::vector<std::unique_ptr<AttendCall>>& calls, const BatchRun& run,
                 const absl::Status& status, const core::CachedAttentionStats* stats) {
  if (!status.ok()) return;
  double flops = 0;
  for (const auto& call : calls) flops += CallFlops(*call);
  const AttendCall& first = *calls.front();
  first.observer->OnBatch(
      {.requests = run.size, .tokens = run.tokens, .compute = run.end - run.start, .flops = flops});
  if (stats != nullptr) {
    first.kv_observer->OnKvBatch(stats->kv_bytes_read,
                                 first.request.session()
                                     ? std::optional<absl::Duration>(run.end - run.start)
                                     : std::nullopt);
  }
}

// Bytes of the probabilities the core computes for `call` (its valid rows
// and keys only, whatever the response layout).
int64_t CoreProbsBytes(const AttendCall& call) {
  return ValidProbsValues(call.request, call.model->config.num_heads) *
         static_cast<int64_t>(sizeof(float));
}

void RunGroup(std::vector<std::unique_ptr<AttendCall>> calls);

}  // namespace

void RunAttendBatch(std::vector<std::unique_ptr<AttendCall>> calls, int64_t max_probs_bytes) {
  if (calls.empty()) return;
  for (const auto& call : calls) LeftQueue(*call);
  if (!calls.front()->request.need_probs) {
    RunGroup(std::move(calls));
    return;
  }
  std::vector<std::unique_ptr<AttendCall>> group;
  int64_t group_bytes = 0;
  for (auto& call : calls) {
    const int64_t bytes = CoreProbsBytes(*call);
    if (!group.empty() && group_bytes + bytes > max_probs_bytes) {
      RunGroup(std::move(group));
      group.clear();
      group_bytes = 0;
    }
    group_bytes += bytes;
    group.push_back(std::move(call));
  }
  RunGroup(std::move(group));
}

namespace {

// The rows of a group's calls as one ragged batch: a lone call's own packed
// buffers (no copy), or every call's sequences concatenated. Not copyable:
// the spans may point into it.
struct GroupRows {
  absl::Span<const float> query, key, value;
  std::vector<int64_t> q_offsets, kv_offsets;  // kv_offsets only for cross
  int64_t tokens = 0;
  std::vector<float> packed_query, packed_key, packed_value;

  GroupRows(const std::vector<std::unique_ptr<AttendCall>>& calls, bool cross) {
    if (calls.size() == 1) {
      const DecodedRequest& r = calls.front()->request;
      query = r.query;
      key = r.key;
      value = r.value;
      q_offsets = r.q_offsets;
      if (cross) kv_offsets = r.kv_offsets;
      tokens = r.num_tokens();
      return;
    }
    q_offsets = {0};
    if (cross) kv_offsets = {0};
    for (const auto& call : calls) {
      const DecodedRequest& r = call->request;
      packed_query.insert(packed_query.end(), r.query.begin(), r.query.end());
      for (size_t s = 1; s < r.q_offsets.size(); ++s) {
        q_offsets.push_back(q_offsets.back() + r.q_offsets[s] - r.q_offsets[s - 1]);
      }
      if (cross) {
        packed_key.insert(packed_key.end(), r.key.begin(), r.key.end());
        packed_value.insert(packed_value.end(), r.value.begin(), r.value.end());
        for (size_t s = 1; s < r.kv_offsets.size(); ++s) {
          kv_offsets.push_back(kv_offsets.back() + r.kv_offsets[s] - r.kv_offsets[s - 1]);
        }
      }
      tokens += r.num_tokens();
    }
    query = packed_query;
    key = packed_key;
    value = packed_value;
  }
  GroupRows(const GroupRows&) = delete;
  GroupRows& operator=(const GroupRows&) = delete;
};

// Prepares every session call of a group on its session (in order): the
// calls that may compute, and their caches. A call whose session is gone,
// whose expected_length is stale or that finds no room fails here, alone.
std::vector<core::CachedSequence> PrepareSessions(std::vector<std::unique_ptr<AttendCall>>* calls) {
  std::vector<core::CachedSequence> caches;
  std::vector<std::unique_ptr<AttendCall>> ready;
  for (auto& call : *calls) {
    const DecodedRequest& r = call->request;
    absl::StatusOr<core::KvCache*> cache =
        call->sessions->Prepare(call->lease, r.layer, r.cached, r.num_tokens());
    if (!cache.ok()) {
      FinishAttendCall(std::move(call), cache.status());
      continue;
    }
    caches.push_back({.cache = *cache, .layer = r.layer});
    ready.push_back(std::move(call));
  }
  *calls = std::move(ready);
  return caches;
}

void RunGroup(std::vector<std::unique_ptr<AttendCall>> calls) {
  const bool session = calls.front()->request.session();
  std::vector<core::CachedSequence> caches;
  if (session) {
    caches = PrepareSessions(&calls);
    if (calls.empty()) return;
  }
  const Model& model = *calls.front()->model;
  const Clock& clock = *calls.front()->env->clock;
  const DecodedRequest& first = calls.front()->request;
  const int e = model.config.embed_dim;
  const GroupRows rows(calls, first.cross);

  core::AttentionResult all;
  core::CachedAttentionStats stats;
  bool has_stats = false;
  const absl::Time start = clock.Now();
  absl::Status status;
  if (model.sdpa != nullptr) {
    core::CachedAttentionBatch batch;
    batch.q = rows.query;
    batch.k = rows.key;
    batch.v = rows.value;
    batch.q_offsets = rows.q_offsets;
    batch.kv_offsets = rows.kv_offsets;
    batch.sequences = std::move(caches);
    batch.causal = first.causal;
    batch.need_probs = first.need_probs;
    status = model.sdpa->Forward(batch, &all, &stats);
    has_stats = true;
  } else {
    core::AttentionBatch batch;
    batch.query = rows.query;
    batch.q_offsets = rows.q_offsets;
    batch.cross_attention = first.cross;
    if (first.cross) {
      batch.key = rows.key;
      batch.value = rows.value;
      batch.kv_offsets = rows.kv_offsets;
    }
    batch.causal = first.causal;
    batch.need_probs = first.need_probs;
    if (session) {
      status = model.mha->ForwardWithCache(batch, caches, &all, nullptr, &stats);
      has_stats = true;
    } else {
      status = model.mha->Forward(batch, &all);
    }
  }
  const BatchRun run{start, clock.Now(), static_cast<int>(calls.size()), rows.tokens};
  RecordBatch(calls, run, status, has_stats ? &stats : nullptr);

  // Each call answers from its own rows of the batch's result (no copy
  // here: the response encoder reads the batch's buffers).
  int64_t seq = 0;
  std::vector<int64_t> probs_offsets;
  for (auto& call : calls) {
    const DecodedRequest& r = call->request;
    const int num_seqs = static_cast<int>(r.q_offsets.size()) - 1;
    CallResult mine;
    if (status.ok()) {
      const int64_t row0 = rows.q_offsets[seq];
      mine.output =
          absl::MakeConstSpan(all.output)
              .subspan(static_cast<size_t>(row0 * e), static_cast<size_t>(r.num_tokens() * e));
      if (r.need_probs) {
        const int64_t p0 = all.probs_offsets[seq];
        probs_offsets.clear();
        for (int s = 0; s < num_seqs; ++s) probs_offsets.push_back(all.probs_offsets[seq + s] - p0);
        mine.probs = absl::MakeConstSpan(all.probs).subspan(static_cast<size_t>(p0));
        mine.probs_offsets = probs_offsets;
      }
    }
    seq += num_seqs;
    Respond(std::move(call), status, mine, run);
  }
}

}  // namespace

absl::Status WarmUp(const Model& model) {
  const core::AttentionConfig& c = model.config;
  const bool cross =
      !model.projections || c.key_dim() != c.embed_dim || c.value_dim() != c.embed_dim;
  for (int64_t len : {1, 16, 128}) {
    len = std::min<int64_t>(len, model.max_seq_len);
    std::vector<float> q(static_cast<size_t>(len) * c.embed_dim, 0.5f);
    std::vector<float> k(static_cast<size_t>(len) * c.key_dim(), 0.5f);
    std::vector<float> v(static_cast<size_t>(len) * c.value_dim(), 0.5f);
    core::AttentionResult result;
    absl::Status s;
    if (model.sdpa != nullptr) {
      core::CachedAttentionBatch batch;
      batch.q = q;
      batch.k = k;
      batch.v = v;
      batch.q_offsets = batch.kv_offsets = {0, len};
      s = model.sdpa->Forward(batch, &result);
    } else {
      core::AttentionBatch batch;
      batch.query = q;
      batch.q_offsets = {0, len};
      if (cross) {
        batch.cross_attention = true;
        batch.key = k;
        batch.value = v;
        batch.kv_offsets = {0, len};
      }
      s = model.mha->Forward(batch, &result);
    }
    if (!s.ok()) {
      return absl::InternalError(
          absl::StrCat("model '", model.name, "': warm-up failed: ", s.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace attn::server
