// gRPC server reflection (grpc.reflection.v1alpha and grpc.reflection.v1,
// the same protocol under two package names) on gRPC's callback API,
// answered from protobuf's generated descriptor pool (Options::pool), with an optional check
// of each stream before it is served.
//
// gRPC's reflection plugin (libgrpc++_reflection) cannot refuse a call: its
// service class is not a public header, and gRPC 1.51's server interceptors
// cannot fail one. Serving reflection here lets a token role guard it. The
// plugin registers the same .proto files in the generated pool, so a program
// that links this must not link libgrpc++_reflection.
//
// Each ServerReflectionInfo stream first calls Options::authorize; an error
// finishes the stream with that status before any request is read.
// Otherwise each request gets exactly one response, and the next request is
// read only once that response is written (at most one message in flight
// per stream). A request is answered with:
// - list_services: Options::services, in their order.
// - file_by_filename, file_containing_symbol (a service, method, message,
//   field, enum, enum value or extension by full name),
//   file_containing_extension: the file (a serialized FileDescriptorProto),
//   first, then each file it imports, transitively, that this stream has not
//   been sent yet (the file asked for is always sent, so a response is never
//   empty).
// - all_extension_numbers_of_type: the type's known extension numbers, in
//   increasing order.
// - An unknown file, symbol, type or extension: error_response NOT_FOUND
//   (5), naming it. No message_request set: error_response INVALID_ARGUMENT
//   (3).
// Errors in an error_response leave the stream open. The stream ends OK
// when the client closes its side.
//
// Thread-safe. Must outlive the grpc::Server its services are registered
// with.
#ifndef ATTN_SERVER_REFLECTION_SERVICE_H_
#define ATTN_SERVER_REFLECTION_SERVICE_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/server_context.h"

namespace attn::server {

// The generated types of the protocol's two packages, whose APIs are
// identical: code templated over one serves both.
struct ReflectionV1 {
  using Service = grpc::reflection::v1::ServerReflection;
  using Request = grpc::reflection::v1::ServerReflectionRequest;
  using Response = grpc::reflection::v1::ServerReflectionResponse;
};
struct ReflectionV1Alpha {
  using Service = grpc::reflection::v1alpha::ServerReflection;
  using Request = grpc::reflection::v1alpha::ServerReflectionRequest;
  using Response = grpc::reflection::v1alpha::ServerReflectionResponse;
};

class ReflectionService {
 public:
  // Decides whether a stream may be served: OK to serve it, an error to
  // finish it with that status. `method` is the full gRPC name
  // ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"). Runs on a
  // gRPC thread, once per stream, and must not block.
  using Authorize =
      std::function<absl::Status(absl::string_view method, const grpc::ServerContextBase&)>;

  struct Options {
    // What list_services answers: the full names of the services the server
    // offers, reflection's own included (ServiceNames()). Each must be a
    // service in `pool`.
    std::vector<std::string> services;
    // Null: every stream is served.
    Authorize authorize;
    // Test seam: where files, symbols and extensions are looked up. Must
    // outlive the service.
    const google::protobuf::DescriptorPool* pool =
        google::protobuf::DescriptorPool::generated_pool();
  };

  // The two reflection services' full names, v1 first.
  static const std::vector<std::string>& ServiceNames();

  // INVALID_ARGUMENT when a name in options.services is not a service in
  // options.pool, or pool is null.
  static absl::StatusOr<std::unique_ptr<ReflectionService>> Create(Options options);

  ~ReflectionService();
  ReflectionService(const ReflectionService&) = delete;
  ReflectionService& operator=(const ReflectionService&) = delete;

  // Registers both reflection services (v1 and v1alpha) with `builder`.
  void RegisterWith(grpc::ServerBuilder& builder);

 private:
  template <typename Proto>
  class Versioned;

  explicit ReflectionService(Options options);

  const Options options_;
  std::unique_ptr<grpc::Service> v1_;
  std::unique_ptr<grpc::Service> v1alpha_;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_REFLECTION_SERVICE_H_
