// The one place absl::Status becomes grpc::Status (the codes share numbers).
#ifndef ATTN_SERVER_STATUS_UTIL_H_
#define ATTN_SERVER_STATUS_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace attn::server {

inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace attn::server

#endif  // ATTN_SERVER_STATUS_UTIL_H_
