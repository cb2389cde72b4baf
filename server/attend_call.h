// One accepted Attend request waiting in (or running from) the batcher, and
// the function that runs a batch of them as one ragged core batch.
#ifndef ATTN_SERVER_ATTEND_CALL_H_
#define ATTN_SERVER_ATTEND_CALL_H_

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "attention/v1/attention.pb.h"
#include "core/batching/batch_observer.h"
#include "core/batching/batcher.h"
#include "core/clock.h"
#include "core/mutex.h"
#include "google/protobuf/message.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"
#include "server/attend_codec.h"
#include "server/kv_batch_observer.h"
#include "server/log.h"
#include "server/model_repository.h"
#include "server/protocol_observer.h"
#include "server/session_manager.h"

namespace attn::server {

struct AttendCall;
class AttendUnaryReactor;

// Bytes of responses that accepted calls may still produce: admission takes
// a call's response bound (ResponseBytesBound), and the call gives it back
// once its response has been sent or dropped (CallOutcome::Record), so the
// responses computed but not yet delivered (slow readers) stay bounded.
// Thread-safe.
class ResponseBudget {
 public:
  explicit ResponseBudget(int64_t max_bytes) : max_bytes_(max_bytes) {}
  // Takes `bytes` if they fit, or if nothing is held (one response always
  // fits: its size was checked against the message limit).
  bool TryAcquire(int64_t bytes) {
    int64_t held = held_.load(std::memory_order_relaxed);
    do {
      if (held > 0 && held + bytes > max_bytes_) return false;
    } while (!held_.compare_exchange_weak(held, held + bytes, std::memory_order_relaxed));
    return true;
  }
  void Release(int64_t bytes) { held_.fetch_sub(bytes, std::memory_order_relaxed); }
  int64_t held() const { return held_.load(std::memory_order_relaxed); }
  int64_t max_bytes() const { return max_bytes_; }

 private:
  const int64_t max_bytes_;
  std::atomic<int64_t> held_{0};
};

// What every call reports to and takes its time from. Outlives every call.
struct CallEnv {
  // Every model's observer: queue, batches, finished requests (the server's
  // metrics, or a fake in tests). Asked once per model (AttentionService).
  core::BatchObservers* observers = core::BatchObservers::Noop();
  // Every model's KV observer (the server's metrics); asked once per model.
  KvBatchObservers* kv_observers = KvBatchObservers::Noop();
  // Finished requests by protocol (the server's metrics).
  ProtocolObserver* protocols = ProtocolObserver::Noop();
  Logger* logger = nullptr;  // required
  // Every timestamp of a call: arrival, deadline, queue and compute times,
  // and the deadline-or-cancelled judgement of an undelivered call. The
  // batcher must use the same clock.
  Clock* clock = Clock::Real();
  // How long a shed client should wait before retrying (the
  // grpc-retry-pushback-ms trailer of a unary RESOURCE_EXHAUSTED).
  int retry_pushback_ms = 50;
};

// What a finished call reports once its fate is known: counted and logged
// by the status the client gets, so it is recorded when gRPC is done with a
// unary call (AttendUnaryReactor::OnDone) and when a streamed response has
// been written or dropped. Copyable; holds no call state.
struct CallOutcome {
  const CallEnv* env = nullptr;
  core::BatchObserver* observer = nullptr;  // the model's (or the unknown model's)
  bool admitted = false;                    // counted in flight
  // Given back to `budget` when recorded (0: nothing was taken).
  ResponseBudget* budget = nullptr;
  int64_t budget_bytes = 0;
  absl::Status status;
  absl::Time deadline_at = absl::InfiniteFuture();
  std::string model, request_id;
  absl::string_view protocol = kAttentionV1Protocol;
  // For OK: server time (admission to response), the response's timing and
  // the query tokens.
  absl::Duration server_time;
  attention::v1::Timing timing;
  int64_t tokens = 0;

  // Tells the observer and env->protocols (the request, by code; for OK also latency, queue
  // time and tokens; out of flight for an admitted call) and logs (access
  // log; failures at info for the client's own mistakes, warning
  // otherwise). `delivered` false: the call was cancelled before its status
  // reached the client (the client cancelled, its deadline passed, or the
  // shutdown grace ran out), so it counts as the client saw it:
  // DEADLINE_EXCEEDED past (or within 100 ms of) the deadline by
  // env->clock, else CANCELLED. Call once.
  void Record(bool delivered) const;
};

// Where a streamed call's outcome goes (AttendStream's reactor). Unary calls
// have none: their reactor is finished directly.
class AttendResponder {
 public:
  virtual ~AttendResponder() = default;
  // Takes the finished call: on OK its `stream_response` is filled in; on an
  // error the responder reports `status` for this request alone. The
  // responder records `outcome` once the response is written or dropped.
  // Called once per call, from any thread.
  virtual void Respond(std::unique_ptr<AttendCall> call, const absl::Status& status,
                       CallOutcome outcome) = 0;
};

// A core::BatchTask.
struct AttendCall {
  const CallEnv* env = nullptr;  // required
  // The protocol the request came over (ProtocolObserver's label).
  absl::string_view protocol = kAttentionV1Protocol;
  // Null until the request's model is known (NOT_FOUND leaves it null).
  // The version the request was admitted to (or its session's), held until
  // the call ends: a reload or unload meanwhile does not touch it.
  std::shared_ptr<const Model> model;
  core::BatchObserver* observer = nullptr;  // required: the model's, or For("")'s
  KvBatchObserver* kv_observer = nullptr;   // the model's; required once `model` is set
  bool admitted = false;                    // in the batcher: counted in flight and queued
  ResponseBudget* budget = nullptr;         // set once budget_bytes are taken from it
  int64_t budget_bytes = 0;
  DecodedRequest request;
  absl::Time enqueued;  // on env->clock, as every time of the call
  absl::Time deadline_at = absl::InfiniteFuture();
  // The client call: the batch runner fills `response`, then finishes the
  // unary `reactor`, or hands the call to `responder` (a stream; `response`
  // then points at `stream_response`).
  grpc::CallbackServerContext* context = nullptr;
  AttendUnaryReactor* reactor = nullptr;
  AttendResponder* responder = nullptr;
  attention::v1::AttendResponse* response = nullptr;
  attention::v1::AttendResponse stream_response;
  // The request as another protocol's stream sent it, stripped of its
  // tensors, when answering needs it (ModelStreamInfer); null otherwise.
  std::unique_ptr<google::protobuf::Message> protocol_request;
  // Session requests (request.session()): the session table, and the hold
  // on the session taken at admission. It ends with the call, run or not
  // (FinishAttendCall releases it before the client can hear back).
  SessionManager* sessions = nullptr;
  SessionManager::Lease lease;

