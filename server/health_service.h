// grpc.health.v1.Health on gRPC's callback API, with a shutdown that ends
// Watch streams.
//
// gRPC's default health service (1.51) sends NOT_SERVING to a Watch when the
// server shuts down but never finishes the stream, so one idle watcher (every
// client with client-side health checking holds one) kept grpc::Server's
// Shutdown() waiting for the whole grace period. Here Shutdown() sends each
// Watch NOT_SERVING and then ends it with UNAVAILABLE.
//
// Check answers a known service's status and NOT_FOUND for an unknown one.
// Watch sends the current status at once (SERVICE_UNKNOWN for an unknown
// service, per the health protocol), then each change.
//
// A call check (constructor) runs first in Check and Watch: a refused call
// finishes with its status (UNAUTHENTICATED, PERMISSION_DENIED) at once.
//
// Thread-safe. Must outlive the grpc::Server it is registered with.
#ifndef ATTN_SERVER_HEALTH_SERVICE_H_
#define ATTN_SERVER_HEALTH_SERVICE_H_

#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "core/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace attn::server {

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // Asked before each call with its full method name
  // ("/grpc.health.v1.Health/Check") and context: OK lets it through.
  using CallCheck =
      std::function<absl::Status(absl::string_view method, const grpc::ServerContextBase& context)>;

  HealthService() = default;
  // Null `check`: every call is allowed.
  explicit HealthService(CallCheck check) : check_(std::move(check)) {}
  HealthService(const HealthService&) = delete;
  HealthService& operator=(const HealthService&) = delete;

  // Adds `service` or changes its status; its watchers are sent the change.
  // Ignored once Shutdown() has begun.
  void SetServingStatus(const std::string& service, bool serving);

  // Every service turns NOT_SERVING for good. Every open Watch is sent
  // NOT_SERVING (unless that was its last message) and then finishes with
  // UNAVAILABLE; a Watch started later gets the same at once. Does not
  // wait for the streams to end. Idempotent.
  void Shutdown();

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

 private:
  class WatchReactor;

  // The status a Watch of `service` reports now.
  ServingStatus StatusLocked(const std::string& service) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CallCheck check_;
  mutable Mutex mu_;
  std::map<std::string, ServingStatus> services_ ABSL_GUARDED_BY(mu_);
  std::set<WatchReactor*> watches_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_HEALTH_SERVICE_H_
