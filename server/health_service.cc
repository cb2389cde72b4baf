#include "server/health_service.h"

#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/status_util.h"

namespace attn::server {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream. Decisions are made under its lock, and the writes and
// Finish they call for run after it is released. Lock order: the service's,
// then a stream's.
class HealthService::WatchReactor final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  // What DecideLocked chose. A stream with an action pending cannot finish
  // before the action runs (a write in flight holds off Finish), so running
  // it after unlocking is safe.
  struct Actions {
    WatchReactor* reactor = nullptr;
    const HealthCheckResponse* write = nullptr;
    std::optional<grpc::Status> finish;
  };

  WatchReactor(HealthService* service, std::string name)
      : service_(service), name_(std::move(name)) {
    Actions next;
    {
      MutexLock lock(&service_->mu_);
      service_->watches_.insert(this);
      next = Update(service_->StatusLocked(name_), service_->shut_down_);
    }
    Run(next);
  }

  const std::string& name() const { return name_; }

  // Queues `status` to be sent, unless it is what was sent (or queued)
  // last; with `end`, the stream then finishes: the server is shutting down.
  Actions Update(ServingStatus status, bool end) {
    MutexLock lock(&mu_);
    if (!end_.has_value() && status != last_) {
      last_ = status;
      unsent_ = status;
    }
    if (end && !end_.has_value()) {
      end_ = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
    }
    return DecideLocked();
  }

  // Starts what DecideLocked chose; the last thing an entry point does with
  // this stream.
  static void Run(const Actions& a) {
    if (a.write != nullptr) a.reactor->StartWrite(a.write);
    if (a.finish.has_value()) a.reactor->Finish(*a.finish);
  }

  void OnWriteDone(bool ok) override {
    Actions next;
    {
      MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) DropLocked("the stream broke");
      next = DecideLocked();
    }
    Run(next);
  }

  void OnCancel() override {
    Actions next;
    {
      MutexLock lock(&mu_);
      DropLocked("cancelled");
      next = DecideLocked();
    }
    Run(next);
  }

  void OnDone() override {
    {
      MutexLock lock(&service_->mu_);
      service_->watches_.erase(this);
    }
    delete this;
  }

 private:
  Actions DecideLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Actions a;
    a.reactor = this;
    if (writing_ || finished_) return a;
    if (unsent_.has_value()) {
      response_.set_status(*unsent_);
      unsent_.reset();
      writing_ = true;
      a.write = &response_;  // untouched until OnWriteDone: writing_ is set
    } else if (end_.has_value()) {
      finished_ = true;
      a.finish = *end_;
    }
    return a;
  }

  // Nothing more can be written: finish as soon as no write is in flight.
  void DropLocked(const char* why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    unsent_.reset();
    if (!end_.has_value()) end_ = grpc::Status(grpc::StatusCode::CANCELLED, why);
  }

  HealthService* const service_;
  const std::string name_;
  Mutex mu_;
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);  // the one write in flight
  ServingStatus last_ ABSL_GUARDED_BY(mu_) = HealthCheckResponse::UNKNOWN;
  std::optional<ServingStatus> unsent_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> end_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

namespace {

// A Watch refused by the call check: finishes at once, writing nothing.
class RefusedWatch final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  explicit RefusedWatch(const absl::Status& why) { Finish(ToGrpcStatus(why)); }
  void OnDone() override { delete this; }
};

}  // namespace

HealthService::ServingStatus HealthService::StatusLocked(const std::string& service) const {
  const auto it = services_.find(service);
  return it == services_.end() ? HealthCheckResponse::SERVICE_UNKNOWN : it->second;
}

void HealthService::SetServingStatus(const std::string& service, bool serving) {
  const ServingStatus status =
      serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
  std::vector<WatchReactor::Actions> next;
  {
    MutexLock lock(&mu_);
    if (shut_down_) return;
    services_[service] = status;
    for (WatchReactor* watch : watches_) {
      if (watch->name() == service) next.push_back(watch->Update(status, /*end=*/false));
    }
  }
  for (const WatchReactor::Actions& a : next) WatchReactor::Run(a);
}

void HealthService::Shutdown() {
  std::vector<WatchReactor::Actions> next;
  {
    MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
    for (auto& [name, status] : services_) status = HealthCheckResponse::NOT_SERVING;
    for (WatchReactor* watch : watches_) {
      next.push_back(watch->Update(HealthCheckResponse::NOT_SERVING, /*end=*/true));
    }
  }
  for (const WatchReactor::Actions& a : next) WatchReactor::Run(a);
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* context,
                                               const HealthCheckRequest* request,
                                               HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (check_) {
    if (absl::Status why = check_("/grpc.health.v1.Health/Check", *context); !why.ok()) {
      reactor->Finish(ToGrpcStatus(why));
      return reactor;
    }
  }
  ServingStatus status;
  {
    MutexLock lock(&mu_);
    status = StatusLocked(request->service());
  }
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::NOT_FOUND,
                     absl::StrCat("service: unknown service '", request->service(), "'")));
    return reactor;
  }
  response->set_status(status);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* context, const HealthCheckRequest* request) {
  if (check_) {
    if (absl::Status why = check_("/grpc.health.v1.Health/Watch", *context); !why.ok()) {
      return new RefusedWatch(why);  // deletes itself in OnDone
    }
  }
  return new WatchReactor(this, request->service());
}

}  // namespace attn::server