  int64_t tokens() const { return request.num_tokens(); }
  absl::Time deadline() const { return deadline_at; }
  // The client gave up: OnCancel ran (unary), or the context says so (a
  // stream's, or a unary one before its OnCancel has run).
  bool cancelled() const;
};
static_assert(core::BatchTask<AttendCall>);

using AttendBatcher = core::Batcher<AttendCall>;

// The reactor of one unary Attend. Finishing records the call's outcome when
// gRPC is done with it (OnDone), by whether the status reached the client; a
// cancellation (client, deadline or shutdown) sweeps the batcher so this
// call's queue slot frees at once, even while a long batch computes.
//
// Another protocol's unary call (the Open Inference Protocol's ModelInfer)
// answers through a Completion: the call's `response` is then the reactor's
// own attend_response(), and FinishCall hands it, with the call's status,
// to the completion just before Finish (which may move from it); what the
// completion returns is the status sent (and recorded).
class AttendUnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  using Completion = std::function<absl::Status(const absl::Status& status,
                                                attention::v1::AttendResponse& response)>;
  explicit AttendUnaryReactor(AttendBatcher* batcher, Completion completion = nullptr);
  // Where a call with a Completion writes its response.
  attention::v1::AttendResponse* attend_response() { return &attend_response_; }
  // Finishes the RPC with `outcome.status`. Call once.
  void FinishCall(CallOutcome outcome);
  void OnCancel() override;
  void OnDone() override;
  // Whether gRPC has reported this call cancelled (OnCancel ran).
  bool cancelled() const;

 private:
  // The reactions run on gRPC threads whose hand-offs go through gRPC's own
  // (uninstrumented) locks: state shared with them is published under mu_
  // so TSan sees the ordering too.
  mutable Mutex mu_;
  AttendBatcher* batcher_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  CallOutcome outcome_ ABSL_GUARDED_BY(mu_);  // written before Finish, read in OnDone
  const Completion completion_;
  attention::v1::AttendResponse attend_response_;  // the batch runner's, then completion_'s
};

inline bool AttendCall::cancelled() const {
  return (reactor != nullptr && reactor->cancelled()) ||
         (context != nullptr && context->IsCancelled());
}

// Requests that may share a batch: same model and version and the same
// batch-wide options (causal, cross-attention, probabilities); session
// requests apart from the others, so decode steps of any sessions (and
// layers) of a model batch together. Starts with the model name and a '|'
// ("m|v2|...": requests of two versions never share a batch).
std::string BatchKey(const Model& model, const DecodedRequest& request);

// Runs `calls` (one key, all admitted) as one core call over all their
// sequences (MultiHeadAttention::Forward; for sessions ForwardWithCache; for
// offload models ScaledDotProductAttention::Forward), records the batch,
// then finishes each call: its response (with timings: queue, compute, the
// batch's size and tokens; for sessions session_length) or the error. A
// batch asking for probabilities runs as consecutive core calls whose
// probabilities each hold at most `max_probs_bytes` (or one call), so a
// batch never holds more than one response's worth of them at once.
//
// Session calls are first prepared one by one (SessionManager::Prepare:
// still open, expected_length, room reserved); a call that fails there
// (NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED) fails alone and the
// rest compute. No session lock is held while computing: each lease makes
// its cache this batch's alone.
void RunAttendBatch(std::vector<std::unique_ptr<AttendCall>> calls, int64_t max_probs_bytes);

// The one way a call ends, run or not (invalid, shed, expired, cancelled,
// shutting down): finishes the unary reactor (a shed call gets the retry
// hint trailer) or hands the call to its stream, with the CallOutcome that
// is recorded once the client has the status (or cannot get it).
void FinishAttendCall(std::unique_ptr<AttendCall> call, const absl::Status& status);

// The batcher's bookkeeping for an admitted call leaving the queue (run or
// rejected): tells its observer.
void LeftQueue(const AttendCall& call);

// Runs a few small batches through `model` (its MultiHeadAttention, or an
// offload model's ScaledDotProductAttention) so oneDNN's kernels exist and
// the calling thread's OpenMP team is started before the first request (the
// first call on a thread costs tens of milliseconds otherwise). Call it on
// the thread that will compute (Batcher::RunOnExecutor).
absl::Status WarmUp(const Model& model);

}  // namespace attn::server

#endif  // ATTN_SERVER_ATTEND_CALL_H_
