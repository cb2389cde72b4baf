#include "server/attend_call.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/status_util.h"

namespace attn::server {

std::string BatchKey(const Model& model, const DecodedRequest& request) {
  return absl::StrCat(model.name, "|causal=", request.causal, "|cross=", request.cross,
                      "|probs=", request.need_probs);
}

namespace {

// Client mistakes: logged at info, not warning.
bool IsClientError(absl::StatusCode code) {
  return code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kNotFound ||
         code == absl::StatusCode::kCancelled;
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

AttendUnaryReactor::AttendUnaryReactor(AttendBatcher* batcher) {
  MutexLock lock(&mu_);
  batcher_ = batcher;
}

void AttendUnaryReactor::FinishCall(CallOutcome outcome) {
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
  }
  FinishAttendCall(std::move(call), status);
}

// FLOPs of one call's sequences.
double CallFlops(const AttendCall& call) {
  const DecodedRequest& r = call.request;
  const std::vector<int64_t>& ko = r.cross ? r.kv_offsets : r.q_offsets;
  double flops = 0;
  for (size_t s = 1; s < r.q_offsets.size(); ++s) {
    flops += core::ForwardFlops(call.model->config, r.q_offsets[s] - r.q_offsets[s - 1],
                                ko[s] - ko[s - 1], r.causal);
  }
  return flops;
}

void RecordBatch(const std::vector<std::unique_ptr<AttendCall>>& calls, const BatchRun& run,
                 const absl::Status& status) {
  if (!status.ok()) return;
  double flops = 0;
  for (const auto& call : calls) flops += CallFlops(*call);
  calls.front()->observer->OnBatch(
      {.requests = run.size, .tokens = run.tokens, .compute = run.end - run.start, .flops = flops});
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

void RunGroup(std::vector<std::unique_ptr<AttendCall>> calls) {
  const Model& model = *calls.front()->model;
  const Clock& clock = *calls.front()->env->clock;
  const DecodedRequest& first = calls.front()->request;
  const int e = model.config.embed_dim;

  if (calls.size() == 1) {
    // A lone request: its own packed buffers are the batch, no copy.
    const DecodedRequest& r = calls.front()->request;
    const absl::Time start = clock.Now();
    core::AttentionResult result;
    const absl::Status status = model.mha->Forward(r.batch_view(), &result);
    const BatchRun run{start, clock.Now(), 1, r.num_tokens()};
    RecordBatch(calls, run, status);
    Respond(std::move(calls.front()), status, {result.output, result.probs, result.probs_offsets},
            run);
    return;
  }
  // Concatenate every call's sequences into one ragged batch.
  std::vector<float> query, key, value;
  std::vector<int64_t> q_offsets = {0}, kv_offsets = {0};
  int64_t tokens = 0;
  for (const auto& call : calls) {
    const DecodedRequest& r = call->request;
    query.insert(query.end(), r.query.begin(), r.query.end());
    for (size_t s = 1; s < r.q_offsets.size(); ++s) {
      q_offsets.push_back(q_offsets.back() + r.q_offsets[s] - r.q_offsets[s - 1]);
    }
    if (first.cross) {
      key.insert(key.end(), r.key.begin(), r.key.end());
      value.insert(value.end(), r.value.begin(), r.value.end());
      for (size_t s = 1; s < r.kv_offsets.size(); ++s) {
        kv_offsets.push_back(kv_offsets.back() + r.kv_offsets[s] - r.kv_offsets[s - 1]);
      }
    }
    tokens += r.num_tokens();
  }
  core::AttentionBatch batch;
  batch.query = query;
  batch.q_offsets = std::move(q_offsets);
  batch.cross_attention = first.cross;
  if (first.cross) {
    batch.key = key;
    batch.value = value;
    batch.kv_offsets = std::move(kv_offsets);
  }
  batch.causal = first.causal;
  batch.need_probs = first.need_probs;

  const absl::Time start = clock.Now();
  core::AttentionResult all;
  const absl::Status status = model.mha->Forward(batch, &all);
  const BatchRun run{start, clock.Now(), static_cast<int>(calls.size()), tokens};
  RecordBatch(calls, run, status);

  // Each call answers from its own rows of the batch's result (no copy
  // here: the response encoder reads the batch's buffers).
  int64_t seq = 0;
  std::vector<int64_t> probs_offsets;
  for (auto& call : calls) {
    const DecodedRequest& r = call->request;
    const int num_seqs = static_cast<int>(r.q_offsets.size()) - 1;
    CallResult mine;
    if (status.ok()) {
      const int64_t row0 = batch.q_offsets[seq];
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
  const bool cross = c.key_dim() != c.embed_dim || c.value_dim() != c.embed_dim;
  for (int64_t len : {1, 16, 128}) {
    len = std::min<int64_t>(len, model.max_seq_len);
    std::vector<float> q(static_cast<size_t>(len) * c.embed_dim, 0.5f);
    std::vector<float> k(static_cast<size_t>(len) * c.key_dim(), 0.5f);
    std::vector<float> v(static_cast<size_t>(len) * c.value_dim(), 0.5f);
    core::AttentionBatch batch;
    batch.query = q;
    batch.q_offsets = {0, len};
    if (cross) {
      batch.cross_attention = true;
      batch.key = k;
      batch.value = v;
      batch.kv_offsets = {0, len};
    }
    core::AttentionResult result;
    if (absl::Status s = model.mha->Forward(batch, &result); !s.ok()) {
      return absl::InternalError(
          absl::StrCat("model '", model.name, "': warm-up failed: ", s.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace attn::server
