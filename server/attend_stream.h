// The bidirectional stream of attention requests, for every protocol the
// server speaks (attention.v1 AttendStream, the Open Inference Protocol's
// ModelStreamInfer): each message is admitted on its own (the protocol's
// Admit, which ends in the one admission path, AttentionService::Admit),
// responses are written in the order they finish, and a failed request gets
// a response carrying its status while the stream goes on. A stream holds at
// most kMaxInflight requests (queued, computing or waiting to be written);
// past that it stops reading until responses drain, so a client that sends
// faster than it reads is slowed, not buffered without bound.
//
// `Protocol` says what travels:
//   using Request = ...; using Response = ...;
//   // Validates and admits one message (AttentionService::Admit's
//   // contract, which sets call->env): on failure `*call` stays with the
//   // caller.
//   absl::Status Admit(const Request& request, std::unique_ptr<AttendCall>* call);
//   // The message answering a finished call: its response on OK, else
//   // `status` for this request alone.
//   Response Answer(AttendCall& call, const absl::Status& status);
// and must outlive the stream.
#ifndef ATTN_SERVER_ATTEND_STREAM_H_
#define ATTN_SERVER_ATTEND_STREAM_H_

#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/mutex.h"
#include "grpcpp/support/server_callback.h"
#include "server/attend_call.h"

namespace attn::server {

// Requests one stream may have in flight before reading pauses.
inline constexpr int kStreamMaxInflight = 256;

// Thread-safe (gRPC's reactions and the batch thread). Deletes itself in
// OnDone.
template <typename Protocol>
class AttendStreamReactor final
    : public grpc::ServerBidiReactor<typename Protocol::Request, typename Protocol::Response>,
      public AttendResponder {
 public:
  using Request = typename Protocol::Request;
  using Response = typename Protocol::Response;
  static constexpr int kMaxInflight = kStreamMaxInflight;

  // Every entry point (a read, a write or a cancellation completing, a call
  // finishing) decides under mu_ what to start next, then starts it after
  // unlocking; Finish is decided once, when reads are done, no call is
  // pending and nothing is being written, and nothing touches the reactor
  // after it.
  AttendStreamReactor(Protocol* protocol, AttendBatcher* batcher,
                      grpc::CallbackServerContext* context)
      : protocol_(protocol), context_(context) {
    {
      // OnCancel runs on a gRPC thread whose hand-off from this one goes
      // through gRPC's own (uninstrumented) locks: publishing the batcher
      // under mu_ keeps that visible to TSan.
      MutexLock lock(&mu_);
      batcher_ = batcher;
    }
    this->StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed, or the stream broke
      Actions next;
      {
        MutexLock lock(&mu_);
        reads_done_ = true;
        next = DecideLocked();
      }
      Run(next);
      return;
    }
    auto call = std::make_unique<AttendCall>();
    call->context = context_;
    call->responder = this;
    call->response = &call->stream_response;
    {
      MutexLock lock(&mu_);
      ++pending_;
    }
    if (absl::Status status = protocol_->Admit(request_, &call); !status.ok()) {
      if (status.code() == absl::StatusCode::kResourceExhausted) {
        status = absl::ResourceExhaustedError(
            absl::StrCat(status.message(), " (retry after ", call->env->retry_pushback_ms, " ms)"));
      }
      // Comes back through Respond; cannot finish the stream: no read is done yet.
      FinishAttendCall(std::move(call), status);
    }
    Actions next;
    {
      MutexLock lock(&mu_);
      read_paused_ = true;  // no read outstanding until DecideLocked restarts it
      next = DecideLocked();
    }
    Run(next);
  }

  void Respond(std::unique_ptr<AttendCall> call, const absl::Status& status,
               CallOutcome outcome) override {
    Outgoing out{protocol_->Answer(*call, status), std::move(outcome)};
    call.reset();
    Actions next;
    bool dropped = false;
    {
      MutexLock lock(&mu_);
      --pending_;
      dropped = broken_;
      if (!broken_) outbox_.push_back(std::move(out));
      next = DecideLocked();
    }
    if (dropped) out.outcome.Record(/*delivered=*/false);
    Run(next);
  }

  void OnWriteDone(bool ok) override {
    Actions next;
    std::vector<CallOutcome> done;
    {
      MutexLock lock(&mu_);
      writing_ = false;
      done.push_back(std::move(outbox_.front().outcome));
      outbox_.pop_front();
      if (!ok) {  // the stream is gone: drop what is left to write
        broken_ = true;
        for (Outgoing& o : outbox_) done.push_back(std::move(o.outcome));
        outbox_.clear();
      }
      next = DecideLocked();
    }
    // Recorded before Run: once it may finish the stream, `this` is off limits.
    for (const CallOutcome& o : done) o.Record(/*delivered=*/ok);
    Run(next);
  }

  void OnCancel() override {
    Actions next;
    AttendBatcher* batcher;
    {
      MutexLock lock(&mu_);
      batcher = batcher_;
      // A paused stream has no read to complete with !ok: end reading here.
      if (read_paused_) reads_done_ = true;
      next = DecideLocked();
    }
    // This stream's queued requests free their slots now, not at their cut,
    // even while a long batch computes. Before Run: once it may finish the
    // stream, `this` must not be touched.
    batcher->Sweep();
    Run(next);
  }

  void OnDone() override { delete this; }

 private:
  // A response waiting to be written, and what to record once it is.
  struct Outgoing {
    Response message;
    CallOutcome outcome;
  };
  struct Actions {
    bool read = false;
    const Response* write = nullptr;
    bool finish = false;
  };

  Actions DecideLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Actions a;
    if (!writing_ && !outbox_.empty()) {
      writing_ = true;
      a.write = &outbox_.front().message;  // deque: stays valid while others are appended
    }
    if (read_paused_ && !reads_done_ && !context_->IsCancelled() &&
        pending_ + static_cast<int>(outbox_.size()) < kMaxInflight) {
      read_paused_ = false;
      a.read = true;
    }
    if (read_paused_ && context_->IsCancelled()) reads_done_ = true;
    if (reads_done_ && pending_ == 0 && !writing_ && outbox_.empty() && !finished_) {
      finished_ = true;
      a.finish = true;
    }
    return a;
  }

  // Starts what DecideLocked chose; the last thing an entry point does.
  void Run(const Actions& a) {
    if (a.read) this->StartRead(&request_);
    if (a.write != nullptr) this->StartWrite(a.write);
    if (a.finish) this->Finish(grpc::Status::OK);
  }

  Protocol* const protocol_;
  grpc::CallbackServerContext* const context_;
  Request request_;  // the read buffer; only the read path touches it

  Mutex mu_;
  AttendBatcher* batcher_ ABSL_GUARDED_BY(mu_) = nullptr;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;  // admitted or being admitted, not yet responded
  std::deque<Outgoing> outbox_ ABSL_GUARDED_BY(mu_);  // front is being written
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_ATTEND_STREAM_H_
